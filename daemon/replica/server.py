"""The recommendations process: the daemon's recommender, on the second core, answering reads.

Why a process: the recommender was a third of the daemon's CPU per event, and under the GIL a read
served by the daemon waits for the thread that folds events. Here one thread folds and serves,
taking turns: a fold step is cut into small batches (protocol.FRAME_EVENTS) and the event loop
answers requests between two, so a read waits for at most one small batch.

Input: frames on stdin from daemon/replica/feed.py (protocol.py): the stored records, the fold-log
steps after them, then every fold live, and a CUT after each full state write of the daemon, which
this process answers on stdout with the records changed since its previous answer. The daemon
writes those into its LMDB: it stays the only writer of state, and the recommender's state is
exactly "through commit seq S" like every other part's (see pipeline/runner.py, Runner._build_unit).
End of stdin (the daemon stopped or died) ends the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import orjson
from aiohttp import web

from daemon.analyzers.recommend import COMPILED, Recommender
from daemon.log import configure_logging, get_logger
from daemon.pipeline import foldlog
from daemon.replica import protocol
from daemon.runtime import memory
from daemon.stores.segments import SegmentBuilder
from daemon.web.auth import auth_middleware
from daemon.web.limits import MAX_FIELD_BYTES, MAX_HEADERS, MAX_LINE_BYTES, LimitedTCPSite
from daemon.web.queries import int_param, json_response, recommendations_answer, trending_answer
from daemon.web.stats import rss_bytes

READ_BYTES = 1 << 20
ANSWER_PIECE_BYTES = 1 << 20
# Folding lets the event loop answer reads at least this often. Three turns after every batch of 16
# events cost ~1 µs per event with the sockets open; a read now waits at most this plus one batch.
TURN_EVERY_S = 0.0005
PACK_SLICE = 1_000         # idle users packed between two turns (~2 ms)
# Users beyond the hot ones are also packed while folding, once this many were made lists (new users, or
# kept ones an event touched) since the last pass: the changed users between two cuts (5 s of events,
# ~150k users in the memory benchmark) were all lists until the answer. A pass walks the users beyond the
# hot ones (~20 ms per 600k), so ~0.4 µs per user made a list.
PACK_AFTER_LISTS = 50_000
RECORDS_SLICE = 250       # item and user records made between two turns when answering a CUT (~0.5 ms)


class Collector:
    """The replica's garbage collection: automatic collection off, a full one at chosen moments.

    The replica's state is long-lived and grows. Left to CPython, collections come at random
    moments and walk more and more of it: after 2M events gen-0 pauses reached 4 ms at p90 and
    full ones 12 ms, and a read that arrived then waited (they were most of the replica's slow
    reads). Here `gc.freeze()` after every full collection takes what survived out of the
    collector's sight for good (reference counting still frees it; the recommender's state holds
    no reference cycles), so each collection walks only what was made since the previous one,
    and it runs between batches, after the waiting reads were answered: every EVERY_EVENTS events
    folded and at least every EVERY_S seconds when events are rare (request handling makes
    cycles too). Measured in process over 600k events (collection every N events: pause p50 /
    max, share of the CPU): 800: 0.33 / 1.6 ms, 8.9%; 4,000: 1.6 / 2.8 ms, 8.1%; 16,000:
    3.2 / 5.3 ms, 4.5%; 64,000: 8.5 / 11.6 ms, 2.8%. Under contention for the 2 cores (the
    daemon, the feeders) the pauses stretch several times (8,000: 16 ms on average in a 1M-event
    benchmark run), and a read that arrives during one waits: 2,000 keeps them short.
    """

    EVERY_EVENTS = 2_000
    EVERY_S = 1.0

    def __init__(self) -> None:
        gc.disable()
        self._events = 0
        self._last = time.monotonic()
        self.collections = 0
        self.seconds = self.max_pause_s = 0.0

    def folded(self, events: int) -> None:
        self._events += events
        if self._events >= self.EVERY_EVENTS:
            self.collect()

    def collect(self) -> None:
        t0 = time.perf_counter()
        # Generation 0 holds everything made since the last freeze (nothing is promoted while the
        # automatic collector is off, and freeze empties the older generations), so collecting it
        # finds the same garbage as a full collection, at ~1/5 of the cost: a full one also clears
        # the interpreter's free lists and more (in process, every 2,000 events: pause p50 0.61 ->
        # 0.13 ms, GC 7.0 -> 1.6% of the CPU; in 1M-event benchmark runs GC 1.0-1.2 -> 0.2 s, the
        # longest pause 15-16 -> 2.4-3.9 ms, the process's CPU the same within noise).
        gc.collect(0)
        gc.freeze()
        pause = time.perf_counter() - t0
        self.seconds += pause
        self.max_pause_s = max(self.max_pause_s, pause)
        self._events = 0
        self._last = time.monotonic()
        self.collections += 1

    async def run(self) -> None:
        """The time-based collections (a task of the replica's event loop)."""
        while True:
            await asyncio.sleep(self.EVERY_S)
            if time.monotonic() - self._last >= self.EVERY_S:
                self.collect()


class Replica:
    """The recommender plus what it has applied; `apply` is the only writer."""

    def __init__(self, recommender: Recommender, collector: Collector, answer: Callable[..., Awaitable[None]],
                 port: int = 0) -> None:
        self.recommender = recommender
        self.collector = collector
        self._answer = answer              # writes a frame to the daemon
        self._records: dict[bytes, bytes | None] = {}   # RECORDS received, until RESTORE
        self.port = port                   # where reads are answered (READY tells the daemon)
        self.synced = False
        self.now_ms: int | None = None     # the daemon's read clock after the last applied fold
        self.frames = self.events = self.snapshots = self.replayed = self.cuts = 0
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []   # reads waiting for a frame count
        self._turned = 0.0                 # perf_counter at the last turns of the event loop
        self.trimmer = memory.Trimmer()
        self.heap = memory.HeapFigures()   # /healthz's glibc heap figures, read at most every 10 s
        self.packed = 0                    # idle users packed into their records (Recommender.pack)
        self.answer_part_bytes = protocol.ANSWER_PART_BYTES   # an answer goes out in parts of ~this

    def read_now_ms(self) -> int:
        return self.now_ms if self.now_ms is not None else int(time.time() * 1000)

    async def caught_up(self, frames: int, timeout_s: float) -> None:
        """Wait until `frames` frames (after the config) are applied, or `timeout_s`.

        The daemon forwards a read with the number of frames it has queued for this process: what
        it acknowledged before the read is then folded here before the answer (read your writes)."""
        if self.frames >= frames:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((frames, fut))
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(fut), timeout_s)
        finally:
            if not fut.done():
                fut.cancel()

    async def apply(self, kind: bytes, payload: bytes) -> None:
        await self._apply(kind, payload)
        self.frames += 1
        if self._waiters:
            waiting = []
            for n, fut in self._waiters:
                if fut.done():
                    continue
                if self.frames >= n:
                    fut.set_result(None)
                else:
                    waiting.append((n, fut))
            self._waiters = waiting

    async def _apply(self, kind: bytes, payload: bytes) -> None:
        if kind == protocol.OBSERVE:
            now_ms, step = protocol.read_observe(payload)
            await self._fold(orjson.loads(step), turns=True)
            if now_ms is not None:
                self.now_ms = now_ms
        elif kind == protocol.CUT:
            seq = protocol.read_cut(payload)
            await self._answer(*protocol.changes_frame_pieces(seq, await self._changes(seq)))
            self.cuts += 1
            await self._pack_idle()
            # The answer (20-40 MiB, its records and the frame) is freed: give its pages back (runtime/memory.py).
            self.trimmer.trim()
        elif kind == protocol.LOG:
            for step in orjson.loads(payload):
                self.replayed += await self._fold(step, turns=False)
        elif kind == protocol.RECORDS:
            self._records.update(protocol.unpack_records(payload))
        elif kind == protocol.RESTORE:
            records, self._records = self._records, {}
            self.recommender.restore_items((k, v) for k, v in records.items() if v is not None)
            del records
            self.collector.collect()
            self.snapshots += 1
        elif kind == protocol.SYNCED:
            self.synced = True
            await self._answer(protocol.frame(protocol.READY, orjson.dumps({"port": self.port})))
        else:
            raise protocol.ProtocolError(f"unexpected frame {kind!r} after the config")

    async def _changes(self, seq: int) -> SegmentBuilder:
        """The records changed since the last CUT, made in slices with reads answered between
        (100k changed users take ~0.2 s to serialise; nothing folds meanwhile: frames wait), packed
        per bucket as they are made (a dict of them was ~300 bytes per record more, at once), and
        sent as PART frames of ~answer_part_bytes as they fill; the rest is returned, for the CHANGES
        frame that ends the answer."""
        rec = self.recommender
        deleted, items, users, trending = rec.take_dirty()
        parts: list[list[tuple[int, bytes]]] = []

        def spill(_: int, pieces: list[tuple[int, bytes]]) -> bool:
            parts.append(pieces)   # sent at the next turn (writing waits for the daemon to read)
            return True

        async def send_parts() -> None:
            while parts:
                await self._answer(*protocol.part_frame_pieces(seq, parts.pop(0)))

        out = SegmentBuilder(spill, spill_bytes=self.answer_part_bytes)
        for key in deleted:
            out.put(key, None)
        for i in range(0, max(len(items), len(users), 1), RECORDS_SLICE):
            rec.records_into(out.put, items[i:i + RECORDS_SLICE], users[i:i + RECORDS_SLICE])
            await send_parts()
            for _ in range(3):
                await asyncio.sleep(0)
        for key, value in trending.items():
            out.put(key, value)
        await send_parts()
        return out

    async def _pack_idle(self) -> None:
        """Keep the users beyond `hot_users` as their records (Recommender.pack), in slices with reads
        answered between: after each answer, and while folding (PACK_AFTER_LISTS). Finding them is one
        pass over the idle ones (~20 ms per 600k)."""
        rec = self.recommender
        idle = rec.idle_users(rec.cfg.hot_users)
        for i in range(0, len(idle), PACK_SLICE):
            self.packed += rec.pack(idle[i:i + PACK_SLICE])
            for _ in range(3):
                await asyncio.sleep(0)

    async def _fold(self, step: list, *, turns: bool) -> int:
        """Fold one step's events (CLOSE steps are the windows', not ours); return how many."""
        if not step or step[0] not in (foldlog.OBSERVE, foldlog.MORE):
            return 0
        n = 0
        piece = protocol.step_piece(step)
        # Trending per piece (<= 1,024 events), the recommender per small batch: trending's work
        # per call is per category, 0.74 -> 0.35 µs per event this way (measured in process).
        self.recommender.trending.observe(piece)
        for batch in protocol.cut(piece):
            self.recommender.observe(batch, trending=False)
            if self.recommender.lists_made >= PACK_AFTER_LISTS:
                await self._pack_idle()
            n += len(batch)
            self.collector.folded(len(batch))
            if turns and (now := time.perf_counter()) - self._turned >= TURN_EVERY_S:
                # Three turns of the loop: the first reads a waiting request, the second starts its
                # handler task, the third lets it answer (with one turn, 2-3 batches went first).
                for _ in range(3):
                    await asyncio.sleep(0)
                self._turned = now
        self.events += n
        return n


