"""Composition root: build every component from the Config, run them in one task group, stop in order.

Shutdown order (SIGTERM): sources stop → the runner drains the queues → last commit and Arrow
flush → HTTP listener closes → LMDB closes. Each step is bounded in time.
Reload (SIGHUP): re-read the file; on error keep running; else add, remove and restart the
sources and aggregations that changed while the others keep their state and open windows.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import signal
import sys
import time
from typing import Any

import anyio
from anyio.abc import TaskGroup, TaskStatus

from daemon.clock import Clock, SystemClock
from daemon.config import Config, load_config
from daemon.errors import ConfigErrors, StoreError
from daemon.pipeline.queue import BoundedQueue, Wakeup
from daemon.pipeline.runner import CLOSE_CHUNK_ROWS, Runner
from daemon.stores.segments import SPILL_BYTES
from daemon.pipeline.stateparts import StateParts
from daemon.pipeline.validate import Validator
from daemon.replica.feed import ReplicaFeed
from daemon.replica.protocol import ReplicaSettings
from daemon.runtime.alerts import AlertSender
from daemon.runtime.archive import SWEEP_INTERVAL_S, ArchiveUpkeep
from daemon.runtime.cpu import CpuLane
from daemon.runtime.gcwatch import GcWatch
from daemon.runtime.reload import plan_reload
from daemon.pipeline.watermark import NO_WATERMARK
from daemon.runtime.systemd import Notifier, ServiceHeartbeat, WatchdogBounds
from daemon.sources import SourceConfig
from daemon.sources.base import SourceContext, SourceHealth
from daemon.stores.checkpoint import Checkpoint
from daemon.stores.compaction import COMPACT_LIVE_FILES
from daemon.stores.retention import archive_time
from daemon.web.app import open_http_server
from daemon.web.auth import load_token
from daemon.web.context import ProcessHealth, WebContext

DRAIN_TIMEOUT_S = 8.0
LOOP_PROBE_S = 0.25
SLOW_START_S = 3.0     # STOREPULSE_FAULT=slow_start: a loaded machine's start (fold-log replay, recs process)


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
        # For tests only (undocumented): a small bound makes a chunked close out of a few thousand rows.
        self.close_chunk_rows = int(os.environ.get("STOREPULSE_CLOSE_CHUNK_ROWS", "0")) or CLOSE_CHUNK_ROWS
        # ... and a small one writes a full state write's segments ahead of its commit (Checkpoint.stage).
        self.state_spill_bytes = int(os.environ.get("STOREPULSE_STATE_SPILL_BYTES", "0")) or SPILL_BYTES
        # ... and a short one runs the Arrow files' upkeep (retention, compaction) while a test watches.
        self.archive_interval_s = float(os.environ.get("STOREPULSE_ARCHIVE_INTERVAL_S", "0")) or SWEEP_INTERVAL_S
        # ... and with a small bound it merges today's files after a few (stores/compaction.py COMPACT_LIVE_FILES).
        self.compact_live_files = int(os.environ.get("STOREPULSE_COMPACT_LIVE_FILES", "0")) or COMPACT_LIVE_FILES
        self.wakeup = Wakeup()
        self.cpu = CpuLane()   # decoding, folding and commit building take turns in one worker thread
        self.queues: dict[str, BoundedQueue] = {}
        self.sources: dict[str, Any] = {}
        self._source_scopes: dict[str, anyio.CancelScope] = {}
        self._source_tg: TaskGroup | None = None

    async def run(self) -> int:
        try:
            checkpoint = await anyio.to_thread.run_sync(
                functools.partial(Checkpoint.open, self.cfg.storage, log=self.log.bind(component="store")))
        except StoreError as exc:
            self.log.error("store_open_failed", error=str(exc), data_dir=self.cfg.storage.data_dir)
            return 1
        gc_watch = GcWatch()
        gc_watch.install()
        try:
            return await self._run_with(checkpoint, gc_watch)
        finally:
            gc_watch.uninstall()
            checkpoint.close()

    async def _run_with(self, checkpoint: Checkpoint, gc_watch: GcWatch) -> int:
        cfg, log, clock = self.cfg, self.log, self.clock
        for sc in cfg.sources:
            self.queues[sc.name] = BoundedQueue(sc.common.queue.capacity, sc.common.queue.overflow, self.wakeup)
        self.parts = StateParts(cfg)
        self.checkpoint = checkpoint
        checkpoint.compactor.live_min_files = self.compact_live_files
        self.runner = Runner(cfg, checkpoint, self.parts, self.queues, self.wakeup, clock,
                             log.bind(component="runner"), faults=self.faults, cpu=self.cpu,
                             close_chunk_rows=self.close_chunk_rows, state_spill_bytes=self.state_spill_bytes)
        self.alerts = AlertSender(log.bind(component="alerts"))
        self.archive = ArchiveUpkeep(checkpoint, cfg.storage.retention, self._archive_time, log.bind(component="archive"),
                                     interval_s=self.archive_interval_s, compaction=cfg.storage.compaction)
        self.runner.alerts = self.alerts
        recs = cfg.recommendations
        if recs is not None:   # the recommender runs in its own process (daemon/replica/)
            token = load_token(cfg.http.token_file) if cfg.http.token_file else None
            settings = ReplicaSettings(recs, token, cfg.http.max_connections, cfg.http.idle_timeout_s)
            # Test faults: a process that exits at once; a small fold-log bound (replica/compact.py).
            command = [sys.executable, "-c", "raise SystemExit(3)"] if "recs_process_fails" in self.faults else None
            self.runner.replica = ReplicaFeed(settings, log.bind(component="replica_feed"),
                                              sync=self.runner.sync_recommender, command=command)
            if os.environ.get("STOREPULSE_RECS_LOG_MAX_BYTES"):
                self.runner.recs_log_max_bytes = int(os.environ["STOREPULSE_RECS_LOG_MAX_BYTES"])
        try:
            positions = self.runner.restore()
        except StoreError as exc:
            log.error("restore_failed", error=str(exc), data_dir=cfg.storage.data_dir)
            return 1
        for sc in cfg.sources:
            self.sources[sc.name] = self._build_source(sc, positions.get(sc.name))
        self.health = ProcessHealth(started_mono=clock.monotonic(), gc=gc_watch)
        webctx = WebContext(cfg=cfg, clock=clock, runner=self.runner, parts=self.parts, checkpoint=checkpoint,
                            sources=self.sources, queues=self.queues, health=self.health, log=log)
        self.webctx = webctx
        server = open_http_server(webctx)
        try:
            await server.__aenter__()
        except OSError as exc:
            log.error("http_listen_failed", listen=f"{cfg.http.host}:{cfg.http.port}", error=str(exc))
            return 1
        try:
            await self._serve()
        finally:
            with anyio.move_on_after(3, shield=True):
                await server.__aexit__(None, None, None)
        failed = self.runner.statistics().commit_failed
        if failed:
            log.error("stopped_uncommitted", error=failed)
            return 1
        log.info("stopped")
        return 0

    def _archive_time(self) -> int | None:
        """What retention and compaction take for now: the watermark, capped by the wall clock."""
        watermark = self.runner.statistics().watermark_ms
        return archive_time(self.clock.now_ms(), None if watermark == NO_WATERMARK else watermark)

    def _build_source(self, sc: SourceConfig, position: bytes | None) -> Any:
        validator = Validator(sc.name, renames=dict(sc.common.renames), seq_field=getattr(sc, "seq_field", ""),
                              max_future_skew_ms=self.cfg.pipeline.max_future_skew_ms)
        ctx = SourceContext(name=sc.name, queue=self.queues[sc.name], validator=validator, clock=self.clock,
                            log=self.log.bind(source=sc.name), position=position,
                            health=SourceHealth(sc.name, sc.type), cpu=self.cpu)
        return sc.build(ctx)

    async def _run_source(self, name: str, source: Any, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        with anyio.CancelScope() as scope:
            self._source_scopes[name] = scope
            task_status.started()
            self.runner.source_started(name)
            await source.run()

    async def _serve(self) -> None:
        log, runner = self.log, self.runner
        runner_stop = anyio.Event()
        runner_done = anyio.Event()

        async def run_runner() -> None:
            try:
                await runner.run(runner_stop)
            finally:
                runner_done.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(self._signals)
            tg.start_soon(self._monitor)
            tg.start_soon(run_runner)
            tg.start_soon(self.alerts.run)
            tg.start_soon(self.archive.run)
            if runner.replica is not None:
                tg.start_soon(runner.replica.run)
            async with anyio.create_task_group() as source_tg:
                self._source_tg = source_tg
                if "slow_start" in self.faults:
                    await anyio.sleep(SLOW_START_S)
                for name, source in self.sources.items():
                    await source_tg.start(self._run_source, name, source)
                self.health.ready = True
                self.notifier.ready("running")
                log.info("started", listen=f"{self.cfg.http.host}:{self.cfg.http.port}",
                         sources=sorted(self.sources), aggregations=[a.name for a in self.cfg.aggregations],
                         data_dir=self.cfg.storage.data_dir)
                await self.shutdown.wait()
                self.archive.stop()
                self.notifier.stopping()
                log.info("stopping", step="sources")
                source_tg.cancel_scope.cancel()
            log.info("stopping", step="drain", queued=runner.queued())
            runner_stop.set()
            self.wakeup.set()
            with anyio.move_on_after(DRAIN_TIMEOUT_S) as scope:
                await runner_done.wait()
            if scope.cancelled_caught:
                log.error("drain_timeout", queued=runner.queued())
            tg.cancel_scope.cancel()

    async def _signals(self) -> None:
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
            async for signum in signals:
                if signum == signal.SIGHUP:
                    self.notifier.reloading()
                    await self.reload()
                    self.notifier.ready("running (reloaded)")
                    continue
                self.log.info("signal_received", signal=signal.Signals(signum).name)
                self.shutdown.set()

    async def reload(self) -> bool:
        """Re-read the config file and apply the difference; keep the old config on any error."""
        log = self.log
        try:
            new = await anyio.to_thread.run_sync(load_config, self.cfg.path)
        except ConfigErrors as errs:
            log.error("reload_failed", config=self.cfg.path, problems=[str(e) for e in errs.errors])
            return False
        plan = plan_reload(self.cfg, new)
        if plan.empty:
            log.info("reload_unchanged", config=self.cfg.path)
            return True
        if plan.needs_restart:
            log.warning("reload_needs_restart", sections=list(plan.needs_restart))
        async with self.runner.state_lock:
            # The next commit writes the full state: logged fold steps must never be replayed
            # into parts of another config (pipeline/foldlog.py).
            self.runner.state_due = True
            await self._apply_reload(new, plan)
        log.info("reloaded", config=self.cfg.path, **plan.summary())
        return True

    async def _apply_reload(self, new: Config, plan: Any) -> None:
        old = self.cfg
        # Sections that only a restart can change keep their running values.
        merged = dataclasses.replace(new, http=old.http, storage=old.storage, pipeline=old.pipeline,
                                     recommendations=old.recommendations, log_level=old.log_level)
        for name in plan.sources_removed + plan.sources_changed:
            await self._stop_source(name)
        for name in plan.aggregations_removed + plan.aggregations_changed:
            namespaces = self.parts.namespaces(name)
            stored = await anyio.to_thread.run_sync(lambda: {ns: [k for k, _ in self.checkpoint.scan(ns)] for ns in namespaces})
            self.parts.remove_aggregation(name, stored)
        for name in plan.aggregations_added + plan.aggregations_changed:
            self.parts.add_aggregation(next(a for a in merged.aggregations if a.name == name))
        self.cfg = merged
        self.runner.cfg = merged
        self.webctx.cfg = merged
        for name in plan.sources_added + plan.sources_changed:
            sc = merged.source(name)
            self.queues[name] = BoundedQueue(sc.common.queue.capacity, sc.common.queue.overflow, self.wakeup)
            self.runner.add_source(name)
            source = self._build_source(sc, self.runner.positions.get(name))
            self.sources[name] = source
            assert self._source_tg is not None
            await self._source_tg.start(self._run_source, name, source)

    async def _stop_source(self, name: str) -> None:
        scope = self._source_scopes.pop(name, None)
        if scope is not None:
            scope.cancel()
        await anyio.sleep(0)
        self.sources.pop(name, None)
        self.runner.remove_source(name)   # processes what its queue still holds, then forgets it
        self.queues.pop(name, None)

    async def _monitor(self) -> None:
        """Measure event-loop lag; send WATCHDOG=1 (and STATUS=) only while the pipeline keeps committing."""
        notifier = self.notifier
        interval = LOOP_PROBE_S
        if notifier.watchdog_interval_s:
            interval = min(interval, notifier.watchdog_interval_s)
        bounds = WatchdogBounds.for_watchdog(notifier.watchdog_usec, self.cfg.storage.commit_interval_s)
        heartbeat = ServiceHeartbeat(notifier, bounds, log=self.log.bind(component="watchdog"))
        while True:
            t0 = time.monotonic()
            await anyio.sleep(interval)
            now = time.monotonic()
            self.health.loop_lag_ms = max(0.0, (now - t0 - interval) * 1000)
            if not notifier.enabled:
                continue
            st = self.runner.statistics()
            wm_lag_ms = None if st.watermark_ms == NO_WATERMARK else self.clock.now_ms() - st.watermark_ms
            heartbeat.tick(now, loop_lag_ms=self.health.loop_lag_ms, accepted=st.accepted,
                           last_commit_age_ms=st.last_commit_ms, pending_work=st.pending_work,
                           watermark_lag_ms=wm_lag_ms, queued=self.runner.queued(), flush_running_ms=st.flush_running_ms)
