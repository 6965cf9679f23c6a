"""Closing in chunks (windows/closing.py) emits what one close emits, in the same order, and leaves the same state;
also when a chunk stops inside a window end and the state is stored and restored between chunks."""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from typing import Any

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.aggconfig import AggregationConfig
from daemon.config import parse_config
from daemon.events import WindowResult
from daemon.pipeline.stateparts import StateParts
from daemon.windows.aggregator import Aggregator
from daemon.windows.closing import ClosePoint, close_point
from tests.strategies import (T0_MS, aggregation, batch_from_rows, event_rows, fixed_window_specs, group_bys, splits,
                              timestamps, window_specs)

FAR_FUTURE_MS = T0_MS + 10**10


def _store(agg: Aggregator, store: dict[bytes, bytes]) -> dict[bytes, bytes]:
    """Apply the aggregator's take_changes to a checkpoint-like dict (its persisted state)."""
    for k, v in agg.take_changes().items():
        store.pop(k, None) if v is None else store.__setitem__(k, v)
    return store


def close_in_chunks(agg: Aggregator, target_ms: int, max_rows: int,
                    restart: Callable[[Aggregator], Aggregator] | None = None) -> tuple[list[list[WindowResult]], Aggregator]:
    """Close up to target_ms as the runner does: at each close point, until the target is reached (with
    `restart`, the aggregator is replaced after each chunk by what it returns); the chunks and the last
    aggregator."""
    chunks = []
    while True:
        point = close_point([agg.due_ends(target_ms)], target_ms, max_rows, [agg.splittable])
        chunk = agg.close(point.watermark_ms, point.limit)
        assert len(chunk) <= point.rows, "the bound was not an upper bound"
        chunks.append(chunk)
        if restart is not None:
            agg = restart(agg)
        if point.watermark_ms == target_ms and point.limit is None:
            return chunks, agg


def restored(cfg: AggregationConfig, store: dict[bytes, bytes]) -> Callable[[Aggregator], Aggregator]:
    """A `restart` for close_in_chunks: store the aggregator's changes, build a new one from the store."""
    def restart(agg: Aggregator) -> Aggregator:
        fresh = Aggregator(cfg)
        fresh.restore(_store(agg, store).items())
        return fresh
    return restart


@settings(max_examples=300, deadline=None)
@given(rows=st.lists(event_rows(timestamps(span_ms=600_000)), max_size=120), window=window_specs(),
       group_by=group_bys(), max_rows=st.integers(min_value=1, max_value=4), restart=st.booleans(), data=st.data())
def test_chunked_close_equals_one_close(rows, window, group_by, max_rows, restart, data):
    """Closing at the chunk points up to a target gives the rows of one close at the target, in the same
    order, at most max_rows per chunk (tumbling and hopping windows split a window end by key; sessions
    emit one end's rows together), and the same state and counters after; also when the chunked side
    is stored and restored after every chunk (a restart inside a split window end)."""
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
    again = restored(cfg, stores[1]) if restart else None
    whole = one.close(target)
    chunks, chunked = close_in_chunks(chunked, target, max_rows, again)
    assert [r for c in chunks for r in c] == whole
    for chunk in chunks:
        assert len(chunk) <= max_rows or (window.type == "session" and len({r.window_end_ms for r in chunk}) == 1)
    _store(one, stores[0])
    _store(chunked, stores[1])
    _same_state(cfg, stores, exact=not restart)
    assert one.statistics() == chunked.statistics()
    for agg in (one, chunked):   # and both go on alike
        if later:
            agg.add(batch_from_rows(later))
    rest, chunked = close_in_chunks(chunked, FAR_FUTURE_MS, max_rows, again)
    assert one.close(FAR_FUTURE_MS) == [r for c in rest for r in c]
    _store(one, stores[0])
    _store(chunked, stores[1])
    _same_state(cfg, stores, exact=not restart)


def _same_state(cfg: AggregationConfig, stores: list[dict[bytes, bytes]], *, exact: bool) -> None:
    """The two stored states are the same: byte for byte, or (after restores) as the same entries
    that close into the same rows: a quantile sketch's bytes record whether it was sorted by a read,
    which a sketch restored before that read was not."""
    if exact:
        assert stores[0] == stores[1]
        return
    assert stores[0].keys() == stores[1].keys()
    a, b = Aggregator(cfg), Aggregator(cfg)
    a.restore(stores[0].items())
    b.restore(stores[1].items())
    assert a.close(FAR_FUTURE_MS + 1) == b.close(FAR_FUTURE_MS + 1)


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


def test_close_point_splits_a_window_end_among_the_aggregations_that_can():
    """One end over the bound: each splittable aggregation with rows there gets an equal share of
    max_rows as its limit; the rows of one that cannot split (sessions) all count."""
    assert close_point([np.array([4, 4, 4, 8], dtype=np.int64)], 10, 2, [True]) == ClosePoint(4, 2, 2)
    ends = [np.array([4] * 5, dtype=np.int64), np.array([4] * 3, dtype=np.int64), np.array([4, 4, 9], dtype=np.int64)]
    assert close_point(ends, 10, 4, [True, True, False]) == ClosePoint(4, 2 + 2 + 2, 2)
    assert close_point(ends, 10, 4, [False, False, False]) == ClosePoint(4, 10)
    assert close_point(ends, 10, 0, [True, True, True]) == ClosePoint(4, 10)   # no room at all: commit first


