"""The daemon's side of the recommendations process: start `python -m daemon.replica`, keep it in
step, read its answers, forward reads to it, restart it.

In step: under the runner's commit and state locks (no fold and no commit in flight) the runner
hands `begin` the frames that bring a new process to its state (pipeline/runner.py,
Runner.sync_recommender): the stored records, the fold-log entries after their cut and the steps
folded since the last commit, as an iterator the pump reads in a worker thread as the pipe takes
them (a large state is never all in memory). From then on every fold sends its OBSERVE frame, in
fold order, and every full state write a CUT. Frames wait in a bounded outbox: a fold finding it over
`max_outbox_bytes` waits for room (`room`), so a slow process slows the daemon (back-pressure, as
a slow disk would) instead of losing its place; one that makes no progress for STUCK_S is killed.
A process that exits is started again with jittered backoff and synced again from the store.
"""

from __future__ import annotations

import contextlib
import random
import subprocess
import sys
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import anyio
import orjson
from anyio.abc import Process

from daemon.replica import protocol
from daemon.replica.protocol import ReplicaSettings
from daemon.sources.backoff import Backoff

MAX_OUTBOX_BYTES = 64 * 2**20
STUCK_S = 30.0            # a process that takes none of a full outbox for this long is killed
STOP_TIMEOUT_S = 5.0      # to fold what it was sent and exit after its stdin closed
HEALTHY_AFTER_S = 10.0    # a process that ran this long resets the restart backoff
READ_TIMEOUT_S = 5.0      # a forwarded read
READ_BYTES = 1 << 20

Begin = Callable[[Iterator[bytes]], None]


@dataclass(slots=True)
class ReplicaStats:
    listen: str
    port: int | None        # where it answers reads (loopback; `listen`'s port when that is set)
    running: bool
    pid: int | None
    starts: int
    resyncs: int
    frames_sent: int
    outbox_bytes: int
    answers: int            # CHANGES frames received
    waits: int              # folds that waited for room in the outbox


