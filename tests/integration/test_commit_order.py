"""Closed windows are not held back by a full state write: they go first, in their own commit."""

from __future__ import annotations

import time

import orjson
import pytest

from tests.conftest import http_post, wait_until

pytestmark = pytest.mark.timeout(90)

CONFIG = """
log_level = "debug"

[http]
listen = "127.0.0.1:{port}"

[storage]
data_dir = "{data}"
commit_interval = "50ms"
state_interval = "200ms"

[pipeline]
allowed_lateness = "0s"
max_future_skew = "1h"
idle_timeout = "1h"          # on a loaded machine 10 s can pass before the stop: the 40th second stays open

[sources.webhook]
type = "ingest"
ack = "durable"

[[aggregations]]
name = "per_type"
group_by = ["type"]
window = { type = "tumbling", size = "1s" }
metrics = { events = "count" }
"""


def test_rows_are_committed_before_the_state_write_that_fell_due(daemon_factory):
    """Every body moves event time by 1 s, so nearly every commit carries closed windows while a
    full state write falls due every 200 ms: the rows' commit must never be the state write."""
    d = daemon_factory.start(CONFIG)
    # On a whole second: a body's 20 events (ts .. ts + 19) then stay in one 1 s window (from 981 ms past
    # a second they straddled two, and the 40th window closed too: a 2% flake).
    start = (int(time.time() * 1000) - 600_000) // 1000 * 1000
    for k in range(40):
        body = orjson.dumps([{"event_id": f"e{k}-{i}", "ts": start + k * 1000 + i, "type": "view", "user_id": "u",
                              "item_id": "i"} for i in range(20)])
        assert http_post(d.url + "/ingest", body)[0] == 202
        time.sleep(0.03)
    wait_until(lambda: d.get_json("/stats")["pipeline"]["events_processed"] == 800, what="all events folded")
    assert d.stop() == 0
    commits = [e for e in d.log_events() if e.get("event") == "committed"]
    *running, last = commits               # the last is the shutdown's: everything at once, on purpose
    assert sum(c["windows"] for c in commits) == 39   # the 40th second is still open
    full = [i for i, c in enumerate(running) if c["state"]]
    assert len(full) >= 3, commits
    assert not [c for c in running if c["state"] and c["windows"]], commits
    # ... and the split happened: some rows' commit was followed at once by the state write it deferred.
    assert any(running[i - 1]["windows"] for i in full if i > 0), commits
