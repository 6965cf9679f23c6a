"""The simulated shop on the wire: a polling API and a websocket feed over a live Generator (aiohttp).

The stream is split by event type so a daemon consuming both sources sees each event once:
`GET /api/events` (polling) serves the "orders" half (cart, remove_from_cart, purchase) and
`GET /feed` (websocket) the "clicks" half (view, search). `/api/all` and `/feed?channel=all` serve everything.
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import anyio
import orjson
from aiohttp import WSMsgType, web

from daemon.clock import Clock, SystemClock
from daemon.storefront.generator import CLICK_TYPES, ORDER_TYPES, AnomalyPlan, Generator, encode_ndjson

CHANNELS = ("orders", "clicks", "all")
POLL_ROUTES = {"events": "orders", "orders": "orders", "clicks": "clicks", "all": "all"}  # /api/<route>
DEFAULT_LIMIT = 500
MAX_LIMIT = 10_000


@dataclass(frozen=True, slots=True, kw_only=True)
class StorefrontConfig:
    """How the storefront serves: where, how fast, which seed, how much it keeps, which faults."""

    host: str = "127.0.0.1"
    port: int = 8900                  # 0 picks a free port
    rate: float = 200.0               # events per second of event time (= wall time)
    seed: int = 1
    anomalies: bool = False
    plan: AnomalyPlan = field(default_factory=AnomalyPlan)
    start_ms: int | None = None       # first event time; None = the clock's now
    keep_events: int = 1_000_000      # tail kept per channel; older cursors restart at the oldest kept
    fail_rate: float = 0.0            # fraction of poll requests answered 503
    tick_s: float = 0.02              # how often the generator catches up with the clock
    frame_events: int = 100           # events per websocket frame, at most
    send_timeout_s: float = 10.0      # a websocket client that cannot take a frame this long is dropped


@dataclass(frozen=True, slots=True, kw_only=True)
class StorefrontStats:
    """A snapshot of what the storefront generated and served."""

    emitted: int
    last_ts_ms: int
    incidents: int
    heads: dict[str, int]
    oldest: dict[str, int]
    polls: int
    not_modified: int
    failed_polls: int
    feed_clients: int
    feed_dropped: int


class EventLog:
    """A bounded tail of serialized events, addressed by offset (position since the log began)."""

    __slots__ = ("_items", "_base", "_keep", "_slack")

    def __init__(self, keep: int, first: int = 0) -> None:
        self._items: list[bytes] = []
        self._base = first   # the position of the first event appended
        self._keep = max(1, keep)
        self._slack = max(1, keep // 16)     # trim in chunks: one memmove per `slack` appends

    @property
    def oldest(self) -> int:
        return self._base

    @property
    def head(self) -> int:
        return self._base + len(self._items)

    def extend(self, blobs: list[bytes]) -> None:
        self._items.extend(blobs)
        excess = len(self._items) - self._keep
        if excess >= self._slack:
            del self._items[:excess]
            self._base += excess

    def read(self, pos: int, limit: int) -> tuple[int, list[bytes]]:
        """(start, events): up to `limit` events from `pos`, clamped into [oldest, head]."""
        start = min(max(pos, self._base), self.head)
        i = start - self._base
        return start, self._items[i:i + limit]


class Storefront:
    """The live shop: a Generator pumped by the clock into one EventLog per channel."""

    def __init__(self, config: StorefrontConfig, clock: Clock) -> None:
        self.config, self._clock = config, clock
        start_ms = clock.now_ms() if config.start_ms is None else config.start_ms
        self.generator = Generator(config.seed, start_ms, config.rate, config.anomalies, plan=config.plan)
        # Positions (the poll cursor, the feed's seq) start at start_ms * 1000, not at 0: a storefront
        # restarted later numbers its events above everything the one before it served (at under 1000
        # events per ms), so a daemon that kept its position resumes with the new events. From 0, the
        # daemon's stored seq was above the new numbering and its websocket source skipped the new
        # events as replays until the numbering passed it (~40 s of clicks at the default rate).
        self.logs = {name: EventLog(config.keep_events, first=max(0, start_ms) * 1000) for name in CHANNELS}
        self._appended = anyio.Event()
        self._fail_rng = random.Random(config.seed * 977 + 3)
        self._closing = False
        self._max_pump = max(1000, int(config.rate))   # a stalled loop catches up over several ticks
        self._polls = self._not_modified = self._failed = self._clients = self._dropped = 0

    def pump(self, now_ms: int | None = None) -> int:
        """Append the events generated up to `now_ms` (default: the clock) and wake the feeds."""
        events = self.generator.events_until(self._clock.now_ms() if now_ms is None else now_ms, self._max_pump)
        if not events:
            return 0
        blobs = encode_ndjson(events).split(b"\n")[:-1]
        orders = [b for b, ev in zip(blobs, events) if ev["type"] in ORDER_TYPES]
        clicks = [b for b, ev in zip(blobs, events) if ev["type"] in CLICK_TYPES]
        self.logs["all"].extend(blobs)
        self.logs["orders"].extend(orders)
        self.logs["clicks"].extend(clicks)
        self._wake()
        return len(events)

    async def run(self) -> None:
        """Pump every `tick_s` until cancelled."""
        while True:
            self.pump()
            await anyio.sleep(self.config.tick_s)

    def close(self) -> None:
        """Tell every feed to say goodbye (code 1001)."""
        self._closing = True
        self._wake()

    @property
    def closing(self) -> bool:
        return self._closing

    def admit_poll(self) -> bool:
        """Count a poll; False when fault injection (`fail_rate`) says to answer 503."""
        self._polls += 1
        if self.config.fail_rate > 0 and self._fail_rng.random() < self.config.fail_rate:
            self._failed += 1
            return False
        return True

    def note_not_modified(self) -> None:
        self._not_modified += 1

    def note_feed(self, opened: int = 0, dropped: int = 0) -> None:
        self._clients += opened
        self._dropped += dropped

    def _wake(self) -> None:
        self._appended.set()
        self._appended = anyio.Event()

    async def wait_appended(self) -> None:
        """Wait until new events are appended or the storefront closes."""
        await self._appended.wait()

    def statistics(self) -> StorefrontStats:
        gen = self.generator.statistics()
        return StorefrontStats(
            emitted=gen.emitted, last_ts_ms=gen.last_ts_ms, incidents=gen.incidents,
            heads={k: log.head for k, log in self.logs.items()},
            oldest={k: log.oldest for k, log in self.logs.items()},
            polls=self._polls, not_modified=self._not_modified, failed_polls=self._failed,
            feed_clients=self._clients, feed_dropped=self._dropped)


STOREFRONT = web.AppKey("storefront", Storefront)


def _bad_request(message: str) -> web.Response:
    return web.json_response({"error": message}, status=400)


def _int_param(request: web.Request, name: str) -> int | None:
    text = request.query.get(name, "")
    if text == "":
        return None
    try:
        return int(text)
    except ValueError:
        raise web.HTTPBadRequest(text=orjson.dumps({"error": f"{name} must be an integer"}).decode(),
                                 content_type="application/json") from None


def etag_matches(if_none_match: str, etag: str) -> bool:
    """Whether an If-None-Match header value names `etag` (weak tags compare equal, `*` matches)."""
    tags = [t.strip().removeprefix("W/") for t in if_none_match.split(",")]
    return "*" in tags or etag in tags


async def poll_page(request: web.Request) -> web.StreamResponse:
    """GET /api/{events|orders|clicks|all}?cursor=C&limit=L → {"events": [...], "next_cursor": "..."}."""
    sf = request.app[STOREFRONT]
    channel = POLL_ROUTES.get(request.match_info["route"])
    if channel is None:
        raise web.HTTPNotFound()
    if not sf.admit_poll():
        return web.json_response({"error": "injected failure"}, status=503, headers={"Retry-After": "1"})
    cursor = _int_param(request, "cursor")
    limit = _int_param(request, "limit")
    limit = DEFAULT_LIMIT if limit is None else limit
    if limit < 1:
        return _bad_request("limit must be >= 1")
    log = sf.logs[channel]
    start, blobs = log.read(log.oldest if cursor is None else cursor, min(limit, MAX_LIMIT))
    end = start + len(blobs)
    etag = f'"{channel}-{start}-{end}"'
    headers = {"ETag": etag, "Cache-Control": "no-cache"}
    if etag_matches(request.headers.get("If-None-Match", ""), etag):
        sf.note_not_modified()
        return web.Response(status=304, headers=headers)
    body = b'{"events":[' + b",".join(blobs) + b'],"next_cursor":"' + str(end).encode() + b'"}'
    return web.Response(body=body, content_type="application/json", headers=headers)


async def feed(request: web.Request) -> web.StreamResponse:
    """GET /feed?channel=clicks&from_seq=N (websocket): JSON-array text frames of events with `seq`."""
    sf = request.app[STOREFRONT]
    channel = request.query.get("channel", "clicks")
    if channel not in CHANNELS:
        return _bad_request(f"channel must be one of {', '.join(CHANNELS)}")
    from_seq = _int_param(request, "from_seq")
    ws = web.WebSocketResponse(autoping=True, compress=False, max_msg_size=1 << 16)
    await ws.prepare(request)
    log = sf.logs[channel]
    sf.note_feed(opened=1)
    code, reason = 1000, b""
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(_read_until_closed, ws, tg.cancel_scope)
            code, reason = await _push(sf, ws, log, log.oldest if from_seq is None else from_seq)
            tg.cancel_scope.cancel()
    except* (ConnectionError, RuntimeError):
        code = 0                            # the peer went away mid-frame; nothing to close politely
    finally:
        sf.note_feed(opened=-1)
        if code and not ws.closed:
            with anyio.CancelScope(shield=True), anyio.move_on_after(1.0):
                await ws.close(code=code, message=reason)
    return ws


async def _read_until_closed(ws: web.WebSocketResponse, scope: anyio.CancelScope) -> None:
    # Reading answers pings (autoping) and notices the close; subscribe messages are accepted and ignored.
    async for _ in ws:
        pass
    scope.cancel()


async def _push(sf: Storefront, ws: web.WebSocketResponse, log: EventLog, pos: int) -> tuple[int, bytes]:
    """Send frames from `pos` on; returns the close (code, reason) when the client must go."""
    pos = min(max(pos, log.oldest), log.head)
    while not sf.closing:
        if pos < log.oldest:
            sf.note_feed(dropped=1)
            return 4001, b"too slow: fell behind the kept tail"
        start, blobs = log.read(pos, sf.config.frame_events)
        if not blobs:
            await sf.wait_appended()
            continue
        frame = b"[" + b",".join(b'{"seq":%d,%s' % (start + i, blob[1:]) for i, blob in enumerate(blobs)) + b"]"
        try:
            with anyio.fail_after(sf.config.send_timeout_s):
                await ws.send_frame(frame, WSMsgType.TEXT)
        except TimeoutError:
            sf.note_feed(dropped=1)
            return 4002, b"too slow: send timed out"
        pos = start + len(blobs)
    return 1001, b"storefront shutting down"


async def labels(request: web.Request) -> web.Response:
    """GET /labels → the anomaly labels started so far."""
    return web.Response(body=orjson.dumps(request.app[STOREFRONT].generator.labels), content_type="application/json")


async def stats(request: web.Request) -> web.Response:
    """GET /stats → the StorefrontStats snapshot."""
    snap = request.app[STOREFRONT].statistics()
    return web.Response(body=orjson.dumps(snap), content_type="application/json")


async def healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok\n")


def make_app(sf: Storefront) -> web.Application:
    """The aiohttp application with the storefront's routes."""
    app = web.Application()
    app[STOREFRONT] = sf
    app.router.add_get("/api/{route}", poll_page)
    app.router.add_get("/feed", feed)
    app.router.add_get("/labels", labels)
    app.router.add_get("/stats", stats)
    app.router.add_get("/healthz", healthz)
    return app


@dataclass(frozen=True, slots=True)
class RunningStorefront:
    """A serving storefront: its runtime object and base URL (http://host:port)."""

    storefront: Storefront
    url: str

    @property
    def feed_url(self) -> str:
        return "ws" + self.url.removeprefix("http") + "/feed"


@asynccontextmanager
async def open_storefront(config: StorefrontConfig, clock: Clock | None = None, *,
                          produce: bool = True) -> AsyncIterator[RunningStorefront]:
    """Serve the storefront on config.host:config.port until the block exits.

    With `produce=False` nothing pumps the generator: the caller calls `storefront.pump(now_ms)` (tests).
    """
    sf = Storefront(config, clock or SystemClock())
    runner = web.AppRunner(make_app(sf), access_log=None, shutdown_timeout=2.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, config.host, config.port)
        await site.start()
        port = runner.addresses[0][1]
        host = f"[{config.host}]" if ":" in config.host else config.host
        async with anyio.create_task_group() as tg:
            if produce:
                tg.start_soon(sf.run)
            try:
                yield RunningStorefront(sf, f"http://{host}:{port}")
            finally:
                tg.cancel_scope.cancel()
    finally:
        sf.close()
        with anyio.CancelScope(shield=True):
            await runner.cleanup()
