"""`[[aggregations]]` entries: window spec, metric specs, moving averages, anomaly settings."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from daemon.events import EVENT_TYPES, FIELDS
from daemon.tomlreader import TableReader

WINDOW_TYPES = ("tumbling", "hopping", "session")
METRIC_FUNCS = ("count", "sum", "mean", "min", "max", "distinct", "quantile", "topk", "funnel")
NUMERIC_FIELDS = ("ts", "price", "quantity", "revenue")
ANOMALY_METHODS = ("zscore", "threshold")
_METRIC = re.compile(r"^\s*([a-z]+|p\d{1,2}(?:\.\d+)?)\s*(?:\(\s*([^)]*?)\s*\))?\s*$")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")


@dataclass(frozen=True, slots=True, kw_only=True)
class WindowSpec:
    type: str
    size_ms: int = 0
    slide_ms: int = 0       # tumbling: equal to size_ms
    gap_ms: int = 0         # session only


@dataclass(frozen=True, slots=True, kw_only=True)
class MetricSpec:
    """One output column: `name = "func(field, arg)"`."""

    name: str
    func: str               # one of METRIC_FUNCS; pNN becomes "quantile" with q
    field: str | None = None
    q: float | None = None
    k: int | None = None
    steps: tuple[str, ...] = ()   # funnel steps (event types), in order


@dataclass(frozen=True, slots=True, kw_only=True)
class MovingAverageSpec:
    of: tuple[str, ...]
    sma: int = 5
    ema_alpha: float = 0.3


@dataclass(frozen=True, slots=True, kw_only=True)
class AnomalySpec:
    metric: str
    method: str = "zscore"
    threshold: float = 4.0
    warmup: int = 10
    alert_url: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class AggregationConfig:
    name: str
    where: tuple[tuple[str, tuple[Any, ...]], ...] = ()
    group_by: tuple[str, ...] = ()
    window: WindowSpec
    metrics: tuple[MetricSpec, ...]
    moving_average: MovingAverageSpec | None = None
    anomaly: AnomalySpec | None = None
    keep_latest: int = 1000     # closed windows kept in LMDB per key for GET /windows
    keep_latest_rows: int = 1_000_000   # and in all (the oldest window ends go first)
    max_keys: int = 1_000_000   # bound on open (key, window) states; beyond it events are dead-lettered

    @classmethod
    def from_toml(cls, r: TableReader) -> AggregationConfig:
        name = r.str("name", required=True)
        if name and not _NAME.match(name):
            r.error("name", "use letters, digits and _ (max 64), starting with a letter")
        where = _read_where(r)
        group_by = r.str_list("group_by")
        for i, f in enumerate(group_by):
            if f not in FIELDS:
                r.error(f"group_by[{i}]", f"unknown event field {f!r}")
        window = _read_window(r.sub("window"), required=r.has("window"))
        if not r.has("window"):
            r.error("window", "required key is missing")
        metrics = _read_metrics(r.sub("metrics"))
        if not r.has("metrics"):
            r.error("metrics", "required key is missing")
        names = {m.name for m in metrics}
        ma = _read_moving_average(r.sub("moving_average"), names) if r.has("moving_average") else None
        an = _read_anomaly(r.sub("anomaly"), names) if r.has("anomaly") else None
        keep = r.int("keep_latest", 1000, min_value=1, max_value=1_000_000)
        keep_rows = r.int("keep_latest_rows", 1_000_000, min_value=1, max_value=1_000_000_000)
        max_keys = r.int("max_keys", 1_000_000, min_value=1)
        r.finish()
        return cls(name=name, where=where, group_by=group_by, window=window, metrics=metrics,
                   moving_average=ma, anomaly=an, keep_latest=keep, keep_latest_rows=keep_rows, max_keys=max_keys)


def _read_where(r: TableReader) -> tuple[tuple[str, tuple[Any, ...]], ...]:
    if not r.has("where"):
        return ()
    sub = r.sub("where")
    out = []
    for f, value in sub.table.items():
        sub.raw(f)
        if f not in FIELDS:
            sub.error(f, f"unknown event field {f!r}")
            continue
        values = value if isinstance(value, list) else [value]
        if not values or not all(isinstance(v, (str, int, float)) and not isinstance(v, bool) for v in values):
            sub.error(f, "expected a value or a list of strings/numbers")
            continue
        if f == "type":
            for v in values:
                if v not in EVENT_TYPES:
                    sub.error(f, f"unknown event type {v!r} (one of {', '.join(EVENT_TYPES)})")
        if f in ("user_id", "item_id"):
            values = [str(v) for v in values]
        out.append((f, tuple(values)))
    return tuple(out)


def _read_window(r: TableReader, *, required: bool) -> WindowSpec:
    if not required:
        return WindowSpec(type="tumbling", size_ms=60_000, slide_ms=60_000)
    wtype = r.choice("type", "tumbling", WINDOW_TYPES)
    if wtype == "session":
        gap = r.duration_ms("gap", 0) if r.has("gap") else 0
        if not r.has("gap"):
            r.error("gap", "required for a session window")
        r.finish()
        return WindowSpec(type="session", gap_ms=gap or 60_000)
    size = r.duration_ms("size", 60_000) if r.has("size") else 60_000
    if not r.has("size"):
        r.error("size", f"required for a {wtype} window")
    slide = size
    if wtype == "hopping":
        if not r.has("slide"):
            r.error("slide", "required for a hopping window")
        else:
            slide = r.duration_ms("slide", size)
            if slide > size:
                r.error("slide", "must be <= size")
                slide = size
            elif size % slide:
                r.error("slide", "size must be a whole multiple of slide")
                slide = size
    r.finish()
    return WindowSpec(type=wtype, size_ms=size, slide_ms=slide)


def parse_metric(name: str, expr: object) -> MetricSpec:
    """Parse `"sum(revenue)"`, `"p95(price)"`, `"topk(item_id, 10)"`...; ValueError says why."""
    if not isinstance(expr, str):
        raise ValueError("expected a metric expression string like \"sum(revenue)\"")
    m = _METRIC.match(expr)
    if not m:
        raise ValueError(f"cannot parse {expr!r}: use func or func(field[, arg])")
    func, argtext = m.group(1), m.group(2)
    args = [a.strip() for a in argtext.split(",")] if argtext else []
    q = k = None
    steps: tuple[str, ...] = ()
    if func.startswith("p") and func[1:].replace(".", "", 1).isdigit():
        q = float(func[1:]) / 100
        if not 0 < q < 1:
            raise ValueError(f"quantile {func!r} must be between p1 and p99")
        func = "quantile"
    if func not in METRIC_FUNCS:
        raise ValueError(f"unknown function {func!r} (count, sum, mean, min, max, distinct, pNN, topk, funnel)")
    if func == "count":
        if args:
            raise ValueError("count takes no field")
        return MetricSpec(name=name, func="count")
    if func == "funnel":
        steps = tuple(args) if args else ("view", "cart", "purchase")
        for s in steps:
            if s not in EVENT_TYPES:
                raise ValueError(f"funnel step {s!r} is not an event type")
        return MetricSpec(name=name, func="funnel", field="session_id", steps=steps)
    if not args or not args[0]:
        raise ValueError(f"{func} needs a field, e.g. {func}(price)")
    fld = args[0]
    if fld not in FIELDS:
        raise ValueError(f"unknown event field {fld!r}")
    if func in ("sum", "mean", "min", "max", "quantile") and fld not in NUMERIC_FIELDS:
        raise ValueError(f"{func} needs a numeric field ({', '.join(NUMERIC_FIELDS)}), got {fld!r}")
    if func == "topk":
        if len(args) != 2 or not args[1].isdigit() or not 1 <= int(args[1]) <= 1000:
            raise ValueError("topk needs a field and k between 1 and 1000, e.g. topk(item_id, 10)")
        k = int(args[1])
    elif len(args) != 1:
        raise ValueError(f"{func} takes one field")
    return MetricSpec(name=name, func=func, field=fld, q=q, k=k)


def _read_metrics(r: TableReader) -> tuple[MetricSpec, ...]:
    out = []
    for name, expr in r.table.items():
        r.raw(name)
        if not _NAME.match(name):
            r.error(name, "metric names use letters, digits and _")
            continue
        try:
            out.append(parse_metric(name, expr))
        except ValueError as exc:
            r.error(name, str(exc))
    if not out and not r.errors:
        r.error(None, "needs at least one metric")
    return tuple(out)


def _read_moving_average(r: TableReader, metrics: set[str]) -> MovingAverageSpec:
    of = r.str_list("of")
    for i, m in enumerate(of):
        if m not in metrics:
            r.error(f"of[{i}]", f"no metric named {m!r} in this aggregation")
    spec = MovingAverageSpec(of=of, sma=r.int("sma", 5, min_value=1, max_value=10_000),
                             ema_alpha=r.float("ema_alpha", 0.3, min_value=0.0, max_value=1.0))
    r.finish()
    return spec


def _read_anomaly(r: TableReader, metrics: set[str]) -> AnomalySpec:
    metric = r.str("metric", required=True)
    if metric and metric not in metrics:
        r.error("metric", f"no metric named {metric!r} in this aggregation")
    alert_url = r.str("alert_url", "")
    if alert_url and not alert_url.startswith(("http://", "https://")):
        r.error("alert_url", "must be an http:// or https:// URL")
    spec = AnomalySpec(metric=metric, method=r.choice("method", "zscore", ANOMALY_METHODS),
                       threshold=r.float("threshold", 4.0, min_value=0.0),
                       warmup=r.int("warmup", 10, min_value=1, max_value=100_000), alert_url=alert_url)
    r.finish()
    return spec
