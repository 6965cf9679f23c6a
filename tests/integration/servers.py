"""Loopback test servers: a shop's polling API and websocket feed over one event list, with fault injection.

`ShopServer` listens on 127.0.0.1 (port 0 the first time, the SAME port after `stop()`/`start()`),
records what it sees, and takes faults from a queue: error statuses (with Retry-After),
slow answers, websocket drops. While stopped, connections are refused.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import anyio
import orjson
from aiohttp import WSMsgType, web

from daemon.clock import SystemClock
from daemon.pipeline.queue import BoundedQueue
from daemon.pipeline.validate import Validator
from daemon.sources.base import SourceContext, SourceHealth

BASE_TS_MS = 1_700_000_000_000


def make_events(n: int, *, first_seq: int = 1, ts_ms: int | None = None) -> list[dict[str, Any]]:
    """`n` valid view events with seq first_seq.. and event_id "e<seq>" (ts defaults to a minute ago)."""
    ts = ts_ms if ts_ms is not None else time.time_ns() // 1_000_000 - 60_000
    return [{"event_id": f"e{s}", "ts": ts + s, "type": "view", "user_id": f"u{s % 7}", "item_id": s % 13,
             "seq": s} for s in range(first_seq, first_seq + n)]


@dataclass(frozen=True, slots=True)
class Fault:
    """One injected answer: a status (0 = answer normally) and body, after an optional delay."""

    status: int = 0
    delay_s: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b"injected fault"


@dataclass(frozen=True, slots=True)
class Seen:
    """One request as the server saw it."""

    path: str
    query: dict[str, str]
    headers: dict[str, str]
    at_s: float                      # time.monotonic()
    status: int = 0


class ShopServer:
    """Serves `events` as cursor pages (GET /events) and as a seq feed (GET /feed, websocket)."""

    def __init__(self, events: list[dict[str, Any]], *, page_form: str = "object", frame_size: int = 1,
                 binary_frames: bool = False, require_subscribe: bool = False, answer_pings: bool = True,
                 honour_from_seq: bool = True, max_limit: int = 10_000) -> None:
        self.events = list(events)
        self.page_form = page_form              # "object" (cursor pages) | "ndjson" (everything, ETag only)
        self.frame_size = frame_size            # events per websocket frame (1 = a bare object)
        self.binary_frames = binary_frames      # send frames as binary instead of text
        self.require_subscribe = require_subscribe
        self.answer_pings = answer_pings
        self.honour_from_seq = honour_from_seq  # False: every connection replays the feed from the start
        self.max_limit = max_limit
        self.port = 0
        self.faults: deque[Fault] = deque()     # consumed by GET /events and the websocket handshake
        self.ws_drop_after: deque[int] = deque()  # per connection: abort after sending this many events
        self.requests: list[Seen] = []
        self.ws_connects: list[Seen] = []
        self.ws_received: list[bytes] = []
        self.ws_pings = 0
        self.ws_sent_seqs: list[int] = []
        self._runner: web.AppRunner | None = None
        self._sockets: set[web.WebSocketResponse] = set()
        self._appended = asyncio.Event()

    # lifecycle ------------------------------------------------------------------------------
    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/events", self._page)
        app.router.add_get("/feed", self._feed)
        runner = web.AppRunner(app, shutdown_timeout=0.5, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", self.port, reuse_address=True)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._runner = runner

    async def stop(self) -> None:
        """Close every websocket (going away) and the listener; later connects are refused."""
        for ws in list(self._sockets):
            with anyio.move_on_after(0.5):
                await ws.close(code=1001, message=b"server stopping")
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> ShopServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def url(self, path: str, scheme: str = "http") -> str:
        return f"{scheme}://127.0.0.1:{self.port}{path}"

    # fault injection and live events ----------------------------------------------------
    def fail_next(self, n: int, status: int = 500, *, retry_after: str | None = None, delay_s: float = 0.0) -> None:
        headers = {"Retry-After": retry_after} if retry_after is not None else {}
        self.faults.extend(Fault(status, delay_s, headers) for _ in range(n))

    def slow_next(self, n: int, delay_s: float) -> None:
        self.faults.extend(Fault(0, delay_s) for _ in range(n))

    def garbage_next(self, n: int, body: bytes = b"<html>\n<h1>Bad gateway</h1>\n</html>") -> None:
        """Answer 200 with a body that is not a page."""
        self.faults.extend(Fault(200, body=body) for _ in range(n))

    def append(self, events: list[dict[str, Any]]) -> None:
        """New events arrive: pages grow and open feeds send them."""
        self.events.extend(events)
        self._appended.set()
        self._appended = asyncio.Event()

    def polls(self) -> list[Seen]:
        return [r for r in self.requests if r.path == "/events"]

    # handlers -------------------------------------------------------------------------------
    def _seen(self, request: web.Request, status: int = 0) -> Seen:
        return Seen(request.path, dict(request.query), dict(request.headers), time.monotonic(), status)

    async def _fault(self, request: web.Request) -> web.Response | None:
        if not self.faults:
            return None
        fault = self.faults.popleft()
        if fault.delay_s:
            await asyncio.sleep(fault.delay_s)
        if fault.status:
            self.requests.append(self._seen(request, fault.status))
            return web.Response(status=fault.status, headers=fault.headers, body=fault.body)
        return None

    async def _page(self, request: web.Request) -> web.StreamResponse:
        answer = await self._fault(request)
        if answer is not None:
            return answer
        if self.page_form == "ndjson":
            start, chunk, body_events = 0, self.events, None
        else:
            raw = request.query.get("cursor", "c0")
            start = int(raw[1:])
            limit = min(int(request.query.get("limit", "100")), self.max_limit)
            chunk = self.events[start:start + limit]
            body_events = chunk
        end = start + len(chunk)
        etag = f'"{start}-{end}"'
        if request.headers.get("If-None-Match") == etag:
            self.requests.append(self._seen(request, 304))
            return web.Response(status=304, headers={"ETag": etag})
        self.requests.append(self._seen(request, 200))
        if body_events is None:
            body = b"".join(orjson.dumps(e) + b"\n" for e in chunk)
        else:
            body = orjson.dumps({"events": body_events, "next_cursor": f"c{end}"})
        return web.Response(body=body, content_type="application/json", headers={"ETag": etag})

    async def _feed(self, request: web.Request) -> web.StreamResponse:
        answer = await self._fault(request)
        if answer is not None:
            return answer
        self.ws_connects.append(self._seen(request, 101))
        ws = web.WebSocketResponse(autoping=False)
        await ws.prepare(request)
        self._sockets.add(ws)
        subscribed = anyio.Event()
        if not self.require_subscribe:
            subscribed.set()
        from_seq = int(request.query.get("from_seq", "0")) if self.honour_from_seq else 0
        drop_after = self.ws_drop_after.popleft() if self.ws_drop_after else None
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._send_feed, ws, request, from_seq, subscribed, drop_after)
                async for msg in ws:
                    if msg.type is WSMsgType.PING:
                        self.ws_pings += 1
                        if self.answer_pings:
                            await ws.pong(msg.data)
                    elif msg.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                        data = msg.data.encode() if isinstance(msg.data, str) else msg.data
                        self.ws_received.append(data)
                        subscribed.set()
                tg.cancel_scope.cancel()
        finally:
            self._sockets.discard(ws)
        return ws

    async def _send_feed(self, ws: web.WebSocketResponse, request: web.Request, from_seq: int,
                         subscribed: anyio.Event, drop_after: int | None) -> None:
        await subscribed.wait()
        pos = next((i for i, e in enumerate(self.events) if e["seq"] >= from_seq), len(self.events))
        sent = 0
        while not ws.closed:
            appended = self._appended
            while pos < len(self.events):
                chunk = self.events[pos:pos + self.frame_size]
                if drop_after is not None and sent + len(chunk) > drop_after:
                    # an abrupt drop: frames still in the socket buffer are lost, as on a real network
                    assert request.transport is not None
                    request.transport.abort()
                    return
                frame = orjson.dumps(chunk[0] if self.frame_size == 1 else chunk)
                if self.binary_frames:
                    await ws.send_bytes(frame)
                else:
                    await ws.send_str(frame.decode())
                self.ws_sent_seqs.extend(e["seq"] for e in chunk)
                sent += len(chunk)
                pos += len(chunk)
            await appended.wait()


# client-side helpers --------------------------------------------------------------------------
class RecordingLog:
    """A stand-in for a bound structlog logger that keeps (level, event, key-values)."""

    def __init__(self, records: list[tuple[str, str, dict[str, Any]]] | None = None, **bound: Any) -> None:
        self.records = records if records is not None else []
        self._bound = bound

    def bind(self, **kw: Any) -> RecordingLog:
        return RecordingLog(self.records, **(self._bound | kw))

    def _log(self, level: str, event: str, **kw: Any) -> None:
        self.records.append((level, event, self._bound | kw))

    def debug(self, event: str, **kw: Any) -> None:
        self._log("debug", event, **kw)

    def info(self, event: str, **kw: Any) -> None:
        self._log("info", event, **kw)

    def warning(self, event: str, **kw: Any) -> None:
        self._log("warning", event, **kw)

    def error(self, event: str, **kw: Any) -> None:
        self._log("error", event, **kw)

    def events(self, name: str) -> list[dict[str, Any]]:
        return [kw for _, event, kw in self.records if event == name]


def make_context(source_type: str, *, capacity: int = 1000, position: bytes | None = None,
                 seed: int = 1) -> SourceContext:
    """A SourceContext as app.py builds it, with a recording logger and a seeded rng."""
    return SourceContext(name="orders", queue=BoundedQueue(capacity, "block"),
                         validator=Validator("orders", seq_field="seq"), clock=SystemClock(),
                         log=RecordingLog(source="orders"), position=position, rng=random.Random(seed),
                         health=SourceHealth("orders", source_type))


class Drain:
    """Empties a source's queue, keeping event ids and the position of each delivery."""

    def __init__(self, queue: Any) -> None:
        self.queue = queue
        self.ids: list[str] = []
        self.positions: list[bytes | None] = []
        self.sizes: list[int] = []

    def pull(self) -> int:
        n = 0
        while (d := self.queue.get_nowait()) is not None:
            self.ids.extend(d.batch.event_id)
            self.positions.append(d.position)
            self.sizes.append(len(d.batch))
            n += 1
        return n


async def run_until(source: Any, done: Any, timeout_s: float, *, drain: Drain | None = None,
                    poll_s: float = 0.005) -> None:
    """Run `source.run()` until `done()` is true (draining the queue meanwhile), then cancel it."""
    async with anyio.create_task_group() as tg:
        tg.start_soon(source.run)
        with anyio.fail_after(timeout_s):
            while True:
                if drain is not None:
                    drain.pull()
                if done():
                    break
                await anyio.sleep(poll_s)
        tg.cancel_scope.cancel()
