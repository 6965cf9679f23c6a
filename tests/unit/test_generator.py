"""The storefront's event generator: determinism, schema, funnel, skew, tastes and labelled incidents."""

from __future__ import annotations

import collections
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.storefront.generator import (
    DEFAULT_START_MS,
    INCIDENT_KINDS,
    AnomalyPlan,
    Generator,
)

EVENT_TYPES = {"view", "cart", "remove_from_cart", "purchase", "search"}
FIELDS = {"event_id", "ts", "type", "user_id", "session_id", "item_id", "category", "price", "quantity"}
MINUTE_MS = 60_000
RUN_MS = 30 * MINUTE_MS


def assert_valid(ev: dict[str, Any]) -> None:
    assert set(ev) <= FIELDS
    assert isinstance(ev["event_id"], str) and 1 <= len(ev["event_id"]) <= 128
    assert type(ev["ts"]) is int
    assert ev["type"] in EVENT_TYPES
    assert isinstance(ev["user_id"], str) and ev["user_id"]
    assert isinstance(ev["session_id"], str) and ev["session_id"].startswith("s" + ev["user_id"][1:] + "-")
    assert isinstance(ev["category"], str)
    if ev["type"] == "search":
        assert "item_id" not in ev
    else:
        assert isinstance(ev["item_id"], str) and ev["item_id"].startswith("i")
    if ev["type"] in ("cart", "purchase"):
        assert isinstance(ev["price"], float) and ev["price"] >= 0
    assert type(ev["quantity"]) is int and ev["quantity"] >= 1


@pytest.fixture(scope="module")
def run30() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    gen = Generator(1, DEFAULT_START_MS, 200.0, anomalies=True)
    return gen.events_until(DEFAULT_START_MS + RUN_MS), gen.labels


@pytest.fixture(scope="module")
def calm() -> list[dict[str, Any]]:
    return Generator(3, DEFAULT_START_MS, 200.0).next_batch(150_000)


def per_minute(events: list[dict[str, Any]], start_ms: int, end_ms: int, **match: str) -> float:
    n = sum(1 for e in events if start_ms <= e["ts"] < end_ms and all(e.get(k) == v for k, v in match.items()))
    return n / ((end_ms - start_ms) / MINUTE_MS)


def test_same_seed_gives_identical_bytes():
    """The same seed, start and rate give byte-identical events."""
    a = Generator(7, 1_234, 500.0, anomalies=True).next_batch(5_000)
    b = Generator(7, 1_234, 500.0, anomalies=True).next_batch(5_000)
    assert orjson.dumps(a) == orjson.dumps(b)


def test_different_seed_gives_different_events():
    """Another seed gives another stream."""
    a = Generator(7, 1_234, 500.0).next_batch(1_000)
    b = Generator(8, 1_234, 500.0).next_batch(1_000)
    assert [e["item_id"] for e in a if "item_id" in e] != [e["item_id"] for e in b if "item_id" in e]


def test_batch_boundaries_do_not_change_the_stream():
    """Pumping by time in small steps yields exactly what one big batch yields."""
    plan = AnomalyPlan(warmup_ms=5_000, gap_ms=(5_000, 8_000), duration_ms=(4_000, 6_000))
    whole = Generator(5, 0, 300.0, anomalies=True, plan=plan).next_batch(20_000)
    gen = Generator(5, 0, 300.0, anomalies=True, plan=plan)
    pieces: list[dict[str, Any]] = []
    t = 0
    while len(pieces) < 20_000:
        t += 37
        pieces.extend(gen.events_until(t, max_events=50))
    assert orjson.dumps(pieces[:20_000]) == orjson.dumps(whole)


def test_events_until_stops_at_the_bound():
    """events_until returns every event up to ts_ms and nothing later."""
    gen = Generator(2, 10_000, 100.0)
    first = gen.events_until(20_000)
    assert first and max(e["ts"] for e in first) <= 20_000
    assert gen.next_batch(1)[0]["ts"] > 20_000


def test_every_event_matches_the_schema(run30):
    """Every event of a 30-minute run with anomalies follows SPEC's event schema."""
    events, _ = run30
    for ev in events:
        assert_valid(ev)
    assert len({e["event_id"] for e in events}) == len(events)


def test_time_order_and_rate(calm):
    """ts never decreases and the mean spacing is 1000/rate ms."""
    ts = [e["ts"] for e in calm]
    assert all(a <= b for a, b in zip(ts, ts[1:]))
    assert (ts[-1] - ts[0]) / len(ts) == pytest.approx(1000 / 200, rel=0.03)


def test_sessions_interleave(calm):
    """Many users are active at once: a hundred consecutive events span dozens of sessions."""
    assert len({e["session_id"] for e in calm[1000:1100]}) > 50


def test_purchases_are_of_carted_items(run30):
    """A purchase is always of an item carted earlier in the same session."""
    events, _ = run30
    carted: dict[str, set[str]] = collections.defaultdict(set)
    for ev in events:
        if ev["type"] == "cart":
            carted[ev["session_id"]].add(ev["item_id"])
        elif ev["type"] == "purchase":
            assert ev["item_id"] in carted[ev["session_id"]]


def test_funnel_narrows_and_carts_are_abandoned(calm):
    """Views > carts > purchases, searches and removals occur, and many carts are abandoned."""
    counts = collections.Counter(e["type"] for e in calm)
    assert counts["view"] > 5 * counts["cart"] > 0
    assert counts["cart"] > 1.5 * counts["purchase"] > 0
    assert counts["search"] > 0 and counts["remove_from_cart"] > 0
    carting = {e["session_id"] for e in calm if e["type"] == "cart"}
    buying = {e["session_id"] for e in calm if e["type"] == "purchase"}
    assert 0.3 < 1 - len(buying) / len(carting) < 0.8


