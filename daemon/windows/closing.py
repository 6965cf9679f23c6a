"""Where to cut a large close into chunks of bounded rows (pure).

A watermark jump past many windows (the idle timeout after a burst, a restart after downtime)
would emit them all in one close and one commit; closing at intermediate watermarks bounds both.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np


class ClosePoint(NamedTuple):
    """Where to close next, and at most how many rows that close emits."""

    watermark_ms: int
    rows: int   # an upper bound: the due window ends at or before watermark_ms


def close_point(ends: Sequence[np.ndarray], target_ms: int, max_rows: int) -> ClosePoint:
    """The greatest watermark <= target_ms that passes at most max_rows of `ends`.

    `ends` hold one window end per row a close at target_ms may emit (all <= target_ms). When
    they fit, the answer is target_ms itself: a small close stays one close. When even the
    earliest end has more rows than max_rows, the answer is that end (one window end cannot be
    split: a close emits every window ending at or before its watermark).
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
    return ClosePoint(first, int(np.count_nonzero(every == first)))
