"""Open states of tumbling and hopping windows: one per (pane, key), merged per window at close (pure).

A pane is [start, start + slide); a window merges size/slide consecutive panes when it closes
(tumbling: the pane is the window), so an event is folded once however many windows hold it.
The store keeps the states and what changed; the aggregator decides what to fold and when to close.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Iterable, Sequence
from itertools import accumulate, repeat
from operator import itemgetter
from typing import Any, NamedTuple

import numpy as np

from daemon.metrics.sharing import shared, shared_key
from daemon.windows.fixed import Hopping

Key = Any   # a tuple of the group-by values, or with `bare` keys (one group-by field) the value itself


def key_order(key: tuple[Any, ...]) -> tuple[tuple[int, Any], ...]:
    """A sort key for group keys mixing None, numbers and strings."""
    return tuple((0, 0) if v is None else (1, v) if isinstance(v, (int, float)) else (2, str(v)) for v in key)


def bare_key_order(value: Any) -> tuple[tuple[int, Any], ...]:
    """key_order of a bare key: the order of its 1-tuple."""
    return key_order((value,))


def sorted_keys(keys: Iterable[Key], order: Callable[[Key], Any] = key_order) -> list[Key]:
    """Keys in `order` (key_order, or bare_key_order for bare keys)."""
    out = list(keys)
    try:   # plain order equals key_order whenever it does not raise (a bare value's, its 1-tuple's)
        out.sort()
    except TypeError:   # keys mix None/str/numbers at some position
        out.sort(key=order)
    return out


def by_key(states: dict[Key, Any], order: Callable[[Key], Any] = key_order) -> list[tuple[Key, Any]]:
    """A dict's (key, value) items in `order`."""
    items = list(states.items())
    try:   # plain order equals key_order whenever it does not raise
        items.sort(key=itemgetter(0))
    except TypeError:   # keys mix None/str/numbers at some position
        items.sort(key=lambda item: order(item[0]))
    return items


