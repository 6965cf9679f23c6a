"""Aggregator: results equal a per-event reference, batching never matters, closing is exact-once,
checkpoint changes restore mid-stream, and the max_keys bound holds."""

from __future__ import annotations

import dataclasses
import math
import random
from collections import Counter
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon import columns
from daemon.aggconfig import AggregationConfig, WindowSpec
from daemon.metrics import sketches
from daemon.events import WindowResult
from daemon.windows import build_windower
from daemon.windows.aggregator import META_KEY, Aggregator, key_order
from daemon.windows.session import sessionize
from tests.native import LOOPS
from tests.native import loops as loops_of
from tests.strategies import (ALL_METRICS, T0_MS, aggregation, batch_from_rows, event_rows, group_bys, splits,
                              timestamps, window_specs)

TUMBLING_1M = WindowSpec(type="tumbling", size_ms=60_000, slide_ms=60_000)
HOPPING_5M_1M = WindowSpec(type="hopping", size_ms=300_000, slide_ms=60_000)
SESSION_30S = WindowSpec(type="session", gap_ms=30_000)
FAR_FUTURE_MS = T0_MS + 10**10

rows_10min = st.lists(event_rows(timestamps(span_ms=600_000)), max_size=80)


def reference_value(spec, rows: list[dict[str, Any]]) -> Any:
    """One metric computed the obvious way from the rows of one window."""
    values = [r[spec.field] for r in rows] if spec.field else rows
    present = [v for v in values if v is not None]
    if spec.func == "count":
        return len(rows)
    if spec.func == "sum":
        return math.fsum(present)
    if spec.func == "mean":
        return math.fsum(present) / len(present) if present else None
    if spec.func in ("min", "max"):
        return float((min if spec.func == "min" else max)(present)) if present else None
    if spec.func == "distinct":
        return len(set(present))
    if spec.func == "quantile":
        ordered = sorted(float(v) for v in present)
        return ordered[max(0, math.ceil(spec.q * len(ordered)) - 1)] if ordered else None
    if spec.func == "topk":
        counts = Counter(str(v) for v in present)
        top = sorted(counts.items(), key=lambda p: (-p[1], p[0]))[: spec.k]
        return [{"value": v, "count": n} for v, n in top]
    raise AssertionError(spec.func)


def reference(cfg: AggregationConfig, rows: list[dict[str, Any]]) -> dict[tuple[int, int, tuple], dict[str, Any]]:
    """Per-event reference: filter, key, assign windows one event at a time, then compute metrics."""
    chosen = [r for r in rows if all(r[f] in allowed for f, allowed in cfg.where)]
    per_window: dict[tuple[int, int, tuple], list[dict[str, Any]]] = {}
    if cfg.window.type == "session":
        by_key: dict[tuple, list[dict[str, Any]]] = {}
        for r in chosen:
            by_key.setdefault(tuple(r[f] for f in cfg.group_by), []).append(r)
        for key, key_rows in by_key.items():
            for w in sessionize([r["ts"] for r in key_rows], cfg.window.gap_ms):
                per_window[(w.start_ms, w.end_ms, key)] = [r for r in key_rows if w.contains(r["ts"])]
    else:
        windower = build_windower(cfg.window)
        for r in chosen:
            for w in windower.assign(r["ts"]):
                per_window.setdefault((w.start_ms, w.end_ms, tuple(r[f] for f in cfg.group_by)), []).append(r)
    return {ident: {m.name: reference_value(m, wr) for m in cfg.metrics} for ident, wr in per_window.items()}


def as_dict(results: list[WindowResult]) -> dict[tuple[int, int, tuple], dict[str, Any]]:
    out = {(r.window_start_ms, r.window_end_ms, r.key): r.metrics for r in results}
    assert len(out) == len(results), "a window was emitted twice"
    return out


def run_all(cfg: AggregationConfig, batches: list[list[dict[str, Any]]]) -> list[WindowResult]:
    agg = Aggregator(cfg)
    for rows in batches:
        agg.add(batch_from_rows(rows))
    return agg.close(FAR_FUTURE_MS)


def assert_emission_order(results: list[WindowResult]) -> None:
    order = [(r.window_end_ms, r.window_start_ms, key_order(r.key)) for r in results]
    assert order == sorted(order)


