"""Tests for the session co-occurrence recommender (daemon/analyzers/recommend.py)."""

from __future__ import annotations

import heapq
import math
import time

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.analyzers import recommend
from daemon.analyzers.recommend import Recommender, new_user
from daemon.analyzers.recusers import from_record, is_dirty, to_record
from daemon.analyzers.trending import Trending
from daemon.config import RecommendationsConfig
from daemon.events import EventBatch
from tests.native import LOOPS
from tests.native import loop as loop_of
from tests.strategies import USERS, event_batches, timestamps

T0 = 1_700_000_000_000
CFG = RecommendationsConfig(half_life_s=3600, neighbours_per_item=5, recent_items_per_user=5,
                            user_ttl_s=3600, max_users=100, max_items=1000)


def batch(rows: list[tuple[int, str, str, str | None, str | None, str | None]]) -> EventBatch:
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


def apply_changes(store: dict[bytes, bytes], changes: dict[bytes, bytes | None]) -> None:
    """What a commit does with take_changes: put each record, delete those that are None."""
    for key, value in changes.items():
        if value is None:
            store.pop(key, None)
        else:
            store[key] = value


def test_take_changes_and_restore_items_rebuild_the_same_recommendations():
    """Records from incremental takes (with deletions) rebuild a recommender that answers the same."""
    rec = Recommender(CFG)
    store: dict[bytes, bytes] = {}

    def commit() -> None:
        apply_changes(store, rec.take_changes())
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


# -- the fold against a plain per-event reference ---------------------------------------------------

def reference_trending(tr: Trending, batch: EventBatch) -> None:
    """Trending.observe as first written: per-batch sums keyed by (category, item), a growth per event."""
    sums: dict[tuple[str | None, str], float] = {}

    def flush() -> None:
        touched = set()
        for (cat, item), g in sums.items():
            scores = tr._scores.setdefault(cat, {})
            scores[item] = scores.get(item, 0.0) + g
            touched.add(cat)
        sums.clear()
        for cat in touched:
            tr._settle(cat)

    for etype, item, cat, ts in zip(batch.type, batch.item_id, batch.category, batch.ts):
        w = tr.weights.get(etype)
        if not w or item is None:
            continue
        if tr._ref_ms is None or (ts - tr._ref_ms) / tr.half_life_ms > 500.0:
            flush()
            g = tr.growth(ts) * w
        else:
            g = 2.0 ** ((ts - tr._ref_ms) / tr.half_life_ms) * w
        tr._events += 1
        for key in [(None, item)] + ([(cat, item)] if cat is not None else []):
            sums[key] = sums.get(key, 0.0) + g
    flush()


def reference_prune(rec: Recommender, item: str) -> None:
    """_prune as first written, with heapq.nlargest."""
    rec._nbrs[item] = dict(heapq.nlargest(rec.cfg.neighbours_per_item, rec._nbrs[item].items(),
                                          key=lambda kv: kv[1]))


def unpack_user(u: list) -> tuple[dict, dict]:
    """A user's (recent, cats) as the dicts they were before users became flat lists (new_user's layout):
    item -> (ts_ms, weight, session) oldest first, and category -> weight in insertion order."""
    start = u[3]
    cats = {u[k]: u[k + 1] for k in range(4, start, 2)}
    recent = {u[k]: (u[k + 1], u[k + 2], u[k + 3]) for k in range(start, len(u), 4)}
    assert len(cats) * 2 == start - 4 and len(recent) * 4 == len(u) - start   # no name twice
    return recent, cats


def pack_user(u: list, recent: dict, cats: dict) -> None:
    """Write those dicts back into the user's list."""
    u[3:] = [4 + 2 * len(cats)]
    for cat, w in cats.items():
        u += [cat, w]
    for item, (ts, w, session) in recent.items():
        u += [item, ts, w, session]


