"""The two yardsticks, run on the benchmark's own events in a child process each (so their RSS is theirs):
a naive per-event Python loop of the four aggregations, and DuckDB's offline query of the same (the ceiling).

`python -m benchmarks.baselines naive|duckdb_ndjson|duckdb_arrow EVENTS.ndjson` prints one JSON object.
"""

from __future__ import annotations

import math
import resource
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson

LATENESS_MS = 5_000
SESSION_GAP_MS = 300_000
HOP_SIZE_MS, HOP_SLIDE_MS = 300_000, 60_000
SALES_MS, TYPES_MS = 60_000, 10_000
CLOSE_EVERY_MS = 1_000      # the naive loop looks for windows to close once per second of event time
LABELS = {
    "naive": "naive per-event Python loop",
    "duckdb_ndjson": "DuckDB offline: NDJSON file → 4 aggregations",
    "duckdb_arrow": "DuckDB offline: Arrow table in memory → 4 aggregations",
}


# -- the naive loop -------------------------------------------------------------------------------

def naive_loop(pages: Iterable[bytes]) -> dict[str, int]:
    """Parse each NDJSON line, fold it into dicts of per-(window, key) state, emit rows as the
    watermark (max ts − lateness) passes window ends; exact distinct/p95/topk. Returns row counts."""
    sales: dict[tuple[int, Any], list[Any]] = {}
    views: dict[tuple[int, Any], list[Any]] = {}
    types: dict[tuple[int, Any], list[Any]] = {}
    sessions: dict[Any, list[Any]] = {}
    rows: dict[str, list[dict[str, Any]]] = {"sales_by_category": [], "views_per_item": [],
                                             "events_by_type": [], "user_sessions": []}
    max_ts = -math.inf
    watermark = -math.inf
    next_close = -math.inf
    late = 0
    loads = orjson.loads
    for page in pages:
        for line in page.split(b"\n"):
            if not line:
                continue
            e = loads(line)
            ts = e["ts"]
            if ts < watermark:
                late += 1
                continue
            etype = e["type"]
            user = e["user_id"]
            item = e.get("item_id")
            price = e.get("price")
            revenue = price * e.get("quantity", 1) if etype == "purchase" else 0.0
            if etype == "purchase":
                k = (ts - ts % SALES_MS, e.get("category"))
                st = sales.get(k)
                if st is None:
                    st = sales[k] = [0, 0.0, set(), [], Counter()]
                st[0] += 1
                st[1] += revenue
                st[2].add(user)
                st[3].append(price)
                st[4][item] += 1
            elif etype == "view":
                latest = ts - ts % HOP_SLIDE_MS
                for start in range(latest - HOP_SIZE_MS + HOP_SLIDE_MS, latest + 1, HOP_SLIDE_MS):
                    st = views.get((start, item))
                    if st is None:
                        st = views[(start, item)] = [0, set()]
                    st[0] += 1
                    st[1].add(user)
            k = (ts - ts % TYPES_MS, etype)
            st = types.get(k)
            if st is None:
                st = types[k] = [0, 0.0]
            st[0] += 1
            st[1] += revenue
            s = sessions.get(user)
            if s is not None and ts - s[1] >= SESSION_GAP_MS:
                rows["user_sessions"].append(_session_row(user, s))
                s = None
            if s is None:
                sessions[user] = [ts, ts, 1, revenue, {item}]
            else:
                s[1] = max(s[1], ts)
                s[2] += 1
                s[3] += revenue
                s[4].add(item)
            if ts > max_ts:
                max_ts = ts
                watermark = ts - LATENESS_MS
                if watermark >= next_close:
                    _close(watermark, sales, views, types, sessions, rows)
                    next_close = watermark + CLOSE_EVERY_MS
    _close(math.inf, sales, views, types, sessions, rows)
    counts = {k: len(v) for k, v in rows.items()}
    counts["late"] = late
    counts["events_in_types"] = sum(r["events"] for r in rows["events_by_type"])
    counts["events_in_sessions"] = sum(r["events"] for r in rows["user_sessions"])
    return counts


def _session_row(user: Any, s: list[Any]) -> dict[str, Any]:
    return {"window_start": s[0], "window_end": s[1] + SESSION_GAP_MS, "user_id": user, "events": s[2],
            "revenue": s[3], "items": len(s[4] - {None})}


def _close(wm: float, sales: dict, views: dict, types: dict, sessions: dict, rows: dict[str, list]) -> None:
    for k in [k for k in sales if k[0] + SALES_MS <= wm]:
        n, revenue, users, prices, items = sales.pop(k)
        prices.sort()
        rows["sales_by_category"].append({
            "window_start": k[0], "window_end": k[0] + SALES_MS, "category": k[1], "orders": n,
            "revenue": revenue, "avg_price": sum(prices) / n, "buyers": len(users),
            "p95_price": prices[max(0, math.ceil(0.95 * n) - 1)], "top_items": items.most_common(10)})
    for k in [k for k in views if k[0] + HOP_SIZE_MS <= wm]:
        n, users = views.pop(k)
        rows["views_per_item"].append({"window_start": k[0], "window_end": k[0] + HOP_SIZE_MS, "item_id": k[1],
                                       "views": n, "viewers": len(users)})
    for k in [k for k in types if k[0] + TYPES_MS <= wm]:
        n, revenue = types.pop(k)
        rows["events_by_type"].append({"window_start": k[0], "window_end": k[0] + TYPES_MS, "type": k[1],
                                       "events": n, "revenue": revenue})
    for user in [u for u, s in sessions.items() if s[1] + SESSION_GAP_MS <= wm]:
        rows["user_sessions"].append(_session_row(user, sessions.pop(user)))


