"""Seen-id filter with an event-time TTL; its additions are handed to the checkpoint (pure)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from daemon import native

# `_insert_each`'s probe compiled (_dedupe.pyx, the same loop in C): then used for batches of any size.
_compiled: Any = native.compiled("daemon.pipeline._dedupe")

_BUCKET_MS = 60_000
_EMPTY, _GONE = 0, -1      # table cells: never used, used by an id since forgotten (hash() is never -1)
_NUMPY_MIN = 64            # below this many ids a batch is probed id by id (numpy's fixed cost per call)
_MIN_CELLS = 1 << 10
_FEW = 32                  # probes still going when this few are left finish id by id


@dataclass(frozen=True, slots=True)
class DedupeStats:
    ids: int
    duplicates: int
    evicted: int


class DedupeFilter:
    """Remembers each event_id until its event time + ttl passes the watermark.

    Ids are kept in per-minute expiry buckets so that expiring is a dict pop, not a scan.
    `max_ids` bounds memory: past it the oldest bucket is forgotten early (counted as evicted).

    An id is remembered as its 64-bit str hash (SipHash with this process's random key) in an
    open-addressing int64 table (linear probing, at most half full), and filed in its bucket as
    the same hash in an int64 array: ~25-40 bytes per id, against ~100 for a set of id bytes.
    `take_changes` still hands out the ids' bytes (kept only until then) and `restore` reads them,
    so the checkpoint's format is unchanged and a restart rebuilds the table under the new key.
    The cost of hashing: a new id is taken for a duplicate (and its event dropped) when its hash
    equals one of the n held: probability n / 2^64 per id, 5.4e-14 with 1M ids held and 2.7e-13
    at the default max of 5M (one event in ~3.7e12: about once a year at a sustained 100k
    events/s with the filter full, never so far as a test can see). The key is random per
    process (unless PYTHONHASHSEED fixes it), so ids cannot be chosen to collide, and a restart,
    which rebuilds the table from the stored bytes, draws a new one.
    """

    def __init__(self, ttl_ms: int, max_ids: int) -> None:
        self.ttl_ms = ttl_ms
        self.max_ids = max_ids
        self._table = np.zeros(_MIN_CELLS, dtype=np.int64)
        self._ids = 0            # held
        self._used = 0           # cells not _EMPTY: held + _GONE
        self._buckets: dict[int, list[np.ndarray]] = {}   # expiry minute -> hashes filed there
        self._added_ids: list[str] = []          # since take_changes, with their event times:
        self._added_ts: list[int] = []           # the checkpoint's (id bytes, expiry) pairs are built there
        self._expired_before: int | None = None
        self._duplicates = 0
        self._evicted = 0

    def keep(self, event_ids: list[str], ts_ms: list[int], candidates: Iterable[int]) -> list[int]:
        """Indices among `candidates` whose id is new (the first of in-batch repeats wins)."""
        if self.ttl_ms <= 0:
            return list(candidates)
        kept = list(candidates)
        if not kept:
            if self._ids > self.max_ids:   # a restore brings back every stored id, evicted ones too
                self._evict()
            return kept
        ids = list(map(event_ids.__getitem__, kept))
        hashes = _hashes(ids)
        new = self._insert(hashes, ids)
        if not new.all():
            self._duplicates += len(kept) - int(np.count_nonzero(new))
            keep_at = np.flatnonzero(new).tolist()
            kept = [kept[j] for j in keep_at]
            ids = [ids[j] for j in keep_at]
            hashes = hashes[new]
        if kept:
            new_ts = list(map(ts_ms.__getitem__, kept))
            self._file(hashes, new_ts)
            self._added_ids += ids
            self._added_ts += new_ts
        if self._ids > self.max_ids:
            self._evict()
        return kept

    # -- the table ------------------------------------------------------------------------------

    def _insert(self, hashes: np.ndarray, ids: list[str] | None = None) -> np.ndarray:
        """Add the hashes not held yet (the first of repeats); True where one was added.

        `ids`, the hashes' ids when known: the numpy path looks for repeats only when they are not
        distinct (a set of str is cheaper than np.unique); the id-by-id probe needs neither."""
        if 2 * (self._used + len(hashes)) > len(self._table):
            self._rebuild(self._ids + len(hashes))
        if _compiled is not None or len(hashes) < _NUMPY_MIN:
            return self._insert_each(hashes)
        found = self._find(hashes)
        if ids is None or len(set(ids)) < len(ids):
            _, first = np.unique(hashes, return_index=True)
            if len(first) < len(hashes):   # repeats in the batch: only the first is new
                later = np.ones(len(hashes), dtype=bool)
                later[first] = False
                found |= later
        new = ~found
        self._place(hashes[new])
        return new

    def _insert_each(self, hashes: np.ndarray) -> np.ndarray:
        """_insert id by id (a few ids: numpy's fixed cost per call would exceed the probing; any
        number when compiled)."""
        if _compiled is not None:
            out = np.zeros(len(hashes), dtype=bool)
            added = _compiled.insert_each(self._table, np.ascontiguousarray(hashes, dtype=np.int64), out.view(np.uint8))
            self._ids += added
            self._used += added
            return out
        table, mask = memoryview(self._table), len(self._table) - 1   # its items are Python ints
        added = []
        for j, h in enumerate(hashes.tolist()):
            p = h & mask
            while (cell := table[p]) != h:
                if cell == _EMPTY:
                    table[p] = h
                    added.append(j)
                    break
                p = (p + 1) & mask
        self._ids += len(added)
        self._used += len(added)
        out = np.zeros(len(hashes), dtype=bool)
        out[added] = True
        return out

    def _find(self, hashes: np.ndarray) -> np.ndarray:
        """Whether each hash is held: probing all of them together one cell further per round,
        then the last few (long probe runs) one by one, as a round costs ~10 numpy calls."""
        table, mask = self._table, len(self._table) - 1
        found = np.zeros(len(hashes), dtype=bool)
        at = np.arange(len(hashes))
        pos = hashes & mask
        while len(at) > _FEW:
            cell = table[pos]
            hit = cell == hashes[at]
            found[at[hit]] = True
            go = ~hit & (cell != _EMPTY)
            at, pos = at[go], (pos[go] + 1) & mask
        cells = memoryview(table)
        for j, p in zip(at.tolist(), pos.tolist()):
            h = int(hashes[j])
            while (cell := cells[p]) != _EMPTY:
                if cell == h:
                    found[j] = True
                    break
                p = (p + 1) & mask
        return found

    def _place(self, hashes: np.ndarray) -> None:
        """Put hashes known to be absent and distinct into empty cells (the last few one by one)."""
        table, mask = self._table, len(self._table) - 1
        self._ids += len(hashes)
        self._used += len(hashes)
        pos = hashes & mask
        while len(hashes) > _FEW:
            free = table[pos] == _EMPTY
            table[pos[free]] = hashes[free]
            won = free & (table[pos] == hashes)   # of several aiming at one cell, the last write wins
            hashes, pos = hashes[~won], (pos[~won] + 1) & mask
        cells = memoryview(table)
        for h, p in zip(hashes.tolist(), pos.tolist()):
            while cells[p] != _EMPTY:
                p = (p + 1) & mask
            cells[p] = h

    def _forget(self, hashes: np.ndarray) -> None:
        """Mark the cells of held hashes _GONE (a probe goes on past them; only a rebuild empties them)."""
        table, mask = self._table, len(self._table) - 1
        pos = hashes & mask
        while len(hashes):
            cell = table[pos]
            hit = cell == hashes
            table[pos[hit]] = _GONE
            self._ids -= int(np.count_nonzero(hit))
            go = ~hit & (cell != _EMPTY)
            hashes, pos = hashes[go], (pos[go] + 1) & mask

    def _rebuild(self, room_for: int) -> None:
        """A fresh table at most a quarter full with room_for ids, holding the same hashes (no _GONE)."""
        cells = _MIN_CELLS
        while cells < 4 * room_for:
            cells *= 2
        old = self._table
        self._table = np.zeros(cells, dtype=np.int64)
        self._ids = self._used = 0
        self._place(old[(old != _EMPTY) & (old != _GONE)])

    # -- buckets --------------------------------------------------------------------------------

    def _file(self, hashes: np.ndarray, ts_ms: list[int]) -> None:
        """Put each hash in the bucket of the minute its ts + ttl falls in."""
        ttl, buckets = self.ttl_ms, self._buckets
        first, last = (min(ts_ms) + ttl) // _BUCKET_MS, (max(ts_ms) + ttl) // _BUCKET_MS
        if first == last:   # a batch rarely straddles a minute
            buckets.setdefault(first, []).append(hashes)
            return
        minute = (np.asarray(ts_ms, dtype=np.int64) + ttl) // _BUCKET_MS
        for b in np.unique(minute).tolist():
            buckets.setdefault(b, []).append(hashes[minute == b])

    def _drop_bucket(self, b: int) -> int:
        arrays = self._buckets.pop(b)
        for a in arrays:
            self._forget(a)
        return sum(map(len, arrays))

    def expire(self, watermark_ms: int) -> None:
        """Forget ids whose expiry lies before the watermark."""
        limit = watermark_ms // _BUCKET_MS
        old = [b for b in self._buckets if b < limit]
        for b in old:
            self._drop_bucket(b)
        if old:
            self._expired_before = limit * _BUCKET_MS
            if 16 * self._ids < len(self._table) > _MIN_CELLS:   # a burst has expired: give its memory back
                self._rebuild(self._ids)

    def _evict(self) -> None:
        while self._ids > self.max_ids and self._buckets:
            b = min(self._buckets)
            self._evicted += self._drop_bucket(b)
            self._expired_before = max(self._expired_before or 0, (b + 1) * _BUCKET_MS)

    # -- checkpoint -----------------------------------------------------------------------------

    def take_changes(self) -> tuple[list[str], np.ndarray, int | None]:
        """Ids added since the last call, their expiry times (ms, int64) and the expiry bound below
        which stored ids can go. Columns, not (id, expiry) pairs: the store packs them as they are."""
        ids, expiry_ms = self._added_ids, np.asarray(self._added_ts, dtype=np.int64) + self.ttl_ms
        before = self._expired_before
        self._added_ids, self._added_ts, self._expired_before = [], [], None
        return ids, expiry_ms, before

    def restore(self, items: Iterable[tuple[bytes, int]]) -> None:
        """Add the ids a checkpoint holds ((UTF-8 bytes, expiry) pairs, as take_changes gave them)."""
        pairs = list(items)
        if not pairs:
            return
        hashes = _hashes([bytes(eid).decode() for eid, _ in pairs])
        new = self._insert(hashes)   # filed once, as keep does (two stored ids may share a hash)
        minute = np.fromiter((expiry // _BUCKET_MS for _, expiry in pairs), dtype=np.int64, count=len(pairs))
        hashes, minute = hashes[new], minute[new]
        for b in np.unique(minute).tolist():
            self._buckets.setdefault(b, []).append(hashes[minute == b])

    def statistics(self) -> DedupeStats:
        return DedupeStats(self._ids, self._duplicates, self._evicted)


def _hashes(ids: list[str]) -> np.ndarray:
    """The ids' str hashes as int64, none of them _EMPTY or _GONE (hash() is never -1; a 0 becomes 1)."""
    out = np.fromiter(map(hash, ids), dtype=np.int64, count=len(ids))
    out[out == _EMPTY] = 1
    return out
