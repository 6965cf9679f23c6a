"""Closing in chunks (windows/closing.py) emits what one close emits, in the same order, and leaves the same state."""

from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.events import WindowResult
from daemon.windows.aggregator import Aggregator
from daemon.windows.closing import ClosePoint, close_point
from tests.strategies import T0_MS, aggregation, batch_from_rows, event_rows, group_bys, splits, timestamps, window_specs

FAR_FUTURE_MS = T0_MS + 10**10


def _store(agg: Aggregator, store: dict[bytes, bytes]) -> dict[bytes, bytes]:
    """Apply the aggregator's take_changes to a checkpoint-like dict (its persisted state)."""
    for k, v in agg.take_changes().items():
        store.pop(k, None) if v is None else store.__setitem__(k, v)
    return store


def close_in_chunks(agg: Aggregator, target_ms: int, max_rows: int) -> list[list[WindowResult]]:
    """Close up to target_ms as the runner does: at each close point, until the target is reached."""
    chunks = []
    while True:
        point = close_point([agg.due_ends(target_ms)], target_ms, max_rows)
        chunk = agg.close(point.watermark_ms)
        assert len(chunk) <= point.rows, "the bound was not an upper bound"
        chunks.append(chunk)
        if point.watermark_ms == target_ms:
            return chunks


@settings(max_examples=200, deadline=None)
@given(rows=st.lists(event_rows(timestamps(span_ms=600_000)), max_size=120), window=window_specs(),
       group_by=group_bys(), max_rows=st.integers(min_value=1, max_value=4), data=st.data())
def test_chunked_close_equals_one_close(rows, window, group_by, max_rows, data):
    """Closing at the chunk points up to a target gives the rows of one close at the target, in the same
    order, at most max_rows per chunk (or one window end's rows), and the same state and counters after."""
    cfg = aggregation(window, group_by=group_by)
    rows = sorted(rows, key=lambda r: r["ts"])
    cut = data.draw(st.integers(min_value=0, max_value=len(rows)))
    early, later = rows[:cut], rows[cut:]
    target = data.draw(st.integers(min_value=T0_MS - 1, max_value=T0_MS + 1_300_000))
    later = [r for r in later if r["ts"] >= target]   # the runner rejects what is late for the target
    one, chunked = Aggregator(cfg), Aggregator(cfg)
    stores: list[dict[bytes, bytes]] = [{}, {}]
    for pieces in data.draw(splits(early)):
        for agg in (one, chunked):
            agg.add(batch_from_rows(pieces))
    whole = one.close(target)
    chunks = close_in_chunks(chunked, target, max_rows)
    assert [r for c in chunks for r in c] == whole
    for chunk in chunks:
        assert len(chunk) <= max_rows or len({r.window_end_ms for r in chunk}) == 1
    _store(one, stores[0])
    _store(chunked, stores[1])
    assert stores[0] == stores[1]
    assert one.statistics() == chunked.statistics()
    for agg in (one, chunked):   # and both go on alike
        if later:
            agg.add(batch_from_rows(later))
    assert one.close(FAR_FUTURE_MS) == [r for c in close_in_chunks(chunked, FAR_FUTURE_MS, max_rows) for r in c]
    assert _store(one, stores[0]) == _store(chunked, stores[1])


def test_small_close_is_one_step():
    """When the due rows fit the bound, the close point is the target itself."""
    ends = [np.array([5, 3, 9], dtype=np.int64)]
    assert close_point(ends, 10, 3) == ClosePoint(10, 3)
    assert close_point([], 10, 0) == ClosePoint(10, 0)


def test_close_point_cuts_before_the_first_end_over_the_bound():
    """The point passes at most max_rows ends; one end with too many rows is closed alone."""
    ends = [np.array([1, 2, 2, 3], dtype=np.int64), np.array([3, 7], dtype=np.int64)]
    assert close_point(ends, 10, 3) == ClosePoint(2, 3)
    assert close_point(ends, 10, 4) == ClosePoint(2, 3)
    assert close_point(ends, 10, 5) == ClosePoint(6, 5)
    assert close_point([np.array([4, 4, 4, 8], dtype=np.int64)], 10, 2) == ClosePoint(4, 3)
    assert close_point([np.array([4, 8], dtype=np.int64)], 10, 0) == ClosePoint(4, 1)
