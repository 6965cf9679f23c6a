"""Metric states of one aggregation: add batches, close windows by watermark, checkpoint changes.

A batch is grouped column-wise (windows/grouping.py) per (pane, key) or per (key, session run);
states are found per group in the aggregation's store (windows/panes.py for tumbling and hopping,
windows/session.py for sessions), and each metric then folds all of the batch's groups in one call.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

import numpy as np
import orjson

from daemon.aggconfig import AggregationConfig
from daemon.events import EventBatch, WindowResult
from daemon.metrics import MetricSet
from daemon.windows import build_windower, statedump
from daemon.windows.fixed import Hopping
from daemon.windows.grouping import pane_groups, session_runs
from daemon.windows.panes import PaneStore, key_order
from daemon.windows.session import Session, SessionStore
from daemon.windows.where import compile_where
from daemon import jsonbytes

META_KEY = b"m"


@dataclass(frozen=True, slots=True, kw_only=True)
class AggregatorStats:
    """A snapshot of one aggregator."""

    open_windows: int      # open states: (key, pane) for tumbling/hopping (pane = window when tumbling), sessions
    emitted_windows: int
    events_folded: int
    keys: int
    overflowed: int        # events not folded because max_keys open states were reached
    late: int              # events whose windows had all closed already (the caller should prevent it)
    watermark_ms: int | None


class Aggregator:
    """The windows and metric states of one `[[aggregations]]` entry (pure; no I/O).

    Events given to `add` are deduplicated and not late (ts >= the last close watermark).
    """

    def __init__(self, config: AggregationConfig) -> None:
        self.config = config
        self._select = compile_where(config.where) if config.where else None
        self._metrics = MetricSet(config.metrics)
        windower = build_windower(config.window)
        self._session = windower if isinstance(windower, Session) else None
        self._fixed: Hopping | None = windower if isinstance(windower, Hopping) else None
        self._max_states = config.max_keys
        # The states of a one-field group_by are keyed by the bare value (a tuple per open state costs
        # 56 bytes, and hashes and compares ~2x slower than a str); results and stored entries carry lists.
        self._bare_keys = len(config.group_by) == 1
        self._signature = {"window": [config.window.type, config.window.size_ms, config.window.slide_ms,
                                      config.window.gap_ms],
                           "group_by": list(config.group_by), "metrics": self._metrics.signature()}
        self._reset()

    def _reset(self) -> None:
        # Tumbling and hopping windows keep one state per (pane, key) (windows/panes.py), sessions
        # one per session (windows/session.py); exactly one of the two stores exists.
        self._panes = (PaneStore(self._fixed, self._metrics.empty, bare=self._bare_keys)
                       if self._fixed is not None else None)
        self._store = (SessionStore(self._session, self._metrics.empty, self._metrics.merge)
                       if self._session is not None else None)
        self._touched: set[Any] = set()   # session store keys
        self._emitted = self._folded = self._overflowed = self._late = 0
        self._watermark_ms: int | None = None
        self._partial: tuple[int, Any] | None = None   # (window end, last store key) a close stopped at
        self._counters_dumped: tuple[Any, ...] | None = None

    # -- adding -------------------------------------------------------------------------------

    def add(self, batch: EventBatch, overflow: list[int] | None = None) -> int:
        """Fold a batch; return how many events were folded.

        Rows that would need a new state beyond `max_keys` are skipped, counted, and their
        indices appended to `overflow` when given (for the dead letters).
        """
        if not len(batch):
            return 0
        rows = self._select(batch) if self._select is not None else None
        if rows is not None and not rows:
            return 0
        if self._fixed is not None:
            folded = self._add_fixed(batch, rows, overflow)
        else:
            folded = self._add_sessions(batch, rows, overflow)
        self._folded += folded
        return folded

    def _add_fixed(self, batch: EventBatch, rows: list[int] | None, overflow: list[int] | None) -> int:
        """Find every (pane, key) group's states with list comprehensions, open the missing ones in
        group order while max_keys allows (as a group-by-group loop would), fold all groups at once."""
        fixed = self._fixed
        assert fixed is not None
        key_columns = [batch.column(f) for f in self.config.group_by]
        g = pane_groups(batch.ts, rows, key_columns, fixed.slide_ms, bare=self._bare_keys)
        wm = self._watermark_ms
        if wm is not None:   # drop the groups of panes whose every window was emitted
            late = g.lead + fixed.size_ms <= wm
            if late.any():
                self._late += int((g.hi[late] - g.lo[late]).sum())
                g = g._replace(lo=g.lo[~late], hi=g.hi[~late], key_code=g.key_code[~late], lead=g.lead[~late])
        group_rows, lo, hi = g.rows.tolist(), g.lo.tolist(), g.hi.tolist()
        leads, keys = g.lead.tolist(), list(map(g.keys.__getitem__, g.key_code.tolist()))
        panes = self._panes
        assert panes is not None
        states = panes.find(leads, keys)
        missing = [i for i, s in enumerate(states) if s is None]
        room = max(0, self._max_states - panes.n_states)
        for i in missing[:room]:
            states[i] = panes.open(leads[i], keys[i])
        if len(missing) > room:
            lost = missing[room:]
            self._overflowed += sum(hi[i] - lo[i] for i in lost)
            if overflow is not None:
                overflow.extend(r for i in lost for r in group_rows[lo[i]:hi[i]])
            kept = [i for i, s in enumerate(states) if s is not None]
            states, leads, keys = [states[i] for i in kept], [leads[i] for i in kept], [keys[i] for i in kept]
            lo, hi = [lo[i] for i in kept], [hi[i] for i in kept]
        panes.touch(leads, keys)
        if states:
            metrics = self._metrics
            values = metrics.gather([batch.column(f) for f in metrics.fields], group_rows)
            metrics.fold_groups(states, lo, hi, group_rows, values)
        return sum(hi) - sum(lo)

    def _add_sessions(self, batch: EventBatch, rows: list[int] | None, overflow: list[int] | None) -> int:
        """Place each (key, run) in its session, then fold every run of the batch at once.

        Runs that extend their key's one open session are placed together (`extend_touching`);
        the rest one by one, in order. The folds wait until every run is placed, except for a key
        with several runs in the batch: placing its later run may merge the session an earlier run
        went to into another (freeing its slot), so such a run is folded as soon as it is placed.
        """
        store = self._store
        assert store is not None
        gap = store.windower.gap_ms
        key_columns = [batch.column(f) for f in self.config.group_by]
        g = session_runs(batch.ts, rows, key_columns, gap, bare=self._bare_keys)
        keys, wm, limit = g.keys, self._watermark_ms, self._max_states
        run_keys = [keys[c] for c in g.key_code.tolist()]
        many = np.bincount(g.key_code)[g.key_code] > 1
        placed, placed_slots = store.extend_touching(run_keys, g.lead, g.last, ~many)
        fold_slots = placed_slots.tolist()
        group_rows = g.rows.tolist()
        los, his = g.lo.tolist(), g.hi.tolist()
        fold_lo, fold_hi = g.lo[placed].tolist(), g.hi[placed].tolist()
        folded = int((g.hi[placed] - g.lo[placed]).sum())
        metrics = self._metrics
        values = metrics.gather([batch.column(f) for f in metrics.fields], group_rows)
        rest = np.ones(len(run_keys), dtype=bool)
        rest[placed] = False
        for r in np.flatnonzero(rest).tolist():
            key, first, last, lo, hi = run_keys[r], int(g.lead[r]), int(g.last[r]), los[r], his[r]
            fresh = wm is None or last + gap > wm
            slot = store.place(key, first, last, may_open=fresh and store.n_states < limit)
            if slot is None:
                if fresh:
                    self._overflowed += hi - lo
                    if overflow is not None:
                        overflow.extend(group_rows[lo:hi])
                else:
                    self._late += hi - lo
                continue
            if many[r]:
                metrics.fold_slots(store.columns, [slot], [lo], [hi], group_rows, values)
            else:
                fold_slots.append(slot)
                fold_lo.append(lo)
                fold_hi.append(hi)
            folded += hi - lo
        metrics.fold_slots(store.columns, fold_slots, fold_lo, fold_hi, group_rows, values)
        self._touched.update(keys)
        return folded

    # -- closing ------------------------------------------------------------------------------

    def close(self, watermark_ms: int, max_rows: int | None = None) -> list[WindowResult]:
        """Emit and free every window that ends at or before the watermark, once, in
        (window_end, window_start, key) order.

        With `max_rows`, tumbling and hopping windows emit at most that many, stopping inside a
        window end if need be (`partial_end`); the next close at or past that end goes on from the
        next key. Sessions emit all of theirs (their ends are rarely shared)."""
        before = self._watermark_ms
        if before is not None and watermark_ms <= before:
            return []
        if self._store is not None:
            self._watermark_ms = watermark_ms
            found = self._store.close(watermark_ms)
            if not found:
                return []
            self._touched.update(f[2] for f in found)
            bare = self._bare_keys   # a bare value sorts as its 1-tuple would: it becomes one below
            try:   # plain tuple order equals key_order whenever it does not raise
                found.sort(key=itemgetter(1, 0, 2))
            except TypeError:   # keys mix None/str/numbers at some position
                found.sort(key=lambda r: (r[1], r[0], key_order((r[2],) if bare else r[2])))
            out = self._results(found, self._metrics.results_rows([f[3] for f in found]))
        else:
            assert self._panes is not None
            closed = self._panes.close(before, watermark_ms, max_rows, self._partial)
            self._watermark_ms, self._partial = closed.through, closed.cursor
            if not closed.windows:   # most closes (one per fold) pass no window end
                return []
            out = self._results(closed.windows, self._metrics.results_rows(closed.states, closed.bounds))
        self._emitted += len(out)
        return out

    def _results(self, windows: list[Any], metrics: list[dict[str, Any]]) -> list[WindowResult]:
        """A WindowResult per (start, end, store key, ...) and its metrics; `_make` is a tuple's
        constructor (no Python call per row)."""
        make, name = WindowResult._make, self.config.name
        if self._bare_keys:
            return [make((name, w[0], w[1], (w[2],), values)) for w, values in zip(windows, metrics)]
        return [make((name, w[0], w[1], w[2], values)) for w, values in zip(windows, metrics)]

    @property
    def closed_through_ms(self) -> int | None:
        """Every window ending at or before this is emitted (the last close's watermark, or less when
        it stopped at its `max_rows`)."""
        return self._watermark_ms

    @property
    def partial_end(self) -> int | None:
        """The window end the last close stopped inside (its rows are emitted up to a key), if any."""
        return self._partial[0] if self._partial is not None else None

    @property
    def splittable(self) -> bool:
        """Whether a close can emit part of one window end (`close`'s max_rows): tumbling and hopping."""
        return self._panes is not None

    def due_ends(self, watermark_ms: int) -> np.ndarray:
        """One window end per row `close(watermark_ms)` would emit at most (unsorted; an upper
        bound: hopping windows count a key once per pane, sessions count stale queue entries).

        Cheap next to the close itself; the runner uses it to cut a large close into chunks."""
        before = self._watermark_ms
        if before is not None and watermark_ms <= before:
            return np.zeros(0, dtype=np.int64)
        if self._store is not None:
            pieces = self._store.due_ends(watermark_ms)
            ends = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int64)
            # Only ends after the last close count: closing at one of them must make progress.
            return ends if before is None else ends[ends > before]
        assert self._panes is not None
        return self._panes.due_ends(before, watermark_ms)

    # -- observing and checkpointing ----------------------------------------------------------

    def statistics(self) -> AggregatorStats:
        """A snapshot of the counters."""
        store: PaneStore | SessionStore | None = self._store if self._store is not None else self._panes
        assert store is not None
        keys, open_windows = store.n_keys, store.n_states
        return AggregatorStats(open_windows=open_windows, emitted_windows=self._emitted,
                               events_folded=self._folded, keys=keys, overflowed=self._overflowed,
                               late=self._late, watermark_ms=self._watermark_ms)

    def take_changes(self) -> dict[bytes, bytes | None]:
        """Every state entry changed since the last call: key -> dumped bytes, or None if gone.

        Fixed windows: one entry per (key, pane), b"w" + orjson [pane_start_ms, [key...]]
        (a pane is [start, start + slide); tumbling: the window itself);
        sessions: one per group key, b"s" + orjson [key...]; identities over 480 bytes become
        prefix + b"#" + blake2b-160. Values carry their own identity. b"m" holds the counters.
        """
        out: dict[bytes, bytes | None] = {}
        self.take_changes_into(out.__setitem__)
        return out

    def take_changes_into(self, put: Callable[[bytes, bytes | None], None]) -> None:
        """`take_changes`, each entry handed to `put(key, value)` as it is made (a full state write
        packs them at once: stores/segments.py SegmentBuilder)."""
        dumps = self._metrics.dumps
        if self._panes is not None:
            slide = self._panes.windower.slide_ms
            for start, keys in self._panes.take_touched().items():
                keys = list(keys)
                statedump.pane_records(put, start, start + slide, keys, self._panes.pane_states(start, keys),
                                       dumps, self._bare_keys)
        elif self._touched:
            store = self._store
            assert store is not None
            keys, slots, firsts, lasts, rest = store.single_sessions(list(self._touched))
            statedump.session_records(put, keys, slots, firsts, lasts, store.columns, dumps, self._bare_keys)
            for key in rest:   # none open (a tombstone), or several
                put(statedump.entry_key(b"s", statedump.key_json(key, self._bare_keys)), self._dump_sessions(key))
        self._touched.clear()
        counters = (self._emitted, self._folded, self._overflowed, self._late, self._watermark_ms, self._partial)
        if counters != self._counters_dumped:
            partial = self._partial
            put(META_KEY, jsonbytes.dumps({"emitted": self._emitted, "folded": self._folded,
                                           "overflowed": self._overflowed, "late": self._late,
                                           "watermark_ms": self._watermark_ms,
                                           "partial": None if partial is None else [partial[0], self._key_list(partial[1])],
                                           **self._signature}))
            self._counters_dumped = counters

    def _key_list(self, key: Any) -> list[Any]:
        """A store key as the key's list of group-by values."""
        return [key] if self._bare_keys else list(key)

    def _store_key(self, key_list: list[Any]) -> Any:
        """A list of group-by values (stored, or a result's) as the store's key."""
        return key_list[0] if self._bare_keys else tuple(key_list)

    def _dump_sessions(self, key: Any) -> bytes | None:
        """The record of a key with no open session (None) or several (one open session each is
        statedump.session_records' bulk loop)."""
        sessions = self._store.sessions_of(key)  # type: ignore[union-attr]
        if not sessions:
            return None
        blobs = [self._metrics.dump(s[2]) for s in sessions]
        head = [self._key_list(key), [[s[0], s[1], len(b)] for s, b in zip(sessions, blobs)]]
        return b"".join([orjson.dumps(head), b"\n", *blobs])

    def restore(self, items: Iterable[tuple[bytes, bytes]]) -> None:
        """Rebuild the open state from every live entry of `take_changes` (replacing any state).

        ValueError when the entries were written for another window, grouping or metric set.
        """
        self._reset()
        entries = [(bytes(k), bytes(v)) for k, v in items]
        for k, v in entries:
            if k == META_KEY:
                self._restore_meta(orjson.loads(v))
        for k, v in entries:
            head, _, body = v.partition(b"\n")
            if k[:1] == b"w":
                start, _end, key_list = orjson.loads(head)
                self._panes.open(start, self._store_key(key_list), self._metrics.load(body))  # type: ignore[union-attr]
            elif k[:1] == b"s":
                self._restore_sessions(head, body)

    def _restore_meta(self, meta: dict[str, Any]) -> None:
        for field, mine in self._signature.items():
            if meta.get(field) != mine:
                raise ValueError(f"aggregation {self.config.name!r}: stored state has another {field}")
        self._emitted, self._folded = meta["emitted"], meta["folded"]
        self._overflowed, self._late = meta["overflowed"], meta["late"]
        self._watermark_ms = meta["watermark_ms"]
        partial = meta.get("partial")   # (absent before window ends were closed in parts)
        self._partial = None if partial is None else (partial[0], self._store_key(partial[1]))
        self._counters_dumped = (self._emitted, self._folded, self._overflowed, self._late, self._watermark_ms,
                                 self._partial)

    def _restore_sessions(self, head: bytes, body: bytes) -> None:
        key_list, spans = orjson.loads(head)
        sessions, pos = [], 0
        for first, last, n in spans:
            sessions.append([first, last, self._metrics.load(body[pos:pos + n])])
            pos += n
        self._store.load(self._store_key(key_list), sessions)  # type: ignore[union-attr]
