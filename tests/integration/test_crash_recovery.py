"""Crash recovery end to end: SIGKILLs and injected exits inside the commit change no window row.

Every run reads the same fixed storefront events (orders polled, clicks over a websocket) from a
shop that outlives the daemon; its windows must equal an uninterrupted reference run, row for row.
Set STOREPULSE_CRASH_SEED to replay the kill moments of a failed run.
"""

from __future__ import annotations

import os
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.dataset as ds
import pytest

from daemon.stores import lmdb_state as layout
from daemon.stores.checkpoint import CRASH_POINTS
from daemon.stores.lmdb_state import LmdbState
from tests.conftest import DaemonFactory, Proc, wait_until
from tests.integration.feed import FeedThread, split_feed, storefront_events

pytestmark = pytest.mark.timeout(240)

N_EVENTS = 4000
EVENT_RATE = 16.0                  # events per second of event time: 4,000 events span ~4 minutes
FEED_SEED = 11
FAST_RELEASE_S = 4.0               # reference, injected crashes, map growth
KILL_RELEASE_S_PER_KILL = 1.6      # the shop keeps selling while the daemon is killed and restarted
GROUP_BY = {"by_type": "type", "views_by_category": "category", "user_sessions": "user_id", "sales": "category"}
AGGREGATIONS = tuple(GROUP_BY)
SOURCES = {"orders", "clicks"}

# allowed_lateness exceeds any disorder in the feed (none within a source; the watermark waits for
# the slower source while it is not idle), so the same events are never late in any run; the
# short idle_timeout lets the wall clock close the last windows once the feed is drained.
CONFIG = """
[storage]
data_dir = "{data}"
commit_interval = "100ms"
flush_interval = "300ms"
state_interval = "700ms"   # kills land between full state writes: restore replays logged folds
MAP_SIZE

[pipeline]
allowed_lateness = "30s"
idle_timeout = "2s"

[sources.orders]
type = "http_poll"
url = "POLL_URL"
limit = 50
min_interval = "50ms"
max_interval = "200ms"
min_backoff = "50ms"
max_backoff = "500ms"

[sources.clicks]
type = "websocket"
url = "WS_URL"
heartbeat = "5s"
min_backoff = "50ms"
max_backoff = "500ms"

[recommendations]
half_life = "1h"

[[aggregations]]
name = "by_type"
group_by = ["type"]
window = { type = "tumbling", size = "10s" }
metrics = { events = "count", revenue = "sum(revenue)", users = "distinct(user_id)", avg_price = "mean(price)", max_price = "max(price)", top_categories = "topk(category, 3)" }
moving_average = { of = ["events", "revenue"], sma = 3, ema_alpha = 0.5 }

[[aggregations]]
name = "views_by_category"
where = { type = ["view"] }
group_by = ["category"]
window = { type = "hopping", size = "30s", slide = "10s" }
metrics = { views = "count", viewers = "distinct(user_id)", items = "distinct(item_id)", price_sum = "sum(price)" }

[[aggregations]]
name = "user_sessions"
group_by = ["user_id"]
window = { type = "session", gap = "20s" }
metrics = { events = "count", revenue = "sum(revenue)", items = "distinct(item_id)" }

[[aggregations]]
name = "sales"
where = { type = ["purchase"] }
group_by = ["category"]
window = { type = "tumbling", size = "30s" }
metrics = { orders = "count", revenue = "sum(revenue)", p95_price = "p95(price)", top_items = "topk(item_id, 3)" }
"""


# ---- the feed and the runs -------------------------------------------------------------------
@dataclass(frozen=True)
class Feed:
    orders: list[dict[str, Any]]
    clicks: list[dict[str, Any]]

    @property
    def event_ids(self) -> set[str]:
        return {e["event_id"] for e in self.orders + self.clicks}

    def serve(self, release_s: float) -> FeedThread:
        return FeedThread(self.orders, self.clicks, release_s=release_s)


@dataclass(frozen=True)
class Outcome:
    """What a finished run left in data_dir, normalised for comparison."""

    windows: dict[str, list[dict[str, Any]]]     # aggregation -> rows sorted by window and key
    event_ids: list[str]
    deadletter: list[dict[str, Any]]
    tmp_files: list[str]


