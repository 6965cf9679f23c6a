"""The daemon against the simulated storefront: both sources flow, windows close, SIGTERM exits 0."""

from __future__ import annotations

import pyarrow.dataset as ds
import pytest

from tests.conftest import wait_until

pytestmark = pytest.mark.timeout(120)

CONFIG = """
[storage]
data_dir = "{{data}}"
commit_interval = "100ms"
flush_interval = "500ms"

[pipeline]
allowed_lateness = "1s"
idle_timeout = "2s"

[sources.orders]
type = "http_poll"
url = "{sf}/api/events"
limit = 200
min_interval = "50ms"
max_interval = "500ms"

[sources.clicks]
type = "websocket"
url = "{ws}/feed"
subscribe = '{{"op": "subscribe", "channel": "events"}}'

[recommendations]
half_life = "1h"

[[aggregations]]
name = "by_type"
group_by = ["type"]
window = {{ type = "tumbling", size = "1s" }}
metrics = {{ events = "count", revenue = "sum(revenue)", users = "distinct(user_id)", p95_price = "p95(price)" }}
moving_average = {{ of = ["events"], sma = 3, ema_alpha = 0.5 }}
"""


def test_storefront_feeds_both_sources_and_windows_close(daemon_factory, storefront, tmp_path):
    """Events arrive over polling and websocket, windows are queryable, and SIGTERM exits 0."""
    ws = storefront.url.replace("http://", "ws://")
    d = daemon_factory.start(CONFIG.format(sf=storefront.url, ws=ws))

    def both_flowing():
        s = d.get_json("/stats")
        return s if s["sources"]["orders"]["accepted"] > 0 and s["sources"]["clicks"]["accepted"] > 0 else None

    stats = wait_until(both_flowing, 30, what="events from both sources")
    assert stats["sources"]["clicks"]["connected"] is True
    windows = wait_until(lambda: d.get_json("/windows/by_type?limit=10")["windows"], 20, what="closed windows")
    row = windows[0]
    assert {"window_start", "window_end", "type", "events", "events_sma", "events_ema"} <= set(row)
    assert row["window_end"] - row["window_start"] == 1000
    assert d.get_json("/readyz")["status"] == "ready"
    assert d.stop() == 0
    table = ds.dataset(tmp_path / "data" / "windows" / "by_type", format="ipc", partitioning="hive").to_table()
    assert table.num_rows > 0
    keys = list(zip(table.column("window_start").to_pylist(), table.column("type").to_pylist()))
    assert len(keys) == len(set(keys))
    events = ds.dataset(tmp_path / "data" / "events", format="ipc", partitioning="hive").to_table()
    assert set(events.column("source").to_pylist()) == {"orders", "clicks"}
    assert events.num_rows == len(set(events.column("event_id").to_pylist()))
