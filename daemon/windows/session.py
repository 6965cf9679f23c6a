"""Gap-based session windows per key: open, extend (both ways), merge and close (pure).

A session is [first_ts, last_ts + gap). An event joins it when its own [ts, ts + gap)
overlaps it, so events of one session are < gap apart and sessions of a key >= gap apart.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from daemon.aggconfig import WindowSpec
from daemon.windows.base import Window


@dataclass(frozen=True, slots=True)
class Session:
    """The session windower: cuts sorted timestamps into runs and tells which sessions touch."""

    gap_ms: int

    def __post_init__(self) -> None:
        if self.gap_ms <= 0:
            raise ValueError(f"session gap must be positive, got {self.gap_ms} ms")

    @classmethod
    def from_spec(cls, spec: WindowSpec) -> Session:
        return cls(gap_ms=spec.gap_ms)

    def split(self, ts_sorted: Sequence[int]) -> list[tuple[int, int, int, int]]:
        """Runs (first_ms, last_ms, lo, hi) of ts_sorted[lo:hi] whose neighbours are < gap apart."""
        gap = self.gap_ms
        runs = []
        lo = 0
        for i in range(1, len(ts_sorted)):
            if ts_sorted[i] - ts_sorted[i - 1] >= gap:
                runs.append((ts_sorted[lo], ts_sorted[i - 1], lo, i))
                lo = i
        if ts_sorted:
            runs.append((ts_sorted[lo], ts_sorted[-1], lo, len(ts_sorted)))
        return runs

    def touching(self, spans: Sequence[tuple[int, int]], first_ms: int, last_ms: int) -> list[int]:
        """Positions in `spans` ((first, last) pairs) of the sessions that [first, last] joins."""
        gap = self.gap_ms
        return [i for i, (f, l) in enumerate(spans) if first_ms < l + gap and f < last_ms + gap]

    def window(self, first_ms: int, last_ms: int) -> Window:
        """The window of a session whose events span [first_ms, last_ms]."""
        return Window(first_ms, last_ms + self.gap_ms)


def sessionize(ts_ms: Iterable[int], gap_ms: int) -> list[Window]:
    """The session windows of one key's timestamps (a plain reference, oldest first)."""
    ts = sorted(ts_ms)
    windower = Session(gap_ms)
    return [windower.window(first, last) for first, last, _, _ in windower.split(ts)]


class SessionStore:
    """Open sessions per key, each [first_ms, last_ms, states], and a lazy heap of their ends.

    `empty` and `merge` make and combine the metric states; the store never folds values.
    The heap holds one entry per session, pushed when it opens: growing a session does not push
    (the entry's end is then early, never late), and `close` pushes it again at its real end when
    it pops an early entry. Entries of sessions merged into another are skipped when popped.
    """

    def __init__(self, windower: Session, empty: Callable[[], Any], merge: Callable[[Any, Any], Any]) -> None:
        self.windower = windower
        self._empty, self._merge = empty, merge
        self.sessions: dict[Any, list[list[Any]]] = {}
        self.n_states = 0
        self._ends: list[tuple[int, int, Any, list[Any]]] = []   # (end, seq, key, session)
        self._seq = 0

    def place(self, key: Any, first_ms: int, last_ms: int, *, may_open: bool) -> Any | None:
        """The states of the session that events spanning [first, last] join, extending it and
        merging any sessions they bridge; a new session if none is touched and may_open, else None."""
        gap = self.windower.gap_ms
        sessions = self.sessions.get(key)
        if sessions is not None and len(sessions) == 1:   # the common case: extend the key's one session
            s = sessions[0]
            if first_ms < s[1] + gap and s[0] < last_ms + gap:
                if first_ms < s[0]:
                    s[0] = first_ms
                if last_ms > s[1]:
                    s[1] = last_ms
                return s[2]
        if sessions is None:
            if not may_open:
                return None
            target = [first_ms, last_ms, self._empty()]
            self.sessions[key] = [target]
            self.n_states += 1
            self._push(key, target)
            return target[2]
        touch = [i for i, s in enumerate(sessions) if first_ms < s[1] + gap and s[0] < last_ms + gap]
        if not touch:
            if not may_open:
                return None
            target = [first_ms, last_ms, self._empty()]
            sessions.append(target)
            self.n_states += 1
            if len(sessions) > 1:
                sessions.sort(key=_first)
            self._push(key, target)
            return target[2]
        target = sessions[touch[0]]
        for j in reversed(touch[1:]):
            other = sessions.pop(j)
            target[2] = self._merge(target[2], other[2])
            target[1] = max(target[1], other[1])
            self.n_states -= 1
        if first_ms < target[0]:
            target[0] = first_ms
            if len(sessions) > 1:
                sessions.sort(key=_first)
        if last_ms > target[1]:
            target[1] = last_ms
        return target[2]

    def _push(self, key: Any, session: list[Any]) -> None:
        self._seq += 1
        heapq.heappush(self._ends, (session[1] + self.windower.gap_ms, self._seq, key, session))

    def close(self, watermark_ms: int) -> list[tuple[int, int, Any, Any]]:
        """Remove and return (start, end, key, states) of every session ending at or before watermark."""
        gap, found, ends = self.windower.gap_ms, [], self._ends
        while ends and ends[0][0] <= watermark_ms:
            _, _, key, session = heapq.heappop(ends)
            sessions = self.sessions.get(key, ())
            j = next((j for j, s in enumerate(sessions) if s is session), None)
            if j is None:
                continue   # merged into another session, which has its own entry
            end = session[1] + gap
            if end > watermark_ms:   # it grew since the entry was pushed
                self._push(key, session)
                continue
            del sessions[j]
            if not sessions:
                del self.sessions[key]
            found.append((session[0], end, key, session[2]))
        self.n_states -= len(found)
        return found

    def load(self, key: Any, sessions: list[list[Any]]) -> None:
        """Put back a key's sessions ([first, last, states] each) from a checkpoint."""
        self.sessions[key] = sorted(sessions, key=_first)
        self.n_states += len(sessions)
        for s in sessions:
            self._push(key, s)


def _first(session: list[Any]) -> int:
    return session[0]
