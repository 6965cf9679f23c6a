"""Tests for decayed popularity per category and overall (daemon/analyzers/trending.py)."""

from __future__ import annotations

import math

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.analyzers import trending
from daemon.analyzers.trending import Trending
from daemon.events import EventBatch
from tests.native import LOOPS
from tests.native import loop as loop_of

T0 = 1_700_000_000_000


def batch(rows: list[tuple[int, str, str | None, str | None]]) -> EventBatch:
    """(ts, type, item, category) rows as an EventBatch."""
    b = EventBatch("test")
    for i, (ts, etype, item, cat) in enumerate(rows):
        b.event_id.append(f"e{i}")
        b.ts.append(ts)
        b.type.append(etype)
        b.user_id.append("u1")
        b.session_id.append("s1")
        b.item_id.append(item)
        b.category.append(cat)
        b.price.append(1.0)
        b.quantity.append(1)
        b.revenue.append(0.0)
    return b


def test_top_ranks_by_weighted_count_per_category_and_overall():
    """Purchases weigh more than views; a category only ranks its own items; None ranks all."""
    tr = Trending(3600)
    tr.observe(batch([(T0, "view", "a", "books")] * 4 + [(T0, "purchase", "b", "books"), (T0, "view", "c", "toys"),
                      (T0, "search", None, "toys"), (T0, "remove_from_cart", "c", "toys")]))
    assert [i for i, _ in tr.top("books", 10, T0)] == ["b", "a"]
    assert [i for i, _ in tr.top("toys", 10, T0)] == ["c"]
    assert [i for i, _ in tr.top(None, 2, T0)] == ["b", "a"]
    assert tr.top("books", 10, T0)[0][1] == 5.0


def test_score_halves_every_half_life():
    """A score read one half-life later is half as large, and old events lose to new ones."""
    tr = Trending(60)
    tr.observe(batch([(T0, "view", "old", "x")] * 3))
    assert math.isclose(tr.top("x", 1, T0 + 60_000)[0][1], 1.5)
    tr.observe(batch([(T0 + 120_000, "view", "new", "x")]))
    assert [i for i, _ in tr.top("x", 2, T0 + 120_000)] == ["new", "old"]


def test_state_is_bounded_per_category():
    """A category keeps at most twice max_items, and the strongest items survive pruning."""
    tr = Trending(3600, max_items=10)
    tr.observe(batch([(T0, "purchase", "star", "x")] + [(T0, "view", f"i{n}", "x") for n in range(100)]))
    assert tr.statistics().items <= 20
    assert tr.top("x", 1, T0)[0][0] == "star"


def test_take_changes_then_restore_items_gives_the_same_answers():
    """Incremental records rebuild an equivalent state; a second take only carries what changed."""
    tr = Trending(600)
    tr.observe(batch([(T0, "view", "a", "x"), (T0 + 5, "cart", "b", "y")]))
    store = dict(tr.take_changes())
    tr.observe(batch([(T0 + 10, "purchase", "c", "y")]))
    changes = tr.take_changes()
    assert b"t:x" not in changes and b"t:y" in changes
    store.update(changes)
    copy = Trending(600)
    copy.restore_items(store.items())
    for cat in (None, "x", "y"):
        assert copy.top(cat, 5, T0 + 100) == tr.top(cat, 5, T0 + 100)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 10**7), st.sampled_from(["view", "cart", "purchase"]),
                          st.sampled_from("abcdef"), st.sampled_from(["x", "y"])), min_size=1, max_size=60))
def test_snapshot_round_trip_and_order_independence(rows):
    """Observing the same events in any order, or via snapshot/restore, gives the same ranking."""
    a, b = Trending(300), Trending(300)
    a.observe(batch(rows))
    b.observe(batch(sorted(rows)))
    c = Trending(300)
    c.restore(a.snapshot())
    now = T0 + 10**7
    for cat in (None, "x", "y"):
        ra = dict(a.top(cat, 6, now))
        for other in (b, c):
            ro = dict(other.top(cat, 6, now))
            assert ra.keys() == ro.keys() or sorted(ra.values()) == sorted(ro.values())
            for item in ra.keys() & ro.keys():
                assert math.isclose(ra[item], ro[item], rel_tol=1e-9)


ROWS = st.lists(st.tuples(
    # ~1.5 h of half-lives per step at most: a 1 s half-life past 500 of them rebases the scores
    st.integers(0, 5_400_000), st.sampled_from(["view", "cart", "purchase", "search", "remove_from_cart", "odd"]),
    st.one_of(st.none(), st.sampled_from(["a", "b", "c", "é", ""])), st.one_of(st.none(), st.sampled_from(["x", "y", ""]))),
    min_size=0, max_size=50)


@pytest.mark.parametrize("loop", LOOPS)
@settings(max_examples=150, deadline=None)
@given(batches=st.lists(ROWS, min_size=1, max_size=5), half_life_s=st.sampled_from([1.0, 7.5, 3600.0]),
       max_items=st.integers(1, 4), weights=st.sampled_from([None, {"view": 2, "cart": 0.5, "odd": 0.0}]))
def test_the_compiled_loop_folds_exactly_as_the_pure_one(loop, batches, half_life_s, max_items, weights):
    """Either loop, the same stream (unknown and zero-weight types, missing items and categories,
    rebases, int weights, pruning): bit-for-bit equal scores, reference, events and records."""
    a = Trending(half_life_s, max_items=max_items, weights=weights)
    b = Trending(half_life_s, max_items=max_items, weights=weights)
    ts = T0
    for rows in batches:
        rows = [(ts + dt, etype, item, cat) for dt, etype, item, cat in rows]
        ts = max([ts] + [r[0] for r in rows])
        with loop_of(trending, loop):
            a.observe(batch(rows))
        with loop_of(trending, "python"):
            b.observe(batch(rows))
        assert orjson.dumps(a._scores, option=orjson.OPT_NON_STR_KEYS) == orjson.dumps(b._scores, option=orjson.OPT_NON_STR_KEYS)
        assert (a._ref_ms, a._events, a._dirty) == (b._ref_ms, b._events, b._dirty)
        assert a.take_changes() == b.take_changes()
        for cat in (None, "x", "y", ""):
            assert a.top(cat, 3, ts) == b.top(cat, 3, ts)
