"""GET /windows on a live daemon keeps at most keep_latest rows per key and keep_latest_rows per
aggregation (the newest window ends), while the Arrow files keep every row."""

from __future__ import annotations

import time

import orjson
import pyarrow.dataset as ds
import pytest

from tests.conftest import http_post, wait_until

pytestmark = pytest.mark.timeout(120)

CONFIG = """
[storage]
data_dir = "{data}"
commit_interval = "50ms"
flush_interval = "200ms"

[pipeline]
allowed_lateness = "1s"
idle_timeout = "1s"

[sources.webhook]
type = "ingest"
ack = "durable"

[[aggregations]]
name = "by_user"
group_by = ["user_id"]
window = { type = "tumbling", size = "1s" }
metrics = { events = "count" }
keep_latest = 2
keep_latest_rows = 10
"""

USERS, WINDOWS = 8, 5


def test_windows_keep_the_newest_rows_per_key_and_per_aggregation(daemon_factory, tmp_path):
    d = daemon_factory.start(CONFIG)
    start = (int(time.time() * 1000) - 120_000) // 1000 * 1000
    events = [{"event_id": f"e{w}-{u}", "ts": start + w * 1000 + 100, "type": "view", "user_id": f"u{u}",
               "item_id": "i1", "category": "books"}
              for w in range(WINDOWS) for u in range(USERS)]
    for w in range(WINDOWS):   # one window end per request: closes land in several commits
        status, _ = http_post(d.url + "/ingest", orjson.dumps(events[w * USERS:(w + 1) * USERS]))
        assert status == 202

    # The source goes idle, the watermark passes every window: all 40 rows close.
    last, before = start + WINDOWS * 1000, start + (WINDOWS - 1) * 1000
    wait_until(lambda: d.get_json("/stats")["aggregations"]["by_user"]["open_windows"] == 0, 20, what="every window closed")
    # The last close's rows reach the index with the next write (a quiet pipeline: within a commit interval).
    rows = wait_until(lambda: (r := d.get_json("/windows/by_user?limit=100")["windows"]) and r[0]["window_end"] == last
                      and r, 20, what="the last close's rows in /windows")
    ends = [r["window_end"] for r in rows]
    assert len(rows) == 10 and ends == sorted(ends, reverse=True)
    assert ends.count(last) == USERS and ends.count(before) == 2   # the newest ends, ties by key hash
    for u in range(USERS):
        mine = d.get_json(f"/windows/by_user?key=u{u}&limit=100")["windows"]
        assert 1 <= len(mine) <= 2 and mine[0]["window_end"] == last and all(r["user_id"] == f"u{u}" for r in mine)
    assert d.stop() == 0

    table = ds.dataset(tmp_path / "data" / "windows" / "by_user", format="ipc", partitioning="hive").to_table()
    assert table.num_rows == USERS * WINDOWS and sum(table.column("events").to_pylist()) == len(events)
