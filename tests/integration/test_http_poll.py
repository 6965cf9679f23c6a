"""http_poll against a real loopback server: pages, ETag/304, adaptive interval, errors, resume, back-pressure."""

from __future__ import annotations

import anyio
import orjson
import pytest

from daemon.sources.http_poll import HttpPollConfig, decode_position, encode_position
from tests.integration.servers import Drain, ShopServer, make_context, make_events, run_until

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(20)]

TOKEN = "Bearer s3cr3t-token"


@pytest.fixture
def anyio_backend():
    return "asyncio"


def config(server: ShopServer, **kw) -> HttpPollConfig:
    base = dict(name="orders", url=server.url("/events"), limit=10, min_interval_s=0.01, max_interval_s=0.05,
                timeout_s=2.0, min_backoff_s=0.005, max_backoff_s=0.05, headers=(("Authorization", TOKEN),))
    return HttpPollConfig(**(base | kw))


def expected_ids(n: int, first: int = 1) -> list[str]:
    return [f"e{s}" for s in range(first, first + n)]


async def test_every_event_is_delivered_once_across_pages():
    """53 events in pages of 10 arrive once, in order, each delivery carrying the cursor after it."""
    async with ShopServer(make_events(53)) as server:
        ctx = make_context("http_poll")
        drain = Drain(ctx.queue)
        await run_until(config(server).build(ctx), lambda: len(drain.ids) >= 53, 5, drain=drain)
    assert drain.ids == expected_ids(53)
    cursors = [decode_position(p)[0] for p, size in zip(drain.positions, drain.sizes) if size]
    assert cursors == ["c10", "c20", "c30", "c40", "c50", "c53"]
    sent = [r.query.get("cursor") for r in server.polls()][:6]
    assert sent == [None, "c10", "c20", "c30", "c40", "c50"]
    assert all(r.query["limit"] == "10" and r.headers["Authorization"] == TOKEN for r in server.polls())
    stats = ctx.health.snapshot(0)
    assert (stats.accepted, stats.errors, stats.state, stats.connected) == (53, 0, "stopped", False)


async def test_caught_up_source_sends_etag_and_gets_304():
    """Once caught up, polls carry If-None-Match and get 304; new events are then fetched once."""
    async with ShopServer(make_events(15)) as server:
        ctx = make_context("http_poll")
        drain = Drain(ctx.queue)
        source = config(server).build(ctx)
        async with anyio.create_task_group() as tg:
            tg.start_soon(source.run)
            with anyio.fail_after(5):
                while sum(r.status == 304 for r in server.polls()) < 3:
                    await anyio.sleep(0.005)
                server.append(make_events(5, first_seq=16))
                while len(drain.ids) < 20:
                    drain.pull()
                    await anyio.sleep(0.005)
                await anyio.sleep(0.1)
            tg.cancel_scope.cancel()
        drain.pull()
    assert drain.ids == expected_ids(20)
    not_modified = [r for r in server.polls() if r.status == 304]
    assert all(r.headers["If-None-Match"] == '"15-15"' for r in not_modified[:3])


async def test_ndjson_pages_are_fetched_once_then_304():
    """A bare NDJSON feed without cursors relies on the ETag alone: read once, then 304s."""
    async with ShopServer(make_events(12), page_form="ndjson") as server:
        ctx = make_context("http_poll")
        drain = Drain(ctx.queue)
        await run_until(config(server).build(ctx), lambda: sum(r.status == 304 for r in server.polls()) >= 3, 5,
                        drain=drain)
    assert drain.ids == expected_ids(12)


async def test_empty_polls_back_off_to_max_interval():
    """Polls with nothing new space out by doubling up to max_interval, never beyond it."""
    async with ShopServer(make_events(3)) as server:
        ctx = make_context("http_poll")
        cfg = config(server, min_interval_s=0.01, max_interval_s=0.08)
        await run_until(cfg.build(ctx), lambda: len(server.polls()) >= 10, 5, drain=Drain(ctx.queue))
    # poll 1 is a partial page (wait min), then empty ones wait 0.01, 0.02, 0.04, 0.08, 0.08, ...
    planned = [p["delay_s"] for p in ctx.log.events("polled")][:9]
    assert planned == [0.01, 0.01, 0.02, 0.04, 0.08, 0.08, 0.08, 0.08, 0.08]
    times = [r.at_s for r in server.polls()]
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert all(g >= 0.075 for g in gaps[4:])


