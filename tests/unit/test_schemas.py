"""Arrow schemas and the converters from pipeline values to record batches."""

from __future__ import annotations

import datetime as dt

import orjson
import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

from daemon.events import Anomaly, EventBatch, Reason, Rejected, WindowResult
from daemon.stores import schemas
from tests.native import LOOPS
from tests.native import loop as loop_of
from daemon.stores.schemas import (
    TOPK, TS, anomalies_to_record_batch, events_to_record_batch, rejected_to_record_batch,
    time_column, window_schema, windows_to_record_batch,
)

UTC = dt.timezone.utc


def _batch(n: int = 2) -> EventBatch:
    b = EventBatch("orders")
    for i in range(n):
        b.event_id.append(f"e{i}")
        b.ts.append(1_700_000_000_000 + i)
        b.type.append("purchase")
        b.user_id.append(f"u{i}")
        b.session_id.append(None if i % 2 else f"s{i}")
        b.item_id.append(f"i{i}")
        b.category.append("shoes")
        b.price.append(10.0 + i)
        b.quantity.append(1 + i)
        b.revenue.append((10.0 + i) * (1 + i))
    return b


def test_events_batch_has_every_field_plus_source_and_received_at():
    """An EventBatch becomes EVENTS rows with ts as timestamp[ms, UTC], the source and arrival time."""
    rb = events_to_record_batch(_batch(), received_ms=1_700_000_001_000)
    assert rb.schema == schemas.EVENTS
    assert rb.schema.field("ts").type == pa.timestamp("ms", tz="UTC")
    row = rb.to_pylist()[1]
    assert row["event_id"] == "e1" and row["session_id"] is None and row["quantity"] == 2
    assert row["ts"] == dt.datetime.fromtimestamp(1_700_000_000_001 / 1000, UTC)
    assert row["source"] == "orders"
    assert row["received_at"] == dt.datetime.fromtimestamp(1_700_000_001, UTC)


@given(st.lists(st.tuples(st.text(min_size=1, max_size=8), st.integers(0, 2**41),
                          st.floats(0, 1e9, allow_nan=False)), max_size=20))
def test_events_round_trip_property(rows):
    """Every event field survives the conversion unchanged (ts as epoch ms)."""
    b = EventBatch("s")
    for eid, ts, price in rows:
        b.event_id.append(eid); b.ts.append(ts); b.type.append("cart"); b.user_id.append("u")
        b.session_id.append(None); b.item_id.append("i"); b.category.append(None)
        b.price.append(price); b.quantity.append(1); b.revenue.append(0.0)
    rb = events_to_record_batch(b, 0)
    assert rb.column("ts").cast(pa.int64()).to_pylist() == b.ts
    assert rb.column("event_id").to_pylist() == b.event_id
    assert rb.column("price").to_pylist() == b.price


def test_rejected_keep_raw_bytes_reason_and_source():
    """Dead letters carry received_at, source, reason, detail and the raw bytes."""
    rb = rejected_to_record_batch([Rejected(Reason.LATE, "older than watermark", b"{\"x\":1}", "clicks", 5000)])
    assert rb.schema == schemas.DEADLETTER
    assert rb.to_pylist() == [{
        "received_at": dt.datetime.fromtimestamp(5, UTC), "source": "clicks", "reason": "late",
        "detail": "older than watermark", "raw": b"{\"x\":1}"}]


def test_anomaly_key_is_a_json_array():
    """An Anomaly's key tuple is stored as a JSON array string and its times as timestamps."""
    a = Anomaly("sales", "orders", ("shoes", 3), 60_000, 120_000, 50.0, 10.0, 4.5, "spike", detected_ms=130_000)
    row = anomalies_to_record_batch([a]).to_pylist()[0]
    assert orjson.loads(row["key"]) == ["shoes", 3]
    assert row["window_end"] == dt.datetime.fromtimestamp(120, UTC)
    assert row["direction"] == "spike" and row["state"] == "open"


def test_window_schema_orders_columns_and_types():
    """Window bounds, then group-by fields (numeric fields keep their type), metrics, moving averages."""
    s = window_schema(("category", "quantity"), [("orders", "int64"), ("avg", "float64"), ("top", "topk")],
                      ["avg_sma", "avg_ema"])
    assert s.names == ["window_start", "window_end", "category", "quantity", "orders", "avg", "top",
                       "avg_sma", "avg_ema"]
    assert s.field("window_start").type == TS
    assert s.field("category").type == pa.string() and s.field("quantity").type == pa.int64()
    assert s.field("top").type == TOPK
    assert s.field("avg_ema").type == pa.float64()


