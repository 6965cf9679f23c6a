"""A watermark jump past thousands of sessions, or one window end of thousands of items, closes in bounded
chunks, each its own commit, and a SIGKILL in the middle of that close loses and repeats no row."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import orjson
import pyarrow.dataset as ds
import pytest

from tests.conftest import DaemonFactory, Proc, http_post, wait_until

pytestmark = pytest.mark.timeout(180)

CONFIG = """
log_level = "debug"

[http]
listen = "127.0.0.1:{port}"

[storage]
data_dir = "{data}"
commit_interval = "50ms"
flush_interval = "200ms"
state_interval = "300ms"

[pipeline]
allowed_lateness = "0s"
idle_timeout = "1s"
max_future_skew = "1h"

[sources.webhook]
type = "ingest"
ack = "durable"

[[aggregations]]
name = "visits"
group_by = ["user_id"]
window = { type = "session", gap = "1m" }
metrics = { events = "count" }
"""


def feed_sessions(d: Proc, users: int) -> int:
    """Two events per user, 10 ms of event time apart per user, all 10 minutes ago: no session ends
    before the last event, so they all stay open until the idle timeout moves the watermark to now."""
    start = int(time.time() * 1000) - 600_000
    events = [{"event_id": f"u{u}-{k}", "ts": start + u * 10 + k, "type": "view", "user_id": f"u{u:05d}",
               "item_id": "i"} for u in range(users) for k in range(2)]
    for i in range(0, len(events), 1000):
        assert http_post(d.url + "/ingest", orjson.dumps(events[i:i + 1000]))[0] == 202
    return len(events)


def all_closed(d: Proc, aggregation: str = "visits") -> bool:
    s = d.get_json("/stats")
    pipe = s["pipeline"]
    return s["aggregations"][aggregation]["open_windows"] == 0 and pipe["closed_through_ms"] == pipe["watermark_ms"]


def committed_windows(d: Proc) -> list[int]:
    return [e["windows"] for e in d.log_events() if e.get("event") == "committed"]


def window_rows(data_dir: Path) -> list[dict]:
    return ds.dataset(data_dir / "windows" / "visits", format="ipc", partitioning="hive").to_table().to_pylist()


def assert_every_session_once(data_dir: Path, users: int) -> None:
    rows = window_rows(data_dir)
    keys = sorted(r["user_id"] for r in rows)
    assert keys == [f"u{u:05d}" for u in range(users)], f"{len(keys)} rows for {users} sessions"
    assert all(r["events"] == 2 for r in rows)


def test_a_jump_past_thousands_of_sessions_commits_them_in_bounded_chunks(daemon_factory: DaemonFactory, tmp_path):
    """3000 sessions closed by the idle timeout go out in commits of at most 200 rows, each row once."""
    users, bound = 3000, 200
    d = daemon_factory.start(CONFIG, data_dir=tmp_path / "data", env={"STOREPULSE_CLOSE_CHUNK_ROWS": str(bound)})
    feed_sessions(d, users)
    wait_until(lambda: all_closed(d), timeout=60, what="every session closed")
    assert d.stop() == 0, d.log()[-3000:]
    windows = committed_windows(d)
    assert sum(windows) == users
    assert max(windows) <= bound, windows
    assert len([w for w in windows if w]) >= users // bound, windows
    assert_every_session_once(tmp_path / "data", users)


def kill_mid_close_and_restart(daemon_factory: DaemonFactory, tmp_path: Path, config: str, state_interval: str,
                               bound: int, feed: Callable[[Proc], int], aggregation: str) -> Path:
    """Start on `config` with `state_interval`, `feed` it (it returns the rows the close will emit), SIGKILL
    it once the first chunk of the close is committed, restart it and let it close the rest; check that
    each commit kept to `bound` rows (and, with no state write, that the logged closes were replayed).
    Returns the data dir."""
    data_dir, env = tmp_path / "data", {"STOREPULSE_CLOSE_CHUNK_ROWS": str(bound)}
    body = config.replace('state_interval = "300ms"', f'state_interval = "{state_interval}"')
    d = daemon_factory.start(body, data_dir=data_dir, env=env)
    total = feed(d)
    wait_until(lambda: sum(committed_windows(d)) > 0, timeout=30, interval=0.01, what="the first chunk committed")
    d.kill()
    before = sum(committed_windows(d))
    assert 0 < before < total, f"the kill did not land mid-close: {before} of {total} rows committed"
    d2 = daemon_factory.start(body, data_dir=data_dir, env=env)
    wait_until(lambda: all_closed(d2, aggregation), timeout=60, what="every window closed after the restart")
    if state_interval == "1h":
        replayed = [e for e in d2.log_events() if e.get("event") == "fold_log_replayed"]
        assert replayed and replayed[0]["steps"] > 1, replayed
    assert d2.stop() == 0, d2.log()[-3000:]
    assert max(committed_windows(d2)) <= bound
    return data_dir


@pytest.mark.parametrize("state_interval", ["300ms", "1h"])
def test_sigkill_in_the_middle_of_a_chunked_close_loses_and_repeats_no_row(daemon_factory: DaemonFactory, tmp_path,
                                                                           state_interval):
    """Killed after the first chunks of a 5000-session close were committed, the restart emits the rest, each
    once: restored from a full state write (300ms) or by replaying the logged chunk closes (1h: no state write)."""
    users = 5000
    data_dir = kill_mid_close_and_restart(daemon_factory, tmp_path, CONFIG, state_interval, 50,
                                          lambda d: feed_sessions(d, users) // 2, "visits")
    assert_every_session_once(data_dir, users)


HOPPING = CONFIG.split("[[aggregations]]")[0] + """[[aggregations]]
name = "views"
group_by = ["item_id"]
window = { type = "hopping", size = "2m", slide = "1m" }
metrics = { views = "count" }
"""


def feed_items(d: Proc, items: int) -> dict[tuple[str, int], int]:
    """Two views per item 5 ms of event time apart, all ~10 minutes ago (one or two window ends hold
    every item); the expected rows: (item, window end) -> views."""
    start = (int(time.time() * 1000) - 600_000) // 60_000 * 60_000 + 45_000   # (items * 10 ms spans a minute end)
    events = [{"event_id": f"v{i}-{k}", "ts": start + i * 10 + 5 * k, "type": "view", "user_id": "u",
               "item_id": f"i{i:05d}"} for i in range(items) for k in range(2)]
    for i in range(0, len(events), 1000):
        assert http_post(d.url + "/ingest", orjson.dumps(events[i:i + 1000]))[0] == 202
    expected: dict[tuple[str, int], int] = {}
    for e in events:
        first_end = e["ts"] // 60_000 * 60_000 + 60_000
        for end in (first_end, first_end + 60_000):   # the two 2-minute windows holding ts
            expected[(e["item_id"], end)] = expected.get((e["item_id"], end), 0) + 1
    return expected


def assert_every_item_window_once(data_dir: Path, expected: dict[tuple[str, int], int]) -> None:
    rows = ds.dataset(data_dir / "windows" / "views", format="ipc", partitioning="hive").to_table().to_pylist()
    got = [((r["item_id"], int(r["window_end"].timestamp() * 1000)), r["views"]) for r in rows]
    assert len(got) == len(expected), f"{len(got)} rows for {len(expected)} windows"
    assert dict(got) == expected


def test_one_window_end_of_thousands_of_items_is_split_over_bounded_commits(daemon_factory: DaemonFactory, tmp_path):
    """A hopping window end holding 3000 items (more than a chunk) goes out a key range per commit:
    no commit carries more than the bound, and every (item, window) row comes once with its count."""
    items, bound = 3000, 200
    d = daemon_factory.start(HOPPING, data_dir=tmp_path / "data", env={"STOREPULSE_CLOSE_CHUNK_ROWS": str(bound)})
    expected = feed_items(d, items)
    wait_until(lambda: all_closed(d, "views"), timeout=60, what="every window closed")
    assert d.stop() == 0, d.log()[-3000:]
    windows = committed_windows(d)
    assert sum(windows) == len(expected)
    assert max(windows) <= bound, windows
    assert_every_item_window_once(tmp_path / "data", expected)


@pytest.mark.parametrize("state_interval", ["300ms", "1h"])
def test_sigkill_inside_a_split_window_end_loses_and_repeats_no_row(daemon_factory: DaemonFactory, tmp_path,
                                                                    state_interval):
    """Killed after the first key ranges of a 4000-item window end were committed, the restart goes on
    from the next key (the stored state's cursor, or the logged closes replayed), each row once."""
    expected: dict[tuple[str, int], int] = {}

    def feed(d: Proc) -> int:
        expected.update(feed_items(d, 4000))
        return len(expected)

    data_dir = kill_mid_close_and_restart(daemon_factory, tmp_path, HOPPING, state_interval, 50, feed, "views")
    assert_every_item_window_once(data_dir, expected)
