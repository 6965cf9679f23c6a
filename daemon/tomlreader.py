"""Read one TOML table into typed values, collecting `dotted.key: message` problems.

Every problem is recorded (not raised) so that check-config reports all of them at once;
a reader returns a default after a problem so parsing can go on.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from daemon.errors import ConfigError
from daemon.units import parse_duration_s, parse_size_bytes

T = TypeVar("T")
_MISSING: Any = object()


class TableReader:
    """Typed access to one TOML table; remembers which keys were read."""

    def __init__(self, table: object, path: str, errors: list[ConfigError]) -> None:
        self.path = path
        self.errors = errors
        if table is None:
            table = {}
        if not isinstance(table, Mapping):
            self.error(None, f"expected a table, got {_type_name(table)}")
            table = {}
        self.table: Mapping[str, Any] = table
        self._seen: set[str] = set()

    def key_path(self, key: str | None) -> str:
        if key is None:
            return self.path
        return f"{self.path}.{key}" if self.path else key

    def error(self, key: str | None, message: str) -> None:
        self.errors.append(ConfigError(self.key_path(key), message))

    def has(self, key: str) -> bool:
        return key in self.table

    def raw(self, key: str, default: Any = None) -> Any:
        self._seen.add(key)
        return self.table.get(key, default)

    def sub(self, key: str) -> TableReader:
        """A reader over the sub-table `key` (empty when absent)."""
        return TableReader(self.raw(key, {}), self.key_path(key), self.errors)

    def _get(self, key: str, default: Any, required: bool) -> Any:
        self._seen.add(key)
        if key not in self.table:
            if required:
                self.error(key, "required key is missing")
            return _MISSING
        return self.table[key]

    def str(self, key: str, default: str = "", *, required: bool = False, nonempty: bool = False) -> str:
        value = self._get(key, default, required)
        if value is _MISSING:
            return default
        if not isinstance(value, str):
            self.error(key, f"expected a string, got {_type_name(value)}")
            return default
        if nonempty and not value:
            self.error(key, "must not be empty")
        return value

    def int(self, key: str, default: int, *, min_value: int | None = None, max_value: int | None = None) -> int:
        value = self._get(key, default, False)
        if value is _MISSING:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            self.error(key, f"expected an integer, got {_type_name(value)}")
            return default
        return self._bounded(key, value, default, min_value, max_value)

    def float(self, key: str, default: float, *, min_value: float | None = None, max_value: float | None = None) -> float:
        value = self._get(key, default, False)
        if value is _MISSING:
            return default
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.error(key, f"expected a number, got {_type_name(value)}")
            return default
        return self._bounded(key, float(value), default, min_value, max_value)

    def bool(self, key: str, default: bool) -> bool:
        value = self._get(key, default, False)
        if value is _MISSING:
            return default
        if not isinstance(value, bool):
            self.error(key, f"expected true or false, got {_type_name(value)}")
            return default
        return value

    def duration_s(self, key: str, default: float, *, positive: bool = True) -> float:
        value = self._get(key, default, False)
        if value is _MISSING:
            return default
        try:
            seconds = parse_duration_s(value)
        except ValueError as exc:
            self.error(key, str(exc))
            return default
        if positive and seconds <= 0:
            self.error(key, "must be greater than zero")
            return default
        return seconds

    def duration_ms(self, key: str, default_ms: int, *, positive: bool = True) -> int:
        return round(self.duration_s(key, default_ms / 1000, positive=positive) * 1000)

    def size_bytes(self, key: str, default: int) -> int:
        value = self._get(key, default, False)
        if value is _MISSING:
            return default
        try:
            return parse_size_bytes(value)
        except ValueError as exc:
            self.error(key, str(exc))
            return default

    def choice(self, key: str, default: str, choices: tuple[str, ...]) -> str:
        value = self.str(key, default)
        if value not in choices:
            self.error(key, f"must be one of {', '.join(repr(c) for c in choices)}, got {value!r}")
            return default
        return value

    def str_map(self, key: str) -> dict[str, str]:
        value = self._get(key, {}, False)
        if value is _MISSING:
            return {}
        if not isinstance(value, Mapping):
            self.error(key, f"expected a table of strings, got {_type_name(value)}")
            return {}
        out: dict[str, str] = {}
        for k, v in value.items():
            if not isinstance(v, str):
                self.error(f"{key}.{k}", f"expected a string, got {_type_name(v)}")
            else:
                out[k] = v
        return out

    def str_list(self, key: str) -> tuple[str, ...]:
        value = self._get(key, (), False)
        if value is _MISSING:
            return ()
        if isinstance(value, str):
            return (value,)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.error(key, f"expected a list of strings, got {_type_name(value)}")
            return ()
        return tuple(value)

    def finish(self) -> None:
        """Report every key of the table that nothing read."""
        for key in self.table:
            if key not in self._seen:
                self.error(key, "unknown key")

    def _bounded(self, key: str, value: T, default: T, lo: Any, hi: Any) -> T:
        if lo is not None and value < lo:
            self.error(key, f"must be >= {lo}, got {value}")
            return default
        if hi is not None and value > hi:
            self.error(key, f"must be <= {hi}, got {value}")
            return default
        return value


def _type_name(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, Mapping):
        return "a table"
    return type(value).__name__
