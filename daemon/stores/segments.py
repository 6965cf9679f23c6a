"""State records as segments: many (key, value) records packed in one LMDB value (pure functions).

Why: stored one LMDB record per key, a full state write of ~10^6 changed keys (a million open
sessions, the recommender's users) dirties a B-tree leaf page per few keys: up to LMDB's limit of
128k dirty pages (512 MiB) per write transaction. LMDB keeps every freed single dirty page in its
own free list for the life of the environment (`mdb_page_free`: not configurable), so that peak
stays in the daemon's heap for good, and each write also reads the old leaf pages through the map
(RssFile). Measured in the memory benchmark: ~375 MiB of the daemon's RSS at 1.4M open states.
Packed into segments of a few MiB, the records go to LMDB overflow pages, which are written with
pwrite from one malloc per value, freed right after the commit, and never read through the map.

Layout: a namespace's keys are spread over BUCKETS buckets by crc32; a state write appends one
segment per bucket it changes (a chain, oldest first); a bucket whose chain has grown past twice
its size at its last compaction (plus SLACK_BYTES), or holds MAX_CHAIN segments, is merged into one
segment right after the write, in transactions of their own of ~16 MiB of chains each
(lmdb_state.py compact_segments: buckets grow alike and fall due together), so a bucket holds ~2x
its live bytes and a compaction reads ~1/BUCKETS of the state.

A segment: u32 n, n × u32 key length, n × u32 value length (TOMBSTONE: deleted), the keys, the
values, integers big-endian. Later segments of a chain win; a tombstone deletes, and is dropped
when its chain merges. The recommendations process's answers and records frames carry their
records in the same form (replica/protocol.py).
"""

from __future__ import annotations

import struct
import zlib
from array import array
from collections.abc import Callable, Iterable, Iterator, Mapping
from itertools import accumulate
from typing import Any

from daemon import native

BUCKETS = 64
SLACK_BYTES = 256 * 1024     # a bucket's chain may grow this much past 2x its base before merging
MAX_CHAIN = 32               # ... or this many segments (many tiny writes of a hot key)
TOMBSTONE = 0xFFFFFFFF
SPILL_BYTES = 8 * 2**20      # a SegmentBuilder with a `spill` hands its segments over past this many bytes
_U32 = struct.Struct(">I")


def bucket_of(key: bytes) -> int:
    """The bucket of a key (stable across processes and versions: it is part of the layout)."""
    return zlib.crc32(key) % BUCKETS


def pack(records: Mapping[bytes, bytes | None] | Iterable[tuple[bytes, bytes | None]]) -> bytes:
    """One segment of the records (None values as tombstones)."""
    pairs = records.items() if isinstance(records, Mapping) else list(records)
    keys = [k for k, _ in pairs]
    values = [v for _, v in pairs]
    return _segment(array("I", map(len, keys)), array("I", (TOMBSTONE if v is None else len(v) for v in values)),
                    keys, [v for v in values if v is not None])


def _segment(klen: array, vlen: array, keys: Iterable[bytes | bytearray], values: Iterable[bytes | bytearray]) -> bytes:
    """The layout (module docstring): u32 n, the n key and n value lengths big-endian, the keys, the values."""
    if not _NATIVE_BIG:
        klen, vlen = array("I", klen), array("I", vlen)
        klen.byteswap()
        vlen.byteswap()
    return b"".join([_U32.pack(len(klen)), klen.tobytes(), vlen.tobytes(), *keys, *values])


_NATIVE_BIG = array("I", [1]).tobytes() == b"\x00\x00\x00\x01"
assert array("I").itemsize == 4


class _Buffers:
    """The per-bucket buffers and counters of a SegmentBuilder, and its `put` (compiled: _segments.pyx)."""

    __slots__ = ("_keys", "_values", "_klen", "_vlen", "_n", "_bytes", "_spill", "spill_bytes", "spilled")
    _keys: list[bytearray]
    _values: list[bytearray]
    _klen: list[array]
    _vlen: list[array]
    _n: int
    _bytes: int
    _spill: Callable[[int, list[tuple[int, bytes]]], bool] | None
    spill_bytes: int
    spilled: list[tuple[int, int, int]]
    _spill_out: Callable[[], None]   # (_Builder's)

    def put(self, key: bytes, value: bytes | None) -> None:
        """Add a record (None: a tombstone)."""
        b = zlib.crc32(key) % BUCKETS    # bucket_of
        self._keys[b] += key
        self._klen[b].append(len(key))
        if value is None:
            self._vlen[b].append(TOMBSTONE)
            self._bytes += len(key) + 8
        else:
            self._values[b] += value
            self._vlen[b].append(len(value))
            self._bytes += len(key) + len(value) + 8
        self._n += 1
        if self._bytes >= self.spill_bytes and self._spill is not None:
            self._spill_out()


_compiled: Any = native.compiled("daemon.stores._segments")
assert _compiled is None or _compiled.N_BUCKETS == BUCKETS