class ReplicaFeed:
    """Runs the recommendations process for the daemon's lifetime (`run` is a task of the daemon)."""

    def __init__(self, settings: ReplicaSettings, log: Any,
                 sync: Callable[[Begin], Awaitable[None]],
                 command: list[str] | None = None, max_outbox_bytes: int = MAX_OUTBOX_BYTES,
                 stuck_s: float = STUCK_S) -> None:
        self.settings = settings
        self.cfg = settings.recommendations
        self.log = log
        self._sync = sync               # Runner.sync_recommender: calls `begin` under its locks
        self._command = command or [sys.executable, "-m", "daemon.replica"]
        self._max_outbox = max_outbox_bytes
        self._stuck_s = stuck_s
        self._out: deque[bytes] = deque()
        self._sync_frames: Iterator[bytes] | None = None   # read lazily by the pump, before `_out`
        self._out_bytes = 0
        self._wake = anyio.Event()
        self._drained = anyio.Event()
        self._proc: Process | None = None
        self.live = False               # frames are wanted (a process is running and synced)
        self.queued = 0                 # frames queued for the running process after its config
        self.port: int | None = None    # where the running process answers reads (its READY frame)
        self._ready = anyio.Event()     # set by READY, replaced when a process ends
        # Answers not yet taken by the runner: the CUT seq each answers, and its PART payloads then its
        # CHANGES payload (protocol.py).
        self.changes: list[tuple[int, list[bytes]]] = []
        self._answered = anyio.Event()
        self._http: aiohttp.ClientSession | None = None
        self._starts = self._resyncs = self._frames = self._answers = self._waits = self._synced_bytes = 0
        self._written = 0                # bytes the processes took from their pipes, all told

    @property
    def listen(self) -> str:
        return f"{self.cfg.listen_host}:{self.cfg.listen_port}" if self.cfg.listen_port else ""

    # ---- the runner's side --------------------------------------------------------------------
    def send(self, data: bytes) -> None:
        """Queue one frame (never blocks; the runner awaits `room` after a fold's frames)."""
        if not self.live:
            return
        self._out.append(data)
        self._out_bytes += len(data)
        self._frames += 1
        self.queued += 1
        self._wake.set()

    async def room(self) -> None:
        """Wait while the outbox is over its bound; kill a process that takes nothing for STUCK_S."""
        if self._out_bytes <= self._max_outbox or not self.live:
            return
        self._waits += 1
        while self.live and self._out_bytes > self._max_outbox:
            before = self._written     # progress: bytes the process took (a long sync counts)
            self._drained = anyio.Event()
            with anyio.move_on_after(self._stuck_s):
                await self._drained.wait()
                continue
            if self._written == before and self.live:
                self.log.warning("replica_stuck", outbox_bytes=self._out_bytes, stuck_s=self._stuck_s,
                                 action="restart and sync from the store")
                self._resyncs += 1
                self._drop_outbox()
                if self._proc is not None:
                    self._proc.kill()

    def take_changes(self) -> list[tuple[int, list[bytes]]]:
        out, self.changes = self.changes, []
        return out

    async def wait_answer(self, seq: int, timeout_s: float) -> bool:
        """Wait until the answer to CUT `seq` has arrived (for the last commit at shutdown)."""
        with anyio.move_on_after(timeout_s):
            while self.live and not any(s >= seq for s, _ in self.changes):
                self._answered = anyio.Event()
                await self._answered.wait()
        return any(s >= seq for s, _ in self.changes)

    def statistics(self) -> ReplicaStats:
        proc = self._proc
        return ReplicaStats(listen=self.listen, port=self.port, running=proc is not None and proc.returncode is None,
                            pid=proc.pid if proc is not None else None, starts=self._starts,
                            resyncs=self._resyncs, frames_sent=self._frames, outbox_bytes=self._out_bytes,
                            answers=self._answers, waits=self._waits)

    # ---- reads ----------------------------------------------------------------------------------
    async def get(self, path_qs: str) -> tuple[int, bytes]:
        """Forward a GET to the process; (status, body). A read while the process syncs waits for
        it (READ_TIMEOUT_S at most, then 503); with no process running (it is being restarted) it
        is 503 at once. The read sees every fold sent before it (`seen`)."""
        if self._proc is not None:
            with anyio.move_on_after(READ_TIMEOUT_S):
                await self._ready.wait()
        port, http, seen = self.port, self._http, self.queued
        if port is None or http is None or not self.live:
            return 503, b'{"error":"the recommendations process is starting; retry"}'
        headers = {"Authorization": f"Bearer {self.settings.token.decode()}"} if self.settings.token else {}
        try:
            async with http.get(f"http://127.0.0.1:{port}{path_qs}&seen={seen}", headers=headers) as resp:
                return resp.status, await resp.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            return 503, orjson.dumps({"error": f"the recommendations process did not answer: {type(exc).__name__}"})

    # ---- the process ------------------------------------------------------------------------------
    def _drop_outbox(self) -> None:
        self.live = False
        self._sync_frames = None
        self._out.clear()
        self._out_bytes = 0
        self._drained.set()
        self._answered.set()

    def _begin(self, frames: Iterator[bytes]) -> None:
        """Called by the runner's sync under its locks: `frames` (made lazily, in a worker thread, as
        the pipe takes them: the stored records can be GBs), then every fold from now on."""
        self._out.clear()
        self._out_bytes = 0
        self._sync_frames = frames
        self.queued = 0
        self.changes = []     # answers of a previous process: the new one starts from the stored state
        self.live = True
        self._wake.set()

    async def run(self) -> None:
        backoff, rng = Backoff(base_s=0.5, cap_s=30.0), random.Random()
        timeout = aiohttp.ClientTimeout(total=READ_TIMEOUT_S)
        async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=64)) as http:
            self._http = http
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
                self._http = None

    async def _run_once(self) -> int | None:
        proc = await anyio.open_process(self._command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=None)
        self._proc = proc
        self._starts += 1
        self.port = None
        try:
            self._synced_bytes = 0
            await self._sync(self._begin)
            self.log.info("replica_syncing", pid=proc.pid, listen=self.listen)
            async with anyio.create_task_group() as tg:
                async def pump() -> None:
                    await self._pump(proc)
                    tg.cancel_scope.cancel()

                async def answers() -> None:
                    await self._read_answers(proc)
                    tg.cancel_scope.cancel()
                tg.start_soon(pump)
                tg.start_soon(answers)
                await proc.wait()
                tg.cancel_scope.cancel()
        finally:
            self._drop_outbox()
            self.port = None
            self._ready.set()              # reads waiting for this process: it is gone (503)
            self._ready = anyio.Event()
            with anyio.CancelScope(shield=True):
                await self._stop(proc)
        return proc.returncode   # after _stop: a process whose stdin broke has exited (or was killed) by now

    async def _pump(self, proc: Process) -> None:
        """Write the config, the sync frames and then the queued frames to the process's stdin until it breaks."""
        assert proc.stdin is not None
        try:
            await proc.stdin.send(protocol.config_frame(self.settings))
            while (frames := self._sync_frames) is not None:
                data = await anyio.to_thread.run_sync(next, frames, None)
                if data is None:
                    self._sync_frames = None
                    data = protocol.frame(protocol.SYNCED)
                self.queued += 1
                self._synced_bytes += len(data)
                await proc.stdin.send(data)
                self._written += len(data)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            return
        self.log.info("replica_synced", pid=proc.pid, sync_bytes=self._synced_bytes)
        while True:
            while self._out:
                data = self._out.popleft()
                try:
                    await proc.stdin.send(data)
                except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                    return
                self._written += len(data)
                self._out_bytes -= len(data)
                if self._out_bytes <= self._max_outbox:
                    self._drained.set()
            self._wake = anyio.Event()
            if not self._out:
                await self._wake.wait()

    async def _read_answers(self, proc: Process) -> None:
        """READY, PART and CHANGES frames from the process's stdout until it ends."""
        assert proc.stdout is not None
        reader = protocol.FrameReader()
        parts: list[bytes] = []   # of the answer being received (dropped with this process if it dies)
        while True:
            try:
                data = await proc.stdout.receive(READ_BYTES)
            except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                return
            try:
                frames = reader.feed(data)
            except protocol.ProtocolError as exc:
                self.log.error("replica_bad_output", error=str(exc), action="restart")
                proc.kill()
                return
            for kind, payload in frames:
                if kind == protocol.READY:
                    self.port = int(orjson.loads(payload)["port"])
                    self._ready.set()
                elif kind == protocol.PART:
                    parts.append(payload)
                elif kind == protocol.CHANGES:
                    seq, _ = protocol.read_changes(payload)
                    if any(protocol.read_changes(p)[0] != seq for p in parts):
                        self.log.error("replica_bad_output", error="parts of another answer", action="restart")
                        proc.kill()
                        return
                    if self.live:
                        self.changes.append((seq, [*parts, payload]))
                        self._answers += 1
                        self._answered.set()
                    parts = []

    async def _stop(self, proc: Process) -> None:
        """Close its stdin (it exits at EOF); kill it if it does not within STOP_TIMEOUT_S."""
        if proc.returncode is None:
            with anyio.move_on_after(STOP_TIMEOUT_S):
                if proc.stdin is not None:
                    with contextlib.suppress(anyio.BrokenResourceError, OSError):   # it is gone already
                        await proc.stdin.aclose()
                if proc.stdout is not None:   # keep reading: a process blocked on a full stdout never exits
                    with contextlib.suppress(anyio.EndOfStream, anyio.BrokenResourceError,
                                             anyio.ClosedResourceError, OSError):
                        while await proc.stdout.receive(READ_BYTES):
                            pass
                await proc.wait()
            if proc.returncode is None:
                proc.kill()
                with anyio.move_on_after(STOP_TIMEOUT_S):
                    await proc.wait()
        self._proc = None
