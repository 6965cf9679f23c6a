"""benchmarks/soak.py's paced page server and its bounded-or-not verdict."""

from __future__ import annotations

import orjson

from benchmarks.feeder import PAGE_EVENTS, SHOP
from benchmarks.soak import PacedPageServer, verdict
from daemon.storefront.generator import Generator


def _body(response: bytes) -> dict:
    return orjson.loads(response.split(b"\r\n\r\n", 1)[1])


def test_pages_come_in_order_at_the_rate_and_a_retried_cursor_gets_the_same_page():
    server = PacedPageServer(Generator(1, start_ms=1_700_000_000_000, rate=100.0, shop=SHOP), total=1500, rate=1.0)
    first = server.response(0)
    page = _body(first)
    assert len(page["events"]) == PAGE_EVENTS and page["next_cursor"] == "1"
    assert server.response(0) == first                       # a retried GET: the same bytes
    assert _body(server.response(1)) == {"events": [], "next_cursor": "1"}   # not due for 1000 s at 1 event/s
    assert _body(server.response(5)) == {"events": [], "next_cursor": "5"}   # not the next page
    server.t0 -= 10_000                                      # the clock moves on: page 1 is due
    assert len(_body(server.response(1))["events"]) == 500 and server.sent == 1500
    assert _body(server.response(2)) == {"events": [], "next_cursor": "2"}   # past the total: empty pages


def _samples(n: int, **grow: float) -> list[dict]:
    base = {"rss_mib": 700.0, "rss_anon_mib": 600.0, "open_states": 80_000, "dedupe_ids": 3_800_000,
            "fds": 22, "threads": 8, "lmdb_used_mib": 1200.0}
    return [{**{k: v * (1 + grow.get(k, 0.0) * i / n) for k, v in base.items()}, "fed": i} for i in range(n)]


def test_verdict_passes_flat_series_and_names_what_grew():
    assert verdict(_samples(40), total=40)["ok"] is True
    grown = verdict(_samples(40, rss_anon_mib=0.5, dedupe_ids=0.05), total=40)
    assert grown["ok"] is False and grown["failed"] == ["rss_anon_mib"]   # +5% over the run is within 10%
    assert verdict(_samples(40, lmdb_used_mib=1.0), total=40)["failed"] == ["lmdb_used_mib"]
    assert verdict(_samples(5), total=5)["ok"] is None                    # too short to have quarters
