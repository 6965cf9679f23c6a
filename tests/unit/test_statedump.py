"""A full state write's records made in bulk (windows/statedump.py, compiled: _statedump.pyx) equal the
one-state form they replace, byte for byte, and restore to the same open windows."""

from __future__ import annotations

import hashlib

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.aggconfig import MetricSpec
from daemon.metrics import MetricSet
from daemon.windows import statedump
from tests.native import LOOPS, loop

SPECS = [MetricSpec(name="n", func="count"), MetricSpec(name="revenue", func="sum", field="revenue"),
         MetricSpec(name="avg", func="mean", field="revenue"), MetricSpec(name="items", func="distinct", field="item_id")]
METRICS = MetricSet(SPECS)


def _reference_key(prefix: bytes, identity: list) -> bytes:
    """The entry key as the aggregator made it one state at a time before the bulk form."""
    raw = orjson.dumps(identity)
    if len(raw) > 480:
        return prefix + b"#" + hashlib.blake2b(raw, digest_size=20).digest()
    return prefix + raw


def _reference_pane(start: int, end: int, key_list: list, states: list | None) -> tuple[bytes, bytes | None]:
    ek = _reference_key(b"w", [start, key_list])
    if states is None:
        return ek, None
    return ek, orjson.dumps([start, end, key_list]) + b"\n" + METRICS.dump(states)


def _reference_session(key_list: list, first: int, last: int, states: list) -> tuple[bytes, bytes]:
    blob = METRICS.dump(states)
    return _reference_key(b"s", key_list), orjson.dumps([key_list, [[first, last, len(blob)]]]) + b"\n" + blob


_values = st.one_of(st.none(), st.booleans(), st.integers(-2**63, 2**63 - 1), st.floats(allow_nan=False, allow_infinity=False),
                    st.text(max_size=12), st.text(min_size=470, max_size=490))   # either side of the 480-byte key bound
_ms = st.integers(-2**62, 2**62)


@st.composite
def _states(draw):
    states = METRICS.empty()
    rows = draw(st.lists(st.tuples(st.floats(-1e6, 1e6, allow_nan=False), st.sampled_from([f"i{i}" for i in range(40)])),
                         max_size=40))
    every = list(range(len(rows)))
    METRICS.fold(states, every, METRICS.gather([[r[0] for r in rows], [r[1] for r in rows]], every))
    return states


@settings(max_examples=150, deadline=None)
@given(bare=st.booleans(), start=_ms, slide=st.integers(1, 2**40),
       entries=st.lists(st.tuples(st.lists(_values, min_size=1, max_size=3), st.one_of(st.none(), _states())), max_size=6))
def test_pane_records_equal_the_one_state_form(bare, start, slide, entries):
    keys = [kl[0] if bare else tuple(kl) for kl, _ in entries]
    expected = [_reference_pane(start, start + slide, [k] if bare else list(k), s) for k, (_, s) in zip(keys, entries)]
    for kind in LOOPS:
        got: list = []
        with loop(statedump, kind):
            statedump.pane_records(lambda k, v: got.append((k, v)), start, start + slide, keys, [s for _, s in entries],
                                   METRICS.dumps, bare)
        assert got == expected, kind


@settings(max_examples=150, deadline=None)
@given(bare=st.booleans(), data=st.data(),
       entries=st.lists(st.tuples(st.lists(_values, min_size=1, max_size=3), _ms, _ms, _states()), max_size=6))
def test_session_records_equal_the_one_state_form(bare, data, entries):
    keys = [kl[0] if bare else tuple(kl) for kl, *_ in entries]
    slots = data.draw(st.permutations(range(len(entries))))
    columns: list[list] = [[None] * len(entries) for _ in SPECS]
    for slot, (_, _, _, states) in zip(slots, entries):
        for j, s in enumerate(states):
            columns[j][slot] = s
    expected = [_reference_session([k] if bare else list(k), f, l, s) for k, (_, f, l, s) in zip(keys, entries)]
    for kind in LOOPS:
        got: list = []
        with loop(statedump, kind):
            statedump.session_records(lambda k, v: got.append((k, v)), keys, list(slots), [e[1] for e in entries],
                                      [e[2] for e in entries], columns, METRICS.dumps, bare)
        assert got == expected, kind