def config_for(feed: FeedThread, *, map_size: str = "") -> str:
    return (CONFIG.replace("POLL_URL", feed.poll_url).replace("WS_URL", feed.ws_url)
            .replace("MAP_SIZE", f'map_size_initial = "{map_size}"' if map_size else ""))


def read_table(root: Path) -> list[dict[str, Any]]:
    if not root.exists():
        return []
    return ds.dataset(root, format="ipc", partitioning="hive").to_table().to_pylist()


def read_outcome(data_dir: Path) -> Outcome:
    windows = {agg: sorted(read_table(data_dir / "windows" / agg), key=lambda r, a=agg: (window_key(a, r), repr(r)))
               for agg in AGGREGATIONS}
    events = read_table(data_dir / "events")
    return Outcome(windows, [e["event_id"] for e in events], read_table(data_dir / "deadletter"), tmp_files(data_dir))


def wait_finished(d: Proc, feed: FeedThread, timeout_s: float = 60.0) -> dict[str, Any]:
    """Wait until every event is released and delivered and every window has closed; return /stats."""
    feed.wait_released(timeout_s)

    def finished() -> dict[str, Any] | None:
        if d.popen.poll() is not None:
            raise AssertionError(f"daemon exited with {d.popen.returncode}:\n{d.log()[-3000:]}")
        s = d.get_json("/stats")
        idle = set(s["pipeline"]["idle_sources"]) >= SOURCES
        drained = all(q["deliveries"] == 0 for q in s["queues"].values())
        closed = all(a["open_windows"] == 0 for a in s["aggregations"].values())
        return s if idle and drained and closed else None

    return wait_until(finished, timeout_s, interval=0.2, what="feed delivered and every window closed")


def finish(factory: DaemonFactory, body: str, data_dir: Path, feed: FeedThread) -> dict[str, Any]:
    """Start a clean daemon on data_dir, let it finish the feed, SIGTERM it (exit 0); return its last /stats."""
    d = factory.start(body, data_dir=data_dir)
    stats = wait_finished(d, feed)
    assert d.stop() == 0, d.log()[-3000:]
    return stats


def restored_seq(proc: Proc) -> int | None:
    """The commit seq a daemon run restored (its `state_restored` log line); None if killed before."""
    return next((e["commit_seq"] for e in proc.log_events() if e.get("event") == "state_restored"), None)


def tmp_files(data_dir: Path) -> list[str]:
    return [os.path.join(d, f) for d, _, files in os.walk(data_dir) for f in files if f.endswith(".tmp")]


def outbox_entries(data_dir: Path) -> int:
    """Committed rows chunks still waiting for their Arrow file (read with the daemon's own store)."""
    state = LmdbState.open(data_dir / "state", lock_path=data_dir / "LOCK", db_names=layout.DBS,
                           map_size_initial_bytes=2**20, map_size_max_bytes=2**30)
    try:
        with state.reading() as txn:
            return sum(1 for _ in txn.scan("outbox"))
    finally:
        state.close()


def window_key(agg: str, row: dict[str, Any]) -> tuple:
    return row["window_start"], row["window_end"], str(row[GROUP_BY[agg]])


def describe_difference(agg: str, got_rows: list[dict[str, Any]], want_rows: list[dict[str, Any]]) -> str:
    """Which (window, key) rows are missing, extra or changed against the reference."""
    got = {window_key(agg, r): r for r in got_rows}
    want = {window_key(agg, r): r for r in want_rows}
    missing, extra = sorted(want.keys() - got.keys()), sorted(got.keys() - want.keys())
    changed = [k for k in sorted(want.keys() & got.keys()) if got[k] != want[k]]
    lines = [f"windows/{agg}: {len(got_rows)} rows, reference {len(want_rows)}: "
             f"{len(missing)} missing, {len(extra)} extra, {len(changed)} changed"]
    lines += [f"  missing {want[k]}" for k in missing[:2]] + [f"  extra   {got[k]}" for k in extra[:2]]
    for k in changed[:2]:
        cols = sorted(c for c in set(got[k]) | set(want[k]) if got[k].get(c) != want[k].get(c))
        lines.append(f"  changed {cols}:\n    got  {got[k]}\n    want {want[k]}")
    return "\n".join(lines)


