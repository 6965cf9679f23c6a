"""A fixed storefront event list served across daemon restarts: orders as cursor pages, clicks as a websocket feed.

`FeedThread` runs two `ShopServer`s in a background thread with its own event loop and releases
the events in event-time order over `release_s` of wall time, so a daemon that is killed and
restarted resumes from its committed cursor/seq while the shop keeps "selling".
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

from daemon.storefront.generator import CLICK_TYPES, ORDER_TYPES, Generator
from tests.integration.servers import ShopServer

TICK_S = 0.02


def storefront_events(n: int, *, seed: int, start_ms: int, rate: float) -> list[dict[str, Any]]:
    """`n` deterministic storefront events from `start_ms` on (`rate` events per second of event time)."""
    return Generator(seed, start_ms=start_ms, rate=rate).next_batch(n)


def split_feed(events: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(orders, clicks): carts/removals/purchases for polling, views/searches for the websocket, each with seq 1.."""
    orders = [e for e in events if e["type"] in ORDER_TYPES]
    clicks = [e for e in events if e["type"] in CLICK_TYPES]
    assert len(orders) + len(clicks) == len(events)
    return ([{**e, "seq": i} for i, e in enumerate(orders, 1)],
            [{**e, "seq": i} for i, e in enumerate(clicks, 1)])


class FeedThread:
    """Serves `orders` (GET /events) and `clicks` (websocket /feed), releasing them over `release_s` seconds."""

    def __init__(self, orders: list[dict[str, Any]], clicks: list[dict[str, Any]], *, release_s: float) -> None:
        self._orders = orders
        self._clicks = clicks
        self.release_s = release_s
        self.orders_server = ShopServer([], max_limit=1000)
        self.clicks_server = ShopServer([])
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._released = threading.Event()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None

    @property
    def poll_url(self) -> str:
        return self.orders_server.url("/events")

    @property
    def ws_url(self) -> str:
        return self.clicks_server.url("/feed", "ws")

    def wait_released(self, timeout_s: float) -> None:
        """Wait until every event is visible to the daemon."""
        if not self._released.wait(timeout_s):
            raise AssertionError(f"feed not fully released after {timeout_s}s")

    def __enter__(self) -> FeedThread:
        self._thread = threading.Thread(target=self._main, name="shop-feed", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise AssertionError(f"feed servers did not start: {self._error!r}")
        if self._error is not None:
            raise self._error
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(10)

    def _main(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # noqa: BLE001 - reported to the test thread
            self._error = exc
            self._ready.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        await self.orders_server.start()
        await self.clicks_server.start()
        self._ready.set()
        try:
            await self._release()
            await self._stop.wait()
        finally:
            await self.clicks_server.stop()
            await self.orders_server.stop()

    async def _release(self) -> None:
        """Append events to both servers in event-time order, as wall time passes."""
        merged = sorted([(e["ts"], 0, i) for i, e in enumerate(self._orders)]
                        + [(e["ts"], 1, i) for i, e in enumerate(self._clicks)])
        first_ts, last_ts = merged[0][0], merged[-1][0]
        speed = (last_ts - first_ts) / max(self.release_s, 1e-6) / 1000   # event ms per wall ms
        t0 = time.monotonic()
        pos = 0
        while pos < len(merged) and not self._stop.is_set():
            horizon = first_ts + (time.monotonic() - t0) * 1000 * speed if self.release_s > 0 else last_ts
            new: tuple[list[dict[str, Any]], list[dict[str, Any]]] = ([], [])
            while pos < len(merged) and merged[pos][0] <= horizon:
                _, which, i = merged[pos]
                new[which].append((self._orders, self._clicks)[which][i])
                pos += 1
            if new[0]:
                self.orders_server.append(new[0])
            if new[1]:
                self.clicks_server.append(new[1])
            if pos < len(merged):
                await asyncio.sleep(TICK_S)
        self._released.set()