ANOMALY_CONFIG = """
[storage]
data_dir = "unused"

[[aggregations]]
name = "orders"
group_by = ["item_id"]
window = { type = "tumbling", size = "1m" }
metrics = { orders = "count" }
moving_average = { of = ["orders"], sma = 3, ema_alpha = 0.5 }
anomaly = { metric = "orders", method = "zscore", threshold = 3.0, warmup = 3 }
"""


def _minutes(rates: list[int], minutes: int, drop_at: int, dropped: int) -> list[list[dict[str, Any]]]:
    """Per minute, `rates[k]` events of item k spread over it; the first `dropped` items stop at `drop_at`."""
    out = []
    for m in range(minutes):
        rows = []
        for k, rate in enumerate(rates):
            if k < dropped and m >= drop_at:
                continue
            rows += [{"event_id": f"{m}-{k}-{j}", "ts": T0_MS + m * 60_000 + j * 997, "type": "purchase",
                      "user_id": "u1", "item_id": f"i{k:02d}", "category": "c", "price": 1.0, "quantity": 1,
                      "revenue": 1.0, "session_id": None} for j in range(rate)]
        out.append(sorted(rows, key=lambda r: r["ts"]))
    return out


def _run(minutes: list[list[dict[str, Any]]], max_rows: int | None, restart: bool) -> tuple[list[Any], list[Any]]:
    """Fold minute by minute, closing the minute before each; whole closes (max_rows None) or the
    runner's chunks; with `restart`, store and restore the parts after every chunk. (rows, anomalies)."""
    cfg = parse_config(tomllib.loads(ANOMALY_CONFIG))
    parts, store = StateParts(cfg), {}
    rows: list[Any] = []
    anomalies: list[Any] = []
    for m, batch in enumerate(minutes):
        if batch:
            parts.observe(batch_from_rows(batch))
        target = T0_MS + (m + 1) * 60_000 - 1
        while True:
            point = parts.close_point(target, max_rows) if max_rows else ClosePoint(target, 0)
            closed, found = parts.close(point.watermark_ms, point.limit)
            rows += [(r.window_end_ms, r.key, r.metrics) for rs in closed.values() for r in rs]
            anomalies += found
            if restart:
                for ns, changes in parts.take_changes().items():
                    kept = store.setdefault(ns, {})
                    for k, v in changes.items():
                        kept.pop(k, None) if v is None else kept.__setitem__(k, v)
                parts = StateParts(cfg)
                parts.restore({ns: list(kv.items()) for ns, kv in store.items()})
            if point.watermark_ms == target and point.limit is None:
                break
    return rows, anomalies


@settings(max_examples=40, deadline=None)
@given(rates=st.lists(st.integers(min_value=1, max_value=6), min_size=2, max_size=25),
       minutes=st.integers(min_value=5, max_value=12), drop_at=st.integers(min_value=3, max_value=11),
       dropped=st.integers(min_value=0, max_value=25), max_rows=st.integers(min_value=1, max_value=5),
       restart=st.booleans())
def test_a_window_end_split_over_closes_scores_as_one_close(rates, minutes, drop_at, dropped, max_rows, restart):
    """Moving averages and the anomaly detector see a window end emitted over several closes (and
    restarts between them) as they see it emitted at once: the same rows, the same incidents."""
    stream = _minutes(rates, minutes, drop_at, dropped)
    assert _run(stream, max_rows, restart) == _run(stream, None, False)


def test_split_closes_still_find_the_drops():
    """The comparison above is not vacuous: items that stop selling open incidents, split or not."""
    stream = _minutes([5] * 12, 12, 8, 4)
    rows, anomalies = _run(stream, 3, True)
    assert {(a.key, a.state) for a in anomalies} >= {((f"i{k:02d}",), "open") for k in range(4)}
    assert (rows, anomalies) == _run(stream, None, False)


@settings(max_examples=150, deadline=None)
@given(rows=st.lists(event_rows(timestamps(span_ms=600_000)), max_size=80), window=fixed_window_specs(),
       group_by=group_bys(), max_rows=st.integers(min_value=1, max_value=5),
       target=st.integers(min_value=T0_MS, max_value=T0_MS + 1_300_000))
def test_closes_with_a_row_limit_add_up_to_one_close(rows, window, group_by, max_rows, target):
    """Closing at one watermark with a row limit, again and again (past several window ends, stopping
    inside one or right after one), emits what one close emits, in order, and says how far it got."""
    cfg = aggregation(window, group_by=group_by)
    one, limited = Aggregator(cfg), Aggregator(cfg)
    for agg in (one, limited):
        agg.add(batch_from_rows(sorted(rows, key=lambda r: r["ts"])))
    whole, got = one.close(target), []
    for _ in range(len(whole) + 2):
        chunk = limited.close(target, max_rows)
        assert len(chunk) <= max_rows
        through, partial = limited.closed_through_ms, limited.partial_end
        assert all(r.window_end_ms <= through or r.window_end_ms == partial for r in chunk)
        got += chunk
        if limited.closed_through_ms == target:
            break
    assert got == whole and limited.partial_end is None
    assert one.statistics() == limited.statistics()
