"""/windows, /anomalies: reads of LMDB; /recommendations, /trending: forwarded to the recommendations process."""

from __future__ import annotations

import urllib.parse
from typing import Any

import orjson
from aiohttp import web

from daemon.analyzers.recommend import Recommender
from daemon.analyzers.trending import Trending
from daemon.web.context import CONTEXT, WebContext

MAX_LIMIT = 10_000


def int_param(request: web.Request, name: str, default: int, hi: int = MAX_LIMIT) -> int:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise web.HTTPBadRequest(text=f"{name} must be an integer") from None
    if not 1 <= value <= hi:
        raise web.HTTPBadRequest(text=f"{name} must be between 1 and {hi}")
    return value


def json_response(obj: object, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(obj), status=status, content_type="application/json")


def _key_param(request: web.Request, group_by: tuple[str, ...]) -> bytes | None:
    """The group key from `?key=` (a value, or a JSON array for several fields) or `?<field>=`."""
    raw = request.query.get("key")
    if raw is not None:
        if raw.startswith("["):
            try:
                values = orjson.loads(raw)
            except orjson.JSONDecodeError:
                raise web.HTTPBadRequest(text="key is not a JSON array") from None
        else:
            values = [raw]
        if len(values) != len(group_by):
            raise web.HTTPBadRequest(text=f"key needs {len(group_by)} value(s): {', '.join(group_by) or 'none'}")
        return orjson.dumps([str(v) if v is not None else None for v in values])
    if group_by and all(f in request.query for f in group_by):
        return orjson.dumps([request.query[f] for f in group_by])
    return None


async def windows(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    name = request.match_info["aggregation"]
    if name not in ctx.parts.aggregations:
        return json_response({"error": f"no aggregation named {name!r}", "aggregations": sorted(ctx.parts.aggregations)}, 404)
    agg = ctx.parts.aggregation(name)
    key = _key_param(request, agg.cfg.group_by)
    limit = int_param(request, "limit", 100)
    rows = ctx.checkpoint.latest_windows(name, key, limit)
    body = b'{"aggregation":' + orjson.dumps(name) + b',"windows":[' + b",".join(rows) + b"]}"
    return web.Response(body=body, content_type="application/json")


async def anomalies(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    limit = int_param(request, "limit", 100)
    since = request.query.get("since")
    since_ms = 0
    if since:
        try:
            since_ms = int(since)
        except ValueError:
            raise web.HTTPBadRequest(text="since must be epoch milliseconds") from None
    rows = ctx.checkpoint.recent_anomalies(since_ms, limit)
    return web.Response(body=b'{"anomalies":[' + b",".join(rows) + b"]}", content_type="application/json")


def recommendations_answer(rec: Recommender, user: str, k: int, now_ms: int) -> dict[str, Any]:
    """The body of GET /recommendations/{user_id} (the replica process answers with the same)."""
    items = rec.recommend(user, k, now_ms)
    return {"user_id": user, "items": [{"item_id": i, "score": round(s, 6)} for i, s in items]}


def trending_answer(tr: Trending, category: str | None, k: int, now_ms: int) -> dict[str, Any]:
    """The body of GET /trending."""
    items = tr.top(category, k, now_ms)
    return {"category": category, "items": [{"item_id": i, "score": round(s, 6)} for i, s in items]}


async def recommendations(request: web.Request) -> web.Response:
    """Answered by the recommendations process (daemon/replica/), at the daemon's read clock."""
    ctx = request.app[CONTEXT]
    if ctx.runner.replica is None:
        return json_response({"error": "recommendations are not enabled ([recommendations] in the config)"}, 404)
    k = int_param(request, "k", 10, 1000)
    user = urllib.parse.quote(request.match_info["user_id"], safe="")
    return await _forward(ctx, f"/recommendations/{user}", {"k": k})


async def trending(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    if ctx.runner.replica is None:
        return json_response({"error": "trending needs [recommendations] in the config"}, 404)
    k = int_param(request, "k", 10, 1000)
    query: dict[str, object] = {"k": k}
    if request.query.get("category"):
        query["category"] = request.query["category"]
    return await _forward(ctx, "/trending", query)


async def _forward(ctx: WebContext, path: str, query: dict[str, object]) -> web.Response:
    # The daemon's read clock, as the recommender in this process used to read at: the watermark
    # (event time), or the wall clock before the first event.
    query["at"] = max(1, ctx.runner.watermarks.value_or_now(ctx.clock.now_ms()))
    assert ctx.runner.replica is not None
    status, body = await ctx.runner.replica.get(path + "?" + urllib.parse.urlencode(query))
    return web.Response(body=body, status=status, content_type="application/json")