class _Builder:
    """SegmentBuilder's methods besides `put` (on a base of their own: `_Buffers`, or compiled)."""

    __slots__ = ()

    def __init__(self, spill: Callable[[int, list[tuple[int, bytes]]], bool] | None = None,
                 spill_bytes: int = SPILL_BYTES) -> None:
        self._keys = [bytearray() for _ in range(BUCKETS)]
        self._values = [bytearray() for _ in range(BUCKETS)]
        self._klen = [array("I") for _ in range(BUCKETS)]
        self._vlen = [array("I") for _ in range(BUCKETS)]
        self._n = 0
        self._bytes = 0
        self._spill = spill
        self.spill_bytes = spill_bytes
        self.spilled: list[tuple[int, int, int]] = []   # (round, bucket, segment bytes) handed to `spill`

    @property
    def rounds(self) -> int:
        """How many times the builder spilled (its segments then follow under round `rounds + 1`)."""
        return self.spilled[-1][0] if self.spilled else 0

    def _spill_out(self) -> None:
        assert self._spill is not None
        rnd = self.rounds + 1
        pieces = list(self.segments())
        if not self._spill(rnd, pieces):
            self._spill = None
            return
        self.spilled += [(rnd, b, len(seg)) for b, seg in pieces]
        del pieces
        for b in range(BUCKETS):
            if self._klen[b]:
                self._keys[b], self._values[b] = bytearray(), bytearray()
                self._klen[b], self._vlen[b] = array("I"), array("I")
        self._bytes = 0

    @classmethod
    def of(cls, records: Mapping[bytes, bytes | None]) -> SegmentBuilder:
        builder = cls()
        for key, value in records.items():
            builder.put(key, value)
        return builder

    def __len__(self) -> int:
        """Records put (spilled ones included)."""
        return self._n

    def segments(self) -> Iterator[tuple[int, bytes]]:
        """(bucket, segment) of every bucket holding a record, ascending."""
        for b in range(BUCKETS):
            if self._klen[b]:
                yield b, _segment(self._klen[b], self._vlen[b], [self._keys[b]], [self._values[b]])

    def take_segments(self) -> Iterator[tuple[int, bytes]]:
        """`segments`, each bucket's buffers freed once its segment is made (the builder ends empty)."""
        for b, seg in self.segments():
            self._keys[b], self._values[b] = bytearray(), bytearray()
            self._klen[b], self._vlen[b] = array("I"), array("I")
            yield b, seg
        self._n = self._bytes = 0


class SegmentBuilder(_Builder, _Buffers if _compiled is None else _compiled.Buffers):  # type: ignore[misc]
    """A namespace's changes packed per bucket as they are put: one segment per bucket they fall in,
    each record in its key's bucket in the order put (a key put twice: the later record wins, as in
    a chain). What a state write appends and a CHANGES answer carries.

    Why: a full state write serialises every changed state; held as a dict of key -> value bytes
    until the commit, 200-300k changed sessions were ~130 MiB of the daemon's heap for the second
    or so the write took (a bytes object per key and per value, the dict's entries). Here a record
    costs its bytes and two 4-byte lengths.

    With `spill`, the builder holds at most ~`spill_bytes`: past that it hands every bucket's
    segment to `spill(round, [(bucket, segment), ...])` (rounds count from 1) and, if that returns
    True (the checkpoint wrote them ahead of the commit: Checkpoint.stage), starts empty again;
    `spilled` lists them in order. What the builder holds at the end follows them (a bucket's later
    records win, as in a chain). If `spill` returns False the records stay here, and so do the
    ones after (no more spills): spilling bounds memory, it never decides what is written.

    Its `put` is compiled when the extension is built (daemon/stores/_segments.pyx; the base class
    is chosen at import): ~0.72 -> ~0.40 µs per record."""

    __slots__ = ()


class PySegmentBuilder(_Builder, _Buffers):
    """SegmentBuilder with the Python `put`, whichever is built (the reference the tests compare with)."""

    __slots__ = ()


def unpack(segment: bytes | memoryview) -> list[tuple[bytes, bytes | None]]:
    """The (key, value or None) records of one segment, in packed order; ValueError if it is cut short
    or longer than its head says."""
    data = bytes(segment)
    try:
        n = _U32.unpack_from(data)[0]
    except struct.error:
        raise ValueError(f"a state segment of {len(data)} bytes, shorter than its head") from None
    if len(data) < 4 + 8 * n:
        raise ValueError(f"a state segment of {len(data)} bytes, shorter than its head")
    # array + accumulate, not numpy: as fast here (the records are made one by one either way), and
    # the recommendations process, which unpacks records too, does not load numpy (~11 MiB) for it.
    klen, vlen = array("I"), array("I")
    klen.frombytes(data[4:4 + 4 * n])
    vlen.frombytes(data[4 + 4 * n:4 + 8 * n])
    if not _NATIVE_BIG:
        klen.byteswap()
        vlen.byteswap()
    vsize = array("I", [0 if v == TOMBSTONE else v for v in vlen]) if TOMBSTONE in vlen else vlen
    kpos = list(accumulate(klen, initial=4 + 8 * n))     # where each key starts, then where the last ends
    vpos = list(accumulate(vsize, initial=kpos[-1]))
    if vpos[-1] != len(data):
        raise ValueError(f"a state segment of {len(data)} bytes, its head says {vpos[-1]}")
    return [(data[a:b], None if g == TOMBSTONE else data[c:d])
            for a, b, c, d, g in zip(kpos, kpos[1:], vpos, vpos[1:], vlen)]


def merge(segments: Iterable[bytes | memoryview], into: dict[bytes, bytes | None] | None = None) -> dict[bytes, bytes | None]:
    """The records of a chain, oldest segment first: the last value of each key (None: deleted)."""
    out: dict[bytes, bytes | None] = {} if into is None else into
    for segment in segments:
        out.update(unpack(segment))
    return out


def live(records: Mapping[bytes, bytes | None]) -> dict[bytes, bytes]:
    """The records that are not tombstones."""
    return {k: v for k, v in records.items() if v is not None}
