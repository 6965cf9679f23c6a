"""Anomaly webhooks: POST each committed alert to its aggregation's `alert_url`, retried, bounded.

Alerts are handed over after the commit that holds them (so a crash can lose a webhook, never
send one for an alert that is not stored: at most once). The queue is bounded: when a receiver
is down for long, the oldest alerts are dropped and counted; every one is still in LMDB and Arrow.
"""

from __future__ import annotations

import random
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

import aiohttp
import anyio

from daemon.sources.backoff import Backoff, parse_retry_after

MAX_QUEUED = 1000
MAX_ATTEMPTS = 6
TIMEOUT_S = 5.0


@dataclass(frozen=True, slots=True)
class AlertStats:
    queued: int
    sent: int
    failed: int
    dropped: int


class AlertSender:
    """One task that delivers alerts in order, with exponential backoff per alert."""

    def __init__(self, log: Any, *, max_queued: int = MAX_QUEUED, max_attempts: int = MAX_ATTEMPTS,
                 rng: random.Random | None = None) -> None:
        self.log = log
        self.max_attempts = max_attempts
        self._queue: deque[tuple[str, bytes]] = deque()
        self._max_queued = max_queued
        self._ready = anyio.Event()
        self._rng = rng or random.Random()
        self._sent = self._failed = self._dropped = 0

    def submit(self, url: str, body: bytes) -> None:
        """Queue one alert (never blocks; drops the oldest past the bound)."""
        if len(self._queue) >= self._max_queued:
            self._queue.popleft()
            self._dropped += 1
        self._queue.append((url, body))
        self._ready.set()

    async def run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=TIMEOUT_S)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            while True:
                if not self._queue:
                    self._ready = anyio.Event()
                    await self._ready.wait()
                    continue
                url, body = self._queue[0]
                await self._deliver(session, url, body)
                self._queue.popleft()

    async def _deliver(self, session: aiohttp.ClientSession, url: str, body: bytes) -> None:
        backoff = Backoff(base_s=0.5, cap_s=30.0)
        for attempt in range(1, self.max_attempts + 1):
            retry_after = None
            try:
                async with session.post(url, data=body, headers={"Content-Type": "application/json"}) as resp:
                    if resp.status < 300:
                        self._sent += 1
                        return
                    error = f"HTTP {resp.status}"
                    retry_after = parse_retry_after(resp.headers.get("Retry-After"), time.time())
            except (aiohttp.ClientError, TimeoutError) as exc:
                error = f"{type(exc).__name__}: {exc}"
            if attempt == self.max_attempts:
                break
            delay, backoff = backoff.next(self._rng, retry_after)
            self.log.warning("alert_retry", attempt=attempt, delay_s=round(delay, 3), error=error[:200])
            await anyio.sleep(delay)
        self._failed += 1
        self.log.error("alert_failed", attempts=self.max_attempts, error=error[:200])

    def statistics(self) -> AlertStats:
        return AlertStats(len(self._queue), self._sent, self._failed, self._dropped)
