"""The commit protocol: state, positions, dedupe ids, meta and outbox rows in ONE LMDB write
transaction; then an idempotent flush of the outbox to Arrow files; recovery at open.

Reading the files (pyarrow 26, duckdb 2.0.1; DuckDB has no built-in Arrow IPC *file* reader:
`read_arrow(...)` / `FROM 'x.arrow'` need the community `nanoarrow` extension, an online install):
    dset = pyarrow.dataset.dataset(data_dir / "windows" / agg, format="ipc", partitioning="hive")
    duckdb.sql("SELECT * FROM dset")          # replacement scan of the local variable, or
    duckdb.connect().register("w", dset)      # then SELECT ... FROM w; `date` comes in as a string
"""

from __future__ import annotations

import datetime as dt
import os
import threading
import time
from collections.abc import Collection, Mapping
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from daemon.config import RetentionConfig, StorageConfig
from daemon.errors import StoreError
from daemon.stores import lmdb_state as layout
from daemon.stores.arrow_files import ArrowFiles, part_seq
from daemon.stores.base import CommitUnit, Restored, StoreStats, frozen_map
from daemon.stores.compaction import Compactor
from daemon.stores.lmdb_state import LmdbState, Txn
from daemon.stores.retention import day_end_ms, expired_days, table_kind
from daemon.stores.schemas import time_column

__all__ = ["CRASH_POINTS", "Checkpoint", "CommitUnit", "CrashPoints", "Restored"]

CRASH_POINTS = ("after_lmdb_commit", "mid_arrow_write", "before_arrow_rename",
                "after_arrow_rename", "before_outbox_delete", "after_state_staged")   # of the commit protocol
# of compact_archive (the second only when files came after its listing: Compactor.swap links them)
COMPACTION_CRASH_POINTS = ("after_compaction_staged", "after_compaction_linked", "after_compaction_swap")
MAX_FILE_ROWS = 1_000_000
STREAM_DROP_BYTES = 8 * 2**20   # a flush gives back the map pages it read this often (_stream_chunk)
STAGE_ANSWER_BYTES = 1 << 20    # an answer part at least this big is written ahead of its commit (_stage_answers)
UPKEEP_S = 0.02               # after a commit, merge due state chains for about this long (_upkeep)
# LmdbState.recycle gives LMDB's page pool and the pages read through its map back: after commits
# that wrote this many latest-window rows (a mass close puts 3 records per row), once this many
# bytes were read through the map (state segment merges, outbox flushes), and after a flush when
# this long has passed since the last time.
RECYCLE_AFTER_ROWS = 100_000
RECYCLE_AFTER_BYTES = 64 * 2**20
RECYCLE_INTERVAL_S = 30.0
# A past day's partition is merged (compact_archive) once it ended this long ago, if it has at least
# COMPACT_MIN_FILES small files (Compactor.small_file_bytes): closed sessions reach their file at
# every commit, up to 5 files a second, 432k a day. A day not past yet (today's) is merged as it fills
# (Compactor.live_min_files).
COMPACT_AFTER_MS = 3_600_000
COMPACT_MIN_FILES = 32
COMPACT_PARTITIONS = 8          # at most this many merged per pass


@dataclass(slots=True)
class CrashPoints:
    """Test hook: `os._exit(137)` at the n-th pass through point `at` (STOREPULSE_CRASH_AT[_AFTER_N])."""

    at: str = ""
    after_n: int = 1
    seen: int = 0

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> CrashPoints:
        at = environ.get("STOREPULSE_CRASH_AT", "")
        if at and at not in CRASH_POINTS + COMPACTION_CRASH_POINTS:
            raise ValueError(f"STOREPULSE_CRASH_AT={at!r}: one of {', '.join(CRASH_POINTS + COMPACTION_CRASH_POINTS)}")
        return cls(at=at, after_n=int(environ.get("STOREPULSE_CRASH_AFTER_N", "1")))

    def hit(self, point: str) -> None:
        if point == self.at:
            self.seen += 1
            if self.seen >= self.after_n:
                os._exit(137)


