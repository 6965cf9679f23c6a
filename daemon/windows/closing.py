"""Where to cut a large close into chunks of bounded rows (pure).

A watermark jump past many windows (the idle timeout after a burst, a restart after downtime)
would emit them all in one close and one commit; closing at intermediate watermarks bounds both.
One window end can hold more rows than a chunk (a hopping count per item of a large catalogue:
~145k rows at each minute in the memory benchmark); tumbling and hopping aggregations then emit it
a key range at a time (the close's `limit`), so no commit holds more than about one chunk.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np


class ClosePoint(NamedTuple):
    """Where to close next, at most how many rows that close emits, and the most rows each
    splittable aggregation may emit in it (None: every window ending at or before the watermark)."""

    watermark_ms: int
    rows: int   # an upper bound: the due window ends at or before watermark_ms (within `limit`)
    limit: int | None = None


def close_point(ends: Sequence[np.ndarray], target_ms: int, max_rows: int,
                splittable: Sequence[bool] | None = None) -> ClosePoint:
    """The greatest watermark <= target_ms that passes at most max_rows of `ends`.

    `ends` hold one window end per row a close at target_ms may emit (all <= target_ms), one array
    per aggregation; `splittable[i]` says whether aggregation i can emit part of one window end's
    rows (tumbling and hopping windows can: by key order, Aggregator.close's `max_rows`). When they
    fit, the answer is target_ms itself: a small close stays one close. When even the earliest end
    has more rows than max_rows, the answer is that end, with a per-aggregation `limit` that shares
    max_rows among the splittable aggregations holding rows there (a window end with a row per item
    of a large catalogue is then closed over several commits); the rows of an aggregation that cannot
    split (sessions, which rarely share an end) all go.
    """
    total = sum(len(e) for e in ends)
    if total <= max(max_rows, 0):
        return ClosePoint(target_ms, total)
    every = np.concatenate(ends)
    first = int(every.min())
    if max_rows > 0:
        # The (max_rows + 1)-th smallest end: fewer than max_rows + 1 ends lie before it.
        cut = int(np.partition(every, max_rows)[max_rows]) - 1
        if cut >= first:
            return ClosePoint(cut, int(np.count_nonzero(every <= cut)))
        at_first = [int(np.count_nonzero(e == first)) for e in ends]
        split = [n for n, s in zip(at_first, splittable or ()) if s and n]
        if split:
            limit = max(1, max_rows // len(split))
            rows = sum(min(n, limit) if s else n for n, s in zip(at_first, splittable or ()))
            return ClosePoint(first, rows, limit)
    return ClosePoint(first, int(np.count_nonzero(every == first)))