RECS = web.AppKey("replica", Replica)


# The most a forwarded read waits for the frames it should see, then it answers from what is folded:
# a process that keeps up (it folds ~2x faster than the daemon) shows every acknowledged event; one
# starved of CPU answers a little stale rather than late.
READ_WAIT_S = 0.05


async def _read_state(request: web.Request, rep: Replica) -> None:
    """`seen`: frames the daemon had queued when it forwarded the read; they are applied first."""
    seen = int_param(request, "seen", 0, 2**62) if request.query.get("seen") not in (None, "", "0") else 0
    if seen:
        await rep.caught_up(seen, READ_WAIT_S)


def _read_clock(request: web.Request, rep: Replica) -> int:
    """`at` (the daemon passes its own read clock when it forwards a request), else the clock of the
    last fold."""
    return int_param(request, "at", rep.read_now_ms(), 2**62)


async def recommendations(request: web.Request) -> web.Response:
    rep = request.app[RECS]
    if not rep.synced:
        return json_response({"error": "the recommendations process has not received its state yet"}, 503)
    k = int_param(request, "k", 10, 1000)
    await _read_state(request, rep)
    return json_response(recommendations_answer(rep.recommender, request.match_info["user_id"], k,
                                                _read_clock(request, rep)))


async def trending(request: web.Request) -> web.Response:
    rep = request.app[RECS]
    if not rep.synced:
        return json_response({"error": "the recommendations process has not received its state yet"}, 503)
    k = int_param(request, "k", 10, 1000)
    await _read_state(request, rep)
    return json_response(trending_answer(rep.recommender.trending, request.query.get("category") or None, k,
                                         _read_clock(request, rep)))


