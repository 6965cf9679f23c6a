"""Replay fixed event streams to a daemon in another process: a polling API and a websocket feed on loopback.

`ReplayServer` runs two `ShopServer`s (tests/integration/servers.py) on an asyncio loop in a
background thread: one serves the polling stream as cursor pages (GET /events), the other the
websocket stream as frames of `frame_size` events (GET /feed, every event needs a `seq`).
Both answer as fast as the daemon asks; `append` adds events later, from the test's thread.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from tests.integration.servers import ShopServer

START_TIMEOUT_S = 10.0


class ReplayServer:
    """Two loopback shop servers (poll, feed) driven by a private event loop thread."""

    def __init__(self, poll_events: Sequence[dict[str, Any]], feed_events: Sequence[dict[str, Any]],
                 *, frame_size: int = 100) -> None:
        self.poll = ShopServer(list(poll_events))
        self.feed = ShopServer(list(feed_events), frame_size=frame_size)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="replay-server", daemon=True)

    def start(self) -> None:
        self._thread.start()
        self._call(self._start_both())

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        try:
            self._call(self._stop_both())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(START_TIMEOUT_S)
            if not self._thread.is_alive():
                self._loop.close()

    @property
    def poll_url(self) -> str:
        return self.poll.url("/events")

    @property
    def feed_url(self) -> str:
        return self.feed.url("/feed", "ws")

    def append(self, poll_events: Sequence[dict[str, Any]], feed_events: Sequence[dict[str, Any]]) -> None:
        """Add events at the end of both streams (open feeds send them at once)."""
        async def add() -> None:
            self.poll.append(list(poll_events))
            self.feed.append(list(feed_events))
        self._call(add())

    def served(self) -> tuple[int, int]:
        """(events after the furthest cursor the poller asked for, events sent on the feed)."""
        async def read() -> tuple[int, int]:
            cursors = [int(r.query.get("cursor", "c0")[1:]) for r in self.poll.polls() if r.status == 200]
            return max(cursors, default=0), len(self.feed.ws_sent_seqs)
        return self._call(read())

    def _call(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(START_TIMEOUT_S)

    async def _start_both(self) -> None:
        await self.poll.start()
        await self.feed.start()

    async def _stop_both(self) -> None:
        await self.feed.stop()
        await self.poll.stop()


@contextmanager
def open_replay(poll_events: Sequence[dict[str, Any]], feed_events: Sequence[dict[str, Any]],
                *, frame_size: int = 100) -> Iterator[ReplayServer]:
    """A started ReplayServer, stopped on exit."""
    server = ReplayServer(poll_events, feed_events, frame_size=frame_size)
    server.start()
    try:
        yield server
    finally:
        server.stop()