def reference_observe(rec: Recommender, batch: EventBatch) -> None:
    """The fold as the module docstring states it, one event at a time, nothing shared across events,
    on a user's recent items and categories as dicts."""
    reference_trending(rec.trending, batch)
    limit = 2 * rec.cfg.neighbours_per_item
    for etype, user_id, session, item, cat, ts in zip(batch.type, batch.user_id, batch.session_id,
                                                     batch.item_id, batch.category, batch.ts):
        w = rec.weights.get(etype)
        if not w or item is None:
            continue
        rec._events += 1
        if rec._ref_ms is None or (ts - rec._ref_ms) / rec.half_life_ms > 500.0:
            g = rec._growth(ts)
        else:
            g = 2.0 ** ((ts - rec._ref_ms) / rec.half_life_ms)
        rec._count[item] = rec._count.pop(item, 0.0) + w * g
        if cat is not None:
            rec._cat[item] = cat
        rec._dirty_items.add(item)
        u = rec._users.pop(user_id, None) or new_user(ts, False)
        rec._users[user_id] = u
        u[0] = max(u[0], ts)
        if not u[1]:   # the changed users are the last _dirty_user_count of _users (Recommender.__init__)
            u[1] = True
            rec._dirty_user_count += 1
        recent, cats = unpack_user(u)
        if session is not None:
            earlier = [(other, e[1]) for other, e in reversed(recent.items()) if e[2] == session and other != item]
            for other, w_other in earlier[:rec.max_pairs]:
                c = math.sqrt(w * w_other) * g
                mine, theirs = rec._nbrs.setdefault(item, {}), rec._nbrs.setdefault(other, {})
                mine[other] = mine.get(other, 0.0) + c
                theirs[item] = theirs.get(item, 0.0) + c
                rec._dirty_items.add(other)
                if len(theirs) > limit:
                    reference_prune(rec, other)
                if len(mine) > limit:
                    reference_prune(rec, item)
        before = recent.pop(item, None)
        if before is not None and before[2] == session:
            w = max(w, before[1])
        recent[item] = (ts, w, session)
        if len(recent) > rec.cfg.recent_items_per_user:
            del recent[next(iter(recent))]
        if etype == "purchase":
            u[2] = u[2] or {}
            u[2][item] = ts
            if len(u[2]) > rec.cfg.recent_items_per_user:
                del u[2][min(u[2], key=u[2].__getitem__)]
        if cat is not None:
            cats[cat] = cats.get(cat, 0.0) + w * g
            if len(cats) > 4:
                del cats[min(cats, key=cats.__getitem__)]
        pack_user(u, recent, cats)
        if len(rec._count) > rec.cfg.max_items:
            rec._drop_item(next(iter(rec._count)))
    if batch.ts:
        rec._expire(max(batch.ts))


SMALL_CONFIGS = st.builds(
    RecommendationsConfig, half_life_s=st.sampled_from([0.5, 60.0, 3600.0]),
    neighbours_per_item=st.sampled_from([1, 2, 50]), recent_items_per_user=st.sampled_from([1, 3, 20]),
    user_ttl_s=st.sampled_from([60.0, 7 * 86400.0]), max_users=st.sampled_from([2, 100]),
    max_items=st.sampled_from([4, 1000, 1000]))
# Few distinct timestamps (as in a real batch) mixed with spread ones (rebases at the short half-lives).
BATCH_TS = st.sampled_from([T0, T0 + 1, T0 + 400_000, T0 + 3_599_999]) | timestamps()


@st.composite
def dense_rows(draw: st.DrawFn) -> tuple[int, str, str, str | None, str | None, str | None]:
    """(ts, type, user, session, item, category): few users, sessions and items, so events pair often."""
    etype = draw(st.sampled_from(["view", "view", "view", "cart", "purchase", "remove_from_cart", "search"]))
    return (draw(BATCH_TS), etype, draw(st.sampled_from(["u1", "u2", "u3"])),
            draw(st.sampled_from(["s1", "s1", "s2", None])),
            None if etype == "search" else draw(st.sampled_from([f"i{n}" for n in range(8)])),
            draw(st.sampled_from(["books", "toys", "games", "garden", "tools", None])))


DENSE_BATCHES = st.lists(dense_rows(), min_size=5, max_size=80).map(batch)


@pytest.mark.parametrize("loop", LOOPS)
@settings(max_examples=300, deadline=None)
@given(cfg=SMALL_CONFIGS,
       batches=st.lists(DENSE_BATCHES | event_batches(max_size=40, ts=BATCH_TS), min_size=1, max_size=4))
