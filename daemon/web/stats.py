"""/stats: one JSON document built only from components' statistics() snapshots."""

from __future__ import annotations

import dataclasses
import resource
import time
from collections.abc import Mapping
from typing import Any

import orjson
from aiohttp import web

from daemon import __version__
from daemon.runtime import memory
from daemon.runtime.gcwatch import GcStats, GcWatch
from daemon.web.context import CONTEXT, WebContext


def _plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: _plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def rss_bytes() -> int:
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * resource.getpagesize()
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def collect_stats(ctx: WebContext) -> dict[str, Any]:
    """Every figure of /stats (and /metrics) as a plain dict."""
    now_mono = ctx.clock.monotonic()
    pipe = ctx.runner.statistics()
    sources = {name: _plain(s.statistics()) for name, s in ctx.sources.items()}
    queues = {name: _plain(q.statistics()) for name, q in ctx.queues.items()}
    received = sum(s["received"] for s in sources.values())
    rejected_total = sum(pipe.rejected_by_reason.values())
    wm = ctx.runner.watermarks.statistics(now_mono)
    aggs = {}
    for name, st in ctx.parts.statistics().items():
        aggs[name] = {**_plain(st), "watermark_ms": pipe.watermark_ms, "late_events": pipe.late}
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "version": __version__,
        "uptime_s": round(now_mono - ctx.health.started_mono, 3),
        "events": {
            "received": received,
            "accepted": pipe.accepted,
            "rejected": rejected_total,
            "rejected_by_reason": pipe.rejected_by_reason,
            "duplicate": pipe.duplicates,
            "late": pipe.late,
            "dropped": sum(q["dropped_events"] for q in queues.values()),
        },
        "pipeline": {
            "watermark_ms": pipe.watermark_ms,
            "closed_through_ms": pipe.closed_through_ms,   # trails watermark_ms during a chunked close
            "idle_sources": list(wm.idle_sources),
            "batches": pipe.batches,
            "events_processed": pipe.events_in,
            "process_seconds": round(pipe.process_seconds, 6),
            "dedupe": _plain(ctx.runner.dedupe.statistics()),
        },
        "sources": sources,
        "queues": queues,
        "aggregations": aggs,
        "store": _plain(ctx.checkpoint.statistics()),
        "alerts": _plain(ctx.runner.alerts.statistics()) if ctx.runner.alerts is not None else {},
        "replica": ({**_plain(ctx.runner.replica.statistics()), **_plain(ctx.runner.recommender_log())}
                    if ctx.runner.replica is not None else {}),
        "http": {
            "max_connections": ctx.cfg.http.max_connections,
            "open_connections": ctx.health.listener.open_connections if ctx.health.listener is not None else 0,
            "refused_connections": ctx.health.listener.refused if ctx.health.listener is not None else 0,
        },
        "process": {
            "rss_bytes": rss_bytes(),
            "max_rss_bytes": usage.ru_maxrss * 1024,
            "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 3),
            "loop_lag_ms": round(ctx.health.loop_lag_ms, 3),
            **_gc(ctx.health.gc),
            "malloc_trims": ctx.runner.trimmer.trims,
            "malloc_trim_seconds": round(ctx.runner.trimmer.seconds, 6),
            **memory.breakdown(ctx.health.heap),
            "time_ms": int(time.time() * 1000),
        },
    }


def _gc(watch: GcWatch | None) -> dict[str, Any]:
    st = watch.statistics() if watch is not None else GcStats(0, 0, 0.0, 0.0)
    return {"gc_collections": st.collections, "gc_full_collections": st.full_collections,
            "gc_seconds": round(st.seconds, 6), "gc_max_pause_ms": round(st.max_pause_ms, 3)}


async def stats(request: web.Request) -> web.Response:
    body = orjson.dumps(collect_stats(request.app[CONTEXT]), option=orjson.OPT_INDENT_2)
    return web.Response(body=body, content_type="application/json")
