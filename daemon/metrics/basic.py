"""Exact metrics: count, sum, mean, min, max (pure).

Sums keep the exact total of their floats as a few non-overlapping partials (Shewchuk, via
math.fsum), so a result never depends on event order or on how events were batched.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from daemon.aggconfig import MetricSpec
from daemon import jsonbytes

Partials = tuple[float, ...]
_MAX_PARTIALS = 64  # a double sum needs at most ~40 non-overlapping partials
_FEW_VALUES = 64    # fold_groups of fewer values folds every group (no numpy zero test)


def exact_partials(values: list[Any]) -> Partials:
    """Non-overlapping floats whose exact sum is the exact sum of `values` (finite numbers).

    Each round takes the correctly rounded remainder, so the tuple depends only on the exact
    total, never on the order of `values`.
    """
    if len(values) == 1:   # the common single event: no rounding can happen
        v = float(values[0])
        return (v,) if v else ()
    out: list[float] = []
    try:
        while len(out) < _MAX_PARTIALS:
            s = math.fsum(values)
            if s == 0.0:
                break
            out.append(s)
            if not math.isfinite(s):
                break
            values.append(-s)
    except OverflowError:
        return (sum(values[: len(values) - len(out)], 0.0),)
    return tuple(out)


def _present(values: Sequence[Any]) -> list[Any]:
    """The values without None, as a fresh list."""
    if None in values:
        return [v for v in values if v is not None]
    return list(values)


def _groups_with_nonzero(values: Sequence[Any], lo: list[int], hi: list[int]) -> list[int]:
    """Positions g whose values[lo[g]:hi[g]] hold something other than zeros (None and NaN count
    as something: the exact fold decides about them); every group when values are not all numbers."""
    if len(values) < _FEW_VALUES:   # numpy's fixed cost would exceed folding every group
        return list(range(len(lo)))
    try:
        nonzero = np.asarray(values, dtype=np.float64) != 0.0   # None becomes NaN, which is != 0
    except (TypeError, ValueError, OverflowError):
        return list(range(len(lo)))
    seen = np.concatenate(([0], np.cumsum(nonzero)))
    return np.flatnonzero(seen[hi] - seen[lo]).tolist()


@dataclass(frozen=True, slots=True)
class Count:
    """Number of events; the state is an int."""

    kind = "int64"

    @classmethod
    def from_spec(cls, spec: MetricSpec) -> Count:
        return cls()

    def empty(self) -> int:
        return 0

    def fold(self, state: int, values: Sequence[Any]) -> int:
        return state + len(values)

    def fold_one(self, state: int, value: Any) -> int:
        return state + 1

    def fold_groups(self, states: list[list[Any]], j: int, values: Sequence[Any], lo: list[int],
                    hi: list[int]) -> None:
        """Fold group g, values[lo[g]:hi[g]], into states[g][j] for every g (see MetricSet.fold_groups)."""
        for s, a, b in zip(states, lo, hi):
            s[j] += b - a

    def fold_column(self, column: list[Any], slots: list[int], values: Sequence[Any], lo: list[int],
                    hi: list[int]) -> None:
        """Fold group g into column[slots[g]] for every g (see MetricSet.fold_slots)."""
        for s, a, b in zip(slots, lo, hi):
            column[s] += b - a

    def merge(self, a: int, b: int) -> int:
        return a + b

    def result_many(self, states: list[int]) -> int:
        """The result of all states merged."""
        return sum(states)

    def results_of(self, states: list[int], bounds: Sequence[int]) -> list[int]:
        """`result_many(states[bounds[r]:bounds[r + 1]])` for every row r (one numpy pass)."""
        return np.add.reduceat(np.asarray(states, dtype=np.int64), np.asarray(bounds[:-1], dtype=np.int64)).tolist()

    def result(self, state: int) -> int:
        return state

    def results_each(self, states: list[int]) -> list[int]:
        """`result` of each state."""
        return states

    def dump(self, state: int) -> bytes:
        return jsonbytes.dumps(state)

    dump_temporary = staticmethod(orjson.dumps)   # dump's bytes, for a record that copies them

    def load(self, data: bytes) -> int:
        return int(orjson.loads(data))


@dataclass(frozen=True, slots=True)
class Sum:
    """Exact float64 sum; the state is a tuple of partials (empty for 0)."""

    kind = "float64"

    @classmethod
    def from_spec(cls, spec: MetricSpec) -> Sum:
        return cls()

    def empty(self) -> Partials:
        return ()

    def fold(self, state: Partials, values: Sequence[Any]) -> Partials:
        vals = _present(values)
        if not vals:
            return state
        vals.extend(state)
        return exact_partials(vals)

    def fold_one(self, state: Partials, value: Any) -> Partials:
        if value is None:
            return state
        return exact_partials([value, *state])

    def fold_groups(self, states: list[list[Any]], j: int, values: Sequence[Any], lo: list[int],
                    hi: list[int]) -> None:
        """Fold group g, values[lo[g]:hi[g]], into states[g][j] for every g (see MetricSet.fold_groups).

        Adding zeros leaves the exact total, hence the partials, as they are, and most events
        carry no revenue; so only groups with a non-zero (or None or NaN) value are folded.
        """
        fold = self.fold
        for g in _groups_with_nonzero(values, lo, hi):
            s = states[g]
            s[j] = fold(s[j], values[lo[g]:hi[g]])

    def fold_column(self, column: list[Any], slots: list[int], values: Sequence[Any], lo: list[int],
                    hi: list[int]) -> None:
        """Fold group g into column[slots[g]] for every g (see MetricSet.fold_slots); zeros as in fold_groups."""
        fold = self.fold
        for g in _groups_with_nonzero(values, lo, hi):
            s = slots[g]
            column[s] = fold(column[s], values[lo[g]:hi[g]])

    def merge(self, a: Partials, b: Partials) -> Partials:
        return exact_partials([*a, *b]) if a and b else a or b

    def result(self, state: Partials) -> float:
        return math.fsum(state)

    def results_each(self, states: list[Partials]) -> list[float]:
        """`result` of each state."""
        return list(map(math.fsum, states))

    def dump(self, state: Partials) -> bytes:
        return jsonbytes.dumps(state)

    dump_temporary = staticmethod(orjson.dumps)   # dump's bytes, for a record that copies them

    def load(self, data: bytes) -> Partials:
        return tuple(float(v) for v in orjson.loads(data))


@dataclass(frozen=True, slots=True)
class Mean:
    """Exact mean; the state is (count, sum partials); None when nothing was added."""

    kind = "float64"

    @classmethod
    def from_spec(cls, spec: MetricSpec) -> Mean:
        return cls()

    def empty(self) -> tuple[int, Partials]:
        return (0, ())

    def fold(self, state: tuple[int, Partials], values: Sequence[Any]) -> tuple[int, Partials]:
        vals = _present(values)
        if not vals:
            return state
        n = len(vals)
        vals.extend(state[1])
        return (state[0] + n, exact_partials(vals))

    def fold_one(self, state: tuple[int, Partials], value: Any) -> tuple[int, Partials]:
        if value is None:
            return state
        return (state[0] + 1, exact_partials([value, *state[1]]))

    def merge(self, a: tuple[int, Partials], b: tuple[int, Partials]) -> tuple[int, Partials]:
        return (a[0] + b[0], exact_partials([*a[1], *b[1]]) if a[1] and b[1] else a[1] or b[1])

    def result(self, state: tuple[int, Partials]) -> float | None:
        return math.fsum(state[1]) / state[0] if state[0] else None

    def dump(self, state: tuple[int, Partials]) -> bytes:
        return jsonbytes.dumps(state)

    dump_temporary = staticmethod(orjson.dumps)   # dump's bytes, for a record that copies them

    def load(self, data: bytes) -> tuple[int, Partials]:
        n, parts = orjson.loads(data)
        return (int(n), tuple(float(v) for v in parts))


class _Extreme:
    """Shared body of Min and Max: the value `_pick` prefers, as float64; None when nothing was added."""

    __slots__ = ()
    kind = "float64"
    _pick: Any = staticmethod(min)

    @classmethod
    def from_spec(cls, spec: MetricSpec) -> _Extreme:
        return cls()

    def empty(self) -> float | None:
        return None

    def fold(self, state: float | None, values: Sequence[Any]) -> float | None:
        vals = _present(values) if None in values else values
        if not vals:
            return state
        m = float(self._pick(vals))
        return m if state is None else self._pick(m, state)

    def merge(self, a: float | None, b: float | None) -> float | None:
        return b if a is None else a if b is None else self._pick(a, b)

    def result(self, state: float | None) -> float | None:
        return state

    def dump(self, state: float | None) -> bytes:
        return jsonbytes.dumps(state)

    dump_temporary = staticmethod(orjson.dumps)   # dump's bytes, for a record that copies them

    def load(self, data: bytes) -> float | None:
        v = orjson.loads(data)
        return None if v is None else float(v)


class Min(_Extreme):
    """Smallest value as float64; None when nothing was added."""

    __slots__ = ()
    _pick = staticmethod(min)


class Max(_Extreme):
    """Largest value as float64; None when nothing was added."""

    __slots__ = ()
    _pick = staticmethod(max)