def test_observe_equals_the_per_event_reference(loop, cfg, batches):
    """observe, compiled or not, leaves exactly the state (floats, orders, changes, deletions) a plain
    per-event fold leaves."""
    rec, ref = Recommender(cfg), Recommender(cfg)
    for b in batches:
        with loop_of(recommend, loop):
            rec.observe(b)
        reference_observe(ref, b)
        assert rec.take_changes() == ref.take_changes()
    assert rec.snapshot() == ref.snapshot()
    assert list(rec._users) == list(ref._users) and list(rec._count) == list(ref._count)
    assert rec._names.keys() == rec._count.keys()   # the name table is bounded by the items kept
    assert rec.statistics() == ref.statistics() and rec.trending.statistics() == ref.trending.statistics()
    now = max(max(b.ts, default=T0) for b in batches)
    for user in ["nobody", "u1", "u2", "u3", *USERS]:
        assert rec.recommend(user, 5, now) == ref.recommend(user, 5, now)
    copy = Recommender(cfg)
    copy.restore(rec.snapshot())
    assert sorted(orjson.loads(copy.snapshot())) == sorted(orjson.loads(rec.snapshot()))
    assert copy._names.keys() == copy._count.keys()
    # restore rebuilds the same values (users' flat lists field for field, dirty flags clear as after a take;
    # the orders of users and items are restore's own: by last_ms, and the weakest item first)
    assert copy._users == rec._users and copy._count == rec._count
    # (links of an evicted item that a later pair re-made are not in the records: kept items only)
    assert copy._nbrs == {item: nb for item, nb in rec._nbrs.items() if item in rec._count}
    assert copy._cat == rec._cat and copy._ref_ms == rec._ref_ms


@settings(max_examples=300, deadline=None)
@given(cfg=SMALL_CONFIGS,
       batches=st.lists(DENSE_BATCHES | event_batches(max_size=40, ts=BATCH_TS), min_size=1, max_size=6),
       takes=st.lists(st.booleans(), min_size=6, max_size=6))
def test_take_dirty_names_exactly_the_users_touched_since_the_last_take(cfg, batches, takes):
    """take_dirty's users are those an event touched since the previous take and still kept (all after a rebase)."""
    rec = Recommender(cfg)
    touched: set[str] = set()
    for b, take in zip(batches, takes):
        ref = rec._ref_ms
        rec.observe(b)
        touched.update(u for u, t, i in zip(b.user_id, b.type, b.item_id) if rec.weights.get(t) and i is not None)
        if ref is not None and rec._ref_ms != ref:   # a rebase rewrote every user's categories
            touched.update(rec._users)
        if take:
            users = rec.take_dirty()[2]
            assert len(users) == len(set(users)) and set(users) == touched & rec._users.keys()
            touched = set()


@settings(max_examples=200, deadline=None)
@given(cfg=SMALL_CONFIGS,
       batches=st.lists(DENSE_BATCHES | event_batches(max_size=40, ts=BATCH_TS), min_size=1, max_size=6),
       takes=st.lists(st.booleans(), min_size=6, max_size=6))
def test_incremental_changes_add_up_to_the_records_and_restore_the_same_values(cfg, batches, takes):
    """take_changes after any of the batches, applied in order, store exactly the full records; restoring
    them rebuilds every kept user's flat list and item's values (the commit path of the process)."""
    rec = Recommender(cfg)
    store: dict[bytes, bytes] = {}

    def commit() -> None:
        apply_changes(store, rec.take_changes())
    for b, take in zip(batches, takes):
        rec.observe(b)
        if take:
            commit()
    commit()
    assert store == {**rec.records(rec._count, rec._users), **rec.trending.records()}
    copy = Recommender(cfg)
    copy.restore_items(store.items())
    assert copy._users == rec._users and copy._count == rec._count and copy._cat == rec._cat
    assert copy.take_changes() == {b"r#": store[b"r#"], **copy.trending.records([])}   # restored: nothing dirty


def format_1_record(u: list) -> bytes:
    """A user's record as stores before format 2 held it: [last_ms, [[item, ts_ms, weight, session], ...],
    bought, cats] (the encoder recusers.py had then)."""
    start = u[3]
    recent = [u[k:k + 4] for k in range(start, len(u), 4)]
    return orjson.dumps([u[0], recent, u[2] or {}, dict(zip(u[4:start:2], u[5:start:2]))])


SESSIONS = st.one_of(st.none(), st.sampled_from(["s1", "s2", "", "0", "null"]))
FLOATS = st.floats(allow_nan=False, allow_infinity=False)


