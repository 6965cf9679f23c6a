"""aiohttp Application factory: route table, body limit, auth; start and stop of the listener."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import anyio
from aiohttp import web

from daemon.web import health, queries, stats
from daemon.web.auth import auth_middleware, load_token
from daemon.web.context import CONTEXT, WebContext
from daemon.web.limits import MAX_FIELD_BYTES, MAX_HEADERS, MAX_LINE_BYTES, LimitedTCPSite
from daemon.web.prometheus import metrics


LINGER_S = 2.0


def body_deadline_middleware(timeout_s: float) -> Callable[..., Awaitable[web.StreamResponse]]:
    """Read a request body within `timeout_s` before the handler runs; a 1 byte/s sender gets 408.

    aiohttp caches the body, so the handler's own `await request.read()` returns it at once.
    """
    @web.middleware
    async def deadline(request: web.Request,
                       handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        if request.body_exists:
            try:
                with anyio.fail_after(timeout_s):
                    await request.read()
            except TimeoutError:
                resp = web.json_response({"error": f"request body not received within {timeout_s:g}s"}, status=408)
                resp.force_close()
                return resp
            except web.HTTPRequestEntityTooLarge:
                return web.json_response({"error": f"body larger than http.max_body ({request.client_max_size} bytes)"},
                                         status=413)
        return await handler(request)
    return deadline


def build_app(ctx: WebContext) -> web.Application:
    token = load_token(ctx.cfg.http.token_file) if ctx.cfg.http.token_file else None
    middlewares = [auth_middleware(token)] if token else []
    middlewares.append(body_deadline_middleware(ctx.cfg.http.idle_timeout_s))
    app = web.Application(client_max_size=ctx.cfg.http.max_body_bytes, middlewares=middlewares)
    app[CONTEXT] = ctx
    routes = [
        web.get("/healthz", health.healthz),
        web.get("/readyz", health.readyz),
        web.get("/stats", stats.stats),
        web.get("/metrics", metrics),
        web.get("/windows/{aggregation}", queries.windows),
        web.get("/anomalies", queries.anomalies),
        web.get("/recommendations/{user_id}", queries.recommendations),
        web.get("/trending", queries.trending),
    ]
    routes += [web.post("/ingest", ingest), web.post("/ingest/{name}", ingest)]
    app.add_routes(routes)
    return app


async def ingest(request: web.Request) -> web.StreamResponse:
    """POST /ingest goes to the first ingest source, /ingest/{name} to that one (looked up per request: reload may change them)."""
    ctx = request.app[CONTEXT]
    name = request.match_info.get("name")
    targets = [s for s in ctx.sources.values() if getattr(s, "handle", None) is not None and (name is None or s.name == name)]
    if not targets:
        what = f"no ingest source named {name!r}" if name else "no source of type ingest is configured"
        return web.json_response({"error": what}, status=404)
    return await targets[0].handle(request)


@asynccontextmanager
async def open_http_server(ctx: WebContext) -> AsyncIterator[web.AppRunner]:
    """Listen on http.listen for the duration of the block; stop within a bounded time."""
    runner = web.AppRunner(
        build_app(ctx), access_log=None, handle_signals=False, shutdown_timeout=2.0,
        # aiohttp arms this timer when a connection opens and re-arms it only after a response, so it
        # bounds idle connections AND the header phase: a client trickling headers is dropped after it.
        keepalive_timeout=ctx.cfg.http.idle_timeout_s,
        max_line_size=MAX_LINE_BYTES, max_field_size=MAX_FIELD_BYTES, max_headers=MAX_HEADERS,
        lingering_time=LINGER_S,    # at most this long draining a body the handler left unread
    )
    await runner.setup()
    site = LimitedTCPSite(runner, ctx.cfg.http.host, ctx.cfg.http.port,
                          max_connections=ctx.cfg.http.max_connections, backlog=512)
    ctx.health.listener = site
    try:
        await site.start()
        yield runner
    finally:
        await runner.cleanup()
