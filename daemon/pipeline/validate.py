"""Decoded objects → EventBatch columns or Rejected, by SPEC's event schema (pure).

One `Validator` per source: it knows the field renames, the seq field and the future skew.
A valid batch is checked column-wise (pipeline/columnar.py); the exact per-event path below, written
out flat, runs for small payloads and around anything to reject, and is the reference.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime

import orjson

from daemon.events import (
    EVENT_TYPES, MAX_ID_CHARS, MAX_PRICE, MAX_QUANTITY, MAX_TEXT_CHARS, MAX_TS_MS, PRICED_TYPES, RAW_LIMIT_BYTES,
    EventBatch, Reason, Rejected,
)
from daemon.pipeline.columnar import Columns, check_columns, validate_columns
from daemon.pipeline.structdecode import StructDecoder
from daemon.pipeline.decode import iter_unparsed, raw_bytes, split_lines

_TYPES = frozenset(EVENT_TYPES)
_NEEDS_PRICE = frozenset(PRICED_TYPES)
FAST_PATH_MIN_EVENTS = 32   # see Validator._fast
CHUNK_EVENTS = 128          # see Validator._decode_values
STRUCT_SKIP = 15            # see Validator.try_columns


@dataclass(slots=True)
class Decoded:
    """The result of one payload: accepted events, rejected ones, and the largest seq seen."""

    batch: EventBatch
    rejected: list[Rejected] = field(default_factory=list)
    max_seq: int | None = None

    @property
    def total(self) -> int:
        return len(self.batch) + len(self.rejected)


class _Bad(Exception):
    def __init__(self, reason: Reason, detail: str) -> None:
        self.reason = reason
        self.detail = detail


def parse_ts_ms(value: object) -> int:
    """Event time in epoch ms from an int or an RFC 3339 string (raises _Bad)."""
    if type(value) is int:
        ts = value
    elif isinstance(value, str):
        try:
            dt = datetime.fromisoformat(value)
        except ValueError:
            raise _Bad(Reason.BAD_VALUE, f"ts {value[:40]!r} is not RFC 3339") from None
        if dt.tzinfo is None:
            raise _Bad(Reason.BAD_VALUE, "ts string needs a time zone (e.g. Z)")
        ts = round(dt.timestamp() * 1000)
    else:
        raise _Bad(Reason.BAD_TYPE, f"ts must be int epoch ms or an RFC 3339 string, got {type(value).__name__}")
    if not 0 <= ts < MAX_TS_MS:
        raise _Bad(Reason.BAD_VALUE, "ts out of range")
    return ts


def _ident(obj: dict, key: str, name: str, required: bool) -> str | None:
    value = obj.get(key)
    if value is None:
        if required:
            raise _Bad(Reason.MISSING_FIELD, f"{name} is required")
        return None
    t = type(value)
    if t is str:
        if not value or len(value) > MAX_ID_CHARS:
            raise _Bad(Reason.BAD_VALUE, f"{name} must be 1-{MAX_ID_CHARS} chars")
        return value
    if t is int:
        if abs(value) >= 2**63:
            raise _Bad(Reason.BAD_VALUE, f"{name} integer out of range")
        return str(value)
    raise _Bad(Reason.BAD_TYPE, f"{name} must be a string or an integer, got {t.__name__}")


def _text(obj: dict, key: str, name: str) -> str | None:
    value = obj.get(key)
    if value is None:
        return None
    if type(value) is not str:
        raise _Bad(Reason.BAD_TYPE, f"{name} must be a string, got {type(value).__name__}")
    if len(value) > MAX_TEXT_CHARS:
        raise _Bad(Reason.BAD_VALUE, f"{name} longer than {MAX_TEXT_CHARS} chars")
    return value


class Validator:
    """Validates payloads of one source into an EventBatch."""

    def __init__(self, source: str, *, renames: dict[str, str] | None = None, seq_field: str = "",
                 max_future_skew_ms: int = 300_000) -> None:
        self.source = source
        names = {f: f for f in ("event_id", "ts", "type", "user_id", "session_id", "item_id",
                                "category", "price", "quantity")}
        names.update(renames or {})
        self._k = names
        self.seq_field = seq_field
        self.max_future_skew_ms = max_future_skew_ms
        self._structs = StructDecoder(names, seq_field)
        self._struct_skips = 0   # payloads left to decode the orjson way after the column way missed

    def page_decoder(self, events_field: str, cursor_field: str) -> StructDecoder:
        """A decoder of this source's pages `{events_field: [...], cursor_field: ...}` into columns
        for `decode_columns` (sources/http_poll.py)."""
        return StructDecoder(self._k, self.seq_field, events_field, cursor_field)

    def try_columns(self) -> bool:
        """Whether to decode the next payload the column way first (pipeline/structdecode.py). After
        a miss (see decode_columns) the next STRUCT_SKIP go the orjson way only: a feed that is bad
        throughout parses each payload once, not twice (a body of 1,000 with one bad event costs
        ~1.2 us/event the orjson way, ~1.5 decoded both ways)."""
        if self._struct_skips:
            self._struct_skips -= 1
            return False
        return True

    def decode_columns(self, cols: Columns | None, now_ms: int) -> Decoded | None:
        """The column-wise result for columns msgspec made when they are many and all valid; else None
        (no columns: the payload was not an array of event objects), the caller decodes the payload
        the orjson way, and this counts as a miss for `try_columns`."""
        fast = None
        if cols is not None and cols.n >= FAST_PATH_MIN_EVENTS:
            fast = check_columns(cols, self.source, now_ms + self.max_future_skew_ms, parse_ts_ms)
        if fast is None:
            self._struct_skips = STRUCT_SKIP
            return None
        return Decoded(fast[0], max_seq=fast[1])

    def decode(self, payload: bytes, now_ms: int) -> Decoded:
        """Decode and validate one payload; never raises for bad input.

        A JSON array of many events, all valid (the usual ingest body or websocket frame), is decoded
        straight into columns (pipeline/structdecode.py); anything else the orjson way below."""
        if payload[:1] == b"[" and len(payload) >= FAST_PATH_MIN_EVENTS * 16 and self.try_columns():
            fast = self.decode_columns(self._structs.array(payload), now_ms)
            if fast is not None:
                return fast
        try:
            value = orjson.loads(payload)
        except orjson.JSONDecodeError as exc:
            if b"\n" not in payload.strip():   # one broken document (or nothing): at most one Rejected
                return self._decode_values(list(iter_unparsed(payload, exc, self.source, now_ms)), None, now_ms)
            return self._decode_values(*split_lines(payload, self.source, now_ms), now_ms)
        if type(value) is list:
            return self.decode_items(value, now_ms)   # as iter_parsed would give them: elements without raw bytes
        return self._decode_values([value], [payload if len(payload) <= RAW_LIMIT_BYTES else None], now_ms)

    def decode_items(self, items: list[object], now_ms: int) -> Decoded:
        """Validate values that are already parsed (e.g. the events list of a page).

        A batch that is valid throughout (the usual case) is checked column by column
        (pipeline/columnar.py); in any other, the chunks around what is to be rejected go event by
        event, which says what is wrong with each.
        """
        return self._decode_values(items, None, now_ms)

    def _decode_values(self, values: list[object], raws: list[bytes | None] | None, now_ms: int) -> Decoded:
        """Validate `values` (a Rejected among them stands for a part that was not JSON), `raws[i]`
        being the raw bytes of `values[i]` when known.

        The whole list is tried column-wise first; if something in it is to be rejected, each chunk of
        CHUNK_EVENTS is (see _add_span), so one bad event costs a few column-wise tries and sends a few
        dozen neighbours, not the whole page, the per-event way (measured, JSON parse included: a body
        of 1000 with one bad event took 1.52 us/event all event by event, 1.20 so; 0.90 with none).
        After two chunks in a row fail, the rest goes event by event: a feed that is bad throughout
        (a wrong rename) pays for the tries of two chunks only.
        """
        fast = self._fast(values, now_ms)
        if fast is not None:
            return Decoded(fast[0], max_seq=fast[1])
        out = Decoded(EventBatch(self.source))
        n = len(values)
        failed = 0
        for start in range(0, n, CHUNK_EVENTS):
            stop = min(start + CHUNK_EVENTS, n)
            if failed >= 2:
                self._add_each(out, values, raws, start, stop, now_ms)
            elif self._add_span(out, values, raws, start, stop, now_ms, known_bad=stop - start == n):
                failed = 0
            else:
                failed += 1
        return out

    def _add_span(self, out: Decoded, values: list[object], raws: list[bytes | None] | None, start: int, stop: int,
                  now_ms: int, known_bad: bool = False) -> bool:
        """Add values[start:stop]: column-wise when all are valid (True); else each half the same way,
        down to FAST_PATH_MIN_EVENTS, and event by event below that (False). `known_bad` skips the
        column-wise try of a span already known to hold something to reject."""
        if not known_bad:
            fast = self._fast(values[start:stop], now_ms)
            if fast is not None:
                batch, max_seq = fast
                out.batch.extend(batch)
                if max_seq is not None and (out.max_seq is None or max_seq > out.max_seq):
                    out.max_seq = max_seq
                return True
        if stop - start < 2 * FAST_PATH_MIN_EVENTS:
            self._add_each(out, values, raws, start, stop, now_ms)
            return False
        mid = (start + stop) // 2
        # The span as a whole failed: when its first half passes, the second holds what is to be rejected.
        self._add_span(out, values, raws, mid, stop, now_ms,
                       known_bad=self._add_span(out, values, raws, start, mid, now_ms))
        return False

    def _add_each(self, out: Decoded, values: list[object], raws: list[bytes | None] | None, start: int, stop: int,
                  now_ms: int) -> None:
        """The exact path for values[start:stop]."""
        add, rejected = self.add, out.rejected
        for i in range(start, stop):
            obj = values[i]
            if type(obj) is Rejected:
                rejected.append(obj)
            else:
                add(out, obj, None if raws is None else raws[i], now_ms)

    def _fast(self, items: list[object], now_ms: int) -> tuple[EventBatch, int | None] | None:
        """The column-wise result (batch, max seq) when `items` are many and all valid, else None.

        Below FAST_PATH_MIN_EVENTS the fixed cost of ~40 column calls (~10 us) outweighs its saving
        (~0.5 us per event, measured), so small payloads go event by event."""
        if len(items) < FAST_PATH_MIN_EVENTS:
            return None
        return validate_columns(items, self.source, self._k, self.seq_field, now_ms + self.max_future_skew_ms,
                                parse_ts_ms)

    def add(self, out: Decoded, obj: object, raw: bytes | None, now_ms: int) -> None:
        """Validate one decoded value into `out` (accepted column values or a Rejected)."""
        if type(obj) is not dict:
            out.rejected.append(Rejected(Reason.NOT_AN_OBJECT, f"expected a JSON object, got {type(obj).__name__}",
                                         raw_bytes(obj, raw), self.source, now_ms))
            return
        try:
            self._add(out, obj, now_ms)
        except _Bad as bad:
            out.rejected.append(Rejected(bad.reason, bad.detail, raw_bytes(obj, raw), self.source, now_ms))

    def _add(self, out: Decoded, obj: dict, now_ms: int) -> None:
        k = self._k
        event_id = obj.get(k["event_id"])
        if event_id is None:
            raise _Bad(Reason.MISSING_FIELD, "event_id is required")
        if type(event_id) is not str:
            raise _Bad(Reason.BAD_TYPE, f"event_id must be a string, got {type(event_id).__name__}")
        if not 0 < len(event_id) <= MAX_ID_CHARS:
            raise _Bad(Reason.BAD_VALUE, f"event_id must be 1-{MAX_ID_CHARS} chars")
        ts_raw = obj.get(k["ts"])
        if ts_raw is None:
            raise _Bad(Reason.MISSING_FIELD, "ts is required")
        ts = parse_ts_ms(ts_raw)
        if ts > now_ms + self.max_future_skew_ms:
            raise _Bad(Reason.FUTURE_TS, f"ts is {ts - now_ms} ms in the future (max_future_skew {self.max_future_skew_ms} ms)")
        etype = obj.get(k["type"])
        if etype is None:
            raise _Bad(Reason.MISSING_FIELD, "type is required")
        if etype not in _TYPES if type(etype) is str else True:
            raise _Bad(Reason.BAD_VALUE if type(etype) is str else Reason.BAD_TYPE,
                       f"type must be one of {', '.join(EVENT_TYPES)}")
        user_id = _ident(obj, k["user_id"], "user_id", True)
        item_id = _ident(obj, k["item_id"], "item_id", etype != "search")
        session_id = _text(obj, k["session_id"], "session_id")
        category = _text(obj, k["category"], "category")
        price = obj.get(k["price"])
        if price is None:
            if etype in _NEEDS_PRICE:
                raise _Bad(Reason.MISSING_FIELD, f"price is required for {etype}")
        else:
            tp = type(price)
            if tp is not float and tp is not int:
                raise _Bad(Reason.BAD_TYPE, f"price must be a number, got {tp.__name__}")
            if not 0 <= price <= MAX_PRICE or (tp is float and not math.isfinite(price)):
                raise _Bad(Reason.BAD_VALUE, f"price must be between 0 and {MAX_PRICE:g}")
            price = float(price)
        quantity = obj.get(k["quantity"], 1)
        if quantity is None:
            quantity = 1
        elif type(quantity) is not int:
            raise _Bad(Reason.BAD_TYPE, f"quantity must be an integer, got {type(quantity).__name__}")
        elif not 1 <= quantity <= MAX_QUANTITY:
            raise _Bad(Reason.BAD_VALUE, f"quantity must be between 1 and {MAX_QUANTITY}")
        if self.seq_field:
            seq = obj.get(self.seq_field)
            if type(seq) is int and (out.max_seq is None or seq > out.max_seq):
                out.max_seq = seq
        b = out.batch
        b.event_id.append(event_id)
        b.ts.append(ts)
        b.type.append(etype)
        b.user_id.append(user_id)
        b.session_id.append(session_id)
        b.item_id.append(item_id)
        b.category.append(category)
        b.price.append(price)
        b.quantity.append(quantity)
        b.revenue.append(price * quantity if etype == "purchase" else 0.0)
