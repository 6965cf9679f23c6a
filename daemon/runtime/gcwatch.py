"""Time the daemon spends in CPython's cyclic garbage collector (gc.callbacks), for /stats and /metrics.

The daemon holds millions of small long-lived objects (window, session and analyser state, dedupe
ids); a collection pauses every thread, so its share of the CPU and its longest pause are worth
watching: they are what `gc.set_threshold` in cli.py trades.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class GcStats:
    collections: int          # every generation
    full_collections: int     # generation 2: walks every tracked object
    seconds: float            # in collections, all generations
    max_pause_ms: float       # the longest single collection


class GcWatch:
    """Counts and times collections while installed (one callback, removed by `uninstall`)."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self._clock = clock
        self._started = 0.0
        self._collections = self._full = 0
        self._seconds = self._max = 0.0

    def install(self) -> None:
        if self._callback not in gc.callbacks:
            gc.callbacks.append(self._callback)

    def uninstall(self) -> None:
        if self._callback in gc.callbacks:
            gc.callbacks.remove(self._callback)

    def _callback(self, phase: str, info: dict[str, Any]) -> None:
        # Runs in whichever thread triggered the collection, with the GIL held; collections never nest.
        if phase == "start":
            self._started = self._clock()
            return
        pause = self._clock() - self._started
        self._collections += 1
        self._full += info.get("generation") == 2
        self._seconds += pause
        if pause > self._max:
            self._max = pause

    def statistics(self) -> GcStats:
        return GcStats(collections=self._collections, full_collections=self._full,
                       seconds=self._seconds, max_pause_ms=self._max * 1000.0)
