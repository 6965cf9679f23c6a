"""The Source role and what every source is given: its queue, validator, clock, logger, position."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from daemon.clock import Clock
from daemon.pipeline.queue import BoundedQueue, Delivery
from daemon.pipeline.validate import Decoded, Validator
from daemon.runtime.cpu import CpuLane

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class SourceStats:
    name: str
    type: str
    state: str                 # "starting" | "connected" | "polling" | "backoff" | "stopped"
    received: int              # events decoded from the wire (accepted + rejected)
    accepted: int
    rejected: int
    requests: int              # polls, frames or POSTs
    errors: int
    reconnects: int
    last_error: str
    lag_ms: int | None         # now - newest event ts seen
    connected: bool


@dataclass(slots=True)
class SourceHealth:
    """Mutable counters a source updates; `snapshot()` turns them into SourceStats."""

    name: str
    type: str
    state: str = "starting"
    received: int = 0
    accepted: int = 0
    rejected: int = 0
    requests: int = 0
    errors: int = 0
    reconnects: int = 0
    last_error: str = ""
    newest_ts_ms: int | None = None
    connected: bool = False

    def snapshot(self, now_ms: int) -> SourceStats:
        lag = None if self.newest_ts_ms is None else max(0, now_ms - self.newest_ts_ms)
        return SourceStats(self.name, self.type, self.state, self.received, self.accepted, self.rejected,
                           self.requests, self.errors, self.reconnects, self.last_error, lag, self.connected)


@dataclass(slots=True)
class SourceContext:
    """Everything a built source needs; the source does I/O only inside run()."""

    name: str
    queue: BoundedQueue
    validator: Validator
    clock: Clock
    log: Any                               # a bound structlog logger
    position: bytes | None = None          # restored from the last commit (the source's own encoding)
    rng: random.Random = field(default_factory=random.Random)
    health: SourceHealth | None = None
    cpu: CpuLane = field(default_factory=CpuLane)   # the daemon's shared lane; tests may leave the default

    def __post_init__(self) -> None:
        if self.health is None:
            self.health = SourceHealth(self.name, "unknown")

    def decode(self, payload: bytes) -> Decoded:
        """Decode and validate one payload and count it in the source's health."""
        return self.count(self.validator.decode(payload, self.clock.now_ms()))

    async def decode_off_loop(self, payload: bytes) -> Decoded:
        """decode() in a worker thread: a large body (an ingest POST, a poll page) does not hold the
        event loop, and every other request, for milliseconds."""
        now_ms = self.clock.now_ms()
        return self.count(await self.run_off_loop(self.validator.decode, payload, now_ms))

    async def run_off_loop(self, fn: Callable[..., T], *args: Any) -> T:
        """fn(*args) in the daemon's CPU lane (a worker thread; see runtime/cpu.py)."""
        return await self.cpu.run(fn, *args)

    def count(self, decoded: Decoded) -> Decoded:
        """Count a decoded payload in the source's health; returns it."""
        h = self.health
        h.requests += 1
        h.received += decoded.total
        h.accepted += len(decoded.batch)
        h.rejected += len(decoded.rejected)
        if decoded.batch.ts:
            newest = max(decoded.batch.ts)
            if h.newest_ts_ms is None or newest > h.newest_ts_ms:
                h.newest_ts_ms = newest
        return decoded

    async def deliver(self, decoded: Decoded, position: bytes | None) -> None:
        """Hand a decoded payload to the runner; waits under back-pressure (overflow = block)."""
        await self.queue.put(Delivery(batch=decoded.batch, rejected=decoded.rejected, position=position,
                                      received_ms=self.clock.now_ms()))


class Source(Protocol):
    name: str

    async def run(self) -> None:
        """Fetch until cancelled; never raises for a peer's failure (backs off and retries)."""

    def statistics(self) -> SourceStats: ...
