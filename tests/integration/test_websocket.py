"""websocket source against a real loopback feed: subscribe, resume by seq, reconnects, heartbeat, timeouts."""

from __future__ import annotations

import anyio
import orjson
import pytest

from daemon.sources.websocket import WebsocketConfig, encode_position
from tests.integration.servers import Drain, ShopServer, make_context, make_events, run_until

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(20)]

SUBSCRIBE = '{"op": "subscribe", "channel": "events"}'


@pytest.fixture
def anyio_backend():
    return "asyncio"


def config(server: ShopServer, **kw) -> WebsocketConfig:
    base = dict(name="clicks", url=server.url("/feed", "ws"), subscribe=SUBSCRIBE, heartbeat_s=5.0,
                connect_timeout_s=2.0, min_backoff_s=0.01, max_backoff_s=0.1,
                headers=(("Authorization", "Bearer s3cr3t"),))
    return WebsocketConfig(**(base | kw))


def expected_ids(n: int, first: int = 1) -> list[str]:
    return [f"e{s}" for s in range(first, first + n)]


async def test_subscribes_and_delivers_every_event():
    """The subscribe message reaches the server first; 40 events in frames of 3 arrive once, seq as position."""
    async with ShopServer(make_events(40), frame_size=3, require_subscribe=True) as server:
        ctx = make_context("websocket")
        drain = Drain(ctx.queue)
        await run_until(config(server).build(ctx), lambda: len(drain.ids) >= 40, 5, drain=drain)
    assert server.ws_received == [SUBSCRIBE.encode()]
    assert server.ws_connects[0].headers["Authorization"] == "Bearer s3cr3t"
    assert drain.ids == expected_ids(40)
    assert [orjson.loads(p)["seq"] for p in drain.positions][:3] == [3, 6, 9]
    assert orjson.loads(drain.positions[-1]) == {"seq": 40}
    assert ctx.health.reconnects == 0 and ctx.health.errors == 0
    assert ctx.log.events("ws_connected")


async def test_binary_frames_are_decoded_too():
    """Binary frames carry UTF-8 JSON like text frames."""
    async with ShopServer(make_events(20), frame_size=5, binary_frames=True) as server:
        ctx = make_context("websocket")
        drain = Drain(ctx.queue)
        await run_until(config(server).build(ctx), lambda: len(drain.ids) >= 20, 5, drain=drain)
    assert drain.ids == expected_ids(20)


async def test_dropped_connection_resumes_from_next_seq():
    """The server aborts twice mid-stream; reconnects ask from_seq = last + 1 and nothing is lost or repeated."""
    async with ShopServer(make_events(60), frame_size=2) as server:
        server.ws_drop_after.extend([10, 25])
        ctx = make_context("websocket")
        drain = Drain(ctx.queue)
        await run_until(config(server).build(ctx), lambda: len(drain.ids) >= 60, 5, drain=drain)
        await anyio.sleep(0.05)
        drain.pull()
    assert drain.ids == expected_ids(60)
    resumed = [c.query.get("from_seq") for c in server.ws_connects]
    assert resumed[0] is None and len(resumed) == 3
    # each reconnect resumes right after the last seq delivered before the drop
    # (drop_after counts events sent on that connection; frames still in flight when aborted are lost)
    first_cut, second_cut = (int(r) - 1 for r in resumed[1:])
    assert 0 < first_cut <= 10 and first_cut < second_cut <= first_cut + 25
    assert ctx.health.reconnects == 2 and ctx.health.errors == 2
    assert "1006" in ctx.health.last_error


async def test_server_down_then_back_reconnects_with_backoff():
    """While the server is stopped connects are refused and retried with growing delays; on return it resumes."""
    server = ShopServer(make_events(20))
    await server.start()
    try:
        ctx = make_context("websocket")
        drain = Drain(ctx.queue)
        source = config(server).build(ctx)
        async with anyio.create_task_group() as tg:
            tg.start_soon(source.run)
            with anyio.fail_after(8):
                while len(drain.ids) < 20:
                    drain.pull()
                    await anyio.sleep(0.005)
                await server.stop()
                while ctx.health.reconnects < 5:
                    await anyio.sleep(0.005)
                assert not ctx.health.connected
                server.append(make_events(10, first_seq=21))
                await server.start()
                while len(drain.ids) < 30:
                    drain.pull()
                    await anyio.sleep(0.005)
                assert ctx.health.connected and ctx.health.state == "connected"
            tg.cancel_scope.cancel()
    finally:
        await server.stop()
    assert drain.ids == expected_ids(30)
    assert server.ws_connects[-1].query["from_seq"] == "21"
    attempts = ctx.log.events("ws_reconnecting")
    assert [a["attempt"] for a in attempts[:4]] == [1, 2, 3, 4]   # the going-away close counts once, then refusals
    assert all(a["delay_s"] <= 0.1 for a in attempts)
    assert ctx.health.errors >= 4
    assert "s3cr3t" not in repr(ctx.log.records)


