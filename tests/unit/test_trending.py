"""Tests for decayed popularity per category and overall (daemon/analyzers/trending.py)."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.analyzers.trending import Trending
from daemon.events import EventBatch

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
