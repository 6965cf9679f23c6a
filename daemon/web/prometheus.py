"""/metrics: the /stats figures in the Prometheus text format (placeholder until the ops work lands)."""

from __future__ import annotations

from aiohttp import web

from daemon.web.context import CONTEXT
from daemon.web.stats import collect_stats


async def metrics(request: web.Request) -> web.Response:
    s = collect_stats(request.app[CONTEXT])
    lines = [
        "# HELP storepulse_events_received_total Events decoded from all sources.",
        "# TYPE storepulse_events_received_total counter",
        f"storepulse_events_received_total {s['events']['received']}",
        "# HELP storepulse_events_accepted_total Events folded into the pipeline.",
        "# TYPE storepulse_events_accepted_total counter",
        f"storepulse_events_accepted_total {s['events']['accepted']}",
    ]
    return web.Response(text="\n".join(lines) + "\n", content_type="text/plain")
