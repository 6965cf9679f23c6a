"""The replica process: a copy of the daemon's recommender that answers reads on its own address.

Why a process: under the GIL, a read served by the daemon waits for the thread that folds events
(benchmarks/README.md measured p99 ~10 ms at full ingest however the switch interval and the GC
were tuned). Here one thread folds and serves, taking turns: frames are small (protocol.FRAME_EVENTS)
and the event loop answers requests between two, so a read waits for at most one frame's fold.

Input: frames on stdin (protocol.py) from daemon/replica/feed.py. The replica holds no state of
its own on disk: it starts from the SNAPSHOT the daemon sends and follows the daemon's folds.
End of stdin (the daemon stopped or died) ends the process.
"""

from __future__ import annotations

import asyncio
import gc
import signal
import sys
import time
from typing import Any

import anyio
from aiohttp import web

from daemon.analyzers.recommend import Recommender
from daemon.log import configure_logging, get_logger
from daemon.replica import protocol
from daemon.web.app import MAX_FIELD_BYTES, MAX_HEADERS, MAX_LINE_BYTES
from daemon.web.auth import auth_middleware
from daemon.web.limits import LimitedTCPSite
from daemon.web.queries import int_param, json_response, recommendations_answer, trending_answer

READ_BYTES = 1 << 20


class Collector:
    """The replica's garbage collection: automatic collection off, a full one at chosen moments.

    The replica's state is long-lived and grows. Left to CPython, collections come at random
    moments and walk more and more of it: after 2M events gen-0 pauses reached 4 ms at p90 and
    full ones 12 ms, and a read that arrived then waited (they were most of the replica's slow
    reads). Here `gc.freeze()` after every full collection takes what survived out of the
    collector's sight for good (reference counting still frees it; the recommender's state holds
    no reference cycles), so each collection walks only what was made since the previous one,
    and it runs between frames, after the waiting reads were answered: every EVERY_FRAMES frames
    (measured in process: 1.3 ms at p50, 2.6 ms at most, over 1M events) and at least every
    EVERY_S seconds when frames are rare (request handling makes cycles too).
    """

    EVERY_FRAMES = 50
    EVERY_S = 1.0

    def __init__(self) -> None:
        gc.disable()
        self._frames = 0
        self._last = time.monotonic()
        self.collections = 0

    def frame_done(self) -> None:
        self._frames += 1
        if self._frames >= self.EVERY_FRAMES:
            self.collect()

    def collect(self) -> None:
        gc.collect()
        gc.freeze()
        self._frames = 0
        self._last = time.monotonic()
        self.collections += 1

    async def run(self) -> None:
        """The time-based collections (a task of the replica's event loop)."""
        while True:
            await asyncio.sleep(self.EVERY_S)
            if time.monotonic() - self._last >= self.EVERY_S:
                self.collect()


class Replica:
    """The recommender copy plus what it has applied; `apply` is the only writer."""

    def __init__(self, recommender: Recommender, collector: Collector) -> None:
        self.recommender = recommender
        self.collector = collector
        self.synced = False
        self.now_ms: int | None = None     # the daemon's read clock after the last applied fold
        self.frames = self.events = self.snapshots = 0

    def read_now_ms(self) -> int:
        return self.now_ms if self.now_ms is not None else int(time.time() * 1000)

    async def apply(self, kind: bytes, payload: bytes) -> None:
        self.frames += 1
        if kind == protocol.SNAPSHOT:
            self.recommender.restore(payload)
            self.collector.collect()
            self.synced = True
            self.snapshots += 1
        elif kind == protocol.OBSERVE:
            now_ms, batch = protocol.read_observe(payload)
            self.recommender.observe(batch)   # frames are small (protocol.FRAME_EVENTS)
            self.events += len(batch)
            self.now_ms = now_ms
            # Three turns of the loop: the first reads a waiting request, the second starts its
            # handler task, the third lets it answer (with one turn, 2-3 frames went first).
            for _ in range(3):
                await asyncio.sleep(0)
            self.collector.frame_done()
        else:
            raise protocol.ProtocolError(f"unexpected frame {kind!r} after the config")


RECS = web.AppKey("replica", Replica)


async def recommendations(request: web.Request) -> web.Response:
    rep = request.app[RECS]
    if not rep.synced:
        return json_response({"error": "the replica has not received the daemon's state yet"}, 503)
    k = int_param(request, "k", 10, 1000)
    return json_response(recommendations_answer(rep.recommender, request.match_info["user_id"], k, rep.read_now_ms()))