class PaneStore:
    """The (pane, key) states of one tumbling or hopping aggregation; `empty` makes a pane's states.

    Keys are tuples of the group-by values, or with `bare` (a one-field group_by) the values
    themselves, as sessions are keyed: a str key hashes once per string (cached) and compares
    without a tuple's extra level, and no tuple is kept per state (~56 bytes).
    """

    def __init__(self, windower: Hopping, empty: Callable[[], Any], bare: bool = False) -> None:
        self.windower = windower
        self._empty = empty
        self._share = shared if bare else shared_key   # one copy of a value for all its states (metrics/sharing.py)
        self._order = bare_key_order if bare else key_order
        self._panes: dict[int, dict[Key, Any]] = {}   # pane start -> key -> states
        self._key_panes: dict[Key, int] = {}           # key -> open panes
        self._touched: dict[int, set[Key]] = {}        # changed since `take_touched`: pane start -> keys
        self._split: tuple[int, list[Key]] | None = None   # a window end closed in part: its sorted keys
        self.n_states = 0

    @property
    def n_keys(self) -> int:
        """Keys with at least one open pane."""
        return len(self._key_panes)

    def find(self, starts: Sequence[int], keys: Sequence[Key]) -> list[Any]:
        """The states of each (pane start, key), None where there are none yet."""
        none: dict[Key, Any] = {}
        if starts and starts[0] == starts[-1] and starts.count(starts[0]) == len(starts):
            return self.pane_states(starts[0], keys)   # the usual batch: one pane
        get_pane = self._panes.get
        return [get_pane(p, none).get(k) for p, k in zip(starts, keys)]

    def pane_states(self, start: int, keys: Sequence[Key]) -> list[Any]:
        """The states of each key in pane `start`, None where there are none."""
        return list(map(self._panes.get(start, {}).get, keys))

    def open(self, start: int, key: Key, states: Any = None) -> Any:
        """New states for (pane start, key) (fresh ones, or `states` when restoring)."""
        states = self._empty() if states is None else states
        if self._split is not None and start < self._split[0]:
            self._split = None   # (never while closing: a window the watermark passed takes no events)
        key = self._share(key)
        self._panes.setdefault(start, {})[key] = states
        self._key_panes[key] = self._key_panes.get(key, 0) + 1
        self.n_states += 1
        return states

    def touch(self, starts: Sequence[int], keys: Sequence[Key]) -> None:
        """Mark (pane start, key) pairs changed (a batch spans one or two panes: no pair tuples)."""
        touched = self._touched
        if starts and starts[0] == starts[-1] and starts.count(starts[0]) == len(starts):
            touched.setdefault(starts[0], set()).update(keys)   # the usual batch: one pane
            return
        for start, key in zip(starts, keys):
            got = touched.get(start)
            if got is None:
                touched[start] = {key}
            else:
                got.add(key)

    def take_touched(self) -> dict[int, set[Key]]:
        """Pane start -> keys changed (or freed) since the last call."""
        touched, self._touched = self._touched, {}
        return touched

    def _ends(self, pane: int) -> range:
        size, slide = self.windower.size_ms, self.windower.slide_ms
        return range(pane + slide, pane + size + 1, slide)

    def due_ends(self, before_ms: int | None, watermark_ms: int) -> np.ndarray:
        """One window end per row `close(before_ms, watermark_ms)` would emit at most (unsorted; an
        upper bound: a hopping window counts a key once per pane)."""
        slide = self.windower.slide_ms
        rows: dict[int, int] = {}
        for pane, keys in self._panes.items():
            if pane + slide > watermark_ms:
                continue   # its first window ends after the watermark
            for end in self._ends(pane):
                if end <= watermark_ms and (before_ms is None or end > before_ms):
                    rows[end] = rows.get(end, 0) + len(keys)
        return np.repeat(np.fromiter(rows, dtype=np.int64, count=len(rows)),
                         np.fromiter(rows.values(), dtype=np.int64, count=len(rows)))

    def close(self, before_ms: int | None, watermark_ms: int, max_rows: int | None = None,
              after: tuple[int, Key] | None = None) -> Closed:
        """Windows ending in (before_ms, watermark_ms] as (start, end, key), by end then key_order, with
        the states of their panes: window w's are states[bounds[w]:bounds[w + 1]], oldest pane first
        (the states are merged only into results, by the caller: one sketch union per window, not one
        per pane); then free the panes whose last window has ended.

        With `max_rows`, at most that many windows: the close stops inside a window end, and `after`
        = (that end, its last key emitted) resumes it at the next key (the panes of a window whose end
        the watermark passed take no more events, so its keys stay the same between the two).
        """
        size, slide = self.windower.size_ms, self.windower.slide_ms
        ends = sorted({e for p in self._panes for e in self._ends(p)
                       if e <= watermark_ms and (before_ms is None or e > before_ms)})
        windows: list[tuple[int, int, Key]] = []   # ends ascending, then keys: no sort key per row
        states: list[Any] = []
        counts: list[int] = []
        budget = max_rows
        through, cursor = watermark_ms, None
        for end in ends:
            if budget is not None and budget <= 0:
                through = end - 1   # every window ending before this one is emitted
                break
            start = end - size
            panes = [pane for pane in map(self._panes.get, range(start, end, slide)) if pane]
            cached = self._split
            if cached is not None and cached[0] == end:
                keys = cached[1]
            elif len(panes) == 1:   # tumbling, or a window with one pane open
                keys = list(map(itemgetter(0), by_key(panes[0], self._order)))
            else:
                keys = sorted_keys(set().union(*panes), self._order)
            lo = 0
            if after is not None and after[0] == end:
                lo = bisect_right(keys, self._order(after[1]), key=self._order)
            hi = len(keys) if budget is None else min(len(keys), lo + budget)
            if hi < len(keys):   # stopped inside this end: the rest of its keys go next time
                self._split = (end, keys)
                through, cursor = end - 1, (end, keys[hi - 1])
            else:
                self._split = None
            take = keys if lo == 0 and hi == len(keys) else keys[lo:hi]
            if len(panes) == 1:
                states += map(panes[0].__getitem__, take)
                counts += repeat(1, len(take))
            else:
                # Every pane's states of every key, by C-level lookups pane by pane (None: not there).
                rows = list(zip(*(list(map(pane.get, take)) for pane in panes)))
                states += [s for row in rows for s in row if s is not None]
                counts += [len(panes) - row.count(None) for row in rows]
            windows += zip(repeat(start), repeat(end), take)
            if budget is not None:
                budget -= len(take)
            if cursor is not None:
                break
        for pane in [p for p in self._panes if p + size <= through]:
            gone = self._panes.pop(pane)
            self._touched.setdefault(pane, set()).update(gone)
            for key in gone:
                self.n_states -= 1
                left = self._key_panes[key] - 1
                if left:
                    self._key_panes[key] = left
                else:
                    del self._key_panes[key]
        return Closed(windows, states, [0, *accumulate(counts)], through, cursor)


class Closed(NamedTuple):
    """What `PaneStore.close` emitted, and how far: every window ending at or before `through` is
    emitted, and `cursor` = (end, key) when the close stopped inside that later window end."""

    windows: list[tuple[int, int, Key]]
    states: list[Any]
    bounds: list[int]
    through: int
    cursor: tuple[int, Key] | None
