"""The column-wise fast path accepts exactly what the per-event path accepts, with the same result."""

from __future__ import annotations

import json

import orjson
from hypothesis import given, settings, strategies as st

from daemon.events import EventBatch, Rejected
from daemon.pipeline.columnar import validate_columns
from daemon.pipeline.decode import _iter_lines, iter_items, split_lines
from daemon.pipeline.validate import CHUNK_EVENTS, FAST_PATH_MIN_EVENTS, Decoded, Validator, parse_ts_ms
from daemon.storefront.generator import Generator
from tests.strategies import T0_MS, raw_events

NOW_MS = T0_MS + 3_600_000
SKEW_MS = 60_000
RENAMES = {"ts": "timestamp", "user_id": "uid"}


def exact(v: Validator, items: list[object]) -> Decoded:
    """The per-event path alone, item by item."""
    out = Decoded(EventBatch(v.source))
    for obj in items:
        v.add(out, obj, None, NOW_MS)
    return out


def exact_payload(v: Validator, payload: bytes) -> Decoded:
    """What decode gave before the fast path: every part of the payload through the per-event path."""
    out = Decoded(EventBatch(v.source))
    for part in iter_items(payload, v.source, NOW_MS):
        if type(part) is Rejected:
            out.rejected.append(part)
        else:
            v.add(out, part[0], part[1], NOW_MS)
    return out


def typed(d: Decoded) -> tuple:
    """The result with each value's type, so that 1 and 1.0 (equal in Python) count as different."""
    columns = [[(type(v), v) for v in col] for col in d.batch.columns()]
    return columns, d.rejected, d.max_seq


def same(a: Decoded, b: Decoded) -> bool:
    return typed(a) == typed(b)


