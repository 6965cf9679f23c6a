"""Acceptance oracle (issue 3): every Arrow window row the daemon writes equals DuckDB's SQL answer.

One daemon run replays `storepulse storefront --out` events over polling and websocket, with duplicates,
3 s jitter and very late events; each test checks one property of its output against DuckDB.
"""

from __future__ import annotations

import math
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import datasketches
import duckdb
import orjson
import pyarrow.dataset as pads
import pytest

from daemon.metrics.sketches import KLL_K
from tests.conftest import REPO, DaemonFactory, Proc, wait_until
from tests.integration.replay import open_replay

pytestmark = pytest.mark.timeout(180)

SEED = 11
N_EVENTS = 30_000
RATE_PER_S = 200.0                 # 30k events span ~150 s of event time
GENERATED_START_MS = 1_700_000_000_000
SHIFT_STEP_MS = 60_000             # a multiple of every window size and slide: the same windows every run
SPAN_END_AGO_MS = 50_000           # the last event is 50-110 s old: past session gap + lateness soon after delivery
JITTER_MS = 3_000
DUPLICATE_SHARE = 0.02
N_VERY_LATE = 6
VERY_LATE_AGO_MS = 300_000
LATENESS_MS = 10_000
TUMBLE_MS = 10_000
HOP_SIZE_MS, HOP_SLIDE_MS = 30_000, 10_000
SESSION_GAP_MS = 20_000
HOPPING_TYPES = ("view", "cart", "purchase")
DISTINCT_REL_ERROR = 0.02
# KLL's a-priori normalized rank error for one quantile (99% confidence), as the sketch states it.
KLL_RANK_ERROR = datasketches.kll_doubles_sketch.get_normalized_rank_error(KLL_K, False)

CONFIG = """
[storage]
data_dir = "{data}"
commit_interval = "100ms"
flush_interval = "1s"

[pipeline]
allowed_lateness = "10s"
idle_timeout = "3s"
dedupe_ttl = "1h"
max_future_skew = "1m"

[sources.orders]
type = "http_poll"
url = "@POLL_URL@"
limit = 500
min_interval = "20ms"
max_interval = "300ms"

[sources.clicks]
type = "websocket"
url = "@FEED_URL@"

[[aggregations]]
name = "by_category"
group_by = ["category"]
window = { type = "tumbling", size = "10s" }
[aggregations.metrics]
events = "count"
revenue = "sum(revenue)"
avg_price = "mean(price)"
min_price = "min(price)"
max_price = "max(price)"
users = "distinct(user_id)"
p50_price = "p50(price)"
p90_price = "p90(price)"

[[aggregations]]
name = "by_type"
where = { type = ["view", "cart", "purchase"] }
group_by = ["type"]
window = { type = "hopping", size = "30s", slide = "10s" }
[aggregations.metrics]
events = "count"
revenue = "sum(revenue)"
users = "distinct(user_id)"
items = "distinct(item_id)"
ids = "distinct(event_id)"          # ~5000 per window: the HLL estimator proper, not its exact small modes

[[aggregations]]
name = "user_sessions"
group_by = ["user_id"]
window = { type = "session", gap = "20s" }
[aggregations.metrics]
events = "count"
revenue = "sum(revenue)"
first_ts = "min(ts)"
last_ts = "max(ts)"
max_price = "max(price)"
items = "distinct(item_id)"
"""

# --- the oracle: DuckDB SQL over the events the daemon should have counted -----------------------------

LOAD_EVENTS = """
CREATE TABLE ev AS
SELECT event_id, ts + $shift_ms AS ts, type, user_id, item_id, category, price, quantity,
       CASE WHEN type = 'purchase' THEN price * quantity ELSE 0.0 END AS revenue
FROM read_json($path, format = 'newline_delimited', columns = {
    event_id: 'VARCHAR', ts: 'BIGINT', type: 'VARCHAR', user_id: 'VARCHAR', session_id: 'VARCHAR',
    item_id: 'VARCHAR', category: 'VARCHAR', price: 'DOUBLE', quantity: 'BIGINT'})
"""

