"""aiohttp Application factory: route table, body limit, auth; start and stop of the listener."""

from __future__ import annotations

from contextlib import asynccontextmanager
from collections.abc import AsyncIterator

from aiohttp import web

from daemon.web import health, queries, stats
from daemon.web.auth import auth_middleware, load_token
from daemon.web.context import CONTEXT, WebContext
from daemon.web.prometheus import metrics


def build_app(ctx: WebContext) -> web.Application:
    token = load_token(ctx.cfg.http.token_file) if ctx.cfg.http.token_file else None
    middlewares = [auth_middleware(token)] if token else []
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
    runner = web.AppRunner(build_app(ctx), access_log=None, handle_signals=False,
                           keepalive_timeout=ctx.cfg.http.idle_timeout_s, shutdown_timeout=2.0)
    await runner.setup()
    site = web.TCPSite(runner, ctx.cfg.http.host, ctx.cfg.http.port, backlog=512, reuse_address=True)
    try:
        await site.start()
        yield runner
    finally:
        await runner.cleanup()
