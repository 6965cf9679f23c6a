"""Per-source and pipeline watermarks: max event time − allowed lateness, idle sources released (pure)."""

from __future__ import annotations

from dataclasses import dataclass

NO_WATERMARK = -(2**62)


@dataclass(slots=True)
class _SourceMark:
    max_ts_ms: int | None = None
    last_active_mono: float | None = 0.0   # None: not started yet, so never idle

    def silent_for(self, now_mono: float, timeout_s: float) -> bool:
        return self.last_active_mono is not None and now_mono - self.last_active_mono >= timeout_s


@dataclass(frozen=True, slots=True)
class WatermarkStats:
    watermark_ms: int
    per_source_ms: dict[str, int | None]
    idle_sources: tuple[str, ...]


class Watermarks:
    """The pipeline watermark is the minimum over non-idle sources and never moves backwards.

    A source is idle when it delivered no events for `idle_timeout_ms` (monotonic time) since it
    started; when every source is idle the watermark follows the wall clock minus the allowed
    lateness, so the last windows close. With `start_mono=None` no source's silence counts until
    `started` (the daemon's start-up before its sources run can take seconds on a loaded machine:
    counted, it made a polled source look idle while a pushed one raced ahead, or every source idle
    and the watermark the wall clock's, and a backlog went late).
    """

    def __init__(self, sources: list[str], *, allowed_lateness_ms: int, idle_timeout_ms: int,
                 start_mono: float | None) -> None:
        self.allowed_lateness_ms = allowed_lateness_ms
        self.idle_timeout_s = idle_timeout_ms / 1000
        self._marks = {name: _SourceMark(last_active_mono=start_mono) for name in sources}
        self._watermark = NO_WATERMARK

    @property
    def value(self) -> int:
        return self._watermark

    def add_source(self, name: str, now_mono: float) -> None:
        self._marks.setdefault(name, _SourceMark(last_active_mono=now_mono))

    def started(self, name: str, now_mono: float) -> None:
        """The source's task began: its silence counts from now."""
        mark = self._marks.get(name)
        if mark is None:
            mark = self._marks[name] = _SourceMark()
        mark.last_active_mono = now_mono

    def remove_source(self, name: str) -> None:
        self._marks.pop(name, None)

    def observe(self, source: str, max_ts_ms: int, now_mono: float) -> None:
        """A source delivered events up to `max_ts_ms`."""
        mark = self._marks.get(source)
        if mark is None:
            mark = self._marks[source] = _SourceMark()
        if mark.max_ts_ms is None or max_ts_ms > mark.max_ts_ms:
            mark.max_ts_ms = max_ts_ms
        mark.last_active_mono = now_mono

    def touch(self, source: str, now_mono: float) -> None:
        """Mark a source active without new events (e.g. it has a backlog waiting in its queue)."""
        mark = self._marks.get(source)
        if mark is not None:
            mark.last_active_mono = now_mono

    def pause(self, started_mono: float, ended_mono: float) -> None:
        """The pipeline took nothing from its sources between the two times (a commit): sources
        that were not idle when it started have their silence counted without that span."""
        span = ended_mono - started_mono
        if span <= 0:
            return
        for mark in self._marks.values():
            if mark.last_active_mono is not None and started_mono - mark.last_active_mono < self.idle_timeout_s:
                mark.last_active_mono += span

    def advance(self, now_ms: int, now_mono: float) -> int:
        """Recompute and return the pipeline watermark (monotonic)."""
        candidate: int | None = None
        for mark in self._marks.values():
            if mark.silent_for(now_mono, self.idle_timeout_s):
                continue
            source_wm = NO_WATERMARK if mark.max_ts_ms is None else mark.max_ts_ms - self.allowed_lateness_ms
            candidate = source_wm if candidate is None else min(candidate, source_wm)
        if candidate is None:
            candidate = now_ms - self.allowed_lateness_ms
        if candidate > self._watermark:
            self._watermark = candidate
        return self._watermark

    def is_late(self, ts_ms: int) -> bool:
        return ts_ms < self._watermark

    def snapshot(self) -> dict[str, object]:
        return {"watermark": self._watermark, "sources": {n: m.max_ts_ms for n, m in self._marks.items()}}

    def restore(self, snap: dict[str, object], now_mono: float) -> None:
        self._watermark = max(self._watermark, int(snap.get("watermark", NO_WATERMARK)))  # type: ignore[arg-type]
        for name, max_ts in dict(snap.get("sources", {})).items():  # type: ignore[arg-type]
            if name in self._marks and max_ts is not None:
                mark = self._marks[name]
                mark.max_ts_ms = int(max_ts)
                if mark.last_active_mono is not None:
                    mark.last_active_mono = now_mono

    def statistics(self, now_mono: float) -> WatermarkStats:
        idle = tuple(n for n, m in self._marks.items() if m.silent_for(now_mono, self.idle_timeout_s))
        per = {n: (None if m.max_ts_ms is None else m.max_ts_ms - self.allowed_lateness_ms) for n, m in self._marks.items()}
        return WatermarkStats(self._watermark, per, idle)

    def value_or_now(self, now_ms: int) -> int:
        """The watermark, or the wall clock before any event (for time-decayed answers)."""
        return now_ms if self._watermark == NO_WATERMARK else self._watermark + self.allowed_lateness_ms
