"""A commit is written while the next folds run, at most one ahead (Runner._maybe_commit), on a real store."""

from __future__ import annotations

import threading
from pathlib import Path

import anyio
import pytest
import structlog

from daemon.clock import SystemClock
from daemon.config import load_config
from daemon.events import EventBatch
from daemon.pipeline.queue import BoundedQueue, Delivery, Wakeup
from daemon.pipeline.runner import Runner
from daemon.pipeline.stateparts import StateParts
from daemon.stores.checkpoint import Checkpoint

pytestmark = pytest.mark.timeout(60)

CONFIG = """
[storage]
data_dir = "{data}"
commit_interval = "50ms"
state_interval = "1h"

[pipeline]
allowed_lateness = "1h"
max_future_skew = "1h"

[sources.webhook]
type = "ingest"

[[aggregations]]
name = "per_type"
group_by = ["type"]
window = {{ type = "tumbling", size = "1h" }}
metrics = {{ events = "count" }}
"""


def _delivery(k: int, now_ms: int) -> Delivery:
    ids = [f"e{k}-{i}" for i in range(10)]
    return Delivery(EventBatch("webhook", event_id=ids, ts=[now_ms] * 10, type=["view"] * 10, user_id=["u"] * 10,
                               session_id=[None] * 10, item_id=["i"] * 10, category=[None] * 10,
                               price=[None] * 10, quantity=[1] * 10, revenue=[0.0] * 10),
                    position=b"%d" % k, received_ms=now_ms)


async def _until(check, what: str, timeout_s: float = 10.0) -> None:
    deadline = anyio.current_time() + timeout_s
    while not check():
        assert anyio.current_time() < deadline, f"timed out waiting for: {what}"
        await anyio.sleep(0.01)


def test_folds_go_on_while_a_commit_is_written_and_wait_once_the_next_falls_due(tmp_path: Path) -> None:
    """While the store takes its time over one commit, the runner folds what arrives; once the next
    commit falls due it waits for that write (nothing more is taken: the queue pushes back); released,
    everything is committed once, in order, and the last position is the store's."""
    cfg_path = tmp_path / "c.toml"
    cfg_path.write_text(CONFIG.format(data=tmp_path / "data"))
    cfg = load_config(str(cfg_path))
    checkpoint = Checkpoint.open(cfg.storage, log=structlog.get_logger("test"))
    gate, writing = threading.Event(), threading.Event()
    real_commit = checkpoint.commit
    seqs: list[int] = []

    def slow_commit(unit):   # the first write waits for the test; the others go through
        writing.set()
        if not seqs:
            gate.wait(20)
        seqs.append(real_commit(unit))
        return seqs[-1]

    checkpoint.commit = slow_commit   # type: ignore[method-assign]
    wakeup = Wakeup()
    clock = SystemClock()

    async def main() -> None:
        queue = BoundedQueue(100_000, "block", wakeup)
        runner = Runner(cfg, checkpoint, StateParts(cfg), {"webhook": queue}, wakeup, clock,
                        structlog.get_logger("runner"))
        runner.restore()
        stop = anyio.Event()
        async with anyio.create_task_group() as tg:
            tg.start_soon(runner.run, stop)
            queue.put_nowait(_delivery(0, clock.now_ms()))
            await _until(writing.is_set, "the first commit is being written")
            queue.put_nowait(_delivery(1, clock.now_ms()))
            await _until(lambda: runner.statistics().events_in == 20, "the next delivery folded meanwhile")
            await anyio.sleep(0.3)   # the next commit falls due (50 ms) and waits for the first write
            queue.put_nowait(_delivery(2, clock.now_ms()))
            await anyio.sleep(0.3)
            assert runner.statistics().events_in == 20 and queue.depth == 10   # not taken: pushed back
            assert seqs == [] and runner.statistics().pending_work
            gate.set()
            await _until(lambda: runner.statistics().events_in == 30, "taken once the write is done")
            stop.set()
        assert seqs == sorted(seqs) and len(seqs) >= 3

    anyio.run(main)
    checkpoint.close()
    reopened = Checkpoint.open(cfg.storage, log=structlog.get_logger("test"))
    try:
        restored = reopened.restore()
        assert restored.positions == {"webhook": b"2"}
        assert sorted(i.decode() for i, _ in restored.dedupe) == sorted(f"e{k}-{i}" for k in range(3) for i in range(10))
    finally:
        reopened.close()
