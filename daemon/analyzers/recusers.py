"""A recommender user's state: the flat list `observe` works on, and its record (JSON bytes) (pure).

A user is one flat list, not an object holding dicts of tuples: at 2 events per user (the benchmark's
memory scenario) that was ~920 bytes per user, a _User with `recent` and `cats` dicts (~184 bytes each
before their entries) and a tuple per recent item; see benchmarks/recs_memory.py. The fold indexes it
with literal numbers (a name per field would be a global lookup in the hot loop).

A user's record is what the recommender stores (`Recommender.records`): the list as JSON, without
its dirty flag and with repeated timestamps and sessions written short (`to_record`: format 2; the
nested format 1 of older stores is still read). An idle user can also be *kept* as its record
(`Recommender.pack`): ~120 bytes instead of ~460 for a user with two recent items, made back into
the same list (`from_record`) when it is touched or read. Packing is invisible: floats and ints
round-trip exactly through orjson, and a list's behaviour depends on its contents only. A user is
kept as `bytes` when it is clean and as a `bytearray` of the same record when it changed since the
last take (`dirty`): its record is still due in the next answer.
"""

from __future__ import annotations

from itertools import chain

import orjson

from daemon import jsonbytes

_LAST, _DIRTY, _BOUGHT, _START = 0, 1, 2, 3   # then the (category, weight) pairs from 4, then u[3]: the recent items
User = list   # type: the list new_user makes


def new_user(last_ms: int, dirty: bool) -> User:
    """[last_ms, dirty, bought, start, *cats, *recent], a user's whole state in one list:

    last_ms: the latest event's ts; dirty: changed since the last take_dirty (Recommender._dirty_user_count);
    bought: item -> ts_ms of the latest purchase, or None (most users buy nothing);
    cats: (category, forward-decayed weight) pairs at u[4:start], as a dict in insertion order;
    recent: (item, ts_ms, weight, session) quadruples at u[start:], oldest first, each item once.
    """
    return [last_ms, dirty, None, 4]


def user_cats(u: User) -> dict[str, float]:
    """A user's categories: category -> forward-decayed weight, in the order they came."""
    start = u[_START]
    return dict(zip(u[4:start:2], u[5:start:2]))


def to_record(u: User) -> bytes:
    """The user's record: the list itself as JSON, without the dirty flag and with two repeats written
    short (format 2): [last_ms, bought, start, *cats, *(item, last_ms - ts_ms, weight, session)], a
    session equal to the previous recent item's written as 0 (sessions are str or null).

    Smaller than format 1's nested [last_ms, [[item, ts_ms, weight, session], ...], bought, cats]
    (the benchmark memory scenario's two-event users: 149 -> 115 bytes on average), and no nested lists
    or dicts to build or parse."""
    start, last = u[_START], u[_LAST]
    rec = u[:]
    del rec[_DIRTY]
    session: object = None
    for k in range(start - 1, len(rec), 4):   # the recent items, one index lower in the record
        rec[k + 1] = last - rec[k + 1]
        s = rec[k + 3]
        if s == session and k >= start:
            rec[k + 3] = 0
        session = s
    return jsonbytes.dumps(rec)


def from_record(value: bytes | bytearray, names: dict[str, str], cat_names: dict[str, str],
                dirty: bool = False) -> User:
    """The user of a record (either format), its item and category names the shared str objects of
    `names` / `cat_names` where they have one, one session str per run of equal sessions, and one
    ts int per run of entries at last_ms."""
    rec = orjson.loads(value)
    if rec[1].__class__ is list:   # format 1 (stores written before format 2): the recent items second
        return _from_record_v1(rec, names, cat_names, dirty)
    last, start = rec[0], rec[2]
    u = [last, dirty, *rec[1:]]
    for k in range(4, start, 2):
        u[k] = cat_names.setdefault(u[k], u[k])
    session: object = None
    for k in range(start, len(u), 4):
        u[k] = names.get(u[k], u[k])
        ago = u[k + 1]
        u[k + 1] = last if ago == 0 else last - ago
        s = u[k + 3]
        if s.__class__ is int:   # 0: the previous entry's session
            u[k + 3] = session
        else:
            session = s
    if u[_BOUGHT] is not None:
        u[_BOUGHT] = {names.get(item, item): ts for item, ts in u[_BOUGHT].items()}
    return u


def _from_record_v1(rec: list, names: dict[str, str], cat_names: dict[str, str], dirty: bool) -> User:
    """The user of a format-1 record, parsed: [last_ms, [[item, ts_ms, weight, session], ...], bought, cats]."""
    last_ms, recent, bought, cats = rec
    # Built at its size (observe's appends leave a list room to grow).
    u = [last_ms, dirty, bought or None, 4 + 2 * len(cats), *chain.from_iterable(cats.items()),
         *chain.from_iterable(recent)]
    share_names(u, names, cat_names)
    return u


def share_names(u: User, names: dict[str, str], cat_names: dict[str, str]) -> None:
    """Key a user's entries by one str per item and category, as observe does (parsing made one per use)."""
    start = u[_START]
    for k in range(4, start, 2):
        u[k] = cat_names.setdefault(u[k], u[k])
    shared: str | None = None
    for k in range(start, len(u), 4):
        u[k] = names.get(u[k], u[k])
        if u[k + 3] != shared:
            shared = u[k + 3]
        u[k + 3] = shared
    if u[_BOUGHT] is not None:
        u[_BOUGHT] = {names.get(item, item): ts for item, ts in u[_BOUGHT].items()}


def record_of(u: User | bytes | bytearray) -> bytes:
    """The record of a user in any of its forms."""
    if u.__class__ is bytes:
        return u
    return bytes(u) if u.__class__ is bytearray else to_record(u)


def is_dirty(u: User | bytes | bytearray) -> bool:
    """Changed since the last take, in any of its forms."""
    return u.__class__ is bytearray or (u.__class__ is list and u[_DIRTY])


def record_last_ms(value: bytes | bytearray) -> int:
    """A record's last_ms, without parsing the rest (it is the first element of the JSON array)."""
    return int(value[1:value.index(b",")])
