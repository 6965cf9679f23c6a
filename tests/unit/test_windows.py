"""Window assignment (tumbling, hopping), sessions, the where filter and the WINDOWS registry."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.aggconfig import WindowSpec
from daemon.windows import WINDOWS, Window, build_windower
from daemon.windows.fixed import Hopping, Tumbling
from daemon.windows.session import Session, SessionStore, sessionize
from daemon.windows.where import compile_where
from tests.strategies import CATEGORIES, batch_from_rows, event_batches, fixed_window_specs, timestamps

any_ts = st.integers(min_value=-10**13, max_value=10**13)


@settings(max_examples=200, deadline=None)
@given(ts=any_ts, spec=fixed_window_specs())
def test_event_lands_in_exactly_the_windows_containing_it(ts, spec):
    """assign(ts) gives every epoch-aligned window that contains ts, and only those: size/slide of them."""
    w = build_windower(spec)
    windows = w.assign(ts)
    assert len(windows) == spec.size_ms // spec.slide_ms
    assert all(win.contains(ts) and win.start_ms % spec.slide_ms == 0 for win in windows)
    assert all(win.end_ms - win.start_ms == spec.size_ms for win in windows)
    # No other aligned start nearby contains ts.
    lo = ts - ts % spec.slide_ms - 2 * spec.size_ms
    others = {Window(s, s + spec.size_ms) for s in range(lo, ts + 1, spec.slide_ms)} - set(windows)
    assert not any(win.contains(ts) for win in others)
    assert windows == sorted(windows)


@settings(max_examples=200, deadline=None)
@given(ts=any_ts, size=st.sampled_from((1_000, 60_000, 3_600_000)))
def test_tumbling_gives_exactly_one_window(ts, size):
    """A tumbling window is a hopping window with slide = size: exactly one per event."""
    (win,) = Tumbling(size, size).assign(ts)
    assert win.start_ms <= ts < win.end_ms and win.start_ms % size == 0


@settings(max_examples=100, deadline=None)
@given(ts=st.lists(any_ts, max_size=30), spec=fixed_window_specs())
def test_bulk_latest_starts_match_assign(ts, spec):
    """latest_starts (the hot path) and windows_from_latest agree with per-event assign."""
    w = build_windower(spec)
    latest = w.latest_starts(ts)
    assert [w.windows_from_latest(s) for s in latest] == [w.assign(t) for t in ts]


def test_registry_and_builders():
    """WINDOWS maps each window type to its windower; tumbling uses slide = size."""
    assert set(WINDOWS) == {"tumbling", "hopping", "session"}
    assert build_windower(WindowSpec(type="tumbling", size_ms=60_000, slide_ms=0)) == Tumbling(60_000, 60_000)
    assert build_windower(WindowSpec(type="hopping", size_ms=300_000, slide_ms=60_000)) == Hopping(300_000, 60_000)
    assert build_windower(WindowSpec(type="session", gap_ms=5_000)) == Session(5_000)
    with pytest.raises(ValueError):
        Hopping(300_000, 70_000)
    with pytest.raises(ValueError):
        build_windower(WindowSpec(type="sliding", size_ms=1))


def test_hopping_example():
    """A 5m/1m hopping window holds an event at 12:03:30 in the five windows starting 11:59..12:03."""
    minute = 60_000
    ts = 12 * 60 * minute + 3 * minute + 30_000
    starts = [w.start_ms // minute - 12 * 60 for w in Hopping(5 * minute, minute).assign(ts)]
    assert starts == [-1, 0, 1, 2, 3]


@settings(max_examples=200, deadline=None)
@given(ts=st.lists(timestamps(span_ms=600_000), max_size=40), gap=st.sampled_from((1, 1_000, 30_000)))
def test_sessions_respect_the_gap(ts, gap):
    """Each event is in one session; events of a session are < gap apart; sessions are >= gap apart."""
    sessions = sessionize(ts, gap)
    for t in ts:
        assert sum(s.contains(t) for s in sessions) == 1
    for s in sessions:
        inside = sorted(t for t in ts if s.contains(t))
        assert inside[0] == s.start_ms and inside[-1] + gap == s.end_ms
        assert all(b - a < gap for a, b in zip(inside, inside[1:]))
    for a, b in zip(sessions, sessions[1:]):
        last_of_a = max(t for t in ts if a.contains(t))
        assert b.start_ms - last_of_a >= gap and b.start_ms >= a.end_ms


def _count_store(gap: int) -> SessionStore:
    return SessionStore(Session(gap), lambda: [0], lambda a, b: [a[0] + b[0]])


def _bump(store: SessionStore, slot: int | None) -> None:
    """Count one event in the session at `slot` (the store keeps states in columns)."""
    assert slot is not None
    store.columns[0][slot] += 1


@settings(max_examples=200, deadline=None)
@given(ts=st.lists(timestamps(span_ms=300_000), max_size=40), gap=st.sampled_from((1_000, 30_000)),
       rng=st.randoms(use_true_random=False))
def test_session_store_matches_reference_in_any_arrival_order(ts, gap, rng):
    """Adding events one by one in any order (extending backwards, bridging, merging) yields the
    reference sessions with every event counted once."""
    store = _count_store(gap)
    order = list(ts)
    rng.shuffle(order)
    for t in order:
        _bump(store, store.place("k", t, t, may_open=True))
    got = [(Window(f, l + gap), st_[0]) for f, l, st_ in store.sessions_of("k")]
    expected = [(w, sum(w.contains(t) for t in ts)) for w in sessionize(ts, gap)]
    assert got == expected
    assert store.n_states == len(expected)


@settings(max_examples=200, deadline=None)
@given(ts=st.lists(st.integers(0, 200), min_size=1, max_size=40), gap=st.sampled_from((5, 20)),
       keys=st.lists(st.sampled_from("abc"), min_size=40, max_size=40), closes=st.lists(st.integers(0, 260), max_size=30))
def test_session_store_closes_each_session_once_at_its_final_end(ts, gap, keys, closes):
    """Sessions that grow and merge after they opened (the end heap holds stale, early entries) are
    closed exactly once, at their real end, never before the watermark passes it; nothing is lost."""
    store = _count_store(gap)
    marks = iter(sorted(closes))
    mark = next(marks, None)
    closed, placed = [], 0
    for t, key in zip(sorted(ts), keys):
        while mark is not None and mark < t - gap:   # only close what this event cannot touch
            now = store.close(mark)
            assert all(end <= mark for _, end, _, _ in now), "closed before the watermark passed its end"
            closed += now
            mark = next(marks, None)
        _bump(store, store.place(key, t, t, may_open=True))
        placed += 1
    closed += store.close(10**6)
    assert store.n_states == 0 and not store.n_keys
    assert sum(states[0] for _, _, _, states in closed) == placed
    per_key: dict[str, list[tuple[int, int]]] = {}
    for start, end, key, _ in closed:
        per_key.setdefault(key, []).append((start, end))
    for key, spans in per_key.items():
        mine = [t for t, k in zip(sorted(ts), keys) if k == key]
        assert sorted(spans) == [(w.start_ms, w.end_ms) for w in sessionize(mine, gap)]


def test_session_bridging_event_merges_two_sessions():
    """An event within gap of two sessions merges them into one."""
    store = _count_store(10)
    _bump(store, store.place("k", 0, 0, may_open=True))
    _bump(store, store.place("k", 15, 15, may_open=True))
    assert store.n_states == 2
    _bump(store, store.place("k", 7, 7, may_open=True))
    assert [(f, l, s) for f, l, s in store.sessions_of("k")] == [(0, 15, [3])]
    assert store.close(24) == []
    assert store.close(25) == [(0, 25, "k", (3,))]
    assert store.n_states == 0 and not store.n_keys


def test_session_store_refuses_to_open_when_not_allowed():
    """place returns None instead of opening a new session when may_open is False, but still extends."""
    store = _count_store(10)
    assert store.place("k", 0, 0, may_open=False) is None
    store.place("k", 0, 0, may_open=True)
    slot = store.place("k", 5, 5, may_open=False)
    assert slot is not None and store.states(slot) == [0]
    assert store.place("k", 100, 100, may_open=False) is None


@settings(max_examples=100, deadline=None)
@given(batch=event_batches(max_size=40),
       types=st.sets(st.sampled_from(("view", "cart", "purchase", "search")), min_size=1),
       cats=st.none() | st.sets(st.sampled_from(CATEGORIES), min_size=1))
def test_where_keeps_rows_matching_every_condition(batch, types, cats):
    """compile_where keeps exactly the rows whose fields are among the listed values (AND of fields)."""
    where = [("type", tuple(types))] + ([("category", tuple(cats))] if cats else [])
    rows = compile_where(where)(batch)
    expected = [i for i, r in enumerate(batch.rows())
                if r["type"] in types and (cats is None or r["category"] in cats)]
    assert rows == expected


def test_where_without_conditions_keeps_everything():
    """An empty where keeps every row."""
    batch = batch_from_rows([{"ts": 1, "type": "view"}, {"ts": 2, "type": "cart"}])
    assert compile_where(())(batch) == [0, 1]
    with pytest.raises(ValueError):
        compile_where((("colour", ("red",)),))


@settings(max_examples=150, deadline=None)
@given(first=st.lists(st.tuples(st.sampled_from("abcd"), st.integers(0, 300)), max_size=20),
       runs=st.lists(st.tuples(st.integers(0, 300), st.integers(0, 40)), min_size=4, max_size=4),
       gap=st.sampled_from((5, 30)))
def test_extend_touching_equals_placing_each_run(first, runs, gap):
    """extend_touching (a batch's one-session keys extended with array operations) leaves the same
    sessions as `place` of each run; the runs it skips are exactly those `place` must decide."""
    import numpy as np

    bulk, each = _count_store(gap), _count_store(gap)
    for key, t in sorted(first, key=lambda p: p[1]):
        for store in (bulk, each):
            _bump(store, store.place(key, t, t, may_open=True))
    keys = list("abcd")
    lo = np.array([f for f, _ in runs], dtype=np.int64)
    hi = lo + np.array([d for _, d in runs], dtype=np.int64)
    placed, slots = bulk.extend_touching(keys, lo, hi, np.ones(4, dtype=bool))
    for slot in slots.tolist():
        _bump(bulk, slot)
    for r in range(4):
        if r not in placed.tolist():
            _bump(bulk, bulk.place(keys[r], int(lo[r]), int(hi[r]), may_open=True))
        _bump(each, each.place(keys[r], int(lo[r]), int(hi[r]), may_open=True))
        assert (r in placed.tolist()) <= (len(each.sessions_of(keys[r])) >= 1)
    for key in keys:
        assert bulk.sessions_of(key) == each.sessions_of(key)
    assert bulk.n_states == each.n_states
    assert sorted(bulk.close(10**6), key=repr) == sorted(each.close(10**6), key=repr)



def test_pane_keys_are_interned():
    """A pane opened with a fresh str key keeps one interned copy of it, shared with every other
    pane and state keeping that value; lookups by an equal fresh key still find it."""
    from daemon.windows.fixed import Hopping
    from daemon.windows.panes import PaneStore

    store = PaneStore(Hopping(120, 60), lambda: [0])
    a, b = ("".join(["item-", str(7)]),), ("".join(["item-", str(7)]),)
    store.open(0, a)
    store.open(60, b)
    kept = [k for pane in store._panes.values() for k in pane]
    assert kept == [a, a] and kept[0][0] is kept[1][0]
    assert store.find([0, 60], [b, a]) == [[0], [0]]


_PANE_KEYS = st.one_of(st.none(), st.sampled_from(["a", "b", "item-7"]), st.integers(-2, 2), st.sampled_from([1.0, 2.5, True]))


@settings(max_examples=150, deadline=None)
@given(opens=st.lists(st.tuples(st.integers(0, 5), _PANE_KEYS), max_size=40),
       watermark=st.integers(0, 480), max_rows=st.one_of(st.none(), st.integers(1, 5)))
def test_bare_pane_keys_close_as_their_1_tuples(opens, watermark, max_rows):
    """A store keyed by bare values (one group_by field) finds, merges and closes in the order of a store
    keyed by 1-tuples, keys mixing None, str and numbers (1 == 1.0 == True are one key in both),
    including a close stopped inside a window end and resumed after its last key."""
    from daemon.windows.panes import PaneStore

    stores = {bare: PaneStore(Hopping(120, 60), list, bare=bare) for bare in (False, True)}
    for pane, value in opens:
        for bare, store in stores.items():
            key = value if bare else (value,)
            states = store.find([pane * 60], [key])[0]
            if states is None:
                states = store.open(pane * 60, key)
            states.append(value)
    got = {}
    for bare, store in stores.items():
        out, after, before = [], None, None
        while True:
            c = store.close(before, watermark, max_rows, after)
            out += [(s, e, k if bare else k[0], st_) for (s, e, k), st_ in
                    zip(c.windows, [c.states[a:b] for a, b in zip(c.bounds, c.bounds[1:])])]
            if c.cursor is None and c.through == watermark:
                break
            before, after = (c.through, c.cursor)
        got[bare] = (out, store.n_states, store.n_keys)
    assert got[True] == got[False]
