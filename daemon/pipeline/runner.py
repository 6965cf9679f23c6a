"""The single consumer and sole writer of state: queues → lateness → dedupe → windows → analysers → commit."""

from __future__ import annotations

import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import anyio
import orjson
import pyarrow as pa
from anyio.abc import TaskGroup

from daemon.clock import Clock
from daemon.config import Config
from daemon.errors import StoreError
from daemon.events import Anomaly, EventBatch, Reason, Rejected, WindowResult
from daemon.pipeline.dedupe import DedupeFilter
from daemon.pipeline.foldlog import FoldLog, replay
from daemon.pipeline.latest import latest_entries
from daemon.pipeline.queue import BoundedQueue, Delivery, Wakeup
from daemon.pipeline.stateparts import StateParts
from daemon.pipeline.watermark import NO_WATERMARK, Watermarks
from daemon.replica import protocol as replica_protocol
from daemon.replica.compact import RECS_LOG_MAX_BYTES, fold_log_into_records
from daemon.runtime.cpu import CpuLane
from daemon.runtime.memory import Trimmer
from daemon.stores.checkpoint import Checkpoint, CommitUnit
from daemon.stores import schemas, segments
from daemon import jsonbytes

if TYPE_CHECKING:
    from daemon.replica.feed import ReplicaFeed

FOLD_EVENTS = 4096        # events taken from the queues for one fold in the worker thread
COMMIT_RETRY_S = 5.0
SLOW_COMMIT_S = 1.5       # the "slow_commit" fault (tests): every commit takes this much longer
SLOW_FLUSH_S = 3.0        # the "slow_flush" fault (tests): every all-table flush takes this much longer
EARLY_COMMIT_S = 0.05     # the least time between commits when windows closed
# The most window rows one commit carries (a window end with more is split by key: windows/closing.py;
# only many sessions ending at the same ms can exceed it). Each row's per-key
# latest-window entries (index and count) land on random LMDB leaf pages, each a 4 KiB page the write
# transaction holds in memory: measured before those entries shrank (lmdb_state._apply_latest), 20k
# rows kept a mass close's transaction near 160 MiB where 50k took ~400 MiB (in process, the final close
# of 360k rows: VmHWM 789 -> 669 MiB, 8.7 -> 8.0 s).
CLOSE_CHUNK_ROWS = 20_000
# malloc_trim (runtime/memory.py) after a commit of this many window rows or a full state write, and
# once the pipeline has been quiet this long after a commit: what the commits between free (flushes,
# answers) was otherwise kept until the next large one (the memory benchmark's plateau: ~70 MiB in one
# of two runs). Not every few seconds under load: the pages given back would be faulted in again at once
# (a 2 s period was tried first; the latency scenario's p99 moved between 185 and 269 ms on either side,
# so its cost was not measurable there: this policy is the one that does not pay it).
TRIM_AFTER_ROWS = 10_000
TRIM_AFTER_ANSWER_BYTES = 8 << 20   # ... or that stored this much of the recommendations process's answers
TRIM_IDLE_S = 1.0
FINAL_ANSWER_WAIT_S = 5.0  # at shutdown, for the recommendations process's answer to the last cut


@dataclass(frozen=True, slots=True)
class PipelineStats:
    watermark_ms: int
    batches: int
    events_in: int
    accepted: int
    duplicates: int
    late: int
    rejected_by_reason: dict[str, int]
    process_seconds: float
    commits: int
    last_commit_ms: int
    pending_acks: int
    commit_failed: str
    pending_work: bool      # uncommitted changes, queued deliveries or a commit in flight
    flush_running_ms: int   # how long the background all-table flush has run (0: none under way)
    closed_through_ms: int  # windows ending at or before this are emitted; < watermark_ms mid chunked close


@dataclass(slots=True)
class _Pending:
    """What the next commit must make durable."""

    positions: dict[str, bytes] = field(default_factory=dict)
    acks: list[anyio.Event] = field(default_factory=list)
    events: list[pa.RecordBatch] = field(default_factory=list)   # accepted events, already Arrow rows
    cuts: tuple[int, int] = (0, 0)   # (state, recommender) cut of the unit built from this, once committed
    window_rows: int = 0             # rows of `windows`, counted when the unit is built (which empties it)
    rejected: list[Rejected] = field(default_factory=list)
    windows: dict[str, list[WindowResult]] = field(default_factory=dict)
    anomalies: list[Anomaly] = field(default_factory=list)
    dirty: bool = False


def _flushed_each_commit(table: str) -> bool:
    """Closed windows and anomalies reach their Arrow files at every commit; the other tables every
    flush_interval."""
    return table.startswith("windows/") or table == "anomalies"


