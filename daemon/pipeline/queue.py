"""Bounded queue of deliveries between a source and the runner; capacity counted in events.

Overflow is a named policy (Vector's WhenFull): `block` makes the producer wait,
`drop_oldest` evicts the oldest deliveries, `drop_newest` refuses the incoming one.
Every dropped event is counted.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import anyio

from daemon.errors import QueueFull
from daemon.events import EventBatch, Rejected


@dataclass(slots=True)
class Delivery:
    """What a source hands the runner: validated events, rejects, and the source position after them."""

    batch: EventBatch
    rejected: list[Rejected] = field(default_factory=list)
    position: bytes | None = None          # source position once this delivery is committed
    received_ms: int = 0
    acked: anyio.Event | None = None       # set once committed (ingest ack = "durable")
    dropped: bool = False                  # true when the queue dropped it (acked is still set)

    @property
    def size(self) -> int:
        return len(self.batch)


@dataclass(frozen=True, slots=True)
class QueueStats:
    depth: int
    deliveries: int
    capacity: int
    overflow: str
    dropped_events: int
    dropped_deliveries: int
    blocked_puts: int
    put_events: int


class Wakeup:
    """A level-triggered signal shared by several queues and their one consumer."""

    def __init__(self) -> None:
        self._event = anyio.Event()

    def set(self) -> None:
        self._event.set()

    async def wait(self, timeout_s: float) -> None:
        with anyio.move_on_after(timeout_s):
            await self._event.wait()
        if self._event.is_set():
            self._event = anyio.Event()


class BoundedQueue:
    """FIFO of deliveries whose total event count stays <= capacity (one oversized delivery may enter an empty queue)."""

    def __init__(self, capacity: int, overflow: str = "block", wakeup: Wakeup | None = None) -> None:
        if overflow not in ("block", "drop_oldest", "drop_newest"):
            raise ValueError(f"unknown overflow policy {overflow!r}")
        self.capacity = capacity
        self.overflow = overflow
        self._items: deque[Delivery] = deque()
        self._depth = 0
        self._space = anyio.Event()
        self._wakeup = wakeup or Wakeup()
        self._dropped_events = 0
        self._dropped_deliveries = 0
        self._blocked_puts = 0
        self._put_events = 0
        self._closed = False

    @property
    def depth(self) -> int:
        return self._depth

    def _fits(self, size: int) -> bool:
        return self._depth + size <= self.capacity or not self._items

    def _append(self, d: Delivery) -> None:
        self._items.append(d)
        self._depth += d.size
        self._put_events += d.size
        self._wakeup.set()

    def _drop(self, d: Delivery) -> None:
        self._dropped_events += d.size
        self._dropped_deliveries += 1
        d.dropped = True
        if d.acked is not None:
            d.acked.set()

    def put_nowait(self, d: Delivery) -> None:
        """Enqueue without waiting; under `block` raise QueueFull when it does not fit."""
        if self._fits(d.size) or d.size == 0:
            self._append(d)
        elif self.overflow == "drop_newest":
            self._drop(d)
        elif self.overflow == "drop_oldest":
            while self._items and not self._fits(d.size):
                old = self._items.popleft()
                self._depth -= old.size
                self._drop(old)
            self._append(d)
        else:
            raise QueueFull(f"queue full ({self._depth}/{self.capacity} events)")

    async def put(self, d: Delivery) -> None:
        """Enqueue; under `block` wait for room (back-pressure reaches the producer)."""
        if self.overflow != "block" or self._fits(d.size) or d.size == 0:
            self.put_nowait(d)
            return
        self._blocked_puts += 1
        while not self._fits(d.size):
            if self._space.is_set():
                self._space = anyio.Event()
            await self._space.wait()
        self._append(d)

    def get_nowait(self) -> Delivery | None:
        """The oldest delivery, or None when empty."""
        if not self._items:
            return None
        d = self._items.popleft()
        self._depth -= d.size
        self._space.set()
        return d

    def statistics(self) -> QueueStats:
        return QueueStats(depth=self._depth, deliveries=len(self._items), capacity=self.capacity,
                          overflow=self.overflow, dropped_events=self._dropped_events,
                          dropped_deliveries=self._dropped_deliveries, blocked_puts=self._blocked_puts,
                          put_events=self._put_events)