def assert_matches_reference(got: Outcome, ref: Outcome, feed: Feed, context: str) -> None:
    """Windows equal the reference row for row; every event archived once; no dead letters; no .tmp."""
    problems = []
    if got.tmp_files:
        problems.append(f"leftover temp files {got.tmp_files}")
    if got.deadletter:
        reasons = sorted({(r["reason"], r["source"]) for r in got.deadletter})
        problems.append(f"{len(got.deadletter)} dead letters {reasons} (late: a source judged idle mid-feed?), "
                        f"first {got.deadletter[0]}")
    if dupes := len(got.event_ids) - len(set(got.event_ids)):
        problems.append(f"{dupes} events archived twice")
    if missing := feed.event_ids - set(got.event_ids):
        problems.append(f"{len(missing)} events never archived, e.g. {sorted(missing)[:3]}")
    for agg in AGGREGATIONS:
        rows = got.windows[agg]
        if dupes := len(rows) - len({window_key(agg, r) for r in rows}):
            problems.append(f"windows/{agg}: {dupes} duplicate (window, key) rows")
        if rows != ref.windows[agg]:
            problems.append(describe_difference(agg, rows, ref.windows[agg]))
    if problems:
        raise AssertionError(f"{context}:\n" + "\n".join(problems))


def crash_seed() -> int:
    return int(os.environ.get("STOREPULSE_CRASH_SEED") or random.SystemRandom().randrange(2**32))


