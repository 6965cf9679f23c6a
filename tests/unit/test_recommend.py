"""Tests for the session co-occurrence recommender (daemon/analyzers/recommend.py)."""

from __future__ import annotations

import time

from daemon.analyzers.recommend import Recommender
from daemon.config import RecommendationsConfig
from daemon.events import EventBatch

T0 = 1_700_000_000_000
CFG = RecommendationsConfig(half_life_s=3600, neighbours_per_item=5, recent_items_per_user=5,
                            user_ttl_s=3600, max_users=100, max_items=1000)


def batch(rows: list[tuple[int, str, str, str, str, str]]) -> EventBatch:
    """(ts, type, user, session, item, category) rows as an EventBatch."""
    b = EventBatch("test")
    for i, (ts, etype, user, session, item, cat) in enumerate(rows):
        b.event_id.append(f"e{i}")
        b.ts.append(ts)
        b.type.append(etype)
        b.user_id.append(user)
        b.session_id.append(session)
        b.item_id.append(item)
        b.category.append(cat)
        b.price.append(1.0)
        b.quantity.append(1)
        b.revenue.append(0.0)
    return b


def shop_history() -> list[tuple[int, str, str, str, str, str]]:
    """Many sessions in which 'lamp' goes with 'bulb', and 'book' with 'pen'."""
    rows = []
    for n in range(20):
        t = T0 + n * 1000
        rows += [(t, "view", f"u{n}", f"s{n}", "lamp", "home"), (t + 1, "cart", f"u{n}", f"s{n}", "bulb", "home"),
                 (t + 2, "view", f"v{n}", f"t{n}", "book", "books"), (t + 3, "view", f"v{n}", f"t{n}", "pen", "books")]
    return rows


def test_neighbours_of_recent_items_rank_first():
    """A user who just viewed a lamp gets the bulb (co-viewed in other sessions) above unrelated items."""
    rec = Recommender(CFG, self_weight=0.0)
    rec.observe(batch(shop_history() + [(T0 + 50_000, "view", "me", "m1", "lamp", "home")]))
    ranked = [item for item, _ in rec.recommend("me", 3, T0 + 60_000)]
    assert ranked[0] == "bulb"
    assert "pen" not in ranked[:1]


def test_cooccurrence_is_within_sessions_only():
    """Items a user touched in different sessions are not linked."""
    rec = Recommender(CFG)
    rec.observe(batch([(T0, "view", "u", "s1", "a", "x"), (T0 + 1, "view", "u", "s2", "b", "x")]))
    assert rec.statistics().links == 0
    rec.observe(batch([(T0 + 2, "view", "u", "s2", "c", "x")]))
    assert rec.statistics().links == 2   # b <-> c


def test_just_bought_items_are_excluded():
    """An item the user purchased within the exclusion window is not recommended back."""
    rec = Recommender(CFG)
    rec.observe(batch(shop_history() + [(T0 + 50_000, "view", "me", "m1", "lamp", "home"),
                                        (T0 + 51_000, "purchase", "me", "m1", "bulb", "home")]))
    assert "bulb" not in [item for item, _ in rec.recommend("me", 10, T0 + 52_000)]


def test_unknown_user_gets_trending_and_short_lists_are_filled_from_the_users_categories():
    """An unknown user gets overall trending; a known user's short list is topped up with their categories' trend."""
    rec = Recommender(CFG)
    rec.observe(batch(shop_history() + [(T0 + 50_000, "view", "me", "m1", "book", "books")]))
    assert len(rec.recommend("stranger", 4, T0 + 60_000)) == 4
    ranked = rec.recommend("me", 4, T0 + 60_000)
    assert [i for i, _ in ranked][:2] in (["book", "pen"], ["pen", "book"])
    assert len(ranked) == 4 and len({i for i, _ in ranked}) == 4
    assert all(a[1] >= b[1] for a, b in zip(ranked, ranked[1:]))


def test_state_is_bounded():
    """Users beyond max_users or idle beyond the TTL are dropped; neighbour lists stay near their bound."""
    rec = Recommender(CFG)
    rows = [(T0 + n, "view", f"u{n}", "s", f"i{n % 40}", "x") for n in range(300)]
    rows += [(T0 + 300 + n, "view", "solo", "s", f"i{n}", "x") for n in range(40)]
    rec.observe(batch(rows))
    stats = rec.statistics()
    assert stats.users <= CFG.max_users and stats.users_dropped > 0
    assert stats.links <= stats.items * 2 * CFG.neighbours_per_item
    rec.observe(batch([(T0 + 2 * 3_600_000, "view", "late", "s", "i1", "x")]))
    assert rec.statistics().users == 1


def test_take_changes_and_restore_items_rebuild_the_same_recommendations():
    """Records from incremental takes (with deletions) rebuild a recommender that answers the same."""
    rec = Recommender(CFG)
    store: dict[bytes, bytes] = {}

    def commit() -> None:
        for key, value in rec.take_changes().items():
            if value is None:
                store.pop(key, None)
            else:
                store[key] = value
    history = shop_history()
    rec.observe(batch(history[:40]))
    commit()
    rec.observe(batch(history[40:] + [(T0 + 50_000, "view", "me", "m1", "lamp", "home")]))
    commit()
    copy = Recommender(CFG)
    copy.restore_items(store.items())
    for user in ("me", "u3", "v7", "nobody"):
        assert copy.recommend(user, 5, T0 + 60_000) == rec.recommend(user, 5, T0 + 60_000)
    again = Recommender(CFG)
    again.restore(rec.snapshot())
    assert again.recommend("me", 5, T0 + 60_000) == rec.recommend("me", 5, T0 + 60_000)


def test_recommend_is_fast():
    """recommend() over a full state (2000 items, full neighbour lists) takes well under 5 ms."""
    cfg = RecommendationsConfig(neighbours_per_item=50, recent_items_per_user=20)
    rec = Recommender(cfg)
    rows = [(T0 + n, "view", f"u{n % 500}", f"s{n % 500}", f"i{(n * 7919) % 2000}", "x") for n in range(60_000)]
    rec.observe(batch(rows))
    t0 = time.perf_counter()
    for u in range(200):
        rec.recommend(f"u{u}", 10, T0 + 60_000)
    assert (time.perf_counter() - t0) / 200 < 0.005
