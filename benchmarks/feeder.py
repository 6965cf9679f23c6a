"""The benchmark's events and the loopback feeders that hand them to the daemon as fast as it takes them
(or at a set pace).

`PageServer` answers the http_poll source's cursor GETs, `WsServer` pushes websocket frames,
`IngestClients` POST bodies to /ingest. All three are bare asyncio protocols over bytes encoded
before the clock starts, so the feeding process spends microseconds per page, frame or body and
the daemon, not the feeder, is what gets measured. Each records when its first and last bytes left.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import struct
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

from daemon.storefront.generator import Generator, ShopConfig, encode_ndjson

GEN_CHUNK = 10_000
BLOCK = 100          # events per stored block: the websocket frame size, a divisor of page/body sizes
PAGE_EVENTS = 1000
# A mid-sized shop: 20k items, 200k users, ~1 event/s per open session at 20k events/s of event time.
SHOP = ShopConfig(n_items=20_000, n_users=200_000, max_concurrent_sessions=20_000)
LONGEST_WINDOW_MS = 300_000   # hopping size and session gap in config.toml.in
_WS_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


# -- events ---------------------------------------------------------------------------------------

@dataclass(slots=True)
class Workload:
    """Events as NDJSON blocks of BLOCK events (time-ordered), with each block's first and last ts."""

    blocks: list[bytes] = field(default_factory=list)
    first_ts: list[int] = field(default_factory=list)
    last_ts: list[int] = field(default_factory=list)
    events: int = 0

    def add(self, events: list[dict[str, Any]]) -> None:
        for i in range(0, len(events), BLOCK):
            part = events[i:i + BLOCK]
            self.blocks.append(encode_ndjson(part))
            self.first_ts.append(part[0]["ts"])
            self.last_ts.append(part[-1]["ts"])
            self.events += len(part)

    def lines(self, k: int) -> list[bytes]:
        return self.blocks[k].rstrip(b"\n").split(b"\n")

    def ndjson(self) -> Iterator[bytes]:
        return iter(self.blocks)


def generate(n: int, *, seed: int, start_ms: int, rate: float, shop: ShopConfig | None = None,
             rewrite: Callable[[int, dict[str, Any]], None] | None = None) -> Workload:
    """`n` storefront events from `start_ms` (`rate` per second of event time), encoded as blocks.

    `rewrite(index, event)` may edit each event in place before encoding (e.g. to widen the key space).
    """
    gen = Generator(seed, start_ms=start_ms, rate=rate, shop=shop or ShopConfig())
    wl = Workload()
    done = 0
    while done < n:
        chunk = gen.next_batch(min(GEN_CHUNK, n - done))
        if rewrite is not None:
            for i, ev in enumerate(chunk, done):
                rewrite(i, ev)
        wl.add(chunk)
        done += len(chunk)
    return wl


# -- workloads ------------------------------------------------------------------------------------

def throughput_workload(n: int, seed: int, event_rate: float) -> Workload:
    """`n` events, `event_rate` per second of event time, ending well before now: no event is late on
    arrival (a fresh daemon has no watermark) and, once the sources go idle, the wall clock closes
    every window at once (the longest window reaches LONGEST_WINDOW_MS past the last event)."""
    span_ms = int(n / event_rate * 1000)
    start_ms = int(time.time() * 1000) - span_ms - LONGEST_WINDOW_MS - 120_000
    return generate(n, seed=seed, start_ms=start_ms, rate=event_rate, shop=SHOP)


