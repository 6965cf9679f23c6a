"""What the HTTP handlers may read: component handles, passed in through an aiohttp AppKey."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web

from daemon.runtime.memory import HeapFigures

if TYPE_CHECKING:   # types only: the recommendations process imports the web helpers without the pipeline
    from daemon.clock import Clock
    from daemon.config import Config
    from daemon.pipeline.queue import BoundedQueue
    from daemon.pipeline.runner import Runner
    from daemon.pipeline.stateparts import StateParts
    from daemon.runtime.gcwatch import GcWatch
    from daemon.stores.checkpoint import Checkpoint


@dataclass(slots=True)
class ProcessHealth:
    """Event-loop lag and readiness, written by the app's monitor task."""

    started_mono: float
    loop_lag_ms: float = 0.0
    ready: bool = False
    not_ready_reasons: list[str] = field(default_factory=list)
    store_error: str = ""
    listener: Any = None          # the LimitedTCPSite (open and refused connections)
    gc: GcWatch | None = None     # time in the cyclic garbage collector
    heap: HeapFigures = field(default_factory=HeapFigures)   # glibc's heap figures, read at most every 10 s


@dataclass(slots=True)
class WebContext:
    cfg: Config
    clock: Clock
    runner: Runner
    parts: StateParts
    checkpoint: Checkpoint
    sources: dict[str, Any]
    queues: dict[str, BoundedQueue]
    health: ProcessHealth
    log: Any


CONTEXT = web.AppKey("context", WebContext)