def test_item_popularity_is_skewed(calm):
    """The top 10% of items draw more than 40% of the views."""
    views = collections.Counter(e["item_id"] for e in calm if e["type"] == "view")
    top = sum(n for _, n in views.most_common(200))
    assert top / sum(views.values()) > 0.4


def test_users_keep_their_tastes(calm):
    """A returning user's views stay mostly within their one or two favourite categories."""
    by_user: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for e in calm:
        if e["type"] == "view":
            by_user[e["user_id"]][e["category"]] += 1
    shares = [sum(n for _, n in c.most_common(2)) / sum(c.values()) for c in by_user.values() if sum(c.values()) >= 10]
    assert len(shares) > 500
    assert sum(shares) / len(shares) > 0.8


def test_cooccurrence_beats_popularity(calm):
    """Next-item hit@10 of session co-occurrence is at least twice that of global popularity."""
    sessions: dict[str, list[str]] = collections.defaultdict(list)
    for e in calm:
        if e["type"] == "view":
            sessions[e["session_id"]].append(e["item_id"])
    ordered = [list(dict.fromkeys(items)) for items in sessions.values()]
    split = int(len(ordered) * 0.8)
    co: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    pop: collections.Counter[str] = collections.Counter()
    for items in ordered[:split]:
        pop.update(items)
        for a in items:
            co[a].update(b for b in items if b != a)
    top10 = {i for i, _ in pop.most_common(10)}
    hits_co = hits_pop = total = 0
    for items in ordered[split:]:
        for a, b in zip(items, items[1:]):
            hits_co += b in {i for i, _ in co[a].most_common(10)}
            hits_pop += b in top10
            total += 1
    assert total > 1000
    assert hits_co > 2 * hits_pop


def test_no_incidents_without_anomalies():
    """Without anomalies there are no labels and every user is a regular one."""
    gen = Generator(3, DEFAULT_START_MS, 200.0)
    events = gen.events_until(DEFAULT_START_MS + 10 * MINUTE_MS)
    assert gen.labels == []
    assert max(int(e["user_id"][1:]) for e in events) < 5000


def test_thirty_minutes_hold_ten_labelled_incidents(run30):
    """A 30-minute run at the default rate has at least 10 incidents of every kind, after a 5-minute warm-up."""
    _, labels = run30
    assert len(labels) >= 10
    assert {lab["kind"] for lab in labels} == set(INCIDENT_KINDS)
    for lab in labels:
        assert set(lab) == {"kind", "start_ms", "end_ms", "key"}
        assert lab["start_ms"] >= DEFAULT_START_MS + 5 * MINUTE_MS
        assert 2 * MINUTE_MS <= lab["end_ms"] - lab["start_ms"] <= 3 * MINUTE_MS


def test_flash_sale_multiplies_purchases(run30):
    """Inside a flash sale, purchases in its category run at least 3x their warm-up rate."""
    events, labels = run30
    purchases = [e for e in events if e["type"] == "purchase"]
    sales = [lab for lab in labels if lab["kind"] == "flash_sale" and lab["end_ms"] <= DEFAULT_START_MS + RUN_MS]
    assert sales
    for lab in sales:
        cat = lab["key"]["category"]
        before = per_minute(purchases, DEFAULT_START_MS, DEFAULT_START_MS + 5 * MINUTE_MS, category=cat)
        during = per_minute(purchases, lab["start_ms"], lab["end_ms"], category=cat)
        assert during > 3 * before


def test_checkout_outage_stops_purchases_not_views(run30):
    """During an outage no purchase happens in its category, while its views go on."""
    events, labels = run30
    purchases = [e for e in events if e["type"] == "purchase"]
    views = [e for e in events if e["type"] == "view"]
    outages = [lab for lab in labels if lab["kind"] == "checkout_outage"]
    assert outages
    for lab in outages:
        cat = lab["key"]["category"]
        end = min(lab["end_ms"], DEFAULT_START_MS + RUN_MS)
        assert per_minute(purchases, lab["start_ms"], end, category=cat) == 0
        assert per_minute(views, lab["start_ms"], end, category=cat) > 10


def test_view_bot_hammers_one_item(run30):
    """A view bot views its one item hundreds of times a minute, and only inside its window."""
    events, labels = run30
    bots = [lab for lab in labels if lab["kind"] == "view_bot"]
    assert bots
    by_bot: dict[str, list[dict[str, Any]]] = {lab["key"]["user_id"]: [] for lab in bots}
    for e in events:
        if e["user_id"] in by_bot:
            by_bot[e["user_id"]].append(e)
    for lab in bots:
        mine = by_bot[lab["key"]["user_id"]]
        assert {(e["type"], e["item_id"]) for e in mine} == {("view", lab["key"]["item_id"])}
        assert all(lab["start_ms"] <= e["ts"] < lab["end_ms"] for e in mine)
        end = min(lab["end_ms"], DEFAULT_START_MS + RUN_MS)
        assert per_minute(mine, lab["start_ms"], end) > 200


def test_rate_must_be_positive():
    """A zero rate is refused."""
    with pytest.raises(ValueError):
        Generator(1, 0, 0.0)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**32), rate=st.floats(0.5, 50_000), start_ms=st.integers(0, 2**42))
def test_any_seed_gives_valid_ordered_events(seed, rate, start_ms):
    """Any seed, rate and start give schema-valid events in time order, none before start_ms."""
    plan = AnomalyPlan(warmup_ms=1_000, gap_ms=(500, 900), duration_ms=(400, 800))
    events = Generator(seed, start_ms, rate, anomalies=True, plan=plan).next_batch(400)
    prev = start_ms
    for ev in events:
        assert_valid(ev)
        assert ev["ts"] >= prev
        prev = ev["ts"]
