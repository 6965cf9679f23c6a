"""The daemon's side of the replica: start `python -m daemon.replica`, keep it in step, restart it.

In step: under the runner's state lock (no fold in flight) the feed sends CONFIG and a SNAPSHOT of
the recommender, and from then on the runner hands it one OBSERVE frame per fold (`send`), in fold
order. Frames wait in a bounded outbox; a replica that falls MAX_BEHIND_BYTES behind (stuck,
stopped) is killed and started again from a fresh snapshot, so it never slows the daemon and
never serves from a gap. A replica that exits is started again with jittered backoff.
The daemon's own recommender stays the durable one (state, fold log, restore); the replica is a
read copy that a restart rebuilds.
"""

from __future__ import annotations

import contextlib
import random
import subprocess
import sys
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anyio
from anyio.abc import Process

from daemon.replica import protocol
from daemon.replica.protocol import ReplicaSettings
from daemon.sources.backoff import Backoff

MAX_BEHIND_BYTES = 256 * 2**20
STOP_TIMEOUT_S = 3.0
HEALTHY_AFTER_S = 10.0     # a replica that ran this long resets the restart backoff


@dataclass(slots=True)
class ReplicaStats:
    listen: str
    running: bool
    pid: int | None
    starts: int
    resyncs: int
    frames_sent: int
    outbox_bytes: int


class ReplicaFeed:
    """Runs the replica process for the daemon's lifetime (`run` is a task of the daemon)."""

    def __init__(self, settings: ReplicaSettings, log: Any,
                 snapshot: Callable[[], Awaitable[bytes]], lock: anyio.Lock,
                 command: list[str] | None = None, max_behind_bytes: int = MAX_BEHIND_BYTES) -> None:
        self.settings = settings
        self.cfg = settings.recommendations
        self.log = log
        self._snapshot = snapshot       # the recommender's state, taken in the CPU lane
        self._lock = lock               # the runner's state lock: held, no fold is in flight
        self._command = command or [sys.executable, "-m", "daemon.replica"]
        self._max_behind = max_behind_bytes
        self._out: deque[bytes] = deque()
        self._out_bytes = 0
        self._wake = anyio.Event()
        self._proc: Process | None = None
        self.live = False               # frames are wanted (a replica is running and synced)
        self._starts = self._resyncs = self._frames = 0

    @property
    def listen(self) -> str:
        return f"{self.cfg.listen_host}:{self.cfg.listen_port}"

    def send(self, data: bytes) -> None:
        """Queue one frame (never blocks: a replica too far behind is restarted instead)."""
        if not self.live:
            return
        self._out.append(data)
        self._out_bytes += len(data)
        self._frames += 1
        if self._out_bytes > self._max_behind:
            self.log.warning("replica_behind", outbox_bytes=self._out_bytes, action="restart from a snapshot")
            self._resyncs += 1
            self._drop_outbox()
            if self._proc is not None:
                self._proc.kill()
        self._wake.set()

    def statistics(self) -> ReplicaStats:
        proc = self._proc
        return ReplicaStats(listen=self.listen, running=proc is not None and proc.returncode is None,
                            pid=proc.pid if proc is not None else None, starts=self._starts,
                            resyncs=self._resyncs, frames_sent=self._frames, outbox_bytes=self._out_bytes)

    def _drop_outbox(self) -> None:
        self.live = False
        self._out.clear()
        self._out_bytes = 0

    async def run(self) -> None:
        backoff, rng = Backoff(base_s=0.5, cap_s=30.0), random.Random()
        try:
            while True:
                started = anyio.current_time()
                try:
                    code: int | str | None = await self._run_once()
                except OSError as exc:   # could not start it (no such interpreter, out of fds or memory)
                    code = f"not started: {exc}"
                ran_s = anyio.current_time() - started
                if ran_s >= HEALTHY_AFTER_S:
                    backoff = backoff.reset()
                delay, backoff = backoff.next(rng)
                self.log.warning("replica_exited", code=code, ran_s=round(ran_s, 1), restart_in_s=round(delay, 2))
                await anyio.sleep(delay)
        finally:
            self._drop_outbox()

    async def _run_once(self) -> int | None:
        proc = await anyio.open_process(self._command, stdin=subprocess.PIPE, stdout=None, stderr=None)
        self._proc = proc
        self._starts += 1
        try:
            async with self._lock:
                snap = await self._snapshot()
                self._drop_outbox()
                self._out.append(protocol.config_frame(self.settings))
                self._out.append(protocol.frame(protocol.SNAPSHOT, snap))
                self._out_bytes = sum(map(len, self._out))
                self.live = True
            self.log.info("replica_syncing", pid=proc.pid, listen=self.listen, snapshot_bytes=len(snap))
            async with anyio.create_task_group() as tg:
                async def pump() -> None:
                    await self._pump(proc)
                    tg.cancel_scope.cancel()
                tg.start_soon(pump)
                await proc.wait()
                tg.cancel_scope.cancel()
        finally:
            self._drop_outbox()
            with anyio.CancelScope(shield=True):
                await self._stop(proc)
        return proc.returncode   # after _stop: a replica whose stdin broke has exited (or was killed) by now

    async def _pump(self, proc: Process) -> None:
        """Write queued frames to the replica's stdin until it breaks."""
        assert proc.stdin is not None
        while True:
            while self._out:
                data = self._out.popleft()
                self._out_bytes -= len(data)
                try:
                    await proc.stdin.send(data)
                except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                    return
            self._wake = anyio.Event()
            if not self._out:
                await self._wake.wait()

    async def _stop(self, proc: Process) -> None:
        """Close its stdin (it exits at EOF); kill it if it does not within STOP_TIMEOUT_S."""
        if proc.returncode is None:
            with anyio.move_on_after(STOP_TIMEOUT_S):
                if proc.stdin is not None:
                    with contextlib.suppress(anyio.BrokenResourceError, OSError):   # it is gone already
                        await proc.stdin.aclose()
                await proc.wait()
            if proc.returncode is None:
                proc.kill()
                with anyio.move_on_after(STOP_TIMEOUT_S):
                    await proc.wait()
        self._proc = None
