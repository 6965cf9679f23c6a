"""Column-wise validation of a whole list of decoded values: the fast path for a batch with nothing to reject.

Most payloads are entirely valid, and checking them event by event (`Validator._add`) spends its
time running bytecode per field. Here each field becomes one column in one C-level pass
(`map(dict.get, ...)`), and each column is checked as a whole: the set of its value types, then
min/max or the set of lengths. The answer is all or nothing: an EventBatch when every value would
pass `Validator._add`, else None, and the caller runs the exact per-event path, which alone says what
is wrong; so every reason, detail and the order of the dead letters stay those of the exact path.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Mapping
from itertools import compress, repeat
from operator import is_, is_not
from typing import Any

from daemon.events import (
    EVENT_TYPES, MAX_ID_CHARS, MAX_PRICE, MAX_QUANTITY, MAX_TEXT_CHARS, MAX_TS_MS, PRICED_TYPES, EventBatch,
)

_TYPES = frozenset(EVENT_TYPES)
_NEEDS_PRICE = frozenset(PRICED_TYPES)
_NONE = type(None)
_STR = frozenset((str,))
_INT = frozenset((int,))
_STR_OR_NONE = frozenset((str, _NONE))
_IDENT_OR_NONE = frozenset((str, int, _NONE))
_NUMBER_OR_NONE = frozenset((float, int, _NONE))
_INT_OR_NONE = frozenset((int, _NONE))
_TS_TYPES = frozenset((int, str))
_I64_LIMIT = 2**63


def validate_columns(items: list[Any], source: str, names: Mapping[str, str], seq_field: str,
                     newest_ts_ms: int, parse_ts_ms: Callable[[object], int]) -> tuple[EventBatch, int | None] | None:
    """(batch, largest int seq) when every item is a valid event, else None (nothing is half done).

    `names` maps each canonical field to its name in the feed; `newest_ts_ms` is now + max_future_skew;
    `parse_ts_ms` is the exact path's ts parser, used only for a column holding RFC 3339 strings.
    """
    if not items or set(map(type, items)) != {dict}:
        return None
    get = dict.get

    def column(key: str) -> list[Any]:
        return list(map(get, items, repeat(key)))

    event_id = column(names["event_id"])
    if set(map(type, event_id)) != _STR or not _lengths_within(event_id, 1, MAX_ID_CHARS):
        return None
    ts = _ts_column(column(names["ts"]), parse_ts_ms)
    if ts is None or max(ts) > newest_ts_ms:
        return None
    etype = column(names["type"])
    if set(map(type, etype)) != _STR:
        return None
    kinds = set(etype)
    if not kinds <= _TYPES:
        return None
    user_id = _ident_column(column(names["user_id"]))
    if user_id is None or not _none_only_where(user_id, etype, ()):
        return None
    item_id = _ident_column(column(names["item_id"]))
    if item_id is None or not _none_only_where(item_id, etype, {"search"}):
        return None
    session_id = column(names["session_id"])
    category = column(names["category"])
    if not (_text_ok(session_id) and _text_ok(category)):
        return None
    price = _price_column(column(names["price"]))
    if price is None or (kinds & _NEEDS_PRICE and not _none_only_where(price, etype, kinds - _NEEDS_PRICE)):
        return None
    quantity = _quantity_column(list(map(get, items, repeat(names["quantity"]), repeat(1))))
    if quantity is None:
        return None
    if "purchase" in kinds:
        revenue = [p * q if t == "purchase" else 0.0 for t, p, q in zip(etype, price, quantity)]
    else:
        revenue = [0.0] * len(items)
    max_seq = None
    if seq_field:
        seqs = column(seq_field)
        ints = list(compress(seqs, map(is_, map(type, seqs), repeat(int))))   # type is int: not bool
        max_seq = max(ints) if ints else None
    batch = EventBatch(source, event_id=event_id, ts=ts, type=etype, user_id=user_id, session_id=session_id,
                       item_id=item_id, category=category, price=price, quantity=quantity, revenue=revenue)
    return batch, max_seq


def _lengths_within(strings: list[str], low: int, high: int) -> bool:
    lengths = set(map(len, strings))
    return not lengths or (low <= min(lengths) and max(lengths) <= high)


def _ts_column(col: list[Any], parse_ts_ms: Callable[[object], int]) -> list[int] | None:
    types = set(map(type, col))
    if types == _INT:
        return col if 0 <= min(col) and max(col) < MAX_TS_MS else None
    if not types <= _TS_TYPES:
        return None
    try:
        return list(map(parse_ts_ms, col))   # RFC 3339 strings: the exact parser, once per value
    except Exception:   # whatever a bad value raises, the exact path meets it again and reports it
        return None


def _ident_column(col: list[Any]) -> list[Any] | None:
    """The column with int ids as str (None kept), or None when a value is not a valid id."""
    types = set(map(type, col))
    if types == _STR:
        return col if _lengths_within(col, 1, MAX_ID_CHARS) else None
    if types <= _STR_OR_NONE:
        present = list(compress(col, map(is_not, col, repeat(None))))
        return col if _lengths_within(present, 1, MAX_ID_CHARS) else None
    if not types <= _IDENT_OR_NONE:
        return None
    strs = [v for v in col if type(v) is str]
    ints = [v for v in col if type(v) is int]
    if not _lengths_within(strs, 1, MAX_ID_CHARS) or not (-_I64_LIMIT < min(ints) and max(ints) < _I64_LIMIT):
        return None
    return [str(v) if type(v) is int else v for v in col]


def _none_only_where(col: list[Any], etype: list[str], allowed: Collection[str]) -> bool:
    """True when every None of `col` sits on an event whose type is in `allowed`."""
    if None not in col:
        return True
    return set(compress(etype, map(is_, col, repeat(None)))).issubset(allowed)


def _text_ok(col: list[Any]) -> bool:
    types = set(map(type, col))
    if types == _STR:
        return max(map(len, col)) <= MAX_TEXT_CHARS
    if not types <= _STR_OR_NONE:
        return False
    return max(map(len, filter(None, col)), default=0) <= MAX_TEXT_CHARS


def _price_column(col: list[Any]) -> list[float | None] | None:
    """The column with every price as float (None kept), or None when a price is not valid."""
    types = set(map(type, col))
    if not types <= _NUMBER_OR_NONE:
        return None
    numbers = list(compress(col, map(is_not, col, repeat(None)))) if _NONE in types else col
    if not numbers:
        return col
    # min/max can step over a NaN; the sum cannot (it is NaN if any value is).
    if not (0 <= min(numbers) and max(numbers) <= MAX_PRICE) or math.isnan(sum(numbers)):
        return None
    if int in types:
        return [None if v is None else float(v) for v in col]
    return col


def _quantity_column(col: list[Any]) -> list[int] | None:
    types = set(map(type, col))
    if not types <= _INT_OR_NONE:
        return None
    if _NONE in types:
        col = [1 if q is None else q for q in col]
    return col if 1 <= min(col) and max(col) <= MAX_QUANTITY else None