async def test_full_pages_are_polled_at_once():
    """Full pages are fetched back to back even with a long min_interval; the partial one ends the burst."""
    async with ShopServer(make_events(45)) as server:
        ctx = make_context("http_poll")
        cfg = config(server, min_interval_s=0.5, max_interval_s=1.0)
        drain = Drain(ctx.queue)
        await run_until(cfg.build(ctx), lambda: len(drain.ids) >= 45, 5, drain=drain)
        await anyio.sleep(0.2)
    times = [r.at_s for r in server.polls()]
    assert len(times) == 5
    assert [p["delay_s"] for p in ctx.log.events("polled")][:5] == [0.0, 0.0, 0.0, 0.0, 0.5]
    assert times[-1] - times[0] < 1.0            # four waits of min_interval would take 2 s


async def test_5xx_storm_backs_off_with_jitter_then_recovers():
    """20 consecutive 500s: jittered delays grow to the cap, errors are counted, then every event arrives once."""
    async with ShopServer(make_events(35)) as server:
        server.fail_next(20, 500)
        ctx = make_context("http_poll")
        drain = Drain(ctx.queue)
        await run_until(config(server).build(ctx), lambda: len(drain.ids) >= 35, 10, drain=drain)
    assert drain.ids == expected_ids(35)
    failures = ctx.log.events("poll_failed")
    assert [f["attempt"] for f in failures] == list(range(1, 21))
    assert all(f["status"] == 500 for f in failures)
    delays = [f["delay_s"] for f in failures]
    assert all(0 <= d <= 0.05 for d in delays)
    assert len(set(delays)) > 10                                # jitter: not one fixed delay
    assert sum(delays[-10:]) > sum(delays[:3]) * 2              # grows towards the cap
    stats = ctx.health.snapshot(0)
    assert (stats.errors, stats.last_error) == (20, "HTTP 500")
    assert ctx.log.events("polled")[-1]["status"] in (200, 304)     # polling again after the storm
    logged = repr(ctx.log.records)
    assert "s3cr3t" not in logged and "s3cr3t" not in stats.last_error


async def test_retry_after_is_honoured():
    """A 429 with Retry-After: 1 pauses polling for a second although the backoff base is 5 ms."""
    async with ShopServer(make_events(5)) as server:
        server.fail_next(1, 429, retry_after="1")
        ctx = make_context("http_poll")
        drain = Drain(ctx.queue)
        await run_until(config(server).build(ctx), lambda: len(drain.ids) >= 5, 5, drain=drain)
    first, second = server.polls()[:2]
    assert first.status == 429
    assert second.at_s - first.at_s >= 0.95
    assert ctx.log.events("poll_failed")[0]["retry_after_s"] == 1.0


async def test_retry_after_is_bounded_by_max_retry_after():
    """A 503 asking for an hour waits only max_retry_after."""
    async with ShopServer(make_events(5)) as server:
        server.fail_next(1, 503, retry_after="3600")
        ctx = make_context("http_poll")
        drain = Drain(ctx.queue)
        await run_until(config(server, max_retry_after_s=0.2).build(ctx), lambda: len(drain.ids) >= 5, 5, drain=drain)
    first, second = server.polls()[:2]
    assert 0.19 <= second.at_s - first.at_s < 1.0


async def test_timeouts_are_errors_and_retried():
    """Answers slower than timeout_s count as errors, then polling recovers without loss."""
    async with ShopServer(make_events(25)) as server:
        server.slow_next(2, 0.5)
        ctx = make_context("http_poll")
        drain = Drain(ctx.queue)
        await run_until(config(server, timeout_s=0.1).build(ctx), lambda: len(drain.ids) >= 25, 5, drain=drain)
    assert drain.ids == expected_ids(25)
    assert ctx.health.errors == 2
    assert "0.1s" in ctx.log.events("poll_failed")[0]["error"]


