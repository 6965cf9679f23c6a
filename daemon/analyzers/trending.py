"""Trending items: exponentially time-decayed popularity per category and overall (pure).

Scores use forward decay: an event of weight w at time t adds w * 2^((t - ref)/half_life), so stored
scores never need touching as time passes; a query at `now` multiplies by 2^((ref - now)/half_life).
Each category keeps at most `max_items` items (the weakest are dropped when it holds twice that).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

import orjson

from daemon.analyzers.reads import read_consistently
from daemon.events import EventBatch
from daemon import jsonbytes, native

TYPE_WEIGHTS = {"view": 1.0, "cart": 3.0, "purchase": 5.0}   # remove_from_cart and search do not count
OVERALL = None
_REBASE_HALF_LIVES = 500.0    # 2^500 stays far from float overflow (2^1024); rebasing is O(state)
_CACHE_SIZE = 100             # the sorted head kept per category for top() queries
# observe's loop and _flush's adding loop compiled (analyzers/_recfold.pyx `trending_events`,
# `trending_add`: the same statements with C locals), unless not built or STOREPULSE_NO_EXTENSIONS is
# set; the loops here are the reference (tests/unit/test_trending.py runs both).
_compiled = native.compiled("daemon.analyzers._recfold")


@dataclass(frozen=True, slots=True)
class TrendingStats:
    """A snapshot: categories tracked, items tracked over all categories, events counted."""

    categories: int
    items: int
    events: int


class Trending:
    """Decayed item popularity per category (and overall under category None)."""

    def __init__(self, half_life_s: float, *, max_items: int = 1000,
                 weights: dict[str, float] | None = None) -> None:
        if half_life_s <= 0:
            raise ValueError("half_life_s must be > 0")
        self.half_life_ms = half_life_s * 1000.0
        self.max_items = max_items
        self.weights = dict(TYPE_WEIGHTS if weights is None else weights)
        self._scores: dict[str | None, dict[str, float]] = {}
        self._heads: dict[str | None, list[tuple[str, float]]] = {}   # cached sorted heads
        self._ref_ms: float | None = None
        self._events = 0
        self._dirty: set[str | None] = set()

    # -- updates --------------------------------------------------------------------------------

    def observe(self, batch: EventBatch) -> None:
        """Count every view, cart and purchase of the batch at its event time.

        Weights are summed per category and item over the batch first, then each sum is added once:
        the same scores as adding event by event, with a dict update per distinct pair only. The sums
        are dicts per category (str -> float), not one dict keyed by (category, item) tuples: no tuple
        per event, so nothing for the cyclic GC to count. A batch spans few distinct timestamps, so
        the decay factor is computed once per timestamp (`growth_by_ts`, emptied on a rebase).
        """
        overall: dict[str, float] = {}
        by_cat: dict[str, dict[str, float]] = {}
        if _compiled is not None:
            self._events += _compiled.trending_events(self, batch.type, batch.item_id, batch.category, batch.ts,
                                                      overall, by_cat, _REBASE_HALF_LIVES)
            self._flush(overall, by_cat)
            return
        weights, hl = self.weights, self.half_life_ms
        growth_by_ts: dict[int, float] = {}
        events = 0
        ref = self._ref_ms
        for etype, item, cat, ts in zip(batch.type, batch.item_id, batch.category, batch.ts):
            w = weights.get(etype)
            if not w or item is None:
                continue
            f = growth_by_ts.get(ts)
            if f is None:
                if ref is None or (ts - ref) / hl > _REBASE_HALF_LIVES:
                    self._flush(overall, by_cat)
                    growth_by_ts.clear()
                    f = self.growth(ts)
                    ref = self._ref_ms
                else:
                    f = 2.0 ** ((ts - ref) / hl)
                growth_by_ts[ts] = f
            g = f * w
            events += 1
            overall[item] = overall.get(item, 0.0) + g
            if cat is not None:
                sums = by_cat.get(cat)
                if sums is None:
                    sums = by_cat[cat] = {}
                sums[item] = sums.get(item, 0.0) + g
        self._events += events
        self._flush(overall, by_cat)

    def _flush(self, overall: dict[str, float], by_cat: dict[str, dict[str, float]]) -> None:
        """Add the batch's sums (and empty them), then settle each touched category once (see `_settle`)."""
        all_scores = self._scores
        touched = [(OVERALL, overall)] if overall else []
        touched += by_cat.items()
        if _compiled is not None:
            _compiled.trending_add(all_scores, touched)
        else:
            for cat, sums in touched:
                scores = all_scores.get(cat)
                if scores is None:
                    scores = all_scores[cat] = {}
                for item, g in sums.items():
                    scores[item] = scores.get(item, 0.0) + g
        for cat, _ in touched:
            self._settle(cat)
        overall.clear()
        by_cat.clear()

    def growth(self, ts_ms: float) -> float:
        """The forward-decay factor 2^((ts - ref)/half_life); rebases the stored scores when it grows large."""
        if self._ref_ms is None:
            self._ref_ms = float(ts_ms)
        e = (ts_ms - self._ref_ms) / self.half_life_ms
        if e > _REBASE_HALF_LIVES:
            self._rebase(ts_ms)
            e = 0.0
        return 2.0 ** e

    def _rebase(self, ts_ms: float) -> None:
        assert self._ref_ms is not None
        f = 2.0 ** ((self._ref_ms - ts_ms) / self.half_life_ms)
        for cat, scores in self._scores.items():
            for item in scores:
                scores[item] *= f
            self._dirty.add(cat)
        self._heads.clear()
        self._ref_ms = float(ts_ms)

    def _settle(self, cat: str | None) -> None:
        """After scores of `cat` grew: drop its cached head, mark it dirty, prune it at twice max_items.

        sorted(..., reverse=True)[:n] is what heapq.nlargest(n, ...) is documented to equal (ties in the
        same order); with a C key function it is cheaper here (2,001 entries: n is half of them)."""
        self._heads.pop(cat, None)
        self._dirty.add(cat)
        scores = self._scores[cat]
        if len(scores) > 2 * self.max_items:
            self._scores[cat] = dict(sorted(scores.items(), key=itemgetter(1), reverse=True)[:self.max_items])

    # -- queries --------------------------------------------------------------------------------

    def top(self, category: str | None, k: int, now_ms: int) -> list[tuple[str, float]]:
        """The k items with the highest decayed score at `now_ms` (category None: overall).

        Safe while another thread runs `observe` (see analyzers/reads.py)."""
        return read_consistently(lambda: self._top(category, k, now_ms))

    def _top(self, category: str | None, k: int, now_ms: int) -> list[tuple[str, float]]:
        if k <= 0 or self._ref_ms is None:
            return []
        head = self._head(category)
        if k > len(head) and len(head) == _CACHE_SIZE:
            head = heapq.nlargest(k, self._scores.get(category, {}).items(), key=lambda kv: kv[1])
        f = 2.0 ** ((self._ref_ms - now_ms) / self.half_life_ms)
        return [(item, s * f) for item, s in head[:k]]

    def _head(self, category: str | None) -> list[tuple[str, float]]:
        head = self._heads.get(category)
        if head is None:
            scores = self._scores.get(category, {})
            head = self._heads[category] = heapq.nlargest(_CACHE_SIZE, scores.items(), key=lambda kv: kv[1])
        return head

    def categories(self) -> list[str]:
        """The categories seen so far."""
        return sorted(c for c in list(self._scores) if c is not None)

    def statistics(self) -> TrendingStats:
        return TrendingStats(categories=len(self._scores) - (OVERALL in self._scores),
                             items=len(self._scores.get(OVERALL, {})), events=self._events)

    # -- state ----------------------------------------------------------------------------------

    def take_changes(self) -> dict[bytes, bytes | None]:
        """Records changed since the last call, for an incremental commit: key -> value (None deletes).

        Keys: b"t:<category>", b"t*" (overall) and b"t#" (meta).
        """
        out = self.records(self._dirty)
        self._dirty.clear()
        return out

    def records(self, categories: Iterable[str | None] | None = None) -> dict[bytes, bytes | None]:
        """The records of `categories` (default: all) plus the meta record; changes nothing."""
        cats = self._scores if categories is None else categories
        out: dict[bytes, bytes | None] = {_key(c): jsonbytes.dumps(self._scores.get(c, {})) for c in cats}
        out[b"t#"] = jsonbytes.dumps({"ref": self._ref_ms, "events": self._events})
        return out

    def restore_items(self, items: Iterable[tuple[bytes, bytes]]) -> None:
        """Rebuild from records written by `take_changes` (other keys are ignored)."""
        self._scores.clear()
        self._heads.clear()
        self._dirty.clear()
        for key, value in items:
            if key == b"t#":
                meta = orjson.loads(value)
                self._ref_ms, self._events = meta["ref"], meta["events"]
            elif key == b"t*":
                self._scores[OVERALL] = orjson.loads(value)
            elif key.startswith(b"t:"):
                self._scores[key[2:].decode()] = orjson.loads(value)

    def snapshot(self) -> bytes:
        """The whole state as bytes."""
        return jsonbytes.dumps([[k.decode(), v.decode()] for k, v in self.records().items() if v is not None])

    def restore(self, data: bytes) -> None:
        """Replace the state with a `snapshot()`."""
        self.restore_items((k.encode(), v.encode()) for k, v in orjson.loads(data))


def _key(category: Any) -> bytes:
    return b"t*" if category is None else b"t:" + str(category).encode()
