"""Tumbling and hopping window assignment, aligned to the epoch (tumbling = hopping, slide = size)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from daemon.aggconfig import WindowSpec
from daemon.windows.base import Window


@dataclass(frozen=True, slots=True)
class Hopping:
    """Windows [s, s + size_ms) for every s that is a multiple of slide_ms (size a multiple of slide)."""

    size_ms: int
    slide_ms: int

    def __post_init__(self) -> None:
        if self.slide_ms <= 0 or self.size_ms <= 0 or self.size_ms % self.slide_ms:
            raise ValueError(f"window size {self.size_ms} ms must be a positive multiple of slide {self.slide_ms} ms")

    @classmethod
    def from_spec(cls, spec: WindowSpec) -> Hopping:
        return cls(size_ms=spec.size_ms, slide_ms=spec.slide_ms or spec.size_ms)

    @property
    def per_event(self) -> int:
        """How many windows hold each event (size / slide)."""
        return self.size_ms // self.slide_ms

    def assign(self, ts_ms: int) -> list[Window]:
        return self.windows_from_latest(ts_ms - ts_ms % self.slide_ms)

    def latest_starts(self, ts_ms: Sequence[int]) -> list[int]:
        slide = self.slide_ms
        return [t - t % slide for t in ts_ms]

    def windows_from_latest(self, latest_start_ms: int) -> list[Window]:
        size, slide = self.size_ms, self.slide_ms
        first = latest_start_ms - size + slide
        return [Window(s, s + size) for s in range(first, latest_start_ms + 1, slide)]


@dataclass(frozen=True, slots=True)
class Tumbling(Hopping):
    """Non-overlapping windows [n*size, (n+1)*size): every event lands in exactly one."""

    @classmethod
    def from_spec(cls, spec: WindowSpec) -> Tumbling:
        return cls(size_ms=spec.size_ms, slide_ms=spec.size_ms)