def run_naive(path: Path) -> dict[str, Any]:
    lines = path.read_bytes().split(b"\n")
    pages = [b"\n".join(lines[i:i + 1000]) for i in range(0, len(lines), 1000)]
    del lines
    n = sum(p.count(b"\n") + 1 for p in pages if p)
    t0, c0 = time.perf_counter(), time.process_time()
    counts = naive_loop(pages)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"events": n, "seconds": round(wall, 3), "events_per_s": round(n / wall), "cpu_s": round(cpu, 2),
            "rows": counts}


# -- DuckDB -----------------------------------------------------------------------------------------

COLUMNS = ("{event_id: 'VARCHAR', ts: 'BIGINT', type: 'VARCHAR', user_id: 'VARCHAR', session_id: 'VARCHAR', "
           "item_id: 'VARCHAR', category: 'VARCHAR', price: 'DOUBLE', quantity: 'BIGINT'}")
AGGREGATIONS = {
    "sales_by_category": """
        SELECT ts // 60000 * 60000 AS window_start, category, count(*) AS orders, sum(revenue) AS revenue,
               avg(price) AS avg_price, approx_count_distinct(user_id) AS buyers,
               approx_quantile(price, 0.95) AS p95_price, approx_top_k(item_id, 10) AS top_items
        FROM ev WHERE type = 'purchase' GROUP BY ALL""",
    "views_per_item": """
        SELECT (ts // 60000 - k) * 60000 AS window_start, item_id, count(*) AS views,
               approx_count_distinct(user_id) AS viewers
        FROM ev, range(5) AS r(k) WHERE type = 'view' GROUP BY ALL""",
    "events_by_type": """
        SELECT ts // 10000 * 10000 AS window_start, type, count(*) AS events, sum(revenue) AS revenue
        FROM ev GROUP BY ALL""",
    "user_sessions": """
        WITH marked AS (
            SELECT user_id, ts, revenue, item_id,
                   CASE WHEN lag(ts) OVER w IS NULL OR ts - lag(ts) OVER w >= 300000 THEN 1 ELSE 0 END AS new
            FROM ev WINDOW w AS (PARTITION BY user_id ORDER BY ts)),
        numbered AS (
            SELECT *, sum(new) OVER (PARTITION BY user_id ORDER BY ts ROWS UNBOUNDED PRECEDING) AS session
            FROM marked)
        SELECT user_id, session, min(ts) AS window_start, max(ts) + 300000 AS window_end, count(*) AS events,
               sum(revenue) AS revenue, approx_count_distinct(item_id) AS items
        FROM numbered GROUP BY user_id, session""",
}
REVENUE = "CASE WHEN type = 'purchase' THEN price * coalesce(quantity, 1) ELSE 0.0 END AS revenue"


def _aggregate(con: Any) -> dict[str, int]:
    for name, sql in AGGREGATIONS.items():
        con.execute(f"CREATE OR REPLACE TEMP TABLE out_{name} AS {sql}")
    counts = {name: con.execute(f"SELECT count(*) FROM out_{name}").fetchall()[0][0] for name in AGGREGATIONS}
    counts["events_in_types"] = con.execute("SELECT sum(events) FROM out_events_by_type").fetchall()[0][0]
    counts["events_in_sessions"] = con.execute("SELECT sum(events) FROM out_user_sessions").fetchall()[0][0]
    return counts


def run_duckdb(path: Path, source: str) -> dict[str, Any]:
    import duckdb

    con = duckdb.connect()
    threads = con.execute("SELECT current_setting('threads')").fetchall()[0][0]
    if source == "duckdb_ndjson":
        t0, c0 = time.perf_counter(), time.process_time()
        con.execute(f"CREATE TEMP TABLE ev AS SELECT *, {REVENUE} FROM "
                    f"read_json(?, format = 'newline_delimited', columns = {COLUMNS})", [str(path)])
    else:
        import pyarrow.json as pj

        table = pj.read_json(path)
        con.register("raw", table)
        con.execute(f"CREATE TEMP VIEW ev AS SELECT *, {REVENUE} FROM raw")
        t0, c0 = time.perf_counter(), time.process_time()
    n = con.execute("SELECT count(*) FROM ev").fetchall()[0][0]
    counts = _aggregate(con)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return {"events": n, "seconds": round(wall, 3), "events_per_s": round(n / wall), "cpu_s": round(cpu, 2),
            "threads": threads, "rows": counts, "note": f"{threads} threads; approx distinct/p95/topk"}


# -- in a child process -------------------------------------------------------------------------------

def measure(kind: str, path: Path) -> dict[str, Any]:
    """Run one baseline in a fresh interpreter; its result with peak RSS and a label."""
    proc = subprocess.run([sys.executable, "-m", "benchmarks.baselines", kind, str(path)],
                          cwd=Path(__file__).resolve().parent.parent, capture_output=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"baseline {kind} failed:\n{proc.stderr.decode(errors='replace')[-2000:]}")
    out = orjson.loads(proc.stdout.splitlines()[-1])
    out["label"] = LABELS[kind]
    return out


def peak_rss_bytes() -> int:
    """VmHWM: reset by exec (ru_maxrss is not, so a child would report the parent's peak)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def main(argv: list[str]) -> int:
    kind, path = argv[0], Path(argv[1])
    result = run_naive(path) if kind == "naive" else run_duckdb(path, kind)
    result["peak_rss_mib"] = round(peak_rss_bytes() / 2**20, 1)
    print(orjson.dumps(result).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