def memory_workload(states: int, seed: int, event_rate: float) -> Workload:
    """2 events per user for `states` users (one open session each), and views spread over
    states/5 items (hopping states): at the end of the feed ~`states` sessions are open."""
    n = 2 * states
    items = max(1, states // 5)

    def widen(i: int, ev: dict[str, Any]) -> None:
        u = i // 2
        ev["user_id"] = f"m{u}"
        ev["session_id"] = f"m{u}-1"
        if "item_id" in ev:
            ev["item_id"] = f"w{(i * 7919) % items}"

    span_ms = int(n / event_rate * 1000)
    start_ms = int(time.time() * 1000) - span_ms - LONGEST_WINDOW_MS - 120_000
    start_ms -= start_ms % 60_000   # on a minute: the same number of 1m panes (open states) every run
    return generate(n, seed=seed + 1, start_ms=start_ms, rate=event_rate, rewrite=widen)


def latency_workload(rate: float, duration_s: float, seed: int) -> tuple[Workload, list[float]]:
    """`rate` × `duration_s` events at `rate` per second of event time, sent in real time (each frame
    when the wall clock has advanced as far as its last event), with a minute boundary mid-run so the
    1m and 5m/1m windows close once, the 10s windows every 10 s."""
    n = int(rate * duration_s)
    est_gen_s = n * 8e-6 + 5
    boundary = (int((time.time() + est_gen_s + duration_s / 2) * 1000) // 60_000 + 1) * 60_000
    start_ms = boundary - int(duration_s * 500)
    wl = generate(n, seed=seed + 2, start_ms=start_ms, rate=rate, shop=SHOP)
    t0 = wl.first_ts[0]
    return wl, [(ts - t0) / 1000 for ts in wl.last_ts]


def split_three(wl: Workload) -> tuple[list[int], list[int], list[int]]:
    """Blocks dealt to three sources by pages of PAGE_EVENTS events, round robin (each stays time-ordered)."""
    per = PAGE_EVENTS // BLOCK
    parts: tuple[list[int], list[int], list[int]] = ([], [], [])
    for k in range(len(wl.blocks)):
        parts[(k // per) % 3].append(k)
    return parts


@dataclass(slots=True)
class Units:
    """One source's share of a workload, cut into its wire units (pages, frames or bodies)."""

    payloads: list[bytes] = field(default_factory=list)
    counts: list[int] = field(default_factory=list)
    last_ts: list[int] = field(default_factory=list)
    first_seq: list[int] = field(default_factory=list)

    @property
    def events(self) -> int:
        return sum(self.counts)


def ws_frame(payload: bytes) -> bytes:
    """An unmasked, final server-to-client text frame."""
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x81, n)
    elif n < 65536:
        head = struct.pack("!BBH", 0x81, 126, n)
    else:
        head = struct.pack("!BBQ", 0x81, 127, n)
    return head + payload


def json_array(lines: list[bytes]) -> bytes:
    return b"[" + b",".join(lines) + b"]"


def cut_units(wl: Workload, blocks: list[int], per_unit: int, kind: str) -> Units:
    """Cut the given blocks (in order) into units of `per_unit` events (a multiple of BLOCK).

    kind: "page" ({"events": [...], "next_cursor": "<index + 1>"}), "frame" (a JSON array whose
    events carry a running `seq`, as a websocket text frame) or "body" (a JSON array).
    """
    assert per_unit % BLOCK == 0
    step = per_unit // BLOCK
    out = Units()
    seq = 1
    for u in range(0, len(blocks), step):
        ks = blocks[u:u + step]
        lines = [ln for k in ks for ln in wl.lines(k)]
        if kind == "page":
            payload = b'{"events":' + json_array(lines) + b',"next_cursor":"' + str(len(out.payloads) + 1).encode() + b'"}'
        elif kind == "frame":
            first = seq
            lines = [b'{"seq":' + str(seq + j).encode() + b"," + ln[1:] for j, ln in enumerate(lines)]
            payload = ws_frame(json_array(lines))
            out.first_seq.append(first)
        elif kind == "body":
            payload = json_array(lines)
        else:
            raise ValueError(kind)
        seq += len(lines)
        out.payloads.append(payload)
        out.counts.append(len(lines))
        out.last_ts.append(wl.last_ts[ks[-1]])
    return out


@dataclass(slots=True)
class FeedLog:
    """What one feeder sent and when (wall clock, time.time())."""

    first_byte_s: float | None = None
    last_byte_s: float | None = None
    events: int = 0
    units: int = 0            # pages, frames or POSTs answered
    retries: int = 0          # 429/503 answers (ingest)
    statuses: dict[int, int] = field(default_factory=dict)

    def sent(self, events: int) -> None:
        now = time.time()
        if self.first_byte_s is None:
            self.first_byte_s = now
        self.last_byte_s = now
        self.events += events
        self.units += 1


# -- http_poll ------------------------------------------------------------------------------------

class _PageProtocol(asyncio.Protocol):
    def __init__(self, server: PageServer) -> None:
        self.server = server
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                return
            head, self.buf = self.buf[:end], self.buf[end + 4:]
            target = head.split(b"\r\n", 1)[0].split(b" ")[1].decode()
            cursor = parse_qs(urlsplit(target).query).get("cursor", ["0"])[0]
            assert self.transport is not None
            self.transport.write(self.server.response(int(cursor or 0)))


class PageServer:
    """GET /events?cursor=K → page K of `units` (pre-encoded); past the end an empty page, same cursor."""

    def __init__(self, units: Units) -> None:
        self._responses = [self._wrap(b) for b in units.payloads]
        self.counts = units.counts
        self.log = FeedLog()
        self.sent_at: list[float] = [0.0] * len(units.payloads)
        self._server: asyncio.Server | None = None
        self.port = 0

    @staticmethod
    def _wrap(body: bytes) -> bytes:
        return (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
                + str(len(body)).encode() + b"\r\n\r\n" + body)

    def response(self, cursor: int) -> bytes:
        if cursor < len(self._responses):
            if not self.sent_at[cursor]:
                self.sent_at[cursor] = time.time()
                self.log.sent(self.counts[cursor])
            return self._responses[cursor]
        return self._wrap(b'{"events":[],"next_cursor":"' + str(cursor).encode() + b'"}')

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/events"

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _PageProtocol(self), "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()


# -- websocket ------------------------------------------------------------------------------------

class WsServer:
    """Pushes pre-encoded frames to every connection: as fast as TCP takes them, or each frame at its
    `release_s` offset from the first (a steady rate). Answers pings; honours ?from_seq= by frame."""

    def __init__(self, units: Units, release_s: Sequence[float] | None = None, batch: int = 16) -> None:
        frames = units.payloads
        self._frames, self.counts, self._first_seq = frames, units.counts, units.first_seq
        self._release_s = release_s
        self._batch = batch
        self.log = FeedLog()
        self.sent_at: list[float] = [0.0] * len(frames)   # wall clock when each frame was written
        self.lag_s = 0.0                                   # worst lateness behind the pace
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/feed"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for t in list(self._tasks):
            t.cancel()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            writer.close()
            return
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
        query = parse_qs(urlsplit(lines[0].split(" ")[1]).query)
        accept = base64.b64encode(hashlib.sha1(headers["sec-websocket-key"].encode() + _WS_GUID).digest())
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n")
        start = 0
        if "from_seq" in query:
            want = int(query["from_seq"][0])
            start = next((i for i, s in enumerate(self._first_seq) if s >= want), len(self._frames))
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        pump = asyncio.ensure_future(self._pump(writer, start))
        try:
            await self._read_client(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass   # the daemon went away or the benchmark is stopping
        finally:
            pump.cancel()
            self._tasks.discard(task)
            writer.close()

    async def _pump(self, writer: asyncio.StreamWriter, i: int) -> None:
        frames, counts, release, log = self._frames, self.counts, self._release_s, self.log
        t0 = time.monotonic()
        n = len(frames)
        while i < n:
            if release is not None:
                delay = t0 + release[i] - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                else:
                    self.lag_s = max(self.lag_s, -delay)
                j = i + 1
                while j < n and j - i < self._batch and release[j] <= time.monotonic() - t0:
                    j += 1
            else:
                j = min(n, i + self._batch)
            writer.write(b"".join(frames[i:j]))
            now = time.time()
            for k in range(i, j):
                if not self.sent_at[k]:
                    self.sent_at[k] = now
                    log.sent(counts[k])
            i = j
            await writer.drain()

    async def _read_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Client frames are masked; answer ping with pong and close with close; ignore the rest."""
        while True:
            b0, b1 = await reader.readexactly(2)
            n = b1 & 0x7F
            if n == 126:
                n = struct.unpack("!H", await reader.readexactly(2))[0]
            elif n == 127:
                n = struct.unpack("!Q", await reader.readexactly(8))[0]
            mask = await reader.readexactly(4) if b1 & 0x80 else b"\0\0\0\0"
            data = bytes(c ^ mask[k % 4] for k, c in enumerate(await reader.readexactly(n)))
            opcode = b0 & 0x0F
            if opcode == 0x9:
                writer.write(struct.pack("!BB", 0x8A, len(data)) + data)
            elif opcode == 0x8:
                writer.write(struct.pack("!BB", 0x88, len(data[:2])) + data[:2])
                return


# -- POST /ingest ---------------------------------------------------------------------------------

class IngestClients:
    """`concurrency` keep-alive connections POSTing bodies to /ingest, each taking the next body in order.

    A 429 (queue full) or 503 (durable ack timed out) is retried by the same connection after
    `retry_s` (not the 1 s Retry-After: the point is to find the daemon's rate, not to idle) before
    it takes another body, so bodies reach the daemon at most `concurrency` out of order: far less
    than the allowed lateness, so none is dead-lettered as late.
    """

    def __init__(self, port: int, units: Units, *, concurrency: int, retry_s: float = 0.02,
                 path: str = "/ingest") -> None:
        self._port = port
        self._bodies, self.counts = units.payloads, units.counts
        self.sent_at: list[float] = [0.0] * len(units.payloads)
        self._concurrency = concurrency
        self._retry_s = retry_s
        self._path = path.encode()
        self._next = 0
        self.log = FeedLog()

    def _take(self) -> int | None:
        if self._next < len(self._bodies):
            self._next += 1
            return self._next - 1
        return None

    async def run(self, connect_timeout_s: float = 30.0) -> None:
        await asyncio.gather(*(self._client(connect_timeout_s) for _ in range(self._concurrency)))

    async def _connect(self, timeout_s: float) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                return await asyncio.open_connection("127.0.0.1", self._port)
            except OSError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.005)

    async def _client(self, connect_timeout_s: float) -> None:
        reader, writer = await self._connect(connect_timeout_s)
        head = b"POST " + self._path + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: "
        try:
            while (i := self._take()) is not None:
                body = self._bodies[i]
                while True:
                    t = time.time()
                    if self.log.first_byte_s is None:
                        self.log.first_byte_s = t
                    writer.write(head + str(len(body)).encode() + b"\r\n\r\n" + body)
                    status = await _read_response(reader)
                    self.log.statuses[status] = self.log.statuses.get(status, 0) + 1
                    if status == 202:
                        self.sent_at[i] = t
                        self.log.sent(self.counts[i])
                        break
                    if status not in (429, 503):
                        raise RuntimeError(f"POST /ingest answered {status}")
                    self.log.retries += 1
                    await asyncio.sleep(self._retry_s)
        finally:
            writer.close()


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ")[1])
    length = 0
    for line in lines[1:]:
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    if length:
        await reader.readexactly(length)
    return status
