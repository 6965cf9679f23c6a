"""Gap-based session windows per key: open, extend (both ways), merge and close (pure).

A session is [first_ts, last_ts + gap). An event joins it when its own [ts, ts + gap)
overlaps it, so events of one session are < gap apart and sessions of a key >= gap apart.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from daemon.aggconfig import WindowSpec
from daemon.columns import lookup
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
    """Open sessions of every key, in slots: a slot's first and last ms sit in int64 arrays, its
    key in a list and its metric states in one list per metric (`columns`: metric j of slot s is
    columns[j][s]); a key maps to one of its slots, and to a list of the others while it has
    several open sessions (rare: a return after a gap before the old one closed).

    Why slots and columns: per open session this keeps ~100 bytes besides its states and key (a
    list per session with its two ints, a heap tuple and a per-key list cost ~350), a batch can
    extend the sessions its runs touch with a few array operations (`extend_touching`) instead of
    one Python call per run, and metrics fold into their column (`MetricSet.fold_slots`): a list
    of states per session cost 88 bytes more than its 8-byte cells in the columns. The arrays and
    lists keep their size when sessions close (slots are reused).

    `empty` and `merge` make and combine the metric states (lists, one state per metric); the
    store never folds values. Ends wait in chunks, (ends, slots) arrays sorted by end, in a heap
    by each chunk's first end: a session is enqueued when it opens, not when it grows (its entry's
    end is then early, never late), and `close` enqueues it again at its real end when it meets an
    early entry. An entry whose slot was freed (merged or closed) is skipped; one whose slot was
    reused is judged by the slot's current session, so a session is never emitted twice nor late.
    """

    def __init__(self, windower: Session, empty: Callable[[], list[Any]],
                 merge: Callable[[list[Any], list[Any]], list[Any]]) -> None:
        self.windower = windower
        self._empty, self._merge = empty, merge
        self._first = np.zeros(1024, dtype=np.int64)
        self._last = np.zeros(1024, dtype=np.int64)
        self._used = np.zeros(1024, dtype=bool)
        self._keys: list[Any] = []      # per slot (a key may be None; so may a free slot's)
        self.columns: list[list[Any]] = [[] for _ in empty()]   # per metric, per slot; None when free
        self._free: list[int] = []
        self._slot: dict[Any, int] = {}          # key -> one of its slots
        self._more: dict[Any, list[int]] = {}    # key -> its other slots, while it has several
        self.n_states = 0
        self._queue: list[tuple[int, int]] = []  # heap of (first end of a chunk, chunk id)
        self._chunks: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self._chunk_seq = 0
        self._new_slots: list[int] = []          # opened since the last flush
        self._new_ends: list[int] = []

    @property
    def n_keys(self) -> int:
        """Keys with at least one open session."""
        return len(self._slot)

    def states(self, slot: int) -> list[Any]:
        """The metric states of a slot, as a new list (its cells in the columns)."""
        return [c[slot] for c in self.columns]

    def _put(self, slot: int, states: list[Any]) -> None:
        for c, state in zip(self.columns, states):
            c[slot] = state

    def sessions_of(self, key: Any) -> list[tuple[int, int, list[Any]]]:
        """The key's open sessions as (first_ms, last_ms, states), oldest first."""
        one = self._slot.get(key)
        if one is not None and key not in self._more:   # the usual key: one session
            return [(int(self._first[one]), int(self._last[one]), [c[one] for c in self.columns])]
        slots = self._slots_of(key)
        return sorted(((int(self._first[s]), int(self._last[s]), self.states(s)) for s in slots), key=_first)

    def single_sessions(self, keys: Sequence[Any]) -> tuple[list[Any], list[int], list[int], list[int], list[Any]]:
        """`keys` split for a bulk dump: those with exactly one open session, with its slot, first and
        last ms (lists, in that order), and the others (none open, or several: `sessions_of`)."""
        keys = keys if type(keys) is list else list(keys)
        slot = lookup(self._slot, keys)
        one = slot >= 0
        if self._more:
            more = self._more
            one &= np.fromiter((k not in more for k in keys), dtype=bool, count=len(keys))
        if one.all():
            single, rest = keys, []
        else:
            pick = np.flatnonzero(one).tolist()
            single = [keys[i] for i in pick]
            rest = [keys[i] for i in np.flatnonzero(~one).tolist()]
            slot = slot[one]
        return single, slot.tolist(), self._first[slot].tolist(), self._last[slot].tolist(), rest

    def _slots_of(self, key: Any) -> list[int]:
        one = self._slot.get(key)
        if one is None:
            return []
        more = self._more.get(key)
        return [one] if more is None else [one, *more]

    def extend_touching(self, keys: Sequence[Any], first_ms: np.ndarray, last_ms: np.ndarray,
                        eligible: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The common case of a whole batch at once: each eligible run (i) whose key has exactly one
        open session, which the run touches, extends it. Returns the positions of the runs so placed
        and their slots; the others go through `place`. Eligible runs must have distinct keys."""
        n = len(keys)
        slot = lookup(self._slot, keys)
        ok = eligible & (slot >= 0)
        if self._more:
            ok &= ~np.fromiter((k in self._more for k in keys), dtype=bool, count=n)
        idx = np.flatnonzero(ok)
        s = slot[idx]
        gap, f, l = self.windower.gap_ms, first_ms[idx], last_ms[idx]
        touch = (f < self._last[s] + gap) & (self._first[s] < l + gap)
        idx, s, f, l = idx[touch], s[touch], f[touch], l[touch]
        self._first[s] = np.minimum(self._first[s], f)
        self._last[s] = np.maximum(self._last[s], l)
        return idx, s

    def place(self, key: Any, first_ms: int, last_ms: int, *, may_open: bool) -> int | None:
        """The slot of the session that events spanning [first, last] join, extending it and
        merging any sessions they bridge; a new session if none is touched and may_open, else None."""
        gap, fa, la = self.windower.gap_ms, self._first, self._last
        touch = [s for s in self._slots_of(key) if first_ms < la[s] + gap and fa[s] < last_ms + gap]
        if not touch:
            return self._open(key, first_ms, last_ms) if may_open else None
        target = min(touch, key=lambda s: fa[s])
        for other in touch:
            if other != target:
                self._put(target, self._merge(self.states(target), self.states(other)))
                la[target] = max(la[target], la[other])
                fa[target] = min(fa[target], fa[other])
                self._release(other)
        fa[target] = min(fa[target], first_ms)
        la[target] = max(la[target], last_ms)
        return target

    def _open(self, key: Any, first_ms: int, last_ms: int, states: list[Any] | None = None) -> int:
        if self._free:
            slot = self._free.pop()
        else:
            slot = len(self._keys)
            self._keys.append(None)
            for c in self.columns:
                c.append(None)
            if slot >= len(self._first):
                self._first = np.concatenate((self._first, np.zeros_like(self._first)))
                self._last = np.concatenate((self._last, np.zeros_like(self._last)))
                self._used = np.concatenate((self._used, np.zeros_like(self._used)))
        self._put(slot, self._empty() if states is None else states)
        self._keys[slot] = key
        self._used[slot] = True
        self._first[slot], self._last[slot] = first_ms, last_ms
        one = self._slot.get(key)
        if one is None:
            self._slot[key] = slot
        else:
            self._more.setdefault(key, []).append(slot)
        self.n_states += 1
        self._new_slots.append(slot)
        self._new_ends.append(last_ms + self.windower.gap_ms)
        return slot

    def _release(self, slot: int) -> None:
        """Free a slot (dropping its states) and unmap it from its key."""
        key = self._keys[slot]
        more = self._more.get(key)
        if self._slot[key] == slot:
            if more is None:
                del self._slot[key]
            else:
                self._slot[key] = more.pop()
        else:
            assert more is not None
            more.remove(slot)
        if more is not None and not more:
            del self._more[key]
        self._keys[slot] = None
        for c in self.columns:
            c[slot] = None
        self._used[slot] = False
        self._free.append(slot)
        self.n_states -= 1

    def _enqueue(self, ends: np.ndarray, slots: np.ndarray) -> None:
        if len(ends):
            order = np.argsort(ends, kind="stable")
            self._chunk_seq += 1
            self._chunks[self._chunk_seq] = (ends[order], slots[order])
            heapq.heappush(self._queue, (int(ends[order[0]]), self._chunk_seq))

    def _flush(self) -> None:
        if self._new_slots:
            self._enqueue(np.asarray(self._new_ends, dtype=np.int64), np.asarray(self._new_slots, dtype=np.int64))
            self._new_slots, self._new_ends = [], []

    def due_ends(self, watermark_ms: int) -> list[np.ndarray]:
        """The queued ends at or before the watermark, in pieces (views, not copies).

        Each session `close(watermark_ms)` would emit has at least one of them (an entry is early,
        never late), so their count bounds its rows from above; stale and early entries only make
        the bound loose. Walks only the heap nodes that are due (a node is due only if its parent is).
        """
        queue, out = self._queue, []
        stack = [0] if queue else []
        while stack:
            i = stack.pop()
            if i < len(queue) and queue[i][0] <= watermark_ms:
                ends = self._chunks[queue[i][1]][0]
                out.append(ends[:int(np.searchsorted(ends, watermark_ms, side="right"))])
                stack += (2 * i + 1, 2 * i + 2)
        if self._new_ends:
            new = np.asarray(self._new_ends, dtype=np.int64)
            out.append(new[new <= watermark_ms])
        return out

    def close(self, watermark_ms: int) -> list[tuple[int, int, Any, tuple[Any, ...]]]:
        """Remove and return (start, end, key, states) of every session ending at or before watermark
        (states: a tuple, one per metric)."""
        self._flush()
        queue, due = self._queue, []
        while queue and queue[0][0] <= watermark_ms:
            _, cid = heapq.heappop(queue)
            ends, slots = self._chunks.pop(cid)
            cut = int(np.searchsorted(ends, watermark_ms, side="right"))
            due.append(slots[:cut])
            if cut < len(ends):
                self._chunks[cid] = (ends[cut:], slots[cut:])
                heapq.heappush(queue, (int(ends[cut]), cid))
        if not due:
            return []
        slots = np.unique(np.concatenate(due))
        slots = slots[self._used[slots]]
        ends = self._last[slots] + self.windower.gap_ms
        grown = ends > watermark_ms
        self._enqueue(ends[grown], slots[grown])
        done = slots[~grown]
        free = done.tolist()
        keys = list(map(self._keys.__getitem__, free))
        # Column by column, not a list per slot: a close may free tens of thousands of sessions.
        states = (list(zip(*(list(map(c.__getitem__, free)) for c in self.columns))) if self.columns
                  else [()] * len(free))
        found = list(zip(self._first[done].tolist(), ends[~grown].tolist(), keys, states))
        if self._more:   # some key has several sessions: unmap them one by one
            for slot in free:
                self._release(slot)
        else:
            self._release_all(free, keys, done)
        return found

    def _release_all(self, slots: list[int], keys: list[Any], where: np.ndarray) -> None:
        """`_release` of each slot, whose keys (`keys`) have no other session."""
        slot_of = self._slot
        for key in keys:
            del slot_of[key]
        for c in [self._keys, *self.columns]:
            for slot in slots:
                c[slot] = None
        self._used[where] = False
        self._free.extend(slots)
        self.n_states -= len(slots)

    def load(self, key: Any, sessions: list[list[Any]]) -> None:
        """Put back a key's sessions ([first, last, states] each) from a checkpoint."""
        for first, last, states in sessions:
            self._open(key, first, last, states)


def _first(session: tuple[int, int, Any]) -> int:
    return session[0]