def many(items: list[object]) -> list[object]:
    """`items` repeated up to the size the validator checks column-wise."""
    return items * (FAST_PATH_MIN_EVENTS // len(items) + 1) if items else items


def check_columns(v: Validator, items: list[object]) -> None:
    expected = exact(v, items)
    fast = validate_columns(items, v.source, v._k, v.seq_field, NOW_MS + SKEW_MS, parse_ts_ms)
    assert (fast is not None) == bool(items and not expected.rejected)   # taken whenever it can be
    if fast is not None:
        assert typed(Decoded(fast[0], max_seq=fast[1])) == typed(expected)


@settings(max_examples=500, deadline=None)
@given(st.lists(raw_events(), max_size=12), st.sampled_from(("", "seq")))
def test_columns_accept_exactly_what_the_per_event_path_accepts(items, seq_field):
    """On any mix of good and bad values, validate_columns answers iff nothing is rejected, with the same batch."""
    check_columns(Validator("src", seq_field=seq_field, max_future_skew_ms=SKEW_MS), items)


@settings(max_examples=200, deadline=None)
@given(st.lists(raw_events(RENAMES), max_size=12))
def test_renamed_fields_agree(items):
    """With field renames the column-wise and the per-event path still agree."""
    check_columns(Validator("src", renames=RENAMES, max_future_skew_ms=SKEW_MS), items)


@settings(max_examples=200, deadline=None)
@given(st.lists(raw_events(), max_size=6), st.sampled_from(("", "seq")))
def test_decode_items_equals_the_per_event_path(items, seq_field):
    """decode_items gives the per-event path's batch, dead letters (reason, detail, raw, order) and seq."""
    items = many(items)
    v = Validator("src", seq_field=seq_field, max_future_skew_ms=SKEW_MS)
    assert same(v.decode_items(items, NOW_MS), exact(v, items))


@settings(max_examples=200, deadline=None)
@given(st.lists(raw_events(), max_size=6), st.booleans())
def test_decode_equals_the_per_event_path_for_arrays_and_ndjson(items, ndjson):
    """A JSON array or NDJSON payload decodes as every part of it would one by one."""
    items = many(items)
    try:
        if ndjson:
            payload = b"\n".join(json.dumps(i, allow_nan=False).encode() for i in items) + b"\n"
        else:
            payload = json.dumps(items, allow_nan=False).encode()
    except ValueError:   # NaN or infinity: not JSON
        return
    v = Validator("src", seq_field="seq", max_future_skew_ms=SKEW_MS)
    assert same(v.decode(payload, NOW_MS), exact_payload(v, payload))


def test_valid_batch_keeps_order_and_normalises():
    """A valid batch comes back whole, in order, with int ids as strings and RFC 3339 ts in ms."""
    items = [{"event_id": "a", "ts": T0_MS, "type": "purchase", "user_id": 7, "item_id": "i", "price": 2, "quantity": 3},
             {"event_id": "b", "ts": "2023-11-14T22:13:20.250Z", "type": "search", "user_id": "u", "seq": 4}]
    batch, max_seq = validate_columns(items, "src", Validator("src")._k, "seq", NOW_MS, parse_ts_ms)
    assert max_seq == 4
    assert batch.rows() == [
        {"event_id": "a", "ts": T0_MS, "type": "purchase", "user_id": "7", "session_id": None, "item_id": "i",
         "category": None, "price": 2.0, "quantity": 3, "revenue": 6.0},
        {"event_id": "b", "ts": 1_700_000_000_250, "type": "search", "user_id": "u", "session_id": None,
         "item_id": None, "category": None, "price": None, "quantity": 1, "revenue": 0.0},
    ]


# -- the chunked path: a large payload with a few bad events ---------------------------------------

def _base_events() -> list[dict]:
    events = Generator(3, start_ms=T0_MS).next_batch(700)
    for seq, event in enumerate(events):
        event["seq"] = seq
    return events


BASE_EVENTS = _base_events()   # a storefront page: every event valid


@settings(max_examples=150, deadline=None)
@given(st.integers(min_value=2 * CHUNK_EVENTS, max_value=len(BASE_EVENTS)),
       st.lists(st.tuples(st.floats(min_value=0, max_value=1, exclude_max=True), raw_events()), max_size=8),
       st.sampled_from(("", "seq")))
def test_a_few_bad_events_in_a_large_batch_match_the_per_event_path(n, inserts, seq_field):
    """Chunked column-wise tries around bad events give the per-event path's batch, dead letters and seq."""
    items: list[object] = list(BASE_EVENTS[:n])
    for where, value in inserts:
        items.insert(int(where * len(items)), value)
    v = Validator("src", seq_field=seq_field, max_future_skew_ms=SKEW_MS)
    assert same(v.decode_items(items, NOW_MS), exact(v, items))


@settings(max_examples=30, deadline=None)
@given(st.lists(raw_events(), min_size=1, max_size=3))
def test_a_batch_bad_throughout_matches_the_per_event_path(pool):
    """A large batch with bad events everywhere (no chunk passes) still equals the per-event path."""
    items = [dict(e, event_id=None) if type(e) is dict else e for e in pool] * (3 * CHUNK_EVENTS // len(pool))
    v = Validator("src", max_future_skew_ms=SKEW_MS)
    assert same(v.decode_items(items, NOW_MS), exact(v, items))


_LINES = st.one_of(
    st.binary(max_size=30).map(lambda b: b.replace(b"\n", b" ")),
    st.sampled_from((b"", b"  ", b"\r", b"[]", b"[1, {}]", b"{}", b"null", b"{\"a\":[1", b"2]}", b"[" * 600 + b"]" * 600)),
    raw_events().map(lambda e: json.dumps(e, allow_nan=True).encode()),
    st.lists(raw_events(), max_size=3).map(lambda es: json.dumps(es, allow_nan=True).encode()),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_LINES, max_size=12), st.booleans())
def test_split_lines_gives_the_items_iter_lines_gives(lines, trailing_newline):
    """split_lines yields the same values, raw bytes and Rejecteds, in the same order, as _iter_lines."""
    payload = b"\n".join(lines) + (b"\n" if trailing_newline else b"")
    values, raws = split_lines(payload, "src", NOW_MS)
    expected = list(_iter_lines(payload, "src", NOW_MS))
    assert len(values) == len(raws) == len(expected)
    for value, raw, part in zip(values, raws, expected):
        if type(part) is Rejected:
            assert value == part and raw is None
        else:
            assert (type(value), raw, value) == (type(part[0]), part[1], part[0])   # JSON: no NaN to spoil ==


@settings(max_examples=100, deadline=None)
@given(st.integers(min_value=FAST_PATH_MIN_EVENTS, max_value=len(BASE_EVENTS)), st.lists(
    st.tuples(st.floats(min_value=0, max_value=1, exclude_max=True), _LINES), max_size=6))
def test_large_ndjson_with_bad_lines_decodes_as_each_line_would(n, inserts):
    """NDJSON with broken, empty, array and bad-event lines among many good ones decodes as part by part."""
    lines = [orjson.dumps(e) for e in BASE_EVENTS[:n]]
    for where, line in inserts:
        lines.insert(int(where * len(lines)), line)
    payload = b"\n".join(lines) + b"\n"
    v = Validator("src", seq_field="seq", max_future_skew_ms=SKEW_MS)
    assert same(v.decode(payload, NOW_MS), exact_payload(v, payload))


@settings(max_examples=200, deadline=None)
@given(raw_events() | st.sampled_from((b"", b" \n ", b"{", b"x" * 5000, b"[]", b"{}", b"null", b'{"event_id": "a"}' + b" " * 5000)))
def test_single_object_payload_decodes_as_the_per_event_path(value):
    """One object (or any single JSON value) as a whole payload: same result and raw bytes as before."""
    payload = value if type(value) is bytes else json.dumps(value, allow_nan=True).encode()
    v = Validator("src", max_future_skew_ms=SKEW_MS)
    assert same(v.decode(payload, NOW_MS), exact_payload(v, payload))


def test_one_bad_event_sends_only_its_neighbours_event_by_event():
    """In a 700-event batch with one bad event, fewer than 2 * FAST_PATH_MIN_EVENTS go the per-event path."""
    items: list[object] = list(BASE_EVENTS)
    items[400] = dict(items[400], type="buy")
    v = Validator("src", seq_field="seq", max_future_skew_ms=SKEW_MS)
    seen: list[object] = []
    add = v.add
    v.add = lambda out, obj, raw, now_ms: (seen.append(obj), add(out, obj, raw, now_ms))   # type: ignore[method-assign]
    d = v.decode_items(items, NOW_MS)
    assert len(d.batch) == 699 and [r.reason for r in d.rejected] == ["bad_value"]
    assert items[400] in seen and len(seen) < 2 * FAST_PATH_MIN_EVENTS


_I64 = st.integers(min_value=-(2**63) + 1, max_value=2**63 - 1)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(_I64, st.integers(min_value=0, max_value=10**12)), min_size=FAST_PATH_MIN_EVENTS, max_size=80),
       st.sampled_from((None, 2**63, -(2**63), -1, 10**12 + 1)), st.integers(min_value=0, max_value=79))
