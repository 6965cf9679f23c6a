"""Composition root: build every component from the Config, run them in one task group, stop in order.

Shutdown order (SIGTERM): sources stop → the runner drains the queues → last commit and Arrow
flush → HTTP listener closes → LMDB closes. Each step is bounded in time.
"""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import anyio

from daemon.clock import Clock, SystemClock
from daemon.config import Config
from daemon.errors import StoreError
from daemon.pipeline.queue import BoundedQueue, Wakeup
from daemon.pipeline.runner import Runner
from daemon.pipeline.stateparts import StateParts
from daemon.pipeline.validate import Validator
from daemon.runtime.systemd import Notifier
from daemon.sources.base import SourceContext, SourceHealth
from daemon.stores.checkpoint import Checkpoint
from daemon.web.app import open_http_server
from daemon.web.context import ProcessHealth, WebContext

DRAIN_TIMEOUT_S = 8.0
LOOP_PROBE_S = 0.25


def build_sources(cfg: Config, queues: dict[str, BoundedQueue], positions: dict[str, bytes], clock: Clock,
                  log: Any) -> dict[str, Any]:
    sources: dict[str, Any] = {}
    for sc in cfg.sources:
        validator = Validator(sc.name, renames=dict(sc.common.renames), seq_field=getattr(sc, "seq_field", ""),
                              max_future_skew_ms=cfg.pipeline.max_future_skew_ms)
        ctx = SourceContext(name=sc.name, queue=queues[sc.name], validator=validator, clock=clock,
                            log=log.bind(source=sc.name), position=positions.get(sc.name),
                            health=SourceHealth(sc.name, sc.type))
        sources[sc.name] = sc.build(ctx)
    return sources


class Daemon:
    """One running StorePulse: owns the checkpoint, the runner, the sources and the HTTP listener."""

    def __init__(self, cfg: Config, log: Any, clock: Clock | None = None, notifier: Notifier | None = None) -> None:
        self.cfg = cfg
        self.log = log
        self.clock = clock or SystemClock()
        self.notifier = notifier or Notifier()
        self.shutdown = anyio.Event()
        # Injected failures for tests (STOREPULSE_FAULT=wedge_commit,...); empty in production.
        self.faults = frozenset(f for f in os.environ.get("STOREPULSE_FAULT", "").split(",") if f)

    async def run(self) -> int:
        cfg, log, clock = self.cfg, self.log, self.clock
        try:
            checkpoint = await anyio.to_thread.run_sync(Checkpoint.open, cfg.storage)
        except StoreError as exc:
            log.error("store_open_failed", error=str(exc), data_dir=cfg.storage.data_dir)
            return 1
        try:
            return await self._run_with(checkpoint)
        finally:
            checkpoint.close()

    async def _run_with(self, checkpoint: Checkpoint) -> int:
        cfg, log, clock = self.cfg, self.log, self.clock
        wakeup = Wakeup()
        queues = {s.name: BoundedQueue(s.common.queue.capacity, s.common.queue.overflow, wakeup) for s in cfg.sources}
        parts = StateParts(cfg)
        runner = Runner(cfg, checkpoint, parts, queues, wakeup, clock, log.bind(component="runner"), faults=self.faults)
        positions = runner.restore()
        sources = build_sources(cfg, queues, positions, clock, log)
        health = ProcessHealth(started_mono=clock.monotonic())
        webctx = WebContext(cfg=cfg, clock=clock, runner=runner, parts=parts, checkpoint=checkpoint,
                            sources=sources, queues=queues, health=health, log=log)
        try:
            server = open_http_server(webctx)
            await server.__aenter__()
        except OSError as exc:
            log.error("http_listen_failed", listen=f"{cfg.http.host}:{cfg.http.port}", error=str(exc))
            return 1
        try:
            await self._serve(runner, sources, wakeup, health)
        finally:
            with anyio.move_on_after(3, shield=True):
                await server.__aexit__(None, None, None)
        log.info("stopped")
        return 0

    async def _serve(self, runner: Runner, sources: dict[str, Any], wakeup: Wakeup, health: ProcessHealth) -> None:
        log = self.log
        runner_stop = anyio.Event()
        runner_done = anyio.Event()

        async def run_runner() -> None:
            try:
                await runner.run(runner_stop)
            finally:
                runner_done.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(self._signals)
            tg.start_soon(self._monitor, health, runner)
            tg.start_soon(run_runner)
            async with anyio.create_task_group() as source_tg:
                for source in sources.values():
                    source_tg.start_soon(source.run)
                health.ready = True
                self.notifier.ready("running")
                log.info("started", listen=f"{self.cfg.http.host}:{self.cfg.http.port}",
                         sources=sorted(sources), aggregations=[a.name for a in self.cfg.aggregations],
                         data_dir=self.cfg.storage.data_dir)
                await self.shutdown.wait()
                self.notifier.stopping()
                log.info("stopping", step="sources")
                source_tg.cancel_scope.cancel()
            log.info("stopping", step="drain", queued=runner.queued())
            runner_stop.set()
            wakeup.set()
            with anyio.move_on_after(DRAIN_TIMEOUT_S) as scope:
                await runner_done.wait()
            if scope.cancelled_caught:
                log.error("drain_timeout", queued=runner.queued())
            tg.cancel_scope.cancel()

    async def _signals(self) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async for signum in signals:
                if signum == signal.SIGHUP:
                    self.log.warning("reload_not_supported_yet")
                    continue
                self.log.info("signal_received", signal=signal.Signals(signum).name)
                self.shutdown.set()

    async def _monitor(self, health: ProcessHealth, runner: Runner) -> None:
        """Measure event-loop lag and keep the systemd watchdog fed while the loop turns."""
        interval = LOOP_PROBE_S
        if self.notifier.watchdog_interval_s:
            interval = min(interval, self.notifier.watchdog_interval_s)
        while True:
            t0 = time.monotonic()
            await anyio.sleep(interval)
            lag = time.monotonic() - t0 - interval
            health.loop_lag_ms = max(0.0, lag * 1000)
            if self.notifier.watchdog_interval_s:
                self.notifier.watchdog()
