"""Bounded queue: capacity in events, overflow policies, dropped events counted."""

import anyio
import pytest

from daemon.errors import QueueFull
from daemon.events import EventBatch
from daemon.pipeline.queue import BoundedQueue, Delivery


def delivery(n: int, tag: str = "") -> Delivery:
    b = EventBatch("s")
    b.event_id = [f"{tag}{i}" for i in range(n)]
    b.ts = [0] * n
    return Delivery(batch=b)


def test_block_policy_refuses_put_nowait_when_full():
    """Under `block`, put_nowait raises QueueFull once capacity (in events) is reached."""
    async def main():
        q = BoundedQueue(10, "block")
        q.put_nowait(delivery(6))
        with pytest.raises(QueueFull):
            q.put_nowait(delivery(6))
        assert q.depth == 6
    anyio.run(main)


def test_block_policy_makes_the_producer_wait():
    """A blocked put resumes only after the consumer frees room."""
    async def main():
        q = BoundedQueue(10, "block")
        await q.put(delivery(8))
        finished = []

        async def producer():
            await q.put(delivery(8, "b"))
            finished.append(True)

        async with anyio.create_task_group() as tg:
            tg.start_soon(producer)
            await anyio.sleep(0.05)
            assert not finished and q.statistics().blocked_puts == 1
            assert q.get_nowait().size == 8
            await anyio.sleep(0.05)
            assert finished
        assert q.depth == 8
    anyio.run(main)


def test_drop_newest_counts_every_dropped_event():
    """`drop_newest` refuses what does not fit and counts its events."""
    async def main():
        q = BoundedQueue(10, "drop_newest")
        for _ in range(5):
            q.put_nowait(delivery(4))
        s = q.statistics()
        assert s.depth == 8 and s.dropped_events == 12 and s.dropped_deliveries == 3
    anyio.run(main)


def test_drop_oldest_keeps_the_newest():
    """`drop_oldest` evicts from the head until the new delivery fits."""
    async def main():
        q = BoundedQueue(10, "drop_oldest")
        for i in range(5):
            q.put_nowait(delivery(4, tag=f"d{i}-"))
        s = q.statistics()
        assert s.depth == 8 and s.dropped_events == 12
        assert q.get_nowait().batch.event_id[0] == "d3-0"
    anyio.run(main)


@pytest.mark.parametrize("policy", ["drop_oldest", "drop_newest"])
def test_stalled_consumer_keeps_memory_bounded(policy):
    """With nobody consuming, 1M offered events leave at most `capacity` queued; the rest are counted."""
    async def main():
        q = BoundedQueue(1000, policy)
        offered = 0
        for i in range(10_000):
            q.put_nowait(delivery(100, tag=str(i)))
            offered += 100
        s = q.statistics()
        assert s.depth <= 1000
        assert s.depth + s.dropped_events == offered
    anyio.run(main)


def test_durable_ack_is_released_when_dropped():
    """A dropped delivery's ack event is set and the delivery is marked dropped."""
    async def main():
        q = BoundedQueue(1, "drop_newest")
        q.put_nowait(delivery(1))
        d = delivery(1)
        d.acked = anyio.Event()
        q.put_nowait(d)
        assert d.dropped and d.acked.is_set()
    anyio.run(main)
