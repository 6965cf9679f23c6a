"""Column-wise validation of a whole list of decoded values: the fast path for a batch with nothing to reject.

Most payloads are entirely valid, and checking them event by event (`Validator._add`) spends its
time running bytecode per field. Here each field becomes one column in one C-level pass
(`map(itemgetter(key), ...)`), and each column is checked as a whole in as few C-level passes as
will do: "".join for "all str", the set of its value types, min/max or the set of lengths. The
answer is all or nothing: an EventBatch when every value would pass `Validator._add`, else None,
and the caller runs the exact per-event path, which alone says what is wrong; so every reason,
detail and the order of the dead letters stay those of the exact path.

The values are orjson's output, so every type is an exact builtin (a dict, str or int subclass
never occurs; bool does, and is told from int by type).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from itertools import compress, repeat
from operator import is_, is_not, itemgetter, mul
from typing import Any

from daemon.events import (
    EVENT_TYPES, MAX_ID_CHARS, MAX_PRICE, MAX_QUANTITY, MAX_TEXT_CHARS, MAX_TS_MS, PRICED_TYPES, EventBatch,
)

_TYPES = frozenset(EVENT_TYPES)
_NEEDS_PRICE = frozenset(PRICED_TYPES)
_NONE = type(None)
_INT = frozenset((int,))
_STR_OR_NONE = frozenset((str, _NONE))
_IDENT_OR_NONE = frozenset((str, int, _NONE))
_NUMBER_OR_NONE = frozenset((float, int, _NONE))
_INT_OR_NONE = frozenset((int, _NONE))
_TS_TYPES = frozenset((int, str))
_I64_LIMIT = 2**63
_U64_LIMIT = 2**64
_SEARCH = frozenset(("search",))
_NOTHING: frozenset[str] = frozenset()
_get = dict.get


FIELDS_REQUIRED = frozenset(("event_id", "ts", "type", "user_id"))


@dataclass(frozen=True, slots=True)
class Columns:
    """A payload's n events as columns, by canonical field name. `required(f)` may raise KeyError or
    TypeError (an item lacks it, or is not an object); `optional(f)` has None where an item lacks
    it; `seq()` is the seq field's column (None: the source has no seq field)."""

    n: int
    required: Callable[[str], list[Any]]
    optional: Callable[[str], list[Any]]
    seq: Callable[[], list[Any]] | None = None


def validate_columns(items: list[Any], source: str, names: Mapping[str, str], seq_field: str,
                     newest_ts_ms: int, parse_ts_ms: Callable[[object], int]) -> tuple[EventBatch, int | None] | None:
    """(batch, largest int seq) when every item is a valid event, else None (nothing is half done).

    `names` maps each canonical field to its name in the feed; `newest_ts_ms` is now + max_future_skew;
    `parse_ts_ms` is the exact path's ts parser, used only for a column holding RFC 3339 strings.
    """
    return check_columns(dict_columns(items, names, seq_field), source, newest_ts_ms, parse_ts_ms)


def dict_columns(items: list[Any], names: Mapping[str, str], seq_field: str = "") -> Columns:
    """The columns of decoded JSON values (dicts, as orjson makes them; anything else fails `required`).

    A required field is read with itemgetter: KeyError when it is missing, TypeError when an item is
    not a dict; either way the exact path has something to reject."""
    def required(field: str) -> list[Any]:
        return list(map(itemgetter(names[field]), items))

    def optional(field: str) -> list[Any]:
        return _column(items, names[field])

    return Columns(len(items), required, optional, (lambda: _column(items, seq_field)) if seq_field else None)


def check_columns(cols: Columns, source: str, newest_ts_ms: int,
                  parse_ts_ms: Callable[[object], int]) -> tuple[EventBatch, int | None] | None:
    """validate_columns on columns however they were read (pipeline/structdecode.py reads them from
    msgspec structs, where a missing required field holds a value every check here refuses)."""
    if not cols.n:
        return None
    try:
        event_id = cols.required("event_id")
        if not _ids_ok(event_id):
            return None
        etype = cols.required("type")
        kinds = set(etype)   # only a str equals a str: "a subset of _TYPES" is the type check too
        if not kinds <= _TYPES:
            return None
        ts = _ts_column(cols.required("ts"), newest_ts_ms, parse_ts_ms)
        if ts is None:
            return None
        user_id = cols.required("user_id")
    except (KeyError, TypeError):
        return None
    user_id = _ident_column(user_id, etype, kinds, _NOTHING)
    if user_id is None:
        return None
    item_id = _ident_column(cols.optional("item_id"), etype, kinds, _SEARCH)
    if item_id is None:
        return None
    session_id = cols.optional("session_id")
    category = cols.optional("category")
    if not (_text_ok(session_id) and _text_ok(category)):
        return None
    price = _price_column(cols.optional("price"), etype, kinds)
    if price is None:
        return None
    quantity = _quantity_column(cols.optional("quantity"))
    if quantity is None:
        return None
    batch = EventBatch(source, event_id=event_id, ts=ts, type=etype, user_id=user_id, session_id=session_id,
                       item_id=item_id, category=category, price=price, quantity=quantity,
                       revenue=_revenue(etype, kinds, price, quantity))
    return batch, (_max_seq(cols.seq()) if cols.seq is not None else None)


def _column(items: list[dict], key: str) -> list[Any]:
    """The values of an optional field (None where it is missing)."""
    try:
        return list(map(itemgetter(key), items))   # ~10% cheaper than dict.get while every item has it
    except KeyError:
        return list(map(_get, items, repeat(key)))


