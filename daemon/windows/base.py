"""Window values and the windower protocols (fixed windows and gap sessions)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, Protocol


class Window(NamedTuple):
    """A half-open event-time interval [start_ms, end_ms)."""

    start_ms: int
    end_ms: int

    def contains(self, ts_ms: int) -> bool:
        """Whether ts_ms lies in [start_ms, end_ms)."""
        return self.start_ms <= ts_ms < self.end_ms


class FixedWindower(Protocol):
    """Epoch-aligned windows of `size_ms` starting every `slide_ms` (tumbling: slide = size)."""

    size_ms: int
    slide_ms: int

    def assign(self, ts_ms: int) -> list[Window]:
        """Every window that contains ts_ms, oldest first."""
        ...

    def latest_starts(self, ts_ms: Sequence[int]) -> list[int]:
        """For each ts, the start of the newest window containing it (bulk, for the hot path)."""
        ...

    def windows_from_latest(self, latest_start_ms: int) -> list[Window]:
        """The windows shared by every ts whose newest window starts at latest_start_ms."""
        ...


class SessionWindower(Protocol):
    """Per-key sessions: [first_ts, last_ts + gap_ms); events closer than gap_ms join."""

    gap_ms: int

    def split(self, ts_sorted: Sequence[int]) -> list[tuple[int, int, int, int]]:
        """Sorted timestamps cut into runs (first_ms, last_ms, lo, hi) of positions [lo, hi)."""
        ...
