"""Framing and JSON: a payload (object | array | NDJSON) → list of (object, raw bytes) or Rejected (pure)."""

from __future__ import annotations

from collections.abc import Iterator

import orjson

from daemon.events import RAW_LIMIT_BYTES, Reason, Rejected
from daemon import jsonbytes

Item = tuple[object, bytes | None]   # decoded value and its raw bytes when known (None: re-serialise on demand)


def iter_items(payload: bytes, source: str, now_ms: int) -> Iterator[Item | Rejected]:
    """Yield each event-to-be of a payload, or a Rejected for each part that is not JSON.

    A whole-payload parse is tried first (object or array); if that fails and the payload has
    several lines, each non-blank line is parsed on its own (NDJSON), so one bad line costs
    one event, not the page.
    """
    try:
        value = orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        yield from iter_unparsed(payload, exc, source, now_ms)
        return
    yield from iter_parsed(value, payload)


def iter_parsed(value: object, payload: bytes) -> Iterator[Item]:
    """The items of a payload that parsed as a whole into `value` (an array's elements have no raw bytes)."""
    if isinstance(value, list):
        for element in value:
            yield element, None
    else:
        yield value, payload if len(payload) <= RAW_LIMIT_BYTES else None


def iter_unparsed(payload: bytes, exc: orjson.JSONDecodeError, source: str, now_ms: int) -> Iterator[Item | Rejected]:
    """The items of a payload that is not one JSON document (`exc`): NDJSON lines, or one Rejected."""
    if b"\n" not in payload.strip():
        if payload.strip():
            yield Rejected(Reason.MALFORMED_JSON, str(exc), payload[:RAW_LIMIT_BYTES], source, now_ms)
        return
    yield from _iter_lines(payload, source, now_ms)


def split_lines(payload: bytes, source: str, now_ms: int) -> tuple[list[object], list[bytes | None]]:
    """The NDJSON lines of a payload as parallel lists: each value (or a Rejected where a line is not
    JSON) and its raw bytes (None for a Rejected and for the elements of a line holding an array).

    The same items, in the same order, as `_iter_lines` yields; but a payload of object lines (the
    usual one) is parsed in one C-level pass, without a generator step and a tuple per line.
    """
    lines = [line for line in map(bytes.strip, payload.split(b"\n")) if line]
    try:
        values = list(map(orjson.loads, lines))
    except orjson.JSONDecodeError:
        values = None   # a line is not JSON: the loop below says which
    if values is not None and list not in set(map(type, values)):
        return values, lines   # type: ignore[return-value]
    values, raws = [], []
    for part in _iter_lines(payload, source, now_ms):
        if type(part) is Rejected:
            values.append(part)
            raws.append(None)
        else:
            values.append(part[0])
            raws.append(part[1])
    return values, raws


def _iter_lines(payload: bytes, source: str, now_ms: int) -> Iterator[Item | Rejected]:
    for line in payload.split(b"\n"):
        line = line.strip()
        if not line:
            continue
        try:
            value = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            yield Rejected(Reason.MALFORMED_JSON, str(exc), line[:RAW_LIMIT_BYTES], source, now_ms)
            continue
        if isinstance(value, list):
            for element in value:
                yield element, None
        else:
            yield value, line


def raw_bytes(value: object, raw: bytes | None) -> bytes:
    """The raw bytes of one event for the dead letters, cut to 4 KiB."""
    if raw is not None:
        return raw[:RAW_LIMIT_BYTES]
    try:
        return jsonbytes.dumps(value)[:RAW_LIMIT_BYTES]
    except (TypeError, orjson.JSONEncodeError, RecursionError):
        # An array element nested deeper than orjson writes: keep a bounded prefix of its shape.
        try:
            return repr(value)[:RAW_LIMIT_BYTES].encode("utf-8", "replace")[:RAW_LIMIT_BYTES]
        except RecursionError:
            return b"<element nested too deeply to re-serialise>"
