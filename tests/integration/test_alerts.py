"""Anomaly alerts end to end: a drop to zero is detected live, stored, served, logged and POSTed to alert_url."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import orjson
import pyarrow.dataset as ds
import pytest

from tests.conftest import http_post, wait_until

pytestmark = pytest.mark.timeout(120)

CONFIG = """
[storage]
data_dir = "{{data}}"
commit_interval = "50ms"

[pipeline]
allowed_lateness = "2s"
idle_timeout = "1s"

[sources.webhook]
type = "ingest"
ack = "durable"

[[aggregations]]
name = "orders"
where = {{ type = ["purchase"] }}
group_by = ["category"]
window = {{ type = "tumbling", size = "1m" }}
metrics = {{ orders = "count" }}
anomaly = {{ metric = "orders", threshold = 4.0, warmup = 10, alert_url = "{hook}" }}
"""


class Hook:
    """A loopback webhook receiver that fails its first call (to prove retries)."""

    def __init__(self) -> None:
        self.bodies: list[dict] = []
        self.calls = 0
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                hook.calls += 1
                status = 503 if hook.calls == 1 else 200
                if status == 200:
                    hook.bodies.append(json.loads(body))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                if status == 503:
                    self.send_header("Retry-After", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/alert"


def purchases(minute_start: int, n: int, category: str, tag: str) -> list[dict]:
    return [{"event_id": f"{tag}-{minute_start}-{i}", "ts": minute_start + i * (59_000 // max(n, 1)),
             "type": "purchase", "user_id": f"u{i}", "item_id": f"i{i % 5}", "category": category, "price": 10.0}
            for i in range(n)]


def test_checkout_outage_raises_an_alert_everywhere(daemon_factory, tmp_path):
    """30 steady minutes, then purchases in one category stop: one open alert in /anomalies, Arrow, log, webhook."""
    hook = Hook()
    d = daemon_factory.start(CONFIG.format(hook=hook.url))
    now = int(time.time() * 1000)
    base = (now // 60_000 - 40) * 60_000
    events: list[dict] = []
    for m in range(36):
        start = base + m * 60_000
        events += purchases(start, 40, "books", "b")
        events += purchases(start, 0 if m >= 30 else 40, "toys", "t")   # toys: checkout outage from minute 30
    events.sort(key=lambda e: e["ts"])   # in time order, so none is late
    for i in range(0, len(events), 1000):
        assert http_post(d.url + "/ingest", orjson.dumps(events[i:i + 1000]))[0] == 202

    body = wait_until(lambda: d.get_json("/anomalies?limit=10")["anomalies"], 30, what="an anomaly")
    assert len(body) == 1, json.dumps(body)      # one incident, one alert (still open)
    alert = body[0]
    assert alert["key"] == ["toys"] and alert["direction"] == "drop" and alert["state"] == "open"
    assert alert["value"] == 0 and alert["expected"] > 20
    assert not any(a["key"] == ["books"] for a in body)
    wait_until(lambda: hook.bodies, 20, what="webhook delivery")
    assert hook.calls >= 2 and hook.bodies[0]["key"] == ["toys"]
    assert any(e.get("event") == "anomaly_detected" for e in d.log_events())
    assert d.stop() == 0
    table = ds.dataset(tmp_path / "data" / "anomalies", format="ipc", partitioning="hive").to_table()
    assert "toys" in table.column("key").to_pylist()[0]