async def test_missing_pongs_trigger_reconnect():
    """With heartbeat on and a server that never answers pings, the client gives up and reconnects."""
    async with ShopServer(make_events(5), answer_pings=False) as server:
        ctx = make_context("websocket")
        drain = Drain(ctx.queue)
        await run_until(config(server, heartbeat_s=0.05).build(ctx), lambda: len(server.ws_connects) >= 3, 5,
                        drain=drain)
    assert server.ws_pings >= 2
    assert ctx.health.errors >= 2
    assert "PONG" in ctx.health.last_error
    assert drain.ids == expected_ids(5)          # reconnects resume after seq 5: nothing repeated


async def test_answered_heartbeat_keeps_an_idle_connection():
    """An idle feed that answers pings stays connected: pings flow and there is no reconnect."""
    async with ShopServer(make_events(3)) as server:
        ctx = make_context("websocket")
        drain = Drain(ctx.queue)
        await run_until(config(server, heartbeat_s=0.2).build(ctx), lambda: server.ws_pings >= 3, 5, drain=drain)
    assert ctx.health.reconnects == 0 and len(server.ws_connects) == 1
    assert drain.ids == expected_ids(3)


async def test_restored_position_resumes_from_next_seq():
    """ctx.position {"seq": 15} connects with from_seq=16 and delivers only the later events."""
    async with ShopServer(make_events(30)) as server:
        ctx = make_context("websocket", position=encode_position(15))
        drain = Drain(ctx.queue)
        await run_until(config(server).build(ctx), lambda: len(drain.ids) >= 15, 5, drain=drain)
    assert server.ws_connects[0].query["from_seq"] == "16"
    assert drain.ids == expected_ids(15, first=16)


async def test_replayed_frames_are_skipped():
    """A server that ignores from_seq replays the feed on reconnect; frames at or below the last seq are skipped."""
    async with ShopServer(make_events(30), frame_size=5, honour_from_seq=False) as server:
        server.ws_drop_after.append(15)
        ctx = make_context("websocket")
        drain = Drain(ctx.queue)
        await run_until(config(server).build(ctx), lambda: len(drain.ids) >= 30, 5, drain=drain)
        await anyio.sleep(0.05)
        drain.pull()
    assert drain.ids == expected_ids(30)
    assert ctx.log.events("ws_frame_replayed")
    said = [level for level, event, _ in ctx.log.records if event == "ws_frames_replayed"]
    assert said == ["warning"]   # once, on the connection that replayed


async def test_slow_handshake_times_out_and_is_retried():
    """A handshake slower than connect_timeout is an error; the next attempt connects."""
    async with ShopServer(make_events(5)) as server:
        server.slow_next(1, 1.5)
        ctx = make_context("websocket")
        drain = Drain(ctx.queue)
        await run_until(config(server, connect_timeout_s=0.3).build(ctx), lambda: len(drain.ids) >= 5, 5, drain=drain)
    assert ctx.health.errors == 1 and ctx.health.reconnects == 1
    assert ctx.health.last_error == "no handshake within 0.3s"


async def test_refused_handshake_honours_retry_after():
    """A 503 handshake with Retry-After: 1 delays the next attempt although the backoff base is 10 ms."""
    async with ShopServer(make_events(5)) as server:
        server.fail_next(1, 503, retry_after="1")
        ctx = make_context("websocket")
        drain = Drain(ctx.queue)
        started = anyio.current_time()
        await run_until(config(server).build(ctx), lambda: len(drain.ids) >= 5, 5, drain=drain)
    assert anyio.current_time() - started >= 0.95
    assert ctx.health.last_error == "handshake refused: HTTP 503"
    assert ctx.log.events("ws_reconnecting")[0]["delay_s"] == 1.0


async def test_full_queue_stops_reading_frames():
    """With a 10-event blocking queue and no consumer the source stops reading; draining resumes it in order."""
    async with ShopServer(make_events(200), frame_size=5) as server:
        ctx = make_context("websocket", capacity=10)
        drain = Drain(ctx.queue)
        source = config(server).build(ctx)
        async with anyio.create_task_group() as tg:
            tg.start_soon(source.run)
            with anyio.fail_after(8):
                while ctx.queue.depth < 10:
                    await anyio.sleep(0.005)
                await anyio.sleep(0.3)
                # two frames queued, the third waits in put(); the rest stays on the wire
                assert ctx.queue.depth == 10 and ctx.health.accepted == 15
                while len(drain.ids) < 200:
                    drain.pull()
                    assert ctx.queue.depth <= 10
                    await anyio.sleep(0.001)
            tg.cancel_scope.cancel()
    assert drain.ids == expected_ids(200)
    assert ctx.health.reconnects == 0
