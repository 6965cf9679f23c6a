"""The runner's consumption of several queues."""

from types import SimpleNamespace

from daemon.events import EventBatch
from daemon.pipeline.queue import BoundedQueue, Delivery
from daemon.pipeline.runner import Runner


def one(src: str, i: int) -> Delivery:
    return Delivery(batch=EventBatch(src, event_id=[f"{src}{i}"], ts=[i], type=["view"], user_id=["u"],
                                     session_id=[None], item_id=["i"], category=[None], price=[None],
                                     quantity=[1], revenue=[0.0]))


def test_busy_source_does_not_starve_another():
    """With 1,000 deliveries queued on one source, the other source's delivery is taken next (turns)."""
    fake = SimpleNamespace(queues={"clicks": BoundedQueue(10_000), "orders": BoundedQueue(10_000)}, _turn=0)
    for i in range(1000):
        fake.queues["clicks"].put_nowait(one("clicks", i))
    fake.queues["orders"].put_nowait(one("orders", 0))
    seen = [Runner.next_delivery(fake).batch.source for _ in range(3)]
    assert seen == ["clicks", "orders", "clicks"]
