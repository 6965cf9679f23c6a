"""/healthz and /readyz."""

from __future__ import annotations

from aiohttp import web

from daemon.web.context import CONTEXT, WebContext


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


def readiness(ctx: WebContext) -> list[str]:
    """Reasons the daemon is not ready; empty when it is."""
    reasons = list(ctx.health.not_ready_reasons)
    if not ctx.health.ready:
        reasons.append("starting")
    if ctx.health.store_error:
        reasons.append(f"store: {ctx.health.store_error}")
    failed = ctx.runner.statistics().commit_failed
    if failed:
        reasons.append(f"commit failed: {failed}")
    for name, source in ctx.sources.items():
        s = source.statistics()
        if not s.connected and s.state not in ("polling", "listening"):
            reasons.append(f"source {name}: {s.state}" + (f" ({s.last_error})" if s.last_error else ""))
    return reasons


async def readyz(request: web.Request) -> web.Response:
    reasons = readiness(request.app[CONTEXT])
    if reasons:
        return web.json_response({"status": "not ready", "reasons": reasons}, status=503)
    return web.json_response({"status": "ready"})
