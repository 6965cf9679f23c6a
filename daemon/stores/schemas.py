"""pyarrow schemas of the four Arrow tables and converters from the pipeline's values.

Every time column is timestamp[ms, UTC]; the hive `date=` partition comes from TIME_COLUMN.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from operator import attrgetter
from typing import Any

import numpy as np
import orjson
import pyarrow as pa

from daemon import native
from daemon.events import FIELDS, Anomaly, EventBatch, Rejected, WindowResult

TS = pa.timestamp("ms", tz="UTC")
TOPK = pa.list_(pa.struct([("value", pa.string()), ("count", pa.int64())]))
METRIC_TYPES: Mapping[str, pa.DataType] = {
    "int64": pa.int64(),
    "float64": pa.float64(),
    "string": pa.string(),
    "json": pa.string(),                  # a dict result (e.g. funnel), stored as JSON text
    "topk": TOPK,
    "int64_list": pa.list_(pa.int64()),   # e.g. funnel step counts
}
# Event fields that keep their numeric type as group-by columns; every other one is a string.
NUMERIC_FIELD_TYPES: Mapping[str, pa.DataType] = {
    "ts": pa.int64(), "price": pa.float64(), "quantity": pa.int64(), "revenue": pa.float64(),
}
GROUP_BY_META = b"storepulse.group_by"
_INT_FIELDS = frozenset(("ts", "quantity"))   # EventBatch columns of ints only (never None)
_compiled: Any = native.compiled("daemon.stores._arrowcols")   # string columns in one C pass (_arrowcols.pyx)
_NONE = type(None)

EVENTS = pa.schema([
    ("event_id", pa.string()),
    ("ts", TS),
    ("type", pa.string()),
    ("user_id", pa.string()),
    ("session_id", pa.string()),
    ("item_id", pa.string()),
    ("category", pa.string()),
    ("price", pa.float64()),
    ("quantity", pa.int64()),
    ("revenue", pa.float64()),
    ("source", pa.string()),
    ("received_at", TS),
])
_STR_FIELDS = frozenset(f.name for f in EVENTS if f.type == pa.string())
DEADLETTER = pa.schema([
    ("received_at", TS),
    ("source", pa.string()),
    ("reason", pa.string()),
    ("detail", pa.string()),
    ("raw", pa.binary()),
])
ANOMALIES = pa.schema([
    ("aggregation", pa.string()),
    ("metric", pa.string()),
    ("key", pa.string()),              # the group-by values as a JSON array
    ("window_start", TS),
    ("window_end", TS),
    ("value", pa.float64()),
    ("expected", pa.float64()),
    ("score", pa.float64()),
    ("direction", pa.string()),
    ("state", pa.string()),
    ("detected_at", TS),
])


def time_column(table: str) -> str:
    """The column whose UTC date names a row's `date=` partition in `table`."""
    if table.startswith("windows/"):
        return "window_start"
    try:
        return {"events": "ts", "deadletter": "received_at", "anomalies": "window_start"}[table]
    except KeyError:
        raise ValueError(f"unknown Arrow table {table!r}") from None


def window_schema(group_by: Sequence[str], metric_kinds: Iterable[tuple[str, str]],
                  extra_float_columns: Iterable[str] = ()) -> pa.Schema:
    """The schema of `windows/<aggregation>`: window bounds, group-by fields, metrics, moving averages.

    metric_kinds: (name, kind) with kind in METRIC_TYPES. The group-by field names are kept in
    the schema metadata so windows_to_record_batch knows which columns come from the key.
    """
    fields = [pa.field("window_start", TS, nullable=False), pa.field("window_end", TS, nullable=False)]
    fields += [pa.field(f, NUMERIC_FIELD_TYPES.get(f, pa.string())) for f in group_by]
    for name, kind in metric_kinds:
        if kind not in METRIC_TYPES:
            raise ValueError(f"metric {name!r}: unknown kind {kind!r} (one of {', '.join(METRIC_TYPES)})")
        fields.append(pa.field(name, METRIC_TYPES[kind]))
    fields += [pa.field(name, pa.float64()) for name in extra_float_columns]
    names = [f.name for f in fields]
    if len(set(names)) != len(names):
        raise ValueError(f"duplicate column names in window schema: {names}")
    return pa.schema(fields, metadata={GROUP_BY_META: orjson.dumps(list(group_by))})


def string_array(values: list[Any]) -> pa.Array:
    """`pa.array(values, pa.string())`, made by the compiled `_arrowcols.string_buffers` when it was built
    (~2-3x cheaper); anything it refuses (a value not a str, a lone surrogate) goes to pyarrow, which raises
    the same error it always did."""
    if _compiled is None:
        return pa.array(values, pa.string())
    try:
        offsets, data, validity, nulls = _compiled.string_buffers(values)
    except (TypeError, ValueError, OverflowError):   # UnicodeEncodeError is a ValueError
        return pa.array(values, pa.string())         # converts it, or raises pyarrow's own error
    return pa.StringArray.from_buffers(len(values), pa.py_buffer(offsets), pa.py_buffer(data),
                                       None if validity is None else pa.py_buffer(validity), nulls)


