"""Seen-id filter with an event-time TTL; its additions are handed to the checkpoint (pure)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

_BUCKET_MS = 60_000


@dataclass(frozen=True, slots=True)
class DedupeStats:
    ids: int
    duplicates: int
    evicted: int


class DedupeFilter:
    """Remembers each event_id until its event time + ttl passes the watermark.

    Ids are kept in per-minute expiry buckets so that expiring is a dict pop, not a scan.
    `max_ids` bounds memory: past it the oldest bucket is forgotten early (counted as evicted).
    An id is remembered as its UTF-8 bytes, the form the checkpoint stores (and `restore` reads),
    in a set: an id's expiry is only needed to file it in its bucket and for `take_changes`.
    Measured with 2M ids of the generator's shape: ~100 bytes per id, against ~145 for a dict of
    str -> expiry (every expiry an int object of its own, every str ~12 bytes larger than its bytes).
    """

    def __init__(self, ttl_ms: int, max_ids: int) -> None:
        self.ttl_ms = ttl_ms
        self.max_ids = max_ids
        self._seen: set[bytes] = set()
        self._buckets: dict[int, list[bytes]] = {}
        self._added_ids: list[bytes] = []        # since take_changes, with their event times:
        self._added_ts: list[int] = []           # the checkpoint's (id bytes, expiry) pairs are built there
        self._expired_before: int | None = None
        self._duplicates = 0
        self._evicted = 0

    def keep(self, event_ids: list[str], ts_ms: list[int], candidates: Iterable[int]) -> list[int]:
        """Indices among `candidates` whose id is new (the first of in-batch repeats wins).

        A batch of ids all new (the usual one) is handled with whole-batch set operations; only a batch
        with a repeat goes id by id.
        """
        if self.ttl_ms <= 0:
            return list(candidates)
        kept = list(candidates)
        ids = list(map(str.encode, map(event_ids.__getitem__, kept)))
        fresh = set(ids)
        if len(fresh) == len(ids) and self._seen.isdisjoint(fresh):
            self._seen |= fresh
            new_ids, new_ts = ids, list(map(ts_ms.__getitem__, kept))
        else:
            kept, new_ids, new_ts = self._new_each(ids, ts_ms, kept)
        if new_ids:
            self._file(new_ids, new_ts)
            self._added_ids += new_ids
            self._added_ts += new_ts
        if len(self._seen) > self.max_ids:
            self._evict()
        return kept

    def _new_each(self, ids: list[bytes], ts_ms: list[int],
                  candidates: list[int]) -> tuple[list[int], list[bytes], list[int]]:
        """The new ones among `ids` (`ids[j]` is row `candidates[j]`'s), id by id: (rows, ids, ts)."""
        seen = self._seen
        kept: list[int] = []
        new_ids: list[bytes] = []
        for eid, i in zip(ids, candidates):
            if eid not in seen:
                seen.add(eid)
                kept.append(i)
                new_ids.append(eid)
        self._duplicates += len(ids) - len(kept)
        return kept, new_ids, list(map(ts_ms.__getitem__, kept))

    def _file(self, ids: list[bytes], ts_ms: list[int]) -> None:
        """Put each id in the bucket of the minute its ts + ttl falls in."""
        ttl, buckets = self.ttl_ms, self._buckets
        first, last = (min(ts_ms) + ttl) // _BUCKET_MS, (max(ts_ms) + ttl) // _BUCKET_MS
        if first == last:   # a batch rarely straddles a minute
            lst = buckets.get(first)
            if lst is None:
                buckets[first] = ids
            else:
                lst += ids
            return
        for eid, ts in zip(ids, ts_ms):
            b = (ts + ttl) // _BUCKET_MS
            lst = buckets.get(b)
            if lst is None:
                buckets[b] = [eid]
            else:
                lst.append(eid)

    def expire(self, watermark_ms: int) -> None:
        """Forget ids whose expiry lies before the watermark."""
        limit = watermark_ms // _BUCKET_MS
        old = [b for b in self._buckets if b < limit]
        for b in old:
            self._seen.difference_update(self._buckets.pop(b))
        if old:
            self._expired_before = limit * _BUCKET_MS

    def _evict(self) -> None:
        while len(self._seen) > self.max_ids and self._buckets:
            b = min(self._buckets)
            ids = self._buckets.pop(b)
            self._seen.difference_update(ids)
            self._evicted += len(ids)
            self._expired_before = max(self._expired_before or 0, (b + 1) * _BUCKET_MS)

    def take_changes(self) -> tuple[list[tuple[bytes, int]], int | None]:
        """Ids added since the last call and the expiry bound below which stored ids can go."""
        ttl = self.ttl_ms
        added = list(zip(self._added_ids, map(ttl.__add__, self._added_ts)))
        before = self._expired_before
        self._added_ids, self._added_ts, self._expired_before = [], [], None
        return added, before

    def restore(self, items: Iterable[tuple[bytes, int]]) -> None:
        for eid, expiry in items:
            self._seen.add(eid)
            self._buckets.setdefault(expiry // _BUCKET_MS, []).append(eid)

    def statistics(self) -> DedupeStats:
        return DedupeStats(len(self._seen), self._duplicates, self._evicted)