async def trending(request: web.Request) -> web.Response:
    rep = request.app[RECS]
    if not rep.synced:
        return json_response({"error": "the replica has not received the daemon's state yet"}, 503)
    k = int_param(request, "k", 10, 1000)
    return json_response(trending_answer(rep.recommender.trending, request.query.get("category") or None, k,
                                         rep.read_now_ms()))


async def healthz(request: web.Request) -> web.Response:
    rep = request.app[RECS]
    return json_response({"status": "ok" if rep.synced else "syncing", "frames": rep.frames,
                          "events": rep.events, "snapshots": rep.snapshots,
                          "gc_collections": rep.collector.collections})


def build_app(rep: Replica, token: bytes | None) -> web.Application:
    app = web.Application(middlewares=[auth_middleware(token)] if token else [], client_max_size=64 * 1024)
    app[RECS] = rep
    app.add_routes([web.get("/healthz", healthz), web.get("/recommendations/{user_id}", recommendations),
                    web.get("/trending", trending)])
    return app


async def _read_frames(reader: asyncio.StreamReader, frames: protocol.FrameReader, rep: Replica) -> None:
    while True:
        data = await reader.read(READ_BYTES)
        if not data:
            if frames.buffered:
                raise protocol.ProtocolError(f"stdin ended inside a frame ({frames.buffered} bytes)")
            return
        for kind, payload in frames.feed(data):
            await rep.apply(kind, payload)


async def serve(config_payload: bytes, log: Any) -> int:
    settings = protocol.read_config(config_payload)
    cfg = settings.recommendations
    collector = Collector()
    rep = Replica(Recommender(cfg), collector)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=READ_BYTES)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin.buffer)
    # The daemon's own HTTP bounds (web/app.py): idle and header-phase timeout, line and header
    # sizes, open connections.
    runner = web.AppRunner(build_app(rep, settings.token), access_log=None, handle_signals=False,
                           shutdown_timeout=1.0, keepalive_timeout=settings.idle_timeout_s,
                           max_line_size=MAX_LINE_BYTES, max_field_size=MAX_FIELD_BYTES, max_headers=MAX_HEADERS)
    await runner.setup()
    try:
        await LimitedTCPSite(runner, cfg.listen_host, cfg.listen_port, max_connections=settings.max_connections,
                             backlog=512).start()
    except OSError as exc:
        log.error("replica_listen_failed", listen=f"{cfg.listen_host}:{cfg.listen_port}", error=str(exc))
        await runner.cleanup()
        return 1
    log.info("replica_started", listen=f"{cfg.listen_host}:{cfg.listen_port}")
    frames = protocol.FrameReader()
    bad_input: list[str] = []

    async def read_all() -> None:
        # Caught here, not around the task group: it would arrive wrapped in an ExceptionGroup.
        try:
            await _read_frames(reader, frames, rep)
        except protocol.ProtocolError as exc:
            bad_input.append(str(exc))

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(collector.run)
            await read_all()
            tg.cancel_scope.cancel()
    finally:
        await runner.cleanup()
    if bad_input:
        log.error("replica_bad_input", error=bad_input[0])
        return 2
    log.info("replica_stopped", frames=rep.frames, events=rep.events)
    return 0


def _read_config_frame() -> bytes:
    """The CONFIG frame's payload, read before the event loop starts (exactly, nothing past it)."""
    stdin = sys.stdin.buffer.raw
    buf = b""
    while len(buf) < protocol.HEADER.size:
        chunk = stdin.read(protocol.HEADER.size - len(buf))
        if not chunk:
            raise protocol.ProtocolError("stdin ended before the config frame")
        buf += chunk
    n, kind = protocol.HEADER.unpack(buf)
    if kind != protocol.CONFIG:
        raise protocol.ProtocolError(f"the first frame must be the config, got {kind!r}")
    payload = b""
    while len(payload) < n:
        chunk = stdin.read(n - len(payload))
        if not chunk:
            raise protocol.ProtocolError("stdin ended inside the config frame")
        payload += chunk
    return payload


def main() -> int:
    # SIGTERM/SIGINT sent to the whole group (systemd's stop, timeout(1), Ctrl-C) are the daemon's to
    # act on: it closes our stdin when it stops, and end of stdin ends this process.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    configure_logging("info")
    log = get_logger(component="replica")
    try:
        config_payload = _read_config_frame()
    except protocol.ProtocolError as exc:
        log.error("replica_bad_input", error=str(exc))
        return 2
    return anyio.run(serve, config_payload, log)
