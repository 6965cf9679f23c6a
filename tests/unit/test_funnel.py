"""Tests for the in-order funnel metric (daemon/metrics/funnel.py)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.aggconfig import parse_metric
from daemon.metrics.funnel import Funnel

F = Funnel()
events = st.lists(st.tuples(st.sampled_from(["s1", "s2", "s3"]),
                            st.sampled_from(["view", "cart", "purchase", "search"]), st.integers(0, 50)), max_size=40)


def test_counts_sessions_reaching_each_step_in_order():
    """A session counts for a step only if the earlier steps happened before it."""
    state = F.fold(F.empty(), [("a", "view", 1), ("a", "cart", 2), ("a", "purchase", 3),   # full funnel
                               ("b", "cart", 1), ("b", "view", 2),                           # cart before view
                               ("c", "view", 1), ("c", "cart", 5),                           # abandons its cart
                               ("d", "purchase", 1), (None, "view", 1), None])   # no view: reaches nothing
    result = F.result(state)
    assert result["sessions"] == [3, 2, 1]
    assert result["conversion"] == [1.0, 0.666667, 0.5]
    assert result["cart_abandonment"] == 0.5


def test_a_later_step_after_an_early_out_of_order_one_counts():
    """A cart before the first view does not hide a later cart."""
    state = F.fold(F.empty(), [("a", "cart", 1), ("a", "view", 2), ("a", "cart", 3)])
    assert F.result(state)["sessions"] == [1, 1, 0]


def test_configured_steps_come_from_the_spec():
    """funnel(view, purchase) has two steps and no cart abandonment."""
    f = Funnel.from_spec(parse_metric("f", "funnel(view, purchase)"))
    result = f.result(f.fold(f.empty(), [("a", "view", 1), ("a", "purchase", 2)]))
    assert result["sessions"] == [1, 1] and result["cart_abandonment"] is None
    assert f.kind == "json" and f.fields == ("session_id", "type", "ts")


def test_empty_funnel():
    """No sessions: zero counts and zero rates."""
    assert F.result(F.empty()) == {"steps": ["view", "cart", "purchase"], "sessions": [0, 0, 0],
                                   "conversion": [0.0, 0.0, 0.0], "cart_abandonment": 0.0}


@settings(max_examples=200, deadline=None)
@given(events, events, events)
def test_merge_is_associative_commutative_and_matches_one_fold(a, b, c):
    """Folding parts then merging equals folding everything at once, in any grouping and order."""
    fa, fb, fc = (F.fold(F.empty(), x) for x in (a, b, c))
    whole = F.fold(F.empty(), a + b + c)
    left = F.merge(F.merge(fa, fb), fc)
    right = F.merge(fa, F.merge(fc, fb))
    assert F.result(left) == F.result(right) == F.result(whole)
    assert left == right


@settings(max_examples=100, deadline=None)
@given(events)
def test_dump_load_round_trips_and_merge_does_not_mutate(a):
    """load(dump(s)) equals s, and merge leaves its inputs unchanged."""
    s = F.fold(F.empty(), a)
    assert F.load(F.dump(s)) == s
    before = F.dump(s)
    F.merge(s, F.fold(F.empty(), a))
    assert F.dump(s) == before