# ---- fixtures ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def feed() -> Feed:
    """4,000 storefront events from twenty minutes ago: ~470 orders (polled), ~3,500 clicks (websocket)."""
    start_ms = (time.time_ns() // 1_000_000 - 20 * 60_000) // 60_000 * 60_000
    return Feed(*split_feed(storefront_events(N_EVENTS, seed=FEED_SEED, start_ms=start_ms, rate=EVENT_RATE)))


@pytest.fixture(scope="module")
def reference(feed: Feed, tmp_path_factory: pytest.TempPathFactory) -> Outcome:
    """The uninterrupted run every crashed run must equal."""
    tmp = tmp_path_factory.mktemp("reference")
    factory = DaemonFactory(tmp)
    try:
        with feed.serve(FAST_RELEASE_S) as shop:
            finish(factory, config_for(shop), tmp / "data", shop)
    finally:
        factory.close()
    out = read_outcome(tmp / "data")
    assert all(out.windows[agg] for agg in AGGREGATIONS), {agg: len(rows) for agg, rows in out.windows.items()}
    assert_matches_reference(out, out, feed, "the uninterrupted reference run")
    return out


# ---- the tests ---------------------------------------------------------------------------------
def sigkill_rounds(factory: DaemonFactory, feed: Feed, data_dir: Path, kills: int) -> int:
    """Kill the daemon `kills` times at random moments while the shop sells, then let it finish.

    Every fourth kill lands during start-up (store open, outbox recovery, restore); the others
    0.3-2 s after /healthz answers, while events flow, windows close and files are written. Every
    other run writes its full states' segments ahead of their commits in small rounds (as a large
    state write does), so kills land between those writes too.
    """
    seed = crash_seed()
    rng = random.Random(seed)
    with feed.serve(kills * KILL_RELEASE_S_PER_KILL) as shop:
        body = config_for(shop)
        for i in range(kills):
            d = factory.start(body, data_dir=data_dir, wait=False,
                              env={"STOREPULSE_STATE_SPILL_BYTES": "4096"} if i % 2 else None)
            if i % 4 == 1:
                time.sleep(rng.uniform(0.05, 0.8))
            else:
                factory.wait_healthy(d)
                time.sleep(rng.uniform(0.3, 2.0))
            assert d.popen.poll() is None, f"seed {seed} round {i}: daemon exited early:\n{d.log()[-3000:]}"
            d.kill()
        finish(factory, body, data_dir, shop)
    # the commit seq each run restored never goes back, and the runs killed while flowing moved it on
    seqs = [s for s in map(restored_seq, factory.procs) if s is not None]
    assert seqs == sorted(seqs), f"seed {seed}: restored commit seqs went backwards: {seqs}"
    progress = len(set(seqs)) - 1
    assert progress >= kills // 2, f"seed {seed}: only {progress} of {kills} killed runs committed anything: {seqs}"
    return seed


def test_sigkill_at_random_moments_changes_no_window(daemon_factory, feed, reference, tmp_path):
    """Ten SIGKILLs at random moments while both sources flow leave exactly the uninterrupted windows."""
    seed = sigkill_rounds(daemon_factory, feed, tmp_path / "data", kills=10)
    assert_matches_reference(read_outcome(tmp_path / "data"), reference, feed, f"10 SIGKILLs (seed {seed})")


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_fifty_sigkills_change_no_window(daemon_factory, feed, reference, tmp_path):
    """The nightly variant: fifty SIGKILLs at random moments, same windows as the uninterrupted run."""
    seed = sigkill_rounds(daemon_factory, feed, tmp_path / "data", kills=50)
    assert_matches_reference(read_outcome(tmp_path / "data"), reference, feed, f"50 SIGKILLs (seed {seed})")


@pytest.mark.parametrize("point", CRASH_POINTS)
def test_injected_exit_inside_commit_converges(daemon_factory, feed, reference, tmp_path, point):
    """An exit at a step of the commit protocol (twice), then a clean restart, gives the reference windows."""
    data_dir = tmp_path / "data"
    with feed.serve(FAST_RELEASE_S) as shop:
        body = config_for(shop)
        # A tiny spill bound: every full state write writes its segments ahead of its commit, in rounds.
        spill = {"STOREPULSE_STATE_SPILL_BYTES": "2048"} if point == "after_state_staged" else {}
        # The second run's exit comes at its 3rd commit: when it starts after the feed was all released
        # (a loaded machine), it catches up and closes in as few as 5 commits (a 6th was never reached).
        for after_n in (2, 3):
            d = daemon_factory.start(body, data_dir=data_dir, wait=False,
                                     env={"STOREPULSE_CRASH_AT": point, "STOREPULSE_CRASH_AFTER_N": str(after_n), **spill})
            try:
                rc = d.popen.wait(30)
            except Exception:
                raise AssertionError(f"{point} #{after_n} was never reached:\n{d.log()[-2000:]}") from None
            assert rc == 137, f"{point}: exit {rc}\n{d.log()[-3000:]}"
            # what the exit left behind, for the restart to repair
            if point in ("mid_arrow_write", "before_arrow_rename"):
                assert tmp_files(data_dir), f"{point}: no half-written file left"
            elif point in ("after_arrow_rename", "before_outbox_delete"):
                assert outbox_entries(data_dir) > 0, f"{point}: outbox already empty"
        finish(daemon_factory, body, data_dir, shop)
    assert_matches_reference(read_outcome(data_dir), reference, feed, f"exit at {point}")


def test_a_slow_start_judges_no_source_idle(daemon_factory, feed, reference, tmp_path):
    """Seconds between the daemon's start and its sources' (on a loaded machine: restore, fold-log
    replay, the recommender's process starting; here an injected 3 s) are not silence. The whole feed
    waits in the shop; the websocket pushes its clicks at once while the poller's orders take a page
    per request: the orders must not look idle, or the watermark jumps past them and they go late."""
    data_dir = tmp_path / "data"
    with feed.serve(FAST_RELEASE_S) as shop:
        shop.wait_released(30)
        body = config_for(shop)
        d = daemon_factory.start(body, data_dir=data_dir, env={"STOREPULSE_FAULT": "slow_start"})
        n = len(feed.orders) + len(feed.clicks)
        wait_until(lambda: (s := d.get_json("/stats")["events"])["accepted"] + s["late"] >= n, 60,
                   what="every event accepted or judged late")
        wait_finished(d, shop)
        assert d.stop() == 0, d.log()[-3000:]
    assert_matches_reference(read_outcome(data_dir), reference, feed, "slow start")


def test_tiny_map_grows_and_loses_nothing(daemon_factory, feed, reference, tmp_path):
    """A 64 KiB initial LMDB map doubles several times, survives a SIGKILL, and loses no event."""
    data_dir = tmp_path / "data"
    with feed.serve(FAST_RELEASE_S) as shop:
        body = config_for(shop, map_size="64KiB")
        d = daemon_factory.start(body, data_dir=data_dir)
        wait_until(lambda: d.get_json("/stats")["store"]["lmdb"]["map_grows"] >= 3, 20, what="three map doublings")
        d.kill()
        stats = finish(daemon_factory, body, data_dir, shop)
    assert stats["store"]["lmdb"]["map_size_bytes"] >= 8 * 64 * 1024, stats["store"]["lmdb"]
    assert_matches_reference(read_outcome(data_dir), reference, feed, "64 KiB map")
