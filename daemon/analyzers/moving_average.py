"""Simple and exponential moving averages over successive windows of each group key (pure).

SMA_t is the mean of the last n values; EMA_1 = x_1, EMA_t = a*x_t + (1-a)*EMA_(t-1).
A missing (None or non-numeric) value is skipped: the averages carry their previous values.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Sequence
from typing import Any

import orjson

from daemon.aggconfig import MovingAverageSpec
from daemon.events import WindowResult
from daemon.metrics.basic import exact_partials
from daemon import jsonbytes

SNAPSHOT_VERSION = 1


def sma(values: Sequence[float | None], n: int) -> list[float | None]:
    """The SMA after each value (mean of the last n present values; None before the first)."""
    window: deque[float] = deque(maxlen=n)
    out: list[float | None] = []
    for x in values:
        if _number(x):
            window.append(float(x))  # type: ignore[arg-type]
        out.append(math.fsum(window) / len(window) if window else None)
    return out


def ema(values: Sequence[float | None], alpha: float) -> list[float | None]:
    """The EMA after each value (None before the first present value)."""
    out: list[float | None] = []
    e: float | None = None
    for x in values:
        if _number(x):
            e = ema_step(e, float(x), alpha)  # type: ignore[arg-type]
        out.append(e)
    return out


def ema_step(previous: float | None, x: float, alpha: float) -> float:
    """One EMA update; kept between previous and x so rounding never leaves [min, max]."""
    if previous is None:
        return x
    e = alpha * x + (1.0 - alpha) * previous
    return min(max(e, min(x, previous)), max(x, previous))


def _number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


class _Series:
    """The moving-average state of one (key, metric): the last n values, their exact sum, the EMA."""

    __slots__ = ("values", "partials", "ema")

    def __init__(self, n: int, values: Iterable[float] = (), ema_value: float | None = None) -> None:
        self.values: deque[float] = deque(values, maxlen=n)
        self.partials = exact_partials(list(self.values))
        self.ema = ema_value

    def push(self, x: float, alpha: float) -> None:
        if len(self.values) == self.values.maxlen:
            dropped = self.values[0]
            self.partials = exact_partials([*self.partials, -dropped, x])
        else:
            self.partials = exact_partials([*self.partials, x])
        self.values.append(x)
        self.ema = ema_step(self.ema, x, alpha)

    def sma(self) -> float | None:
        return math.fsum(self.partials) / len(self.values) if self.values else None


class MovingAverages:
    """Adds `<metric>_sma` and `<metric>_ema` to window results, per group key, in emission order."""

    def __init__(self, spec: MovingAverageSpec) -> None:
        self.spec = spec
        self._series: dict[tuple[Any, ...], dict[str, _Series]] = {}
        self._touched: set[tuple[Any, ...]] = set()

    def apply(self, results: Sequence[WindowResult]) -> list[WindowResult]:
        """The results with their moving averages added (successive windows per key = this order)."""
        of, n, alpha = self.spec.of, self.spec.sma, self.spec.ema_alpha
        out = []
        for r in results:
            per_key = self._series.get(r.key)
            if per_key is None:
                per_key = self._series[r.key] = {m: _Series(n) for m in of}
            extra = {}
            for m in of:
                series = per_key[m]
                x = r.metrics.get(m)
                if _number(x):
                    series.push(float(x), alpha)
                extra[f"{m}_sma"] = series.sma()
                extra[f"{m}_ema"] = series.ema
            self._touched.add(r.key)
            out.append(r._replace(metrics={**r.metrics, **extra}))
        return out

    def snapshot(self) -> bytes:
        """The whole state as bytes (orjson)."""
        return jsonbytes.dumps({"v": SNAPSHOT_VERSION, "keys": [self._dump_key(k) for k in self._series]})

    def restore(self, data: bytes) -> None:
        """Replace the state with a `snapshot`."""
        doc = orjson.loads(data)
        if doc.get("v") != SNAPSHOT_VERSION:
            raise ValueError(f"unknown moving-average snapshot version {doc.get('v')!r}")
        self._series.clear()
        self._touched.clear()
        for entry in doc["keys"]:
            self._load_key(entry)

    def take_changes(self) -> dict[bytes, bytes]:
        """The entries of the keys changed since the last call: b"k" + orjson [key...] -> state."""
        out = {b"k" + jsonbytes.dumps(list(k)): jsonbytes.dumps(self._dump_key(k)) for k in self._touched}
        self._touched.clear()
        return out

    def restore_items(self, items: Iterable[tuple[bytes, bytes]]) -> None:
        """Replace the state with every entry `take_changes` produced (latest value per key)."""
        self._series.clear()
        self._touched.clear()
        for _, value in items:
            self._load_key(orjson.loads(bytes(value)))

    def _dump_key(self, key: tuple[Any, ...]) -> list[Any]:
        return [list(key), {m: [list(s.values), s.ema] for m, s in self._series[key].items()}]

    def _load_key(self, entry: list[Any]) -> None:
        key_list, per_metric = entry
        n = self.spec.sma
        series = {m: _Series(n) for m in self.spec.of}
        for m, (values, ema_value) in per_metric.items():
            if m in series:   # a metric dropped from `of` on reload is forgotten
                series[m] = _Series(n, [float(v) for v in values], ema_value)
        self._series[tuple(key_list)] = series