async def healthz(request: web.Request) -> web.Response:
    rep = request.app[RECS]
    st = rep.recommender.statistics() if "recommender" in request.query else None
    return json_response({"status": "ok" if rep.synced else "syncing", "frames": rep.frames,
                          "events": rep.events, "replayed_events": rep.replayed, "snapshots": rep.snapshots,
                          "cuts": rep.cuts, "gc_collections": rep.collector.collections,
                          "gc_seconds": round(rep.collector.seconds, 6),
                          "gc_max_pause_ms": round(rep.collector.max_pause_s * 1000, 3),
                          "users_packed": rep.packed, "malloc_trims": rep.trimmer.trims,
                          "malloc_trim_seconds": round(rep.trimmer.seconds, 6),
                          "rss_bytes": rss_bytes(), **memory.breakdown(rep.heap),
                          **({"recommender": dataclasses.asdict(st)} if st else {})})


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


async def _open_answers(loop: asyncio.AbstractEventLoop) -> Callable[..., Awaitable[None]]:
    """A writer of frames to stdout (the daemon reads them), waiting while the pipe is full."""
    transport, proto = await loop.connect_write_pipe(asyncio.streams.FlowControlMixin, sys.stdout.buffer)
    writer = asyncio.StreamWriter(transport, proto, None, loop)

    async def answer(*pieces: bytes) -> None:
        """Write one frame, given whole or as pieces to write one after the other."""
        # In pieces of ANSWER_PIECE_BYTES: the pipe takes ~64 KiB at once and the transport keeps a copy
        # of the rest, which for a 20-40 MiB CHANGES answer was another copy of it until the daemon read it.
        for data in pieces:
            view = memoryview(data)
            for i in range(0, len(view), ANSWER_PIECE_BYTES):
                writer.write(view[i:i + ANSWER_PIECE_BYTES])
                await writer.drain()
    return answer