class Runner:
    """Consumes every source queue in one task; commits on `storage.commit_interval`."""

    def __init__(self, cfg: Config, checkpoint: Checkpoint, parts: StateParts, queues: dict[str, BoundedQueue],
                 wakeup: Wakeup, clock: Clock, log: Any, faults: frozenset[str] = frozenset(),
                 cpu: CpuLane | None = None, close_chunk_rows: int = CLOSE_CHUNK_ROWS,
                 state_spill_bytes: int = segments.SPILL_BYTES) -> None:
        self.cfg = cfg
        self.checkpoint = checkpoint
        self.parts = parts
        self.queues = queues
        self.wakeup = wakeup
        self.clock = clock
        self.log = log
        self.watermarks = Watermarks(list(queues), allowed_lateness_ms=cfg.pipeline.allowed_lateness_ms,
                                     idle_timeout_ms=cfg.pipeline.idle_timeout_ms, start_mono=None)   # see source_started
        self.dedupe = DedupeFilter(cfg.pipeline.dedupe_ttl_ms, cfg.pipeline.dedupe_max_ids)
        self._pending = _Pending()
        self._reasons: Counter[str] = Counter()
        self._batches = self._events_in = self._accepted = self._duplicates = self._late = 0
        self._process_s = 0.0
        self._commits = 0
        self._last_commit_mono = clock.monotonic()
        self._last_flush_mono = clock.monotonic()
        self._commit_failed = ""
        self.positions: dict[str, bytes] = {}   # newest position per source folded into state (committed or not)
        self.fold_log = FoldLog()               # steps folded since the last full state write
        self._to_observe: list[EventBatch] = []  # accepted, not yet observed (fold observes once)
        self._last_state_mono = clock.monotonic()
        self.state_due = False                  # set by a reload: the next commit writes the full state
        self._state_next = False                # a full state write waits for the rows its commit deferred
        self._committing = False
        self._background: TaskGroup | None = None   # while `run` runs: where the all-table flush goes
        self._flushing = False                        # that flush is under way
        self._flush_started_mono = 0.0
        self._turn = 0
        self.cpu = cpu if cpu is not None else CpuLane()
        # Held while a fold runs and while a commit builds its unit (both in the CPU lane's worker
        # thread): a reload changes the parts and queues only between the two.
        self.state_lock = anyio.Lock()
        self._faults = faults     # injected failures for tests, e.g. {"wedge_commit"}
        # The recommendations process (daemon/replica/), set by the app when [recommendations] is on.
        self.replica: ReplicaFeed | None = None
        self._replica_steps: list[bytes] = []    # fold steps for it, framed by `fold`
        self._replica_frames: list[bytes] = []
        # Cuts (commit seqs): the stored state of the parts covers the fold-log entries up to
        # `_state_cut`, the recommender's (written from its CHANGES answers) those up to `_recs_cut`.
        # Entries up to the lower of the two are deleted (see _build_unit).
        self._state_cut = self._recs_cut = 0
        self._recs_log: deque[tuple[int, int]] = deque()   # (seq, bytes) of stored entries after _recs_cut
        self.recs_log_max_bytes = RECS_LOG_MAX_BYTES
        self.recs_compactions = 0
        # Held from building a commit's unit until it is written: the recommender's sync reads the
        # store and the fold log with no commit half done.
        self.commit_lock = anyio.Lock()
        self.alerts: Any = None   # an AlertSender, set by the app when any aggregation has an alert_url
        self.close_chunk_rows = close_chunk_rows
        self.state_spill_bytes = state_spill_bytes   # a full state write's builders hold about this much
        self._closed_ms = NO_WATERMARK   # the watermark of the last close (see `advance`)
        self.closing = False             # a chunked close is under way: fold and commit again at once
        self.trimmer = Trimmer()         # malloc's free pages back to the kernel (TRIM_AFTER_ROWS)
        self._trim_owed = False          # a commit since the last trim: trim once the pipeline is quiet

    # ---- state ---------------------------------------------------------------------------
    def restore(self) -> dict[str, bytes]:
        """Load the last commit into every part; return the source positions."""
        restored = self.checkpoint.restore()
        raw = restored.meta.get("watermarks")
        if raw:
            self.watermarks.restore(orjson.loads(raw), self.clock.monotonic())
        self.dedupe.restore(restored.dedupe)
        self.parts.restore(restored.state)
        for problem in self.parts.dropped_on_restore:
            self.log.warning("aggregation_state_dropped", reason=problem)
        # A data_dir from before the cuts existed holds only entries after its state: cuts 0.
        cuts = orjson.loads(restored.meta["cuts"]) if "cuts" in restored.meta else {}
        self._state_cut, self._recs_cut = int(cuts.get("state", 0)), int(cuts.get("recs", 0))
        self._recs_log = deque((seq, len(blob)) for seq, blob in restored.fold_log if seq > self._recs_cut)
        entries = [(seq, blob) for seq, blob in restored.fold_log if seq > self._state_cut]
        if entries:
            t0 = time.perf_counter()
            steps = events = 0
            for i, (seq, blob) in enumerate(entries):
                try:
                    n_steps, n_events = replay(blob, self.parts)
                except (ValueError, TypeError, KeyError, IndexError) as exc:
                    raise StoreError(f"fold log entry {i + 1} of {len(entries)} (commit {seq}) cannot be replayed: "
                                     f"{type(exc).__name__}: {exc}") from exc
                steps, events = steps + n_steps, events + n_events
            self.log.info("fold_log_replayed", commits=len(entries), steps=steps, events=events,
                          ms=round((time.perf_counter() - t0) * 1000, 1))
        self.positions = dict(restored.positions)
        self.log.info("state_restored", commit_seq=restored.commit_seq, watermark_ms=self.watermarks.value,
                      dedupe_ids=self.dedupe.statistics().ids, positions=sorted(restored.positions))
        return dict(restored.positions)

    # ---- the hot path ------------------------------------------------------------------
    def process(self, d: Delivery, *, observe: bool = True) -> None:
        """Fold one delivery into state; sync on purpose (no await per batch, single writer).

        With observe=False the accepted events wait for `_observe_accepted` (see `fold`)."""
        t0 = time.perf_counter()
        p = self._pending
        if d.rejected:
            p.rejected.extend(d.rejected)
            for r in d.rejected:
                self._reasons[r.reason.value] += 1
        batch = d.batch
        n = len(batch)
        if n:
            self._batches += 1
            self._events_in += n
            wm = self.watermarks.value
            ts = batch.ts
            on_time: range | list[int] = range(n)
            if min(ts) < wm:   # one C pass for the usual batch with nothing late
                on_time = [i for i in range(n) if ts[i] >= wm]
                self._reject_late(batch, on_time, d.received_ms)
            kept = self.dedupe.keep(batch.event_id, ts, on_time)
            self._duplicates += len(on_time) - len(kept)
            if kept:
                good = batch if len(kept) == n else batch.take(kept)
                self._accepted += len(good)
                self._to_observe.append(good)
                if self.cfg.storage.archive_events:
                    # Made now, while the batch's str objects are still in the CPU's caches: at the
                    # commit, ~16k events later, the same conversion took ~2x as long (benchmarks/lane.py).
                    p.events.append(schemas.events_to_record_batch(good, d.received_ms))
                self.watermarks.observe(batch.source, max(good.ts), self.clock.monotonic())
        if d.position is not None:
            p.positions[batch.source] = d.position
            self.positions[batch.source] = d.position
        if d.acked is not None:
            p.acks.append(d.acked)
        p.dirty = True
        if observe:
            self._observe_accepted()
        self._process_s += time.perf_counter() - t0

    def _reject_late(self, batch: EventBatch, on_time: list[int], received_ms: int) -> None:
        keep = set(on_time)
        late = [i for i in range(len(batch)) if i not in keep]
        wm = self.watermarks.value
        rows = batch.take(late).rows()
        for row in rows:
            self._pending.rejected.append(Rejected(Reason.LATE, f"ts {row['ts']} < watermark {wm}",
                                                   jsonbytes.dumps(row), batch.source, received_ms))
        self._late += len(late)
        self._reasons[Reason.LATE.value] += len(late)

    def advance(self) -> None:
        """Move the watermark and close the windows it passed, at most `close_chunk_rows` of them.

        A jump past more windows than that closes in chunks, one per fold, at intermediate
        watermarks (`StateParts.close_point`), each committed before the next is emitted (`run`),
        so memory holds one chunk and the early rows are readable early; one window end with more
        rows than a chunk (a hopping count per item) goes a key range per chunk. Each chunk's close is a
        step of the fold log like any other, so a replay repeats it. The pipeline's watermark
        (lateness, /stats `watermark_ms`) is the target from the start; `closed_through_ms`
        trails it until the last chunk.
        """
        now_mono = self.clock.monotonic()
        for name, q in self.queues.items():
            if q.depth:   # a backlog is not silence: a source with queued events is never idle
                self.watermarks.touch(name, now_mono)
        target = self.watermarks.advance(self.clock.now_ms(), now_mono)
        pending = sum(len(r) for r in self._pending.windows.values())
        point = self.parts.close_point(target, self.close_chunk_rows - pending)
        self.closing = point.watermark_ms != target or point.limit is not None
        if pending and pending + point.rows > self.close_chunk_rows:
            # The uncommitted rows and this chunk would overflow one commit: `run` commits first.
            self.closing = True
        else:
            self._close(point.watermark_ms, point.limit)
        self.dedupe.expire(target)

    def _close(self, wm: int, limit: int | None = None) -> None:
        closed, anomalies = self.parts.close(wm, limit)
        self.fold_log.close(wm, limit)
        # A close with a limit may stop inside the window end wm (ClosePoint.limit): emitted through wm - 1.
        self._closed_ms = max(self._closed_ms, wm if limit is None else wm - 1)
        if closed or anomalies:
            for name, results in closed.items():
                self._pending.windows.setdefault(name, []).extend(results)
            self._pending.anomalies.extend(anomalies)
            self._pending.dirty = True

    # ---- the loop ----------------------------------------------------------------------
    def next_delivery(self) -> Delivery | None:
        """The next delivery, taking the queues in turn.

        Taking turns matters: a busy source must not starve another, or the starved one would look
        idle, the watermark would jump past its backlog and that backlog would be dead-lettered late.
        """
        queues = list(self.queues.values())
        for i in range(len(queues)):
            q = queues[(self._turn + i) % len(queues)]
            d = q.get_nowait()
            if d is not None:
                self._turn = (self._turn + i + 1) % len(queues)
                return d
        return None

    def take_deliveries(self, max_events: int = FOLD_EVENTS) -> list[Delivery]:
        """Deliveries for one fold: in turns (see next_delivery), up to ~max_events events."""
        out: list[Delivery] = []
        n = 0
        while n < max_events and (d := self.next_delivery()) is not None:
            out.append(d)
            n += len(d.batch)
        return out

    def fold(self, deliveries: list[Delivery]) -> None:
        """Fold deliveries into state, then move the watermark and close what it passed (sync).

        The accepted events of all deliveries are observed as one batch: grouping amortises better
        (a user's events of several pages fold as one run of their session). Late checks and dedupe
        still go delivery by delivery; the watermark only moves in `advance`, after them.
        """
        for d in deliveries:
            self.process(d, observe=False)
        t0 = time.perf_counter()
        self._observe_accepted()
        self._process_s += time.perf_counter() - t0
        self.advance()
        if self._replica_steps:
            # Sent by fold_off_loop, in this order (daemon/replica/feed.py), with the read clock
            # GET /recommendations uses after this fold.
            steps, self._replica_steps = self._replica_steps, []
            wm = self.watermarks
            now_ms = None if wm.value == NO_WATERMARK else wm.value_or_now(0)
            self._replica_frames.extend(replica_protocol.observe_frame(step, now_ms) for step in steps)

    def _observe_accepted(self) -> None:
        batches, self._to_observe = self._to_observe, []
        if not batches:
            return
        batch = batches[0]
        if len(batches) > 1:
            batch = EventBatch(batch.source)
            for b in batches:
                batch.extend(b)
        self.parts.observe(batch)
        steps = self.fold_log.observe(batch)
        if self.replica is not None and self.replica.live:
            self._replica_steps += steps   # framed by `fold` once the watermark has moved

    async def fold_off_loop(self, deliveries: list[Delivery]) -> None:
        """`fold` in a worker thread, so the event loop keeps answering HTTP meanwhile.

        The GIL still makes it one core: the loop thread gets it back within the switch interval
        (cli.py sets 0.5 ms; see runtime/cpu.py) instead of waiting for a whole fold. Readers of the
        parts on the loop meanwhile (GET /recommendations, /trending, /stats) must tolerate concurrent
        updates (analyzers/reads.py).
        The position and ack of each delivery go with its last event: a commit never happens mid-fold.
        """
        async with self.state_lock:   # a reload waits for a fold boundary
            await self.cpu.run(self.fold, deliveries)
            # Still under the lock: the process gets folds in order, after the state it was synced to.
            frames, self._replica_frames = self._replica_frames, []
            if self.replica is not None:
                for frame in frames:
                    self.replica.send(frame)
        if self.replica is not None:
            await self.replica.room()   # back-pressure: a process behind by its whole outbox slows the folds

    async def sync_recommender(self, begin: Callable[[Iterator[bytes]], None]) -> None:
        """Bring a (re)starting recommendations process to the current state: `begin` gets the frames
        of the stored records, the committed fold-log entries after their cut and the steps folded
        since the last commit, fixed under both locks (no fold and no commit half done), and every
        fold after it is sent. The frames are read from the store lazily, as the pipe takes them: the
        recommender's stored records stay as they are until this process answers its first cut,
        which comes after all of them."""
        async with self.commit_lock, self.state_lock:
            cut, upto = self._recs_cut, self.checkpoint.next_seq - 1
            pending = self.fold_log.peek()
            self._replica_steps.clear()
            self._replica_frames.clear()
            begin(self._recommender_sync_frames(cut, upto, pending))

    def _recommender_sync_frames(self, cut: int, upto: int, pending: bytes | None) -> Iterator[bytes]:
        yield from replica_protocol.records_frames(self._stored_recommender())
        read_through = cut
        while entries := self.checkpoint.fold_log_after(read_through, upto, max_entries=64):
            for read_through, blob in entries:
                yield replica_protocol.frame(replica_protocol.LOG, blob)
        if pending is not None:
            yield replica_protocol.frame(replica_protocol.LOG, pending)

    def _stored_recommender(self) -> Iterator[tuple[bytes, bytes]]:
        """The stored `recs` records, read in chunks (each in its own short read transaction)."""
        after: bytes | None = None
        while True:
            items, after = self.checkpoint.scan_chunk("recs", after, replica_protocol.RECORDS_CHUNK_BYTES)
            yield from items
            if after is None:
                return

    @property
    def _alert_urls(self) -> dict[str, str]:
        return {a.name: a.anomaly.alert_url for a in self.cfg.aggregations if a.anomaly and a.anomaly.alert_url}

    def source_started(self, name: str) -> None:
        """A source's task began: from now on its silence counts toward idle_timeout."""
        self.watermarks.started(name, self.clock.monotonic())

    def add_source(self, name: str) -> None:
        """Start consuming a source added by a reload (its queue is already in `queues`)."""
        self.watermarks.add_source(name, self.clock.monotonic())

    def remove_source(self, name: str) -> None:
        """Fold what a removed source's queue still holds, then stop waiting for its watermark."""
        q = self.queues.get(name)
        while q is not None and (d := q.get_nowait()) is not None:
            self.process(d)   # sync on purpose: the queue must be empty before it is forgotten
        self.watermarks.remove_source(name)

    def queued(self) -> int:
        return sum(q.statistics().deliveries for q in self.queues.values())

    async def run(self, stop: anyio.Event) -> None:
        """Consume until `stop` is set and the queues are empty, then commit and flush everything."""
        async with anyio.create_task_group() as background:
            self._background = background
            try:
                await self._run(stop)
            finally:
                self._background = None

    async def _run(self, stop: anyio.Event) -> None:
        interval = self.cfg.storage.commit_interval_s
        while True:
            deliveries = self.take_deliveries()
            if not deliveries and stop.is_set() and not self.closing:
                break
            await self.fold_off_loop(deliveries)
            if self.closing and self._pending.windows:
                await self.commit()   # a chunk is durable (and readable) before the next is emitted
                continue
            await self._maybe_commit(interval)
            if not deliveries and not self.closing:
                await self.wakeup.wait(min(interval, 0.05) if self._pending.dirty else interval)
        await self.fold_off_loop([])
        while self.closing:   # the last fold may have started a chunked close: finish it, chunk by chunk
            await self.commit()
            await self.fold_off_loop([])
        await self.commit(flush_all=True)
        replica = self.replica
        if replica is not None and replica.live and self._recs_cut < self._state_cut:
            # Store the recommender's answer to the last cut too, so the next start replays nothing.
            if await replica.wait_answer(self._state_cut, FINAL_ANSWER_WAIT_S):
                await self.commit()

    async def _maybe_commit(self, interval_s: float) -> None:
        """Commit once `commit_interval` has passed, or sooner (EARLY_COMMIT_S) when windows have
        closed or a durable-ack client waits: commit_interval bounds the wait, and neither a closed
        window's row nor a waiting POST should sit it out (ingest without the recommender: 55k ->
        102k events/s, its posters no longer idle for most of each interval)."""
        if not self._pending.dirty:
            if self.checkpoint.latest_pending:   # a quiet pipeline: no next commit to index the last close's rows
                await self.cpu.run(self.checkpoint.apply_pending_latest)
            elif self._flush_due() and self._flush_owed():
                await self._flush_all_tables()
            elif self._trim_owed and self.clock.monotonic() - self._last_commit_mono >= TRIM_IDLE_S:
                await self._trim()
            return
        since = self.clock.monotonic() - self._last_commit_mono
        if since >= interval_s or ((self._pending.windows or self._pending.acks)
                                   and since >= min(EARLY_COMMIT_S, interval_s)):
            await self.commit()

    def _flush_due(self) -> bool:
        return (self.clock.monotonic() - self._last_flush_mono >= self.cfg.storage.flush_interval_s
                and not self._flushing)

    async def _flush_all_tables(self) -> None:
        """Write every table's outbox rows to Arrow files: while `run` runs, in the background.

        Why: every flush_interval it writes 5 s of archived events (and dead letters), 100-230 ms of
        Arrow writing and fsync at 20k events/s, most of it outside the GIL. Awaited, that stopped the
        folds for as long (a window closing then waited it out). In the background the folds and the
        commits go on (the checkpoint serialises flushes per table, not with commits; a closed
        window's flush waits only while this one writes that window's table). One at a time: a flush
        takes the rows committed while it runs too, and the final commit's flush (`flush_all`) waits
        for it table by table and writes the rest."""
        self._last_flush_mono = self.clock.monotonic()
        if self._background is None:   # commit() outside `run`
            await anyio.to_thread.run_sync(self._flush_every_table)
            return
        self._flushing = True
        self._flush_started_mono = self.clock.monotonic()
        self._background.start_soon(self._flush_in_background)

    async def _flush_in_background(self) -> None:
        try:
            await anyio.to_thread.run_sync(self._flush_every_table)
        finally:
            self._flushing = False

    def _flush_every_table(self) -> None:
        if "slow_flush" in self._faults:
            time.sleep(SLOW_FLUSH_S)   # a slow disk, in the flush's own thread
        if "wedge_flush" in self._faults:
            threading.Event().wait()   # a disk that never answers: the flush never ends
        self.checkpoint.flush(None)

    def _flush_owed(self) -> bool:
        """Rows that only the all-table flush writes (events, dead letters) wait in the outbox."""
        return any(not _flushed_each_commit(t) for t in self.checkpoint.pending_rows())

    async def commit(self, *, flush_all: bool = False) -> None:
        """One durable commit of everything since the last one, then the Arrow flush it allows."""
        self._committing = True     # read by statistics().pending_work: a hung commit is pending work
        started = self.clock.monotonic()
        try:
            large = await self._commit(flush_all=flush_all)
            if self._state_next:
                large = await self._commit(flush_all=False) or large   # the full state write the rows went ahead of
            self._trim_owed = True
            if large:
                # The unit's buffers are freed now; glibc would keep their pages (runtime/memory.py).
                await self._trim()
        finally:
            self._committing = False
            # No source could deliver while the runner committed (queues full, ingest clients waiting
            # for their durable ack): that time is not silence, or a long state write would make a
            # busy source look idle and the watermark jump past everything it still has to send.
            self.watermarks.pause(started, self.clock.monotonic())

    async def _trim(self) -> None:
        self._trim_owed = False
        await anyio.to_thread.run_sync(self.trimmer.trim)

    async def _commit(self, *, flush_all: bool) -> bool:
        """Build, write and flush one unit; True if it was large (a full state write, or many rows)."""
        if "wedge_commit" in self._faults:
            self.log.warning("fault_injected", fault="wedge_commit")
            await anyio.sleep_forever()
        if "slow_commit" in self._faults:
            await anyio.sleep(SLOW_COMMIT_S)
        t0 = time.perf_counter()
        async with self.commit_lock:
            async with self.state_lock:
                # Building the unit (serialising changed state) and writing it run in the CPU lane too:
                # the runner waits here, and HTTP handlers only read the parts meanwhile. The pending
                # work and the fold log are taken together, under the lock, so they always match.
                # The process's answers are taken here, on the event loop that appends them, not in
                # the worker thread: an answer appended to the list just taken would be lost.
                answers = self.replica.take_changes() if self.replica is not None else []
                unit, p = await self.cpu.run(self._build_unit, flush_all, answers)
                t_built = time.perf_counter()
                # The unit holds the answers' segments now, and the commit gives each back once written.
                answered = sum(len(x) for _, payloads in answers for x in payloads)
                del answers
                if unit.state_complete and self.replica is not None:
                    # After this unit's last fold step, before the next fold's (we hold the state lock).
                    self.replica.send(replica_protocol.cut_frame(p.cuts[0]))
            while True:
                try:
                    seq = await self.cpu.run(self.checkpoint.commit, unit)
                    break
                except StoreError as exc:
                    # Never drop what is not committed: the runner waits (queues fill, sources feel
                    # back-pressure, /readyz says why) and retries the same unit.
                    self._commit_failed = f"{type(exc).__name__}: {exc}"
                    self.log.error("commit_failed", error=self._commit_failed, retry_in_s=COMMIT_RETRY_S)
                    await anyio.sleep(COMMIT_RETRY_S)
            t_written = time.perf_counter()
            self._state_cut, self._recs_cut = p.cuts
            if unit.fold_log is not None and self.replica is not None:
                self._recs_log.append((seq, len(unit.fold_log)))
            while self._recs_log and self._recs_log[0][0] <= self._recs_cut:
                self._recs_log.popleft()
        if self._commit_failed:
            self.log.warning("commit_recovered", after_error=self._commit_failed)
        self._commit_failed = ""
        self._commits += 1
        if unit.state_complete:
            self._last_state_mono = self.clock.monotonic()
        self._last_commit_mono = self.clock.monotonic()
        for ack in p.acks:
            ack.set()
        for a in p.anomalies:
            self.log.warning("anomaly_detected", aggregation=a.aggregation, metric=a.metric, key=list(a.key),
                             state=a.state, direction=a.direction, window_start=a.window_start_ms,
                             window_end=a.window_end_ms, value=a.value, expected=a.expected, score=round(a.score, 3))
            url = self._alert_urls.get(a.aggregation)
            if url and self.alerts is not None:
                self.alerts.submit(url, anomaly_json(a))
        # Closed windows and anomalies are flushed now (their rows are readable once in their files);
        # the other tables (events, dead letters) every flush_interval, in the background
        # (`_flush_all_tables`), or all of them now at the last commit.
        tables = None if flush_all else [t for t in unit.rows if _flushed_each_commit(t)]
        t_flush = time.perf_counter()
        if tables is None or tables:
            await anyio.to_thread.run_sync(self.checkpoint.flush, tables)
        if not flush_all and self._flush_due() and self._flush_owed():
            await self._flush_all_tables()
        windows = p.window_rows
        t_end = time.perf_counter()
        self.log.debug("committed", seq=seq, ms=round((t_end - t0) * 1000, 2),
                       build_ms=round((t_built - t0) * 1000, 2), write_ms=round((t_written - t_built) * 1000, 2),
                       flush_ms=round((t_end - t_flush) * 1000, 2), store_ms=self.checkpoint.last_commit_parts_ms,
                       events=sum(len(b) for b in p.events), windows=windows, state=unit.state_complete)
        return unit.state_complete or windows >= TRIM_AFTER_ROWS or answered >= TRIM_AFTER_ANSWER_BYTES

    def _build_unit(self, flush_all: bool, answers: list[tuple[int, list[bytes]]] | None = None) -> tuple[CommitUnit, _Pending]:
        """This commit's unit and the pending work it covers. Every `state_interval` (and at the
        last commit, and after a reload) it carries every state change since the last full write;
        the other commits carry the fold steps (pipeline/foldlog.py).

        With the recommendations process, every commit logs its fold steps (the process needs them
        until it has answered a later cut), and the recommender's state is written from its CHANGES
        answers, with its own cut. The fold log keeps the entries after the lower of the two cuts.
        """
        seq = self.checkpoint.next_seq
        p, self._pending = self._pending, _Pending()
        full_state = flush_all or self.state_due or self._state_next or (
            self.clock.monotonic() - self._last_state_mono >= self.cfg.storage.state_interval_s)
        if full_state and not flush_all and not self._state_next and (p.windows or p.anomalies):
            # Closed windows go first, in a fold-log commit, and are flushed; the full state write
            # (serialising every changed state: 0.1-0.6 s under load) follows as the next commit.
            # A row closed just when a state write fell due used to wait for it (close→readable p99).
            full_state, self._state_next = False, True
        if full_state:
            self.state_due = self._state_next = False
            # The builders write their segments ahead of this commit as they fill (Checkpoint.stage).
            state = self.parts.take_changes(packed=True, spill=self.checkpoint.stage,
                                            spill_bytes=self.state_spill_bytes)
            if self.replica is None:
                fold_log = None
                self.fold_log.clear()
            else:
                fold_log = self.fold_log.take()
        else:
            state, fold_log = {}, self.fold_log.take()
        state_cut = seq if full_state else self._state_cut
        recs_cut = state_cut
        state_segments: dict[str, list[list[tuple[int, bytes | memoryview]]]] = {}
        if self.replica is not None:
            recs_cut = self._recs_cut
            # The answers' records are stored as the process packed them, per bucket (no objects).
            packed: list[list[tuple[int, bytes | memoryview]]] = []
            for cut, payloads in answers or ():
                if cut > recs_cut:   # answers come in cut order; an older one is already stored
                    for payload in payloads:   # its parts, then the rest (protocol.PART)
                        packed.append(replica_protocol.change_segments(replica_protocol.read_changes(payload)[1]))
                    recs_cut = cut
            if (not self.replica.live and self._recs_log
                    and sum(n for _, n in self._recs_log) > self.recs_log_max_bytes):
                changes, recs_cut = self._compact_recommender()
                packed = []
                if changes:
                    state["recs"] = changes
            if packed:
                state_segments["recs"] = packed
        p.cuts = (state_cut, recs_cut)
        drop_through = min(state_cut, recs_cut)
        dedupe_ids, dedupe_expiry_ms, expire_before = self.dedupe.take_changes()
        rows: dict[str, Any] = {}
        latest: list[tuple[str, bytes, int, bytes]] = []
        for name, results in p.windows.items():
            if not results:
                continue
            agg = self.parts.aggregation(name)
            rows[f"windows/{name}"] = schemas.windows_to_record_batch(results, agg.schema)
            latest.extend(latest_entries(name, results, agg.cfg.group_by))
            p.window_rows += len(results)
        # The rows are Arrow columns and latest records now: the result objects go before the write (a
        # hopping close of ~150k items held them through it, ~0.5 KiB each, with the rest of the commit).
        p.windows = {}
        if p.events:
            rows["events"] = pa.Table.from_batches(p.events)
        if p.rejected:
            rows["deadletter"] = schemas.rejected_to_record_batch(p.rejected)
        if p.anomalies:
            rows["anomalies"] = schemas.anomalies_to_record_batch(p.anomalies)
        unit = CommitUnit(
            state=state,
            fold_log=fold_log,
            fold_log_drop_through=drop_through if drop_through > min(self._state_cut, self._recs_cut) else None,
            state_complete=full_state,
            state_segments=state_segments,
            positions=p.positions,
            dedupe_ids=dedupe_ids,
            dedupe_expiry_ms=dedupe_expiry_ms,
            dedupe_expire_before_ms=expire_before,
            meta={"watermarks": jsonbytes.dumps(self.watermarks.snapshot()),
                  "cuts": orjson.dumps({"state": state_cut, "recs": recs_cut})},
            rows=rows,
            latest=latest,
            keep_latest={a.name: a.keep_latest for a in self.cfg.aggregations},
            keep_latest_rows={a.name: a.keep_latest_rows for a in self.cfg.aggregations},
            # The latest-window index (GET /windows) is updated by the next write, after this
            # commit's rows are flushed: ~10 us per closed row (random keys) off close->readable.
            defer_latest=not flush_all,
            anomalies=[(a.window_end_ms, anomaly_json(a)) for a in p.anomalies],
        )
        return unit, p

    def _compact_recommender(self) -> tuple[dict[bytes, bytes | None], int]:
        """No recommendations process has answered a cut while the log grew past its bound: fold the
        stored entries into the stored records here (replica/compact.py). Returns (changes, cut)."""
        assert self.cfg.recommendations is not None
        t0 = time.perf_counter()
        cut = self._recs_log[-1][0]
        logged = sum(n for _, n in self._recs_log)
        blobs = [blob for _, blob in self.checkpoint.fold_log_after(self._recs_cut)]
        changes, events = fold_log_into_records(self.cfg.recommendations, self.checkpoint.scan("recs"), blobs)
        self.recs_compactions += 1
        self.log.warning("recommender_compacted", reason="no recommendations process answered while the fold log grew",
                         log_bytes=logged, entries=len(blobs), events=events, records=len(changes), through_seq=cut,
                         ms=round((time.perf_counter() - t0) * 1000, 1))
        return changes, cut

    def recommender_log(self) -> dict[str, int]:
        """The fold log kept for the recommender (bytes and entries after its cut), its compactions."""
        return {"log_bytes": sum(n for _, n in self._recs_log), "log_entries": len(self._recs_log),
                "recs_cut": self._recs_cut, "compactions": self.recs_compactions}

    def statistics(self) -> PipelineStats:
        return PipelineStats(
            watermark_ms=self.watermarks.value, batches=self._batches, events_in=self._events_in,
            accepted=self._accepted, duplicates=self._duplicates, late=self._late,
            rejected_by_reason=dict(self._reasons), process_seconds=self._process_s, commits=self._commits,
            last_commit_ms=round((self.clock.monotonic() - self._last_commit_mono) * 1000),
            pending_acks=len(self._pending.acks), commit_failed=self._commit_failed,
            pending_work=self._pending.dirty or self._committing or self.queued() > 0 or self.closing,
            flush_running_ms=round((self.clock.monotonic() - self._flush_started_mono) * 1000) if self._flushing else 0,
            closed_through_ms=self._closed_ms,
        )


def anomaly_json(a: Anomaly) -> bytes:
    """An anomaly as the JSON row GET /anomalies answers."""
    return jsonbytes.dumps({
        "aggregation": a.aggregation, "metric": a.metric, "key": list(a.key), "window_start": a.window_start_ms,
        "window_end": a.window_end_ms, "value": a.value, "expected": a.expected, "score": a.score,
        "direction": a.direction, "state": a.state, "detected_at": a.detected_ms,
    })