@dataclass(frozen=True, slots=True)
class DeletedPartition:
    """One `date=` folder deleted by `[storage.retention]`."""

    table: str
    date: str
    files: int
    bytes: int


@dataclass(frozen=True, slots=True)
class CompactedPartition:
    """One `date=` folder whose files were merged."""

    table: str
    date: str
    files_before: int
    files_after: int
    bytes: int
    error: str = ""     # the merge failed (an unreadable file): the folder is as it was


class Checkpoint:
    """The durable store. Commits come from one thread at a time; flushes may run beside a commit and
    beside each other (the runner's all-table flush runs in the background while the commits of
    closed windows flush theirs), and readers beside all of them."""

    def __init__(self, state: LmdbState, files: ArrowFiles, crash: CrashPoints,
                 max_file_rows: int, log: Any) -> None:
        self._db = state
        self._files = files
        self.compactor = Compactor(files)
        self._crash = crash
        self._max_file_rows = max_file_rows
        self._log = log
        self._write_lock = threading.Lock()     # commits (and stage, recycle, close) never interleave
        # Two flushes of one table never interleave (they would write the same outbox entries' files);
        # a flush holds the write lock only to recycle: its Arrow writing and fsyncs (100-300 ms for
        # 5 s of archived events) hold up neither a commit nor another table's flush.
        self._table_locks: dict[str, threading.Lock] = {}   # (made under _count_lock)
        self._count_lock = threading.Lock()     # guards _pending for statistics readers
        self._pending: dict[str, int] = {}
        self._seq = 0
        self._commits = 0
        self._commit_ms_total = 0.0
        self._last_commit_ms = 0.0
        self._staged_bytes = 0      # state segments written ahead of their commit (stage)
        self._flushes = 0
        self._last_flush_ms = 0.0
        self._rows_since_recycle = self._read_since_recycle = 0
        self._last_recycle = time.monotonic()
        self._compact_due = False   # chains still due after the last commit's upkeep (or its failure): merged after the next
        self.last_commit_parts_ms: dict[str, float] = {}
        self.latest_pending = False   # the last commit deferred its latest-window entries (CommitUnit.defer_latest)

    @classmethod
    def open(cls, cfg: StorageConfig, *, environ: Mapping[str, str] | None = None,
             log: Any = None, max_file_rows: int = MAX_FILE_ROWS) -> Checkpoint:
        """Lock data_dir, open LMDB, remove leftover .tmp files, flush any pending outbox."""
        crash = CrashPoints.from_env(os.environ if environ is None else environ)
        data_dir = Path(cfg.data_dir)
        state = LmdbState.open(data_dir / "state", lock_path=data_dir / "LOCK", db_names=layout.DBS,
                               map_size_initial_bytes=cfg.map_size_initial_bytes,
                               map_size_max_bytes=cfg.map_size_max_bytes, log=log)
        try:
            files = ArrowFiles(data_dir, crash=crash.hit, compression=cfg.compression)
            removed = files.cleanup_tmp()
            cp = cls(state, files, crash, max_file_rows, log)
            cp._load()
            recovered = cp.flush()
        except BaseException:
            state.close()
            raise
        if log is not None:
            log.info("store_opened", data_dir=str(data_dir), commit_seq=cp._seq,
                     tmp_removed=removed, recovered_rows=recovered)
        return cp

    def _load(self) -> None:
        def check(txn: Txn) -> tuple[int, bytes | None, int, int, int, dict[str, int]]:
            fmt = txn.get("sys", layout.FORMAT_KEY)
            seq = layout.get_u64(txn, "sys", layout.SEQ_KEY)
            moved = counts = 0
            rows: dict[str, int] = {}
            dropped, _ = layout.drop_staged(txn)   # written ahead of a commit that never came
            if fmt == b"2":
                moved = layout.migrate_state(txn, seq)
                layout.migrate_latest(txn)
            if fmt in (b"2", b"3"):
                counts = layout.migrate_latest_counts(txn)
            elif fmt is not None and fmt != layout.FORMAT and fmt not in layout.OLD_FORMATS:
                raise StoreError(f"data_dir has store format {fmt!r}, this build reads {layout.FORMAT!r}")
            if fmt is not None and fmt != layout.FORMAT:
                rows = layout.count_latest_rows(txn)
            if fmt != layout.FORMAT:
                txn.put("sys", layout.FORMAT_KEY, layout.FORMAT)
            layout.apply_pending_latest(txn)   # the last commit's, if the next write never came
            return seq, fmt, moved, counts, dropped, rows

        self._seq, fmt, moved, counts, dropped, rows = self._db.write(check)
        if dropped and self._log is not None:
            self._log.info("staged_state_dropped", segments=dropped, commit_seq=self._seq)
        if fmt in layout.OLD_FORMATS and self._log is not None:
            self._log.info("store_format_migrated", from_format=fmt.decode(), to_format=layout.FORMAT.decode(),
                           state_records=moved, latest_counts=counts, latest_rows=rows)
        with self._db.reading() as txn:
            for key, value in txn.scan("outbox"):
                table = layout.outbox_table(key)
                self._pending[table] = self._pending.get(table, 0) + layout.U64.unpack_from(value)[0]

    def restore(self) -> Restored:
        """The state of the last commit (commit seq 0 and empty maps on a new data_dir)."""
        with self._db.reading() as txn:
            state = layout.read_state(txn)
            return Restored(
                commit_seq=layout.get_u64(txn, "sys", layout.SEQ_KEY),
                meta={k.decode(): v for k, v in txn.scan("meta")},
                positions={k.decode(): v for k, v in txn.scan("positions")},
                state=state,
                dedupe=layout.read_dedupe(txn),
                fold_log=[(layout.U64.unpack(k)[0], bytes(v)) for k, v in txn.scan("foldlog")],
            )

    @property
    def next_seq(self) -> int:
        """The commit seq the next successful `commit` gets (commits are the runner's, one at a time)."""
        return self._seq + 1

    def fold_log_after(self, seq: int, upto: int | None = None, max_entries: int | None = None) -> list[tuple[int, bytes]]:
        """(seq, entry) of the stored fold-log entries of the commits after `seq` (up to `upto`, at
        most `max_entries`), oldest first."""
        end = layout.U64.pack(upto + 1) if upto is not None else None
        out: list[tuple[int, bytes]] = []
        with self._db.reading() as txn:
            for k, v in txn.scan("foldlog", start=layout.U64.pack(seq + 1), end=end):
                out.append((layout.U64.unpack(k)[0], bytes(v)))
                if max_entries is not None and len(out) >= max_entries:
                    break
        return out

    def scan_chunk(self, namespace: str, after: bytes | None, max_bytes: int) -> tuple[list[tuple[bytes, bytes]], bytes | None]:
        """Committed (key, value) pairs of a namespace, about `max_bytes` per chunk (whole buckets, in
        no particular key order), from the chunk `after` names (None: the first); and the token to pass
        for the next chunk (None: that was the last). Each chunk is read in its own transaction."""
        with self._db.reading() as txn:
            return layout.scan_state_chunk(txn, namespace, after, max_bytes)

    def stage(self, namespace: str, rnd: int, pieces: list[tuple[int, bytes]]) -> bool:
        """Write a round of a namespace's state segments ahead of the next commit, in a transaction of
        their own (a SegmentBuilder's `spill`: a full state write then holds ~SPILL_BYTES of them at
        a time, not all, and its commit's transaction ~that much, not a copy of all). Until that commit
        they are no part of the state: readers skip them, and the next open removes them if it never
        came. False if the write failed (logged): the builder keeps them for the commit itself."""
        with self._write_lock:
            seq = self._seq + 1
            try:
                n = self._db.write(lambda txn: layout.stage_segments(txn, namespace, seq, rnd, pieces))
            except StoreError as exc:
                if self._log is not None:
                    self._log.warning("state_stage_failed", namespace=namespace, error=str(exc))
                return False
            self._staged_bytes += n
        self._crash.hit("after_state_staged")
        return True

    def _stage_answers(self, unit: CommitUnit, seq: int) -> None:
        """Write the unit's packed answers (the recommendations process's, one per PART frame) ahead of
        its commit, each in a transaction of its own, and mark each done in the unit (lmdb_state.Staged)
        so that a retry of the unit does not write it again: the commit's transaction then holds none of
        them (an answer of ~40 MiB was that much more of the daemon's heap while it committed). Only
        for a namespace without changes of its own in the unit (its answers then number from 1), and
        parts of STAGE_ANSWER_BYTES or more (a transaction of its own costs its fsyncs)."""
        for ns, answers in unit.state_segments.items():
            if ns in unit.state:
                continue
            for sub, answer in enumerate(answers, 1):
                if isinstance(answer, layout.Staged) or sum(len(blob) for _, blob in answer) < STAGE_ANSWER_BYTES:
                    continue
                self._staged_bytes += self._db.write(lambda txn: layout.stage_segments(txn, ns, seq, sub, answer))
                answers[sub - 1] = layout.Staged((b, len(blob)) for b, blob in answer)
                self._crash.hit("after_state_staged")

    def commit(self, unit: CommitUnit) -> int:
        """Write `unit` in one LMDB transaction; return its commit seq. Rows wait in the outbox."""
        t0 = time.perf_counter()
        outbox = []
        for table, rows in unit.rows.items():
            _check_table(table, rows)
            if rows.num_rows:
                outbox.append((table, rows.num_rows, _encode_rows(rows)))
        with self._write_lock:
            seq = self._seq + 1
            self._stage_answers(unit, seq)
            t_staged = time.perf_counter()
            more = self._db.write(lambda txn: layout.apply_commit(txn, unit, seq, outbox))   # buckets due
            t_applied = time.perf_counter()
            self._seq = seq
            self.latest_pending = unit.defer_latest and bool(unit.latest)   # (the write applied earlier ones)
            with self._count_lock:
                for table, n, _ in outbox:
                    self._pending[table] = self._pending.get(table, 0) + n
            try:
                self._upkeep(more, len(unit.latest))
            except StoreError as exc:
                # The commit is durable: what follows it is upkeep, done again after the next commit.
                # Failing the commit here would make the runner write the same unit a second time.
                self._compact_due = True
                if self._log is not None:
                    self._log.warning("store_upkeep_failed", error=str(exc))
            t_end = time.perf_counter()
            ms = (t_end - t0) * 1000.0
            # Where the last commit's time went (the runner's debug `committed` line shows it).
            self.last_commit_parts_ms.update(stage=round((t_staged - t0) * 1000, 2),
                                             apply=round((t_applied - t_staged) * 1000, 2),
                                             upkeep=round((t_end - t_applied) * 1000, 2))
            self._commits += 1
            self._commit_ms_total += ms
            self._last_commit_ms = ms
        self._crash.hit("after_lmdb_commit")
        return seq

    def apply_pending_latest(self) -> int:
        """Put the latest-window entries the last commit deferred into the index now (an idle runner
        does, so GET /windows need not wait for a next commit); how many entries that was."""
        with self._write_lock:
            if not self.latest_pending:
                return 0
            n = self._db.write(layout.apply_pending_latest)
            self.latest_pending = False
            return n

    def _upkeep(self, due: int, latest_rows: int) -> None:
        """After a commit: merge state chains that fell due, in transactions of MERGE_BYTES_PER_WRITE
        (compact_segments) for at most UPKEEP_S (at least one; the rest after the next commits), then
        give back the map pages read or recycle the environment. Not all that are due at once: a
        namespace's buckets fall due together, and merging all of them after one commit stopped the
        folds for 150-360 ms (a window closing then waited that out); the chains meanwhile grow by a
        few commits' segments."""
        read, more = 0, bool(due or self._compact_due)
        t0 = time.perf_counter()
        while more:
            merged, n = self._db.write(layout.compact_segments)
            read += n
            more = merged > 0
            if time.perf_counter() - t0 >= UPKEEP_S:
                break
        self._compact_due = more
        self.last_commit_parts_ms["compact"] = round((time.perf_counter() - t0) * 1000, 2)
        self.last_commit_parts_ms["merged_bytes"] = read
        self._rows_since_recycle += latest_rows
        self._read_since_recycle += read
        if self._rows_since_recycle >= RECYCLE_AFTER_ROWS or self._read_since_recycle >= RECYCLE_AFTER_BYTES:
            self._recycle()
        else:
            # What the write read through the map (B-tree and free-list pages, the latest index)
            # stayed in RssFile until a later drop: 60-150 MiB of the memory benchmark's largest
            # samples. Giving it back costs ~20 us, and the pages the next commit needs are
            # faulted in from the page cache again (minor faults).
            self._db.drop_read_pages()

    def _recycle(self) -> None:
        self._db.recycle()
        self._rows_since_recycle = self._read_since_recycle = 0
        self._last_recycle = time.monotonic()

    def flush(self, tables: Collection[str] | None = None) -> int:
        """Move outbox rows of `tables` (default: all) to Arrow files; return rows written.

        Idempotent: a chunk's files are named from its first commit seq and its outbox
        entries are deleted only after the files are durable, so a rerun rewrites the same files.
        """
        t0 = time.perf_counter()
        with self._count_lock:
            targets = [t for t in (self._pending if tables is None else tables) if self._pending.get(t)]
        total = read = 0
        for table in targets:
            with self._table_lock(table):
                rows, n = self._flush_table(table)
            total, read = total + rows, read + n
        if targets:
            with self._write_lock:
                self._flushes += 1
                self._read_since_recycle += read
                if (time.monotonic() - self._last_recycle >= RECYCLE_INTERVAL_S
                        or self._read_since_recycle >= RECYCLE_AFTER_BYTES):
                    self._recycle()
            self._last_flush_ms = (time.perf_counter() - t0) * 1000.0
        return total

    def apply_retention(self, retention: RetentionConfig, now_ms: int,
                        stop: threading.Event | None = None) -> list[DeletedPartition]:
        """Delete the Arrow partitions that `retention` no longer keeps at `now_ms`; what was deleted.

        A folder's files go without a lock; its last files and the folder itself with the table's
        flush lock held, so no file of that table is being written into it meanwhile (a flush of its
        day waits milliseconds, not the deletion of a day's files); rows for an expired date still in
        the outbox are written after and deleted by the next pass. A StoreError stops the pass (what
        it deleted before stays deleted), and so does `stop` (shutdown), within a thousand files."""
        deleted = []
        for table in self._files.tables():
            keep_ms = retention.keep_ms(table_kind(table))
            if keep_ms is None:
                continue
            for day in expired_days(self._files.partition_days(table), now_ms, keep_ms):
                if stop is not None and stop.is_set():
                    return deleted
                files, size = self._files.delete_partition(table, day, self._table_lock(table), stop)
                deleted.append(DeletedPartition(table=table, date=day.isoformat(), files=files, bytes=size))
        return deleted

    def compact_archive(self, now_ms: int, stop: threading.Event | None = None,
                        max_partitions: int = COMPACT_PARTITIONS) -> list[CompactedPartition]:
        """Merge the small files of past days' partitions (ended COMPACT_AFTER_MS before `now_ms`), and of
        the others (today's) once they hold `compactor.live_min_files` of them; what was merged, or
        failed to be (`error`). Stops early, merging nothing more, once `stop` is set.

        The merge is written aside without any lock; the swap happens with the table's flush lock
        held, and only if every file merged has left the outbox (its entries deleted): a flush that
        failed between writing a file and deleting its entries writes that file again, and after a
        swap it would come back beside the merged copy of its rows."""
        done: list[CompactedPartition] = []
        files, compactor = self._files, self.compactor
        for table in files.tables():
            for day in files.partition_days(table):
                least = COMPACT_MIN_FILES if day_end_ms(day) + COMPACT_AFTER_MS <= now_ms else compactor.live_min_files
                if len(done) >= max_partitions or (stop is not None and stop.is_set()) or not compactor.can_exchange:
                    return done
                found = files.partition_files(table, day)
                if sum(size < compactor.small_file_bytes for _, size in found) >= least:
                    merged = self._compact_partition(table, day, found, stop)
                    if merged is not None:
                        done.append(merged)
        return done

    def _compact_partition(self, table: str, day: dt.date, found: list[tuple[str, int]],
                           stop: threading.Event | None) -> CompactedPartition | None:
        """Merge one folder's `found` files; what came of it, None if it was stopped or not swapped."""
        compactor, names = self.compactor, [n for n, _ in found]

        def result(error: str = "") -> CompactedPartition:
            after = self._files.partition_files(table, day)
            return CompactedPartition(table=table, date=day.isoformat(), files_before=len(found),
                                      files_after=len(after), bytes=sum(size for _, size in after), error=error)

        try:
            staged = compactor.stage(table, day, names, stop)
        except StoreError as exc:   # this folder stays as it is; the others are merged
            return result(str(exc))
        if staged is None:
            return None
        self._crash.hit("after_compaction_staged")
        try:
            with self._table_lock(table):
                swapped = (self._outbox_first_seq(table) > part_seq(names[-1])
                           and compactor.swap(table, day, staged, names))
        except StoreError as exc:
            compactor.discard(staged)   # swapped or not, `staged` holds rows the live folder has
            return result(str(exc))
        if swapped:
            self._crash.hit("after_compaction_swap")
        compactor.discard(staged)
        return result() if swapped else None

    def measure_archive(self) -> tuple[int, int]:
        """(Arrow files, their bytes) below data_dir now; /stats shows the last count."""
        return self._files.measure()

    def _outbox_first_seq(self, table: str) -> int:
        """The commit seq of `table`'s oldest outbox entry (a huge number when it has none)."""
        with self._db.reading() as txn:
            for key, _ in txn.scan("outbox", layout.outbox_prefix(table)):
                return layout.U64.unpack_from(key, len(key) - 8)[0]
        return 2**63

    def _table_lock(self, table: str) -> threading.Lock:
        with self._count_lock:
            lock = self._table_locks.get(table)
            if lock is None:
                lock = self._table_locks[table] = threading.Lock()
            return lock

    def _flush_table(self, table: str) -> tuple[int, int]:
        """Flush one table's outbox (its lock held); (rows written, outbox bytes read)."""
        prefix = layout.outbox_prefix(table)
        total = read = 0
        while True:
            with self._db.reading() as txn:
                keys, rows, n = self._stream_chunk(txn, table, prefix)
            read += n
            if not keys:
                return total, read
            self._crash.hit("before_outbox_delete")
            self._db.write(lambda txn: [txn.delete("outbox", k) for k in keys])
            self._db.drop_read_pages()   # deleting them read ~30 MiB of the map (the B-tree and free list)
            with self._count_lock:
                self._pending[table] -= rows
            total += rows

    def _stream_chunk(self, txn: Txn, table: str, prefix: bytes) -> tuple[list[bytes], int, int]:
        """Write the oldest outbox entries of `table` (up to max_file_rows, and those sharing the first
        one's schema: a schema change, e.g. an aggregation reconfigured, starts the next file,
        deterministically) to their files, an entry at a time; (their outbox keys, rows, bytes read).

        One entry is held at a time, and the map pages read are given back every STREAM_DROP_BYTES: a
        flush of 5 s of archived events (~300k rows) read as one chunk held ~45 MiB of copies and as
        much of the map (the memory benchmark's RssFile spikes). Only when no write is under way
        (`wait=False`): waiting for LMDB's write lock inside this read transaction could deadlock with
        a commit that grows or recycles the map, which waits for the readers to finish."""
        keys: list[bytes] = []
        rows = unread = read = 0
        schema = None
        chunk = None
        try:
            for key, value in txn.scan("outbox", prefix):
                part = pa.ipc.open_stream(pa.py_buffer(memoryview(value)[8:])).read_all()
                if chunk is None:
                    chunk, schema = self._files.chunk(table, layout.U64.unpack_from(key, len(key) - 8)[0]), part.schema
                elif not part.schema.equals(schema, check_metadata=True):
                    break
                chunk.write(part)
                keys.append(key)
                rows += part.num_rows
                unread += len(value)
                read += len(value)
                if unread >= STREAM_DROP_BYTES:
                    self._db.drop_read_pages(wait=False)
                    unread = 0
                if rows >= self._max_file_rows:
                    break
            if chunk is not None:
                chunk.close()
        except BaseException:
            if chunk is not None:
                chunk.abort()
            raise
        finally:
            if keys:
                self._db.drop_read_pages(wait=False)
        return keys, rows, read

    def pending_rows(self) -> dict[str, int]:
        """Rows waiting in the outbox per table."""
        with self._count_lock:
            return {t: n for t, n in self._pending.items() if n}

    def get(self, namespace: str, key: bytes) -> bytes | None:
        """One committed state value (None if absent)."""
        with self._db.reading() as txn:
            return layout.get_state(txn, namespace, key)

    def scan(self, namespace: str, prefix: bytes = b"") -> list[tuple[bytes, bytes]]:
        """Committed (key, value) pairs of a namespace whose key starts with `prefix`."""
        with self._db.reading() as txn:
            return layout.scan_state(txn, namespace, prefix)

    def latest_windows(self, aggregation: str, key: bytes | None = None, limit: int = 100) -> list[bytes]:
        """Row json of the latest closed windows, newest window_end first (one key, or all keys)."""
        with self._db.reading() as txn:
            return layout.latest_windows(txn, aggregation, key, limit)

    def recent_anomalies(self, since_ms: int | None = None, limit: int = 100) -> list[bytes]:
        """Anomaly json with ts_ms >= since_ms, newest first."""
        with self._db.reading() as txn:
            return layout.recent_anomalies(txn, since_ms, limit)

    def statistics(self) -> StoreStats:
        with self._count_lock:
            pending = frozen_map({t: n for t, n in self._pending.items() if n})
        return StoreStats(
            commit_seq=self._seq, commits=self._commits, last_commit_ms=self._last_commit_ms,
            avg_commit_ms=self._commit_ms_total / self._commits if self._commits else 0.0,
            flushes=self._flushes, last_flush_ms=self._last_flush_ms, outbox_rows=pending,
            lmdb=self._db.statistics(), arrow=self._files.statistics(), staged_bytes=self._staged_bytes)

    def close(self) -> None:
        """Close LMDB and release the lock. Does not flush: call flush() first at shutdown."""
        with ExitStack() as held:   # no flush under way either
            with self._count_lock:
                locks = list(self._table_locks.values())
            for lock in locks:
                held.enter_context(lock)
            held.enter_context(self._write_lock)
            self._db.close()


def _check_table(table: str, rows: pa.RecordBatch | pa.Table) -> None:
    """Refuse rows the outbox could never flush, before they reach LMDB."""
    try:
        col = time_column(table)
    except ValueError as exc:
        raise StoreError(str(exc)) from None
    if table.startswith("windows/") and not table[len("windows/"):].isidentifier():
        raise StoreError(f"bad aggregation name in table {table!r}")
    if col not in rows.schema.names:
        raise StoreError(f"rows for {table!r} lack the time column {col!r}")


def _encode_rows(rows: pa.RecordBatch | pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, rows.schema) as writer:
        writer.write(rows)
    return sink.getvalue().to_pybytes()


