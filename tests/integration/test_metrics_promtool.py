"""GET /metrics of a running daemon passes `promtool check metrics` with no warnings and carries
every /stats figure."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.request

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from daemon.web.prometheus import unexported_figures
from tests.conftest import DaemonFactory, Proc, http_get, http_post, wait_until

pytestmark = pytest.mark.timeout(120)

PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (Debian package `prometheus`; "
                                    ".ci/install-ops-tools.sh installs it)")
CONFIG = """
[storage]
data_dir = "{data}"
commit_interval = "50ms"
flush_interval = "200ms"

[pipeline]
allowed_lateness = "1s"

[sources.webhook]
type = "ingest"

[[aggregations]]
name = "events_by_type"
group_by = ["type"]
window = { type = "tumbling", size = "1s" }
metrics = { events = "count", revenue = "sum(revenue)" }
"""


@pytest.fixture(scope="module")
def busy_daemon(tmp_path_factory: pytest.TempPathFactory):
    """A daemon that has accepted, rejected and deduplicated events and committed them."""
    factory = DaemonFactory(tmp_path_factory.mktemp("metrics"))
    try:
        proc = factory.start(CONFIG)
        now = int(time.time() * 1000)
        events = [{"event_id": f"e{i}", "ts": now - 500 + i, "type": "purchase" if i % 3 == 0 else "view",
                   "user_id": f"u{i % 4}", "item_id": f"i{i % 5}", "price": 9.5} for i in range(30)]
        body = b"\n".join(orjson.dumps(e) for e in events) + b"\n" + orjson.dumps(events[0]) + b"\n{broken\n"
        body += orjson.dumps({"event_id": "x", "ts": now, "type": "teleport", "user_id": "u"}) + b"\n"
        assert http_post(proc.url + "/ingest", body)[0] == 202
        wait_until(lambda: proc.get_json("/stats")["store"]["commits"] > 0
                   and proc.get_json("/stats")["events"]["accepted"] == 30, 20, what="a commit of 30 events")
        yield proc
    finally:
        factory.close()


def metrics_text(proc: Proc) -> tuple[str, str]:
    with urllib.request.urlopen(proc.url + "/metrics", timeout=5) as resp:
        return resp.read().decode(), resp.headers["Content-Type"]


@needs_promtool
def test_promtool_finds_nothing_to_complain_about(busy_daemon: Proc) -> None:
    """`promtool check metrics` exits 0 and prints nothing (no lint warnings) for a live scrape."""
    text, _ = metrics_text(busy_daemon)
    assert "storepulse_events_accepted_total" in text
    out = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
    assert (out.returncode, out.stdout, out.stderr) == (0, "", "")


def test_content_type_is_the_text_format(busy_daemon: Proc) -> None:
    """/metrics answers the Prometheus text format 0.0.4 content type."""
    _, content_type = metrics_text(busy_daemon)
    assert content_type.startswith("text/plain; version=0.0.4")


def test_every_live_stats_figure_is_in_metrics(busy_daemon: Proc) -> None:
    """Each numeric figure of the live /stats has a series in /metrics."""
    status, body = http_get(busy_daemon.url + "/stats")
    assert status == 200
    assert unexported_figures(json.loads(body)) == []


def test_counters_match_stats(busy_daemon: Proc) -> None:
    """Settled counters read the same in /stats and /metrics (rejections by reason included)."""
    stats = busy_daemon.get_json("/stats")
    text, _ = metrics_text(busy_daemon)
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in text_string_to_metric_families(text) for s in f.samples}
    assert samples[("storepulse_events_accepted_total", ())] == stats["events"]["accepted"] == 30
    assert samples[("storepulse_events_duplicate_total", ())] == stats["events"]["duplicate"] == 1
    for reason, count in stats["events"]["rejected_by_reason"].items():
        assert samples[("storepulse_events_rejected_total", (("reason", reason),))] == count
    assert sum(v for (n, _), v in samples.items() if n == "storepulse_events_rejected_total") == stats["events"]["rejected"]
    assert samples[("storepulse_source_events_received_total", (("source", "webhook"),))] == \
        stats["sources"]["webhook"]["received"]
    assert samples[("storepulse_queue_capacity_events", (("queue", "webhook"),))] == stats["queues"]["webhook"]["capacity"]
