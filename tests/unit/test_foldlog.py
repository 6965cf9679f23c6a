"""The fold log: state written at one point + the logged steps replayed = the state that was folded."""

import tomllib

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.config import parse_config
from daemon.pipeline.foldlog import FoldLog, replay
from daemon.pipeline.stateparts import StateParts
from daemon.pipeline.validate import Validator
from daemon.storefront.generator import Generator

CONFIG = """
[storage]
data_dir = "unused"

[[aggregations]]
name = "sales"
where = { type = ["purchase"] }
group_by = ["category"]
window = { type = "tumbling", size = "1m" }
metrics = { orders = "count", revenue = "sum(revenue)", buyers = "distinct(user_id)", p95 = "p95(price)", top = "topk(item_id, 3)" }
moving_average = { of = ["revenue"], sma = 3, ema_alpha = 0.5 }
anomaly = { metric = "orders", method = "zscore", threshold = 3.0, warmup = 3 }

[[aggregations]]
name = "views"
where = { type = ["view"] }
group_by = ["item_id"]
window = { type = "hopping", size = "2m", slide = "30s" }
metrics = { views = "count", viewers = "distinct(user_id)" }

[[aggregations]]
name = "sessions"
group_by = ["user_id"]
window = { type = "session", gap = "45s" }
metrics = { events = "count", revenue = "sum(revenue)", items = "distinct(item_id)" }
"""

START_MS = 1_700_000_000_000


def parts() -> StateParts:
    return StateParts(parse_config(tomllib.loads(CONFIG)))


def batches(seed: int, n_batches: int, size: int):
    gen = Generator(seed=seed, start_ms=START_MS, rate=8)   # 150 events span ~19 s of event time
    v = Validator("s")
    return [v.decode_items(gen.next_batch(size), START_MS + 10**9).batch for _ in range(n_batches)]


def fold(p: StateParts, log: FoldLog | None, batch, wm: int) -> list:
    """One runner fold: observe, then close at the watermark (logged when a log is given)."""
    p.observe(batch)
    closed, anomalies = p.close(wm)
    if log is not None:
        log.observe(batch)
        log.close(wm)
    return [(name, r.window_end_ms, r.key, r.metrics) for name, rs in sorted(closed.items()) for r in rs] + anomalies


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 1000), cut=st.integers(0, 12), commit_every=st.integers(1, 4))
def test_written_state_plus_replayed_log_equals_folded_state(seed, cut, commit_every):
    """A process folds 12 batches; state is written after `cut` of them, the rest is logged in commits
    of `commit_every` folds. A new process restores the state, replays the logs, and from then on
    emits exactly what the first one emits (windows, averages, anomalies). (The recommender's half,
    folded in its own process: tests/unit/test_replica_state.py.)"""
    stream = batches(seed, 16, 150)
    wms = [b.ts[-1] - 20_000 for b in stream]   # the watermark trails the newest event by 20 s
    a, log, blobs = parts(), FoldLog(), []
    written: dict = {}
    for i, (batch, wm) in enumerate(zip(stream[:12], wms)):
        fold(a, log, batch, wm)
        if i + 1 == cut:   # a full state write: take every change, empty the log
            for ns, changes in a.take_changes().items():
                written.setdefault(ns, {}).update(changes)
            log.clear()
            blobs = []
        elif (i + 1) % commit_every == 0 and (blob := log.take()) is not None:
            blobs.append(blob)
    if (blob := log.take()) is not None:
        blobs.append(blob)

    b = parts()
    b.restore({ns: sorted((k, v) for k, v in ch.items() if v is not None) for ns, ch in written.items()})
    for blob in blobs:
        replay(blob, b)

    emitted = 0
    for batch, wm in zip(stream[12:], wms[12:]):   # both go on with the same events
        out = fold(a, None, batch, wm)
        assert fold(b, None, batch, wm) == out
        emitted += len(out)
    out = fold(a, None, stream[-1].slice(0, 0), 2**52)
    assert fold(b, None, stream[-1].slice(0, 0), 2**52) == out
    assert emitted > 0 and len(out) > 0


def test_closing_twice_at_one_watermark_is_logged_once():
    log = FoldLog()
    log.close(5)
    log.close(5)
    log.close(7)
    assert orjson.loads(log.take()) == [[1, 5], [1, 7]]
    assert log.take() is None


def test_a_step_without_its_columns_is_refused():
    import pytest
    with pytest.raises(ValueError, match="full, equal-length columns"):
        replay(b'[[0, "s", ["e1"]]]', parts())