def events_to_record_batch(batch: EventBatch, received_ms: int) -> pa.RecordBatch:
    """Accepted events (one source, one arrival time) as rows of EVENTS.

    The same arrays as pa.array on every list, for less CPU: the two constant columns are filled by
    Arrow (pa.repeat), `ts` and `quantity` (ints, never null) are read by numpy in C, and the string
    columns are built by `string_array`."""
    n = len(batch)
    arrays = [pa.array(np.array(batch.column(name), dtype=np.int64), EVENTS.field(name).type) if name in _INT_FIELDS
              else string_array(batch.column(name)) if name in _STR_FIELDS
              else pa.array(batch.column(name), EVENTS.field(name).type) for name in FIELDS]
    arrays.append(pa.repeat(pa.scalar(batch.source, pa.string()), n))
    arrays.append(pa.repeat(pa.scalar(received_ms, TS), n))
    return pa.RecordBatch.from_arrays(arrays, schema=EVENTS)


def rejected_to_record_batch(rejected: Sequence[Rejected]) -> pa.RecordBatch:
    """Dead letters as rows of DEADLETTER (the raw bytes are kept as they came, already cut)."""
    return pa.RecordBatch.from_arrays([
        pa.array([r.received_ms for r in rejected], TS),
        pa.array([r.source for r in rejected], pa.string()),
        pa.array([str(r.reason) for r in rejected], pa.string()),
        pa.array([r.detail for r in rejected], pa.string()),
        pa.array([r.raw for r in rejected], pa.binary()),
    ], schema=DEADLETTER)


def anomalies_to_record_batch(anomalies: Sequence[Anomaly]) -> pa.RecordBatch:
    """Anomalies as rows of ANOMALIES; the key becomes a JSON array string."""
    a = anomalies
    return pa.RecordBatch.from_arrays([
        pa.array([x.aggregation for x in a], pa.string()),
        pa.array([x.metric for x in a], pa.string()),
        pa.array([orjson.dumps(list(x.key), default=str).decode() for x in a], pa.string()),
        pa.array([x.window_start_ms for x in a], TS),
        pa.array([x.window_end_ms for x in a], TS),
        pa.array([_float(x.value) for x in a], pa.float64()),
        pa.array([_float(x.expected) for x in a], pa.float64()),
        pa.array([_float(x.score) for x in a], pa.float64()),
        pa.array([x.direction for x in a], pa.string()),
        pa.array([x.state for x in a], pa.string()),
        pa.array([x.detected_ms for x in a], TS),
    ], schema=ANOMALIES)


def windows_to_record_batch(results: Sequence[WindowResult], schema: pa.Schema) -> pa.RecordBatch:
    """Closed windows as rows of `schema` (from window_schema); a missing metric becomes null.

    Built column by column: each column's coercion is chosen once from its type, not per cell, and a
    column whose values already have the Python type Arrow wants goes to pa.array as it is."""
    group_by = orjson.loads((schema.metadata or {}).get(GROUP_BY_META, b"[]"))
    keys = [r.key for r in results]
    metrics = [r.metrics for r in results]
    arrays = [
        pa.array(np.array(list(map(attrgetter("window_start_ms"), results)), dtype=np.int64), TS),
        pa.array(np.array(list(map(attrgetter("window_end_ms"), results)), dtype=np.int64), TS),
    ]
    for i, name in enumerate(group_by):
        typ = schema.field(name).type
        arrays.append(_column([k[i] if i < len(k) else None for k in keys], typ))
    for f in list(schema)[2 + len(group_by):]:
        name = f.name
        arrays.append(_column([m.get(name) for m in metrics], f.type))
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def _text(v: Any) -> str:
    """A non-string value of a string column: JSON for a dict or list (a "json" metric such as the
    funnel's), str() otherwise (a numeric group key)."""
    if isinstance(v, (dict, list)):
        return orjson.dumps(v, default=str).decode()
    return str(v)


def _float(v: Any) -> float | None:
    return None if v is None else float(v)


def _column(values: list[Any], typ: pa.DataType) -> pa.Array:
    """`values` as an array of `typ`, each coerced first (pyarrow would silently truncate 3.5 → 3).

    The coercion per type: topk entries normalised, _text() for strings, int() for integers, float()
    for floats, none otherwise; None stays null."""
    types = set(map(type, values))
    if typ == TOPK:
        values = [None if v is None else [_topk_entry(e) for e in v] for v in values]
    elif pa.types.is_string(typ):
        if not types <= {str, _NONE}:
            values = [v if v is None or isinstance(v, str) else _text(v) for v in values]
    elif pa.types.is_integer(typ):
        if not types <= {int, _NONE}:
            values = [None if v is None else int(v) for v in values]
    elif pa.types.is_floating(typ):
        if not types <= {float, _NONE}:
            values = [None if v is None else float(v) for v in values]
    return pa.array(values, typ)


def _topk_entry(e: Any) -> dict[str, Any]:
    if isinstance(e, Mapping):
        value, count = e["value"], e["count"]
    else:
        value, count = e
    return {"value": None if value is None else str(value), "count": int(count)}
