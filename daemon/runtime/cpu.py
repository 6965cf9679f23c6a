"""The daemon's CPU lane: decoding, folding and commit building share one worker thread at a time.

Under the GIL only one thread computes anyway; what matters for the event loop's latency is how many
threads compete with it. When the loop wakes (a request arrived) it waits for the GIL; with one busy
worker that is at most one switch interval (cli.py sets 0.5 ms), with several it can be several, so the
CPU-bound work takes turns in this one lane instead of running in parallel threads.

The lane's threads also run at a lower OS priority (nice +LANE_NICE): bulk folding yields the cores to
what serves requests, the event loop and the recommendations process (daemon/replica/). On 2
cores shared with the benchmark's clients that took the replica's /recommendations p99 from ~5.5 to
~4.4 ms without lowering the ingest rate (benchmarks/README.md). Where the OS refuses (a seccomp
filter without setpriority) the lane simply runs at the process's priority.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import anyio

T = TypeVar("T")
LANE_NICE = 5


class CpuLane:
    """Runs sync functions in a worker thread, one at a time (FIFO among waiting callers)."""

    def __init__(self, nice: int = LANE_NICE) -> None:
        self._limiter: anyio.CapacityLimiter | None = None   # made on first use (needs a running loop)
        self._nice = nice
        self._niced: set[int] = set()   # native ids of the worker threads already lowered

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """fn(*args) in a worker thread once the lane is free; not abandoned on cancellation."""
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(1)
        return await anyio.to_thread.run_sync(self._call, fn, args, limiter=self._limiter)

    def _call(self, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        tid = threading.get_native_id()
        if self._nice and tid not in self._niced:
            self._niced.add(tid)
            # Linux: a thread id names one thread here; refused (EPERM under a seccomp filter) = keep priority.
            with contextlib.suppress(OSError):
                os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + self._nice)
        return fn(*args)
