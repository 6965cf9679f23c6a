"""The daemon's CPU lane: decoding, folding and commit building share one worker thread at a time.

Under the GIL only one thread computes anyway; what matters for the event loop's latency is how many
threads compete with it. When the loop wakes (a request arrived) it waits for the GIL; with one busy
worker that is at most one switch interval (cli.py sets 0.5 ms), with several it can be several, so the
CPU-bound work takes turns in this one lane instead of running in parallel threads.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import anyio

T = TypeVar("T")


class CpuLane:
    """Runs sync functions in a worker thread, one at a time (FIFO among waiting callers)."""

    def __init__(self) -> None:
        self._limiter: anyio.CapacityLimiter | None = None   # made on first use (needs a running loop)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """fn(*args) in a worker thread once the lane is free; not abandoned on cancellation."""
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(1)
        return await anyio.to_thread.run_sync(fn, *args, limiter=self._limiter)
