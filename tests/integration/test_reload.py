"""SIGHUP reload: add an aggregation and remove a source while events flow; a broken file keeps the old config."""

from __future__ import annotations

import signal
import time

import pyarrow.dataset as ds
import pytest

from daemon.storefront.generator import Generator
from tests.conftest import wait_until
from tests.integration.pagefeed import PageFeed

pytestmark = pytest.mark.timeout(180)

BASE = """
[storage]
data_dir = "{{data}}"
commit_interval = "50ms"

[pipeline]
allowed_lateness = "5s"
idle_timeout = "1s"

[sources.orders]
type = "http_poll"
url = "{url}"
limit = 200
min_interval = "10ms"
max_interval = "200ms"
{spare}
[[aggregations]]
name = "by_type"
group_by = ["type"]
window = {{ type = "tumbling", size = "10s" }}
metrics = {{ events = "count", revenue = "sum(revenue)", users = "distinct(user_id)" }}
{extra}"""

SPARE = """
[sources.spare]
type = "ingest"
"""

ADDED = """
[[aggregations]]
name = "by_category"
group_by = ["category"]
window = { type = "tumbling", size = "30s" }
metrics = { events = "count" }
"""


def make_events() -> list[dict]:
    """~12,000 events spread over 10 minutes, 20 minutes in the past, in ts order (none can be late)."""
    start = int(time.time() * 1000) - 20 * 60_000
    return Generator(seed=11, start_ms=start, rate=20).next_batch(12000)


def run_to_end(d, feed) -> None:
    wait_until(lambda: feed.done, 60, what="feed served")
    wait_until(lambda: d.get_json("/stats")["aggregations"]["by_type"]["open_windows"] == 0, 30,
               what="all windows closed")
    assert d.stop() == 0


def windows(data_dir, agg: str) -> list[dict]:
    table = ds.dataset(data_dir / "windows" / agg, format="ipc", partitioning="hive").to_table()
    return sorted(table.drop_columns(["date"]).to_pylist(), key=lambda r: (r["window_start"], r["type"] or ""))


def test_reload_adds_aggregation_removes_source_and_keeps_windows(daemon_factory, tmp_path):
    """The unchanged aggregation's windows equal a run without reload; a broken file changes nothing."""
    events = make_events()
    with PageFeed(events, delay_s=0.05) as feed:
        ref = daemon_factory.start(BASE.format(url=feed.url, spare=SPARE, extra=""), data_dir=tmp_path / "ref")
        run_to_end(ref, feed)
    reference = windows(tmp_path / "ref", "by_type")
    assert sum(r["events"] for r in reference) == len(events)

    with PageFeed(events, delay_s=0.05) as feed:
        d = daemon_factory.start(BASE.format(url=feed.url, spare=SPARE, extra=""), data_dir=tmp_path / "run")
        cfg = d.extra["config_path"]
        wait_until(lambda: 1000 < d.get_json("/stats")["events"]["accepted"], 30, what="events flowing")
        # 1. a broken file: logged, old config kept
        good_text = cfg.read_text()
        cfg.write_text(good_text + "\n[sources.bad]\ntype = \"kafka\"\n")
        d.popen.send_signal(signal.SIGHUP)
        wait_until(lambda: any(e.get("event") == "reload_failed" for e in d.log_events()), 10, what="reload_failed")
        failed = next(e for e in d.log_events() if e.get("event") == "reload_failed")
        assert failed["problems"] == ["sources.bad.type: unknown source type 'kafka' (one of http_poll, websocket, ingest)"]
        assert set(d.get_json("/stats")["sources"]) == {"orders", "spare"}
        # 2. a good one: spare source removed, by_category added, while events flow
        assert not feed.done
        cfg.write_text(BASE.format(url=feed.url, spare="", extra=ADDED).replace("{data}", str(tmp_path / "run"))
                       .replace("[storage]", f'[http]\nlisten = "127.0.0.1:{d.port}"\n\n[storage]'))
        d.popen.send_signal(signal.SIGHUP)
        reloaded = wait_until(lambda: next((e for e in d.log_events() if e.get("event") == "reloaded"), None), 10,
                              what="reloaded")
        assert reloaded["sources_removed"] == ["spare"] and reloaded["aggregations_added"] == ["by_category"]
        stats = d.get_json("/stats")
        assert set(stats["sources"]) == {"orders"} and set(stats["aggregations"]) == {"by_type", "by_category"}
        run_to_end(d, feed)
    assert windows(tmp_path / "run", "by_type") == reference
    added = ds.dataset(tmp_path / "run" / "windows" / "by_category", format="ipc", partitioning="hive").to_table()
    assert added.num_rows > 0