def test_window_schema_rejects_unknown_kind_and_duplicates():
    """A metric kind outside METRIC_TYPES or a repeated column name is a ValueError."""
    with pytest.raises(ValueError, match="unknown kind"):
        window_schema((), [("x", "decimal")])
    with pytest.raises(ValueError, match="duplicate"):
        window_schema(("category",), [("category", "int64")])


def test_windows_rows_fill_keys_metrics_and_nulls():
    """WindowResults become rows; missing metrics are null, ints are coerced, topk accepts pairs or dicts."""
    s = window_schema(("category",), [("orders", "int64"), ("avg", "float64"), ("top", "topk")], ["avg_sma"])
    results = [
        WindowResult("a", 0, 60_000, ("shoes",), {"orders": 3.0, "avg": 2, "top": [("x", 2), {"value": 7, "count": 1}],
                                                   "avg_sma": 1.5}),
        WindowResult("a", 60_000, 120_000, (None,), {"orders": 1}),
    ]
    rows = windows_to_record_batch(results, s).to_pylist()
    assert rows[0]["category"] == "shoes" and rows[0]["orders"] == 3 and rows[0]["avg"] == 2.0
    assert rows[0]["top"] == [{"value": "x", "count": 2}, {"value": "7", "count": 1}]
    assert rows[1] == {"window_start": dt.datetime.fromtimestamp(60, UTC),
                       "window_end": dt.datetime.fromtimestamp(120, UTC),
                       "category": None, "orders": 1, "avg": None, "top": None, "avg_sma": None}


def test_windows_without_group_by():
    """An aggregation without group_by has only bounds, metrics and averages."""
    s = window_schema((), [("n", "int64")])
    rb = windows_to_record_batch([WindowResult("a", 0, 1000, (), {"n": 5})], s)
    assert rb.schema.names == ["window_start", "window_end", "n"]
    assert rb.column("n").to_pylist() == [5]


def test_time_column_per_table():
    """Each table partitions by its own time column; an unknown table is a ValueError."""
    assert time_column("windows/sales") == "window_start"
    assert time_column("events") == "ts"
    assert time_column("deadletter") == "received_at"
    assert time_column("anomalies") == "window_start"
    with pytest.raises(ValueError):
        time_column("other")


def test_json_metric_is_stored_as_json_text():
    """A "json" metric (the funnel's dict) is JSON text in the file, not Python's repr; a numeric key is str()."""
    s = window_schema(("user_id",), [("funnel", "json")])
    funnel = {"steps": ["view", "cart"], "counts": [3, None], "rate": 0.5}
    rb = windows_to_record_batch([WindowResult("a", 0, 1000, (42,), {"funnel": funnel})], s)
    row = rb.to_pylist()[0]
    assert orjson.loads(row["funnel"]) == funnel
    assert row["user_id"] == "42"


@pytest.mark.parametrize("loop", LOOPS)
@given(values=st.lists(st.one_of(st.none(), st.text(max_size=12), st.sampled_from(["", "é", "日本", "a\x00b", "🛒"])),
                       max_size=70))
def test_string_array_equals_pyarrows_conversion(loop, values):
    """string_array (compiled: one C pass into Arrow's buffers) gives the array pa.array gives: values,
    nulls (validity bits across byte bounds), empty and non-ASCII strings."""
    with loop_of(schemas, loop):
        got = schemas.string_array(values)
    want = pa.array(values, pa.string())
    assert got.type == pa.string() and got.null_count == want.null_count
    assert got.equals(want) and got.to_pylist() == values
    got.validate(full=True)


@pytest.mark.parametrize("loop", LOOPS)
@pytest.mark.parametrize("values", [["a", 1], ["a", b"bytes"], ["a", b"\xff"], ["lone \ud800 surrogate"]])
def test_string_array_takes_or_refuses_what_pyarrow_does(loop, values):
    """A value that is no str is pyarrow's to convert (bytes of UTF-8) or refuse, with its own error."""
    try:
        want = pa.array(values, pa.string())
    except Exception as exc:   # noqa: BLE001 - whatever pyarrow raises is the expected answer
        with loop_of(schemas, loop), pytest.raises(type(exc)):
            schemas.string_array(values)
    else:
        with loop_of(schemas, loop):
            assert schemas.string_array(values).equals(want)


def test_archived_events_round_trip_through_the_compiled_string_columns():
    """events_to_record_batch's string columns (compiled or not) read back as the batch's values."""
    b = _batch(5)
    b.category[1] = None
    b.session_id[3] = None
    rb = schemas.events_to_record_batch(b, 123)
    rb.validate(full=True)
    for name in ("event_id", "type", "user_id", "session_id", "item_id", "category"):
        assert rb.column(name).to_pylist() == b.column(name)