def shop_rows(n: int, seed: int, span_ms: int = 3_600_000) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        etype = rng.choice(("view", "view", "view", "cart", "purchase", "search"))
        price = round(rng.uniform(1, 300), 2) if etype in ("cart", "purchase") else None
        qty = rng.randint(1, 3)
        rows.append({"event_id": f"e{i}", "ts": T0_MS + rng.randrange(span_ms), "type": etype,
                     "user_id": f"u{rng.randrange(300)}", "session_id": None,
                     "item_id": None if etype == "search" else f"i{int(40 ** rng.random())}",
                     "category": rng.choice(("books", "games", "toys", None)), "price": price, "quantity": qty,
                     "revenue": price * qty if etype == "purchase" else 0.0})
    return rows


@pytest.mark.parametrize("window,group_by,where", [
    (TUMBLING_1M, ("category",), ()),
    (TUMBLING_1M, (), (("type", ("purchase", "cart")),)),
    (HOPPING_5M_1M, ("item_id",), ()),
    (SESSION_30S, ("user_id",), ()),
    (WindowSpec(type="session", gap_ms=300_000), ("category", "type"), (("type", ("view",)),)),
])
@pytest.mark.parametrize("loop", LOOPS)
def test_results_equal_a_per_event_reference(window, group_by, where, loop):
    """On 3000 shop events every window's metrics equal a straightforward per-event computation
    (with the fold's compiled loops: daemon/columns.py's and Distinct's; and with none)."""
    cfg = aggregation(window, group_by=group_by, where=where)
    rows = shop_rows(3_000, seed=11)
    batches = [rows[i:i + 250] for i in range(0, len(rows), 250)]
    with loops_of((columns, sketches), loop):
        results = run_all(cfg, batches)
    assert as_dict(results) == reference(cfg, rows)
    assert_emission_order(results)


@settings(max_examples=150, deadline=None)
@given(rows=rows_10min, window=window_specs(), group_by=group_bys(), data=st.data())
def test_any_batching_and_batch_order_gives_identical_results(rows, window, group_by, data):
    """Shuffled batches (any split) give the same results as one batch, and both equal the reference."""
    cfg = aggregation(window, group_by=group_by)
    pieces = data.draw(splits(rows))
    shuffled = data.draw(st.permutations(pieces))
    whole = run_all(cfg, [rows])
    assert run_all(cfg, shuffled) == whole
    assert as_dict(whole) == reference(cfg, rows)
    assert_emission_order(whole)


def replay(cfg: AggregationConfig, batches: list[list[dict[str, Any]]], lateness_ms: int,
           cut: int | None = None, commit_every: int = 1) -> tuple[list[WindowResult], Aggregator]:
    """Feed time-ordered batches, closing by a watermark after each; at `cut`, checkpoint and
    continue in a fresh Aggregator restored from the accumulated take_changes entries."""
    agg, store, emitted, max_ts = Aggregator(cfg), {}, [], None
    for n, rows in enumerate(batches):
        if n == cut:
            for k, v in agg.take_changes().items():
                store.pop(k, None) if v is None else store.__setitem__(k, v)
            agg = Aggregator(cfg)
            agg.restore(list(store.items()))
        agg.add(batch_from_rows(rows))
        max_ts = max([max_ts or 0, *(r["ts"] for r in rows)])
        emitted += agg.close(max_ts - lateness_ms)
        if n % commit_every == 0:
            for k, v in agg.take_changes().items():
                store.pop(k, None) if v is None else store.__setitem__(k, v)
    emitted += agg.close(FAR_FUTURE_MS)
    return emitted, agg


@settings(max_examples=150, deadline=None)
@given(rows=rows_10min, window=window_specs(), group_by=group_bys(), data=st.data())
def test_restore_mid_stream_equals_an_uninterrupted_run(rows, window, group_by, data):
    """take_changes entries restored into a new Aggregator mid-stream give the same results and counters."""
    cfg = aggregation(window, group_by=group_by)
    rows = sorted(rows, key=lambda r: r["ts"])
    batches = data.draw(splits(rows))
    lateness = data.draw(st.sampled_from((0, 1_000, 60_000)))
    cut = data.draw(st.integers(min_value=0, max_value=len(batches)))
    every = data.draw(st.integers(min_value=1, max_value=3))
    expected, plain = replay(cfg, batches, lateness)
    got, restored = replay(cfg, batches, lateness, cut=cut, commit_every=every)
    assert got == expected
    assert restored.statistics() == plain.statistics()
    assert plain.statistics().late == 0