TUMBLING_ORACLE = f"""
SELECT ts // {TUMBLE_MS} * {TUMBLE_MS} AS ws, ts // {TUMBLE_MS} * {TUMBLE_MS} + {TUMBLE_MS} AS we, category,
       count(*) AS events, sum(revenue) AS revenue, avg(price) AS avg_price, min(price) AS min_price,
       max(price) AS max_price, count(DISTINCT user_id) AS users
FROM ev GROUP BY ALL
"""

HOPPING_ORACLE = f"""
SELECT ts // {HOP_SLIDE_MS} * {HOP_SLIDE_MS} - k * {HOP_SLIDE_MS} AS ws,
       ts // {HOP_SLIDE_MS} * {HOP_SLIDE_MS} - k * {HOP_SLIDE_MS} + {HOP_SIZE_MS} AS we, type,
       count(*) AS events, sum(revenue) AS revenue, count(DISTINCT user_id) AS users,
       count(DISTINCT item_id) AS items, count(DISTINCT event_id) AS ids
FROM ev, range(0, {HOP_SIZE_MS // HOP_SLIDE_MS}) AS hop(k)
WHERE type IN {HOPPING_TYPES}
GROUP BY ALL
"""

SESSION_ORACLE = f"""
WITH gaps AS (
    SELECT *, ts - lag(ts) OVER (PARTITION BY user_id ORDER BY ts) AS since_prev FROM ev
), numbered AS (
    SELECT *, sum(CASE WHEN since_prev IS NULL OR since_prev >= {SESSION_GAP_MS} THEN 1 ELSE 0 END)
              OVER (PARTITION BY user_id ORDER BY ts ROWS UNBOUNDED PRECEDING) AS session_no
    FROM gaps
)
SELECT min(ts) AS ws, max(ts) + {SESSION_GAP_MS} AS we, user_id,
       count(*) AS events, sum(revenue) AS revenue, min(ts) AS first_ts, max(ts) AS last_ts,
       max(price) AS max_price, count(DISTINCT item_id) AS items
FROM numbered GROUP BY user_id, session_no
"""

# Each reported quantile against the exact ranks of the window's values: how many are below and at most it.
QUANTILE_RANKS = f"""
SELECT epoch_ms(w.window_start) AS ws, w.category, w.p50_price, w.p90_price, count(e.price) AS n,
       count(*) FILTER (WHERE e.price < w.p50_price) AS below50, count(*) FILTER (WHERE e.price <= w.p50_price) AS upto50,
       count(*) FILTER (WHERE e.price < w.p90_price) AS below90, count(*) FILTER (WHERE e.price <= w.p90_price) AS upto90,
       bool_or(e.price = w.p50_price) AS seen50, bool_or(e.price = w.p90_price) AS seen90
FROM daemon_by_category AS w
JOIN ev AS e ON e.category = w.category AND e.ts >= epoch_ms(w.window_start) AND e.ts < epoch_ms(w.window_end)
GROUP BY ALL
"""


@dataclass(frozen=True, slots=True)
class AggCheck:
    """How one aggregation's Arrow rows are compared with its oracle query."""

    name: str
    oracle_sql: str
    key: str
    exact: tuple[str, ...]        # count/sum/mean/min/max: equal (floats to 1e-9 relative)
    distinct: tuple[str, ...]     # HLL: within 2% of the exact distinct count


CHECKS = {
    "tumbling": AggCheck("by_category", TUMBLING_ORACLE, "category",
                         ("events", "revenue", "avg_price", "min_price", "max_price"), ("users",)),
    "hopping": AggCheck("by_type", HOPPING_ORACLE, "type", ("events", "revenue"), ("users", "items", "ids")),
    "session": AggCheck("user_sessions", SESSION_ORACLE, "user_id",
                        ("events", "revenue", "first_ts", "last_ts", "max_price"), ("items",)),
}


# --- the replayed streams ----------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Streams:
    """What the replay server sends: two jittered streams with duplicates, and the very late tail."""

    poll: list[dict[str, Any]]
    feed: list[dict[str, Any]]
    duplicates: int
    late_poll: list[dict[str, Any]]
    late_feed: list[dict[str, Any]]


