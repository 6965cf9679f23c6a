"""ReplicaFeed's bounds, with stand-in processes: one that never reads its stdin (stuck) and one
that exits at once. A fold finding the outbox over its bound waits (back-pressure), but not for a
stuck process: that one is killed after `stuck_s` and started again, synced again; an exiting one
is restarted with backoff."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import anyio
import pytest

from daemon.config import RecommendationsConfig
from daemon.replica.feed import ReplicaFeed
from daemon.replica import protocol
from daemon.replica.protocol import ReplicaSettings
from tests.integration.servers import RecordingLog

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]

CFG = ReplicaSettings(RecommendationsConfig(listen_host="127.0.0.1", listen_port=1))


@pytest.fixture
def anyio_backend():
    return "asyncio"


async def wait_for(predicate, timeout: float = 10.0) -> None:
    with anyio.fail_after(timeout):
        while not predicate():
            await anyio.sleep(0.02)


def stand_in(tmp_path: Path, body: str) -> list[str]:
    script = tmp_path / "replica.py"
    script.write_text(f"import os, sys, time\nopen({str(tmp_path / 'pids')!r}, 'a').write(f'{{os.getpid()}}\\n')\n{body}\n")
    return [sys.executable, str(script)]


def pids(tmp_path: Path) -> list[int]:
    path = tmp_path / "pids"
    return [int(x) for x in path.read_text().split()] if path.exists() else []


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"


def syncer(syncs: list[int]):
    async def sync(begin) -> None:
        syncs.append(len(syncs))
        begin(iter([protocol.frame(protocol.RESTORE)]))
    return sync


async def test_a_stuck_process_holds_the_folds_back_then_is_killed_and_synced_again(tmp_path):
    log, syncs = RecordingLog(), []
    feed = ReplicaFeed(CFG, log, sync=syncer(syncs), command=stand_in(tmp_path, "time.sleep(60)"),
                       max_outbox_bytes=1 << 20, stuck_s=1.0)
    async with anyio.create_task_group() as tg:
        tg.start_soon(feed.run)
        await wait_for(lambda: feed.live and len(pids(tmp_path)) == 1)
        first = pids(tmp_path)[0]
        for _ in range(40):                        # 2.5 MiB: the pipe takes ~64 KiB, the outbox the rest
            feed.send(b"x" * 65536)
        t0 = anyio.current_time()
        with anyio.fail_after(10):
            await feed.room()                      # waits ~stuck_s, then the process is killed
        assert anyio.current_time() - t0 >= 0.9
        assert feed.statistics().resyncs == 1 and feed.statistics().waits == 1
        await wait_for(lambda: feed.statistics().starts == 2 and feed.live)
        assert len(syncs) == 2 and gone(first)
        assert log.events("replica_stuck") and log.events("replica_exited")
        assert feed.statistics().outbox_bytes < 1 << 20
        tg.cancel_scope.cancel()
    assert all(gone(p) for p in pids(tmp_path))    # the feed's end stops its process


async def test_a_process_that_exits_is_started_again_with_backoff(tmp_path):
    log = RecordingLog()
    feed = ReplicaFeed(CFG, log, sync=syncer([]), command=stand_in(tmp_path, "sys.exit(3)"))
    async with anyio.create_task_group() as tg:
        tg.start_soon(feed.run)
        await wait_for(lambda: len(log.events("replica_exited")) >= 3)
        tg.cancel_scope.cancel()
    exits = log.events("replica_exited")
    assert {e["code"] for e in exits} == {3}
    assert all(0 <= e["restart_in_s"] <= 30 for e in exits)
    assert not feed.live and len(pids(tmp_path)) >= 3


async def test_a_process_that_cannot_start_is_retried_not_fatal(tmp_path):
    log = RecordingLog()
    feed = ReplicaFeed(CFG, log, sync=syncer([]), command=[str(tmp_path / "no-such-python")])
    async with anyio.create_task_group() as tg:
        tg.start_soon(feed.run)
        await wait_for(lambda: len(log.events("replica_exited")) >= 2)
        tg.cancel_scope.cancel()
    assert all(str(e["code"]).startswith("not started: ") for e in log.events("replica_exited"))
    status, body = await feed.get("/trending")      # reads say so instead of hanging
    assert status == 503 and b"starting" in body
