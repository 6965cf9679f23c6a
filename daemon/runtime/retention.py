"""The task that applies `[storage.retention]`: a sweep at start, then one every `interval_s`.

Each sweep runs in a worker thread (listing folders, deleting files, fsyncing their parents) and
logs one `retention_deleted` line per partition; a failed sweep is logged and tried again next time.
"""

from __future__ import annotations

from typing import Any

import anyio

from daemon.clock import Clock
from daemon.config import RetentionConfig
from daemon.errors import StoreError
from daemon.stores.checkpoint import Checkpoint, DeletedPartition

SWEEP_INTERVAL_S = 600.0   # partitions are days: ten minutes late is nothing, and a sweep is a few listdirs


class RetentionSweeper:
    def __init__(self, checkpoint: Checkpoint, retention: RetentionConfig, clock: Clock, log: Any,
                 interval_s: float = SWEEP_INTERVAL_S) -> None:
        self._checkpoint = checkpoint
        self._retention = retention
        self._clock = clock
        self._log = log
        self.interval_s = interval_s

    async def run(self) -> None:
        if not self._retention.enabled:
            return
        while True:
            await self.sweep()
            await anyio.sleep(self.interval_s)

    async def sweep(self) -> list[DeletedPartition]:
        try:
            deleted = await anyio.to_thread.run_sync(
                self._checkpoint.apply_retention, self._retention, self._clock.now_ms())
        except StoreError as exc:
            self._log.error("retention_failed", error=str(exc))
            return []
        for d in deleted:
            self._log.info("retention_deleted", table=d.table, date=d.date, files=d.files, bytes=d.bytes)
        return deleted