def test_compiled_records_refuse_lists_of_unequal_length():
    """The compiled loops index the lists without bounds checks: they check the lengths first."""
    with loop(statedump, "compiled"):
        with pytest.raises(ValueError, match="unequal length"):
            statedump.session_records(lambda k, v: None, ["a", "b"], [0], [1, 2], [3, 4], [[None]] * 4, METRICS.dumps, True)
        with pytest.raises(ValueError, match="unequal length"):
            statedump.pane_records(lambda k, v: None, 0, 60, ["a", "b"], [None], METRICS.dumps, True)


@pytest.mark.parametrize("kind", LOOPS)
def test_session_changes_of_every_shape_restore(kind):
    """Through the aggregator: keys with one open session (the bulk loop), two (the one-state form), a
    closed one (a tombstone) and an over-long one (a hashed entry key) restore to the same windows."""
    from daemon.aggconfig import WindowSpec
    from daemon.windows.aggregator import Aggregator
    from tests.strategies import T0_MS, aggregation, batch_from_rows

    cfg = aggregation(WindowSpec(type="session", gap_ms=30_000), metrics={"n": "count", "items": "distinct(item_id)"},
                      group_by=("user_id",))
    rows = [{"ts": T0_MS, "user_id": "gone", "item_id": "i0"},
            {"ts": T0_MS + 100_000, "user_id": "one", "item_id": "i1"},
            {"ts": T0_MS + 101_000, "user_id": "one", "item_id": "i2"},
            {"ts": T0_MS + 100_000, "user_id": "two", "item_id": "i1"},
            {"ts": T0_MS + 160_000, "user_id": "two", "item_id": "i3"},
            {"ts": T0_MS + 100_000, "user_id": "x" * 600, "item_id": "i4"}]
    with loop(statedump, kind):
        agg = Aggregator(cfg)
        agg.add(batch_from_rows(rows[:1]))
        stored = dict(agg.take_changes())
        agg.add(batch_from_rows(rows[1:]))
        assert [r.key for r in agg.close(T0_MS + 40_000)] == [("gone",)]
        changes = agg.take_changes()
    assert changes[next(k for k in stored if k != b"m")] is None           # the closed session's tombstone
    assert all(len(k) <= 511 for k in changes) and sum(k.startswith(b"s#") for k in changes) == 1
    stored.update(changes)
    fresh = Aggregator(cfg)
    fresh.restore((k, v) for k, v in stored.items() if v is not None)
    expected = agg.close(T0_MS + 10**9)
    assert [(r.key, r.window_start_ms, r.metrics) for r in fresh.close(T0_MS + 10**9)] == \
           [(r.key, r.window_start_ms, r.metrics) for r in expected]
    assert len(expected) == 4


def test_records_of_an_aggregation_with_many_metrics():
    """No bound on the metrics per aggregation (the compiled loops once kept 64 lengths on the stack)."""
    many = MetricSet([MetricSpec(name=f"n{j}", func="count") for j in range(70)])
    states = many.empty()
    many.fold(states, [0, 1], [])
    expected_pane = [(b'w[0,["a"]]', orjson.dumps([0, 60, ["a"]]) + b"\n" + many.dump(states))]
    blob = many.dump(states)
    expected_session = [(b's["a"]', orjson.dumps([["a"], [[5, 9, len(blob)]]]) + b"\n" + blob)]
    for kind in LOOPS:
        got: list = []
        with loop(statedump, kind):
            statedump.pane_records(lambda k, v: got.append((k, v)), 0, 60, ["a"], [states], many.dumps, True)
            assert got == expected_pane, kind
            got.clear()
            statedump.session_records(lambda k, v: got.append((k, v)), ["a"], [0], [5], [9], [[s] for s in states],
                                      many.dumps, True)
            assert got == expected_session, kind