def _lengths_within(strings: Any, low: int, high: int) -> bool:
    lengths = set(map(len, strings))
    return not lengths or (low <= min(lengths) and max(lengths) <= high)


def _all_str(col: list[Any]) -> bool:
    """True when every value is a str (one C pass; far cheaper than the set of types)."""
    try:
        "".join(col)
    except TypeError:
        return False
    return True


def _ids_ok(col: list[Any]) -> bool:
    return _all_str(col) and _lengths_within(col, 1, MAX_ID_CHARS)


def _ts_column(col: list[Any], newest_ts_ms: int, parse_ts_ms: Callable[[object], int]) -> list[int] | None:
    """The column as epoch ms, or None when a ts is not valid or is newer than `newest_ts_ms`."""
    types = set(map(type, col))
    if types != _INT:
        if not types <= _TS_TYPES:
            return None
        try:
            col = list(map(parse_ts_ms, col))   # RFC 3339 strings: the exact parser, once per value
        except Exception:   # whatever a bad value raises, the exact path meets it again and reports it
            return None
    return col if 0 <= min(col) and max(col) <= min(newest_ts_ms, MAX_TS_MS - 1) else None


def _ident_column(col: list[Any], etype: list[str], kinds: set[str], may_lack: frozenset[str]) -> list[Any] | None:
    """The column with int ids as str (None kept), or None when a value is not a valid id or is
    missing on an event whose type is not in `may_lack`."""
    if _all_str(col):
        return col if _lengths_within(col, 1, MAX_ID_CHARS) else None
    types = set(map(type, col))
    if types == _INT:   # a shop with numeric ids
        return list(map(str, col)) if -_I64_LIMIT < min(col) and max(col) < _I64_LIMIT else None
    if not types <= _IDENT_OR_NONE:
        return None
    if _NONE in types and not _none_only_where(col, etype, kinds, may_lack):
        return None
    if int not in types:   # str and None
        return col if _lengths_within(compress(col, map(is_not, col, repeat(None))), 1, MAX_ID_CHARS) else None
    strs = [v for v in col if type(v) is str]
    ints = [v for v in col if type(v) is int]
    if not _lengths_within(strs, 1, MAX_ID_CHARS) or not (-_I64_LIMIT < min(ints) and max(ints) < _I64_LIMIT):
        return None
    return [str(v) if type(v) is int else v for v in col]


def _none_only_where(col: list[Any], etype: list[str], kinds: set[str], allowed: frozenset[str]) -> bool:
    """True when every None of `col` sits on an event whose type is in `allowed`."""
    return kinds <= allowed or set(compress(etype, map(is_, col, repeat(None)))) <= allowed


def _text_ok(col: list[Any]) -> bool:
    if _all_str(col):
        return max(map(len, col)) <= MAX_TEXT_CHARS
    if not set(map(type, col)) <= _STR_OR_NONE:
        return False
    return max(map(len, filter(None, col)), default=0) <= MAX_TEXT_CHARS


def _price_column(col: list[Any], etype: list[str], kinds: set[str]) -> list[float | None] | None:
    """The column with every price as float (None kept), or None when a price is not valid or is
    missing on a cart or purchase."""
    types = set(map(type, col))
    if not types <= _NUMBER_OR_NONE:
        return None
    if _NONE in types:
        if kinds & _NEEDS_PRICE and set(compress(etype, map(is_, col, repeat(None)))) & _NEEDS_PRICE:
            return None
        numbers = set(col)   # equal values merge (1 and 1.0 too): min, max and NaN-ness are the same
        numbers.discard(None)
    else:
        numbers = col
    if not numbers:
        return col
    # min/max can step over a NaN; the sum cannot (it is NaN if any value is).
    if not (0 <= min(numbers) and max(numbers) <= MAX_PRICE) or math.isnan(sum(numbers)):
        return None
    if int in types:
        return [None if v is None else float(v) for v in col] if _NONE in types else list(map(float, col))
    return col


def _quantity_column(col: list[Any]) -> list[int] | None:
    """The column with a missing or null quantity as 1, or None when a quantity is not valid."""
    types = set(map(type, col))
    if not types <= _INT_OR_NONE:
        return None
    if _NONE in types:
        col = [1 if q is None else q for q in col]
    distinct = set(col)   # ints only (bool was refused by type above), mostly a handful of values
    return col if 1 <= min(distinct) and max(distinct) <= MAX_QUANTITY else None


def _revenue(etype: list[str], kinds: set[str], price: list[Any], quantity: list[int]) -> list[float]:
    """price * quantity on purchases, else 0.0: by index when purchases are few (the usual page)."""
    n = len(etype)
    if "purchase" not in kinds:
        return [0.0] * n
    if len(kinds) == 1:
        return list(map(mul, price, quantity))
    if etype.count("purchase") * 8 > n:
        return [p * q if t == "purchase" else 0.0 for t, p, q in zip(etype, price, quantity)]
    revenue = [0.0] * n
    index = etype.index
    i = index("purchase")
    try:
        while True:
            revenue[i] = price[i] * quantity[i]
            i = index("purchase", i + 1)
    except ValueError:   # no purchase after i
        pass
    return revenue


def _max_seq(seqs: list[Any]) -> int | None:
    """The largest int seq (bools and other types are not seqs; None when there is none). An int
    beyond 64 bits is not one either: orjson makes it a float, msgspec an int (pipeline/structdecode.py)."""
    if set(map(type, seqs)) == _INT and max(seqs) < _U64_LIMIT and min(seqs) >= -_I64_LIMIT:
        return max(seqs)
    return max((s for s in seqs if type(s) is int and -_I64_LIMIT <= s < _U64_LIMIT), default=None)