def test_numeric_ids_and_integer_prices_match_the_per_event_path(values, odd, where):
    """A shop sending int user/item ids and int prices gets str ids and float prices, as event by event."""
    items = [dict(BASE_EVENTS[i], user_id=uid, item_id=uid // 7, price=price) for i, (uid, price) in enumerate(values)]
    if odd is not None:   # one id or price out of range
        items[where % len(items)]["user_id" if abs(odd) >= 2**63 else "price"] = odd
    v = Validator("src", max_future_skew_ms=SKEW_MS)
    assert same(v.decode_items(items, NOW_MS), exact(v, items))


def _json_or_none(value: object) -> bytes | None:
    try:
        return json.dumps(value, allow_nan=False).encode()
    except ValueError:   # NaN or infinity: not JSON
        return None


@settings(max_examples=300, deadline=None)
@given(st.lists(raw_events(RENAMES), max_size=6), st.sampled_from(("", "seq")),
       st.sampled_from((None, 2**64, -(2**63) - 1, 10**30)))
def test_msgspec_columns_accept_exactly_what_the_per_event_path_accepts(items, seq_field, huge):
    """Decoded straight into columns (pipeline/structdecode.py), an array gives the per-event path's
    batch and seq whenever nothing in it is rejected, and nothing otherwise (the caller then decodes it
    the orjson way). With renames, and with a seq or an unread field beyond 64 bits (orjson makes
    those floats, msgspec ints)."""
    items = many(items)
    if huge is not None and items and isinstance(items[0], dict):
        items = [dict(items[0], seq=huge, extra=huge), *items[1:]]
    payload = _json_or_none(items)
    if payload is None:
        return
    v = Validator("src", renames=RENAMES, seq_field=seq_field, max_future_skew_ms=SKEW_MS)
    expected = exact_payload(v, payload)
    got = v.decode_columns(v._structs.array(payload), NOW_MS)
    assert (got is not None) == bool(items and not expected.rejected)
    if got is not None:
        assert same(got, expected)
    assert same(v.decode(payload, NOW_MS), expected)


@settings(max_examples=200, deadline=None)
@given(st.lists(raw_events(), max_size=6),
       st.sampled_from(({"next_cursor": "c1"}, {"next_cursor": 7}, {"next_cursor": None}, {"next_cursor": True},
                        {"next_cursor": {"x": 1}}, {})),
       st.sampled_from(("list", "null", "missing", "object", "bare array")))
def test_pages_decode_as_parse_page_and_the_validator_would(items, cursor, form):
    """http_poll's one-call decode_page (msgspec columns when it can) gives what parse_page followed by
    the validator gives: the same events, dead letters, seq and cursor, or the same FetchError."""
    from daemon.errors import FetchError
    from daemon.sources.http_poll import decode_page, parse_page

    items = many(items)
    page: object = {"list": {"events": items}, "null": {"events": None}, "missing": {"other": items},
                    "object": {"events": {"a": 1}}, "bare array": items}[form]
    if isinstance(page, dict):
        page = {**page, **cursor}
    body = _json_or_none(page)
    if body is None:
        return
    v = Validator("src", seq_field="seq", max_future_skew_ms=SKEW_MS)
    try:
        ref = parse_page(body, "events", "next_cursor")
    except FetchError as exc:
        try:
            decode_page(body, v, v.page_decoder("events", "next_cursor"), "events", "next_cursor", NOW_MS)
        except FetchError as got:
            assert str(got) == str(exc)
            return
        raise AssertionError("decode_page accepted what parse_page refuses")
    expected = v.decode_items(ref.items, NOW_MS) if ref.payload is None else v.decode(ref.payload, NOW_MS)
    got, next_cursor = decode_page(body, v, v.page_decoder("events", "next_cursor"), "events", "next_cursor", NOW_MS)
    assert same(got, expected) and next_cursor == ref.next_cursor
