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
    """

    def __init__(self, ttl_ms: int, max_ids: int) -> None:
        self.ttl_ms = ttl_ms
        self.max_ids = max_ids
        self._expiry: dict[str, int] = {}
        self._buckets: dict[int, list[str]] = {}
        self._added: list[tuple[bytes, int]] = []
        self._expired_before: int | None = None
        self._duplicates = 0
        self._evicted = 0

    def keep(self, event_ids: list[str], ts_ms: list[int], candidates: Iterable[int]) -> list[int]:
        """Indices among `candidates` whose id is new (the first of in-batch repeats wins)."""
        if self.ttl_ms <= 0:
            return list(candidates)
        seen = self._expiry
        ttl = self.ttl_ms
        buckets = self._buckets
        added = self._added
        kept = []
        for i in candidates:
            eid = event_ids[i]
            if eid in seen:
                self._duplicates += 1
                continue
            expiry = ts_ms[i] + ttl
            seen[eid] = expiry
            b = expiry // _BUCKET_MS
            lst = buckets.get(b)
            if lst is None:
                buckets[b] = [eid]
            else:
                lst.append(eid)
            added.append((eid.encode(), expiry))
            kept.append(i)
        if len(seen) > self.max_ids:
            self._evict()
        return kept

    def expire(self, watermark_ms: int) -> None:
        """Forget ids whose expiry lies before the watermark."""
        limit = watermark_ms // _BUCKET_MS
        old = [b for b in self._buckets if b < limit]
        for b in old:
            for eid in self._buckets.pop(b):
                self._expiry.pop(eid, None)
        if old:
            self._expired_before = limit * _BUCKET_MS

    def _evict(self) -> None:
        while len(self._expiry) > self.max_ids and self._buckets:
            b = min(self._buckets)
            ids = self._buckets.pop(b)
            for eid in ids:
                self._expiry.pop(eid, None)
            self._evicted += len(ids)
            self._expired_before = max(self._expired_before or 0, (b + 1) * _BUCKET_MS)

    def take_changes(self) -> tuple[list[tuple[bytes, int]], int | None]:
        """Ids added since the last call and the expiry bound below which stored ids can go."""
        added, before = self._added, self._expired_before
        self._added, self._expired_before = [], None
        return added, before

    def restore(self, items: Iterable[tuple[bytes, int]]) -> None:
        for eid_b, expiry in items:
            eid = eid_b.decode()
            self._expiry[eid] = expiry
            self._buckets.setdefault(expiry // _BUCKET_MS, []).append(eid)

    def statistics(self) -> DedupeStats:
        return DedupeStats(len(self._expiry), self._duplicates, self._evicted)