@st.composite
def users(draw) -> list:
    """A user's flat list as observe keeps it (recusers.new_user), any categories and recent items."""
    last = draw(st.integers(min_value=0, max_value=2**53))
    cats = draw(st.lists(st.tuples(st.text(max_size=4), FLOATS), max_size=4, unique_by=lambda c: c[0]))
    recent = draw(st.lists(st.tuples(st.text(max_size=4), st.integers(min_value=0, max_value=last), FLOATS, SESSIONS),
                           max_size=6, unique_by=lambda r: r[0]))
    bought = draw(st.one_of(st.none(), st.dictionaries(st.text(max_size=3), st.integers(0, last), min_size=1, max_size=3)))
    u = [last, draw(st.booleans()), bought, 4 + 2 * len(cats)]
    for c in cats:
        u += c
    for r in recent:
        u += r
    return u


@settings(max_examples=300, deadline=None)
@given(u=users())
def test_a_user_record_reads_back_as_the_same_list_in_either_format(u):
    """to_record/from_record round-trip every field exactly (ints, floats, sessions equal to the previous
    one or not, null sessions, no bought), whatever the dirty flag; a format-1 record reads as the same."""
    record = to_record(u)
    assert from_record(record, {}, {}, u[1]) == u
    assert from_record(format_1_record(u), {}, {}, u[1]) == u
    assert orjson.loads(record)[0] == u[0]   # record_last_ms reads the first element in both
    names = {item: item for item in u[u[3]::4]}
    v = from_record(record, names, {})
    assert all(v[k] is names[v[k]] for k in range(u[3], len(v), 4))   # items share the process's str objects


def test_format_2_records_are_smaller_for_the_same_user():
    """The benchmark's two-event user: 143 bytes in format 1, 111 in format 2."""
    u = [1_795_799_820_000, False, None, 8, "electronics", 1.2345678, "beauty", 0.987654321,
         "w31658", 1_795_799_819_000, 1.0, "sess-1", "w39577", 1_795_799_820_000, 3.0, "sess-1"]
    assert (len(format_1_record(u)), len(to_record(u))) == (143, 111)


@settings(max_examples=100, deadline=None)
@given(cfg=SMALL_CONFIGS,
       batches=st.lists(DENSE_BATCHES | event_batches(max_size=40, ts=BATCH_TS), min_size=1, max_size=4))
def test_a_store_of_format_1_user_records_restores_the_same_recommender(cfg, batches):
    """Records a store wrote before format 2 restore the same users, answers and next records."""
    rec = Recommender(cfg)
    for b in batches:
        rec.observe(b)
    store: dict[bytes, bytes] = {}
    apply_changes(store, rec.take_changes())   # every user clean, as restored ones are
    old = {k: format_1_record(from_record(v, {}, {})) if k.startswith(b"u:") else v for k, v in store.items()}
    assert old != store or not rec._users
    a, b = Recommender(cfg), Recommender(cfg)
    a.restore_items(store.items())
    b.restore_items(old.items())
    assert a._users == b._users == {u: v if type(v) is list else from_record(v, {}, {}) for u, v in rec._users.items()}
    now = max((max(x.ts, default=T0) for x in batches), default=T0)
    for user in ["nobody", *USERS]:
        assert a.recommend(user, 5, now) == b.recommend(user, 5, now)
    assert a.records(a._count, a._users) == b.records(b._count, b._users) == rec.records(rec._count, rec._users)


@pytest.mark.parametrize("loop", LOOPS)
@settings(max_examples=200, deadline=None)
@given(cfg=SMALL_CONFIGS,
       batches=st.lists(DENSE_BATCHES | event_batches(max_size=40, ts=BATCH_TS), min_size=1, max_size=6),
       packs=st.lists(st.one_of(st.none(), st.tuples(st.integers(min_value=0, max_value=4), st.booleans())),
                      min_size=6, max_size=6))
