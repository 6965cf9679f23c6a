"""Ingest source: POST /ingest on the daemon's HTTP server; 202, 413, 429 + Retry-After."""

from __future__ import annotations

from dataclasses import dataclass, field

import anyio
import orjson
from aiohttp import web

from daemon.pipeline.queue import Delivery
from daemon.sources.base import SourceContext, SourceStats
from daemon.sources.common import CommonSourceSettings
from daemon.tomlreader import TableReader

FULL_WAIT_S = 1.0   # the most a POST waits for room in a full queue before its 429

ACK_MODES = ("accepted", "durable")


@dataclass(frozen=True, slots=True, kw_only=True)
class IngestConfig:
    name: str
    ack: str = "accepted"       # "durable": answer only after the commit holding the events
    ack_timeout_s: float = 30.0
    common: CommonSourceSettings = field(default_factory=CommonSourceSettings)

    type = "ingest"

    @classmethod
    def from_toml(cls, r: TableReader, name: str) -> IngestConfig:
        return cls(
            name=name,
            ack=r.choice("ack", "accepted", ACK_MODES),
            ack_timeout_s=r.duration_s("ack_timeout", 30.0),
            common=CommonSourceSettings.from_reader(r),
        )

    def build(self, ctx: SourceContext) -> IngestSource:
        return IngestSource(self, ctx)


class IngestSource:
    """Serves POST /ingest: decode + validate the body, enqueue it, answer 202 / 413 / 429."""

    def __init__(self, cfg: IngestConfig, ctx: SourceContext) -> None:
        self.cfg = cfg
        self.name = cfg.name
        self.ctx = ctx
        ctx.health.type = "ingest"
        ctx.health.state = "listening"
        ctx.health.connected = True

    async def run(self) -> None:
        await anyio.sleep_forever()

    def statistics(self) -> SourceStats:
        return self.ctx.health.snapshot(self.ctx.clock.now_ms())

    async def handle(self, request: web.Request) -> web.Response:
        ctx = self.ctx
        if request.content_length is not None and request.content_length > request.client_max_size:
            return _too_large(request.client_max_size)
        try:
            body = await request.read()
        except web.HTTPRequestEntityTooLarge:
            return _too_large(request.client_max_size)
        queue = ctx.queue
        decoded = await ctx.decode_off_loop(body)
        acked = anyio.Event() if self.cfg.ack == "durable" else None
        delivery = Delivery(batch=decoded.batch, rejected=decoded.rejected, received_ms=ctx.clock.now_ms(), acked=acked)
        # A full queue (overflow = "block") is waited on for up to FULL_WAIT_S before the 429: the
        # bodies waiting get the room as it frees, instead of losing it, retry after retry, to
        # clients fresh from their 202 (such a body fell behind the watermark and was dead-lettered late).
        queued = False
        with anyio.move_on_after(min(FULL_WAIT_S, self.cfg.ack_timeout_s)):
            await queue.put(delivery)
            queued = True
        if not queued:
            ctx.health.accepted -= len(decoded.batch)
            ctx.health.rejected -= len(decoded.rejected)
            ctx.health.received -= decoded.total
            return _busy()
        answer = {"accepted": len(decoded.batch), "rejected": len(decoded.rejected)}
        if acked is not None:
            with anyio.move_on_after(self.cfg.ack_timeout_s):
                await acked.wait()
            if not acked.is_set():
                return web.json_response({**answer, "error": "not committed in time"}, status=503,
                                         dumps=_dumps, headers={"Retry-After": "1"})
        if delivery.dropped:
            answer["dropped"] = len(decoded.batch)
        return web.json_response(answer, status=202, dumps=_dumps)


def _dumps(obj: object) -> str:
    return orjson.dumps(obj).decode()


def _too_large(limit: int) -> web.Response:
    return web.json_response({"error": f"body larger than http.max_body ({limit} bytes)"}, status=413, dumps=_dumps)


def _busy() -> web.Response:
    return web.json_response({"error": "ingest queue full, retry later"}, status=429,
                             headers={"Retry-After": "1"}, dumps=_dumps)