async def serve(config_payload: bytes, log: Any) -> int:
    settings = protocol.read_config(config_payload)
    cfg = settings.recommendations
    collector = Collector()
    loop = asyncio.get_running_loop()
    answer = await _open_answers(loop)
    rep = Replica(Recommender(cfg), collector, answer)
    reader = asyncio.StreamReader(limit=READ_BYTES)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin.buffer)
    # The daemon's own HTTP bounds (web/app.py): idle and header-phase timeout, line and header
    # sizes, open connections.
    runner = web.AppRunner(build_app(rep, settings.token), access_log=None, handle_signals=False,
                           shutdown_timeout=1.0, keepalive_timeout=settings.idle_timeout_s,
                           max_line_size=MAX_LINE_BYTES, max_field_size=MAX_FIELD_BYTES, max_headers=MAX_HEADERS)
    await runner.setup()
    # Without `listen` the process still serves the daemon's forwarded reads, on a loopback port of
    # the kernel's choosing that it reports in its READY frame.
    host, port = (cfg.listen_host, cfg.listen_port) if cfg.listen_port else ("127.0.0.1", 0)
    site = LimitedTCPSite(runner, host, port, max_connections=settings.max_connections, backlog=512)
    try:
        await site.start()
    except OSError as exc:
        log.error("replica_listen_failed", listen=f"{host}:{port}", error=str(exc))
        await runner.cleanup()
        return 1
    rep.port = site.bound_port()
    log.info("replica_started", listen=f"{host}:{rep.port}", compiled_fold=COMPILED)
    frames = protocol.FrameReader()
    bad_input: list[str] = []

    async def read_all() -> None:
        # Caught here, not around the task group: it would arrive wrapped in an ExceptionGroup.
        try:
            await _read_frames(reader, frames, rep)
        except protocol.ProtocolError as exc:
            bad_input.append(str(exc))
        except (BrokenPipeError, ConnectionResetError):
            pass   # the daemon is gone: nobody to answer

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
    log.info("replica_stopped", frames=rep.frames, events=rep.events, cuts=rep.cuts,
             gc_collections=collector.collections, gc_seconds=round(collector.seconds, 3),
             gc_max_pause_ms=round(collector.max_pause_s * 1000, 2),
             cpu_seconds=round(time.process_time(), 2))
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
    configure_logging("info", stream=sys.stderr)
    memory.limit_arenas()
    log = get_logger(component="replica")
    try:
        config_payload = _read_config_frame()
    except protocol.ProtocolError as exc:
        log.error("replica_bad_input", error=str(exc))
        return 2
    return anyio.run(serve, config_payload, log)