def test_packing_idle_users_changes_no_answer_record_or_state(loop, cfg, batches, packs):
    """Users kept as their records beyond the `hot` most recent (`pack`: clean ones after a take, as
    the process does after an answer, or changed ones while it folds) fold, expire, rebase, answer and
    store exactly as the twin that never packs (each loop, compiled or not, against the pure one)."""
    rec, twin = Recommender(cfg), Recommender(cfg)

    def pack(hot: int) -> None:
        idle = rec.idle_users(hot)
        beyond = list(rec._users)[:max(0, len(rec._users) - hot)]
        assert idle == [u for u in beyond if type(rec._users[u]) is list]
        changed = {u for u in beyond if is_dirty(rec._users[u])}
        assert rec.pack(idle) == len(idle)
        assert all(type(rec._users[u]) in (bytes, bytearray) for u in beyond)
        assert {u for u in beyond if type(rec._users[u]) is bytearray} == changed   # still due in the take

    now = T0
    for b, packing in zip(batches, packs):
        with loop_of(recommend, loop):
            rec.observe(b)
        with loop_of(recommend, "python"):
            twin.observe(b)
        if packing is not None and not packing[1]:
            pack(packing[0])
        assert rec._dirty_user_count == twin._dirty_user_count
        assert rec.take_changes() == twin.take_changes()
        assert not any(type(v) is bytearray for v in rec._users.values())
        if packing is not None and packing[1]:
            pack(packing[0])
        now = max(now, max(b.ts, default=T0))
        for user in ["nobody", "u1", "u2", "u3", *USERS]:
            assert rec.recommend(user, 5, now) == twin.recommend(user, 5, now)
        assert list(rec._users) == list(twin._users) and rec.statistics() == twin.statistics()
    assert rec.snapshot() == twin.snapshot()
    assert rec.take_changes() == twin.take_changes()
    names, cats = rec._names, rec._cat_names
    assert {u: v if type(v) is list else from_record(v, names, cats) for u, v in rec._users.items()} == twin._users


def test_a_changed_user_kept_packed_is_taken_once_and_clean_after():
    """A user packed while changed (a bytearray) and touched again counts once among the changed."""
    rec = Recommender(CFG)
    rec.observe(batch(shop_history()))
    assert rec.pack(rec.idle_users(0)) == len(rec._users) > 0
    assert {type(v) for v in rec._users.values()} == {bytearray}
    changed = rec._dirty_user_count
    rec.observe(batch([(T0 + 60_000, "view", "u3", "s3", "pen", "books")]))
    assert rec._dirty_user_count == changed and type(rec._users["u3"]) is list
    _, _, users, _ = rec.take_dirty()
    assert sorted(users) == sorted(rec._users) and len(users) == changed
    assert {type(v) for u, v in rec._users.items() if u != "u3"} == {bytes}
    assert rec.take_dirty()[2] == []


def test_a_packed_user_is_a_list_again_once_an_event_touches_it():
    rec = Recommender(CFG)
    rec.observe(batch(shop_history()))
    rec.take_dirty()
    assert rec.pack(rec.idle_users(0)) == len(rec._users) > 0
    before = rec.recommend("u3", 3, T0 + 60_000)
    rec.observe(batch([(T0 + 60_000, "view", "u3", "s3", "pen", "books")]))
    assert type(rec._users["u3"]) is list and rec._users["u3"][1] is True    # dirty: in the next answer
    assert type(rec._users["u4"]) is bytes
    assert rec.take_dirty()[2] == ["u3"]
    assert rec.recommend("u3", 3, T0 + 60_000) != before or before


def fresh(name: str) -> str:
    """An equal str that is a new object (as every decoded event's strings are)."""
    return "".join(list(name))


def test_item_category_and_session_strings_are_shared_after_observe_and_restore():
    """State keys each item and category by one str object, and a user's session by one, restored or not."""
    rows = [(T0 + n, "view", user, fresh("s1"), fresh(item), fresh("home"))
            for n, (user, item) in enumerate([("a", "lamp"), ("a", "bulb"), ("b", "lamp"), ("b", "bulb")])]
    rec = Recommender(CFG)
    rec.observe(batch(rows))
    copy = Recommender(CFG)
    copy.restore(rec.snapshot())
    for r in (rec, copy):
        lamp = next(k for k in r._count if k == "lamp")
        (a_recent, a_cats), (b_recent, b_cats) = unpack_user(r._users["a"]), unpack_user(r._users["b"])
        assert all(next(k for k in d if k == "lamp") is lamp
                   for d in (a_recent, b_recent, r._nbrs["bulb"], r._cat))
        assert next(iter(a_cats)) is next(iter(b_cats)) is r._cat["lamp"]
        assert a_recent["lamp"][2] is a_recent["bulb"][2]
