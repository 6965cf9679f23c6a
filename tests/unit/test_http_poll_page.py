"""http_poll's pure parts: page parsing and the checkpointed position encoding."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from daemon.errors import FetchError
from daemon.sources.http_poll import Page, decode_position, encode_position, parse_page

EVENTS = [{"event_id": "a", "ts": 1, "type": "view", "user_id": 1, "item_id": 2},
          {"event_id": "b", "ts": 2, "type": "view", "user_id": 1, "item_id": 3}]


def test_object_form_gives_items_and_cursor():
    """{"events": [...], "next_cursor": "..."} yields the parsed events and the next cursor."""
    body = orjson.dumps({"events": EVENTS, "next_cursor": "abc"})
    assert parse_page(body, "events", "next_cursor") == Page(EVENTS, None, "abc")


def test_field_names_are_configurable_and_int_cursors_become_strings():
    """Custom events/cursor field names are honoured; an integer cursor is sent back as text."""
    body = orjson.dumps({"data": EVENTS, "after": 42})
    assert parse_page(body, "data", "after") == Page(EVENTS, None, "42")


def test_missing_or_null_cursor_keeps_the_current_one():
    """A page without a usable cursor reports None (the caller keeps its cursor)."""
    for extra in ({}, {"next_cursor": None}, {"next_cursor": True}, {"next_cursor": {"x": 1}}):
        body = orjson.dumps({"events": EVENTS} | extra)
        assert parse_page(body, "events", "next_cursor").next_cursor is None


def test_bare_array_is_a_page_of_items():
    """A bare JSON array is a page of its elements with no cursor."""
    assert parse_page(orjson.dumps(EVENTS), "events", "next_cursor") == Page(EVENTS, None, None)


def test_ndjson_is_passed_through_as_a_payload():
    """NDJSON is left as bytes for the decoder, so one bad line costs one event, not the page."""
    body = orjson.dumps(EVENTS[0]) + b"\n{not json\n" + orjson.dumps(EVENTS[1]) + b"\n"
    assert parse_page(body, "events", "next_cursor") == Page(None, body, None)


def test_empty_body_and_null_events_are_empty_pages():
    """An empty body or "events": null is a page with no events."""
    assert parse_page(b"  \n", "events", "next_cursor") == Page([], None, None)
    assert parse_page(b'{"events": null, "next_cursor": "z"}', "events", "next_cursor") == Page([], None, "z")


def test_single_object_is_one_event_when_no_events_field():
    """With events_field = "" an object body is one event."""
    body = orjson.dumps(EVENTS[0])
    assert parse_page(body, "", "next_cursor") == Page([EVENTS[0]], None, None)


@pytest.mark.parametrize("body", [b"<html>oops</html>", b"<html>\n<body>502</body>\n</html>", b"{\"events\": [",
                                  b'{"error": "rate limited"}', b'{"events": {"a": 1}}'])
def test_malformed_pages_are_errors(body):
    """A body that is not JSON/NDJSON, or an object without an events array, raises FetchError."""
    with pytest.raises(FetchError):
        parse_page(body, "events", "next_cursor")


@given(st.one_of(st.none(), st.text()), st.one_of(st.none(), st.text()))
def test_position_round_trips(cursor, etag):
    """decode_position(encode_position(c, e)) == (c, e) for any cursor and ETag."""
    assert decode_position(encode_position(cursor, etag)) == (cursor, etag)


def test_foreign_positions_are_refused():
    """A position that is not our encoding is a ValueError (the source then starts fresh)."""
    assert decode_position(None) == (None, None)
    for bad in (b"not json", b"[1]", b'{"cursor": 5}'):
        with pytest.raises(ValueError):
            decode_position(bad)
