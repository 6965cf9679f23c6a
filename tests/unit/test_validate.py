"""Decoding (object, array, NDJSON) and validation by the event schema."""

import json
import math

import orjson
from hypothesis import given, settings, strategies as st

from daemon.events import Reason
from daemon.pipeline.validate import Validator

NOW = 1_800_000_000_000


def good(**over):
    ev = {"event_id": "e1", "ts": NOW - 1000, "type": "purchase", "user_id": "u1", "session_id": "s1",
          "item_id": "i1", "category": "books", "price": 10.0, "quantity": 3}
    ev.update(over)
    return {k: v for k, v in ev.items() if v is not ...}


def decode(payload: bytes, **kw):
    return Validator("src", **kw).decode(payload, NOW)


def test_object_array_and_ndjson_payloads():
    """One object, an array of objects and NDJSON lines all decode."""
    assert len(decode(orjson.dumps(good())).batch) == 1
    assert len(decode(orjson.dumps([good(event_id="a"), good(event_id="b")])).batch) == 2
    nd = b"\n".join(orjson.dumps(good(event_id=str(i))) for i in range(3)) + b"\n"
    assert len(decode(nd).batch) == 3


def test_revenue_and_normalisation():
    """revenue = price * quantity on purchases, 0 elsewhere; int ids become strings; RFC 3339 ts."""
    d = decode(orjson.dumps([good(user_id=7, item_id=9), good(event_id="v", type="view", price=...),
                             good(event_id="t", ts="2027-01-15T08:00:00.250Z"), ]))
    rows = d.batch.rows()
    assert rows[0]["revenue"] == 30.0 and rows[0]["user_id"] == "7" and rows[0]["item_id"] == "9"
    assert rows[1]["revenue"] == 0.0 and rows[1]["price"] is None
    assert rows[2]["ts"] == 1_800_000_000_250


def test_field_renames():
    """`fields = { ts = "timestamp" }` reads the canonical field from the feed's name."""
    ev = good()
    ev["timestamp"] = ev.pop("ts")
    d = decode(orjson.dumps(ev), renames={"ts": "timestamp"})
    assert len(d.batch) == 1 and d.batch.ts == [NOW - 1000]


def test_rejections_carry_reason_and_raw_bytes():
    """Each bad event is a Rejected with its reason and its own raw bytes; good ones still pass."""
    lines = [
        orjson.dumps(good(event_id=...)),
        orjson.dumps(good(event_id="x", ts="yesterday")),
        orjson.dumps(good(event_id="y", type="buy")),
        orjson.dumps(good(event_id="z", price=-1)),
        orjson.dumps(good(event_id="q", quantity=0)),
        orjson.dumps(good(event_id="f", ts=NOW + 3_600_000)),
        orjson.dumps(good(event_id="c", type="cart", price=...)),
        b"{not json",
        b"42",
        orjson.dumps(good(event_id="ok")),
    ]
    d = decode(b"\n".join(lines))
    reasons = [r.reason for r in d.rejected]
    assert reasons == [Reason.MISSING_FIELD, Reason.BAD_VALUE, Reason.BAD_VALUE, Reason.BAD_VALUE,
                       Reason.BAD_VALUE, Reason.FUTURE_TS, Reason.MISSING_FIELD, Reason.MALFORMED_JSON,
                       Reason.NOT_AN_OBJECT]
    assert d.rejected[7].raw == b"{not json"
    assert d.batch.event_id == ["ok"]
    assert all(r.source == "src" for r in d.rejected)


def test_raw_bytes_are_cut_to_4k():
    """A huge bad payload keeps only its first 4 KiB."""
    d = decode(b"x" * 100_000)
    assert len(d.rejected) == 1 and len(d.rejected[0].raw) == 4096


def test_seq_field_max():
    """The largest seq of a payload is reported for websocket resume."""
    d = decode(orjson.dumps([good(event_id="a", seq=5), good(event_id="b", seq=9), good(event_id="c", seq=7)]),
               seq_field="seq")
    assert d.max_seq == 9


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(
    st.binary(max_size=60),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.builds(lambda d: json.dumps({**good(), **d}).encode(), st.dictionaries(
        st.sampled_from(["event_id", "ts", "type", "user_id", "item_id", "price", "quantity", "category"]),
        json_values, max_size=3)),
), min_size=1, max_size=20))
def test_fuzzed_ndjson_never_raises_and_accounts_for_every_line(lines):
    """Garbage, wrong types and odd JSON: no exception, and every line is accepted or rejected."""
    lines = [ln.replace(b"\n", b" ").replace(b"\r", b" ") for ln in lines]
    lines = [ln if ln.strip() else b"{}" for ln in lines]
    payload = b"\n".join(lines) + b"\n" + b"{}"   # never a single valid document as a whole
    d = decode(payload)
    expected = 1
    for ln in lines:
        try:
            v = orjson.loads(ln)
        except orjson.JSONDecodeError:
            expected += 1
            continue
        expected += len(v) if isinstance(v, list) else 1
    assert d.total == expected
    for price in d.batch.price:
        assert price is None or (math.isfinite(price) and price >= 0)


def test_deeply_nested_array_element_is_rejected_not_raised():
    """An array holding a 1000-deep nested list rejects that element instead of crashing."""
    payload = b"[" + b"[" * 1000 + b"]" * 1000 + b"]"
    d = decode(payload + b"\n" + payload)
    assert len(d.batch) == 0 and len(d.rejected) == 2
    assert all(r.reason == Reason.NOT_AN_OBJECT and 0 < len(r.raw) <= 4096 for r in d.rejected)