async def test_malformed_page_is_retried_not_skipped():
    """A 200 whose body is not a page is an error; the same cursor is asked again and nothing is lost."""
    async with ShopServer(make_events(25)) as server:
        server.garbage_next(3)
        ctx = make_context("http_poll")
        drain = Drain(ctx.queue)
        await run_until(config(server).build(ctx), lambda: len(drain.ids) >= 25, 5, drain=drain)
    assert drain.ids == expected_ids(25)
    assert ctx.health.errors == 3
    assert ctx.health.rejected == 0
    assert [f["attempt"] for f in ctx.log.events("poll_failed")] == [1, 2, 3]


async def test_server_restart_resumes_from_cursor():
    """The server goes away (connections refused) and comes back on the same port: polling resumes at the cursor."""
    server = ShopServer(make_events(30))
    await server.start()
    try:
        ctx = make_context("http_poll")
        drain = Drain(ctx.queue)
        source = config(server).build(ctx)
        async with anyio.create_task_group() as tg:
            tg.start_soon(source.run)
            with anyio.fail_after(8):
                while len(drain.ids) < 30:
                    drain.pull()
                    await anyio.sleep(0.005)
                await server.stop()
                while ctx.health.errors < 3:
                    await anyio.sleep(0.005)
                assert ctx.health.state == "backoff" and not ctx.health.connected
                server.append(make_events(20, first_seq=31))
                before = len(server.polls())
                await server.start()
                while len(drain.ids) < 50:
                    drain.pull()
                    await anyio.sleep(0.005)
            tg.cancel_scope.cancel()
    finally:
        await server.stop()
    assert drain.ids == expected_ids(50)
    assert server.polls()[before].query["cursor"] == "c30"
    assert "Cannot connect" in ctx.health.last_error or "refused" in ctx.health.last_error.lower()


async def test_restart_resumes_from_the_last_delivered_position():
    """A new source given the position of the last delivery continues without gap or duplicate."""
    async with ShopServer(make_events(30)) as server:
        ctx = make_context("http_poll")
        drain = Drain(ctx.queue)
        await run_until(config(server).build(ctx), lambda: len(drain.ids) >= 30, 5, drain=drain)
        server.append(make_events(20, first_seq=31))
        restored = make_context("http_poll", position=drain.positions[-1])
        again = Drain(restored.queue)
        await run_until(config(server).build(restored), lambda: len(again.ids) >= 20, 5, drain=again)
        await anyio.sleep(0.05)
        again.pull()
    assert drain.ids == expected_ids(30)
    assert again.ids == expected_ids(20, first=31)


async def test_restored_position_sets_first_cursor():
    """ctx.position {"cursor": "c25"} makes the first poll ask for cursor c25."""
    async with ShopServer(make_events(40)) as server:
        ctx = make_context("http_poll", position=encode_position("c25", None))
        drain = Drain(ctx.queue)
        await run_until(config(server).build(ctx), lambda: len(drain.ids) >= 15, 5, drain=drain)
    assert server.polls()[0].query["cursor"] == "c25"
    assert drain.ids == expected_ids(15, first=26)
    assert orjson.loads(drain.positions[-1])["cursor"] == "c40"


async def test_full_queue_stops_fetching():
    """With a 10-event blocking queue and no consumer the source stops polling; draining resumes it."""
    async with ShopServer(make_events(100)) as server:
        ctx = make_context("http_poll", capacity=10)
        drain = Drain(ctx.queue)
        source = config(server, limit=5).build(ctx)
        async with anyio.create_task_group() as tg:
            tg.start_soon(source.run)
            with anyio.fail_after(8):
                while len(server.polls()) < 3:
                    await anyio.sleep(0.005)
                await anyio.sleep(0.3)
                # two pages queued, the third waits in put(): no fourth request
                assert len(server.polls()) == 3
                assert ctx.queue.depth == 10
                while len(drain.ids) < 100:
                    drain.pull()
                    assert ctx.queue.depth <= 10
                    await anyio.sleep(0.002)
            tg.cancel_scope.cancel()
    assert drain.ids == expected_ids(100)
