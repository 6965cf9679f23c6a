"""The storefront on a real loopback port: polling pages, ETag/304, websocket frames with seq, the split, main."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from daemon.clock import SystemClock
from daemon.storefront import main as storefront_main
from daemon.storefront.generator import AnomalyPlan, Generator
from daemon.storefront.server import Storefront, StorefrontConfig, open_storefront

pytestmark = pytest.mark.anyio

CONFIG = StorefrontConfig(host="127.0.0.1", port=0, rate=1000.0, seed=3, start_ms=0)
ORDER_TYPES = {"cart", "remove_from_cart", "purchase"}
CLICK_TYPES = {"view", "search"}
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def pump_until(sf: Storefront, ts_ms: int) -> None:
    while sf.pump(ts_ms):
        pass


async def get_page(http: aiohttp.ClientSession, url: str, **params: Any) -> dict[str, Any]:
    async with http.get(url, params={k: str(v) for k, v in params.items()}) as resp:
        assert resp.status == 200
        return orjson.loads(await resp.read())


async def poll_everything(http: aiohttp.ClientSession, url: str, limit: int = 10_000) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    cursor = ""
    while True:
        page = await get_page(http, url, cursor=cursor, limit=limit)
        events.extend(page["events"])
        if not page["events"]:
            return events
        cursor = page["next_cursor"]


async def read_feed(ws: aiohttp.ClientWebSocketResponse, n: int) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    while len(events) < n:
        msg = await ws.receive(timeout=5)
        assert msg.type == aiohttp.WSMsgType.TEXT, msg
        frame = orjson.loads(msg.data)
        assert isinstance(frame, list) and 1 <= len(frame) <= 100
        events.extend(frame)
    return events


async def test_poll_pages_follow_the_cursor():
    """Pages of the orders half follow next_cursor in order, and an empty page keeps the cursor."""
    async with open_storefront(CONFIG, produce=False) as shop, aiohttp.ClientSession() as http:
        pump_until(shop.storefront, 20_000)
        url = shop.url + "/api/events"
        first = await get_page(http, url, limit=50)
        assert len(first["events"]) == 50 and first["next_cursor"] == "50"
        events = first["events"] + await poll_everything_from(http, url, first["next_cursor"])
        assert len(events) == shop.storefront.statistics().heads["orders"]
        assert {e["type"] for e in events} <= ORDER_TYPES
        ts = [e["ts"] for e in events]
        assert ts == sorted(ts)
        end = await get_page(http, url, cursor=len(events))
        assert end == {"events": [], "next_cursor": str(len(events))}


async def poll_everything_from(http: aiohttp.ClientSession, url: str, cursor: str) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    while True:
        page = await get_page(http, url, cursor=cursor, limit=77)
        if not page["events"]:
            return events
        events.extend(page["events"])
        cursor = page["next_cursor"]


async def test_etag_answers_304_until_something_new():
    """Re-polling a caught-up cursor with its ETag gets 304, and 200 with new events once there are some."""
    async with open_storefront(CONFIG, produce=False) as shop, aiohttp.ClientSession() as http:
        pump_until(shop.storefront, 5_000)
        url = shop.url + "/api/events"
        events = await poll_everything(http, url)
        cursor = str(len(events))
        async with http.get(url, params={"cursor": cursor}) as resp:
            etag = resp.headers["ETag"]
        async with http.get(url, params={"cursor": cursor}, headers={"If-None-Match": etag}) as resp:
            assert resp.status == 304 and resp.headers["ETag"] == etag
        pump_until(shop.storefront, 10_000)
        async with http.get(url, params={"cursor": cursor}, headers={"If-None-Match": etag}) as resp:
            assert resp.status == 200 and resp.headers["ETag"] != etag
            assert (await resp.json())["events"]


async def test_limit_is_capped_and_bad_parameters_are_refused():
    """limit defaults to 500 and is capped at 10000; a non-integer cursor or limit is a 400."""
    async with open_storefront(CONFIG, produce=False) as shop, aiohttp.ClientSession() as http:
        pump_until(shop.storefront, 15_000)
        url = shop.url + "/api/all"
        assert len((await get_page(http, url))["events"]) == 500
        assert len((await get_page(http, url, limit=50_000))["events"]) == 10_000
        for params in ({"cursor": "abc"}, {"limit": "x"}, {"limit": "0"}):
            async with http.get(url, params=params) as resp:
                assert resp.status == 400
        async with http.get(shop.url + "/api/nope") as resp:
            assert resp.status == 404


async def test_stale_cursor_restarts_at_the_oldest_kept():
    """A cursor older than the kept tail restarts at the oldest kept event; one past the head is caught up."""
    config = replace(CONFIG, keep_events=1_000)
    async with open_storefront(config, produce=False) as shop, aiohttp.ClientSession() as http:
        pump_until(shop.storefront, 10_000)
        oldest, head = shop.storefront.logs["all"].oldest, shop.storefront.logs["all"].head
        assert oldest > 0 and head - oldest <= 1_000 + 1_000 // 16
        page = await get_page(http, shop.url + "/api/all", cursor=0, limit=10)
        assert page["next_cursor"] == str(oldest + 10)
        page = await get_page(http, shop.url + "/api/all", cursor=head + 99)
        assert page == {"events": [], "next_cursor": str(head)}


async def test_a_restarted_storefront_numbers_its_events_above_the_last_run():
    """Positions start at start_ms * 1000: a later run's first cursor and seq lie above every position
    an earlier run served, so a daemon that kept its position resumes with the new events (a poll
    cursor below the new tail starts at its oldest event; a feed's frames carry higher seqs)."""
    first = replace(CONFIG, start_ms=1_000_000)
    async with open_storefront(first, produce=False) as shop, aiohttp.ClientSession() as http:
        pump_until(shop.storefront, 1_060_000)
        served = await poll_everything(http, shop.url + "/api/all")
        last_cursor = shop.storefront.logs["all"].head
        async with http.ws_connect(shop.feed_url + "?channel=all") as ws:
            last_seq = max(e["seq"] for e in await read_feed(ws, 50))
    assert served and last_cursor >= 1_000_000_000 + len(served)
    later = replace(CONFIG, start_ms=1_061_000)   # restarted a second after the first run's last event
    async with open_storefront(later, produce=False) as shop, aiohttp.ClientSession() as http:
        pump_until(shop.storefront, 1_062_000)
        page = await get_page(http, shop.url + "/api/all", cursor=last_cursor, limit=10)
        assert page["events"] and int(page["next_cursor"]) == 1_061_000_000 + 10 > last_cursor
        async with http.ws_connect(shop.feed_url + f"?channel=all&from_seq={last_seq + 1}") as ws:
            assert min(e["seq"] for e in await read_feed(ws, 5)) == 1_061_000_000 > last_seq


async def test_feed_frames_carry_increasing_seq_and_resume():
    """Feed frames are arrays of click events whose seq counts up from 0; from_seq resumes exactly there."""
    async with open_storefront(CONFIG, produce=False) as shop, aiohttp.ClientSession() as http:
        async with http.ws_connect(shop.feed_url + "?from_seq=0", autoping=False) as ws:
            await ws.send_str('{"op": "subscribe", "channel": "events"}')
            pump_until(shop.storefront, 5_000)
            events = await read_feed(ws, 1_000)
            await ws.ping(b"hi")
            while (msg := await ws.receive(timeout=5)).type != aiohttp.WSMsgType.PONG:
                assert msg.type == aiohttp.WSMsgType.TEXT
        assert [e["seq"] for e in events] == list(range(len(events)))
        assert {e["type"] for e in events} <= CLICK_TYPES
        async with http.ws_connect(shop.feed_url + "?from_seq=600") as ws:
            again = await read_feed(ws, 100)
        assert again[:100] == events[600:700]


async def test_poll_and_feed_split_the_stream_without_overlap():
    """Polling /api/events plus the /feed websocket deliver every event of /api/all exactly once."""
    async with open_storefront(CONFIG, produce=False) as shop, aiohttp.ClientSession() as http:
        pump_until(shop.storefront, 10_000)
        everything = await poll_everything(http, shop.url + "/api/all")
        orders = await poll_everything(http, shop.url + "/api/events")
        heads = shop.storefront.statistics().heads
        async with http.ws_connect(shop.feed_url) as ws:
            clicks = await read_feed(ws, heads["clicks"])
        polled = [e["event_id"] for e in orders]
        pushed = [e["event_id"] for e in clicks]
        assert len(everything) == heads["all"] == len(polled) + len(pushed)
        assert not set(polled) & set(pushed)
        assert set(polled) | set(pushed) == {e["event_id"] for e in everything}
        assert orders and clicks


async def test_feed_drops_a_client_that_falls_behind():
    """A feed client whose position falls out of the kept tail is closed with code 4001."""
    config = replace(CONFIG, keep_events=100)
    async with open_storefront(config, produce=False) as shop, aiohttp.ClientSession() as http:
        async with http.ws_connect(shop.feed_url + "?from_seq=0") as ws:
            shop.storefront.pump(2_000)
            msg = await ws.receive(timeout=5)
            assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 4001
        assert shop.storefront.statistics().feed_dropped == 1


async def test_shutdown_closes_feeds_with_going_away():
    """Closing the storefront closes its websocket clients with code 1001."""
    async with aiohttp.ClientSession() as http:
        async with open_storefront(CONFIG, produce=False) as shop:
            ws = await http.ws_connect(shop.feed_url)
            shop.storefront.close()
            msg = await ws.receive(timeout=5)
        assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 1001
        await ws.close()


async def test_labels_health_stats_and_injected_failures():
    """/labels lists started incidents, /healthz answers 200, /stats counts, fail_rate=1 answers 503."""
    plan = AnomalyPlan(warmup_ms=2_000, gap_ms=(3_000, 3_000), duration_ms=(2_000, 2_000))
    config = replace(CONFIG, anomalies=True, plan=plan, fail_rate=1.0)
    async with open_storefront(config, produce=False) as shop, aiohttp.ClientSession() as http:
        pump_until(shop.storefront, 10_000)
        async with http.get(shop.url + "/labels") as resp:
            labels = await resp.json()
        assert [lab["start_ms"] for lab in labels] == [2_000, 5_000, 8_000]
        async with http.get(shop.url + "/healthz") as resp:
            assert resp.status == 200
        async with http.get(shop.url + "/api/events") as resp:
            assert resp.status == 503 and resp.headers["Retry-After"] == "1"
        async with http.get(shop.url + "/stats") as resp:
            stats = await resp.json()
        assert stats["failed_polls"] == 1 and stats["incidents"] == 3


async def test_live_storefront_serves_current_events():
    """With the real clock the feed pushes events whose ts is close to now."""
    config = replace(CONFIG, rate=2_000.0, start_ms=None, tick_s=0.01)
    async with open_storefront(config, SystemClock()) as shop, aiohttp.ClientSession() as http:
        async with http.ws_connect(shop.feed_url) as ws:
            events = await read_feed(ws, 200)
        now_ms = time.time_ns() // 1_000_000
        assert all(abs(now_ms - e["ts"]) < 5_000 for e in events)


def test_out_writes_the_deterministic_events(tmp_path):
    """--out writes --count events as NDJSON identical to the generator's, and the labels beside them."""
    parser = argparse.ArgumentParser()
    storefront_main.add_arguments(parser)
    out = tmp_path / "events.ndjson"
    args = parser.parse_args(["--out", str(out), "--count", "10000", "--seed", "4", "--anomalies", "--rate", "20"])
    assert storefront_main.run(args) == 0
    lines = out.read_bytes().splitlines()
    expected = Generator(4, 1_700_000_000_000, 20.0, anomalies=True).next_batch(10_000)
    assert [orjson.loads(line) for line in lines] == expected
    labels = orjson.loads((tmp_path / "events.ndjson.labels.json").read_bytes())
    assert labels and all(lab["start_ms"] <= expected[-1]["ts"] for lab in labels)


def test_serving_process_exits_zero_on_sigterm():
    """The served storefront logs its URLs as a JSON line on stderr and exits 0 on SIGTERM."""
    code = ("import argparse,sys; from daemon.storefront import main as m; p=argparse.ArgumentParser(); "
            "m.add_arguments(p); sys.exit(m.run(p.parse_args(sys.argv[1:])))")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", code, "--port", "0"], stderr=subprocess.PIPE, env=env, cwd=REPO)
    try:
        started = orjson.loads(proc.stderr.readline())
        assert started["event"] == "storefront_started" and started["url"].startswith("http://127.0.0.1:")
        assert started["orders"].endswith("/api/events") and started["clicks"].endswith("/feed")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
