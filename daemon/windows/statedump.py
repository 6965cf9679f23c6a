"""A full state write's records of open windows, made in bulk (pure functions).

Each record is `put(entry key, value)`, byte for byte what the aggregator's one-state form makes
(aggregator.py `take_changes`: the layout); here one loop per pane or per batch of sessions makes
each key's JSON once and uses it in both the entry key and the value's head, and writes the
integers of the heads with bytes formatting instead of an orjson call per head.

Why: a full state write (every `state_interval`) stops the folds while it dumps every changed
state; at 20k events/s that was ~32k states and 5-6 µs each, the longest stop left on the path
of a closing window (benchmarks/README). `_statedump.pyx` is the same loop compiled
(daemon/native.py), which this module uses when it is built; tests/unit/test_statedump.py
checks the two against each other and against the one-state form.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from typing import Any

import orjson

from daemon import native

MAX_KEY_BYTES = 480  # LMDB keys stop at 511 bytes; longer identities are hashed

Put = Callable[[bytes, bytes | None], None]
Dump = Callable[[Any], bytes]

_compiled: Any = native.compiled("daemon.windows._statedump")


def entry_key(prefix: bytes, identity_json: bytes) -> bytes:
    """A state entry's key: prefix + the identity's JSON, or prefix + b"#" + its blake2b-160 past
    MAX_KEY_BYTES."""
    if len(identity_json) > MAX_KEY_BYTES:
        return long_key(prefix, identity_json)
    return prefix + identity_json


def long_key(prefix: bytes, identity_json: bytes) -> bytes:
    """The key of an identity too long for LMDB: prefix + b"#" + blake2b-160 of its JSON."""
    return prefix + b"#" + hashlib.blake2b(identity_json, digest_size=20).digest()


def key_json(key: Any, bare: bool) -> bytes:
    """A store key's list of group-by values as JSON (a bare key is the one value)."""
    return orjson.dumps((key,) if bare else key)


def pane_records(put: Put, start: int, end: int, keys: Sequence[Any], states: Sequence[list[Any] | None],
                 dumps: Sequence[Dump], bare: bool) -> None:
    """The records of pane [start, end) for `keys` (tuples, or bare values), whose states are
    `states` (None: the pane's state of that key is gone, a tombstone):
    key b"w" + [start,[key...]], value [start,end,[key...]] "\\n" + the states' parts."""
    if _compiled is not None:
        _compiled.pane_records(put, start, end, keys, states, tuple(dumps), bare, long_key)
        return
    key_open = b"[%d," % start
    head_open = b"[%d,%d," % (start, end)
    for key, st in zip(keys, states):
        kj = key_json(key, bare)
        ek = entry_key(b"w", key_open + kj + b"]")
        if st is None:
            put(ek, None)
            continue
        blobs = [dump(s) for dump, s in zip(dumps, st)]
        put(ek, b"".join([head_open, kj, b"]\n", orjson.dumps([len(b) for b in blobs]), b"\n", *blobs]))


def session_records(put: Put, keys: Sequence[Any], slots: Sequence[int], firsts: Sequence[int],
                    lasts: Sequence[int], columns: Sequence[list[Any]], dumps: Sequence[Dump], bare: bool) -> None:
    """The records of keys with one open session each, in slot `slots[i]` spanning
    [firsts[i], lasts[i]] ms, metric j's state in columns[j][slot]:
    key b"s" + [key...], value [[key...],[[first,last,n]]] "\\n" + the states' parts (n bytes)."""
    if _compiled is not None:
        _compiled.session_records(put, keys, slots, firsts, lasts, columns, tuple(dumps), bare, long_key)
        return
    for key, slot, first, last in zip(keys, slots, firsts, lasts):
        kj = key_json(key, bare)
        ek = entry_key(b"s", kj)
        blobs = [dump(c[slot]) for dump, c in zip(dumps, columns)]
        lengths = orjson.dumps([len(b) for b in blobs])
        n = len(lengths) + 1 + sum(map(len, blobs))
        put(ek, b"".join([b"[", kj, b",[[%d,%d,%d]]]\n" % (first, last, n), lengths, b"\n", *blobs]))