def write_storefront_events(path: Path) -> list[dict[str, Any]]:
    """`storepulse storefront --out` events: the same ids, users, items and relative times every run."""
    subprocess.run([sys.executable, "-m", "daemon", "storefront", "--out", str(path), "--count", str(N_EVENTS),
                    "--start-ms", str(GENERATED_START_MS), "--rate", str(RATE_PER_S), "--seed", str(SEED)],
                   cwd=REPO, check=True, capture_output=True, timeout=60)
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def recent_shift_ms(events: list[dict[str, Any]], now_ms: int) -> int:
    """Whole minutes that move the events into the recent past (the daemon's watermark follows the clock).

    Whole minutes keep every event in the same windows, so sketch inputs (and answers) repeat run to run.
    """
    return (now_ms - SPAN_END_AGO_MS - events[-1]["ts"]) // SHIFT_STEP_MS * SHIFT_STEP_MS


def jittered(events: list[tuple[dict[str, Any], float]]) -> list[dict[str, Any]]:
    """Events in order of ts + their delay: each arrives at most JITTER_MS after newer ones."""
    return [dict(e) for e, _ in sorted(events, key=lambda p: p[0]["ts"] + p[1])]


def build_streams(events: list[dict[str, Any]], now_ms: int, rng: random.Random) -> Streams:
    """Alternate events between the two sources, re-send 2% of them (same or other source), jitter by 3 s."""
    lanes: tuple[list[tuple[dict[str, Any], float]], ...] = ([], [])
    for i, e in enumerate(events):
        lanes[i % 2].append((e, rng.uniform(0, JITTER_MS)))
    picked = rng.sample(range(len(events)), int(len(events) * DUPLICATE_SHARE))
    for n, i in enumerate(picked):
        lane = i % 2 if n % 2 else 1 - i % 2      # half on the same source, half on the other
        lanes[lane].append((events[i], rng.uniform(0, JITTER_MS)))
    poll, feed = jittered(lanes[0]), jittered(lanes[1])
    for seq, e in enumerate(feed, start=1):
        e["seq"] = seq
    late = []
    for n, i in enumerate(rng.sample(range(len(events)), N_VERY_LATE)):
        late.append(events[i] | {"event_id": f"very-late-{n}", "ts": now_ms - VERY_LATE_AGO_MS - n * 1000})
    late_feed = [e | {"seq": len(feed) + n} for n, e in enumerate(late[N_VERY_LATE // 2:], start=1)]
    return Streams(poll, feed, len(picked), late[:N_VERY_LATE // 2], late_feed)


# --- one daemon run, shared by the tests ------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Run:
    data_dir: Path
    events_path: Path
    shift_ms: int
    streams: Streams
    stats_on_time: dict[str, Any]      # /stats once every on-time event and duplicate was processed
    stats_final: dict[str, Any]        # /stats after the very late events, all windows closed
    exit_code: int


def stats_of(d: Proc) -> dict[str, Any]:
    return d.get_json("/stats")


def replay_through_daemon(tmp: Path) -> Run:
    """Serve the streams, run the daemon until every window closed, append the very late tail, SIGTERM it."""
    events_path = tmp / "storefront.ndjson"
    generated = write_storefront_events(events_path)
    now_ms = time.time_ns() // 1_000_000
    shift_ms = recent_shift_ms(generated, now_ms)
    events = [e | {"ts": e["ts"] + shift_ms} for e in generated]
    streams = build_streams(events, now_ms, random.Random(SEED))
    factory = DaemonFactory(tmp)
    try:
        with open_replay(streams.poll, streams.feed, frame_size=100) as replay:
            config = CONFIG.replace("@POLL_URL@", replay.poll_url).replace("@FEED_URL@", replay.feed_url)
            d = factory.start(config)
            expected = len(events) + streams.duplicates

            def on_time_done() -> dict[str, Any] | None:
                s = stats_of(d)
                ev = s["events"]
                return s if ev["accepted"] + ev["duplicate"] + ev["rejected"] >= expected else None

            stats_on_time = wait_until(on_time_done, 60, 0.2, what=f"{expected} events processed")
            replay.append(streams.late_poll, streams.late_feed)
            wait_until(lambda: stats_of(d)["events"]["late"] >= N_VERY_LATE, 20, 0.2, what="very late events")

            def all_closed() -> dict[str, Any] | None:
                s = stats_of(d)
                return s if all(a["open_windows"] == 0 for a in s["aggregations"].values()) else None

            stats_final = wait_until(all_closed, 30, 0.2, what="every window closed")
            exit_code = d.stop()
    finally:
        factory.close()
    return Run(tmp / "data", events_path, shift_ms, streams, stats_on_time, stats_final, exit_code)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """The one daemon run every test here inspects."""
    return replay_through_daemon(tmp_path_factory.mktemp("oracle"))


@pytest.fixture(scope="module")
def con(run: Run) -> Iterator[duckdb.DuckDBPyConnection]:
    """DuckDB with the oracle's events (`ev`) and each aggregation's Arrow dataset (`daemon_<name>`)."""
    c = duckdb.connect()
    c.execute("SET TimeZone = 'UTC'")
    c.execute(LOAD_EVENTS, {"path": str(run.events_path), "shift_ms": run.shift_ms})
    for check in CHECKS.values():
        c.register(f"daemon_{check.name}", open_dataset(run.data_dir / "windows" / check.name))
    try:
        yield c
    finally:
        c.close()


def open_dataset(path: Path) -> pads.Dataset:
    return pads.dataset(path, format="ipc", partitioning="hive")


def fetch(c: duckdb.DuckDBPyConnection, sql: str) -> list[dict[str, Any]]:
    cur = c.execute(sql)
    names = [d[0] for d in cur.description]
    return [dict(zip(names, row)) for row in cur.fetchall()]


def same_number(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-9)


def compare_rows(c: duckdb.DuckDBPyConnection, check: AggCheck) -> tuple[int, list[str]]:
    """(rows compared, problems) for one aggregation: same (window, key) set, metrics within bounds."""
    metrics = ", ".join((*check.exact, *check.distinct))
    got = fetch(c, f"SELECT epoch_ms(window_start) AS ws, epoch_ms(window_end) AS we, {check.key}, {metrics} "
                   f"FROM daemon_{check.name}")
    want = fetch(c, check.oracle_sql)
    got_by = {(r["ws"], r["we"], r[check.key]): r for r in got}
    want_by = {(r["ws"], r["we"], r[check.key]): r for r in want}
    problems = [f"missing window {k}: {want_by[k]}" for k in sorted(want_by.keys() - got_by.keys())[:5]]
    problems += [f"unexpected window {k}: {got_by[k]}" for k in sorted(got_by.keys() - want_by.keys())[:5]]
    for k in sorted(want_by.keys() & got_by.keys()):
        g, w = got_by[k], want_by[k]
        for m in check.exact:
            if not same_number(g[m], w[m]):
                problems.append(f"{k} {m}: daemon {g[m]!r} != oracle {w[m]!r}")
        for m in check.distinct:
            if abs(g[m] - w[m]) > DISTINCT_REL_ERROR * w[m]:
                problems.append(f"{k} {m}: daemon {g[m]} not within 2% of oracle {w[m]}")
    return len(got), problems


def explain(run: Run, problems: list[str]) -> str:
    return f"{len(problems)} problems, first: {problems[:12]}\nstats: {run.stats_final['events']}"


# --- the tests ----------------------------------------------------------------------------------------

def test_run_delivers_every_event_once_and_exits_zero(run: Run):
    """Every on-time event counts once, duplicates are counted as such, no jittered event is late, SIGTERM exits 0."""
    on_time = run.stats_on_time["events"]
    assert on_time["accepted"] == N_EVENTS
    assert on_time["duplicate"] == run.streams.duplicates
    assert on_time["late"] == 0 and on_time["rejected"] == 0, on_time
    final = run.stats_final["events"]
    assert final["accepted"] == N_EVENTS and final["late"] == N_VERY_LATE
    assert final["rejected_by_reason"] == {"late": N_VERY_LATE}
    assert run.stats_final["sources"]["orders"]["accepted"] > 0 and run.stats_final["sources"]["clicks"]["accepted"] > 0
    assert run.exit_code == 0


@pytest.mark.parametrize("kind", list(CHECKS))
def test_window_rows_equal_duckdb_oracle(run: Run, con: duckdb.DuckDBPyConnection, kind: str):
    """Every Arrow window row equals DuckDB's SQL answer: exact count/sum/mean/min/max, distinct within 2%."""
    compared, problems = compare_rows(con, CHECKS[kind])
    assert not problems, explain(run, problems)
    assert compared > 20


def test_quantiles_within_kll_rank_error(run: Run, con: duckdb.DuckDBPyConnection):
    """p50/p90 are values of the window whose exact rank lies within the KLL error of q (exact up to k values)."""
    rows = fetch(con, QUANTILE_RANKS)
    assert len(rows) == fetch(con, "SELECT count(*) AS n FROM daemon_by_category")[0]["n"]
    problems, sketched = [], 0
    for r in rows:
        n = r["n"]
        sketched += n > KLL_K
        for q, col, below, upto, seen in ((0.5, "p50_price", "below50", "upto50", "seen50"),
                                          (0.9, "p90_price", "below90", "upto90", "seen90")):
            if r[col] is None:
                if n:
                    problems.append(f"{r['ws']} {r['category']} {col}: null over {n} prices")
                continue
            eps = 1e-9 if n <= KLL_K else KLL_RANK_ERROR   # KLL is exact while it holds <= k values
            lo, hi = r[below] / n, r[upto] / n             # the ranks the reported value covers
            if not r[seen] or lo > q + eps or hi < q - eps or (n <= KLL_K and lo >= q):
                problems.append(f"{r['ws']} {r['category']} {col}={r[col]}: ranks [{lo:.4f}, {hi:.4f}] of n={n}, q={q}")
    assert not problems, explain(run, problems)
    assert sketched > 0, "no window was large enough to exercise the sketch"


def test_arrow_files_open_with_pyarrow_and_duckdb_without_duplicate_rows(run: Run, con: duckdb.DuckDBPyConnection):
    """Each windows/<agg> dataset opens with pyarrow.dataset (hive) and DuckDB, one row per (window, key)."""
    for check in CHECKS.values():
        table = open_dataset(run.data_dir / "windows" / check.name).to_table()
        n_duck = fetch(con, f"SELECT count(*) AS n FROM daemon_{check.name}")[0]["n"]
        assert table.num_rows == n_duck > 0
        dupes = fetch(con, f"SELECT window_start, window_end, {check.key}, count(*) AS n FROM daemon_{check.name} "
                           f"GROUP BY ALL HAVING count(*) > 1")
        assert dupes == [], f"{check.name}: duplicate (window, key) rows {dupes[:5]}"
        starts = table.column("window_start").cast("int64").to_pylist()
        dates = table.column("date").to_pylist()
        assert all(str(d) == datetime.fromtimestamp(s / 1000, UTC).strftime("%Y-%m-%d") for s, d in zip(starts, dates))


def test_archive_holds_each_accepted_event_once(run: Run, con: duckdb.DuckDBPyConnection):
    """events/ holds exactly the storefront's events, each once, from both sources; no very late one."""
    archive = open_dataset(run.data_dir / "events")
    con.register("archive", archive)
    row = fetch(con, "SELECT count(*) AS n, count(DISTINCT event_id) AS ids, count(DISTINCT source) AS sources, "
                     "count(*) FILTER (WHERE event_id NOT IN (SELECT event_id FROM ev)) AS foreign_ids FROM archive")[0]
    assert row == {"n": N_EVENTS, "ids": N_EVENTS, "sources": 2, "foreign_ids": 0}


def test_very_late_events_are_dead_lettered_as_late(run: Run):
    """The events sent 5 minutes behind the watermark are in deadletter/ with reason 'late', from both sources."""
    table = open_dataset(run.data_dir / "deadletter").to_table()
    rows = table.to_pylist()
    assert {r["reason"] for r in rows} == {"late"}
    late_ids = sorted(orjson.loads(r["raw"])["event_id"] for r in rows)
    assert late_ids == sorted(e["event_id"] for e in run.streams.late_poll + run.streams.late_feed)
    assert {r["source"] for r in rows} == {"orders", "clicks"}