def test_close_emits_each_window_once_and_frees_state():
    """close emits a window when the watermark reaches its end, once, and frees its state."""
    agg = Aggregator(aggregation(TUMBLING_1M, metrics={"n": "count"}, group_by=("category",)))
    rows = [{"ts": T0_MS + 1_000, "category": "b"}, {"ts": T0_MS + 2_000, "category": "a"},
            {"ts": T0_MS + 61_000, "category": None}]
    start = T0_MS - T0_MS % 60_000
    assert agg.add(batch_from_rows(rows)) == 3
    assert agg.statistics().open_windows == 3 and agg.statistics().keys == 3
    assert agg.close(start + 59_999) == []
    first = agg.close(start + 60_000)
    assert [(r.key, r.metrics["n"]) for r in first] == [(("a",), 1), (("b",), 1)]
    assert agg.close(start + 60_000) == []
    assert [r.key for r in agg.close(FAR_FUTURE_MS)] == [(None,)]
    stats = agg.statistics()
    assert (stats.open_windows, stats.emitted_windows, stats.events_folded, stats.keys) == (0, 3, 3, 0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        stats.keys = 5  # type: ignore[misc]


def test_hopping_counts_every_event_size_over_slide_times():
    """With 5m/1m hopping windows every event is counted in five windows."""
    rows = shop_rows(500, seed=3)
    results = run_all(aggregation(HOPPING_5M_1M, metrics={"n": "count"}), [rows])
    assert sum(r.metrics["n"] for r in results) == 5 * len(rows)


def test_events_in_closed_windows_are_not_folded():
    """An event whose windows were already emitted is counted as late and never folded."""
    agg = Aggregator(aggregation(TUMBLING_1M, metrics={"n": "count"}))
    start = T0_MS - T0_MS % 60_000
    agg.add(batch_from_rows([{"ts": start + 5}]))
    assert len(agg.close(start + 60_000)) == 1
    assert agg.add(batch_from_rows([{"ts": start + 6}, {"ts": start + 60_001}])) == 1
    assert agg.statistics().late == 1
    assert [r.metrics["n"] for r in agg.close(FAR_FUTURE_MS)] == [1]


def test_max_keys_bounds_open_states_and_reports_overflow():
    """At max_keys no new state is created: those rows are skipped, counted and listed."""
    agg = Aggregator(aggregation(TUMBLING_1M, metrics={"n": "count"}, group_by=("item_id",), max_keys=2))
    rows = [{"ts": T0_MS, "item_id": i} for i in ("a", "b", "c", "a", "c")]
    overflow: list[int] = []
    assert agg.add(batch_from_rows(rows), overflow) == 3
    assert overflow == [2, 4]
    stats = agg.statistics()
    assert (stats.open_windows, stats.overflowed) == (2, 2)
    assert {r.key: r.metrics["n"] for r in agg.close(FAR_FUTURE_MS)} == {("a",): 2, ("b",): 1}
    assert agg.add(batch_from_rows([{"ts": T0_MS + 10**10 + 5, "item_id": "c"}])) == 1


def test_max_keys_bounds_sessions_too():
    """Sessions count against max_keys; extending an open session is always allowed."""
    agg = Aggregator(aggregation(SESSION_30S, metrics={"n": "count"}, group_by=("user_id",), max_keys=1))
    rows = [{"ts": T0_MS, "user_id": "a"}, {"ts": T0_MS + 1, "user_id": "b"}, {"ts": T0_MS + 10_000, "user_id": "a"}]
    overflow: list[int] = []
    assert agg.add(batch_from_rows(rows), overflow) == 2
    assert overflow == [1] and agg.statistics().overflowed == 1


def test_unregistered_metric_function_is_refused():
    """An aggregation using a func missing from METRICS raises a clear ValueError."""
    import dataclasses

    from daemon.aggconfig import MetricSpec

    cfg = dataclasses.replace(aggregation(TUMBLING_1M, metrics={"n": "count"}),
                              metrics=(MetricSpec(name="f", func="nope", field="price"),))
    with pytest.raises(ValueError, match="nope"):
        Aggregator(cfg)


def test_take_changes_reports_updates_deletions_and_counters():
    """take_changes gives changed entries once, None for closed ones, and the counters under b"m"."""
    agg = Aggregator(aggregation(TUMBLING_1M, metrics={"n": "count", "s": "sum(price)"}, group_by=("category",)))
    agg.add(batch_from_rows([{"ts": T0_MS, "category": "a", "price": 2.5}]))
    changes = agg.take_changes()
    (key,) = [k for k in changes if k != META_KEY]
    assert key.startswith(b"w[") and changes[key] is not None and META_KEY in changes
    assert agg.take_changes() == {}
    agg.close(FAR_FUTURE_MS)
    after = agg.take_changes()
    assert after[key] is None and META_KEY in after


def test_long_group_keys_get_hashed_entry_keys_and_still_restore():
    """Entry keys stay under LMDB's 511-byte limit; the value carries the real key."""
    cfg = aggregation(SESSION_30S, metrics={"n": "count"}, group_by=("user_id",))
    agg = Aggregator(cfg)
    agg.add(batch_from_rows([{"ts": T0_MS, "user_id": "x" * 1_000}]))
    changes = agg.take_changes()
    assert all(len(k) <= 511 for k in changes)
    fresh = Aggregator(cfg)
    fresh.restore(changes.items())
    assert [r.key for r in fresh.close(FAR_FUTURE_MS)] == [("x" * 1_000,)]


def test_restore_refuses_state_of_another_configuration():
    """Entries written for other metrics are refused with a ValueError."""
    agg = Aggregator(aggregation(TUMBLING_1M, metrics={"n": "count"}))
    agg.add(batch_from_rows([{"ts": T0_MS}]))
    other = Aggregator(aggregation(TUMBLING_1M, metrics={"n": "sum(price)"}))
    with pytest.raises(ValueError, match="metrics"):
        other.restore(agg.take_changes().items())


def test_window_result_shape():
    """Results name the aggregation, window bounds, key tuple and every metric."""
    cfg = aggregation(TUMBLING_1M, group_by=("category",), name="sales")
    (r,) = run_all(cfg, [[{"ts": T0_MS, "category": "toys", "type": "purchase", "price": 4.0, "quantity": 2,
                           "revenue": 8.0, "user_id": "u1", "item_id": "i1"}]])
    assert (r.aggregation, r.key, r.window_end_ms - r.window_start_ms) == ("sales", ("toys",), 60_000)
    assert set(r.metrics) == set(ALL_METRICS)
    assert r.metrics["top_items"] == [{"value": "i1", "count": 1}] and r.metrics["revenue"] == 8.0


@settings(max_examples=100, deadline=None)
@given(rows=rows_10min, window=window_specs(), group_by=group_bys(), cap=st.integers(min_value=1, max_value=6))
def test_columnar_batch_fold_equals_event_at_a_time(rows, window, group_by, cap):
    """Folding a batch at once (grouped by numpy codes, runs and panes) gives the same results as folding
    its events one per batch; with max_keys reached, fixed windows overflow the very same rows."""
    cfg = aggregation(window, group_by=group_by, max_keys=cap)
    whole, single = Aggregator(cfg), Aggregator(cfg)
    overflow_whole: list[int] = []
    whole.add(batch_from_rows(rows), overflow_whole)
    overflow_single: list[int] = []
    for i, row in enumerate(rows):
        lost: list[int] = []
        single.add(batch_from_rows([row]), lost)
        overflow_single += [i] if lost else []
    # Which rows overflow depends on arrival order otherwise (events of one session out of order: one
    # at a time, an event may find every slot taken before the event that would have bridged it came).
    if whole.statistics().overflowed == single.statistics().overflowed == 0:
        assert whole.close(FAR_FUTURE_MS) == single.close(FAR_FUTURE_MS)
        assert as_dict(run_all(aggregation(window, group_by=group_by), [rows])) == reference(
            aggregation(window, group_by=group_by), rows)
    assert len(overflow_whole) == whole.statistics().overflowed
    assert whole.statistics().events_folded + whole.statistics().overflowed == len(rows)
    if window.type != "session":   # a batch places a key's session runs oldest first, not in row order
        assert sorted(overflow_whole) == overflow_single
        assert whole.close(FAR_FUTURE_MS) == single.close(FAR_FUTURE_MS)


@settings(max_examples=100, deadline=None)
@given(rows=st.lists(event_rows(timestamps(span_ms=120_000)), max_size=80), data=st.data())
def test_sessions_with_several_runs_per_key_in_one_batch(rows, data):
    """With a 1 s gap a batch holds several runs per key that extend, bridge and merge open sessions;
    any split still equals the reference, and a restore between batches changes nothing."""
    cfg = aggregation(WindowSpec(type="session", gap_ms=1_000), group_by=("user_id",))
    rows = sorted(rows, key=lambda r: r["ts"])
    pieces = data.draw(splits(rows))
    assert as_dict(run_all(cfg, pieces)) == reference(cfg, rows)
    expected, _ = replay(cfg, pieces, 0)
    got, _ = replay(cfg, pieces, 0, cut=data.draw(st.integers(0, len(pieces))))
    assert got == expected
