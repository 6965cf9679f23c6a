"""Upkeep of the Arrow files: `[storage.retention]` deletes old days, compaction merges a past day's
small files, and the files left are counted for /stats. One pass at start, then one every `interval_s`.

Each pass runs in a worker thread (listing folders, deleting and merging files, fsyncing) and logs one
line per partition it changed; a failed pass is logged and tried again next time. `stop()` (at
shutdown) makes a pass under way give up at its next file, so it never holds the daemon's exit up.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import anyio

from daemon.config import RetentionConfig
from daemon.errors import StoreError
from daemon.runtime import memory
from daemon.stores.checkpoint import Checkpoint, CompactedPartition, DeletedPartition

SWEEP_INTERVAL_S = 600.0   # partitions are days: ten minutes late is nothing, and a pass is a few listdirs


class ArchiveUpkeep:
    """The task (`run`) and its steps (`sweep`, `compact`), each a thread's work awaited."""

    def __init__(self, checkpoint: Checkpoint, retention: RetentionConfig, now_ms: Callable[[], int | None],
                 log: Any, interval_s: float = SWEEP_INTERVAL_S, compaction: bool = True) -> None:
        self._checkpoint = checkpoint
        self._retention = retention
        self._compaction = compaction
        self._now_ms = now_ms     # stores.retention.archive_time: None while nothing is old yet
        self._log = log
        self._stop = threading.Event()
        self.interval_s = interval_s

    def stop(self) -> None:
        self._stop.set()

    async def run(self) -> None:
        while not self._stop.is_set():
            await self.sweep()
            await self.compact()
            try:
                await anyio.to_thread.run_sync(self._checkpoint.measure_archive)
            except OSError as exc:
                self._log.warning("archive_measure_failed", error=str(exc))
            await anyio.sleep(self.interval_s)

    async def sweep(self) -> list[DeletedPartition]:
        """Delete what `[storage.retention]` no longer keeps."""
        now_ms = self._now_ms()
        if not self._retention.enabled or now_ms is None:
            return []
        try:
            deleted = await anyio.to_thread.run_sync(self._checkpoint.apply_retention, self._retention, now_ms, self._stop)
        except StoreError as exc:
            self._log.error("retention_failed", error=str(exc))
            return []
        for d in deleted:
            self._log.info("retention_deleted", table=d.table, date=d.date, files=d.files, bytes=d.bytes)
        return deleted

    def _compact_in_thread(self, now_ms: int) -> list[CompactedPartition]:
        try:
            return self._checkpoint.compact_archive(now_ms, self._stop)
        finally:
            # The merge's buffers went through pyarrow's pool; mimalloc keeps their pages in this
            # thread's heap, which only this thread can collect (runtime/memory.py).
            memory.release_arrow_pool()

    async def compact(self) -> list[CompactedPartition]:
        """Merge past days' small files, and today's as they pile up (unless `storage.compaction = false`)."""
        now_ms = self._now_ms()
        if not self._compaction or now_ms is None:
            return []
        try:
            done = await anyio.to_thread.run_sync(self._compact_in_thread, now_ms)
        except StoreError as exc:
            self._log.error("compaction_failed", error=str(exc))
            return []
        for c in done:
            if c.error:
                self._log.error("compaction_failed", table=c.table, date=c.date, error=c.error)
            else:
                self._log.info("archive_compacted", table=c.table, date=c.date, files_before=c.files_before,
                               files_after=c.files_after, bytes=c.bytes)
        return done
