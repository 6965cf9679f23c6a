"""[storage.retention] on a live daemon: partitions older than a table's retention are deleted
while it runs, counted in /stats and /metrics and logged; newer ones and uncovered tables stay."""

from __future__ import annotations

import datetime as dt
import time

import orjson
import pyarrow.dataset as ds
import pytest

from tests.conftest import http_get, http_post, wait_until

pytestmark = pytest.mark.timeout(120)

CONFIG = """
[storage]
data_dir = "{data}"
commit_interval = "50ms"
flush_interval = "200ms"

[storage.retention]
events = "2d"
windows = "2d"

[pipeline]
allowed_lateness = "1s"
idle_timeout = "1s"

[sources.webhook]
type = "ingest"
ack = "durable"

[[aggregations]]
name = "by_cat"
group_by = ["category"]
window = { type = "tumbling", size = "1m" }
metrics = { events = "count" }
"""

DAY_MS = 86_400_000


def _events(prefix: str, ts_ms: int, n: int) -> list[dict]:
    return [{"event_id": f"{prefix}{i}", "ts": ts_ms + i, "type": "view", "user_id": f"u{i}", "item_id": "i1",
             "category": "books"} for i in range(n)]


def _day(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc).date().isoformat()


def test_expired_partitions_are_deleted_while_the_daemon_runs(daemon_factory, tmp_path):
    d = daemon_factory.start(CONFIG, env={"STOREPULSE_ARCHIVE_INTERVAL_S": "0.3"})
    data = tmp_path / "data"
    now = int(time.time() * 1000)
    old_ms, new_ms = now - 10 * DAY_MS, now - 120_000
    old_day, new_day = _day(old_ms), _day(new_ms)
    for body in (_events("old", old_ms, 30), _events("new", new_ms, 20), [{"ts": "yesterday"}]):
        status, _ = http_post(d.url + "/ingest", orjson.dumps(body))
        assert status == 202

    # Written (and counted) first, then deleted: both the events archive and the window rows of the old day.
    def swept() -> dict:
        arrow = d.get_json("/stats")["store"]["arrow"]
        gone = not (data / "events" / f"date={old_day}").exists() and not (data / "windows" / "by_cat" / f"date={old_day}").exists()
        return gone and arrow["partitions_deleted"] >= 2 and d.get_json("/stats")["aggregations"]["by_cat"]["open_windows"] == 0 and arrow
    arrow = wait_until(swept, 30, what="the old day's partitions deleted")
    assert arrow["files_deleted"] >= 2 and arrow["bytes_deleted"] > 0
    status, body = http_get(d.url + "/metrics")
    assert status == 200 and b"storepulse_arrow_partitions_deleted_total " in body
    want = {("events", old_day), ("windows/by_cat", old_day)}
    wait_until(lambda: {(e["table"], e["date"]) for e in d.log_events() if e.get("event") == "retention_deleted"} == want,
               10, what="a retention_deleted line per deleted folder")
    # The files left are counted at each pass. Counted here at each poll: a file the last close's commit
    # or the next dead-letter flush writes after a count taken once would keep the two apart for ever.
    wait_until(lambda: d.get_json("/stats")["store"]["arrow"]["files_on_disk"] == sum(1 for p in data.rglob("*.arrow")),
               10, what="the files counted")
    assert d.stop() == 0

    events = ds.dataset(data / "events", format="ipc", partitioning="hive").to_table()
    assert sorted(events.column("event_id").to_pylist()) == sorted(f"new{i}" for i in range(20))
    windows = ds.dataset(data / "windows" / "by_cat", format="ipc", partitioning="hive").to_table()
    assert set(windows.column("date").to_pylist()) == {new_day} and sum(windows.column("events").to_pylist()) == 20
    # Dead letters have no retention here: the bad event stays.
    dead = ds.dataset(data / "deadletter", format="ipc", partitioning="hive").to_table()
    assert dead.num_rows == 1
