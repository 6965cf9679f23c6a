"""The only module that imports lmdb: the data_dir lock, the environment, and the key layout.

One write transaction per call; the map starts at map_size_initial and doubles on MapFullError
(the whole write is retried) up to map_size_max, where StoreFull is raised. Reads and a resize
never overlap (a gate), because set_mapsize invalidates every open transaction.
"""

from __future__ import annotations

import fcntl
import hashlib
import mmap
import os
import struct
import threading
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from itertools import groupby, islice
from operator import itemgetter
from pathlib import Path
from typing import Any, TypeVar

import lmdb
import numpy as np
import orjson

from daemon.errors import StoreError, StoreFull, StoreLocked, map_exceptions
from daemon.runtime import memory
from daemon.stores import segments
from daemon.stores.base import DEFAULT_KEEP_LATEST, DEFAULT_KEEP_LATEST_ROWS, CommitUnit, LmdbStats

T = TypeVar("T")
MAX_DBS = 16
_PAGE = mmap.PAGESIZE
_LMDB_ERRORS = {lmdb.Error: StoreError}


class DataDirLock:
    """An exclusive, non-blocking flock on `data_dir/LOCK`; released on close or process death."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd = fd

    @classmethod
    def acquire(cls, path: Path) -> DataDirLock:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise StoreLocked(
                f"{path} is locked by another StorePulse process (pid {holder}); "
                f"only one daemon may use data_dir {path.parent}") from None
        except OSError as exc:
            os.close(fd)
            raise StoreError(f"cannot lock {path}: {exc.strerror or exc}") from exc
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return cls(path, fd)

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)   # closing the descriptor drops the flock
            self._fd = -1


class _Gate:
    """Many readers or one resizer: set_mapsize invalidates every open transaction."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._resizing = False

    @contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            while self._resizing:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                self._cond.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            while self._resizing:
                self._cond.wait()
            self._resizing = True
            while self._readers:
                self._cond.wait()
        try:
            yield
        finally:
            with self._cond:
                self._resizing = False
                self._cond.notify_all()


class Txn:
    """A transaction over the named databases; bytes in, bytes out."""

    __slots__ = ("_txn", "_dbs", "_drop_read", "_unread")

    def __init__(self, txn: Any, dbs: dict[str, Any], drop_read: Callable[[], None] | None = None) -> None:
        self._txn = txn
        self._dbs = dbs
        self._drop_read = drop_read
        self._unread = 0     # bytes read through the map since the last drop (as callers report them)

    def read_through_map(self, nbytes: int) -> None:
        """Note `nbytes` just read through the map; past DROP_READ_BYTES since the last time, give the
        pages read back (LmdbState._drop_read). Values already returned are copies, and a later read
        faults its pages in again."""
        self._unread += nbytes
        if self._unread >= DROP_READ_BYTES and self._drop_read is not None:
            self._drop_read()
            self._unread = 0

    def get(self, db: str, key: bytes) -> bytes | None:
        return self._txn.get(key, db=self._dbs[db])

    def put(self, db: str, key: bytes, value: bytes) -> None:
        self._txn.put(key, value, db=self._dbs[db])

    def delete(self, db: str, key: bytes) -> bool:
        return self._txn.delete(key, db=self._dbs[db])

    def clear(self, db: str) -> None:
        """Delete every record of `db` (the table stays)."""
        self._txn.drop(self._dbs[db], delete=False)

    def cursor(self, db: str) -> Any:
        """A py-lmdb cursor on `db` in this transaction (for runs of operations near one key)."""
        return self._txn.cursor(db=self._dbs[db])

    def put_many(self, db: str, items: list[tuple[bytes, bytes]]) -> None:
        """Put many items in one C call (Cursor.putmulti)."""
        if items:
            self._txn.cursor(db=self._dbs[db]).putmulti(items)

    def scan(self, db: str, prefix: bytes = b"", *, start: bytes | None = None, end: bytes | None = None,
             reverse: bool = False) -> Iterator[tuple[bytes, bytes]]:
        """Items whose key starts with `prefix`, in key order (or reversed).

        `start` (forward only) skips keys below it; `end` (forward only) stops before the first key
        >= it. Do not write to `db` while iterating.
        """
        for key, value in self._walk(db, prefix, start, end, reverse, values=True):
            yield key, value

    def keys(self, db: str, prefix: bytes = b"", *, start: bytes | None = None,
             end: bytes | None = None) -> Iterator[bytes]:
        """`scan`'s keys alone (no value copied). py-lmdb still reads every page of each value it
        steps on (preload.h: so that a page fault never happens with the GIL held)."""
        for key in self._walk(db, prefix, start, end, False, values=False):
            yield key

    def _walk(self, db: str, prefix: bytes, start: bytes | None, end: bytes | None, reverse: bool,
              *, values: bool) -> Iterator[Any]:
        cur = self._txn.cursor(db=self._dbs[db])
        if reverse:
            end = _prefix_end(prefix)
            if end is None or not cur.set_range(end):
                if not cur.last():
                    return
            elif not cur.prev():
                return
            items = cur.iterprev(keys=True, values=values)
        else:
            if not cur.set_range(max(prefix, start or b"")):
                return
            items = cur.iternext(keys=True, values=values)
        for item in items:
            key = item[0] if values else item
            if not key.startswith(prefix) or (end is not None and key >= end):
                return
            yield item


def _open_env(path: Path, map_size: int, db_names: tuple[str, ...]) -> tuple[Any, dict[str, Any]]:
    env = lmdb.open(str(path), map_size=map_size, subdir=True, max_dbs=MAX_DBS,
                    sync=True, metasync=True, readahead=False)
    return env, {name: env.open_db(name.encode(), create=True) for name in db_names}


def _prefix_end(prefix: bytes) -> bytes | None:
    """The smallest key greater than every key starting with `prefix` (None: no bound)."""
    p = bytearray(prefix)
    while p and p[-1] == 0xFF:
        p.pop()
    if not p:
        return None
    p[-1] += 1
    return bytes(p)


def _round_up(n: int) -> int:
    return -(-n // _PAGE) * _PAGE


class LmdbState:
    """An LMDB environment with named databases; one writer thread, any number of readers."""

    def __init__(self, env: Any, dbs: dict[str, Any], lock: DataDirLock, path: Path,
                 map_size_max_bytes: int, log: Any) -> None:
        self._env = env
        self._dbs = dbs
        self._lock = lock
        self._path = path
        self._map_max = map_size_max_bytes
        self._log = log
        self._gate = _Gate()
        self._write_lock = threading.Lock()
        self._closed = False
        self._map_size = env.info()["map_size"]
        self._map_range: tuple[int, int] | None = None   # (address, length) of the map, once looked up
        self._map_grows = 0
        self._recycles = 0
        self._write_txns = 0
        self._last_write_ms = 0.0

    @classmethod
    def open(cls, path: str | os.PathLike[str], *, lock_path: str | os.PathLike[str],
             db_names: tuple[str, ...], map_size_initial_bytes: int, map_size_max_bytes: int,
             log: Any = None) -> LmdbState:
        """Take the lock, open (or create) the environment at `path`, clear stale reader slots."""
        lock = DataDirLock.acquire(Path(lock_path))
        try:
            p = Path(path)
            p.mkdir(parents=True, exist_ok=True)
            data_file = p / "data.mdb"
            existing = data_file.stat().st_size if data_file.exists() else 0
            map_size = _round_up(max(map_size_initial_bytes, existing, _PAGE * 16))
            with map_exceptions(_LMDB_ERRORS):
                env, dbs = _open_env(p, map_size, db_names)
                # We hold the flock, so every reader slot left in lock.mdb is from a dead process.
                stale = env.reader_check()
        except BaseException:
            lock.release()
            raise
        if log is not None and stale:
            log.warning("lmdb_stale_readers_cleared", count=stale, path=str(p))
        return cls(env, dbs, lock, p, _round_down(max(map_size_max_bytes, map_size)), log)

    def recycle(self) -> None:
        """Close and reopen the environment (readers and the writer wait meanwhile, ~1 ms).

        Why: an environment keeps every single page a write transaction dirtied, once freed, in its
        own pool for reuse (liblmdb's `mdb_page_free`; up to 512 MiB after a write of 128k pages),
        and every page read through the map stays in the process's RSS (RssFile). A new
        environment starts with neither. The checkpoint calls this after large writes and now and
        then after flushes."""
        with self._write_lock:
            self._check_open()
            with self._gate.exclusive(), map_exceptions(_LMDB_ERRORS):
                self._env.close()
                self._env, self._dbs = _open_env(self._path, self._map_size, tuple(self._dbs))
                self._map_range = None
                self._recycles += 1

    def drop_read_pages(self, wait: bool = True) -> None:
        """Give the pages read through the map back to the kernel (they stay in the page cache).

        With `wait` False, only if no write is under way (from inside a read transaction: a write that
        grows or recycles the map waits for the readers, so waiting for it there would deadlock)."""
        if not self._write_lock.acquire(blocking=wait):
            return
        try:
            self._check_open()
            self._drop_read()
        finally:
            self._write_lock.release()

    def _drop_read(self) -> None:
        # Only from the writer (write lock held): the map is not moved (grow, recycle) meanwhile.
        if self._map_range is None:
            self._map_range = memory.mapped_range(self._path / "data.mdb") or (0, 0)
        memory.drop_mapped(*self._map_range)

    def write(self, fn: Callable[[Txn], T]) -> T:
        """Run `fn` in one write transaction and commit; on a full map grow it and rerun `fn`.

        `fn` must only touch the transaction (it may run more than once).
        """
        with self._write_lock:
            self._check_open()
            while True:
                t0 = time.perf_counter()
                with map_exceptions(_LMDB_ERRORS):
                    txn = self._env.begin(write=True)
                try:
                    result = fn(Txn(txn, self._dbs, self._drop_read))
                    txn.commit()
                except lmdb.MapFullError:
                    self._abort(txn)
                    self._grow()
                    continue
                except BaseException as exc:
                    self._abort(txn)
                    if isinstance(exc, lmdb.Error):
                        raise StoreError(f"LMDB at {self._path}: {type(exc).__name__}: {exc}") from exc
                    raise
                self._write_txns += 1
                self._last_write_ms = (time.perf_counter() - t0) * 1000.0
                return result

    def _abort(self, txn: Any) -> None:
        # py-lmdb 3.0 aborts a write txn only once no other thread is inside an LMDB call;
        # busy readers can starve it for ever, so pause our readers first (measured: a hang).
        with self._gate.exclusive():
            try:
                txn.abort()     # a no-op after a failed commit (LMDB already freed it)
            except lmdb.Error:
                pass

    @contextmanager
    def reading(self) -> Iterator[Txn]:
        """A read transaction (a consistent snapshot); consume every scan inside the block."""
        self._check_open()
        with self._gate.shared(), map_exceptions(_LMDB_ERRORS), self._env.begin(write=False) as txn:
            yield Txn(txn, self._dbs)

    def _grow(self) -> None:
        if self._map_size >= self._map_max:
            raise StoreFull(
                f"LMDB at {self._path} is full: map size {self._map_size} bytes reached "
                f"storage.map_size_max ({self._map_max} bytes); raise it or free disk space")
        new_size = min(self._map_size * 2, self._map_max)
        with self._gate.exclusive(), map_exceptions(_LMDB_ERRORS):
            self._env.set_mapsize(new_size)
        self._map_size = self._env.info()["map_size"]
        self._map_range = None
        self._map_grows += 1
        if self._log is not None:
            self._log.info("lmdb_map_grown", map_size_bytes=self._map_size, path=str(self._path))

    def statistics(self) -> LmdbStats:
        used, readers = 0, 0
        with self._gate.shared():     # env.info() must not race a remap
            if not self._closed:
                info = self._env.info()
                used = self._env.stat()["psize"] * (info["last_pgno"] + 1)
                readers = info["num_readers"]
        return LmdbStats(path=str(self._path), used_bytes=used, map_size_bytes=self._map_size,
                         map_size_max_bytes=self._map_max, map_grows=self._map_grows, recycles=self._recycles,
                         write_txns=self._write_txns, last_write_ms=self._last_write_ms,
                         readers=readers)

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(f"LMDB at {self._path} is closed")

    def close(self) -> None:
        """Close the environment and release the data_dir lock (idempotent)."""
        with self._write_lock:
            if self._closed:
                return
            self._closed = True
            with self._gate.exclusive():
                self._env.close()
            self._lock.release()


def _round_down(n: int) -> int:
    return max(_PAGE, n // _PAGE * _PAGE)


# ---- The StorePulse layout: databases and key formats (integers are big-endian, so keys sort) ----
#   sys           b"format" → FORMAT;  b"commit_seq" → u64;  b"anomalies" → u64 count;
#                 b"latest_pending:" u64 commit_seq → that commit's latest-window entries, put into
#                 `latest`/`latest_time` by the next write (format 5; see apply_commit);
#                 b"latest_rows:" aggregation → u64 rows of it in `latest_time` (format 7)
#   meta          name (utf-8) → bytes
#   positions     source name (utf-8) → bytes
#   segments      ns \x00 u16 bucket u64 commit_seq [u16 n] → a segment of that namespace's state
#                 records (stores/segments.py: keys by crc32 bucket, a chain of segments per bucket,
#                 merged when it has doubled; n numbers a commit's segments of one bucket when it
#                 has several, in order: the rounds its own changes were written ahead of it
#                 (stage_segments), then the rest of them, then its packed changes:
#                 CommitUnit.state_segments); sys b"segments:" ns → per bucket: chain
#                 bytes, bytes at its last merge, segments in the chain (3 × BUCKETS u64, little-endian).
#                 A segment of a commit seq above sys commit_seq is not part of the state (yet):
#                 readers skip it; sys b"staged:" + its key marks it until its commit (or the next
#                 open) removes the mark (or it)
#   state         format 2's one record per key (ns \x00 key → value; a key too long for LMDB:
#                 ns \x01 blake2b(key) → u32 len, key, value), moved into segments at open
#   dedupe        u64 bucket_start_ms, u64 commit_seq → the ids a commit added that expire in that
#                 minute: u32 n, n × u64 expiry_ms, n × u16 length, the ids (see pack_ids)
#   outbox        table (utf-8) \x00 u64 commit_seq → u64 rows, Arrow IPC stream bytes
#   latest        agg \x00 blake2b16(key) u64 window_end_ms → b""   (a key's rows; format 2: the row json)
#                 agg \x00 blake2b16(key) → u32 rows kept (the key's count, just before its rows:
#                 format 3 kept it in latest_count, a table of its own, moved here at open)
#   latest_time   agg \x00 u64 window_end_ms blake2b16(key) → row json (newest across keys)
#   latest_count  formats 2 and 3 only (emptied at open)
#   anomalies     u64 ts_ms, u64 commit_seq, u32 index → anomaly json
#   foldlog       u64 commit_seq → fold steps of that commit not yet in `state` (pipeline/foldlog.py)
DBS = ("sys", "meta", "positions", "state", "segments", "dedupe", "outbox",
       "latest", "latest_time", "latest_count", "anomalies", "foldlog")
FORMAT_KEY, FORMAT, SEQ_KEY, ANOMALY_COUNT_KEY = b"format", b"7", b"commit_seq", b"anomalies"
# Rewritten at open: migrate_state + migrate_latest (2), migrate_latest_counts (2, 3), and for every
# older format count_latest_rows (each aggregation's row count, new in 7: a build that does not keep
# it must not write to the index); 4 lacks only the pending latest entries, which it never has; 5 lacks
# only the recommender's user records in their format 2 (analyzers/recusers.py, which reads both).
OLD_FORMATS = (b"2", b"3", b"4", b"5", b"6")
LATEST_PENDING = b"latest_pending:"
LATEST_ROWS = b"latest_rows:"
SEGMENTS_META = b"segments:"
STAGED = b"staged:"
# The most bytes of bucket chains one compaction transaction merges (compact_segments): 16 MiB took
# 66-156 ms under load (the latency benchmark at 20k events/s), time the folds wait; 4 MiB is ~1-2 of
# the recommender's buckets at 1M open states.
MERGE_BYTES_PER_WRITE = 4 * 2**20
DROP_READ_BYTES = 1 << 20   # reads through the map in a write (merges, latest counts) given back this often
# Latest-window rows handled per slice, the map's pages given back after each. A read at a random key
# maps far more than its leaf: on a fault the kernel maps the page-cache folio around the page whole
# (Linux 6.18: fault-around maps entire large folios; ext4 makes large folios of LMDB's pwrite()s and
# of read()'s readahead), and after each give-back the branch pages above it are faulted in again.
# Measured in process on a table of 2M random keys (27 Nov, 2,048 random gets): +12-18 MiB of RssFile
# when the cache was filled by faults (MADV_RANDOM: single pages), +72-80 after 20k-put commits,
# +256-284 after a read() of the file, MADV_NOHUGEPAGE or not (it only turns PMD maps into PTE maps of
# the same folios). MDB_WRITEMAP (its pages faulted in singly) made a 20k-put commit 6x slower.
# Commits of 20k rows into a store of 1M keys (format 4, a local script, 26 Nov): slices of 512 / 256 /
# 128 / 64 peaked at +65 / +37 / +22 / +22 MiB of RssFile, at 618-711 / 623 / 733 / 786 ms per commit
# (±15% run to run); in the daemon, the final close's commits of 20k session rows had RssFile spikes
# of 130-210 MiB with 512 (its largest samples), up to 114 with 64.
# 27 Nov, with the map's resident size read in the daemon after every slice: the memory benchmark's
# peak (VmHWM) was set inside one slice of the final close, +130-160 MiB of RssFile above the
# commit's start with 128 (1.2 MiB per row: whole 2 MiB folios). In process on that run's store
# (20k random get+put, alternating): 128 / 64 / 32 / 16 / 8 mapped +86-91 / 58-70 / 34-38 / 24-25 /
# 14-15 MiB at 196-220 / 188 / 193-198 / 210-217 / 245-256 ms. In the daemon (memory scenario,
# alternating runs) the daemon's VmHWM was 755-824 MiB with 128 (7 runs), 680-736 with 32 (10) and
# 658-694 with 16 (3), the final close's commits as long with 32 as with 128 and 7-26% longer with 16.
LATEST_SLICE = 32
LATEST_ROW_BYTES = 256      # a latest row's bytes, about (for the map's give-back while walking rows)
RANDOM_TOUCH_BYTES = DROP_READ_BYTES // LATEST_SLICE   # noted per random-key access: a drop every slice
# A bucket chain's segment read by a merge is noted as at least this much: the pages go back every 8
# segments. Each segment's read maps whole page-cache folios (up to 2 MiB, as above), and a chain holds
# up to 32 segments: with the pages given back once per chain, a merge transaction of the memory
# benchmark mapped up to 50-60 MiB of the file and set the daemon's peak RSS in one run of two (27 Nov).
SEGMENT_TOUCH_BYTES = DROP_READ_BYTES // 8
DEDUPE_BEFORE_KEY = b"dedupe_before"   # sys: u64, ids expiring before it are gone
DEDUPE_BUCKET_MS = 60_000
U64, U32, U16 = struct.Struct(">Q"), struct.Struct(">I"), struct.Struct(">H")


def _h(b: bytes) -> bytes:
    return hashlib.blake2b(b, digest_size=16).digest()


def _name(name: str, what: str) -> bytes:
    if not name or "\x00" in name or "\x01" in name:
        raise StoreError(f"bad {what} name {name!r}")
    return name.encode()


def get_u64(txn: Txn, db: str, key: bytes) -> int:
    v = txn.get(db, key)
    return 0 if v is None else U64.unpack(v)[0]


def decode_state(k: bytes, v: bytes) -> tuple[str, bytes, bytes]:
    """(namespace, key, value) of one record of format 2's `state` database."""
    cut = min(i for i in (k.find(b"\x00"), k.find(b"\x01")) if i >= 0)
    if k[cut] == 0:
        return k[:cut].decode(), k[cut + 1:], v
    n = U32.unpack_from(v)[0]
    return k[:cut].decode(), v[4:4 + n], v[4 + n:]


def _bucket_prefix(nsb: bytes, bucket: int) -> bytes:
    return nsb + b"\x00" + U16.pack(bucket)


def _segment_seq(key: bytes) -> int:
    """The commit seq in a `segments` key (ns \x00 u16 bucket u64 seq [u16 n])."""
    return U64.unpack_from(key, key.index(b"\x00") + 3)[0]


def _committed(txn: Txn, pairs: Iterable[tuple[bytes, bytes]]) -> Iterator[tuple[bytes, bytes]]:
    """The `segments` pairs of committed seqs: one written ahead of its commit (stage_segments) is skipped."""
    through = get_u64(txn, "sys", SEQ_KEY)
    return ((k, v) for k, v in pairs if _segment_seq(k) <= through)


def _chain(txn: Txn, nsb: bytes, bucket: int) -> list[tuple[bytes, bytes]]:
    """(LMDB key, segment) of one bucket's chain, oldest first."""
    return list(_chain_items(txn, nsb, bucket))


def _chain_items(txn: Txn, nsb: bytes, bucket: int) -> Iterator[tuple[bytes, bytes]]:
    """`_chain`, read as it is walked."""
    return _committed(txn, txn.scan("segments", _bucket_prefix(nsb, bucket)))


def get_state(txn: Txn, namespace: str, key: bytes) -> bytes | None:
    nsb = _name(namespace, "namespace")
    return segments.merge(v for _, v in _chain(txn, nsb, segments.bucket_of(key))).get(key)


def scan_state(txn: Txn, namespace: str, prefix: bytes = b"") -> list[tuple[bytes, bytes]]:
    """The live records of a namespace whose key starts with `prefix`, in key order."""
    ns = _name(namespace, "namespace")
    chains = _committed(txn, txn.scan("segments", ns + b"\x00"))
    merged = segments.merge(v for _, v in chains)   # buckets hold disjoint keys
    return sorted((k, v) for k, v in segments.live(merged).items() if k.startswith(prefix))


def scan_state_chunk(txn: Txn, namespace: str, after: bytes | None,
                     max_bytes: int) -> tuple[list[tuple[bytes, bytes]], bytes | None]:
    """One chunk of a namespace's live records (see Checkpoint.scan_chunk): whole buckets from the
    one `after` names (None: the first) until about `max_bytes`; and the token of the next chunk."""
    nsb = _name(namespace, "namespace")
    bucket = 0 if after is None else U16.unpack(after)[0]
    out: list[tuple[bytes, bytes]] = []
    size = 0
    while bucket < segments.BUCKETS:
        chain = _chain(txn, nsb, bucket)
        bucket += 1
        out += segments.live(segments.merge(v for _, v in chain)).items()
        size += sum(len(v) for _, v in chain)
        if size >= max_bytes:
            break
    return out, U16.pack(bucket) if bucket < segments.BUCKETS else None


def read_state(txn: Txn) -> dict[str, list[tuple[bytes, bytes]]]:
    """Every namespace's live records, each in key order."""
    merged: dict[bytes, dict[bytes, bytes | None]] = {}
    for k, v in _committed(txn, txn.scan("segments")):
        nsb = k[:k.index(b"\x00")]
        segments.merge([v], merged.setdefault(nsb, {}))
    return {nsb.decode(): sorted(segments.live(m).items()) for nsb, m in merged.items()}


class Staged(list):
    """An answer of CommitUnit.state_segments already written ahead of its commit (Checkpoint.commit
    stages them one by one): its (bucket, segment bytes), for the chains' sizes."""


def _apply_state(txn: Txn, state: Mapping[str, Mapping[bytes, bytes | None] | segments.SegmentBuilder], seq: int,
                 packed: dict[str, list[list[tuple[int, bytes | memoryview]]]] | None = None) -> int:
    """Each namespace's changes as one segment per bucket they touch, under this commit's seq, then
    its `packed` changes (already segments per bucket), each under seq and its index. Returns how many
    buckets are now due for a merge (`compact_segments`, in transactions of their own)."""
    due = 0
    packed = packed or {}
    staged: set[bytes] = set()
    for ns in dict.fromkeys([*state, *packed]):
        changes, answers = state.get(ns), packed.get(ns, [])
        spilled = changes.spilled if isinstance(changes, segments.SegmentBuilder) else []
        if not changes and not any(answers) and not spilled:
            continue
        nsb = _name(ns, "namespace")
        chains = _Chains(txn, nsb)
        for rnd, bucket, nbytes in spilled:   # written ahead (Checkpoint.stage): now part of the chain
            key = _bucket_prefix(nsb, bucket) + U64.pack(seq) + U16.pack(rnd)
            chains.note(bucket, nbytes)
            staged.add(key)
        rounds = spilled[-1][0] if spilled else 0
        own = U64.pack(seq) + U16.pack(rounds + 1) if rounds else U64.pack(seq)
        if changes:
            built = changes if isinstance(changes, segments.SegmentBuilder) else segments.SegmentBuilder.of(changes)
            for bucket, blob in built.segments():
                chains.append(bucket, blob, own)
        for sub, answer in enumerate(answers, rounds + 2 if rounds else 1):
            if isinstance(answer, Staged):
                for bucket, nbytes in answer:
                    chains.note(bucket, nbytes)
                    staged.add(_bucket_prefix(nsb, bucket) + U64.pack(seq) + U16.pack(sub))
                continue
            for bucket, blob in answer:
                chains.append(bucket, blob, U64.pack(seq) + U16.pack(sub))
        chains.save()
        due += len(chains.due())
    _, missing = drop_staged(txn, keep=staged)
    if missing:
        raise StoreError(f"{len(missing)} segment(s) this commit wrote ahead of it are gone")
    return due


def stage_segments(txn: Txn, namespace: str, seq: int, rnd: int, pieces: Iterable[tuple[int, bytes]]) -> int:
    """Write a round of a namespace's state segments ahead of commit `seq` (see the layout above);
    the commit adds them to their chains (`_apply_state`). Returns the bytes written."""
    nsb = _name(namespace, "namespace")
    suffix = U64.pack(seq) + U16.pack(rnd)
    n = 0
    for bucket, blob in pieces:
        key = _bucket_prefix(nsb, bucket) + suffix
        txn.put("segments", key, blob)
        txn.put("sys", STAGED + key, b"")
        n += len(blob)
    return n


def drop_staged(txn: Txn, keep: Collection[bytes] = ()) -> tuple[int, set[bytes]]:
    """Remove every mark of a segment written ahead of its commit, and the segments not in `keep` (a
    crashed or abandoned write's); return (segments removed, the keys of `keep` that were not marked)."""
    missing, dropped = set(keep), 0
    for mark in list(txn.keys("sys", STAGED)):
        key = mark[len(STAGED):]
        if key in missing:
            missing.discard(key)
        else:
            txn.delete("segments", key)
            dropped += 1
        txn.delete("sys", mark)
    return dropped, missing


def compact_segments(txn: Txn, budget: int | None = None) -> tuple[int, int]:
    """Merge due bucket chains (`_Chains.due`, every namespace) into one segment each, tombstones
    dropped, until `budget` bytes (MERGE_BYTES_PER_WRITE) were read; (buckets merged, bytes read).

    A commit only appends; Checkpoint.commit then runs this in transactions of its own until nothing
    is due, so a transaction holds at most ~budget of merged segments until it commits (a namespace's
    buckets grow alike and fall due together: merging all 64 of the recommender's in the commit read
    216 MiB and held ~that as dirty pages: the memory benchmark's largest sample at 1M open states)."""
    budget = MERGE_BYTES_PER_WRITE if budget is None else budget
    merged = read = 0
    for key in list(txn.keys("sys", SEGMENTS_META)):
        chains = _Chains(txn, key[len(SEGMENTS_META):])
        due = chains.due()
        for bucket in due:
            if read >= budget:
                break
            read += chains.merge(bucket)
            merged += 1
        if due:
            chains.save()
        if read >= budget:
            break
    return merged, read


class _Chains:
    """One namespace's bucket chains in a write transaction, with their sizes (sys `segments:` ns)."""

    def __init__(self, txn: Txn, nsb: bytes) -> None:
        self.txn, self.nsb = txn, nsb
        self.meta_key = SEGMENTS_META + nsb
        raw = txn.get("sys", self.meta_key)
        self.meta = (np.zeros((3, segments.BUCKETS), dtype=np.int64) if raw is None
                     else np.frombuffer(raw, dtype="<i8").reshape(3, segments.BUCKETS).copy())

    def append(self, bucket: int, blob: bytes | memoryview, suffix: bytes) -> None:
        """Add a segment to a bucket's chain under prefix + `suffix` (keys sort in write order)."""
        if not blob:
            return
        self.note(bucket, len(blob))
        self.txn.put("segments", _bucket_prefix(self.nsb, bucket) + suffix, blob)

    def note(self, bucket: int, nbytes: int) -> None:
        """Count a segment of `nbytes` in a bucket's chain (`append`, or one already written)."""
        chain_bytes, _, chain_len = self.meta
        chain_bytes[bucket] += nbytes
        chain_len[bucket] += 1

    def due(self) -> list[int]:
        """The buckets whose chain has passed twice its size at its last merge (plus SLACK_BYTES), or
        holds MAX_CHAIN segments."""
        chain_bytes, base_bytes, chain_len = self.meta
        return np.flatnonzero((chain_bytes > 2 * base_bytes + segments.SLACK_BYTES)
                              | (chain_len >= segments.MAX_CHAIN)).tolist()

    def merge(self, bucket: int) -> int:
        """Replace a bucket's chain by one segment of its live records, under its last segment's key
        (later segments sort after it); return the bytes read."""
        chain_bytes, base_bytes, chain_len = self.meta
        chain = []
        for k, v in _chain_items(self.txn, self.nsb, bucket):
            chain.append((k, v))
            # Each segment is a random read: noted at least at SEGMENT_TOUCH_BYTES, so that the pages
            # go back every few segments, not once a whole chain (up to MAX_CHAIN) was copied.
            self.txn.read_through_map(max(len(v), SEGMENT_TOUCH_BYTES))
        read = sum(len(v) for _, v in chain)
        merged = segments.live(segments.merge(v for _, v in chain))
        for k, _ in chain:
            self.txn.delete("segments", k)
        blob = segments.pack(merged) if merged else b""
        if blob:
            self.txn.put("segments", chain[-1][0], blob)
        chain_bytes[bucket] = base_bytes[bucket] = len(blob)
        chain_len[bucket] = 1 if blob else 0
        return read

    def save(self) -> None:
        self.txn.put("sys", self.meta_key, self.meta.astype("<i8").tobytes())


def migrate_state(txn: Txn, seq: int) -> int:
    """Move format 2's one-record-per-key `state` into segments (in the caller's transaction); return
    how many records moved."""
    state: dict[str, dict[bytes, bytes | None]] = {}
    keys = []
    for k, v in txn.scan("state"):
        ns, key, value = decode_state(k, v)
        state.setdefault(ns, {})[key] = value
        keys.append(k)
    for k in keys:
        txn.delete("state", k)
    _apply_state(txn, state, seq)
    return len(keys)


def outbox_prefix(table: str) -> bytes:
    return _name(table, "table") + b"\x00"


def outbox_table(key: bytes) -> str:
    return key[:-9].decode()


def apply_commit(txn: Txn, unit: CommitUnit, seq: int, outbox: list[tuple[str, int, bytes]]) -> int:
    """Every write of one commit (runs inside one write transaction; may be rerun after a grow).
    Returns how many state buckets are due for a merge (compact_segments)."""
    due = _apply_state(txn, unit.state, seq, unit.state_segments)
    for name, pos in unit.positions.items():
        txn.put("positions", _name(name, "source"), pos)
    for name, value in unit.meta.items():
        txn.put("meta", _name(name, "meta"), value)
    _apply_dedupe(txn, unit, seq)
    for table, n, value in outbox:
        txn.put("outbox", outbox_prefix(table) + U64.pack(seq), U64.pack(n) + value)
    apply_pending_latest(txn)
    if unit.latest and unit.defer_latest:
        txn.put("sys", LATEST_PENDING + U64.pack(seq), pack_latest(unit.latest, unit.keep_latest, unit.keep_latest_rows))
    elif unit.latest:
        _apply_latest(txn, unit.latest, unit.keep_latest, unit.keep_latest_rows)
    _apply_anomalies(txn, unit, seq)
    drop = unit.fold_log_drop_through
    if drop is not None:
        for k in _walked_keys(txn, "foldlog", end=U64.pack(drop + 1)):
            txn.delete("foldlog", k)
    if unit.fold_log is not None and (drop is None or seq > drop):
        txn.put("foldlog", U64.pack(seq), unit.fold_log)
    txn.put("sys", SEQ_KEY, U64.pack(seq))
    return due


def _walked_keys(txn: Txn, db: str, *, end: bytes) -> list[bytes]:
    """The keys below `end` of a table of large values (fold-log entries, dedupe records: MiBs each),
    the pages py-lmdb reads of each value as it steps on it given back as they add up."""
    out = []
    for k, v in txn.scan(db, end=end):
        out.append(k)
        txn.read_through_map(len(v))
    return out


def _apply_dedupe(txn: Txn, unit: CommitUnit, seq: int) -> None:
    """One record per (expiry minute, commit) instead of two keys per id: the ids of a commit are
    written at C speed, and expiring a minute deletes its records whole."""
    bound = get_u64(txn, "sys", DEDUPE_BEFORE_KEY)
    if unit.dedupe_expire_before_ms is not None:
        bound = max(bound, unit.dedupe_expire_before_ms)
        txn.put("sys", DEDUPE_BEFORE_KEY, U64.pack(bound))
        # whole minutes only; restore drops what a partly expired minute still holds
        doomed = _walked_keys(txn, "dedupe", end=U64.pack(max(0, bound - DEDUPE_BUCKET_MS + 1)))
        for k in doomed:
            txn.delete("dedupe", k)
    ids = unit.dedupe_ids
    if not len(ids):
        return
    expiries = np.asarray(unit.dedupe_expiry_ms, dtype=np.int64)
    minute = expiries // DEDUPE_BUCKET_MS
    lo = int(expiries.min())
    if lo >= bound and minute[0] == minute.min() == minute.max():   # the usual commit: one record
        txn.put("dedupe", U64.pack(int(minute[0]) * DEDUPE_BUCKET_MS) + U64.pack(seq), pack_ids(ids, expiries))
        return
    live = expiries >= bound   # the others expired already (the filter forgets them at the same watermark)
    for b in np.unique(minute[live]).tolist():
        at = np.flatnonzero(live & (minute == b))
        txn.put("dedupe", U64.pack(b * DEDUPE_BUCKET_MS) + U64.pack(seq),
                pack_ids([ids[i] for i in at.tolist()], expiries[at]))


def pack_ids(ids: Sequence[str | bytes], expiries: Sequence[int] | np.ndarray) -> bytes:
    """Ids (all str, or all UTF-8 bytes) and their expiries (ms; a negative one is stored as 0) as
    u32 n, n × u64 expiry, n × u16 id length, then the ids. All-ASCII str ids (the usual) are encoded
    in one call."""
    n = len(ids)
    if n and type(ids[0]) is str:
        joined = "".join(ids)   # type: ignore[arg-type]
        if joined.isascii():
            body, lengths = joined.encode("ascii"), np.fromiter(map(len, ids), dtype=np.int64, count=n)
        else:
            raw = [i.encode() for i in ids]   # type: ignore[union-attr]
            body, lengths = b"".join(raw), np.fromiter(map(len, raw), dtype=np.int64, count=n)
    else:
        body, lengths = b"".join(ids), np.fromiter(map(len, ids), dtype=np.int64, count=n)   # type: ignore[arg-type]
    if n and int(lengths.max()) > 0xFFFF:
        raise ValueError(f"an event id of {int(lengths.max())} bytes (at most 65,535 fit a dedupe record)")
    exp = np.maximum(np.asarray(expiries, dtype=np.int64).reshape(n), 0)
    return U32.pack(n) + exp.astype(">u8").tobytes() + lengths.astype(">u2").tobytes() + body


def unpack_ids(data: bytes) -> list[tuple[bytes, int]]:
    """The (id, expiry) pairs `pack_ids` packed."""
    n = U32.unpack_from(data)[0]
    expiries = struct.unpack_from(f">{n}Q", data, 4)
    lengths = struct.unpack_from(f">{n}H", data, 4 + 8 * n)
    out, pos = [], 4 + 10 * n
    for length, expiry in zip(lengths, expiries):
        out.append((data[pos:pos + length], expiry))
        pos += length
    return out


def read_dedupe(txn: Txn) -> list[tuple[bytes, int]]:
    """Every stored id that has not expired, oldest expiry minute first."""
    bound = get_u64(txn, "sys", DEDUPE_BEFORE_KEY)
    return [(i, e) for _, v in txn.scan("dedupe") for i, e in unpack_ids(bytes(v)) if e >= bound]


_LATEST_FIXED = np.dtype([("agg", ">u2"), ("end", ">u8"), ("klen", ">u4"), ("rlen", ">u4")])   # per entry in pack_latest


def pack_latest(entries: Sequence[tuple[str, bytes, int, bytes]], keep_latest: Mapping[str, int],
                keep_rows: Mapping[str, int] | None = None) -> bytes:
    """A commit's latest-window entries (aggregation, key, window end, row json), its keep_latest and
    keep_latest_rows as one record: a JSON head (the aggregations, keep_latest, keep_latest_rows, the
    entry count), then per entry u16 aggregation index, u64 window end, u32 key length, u32 row length,
    then the keys, then the rows."""
    names: dict[str, int] = {}
    idx = [names.setdefault(e[0], len(names)) for e in entries]
    n = len(entries)
    head = orjson.dumps({"aggregations": list(names), "keep_latest": dict(keep_latest),
                         "keep_latest_rows": dict(keep_rows or {}), "n": n})
    fixed = np.empty(n, dtype=_LATEST_FIXED)
    fixed["agg"] = idx
    fixed["end"] = np.fromiter((e[2] for e in entries), dtype=np.int64, count=n)
    fixed["klen"] = np.fromiter((len(e[1]) for e in entries), dtype=np.int64, count=n)
    fixed["rlen"] = np.fromiter((len(e[3]) for e in entries), dtype=np.int64, count=n)
    return b"".join([U32.pack(len(head)), head, fixed.tobytes(), *(e[1] for e in entries), *(e[3] for e in entries)])


def unpack_latest(blob: bytes | memoryview) -> tuple[list[tuple[str, bytes, int, bytes]], dict[str, int], dict[str, int]]:
    """The entries, keep_latest and keep_latest_rows `pack_latest` packed (a record of format 5 or 6
    has no keep_latest_rows: the defaults)."""
    data = bytes(blob)
    hlen = U32.unpack_from(data)[0]
    head = orjson.loads(data[4:4 + hlen])
    n, names = head["n"], head["aggregations"]
    fixed = np.frombuffer(data, dtype=_LATEST_FIXED, count=n, offset=4 + hlen)
    pos = 4 + hlen + fixed.nbytes
    out = []
    klens, rlens = fixed["klen"].tolist(), fixed["rlen"].tolist()
    kpos = pos
    rpos = pos + sum(klens)
    for a, end, kl, rl in zip(fixed["agg"].tolist(), fixed["end"].tolist(), klens, rlens):
        out.append((names[a], data[kpos:kpos + kl], end, data[rpos:rpos + rl]))
        kpos += kl
        rpos += rl
    return out, head["keep_latest"], head.get("keep_latest_rows", {})


def apply_pending_latest(txn: Txn) -> int:
    """Put the latest-window entries earlier commits left pending into the index, oldest first, and
    drop their records; how many entries that was."""
    applied = 0
    for key, blob in list(txn.scan("sys", LATEST_PENDING)):
        entries, keep, keep_rows = unpack_latest(blob)
        _apply_latest(txn, entries, keep, keep_rows)
        txn.delete("sys", key)
        applied += len(entries)
    return applied


def _apply_latest(txn: Txn, latest: Sequence[tuple[str, bytes, int, bytes]], keep_latest: Mapping[str, int],
                  keep_rows: Mapping[str, int] | None = None) -> None:
    """Each closed window's row under (aggregation, window end, key hash), its (aggregation, key hash,
    window end) index entry per key, and a row count per key, stored just before the key's index
    entries, that trims the oldest past `keep_latest`. Then each aggregation's rows past
    `keep_rows` (keep_latest_rows) go, oldest window end first (_trim_latest_rows).

    The rows sit in window-end order because a close brings many rows of one end (a hopping close of
    200k items): they land side by side on a few pages of the B-tree's right edge, while the per-key
    index, whose keys are random, holds ~80 entries per page (with the rows there each of them had
    dirtied a page of its own: ~130k pages, 512 MiB of one transaction). A key's count sits on its
    index entries' page, so a closed row reads and dirties one random page, not two (format 3 kept the
    counts in a table of their own: twice the pages copied into the transaction and mapped).

    A read at a random key maps far more than its page (the kernel maps the page-cache folio around
    each fault whole, see LATEST_SLICE): the rows go a slice of LATEST_SLICE at a time, the map's
    pages given back after each. (Putting every count at the end of the commit mapped 37-85 MiB of
    pages again in the final close of 725k sessions.) Per row one cursor on the index reads the key's
    count, puts the entry and puts the count: LMDB's cursor looks on the page it stands on before it
    goes down from the root, so that is one descent, not three (in process, 20k rows into the memory
    benchmark's store of 870k keys, alternating, warm: 209-226 vs 227-265 ms). The rows go in key
    order (by their index key; a key's own rows in the order given): a slice then walks one narrow
    stretch of the index, its rows share their branch pages and often a leaf, so that after each
    give-back the pages above the leaves are faulted in once per slice instead of once per row (in
    process, 20k rows into the memory benchmark's store of 2.45M index entries, alternating: 10-15 vs
    20-32 MiB of the map at a slice's most, 336-657 vs 413-502 ms). A window emitted twice (only possible
    across a config change) keeps its count and gets the newer row."""
    names: dict[str, bytes] = {}
    counts: dict[bytes, int] = {}      # aggregation \x00 key hash -> rows kept, once read
    added: dict[str, int] = {}         # aggregation -> rows it gained (put less trimmed)
    heads = []
    for agg, key, end_ms, row in latest:
        aggb = names.get(agg)
        if aggb is None:
            aggb = names[agg] = _name(agg, "aggregation") + b"\x00"
        h = _h(key)
        heads.append((aggb + h, agg, aggb, h, U64.pack(end_ms), row))
    heads.sort(key=itemgetter(0))      # stable: one key's rows keep their order
    index = txn.cursor("latest")
    for i in range(0, len(heads), LATEST_SLICE):
        part = heads[i:i + LATEST_SLICE]
        # The rows first (the newer row wins), so that a trim below deletes a row put in this slice.
        txn.put_many("latest_time", [(aggb + end + h, row) for _, _, aggb, h, end, row in part])
        for base, agg, aggb, h, end, _ in part:
            n = counts.get(base)
            if n is None:
                n = U32.unpack(index.value())[0] if index.set_key(base) else 0
            if index.put(base + end, b"", overwrite=False):   # else the window was emitted before
                n += 1
                gained = 1
                keep = keep_latest.get(agg, DEFAULT_KEEP_LATEST)
                if n > keep:
                    for k in list(islice(txn.keys("latest", base, start=base + b"\x00"), n - keep)):
                        txn.delete("latest", k)
                        txn.delete("latest_time", aggb + k[-8:] + h)
                    gained -= n - keep
                    n = keep
                added[agg] = added.get(agg, 0) + gained
            counts[base] = n
            index.put(base, U32.pack(n))
        txn.read_through_map(RANDOM_TOUCH_BYTES * len(part))
    for agg, gained in added.items():
        _trim_latest_rows(txn, names[agg], gained, (keep_rows or {}).get(agg, DEFAULT_KEEP_LATEST_ROWS))


def _trim_latest_rows(txn: Txn, aggb: bytes, gained: int, keep_rows: int) -> int:
    """Add `gained` to the aggregation's row count (sys LATEST_ROWS); past `keep_rows`, delete its rows
    of the oldest window ends, with their index entries, and lower their keys' counts (a key left with
    none loses its count too). Returns the rows deleted.

    keep_latest bounds the rows of each key, but not the keys: an aggregation by user keeps a row per
    session of every user ever seen, and a hopping window by item ~1,440 rows per item a day, so
    without this the index grew for ever (`python -m benchmarks.soak`: 2.35M rows and 710 MiB of
    LMDB after 1.6 hours of event time at ~1k events/s, 3.6 GiB after 8). The oldest rows are a run
    at the front of the aggregation's `latest_time` (one walk); their index entries are random keys,
    deleted in key order a slice at a time, the map's pages given back after each slice, as
    _apply_latest puts them (in the soak the trimming was 4% of the daemon's samples, ~70% of what
    putting the rows costs)."""
    count_key = LATEST_ROWS + aggb[:-1]
    n = get_u64(txn, "sys", count_key) + gained
    excess = n - keep_rows
    if excess <= 0:
        txn.put("sys", count_key, U64.pack(max(n, 0)))
        return 0
    cut = len(aggb)
    doomed = []
    for k in txn.keys("latest_time", aggb):
        doomed.append((aggb + k[cut + 8:], k[cut:cut + 8], k))   # (aggregation \x00 key hash, end, row key)
        if len(doomed) == excess:
            break
    txn.read_through_map(LATEST_ROW_BYTES * len(doomed))
    doomed.sort(key=itemgetter(0, 1))
    index = txn.cursor("latest")
    for i in range(0, len(doomed), LATEST_SLICE):
        part = doomed[i:i + LATEST_SLICE]
        for base, rows in groupby(part, key=itemgetter(0)):   # a key's rows, then its count once
            gone = 0
            for _, end, row_key in rows:
                txn.delete("latest_time", row_key)
                txn.delete("latest", base + end)
                gone += 1
            if index.set_key(base):
                left = U32.unpack(index.value())[0] - gone
                if left > 0:
                    index.put(base, U32.pack(left))
                else:
                    index.delete()
        txn.read_through_map(RANDOM_TOUCH_BYTES * len(part))
    txn.put("sys", count_key, U64.pack(n - len(doomed)))
    return len(doomed)


def count_latest_rows(txn: Txn) -> dict[str, int]:
    """Each aggregation's rows in `latest_time`, stored as its count (sys LATEST_ROWS: format 7, the
    migration from older formats); returns them. Walks every row key once, at the first open."""
    counts: dict[bytes, int] = {}
    walked = 0
    for k in txn.keys("latest_time"):
        aggb = k[:k.index(b"\x00")]
        counts[aggb] = counts.get(aggb, 0) + 1
        walked += 1
        if walked % 4096 == 0:
            txn.read_through_map(LATEST_ROW_BYTES * 4096)
    for aggb, n in counts.items():
        txn.put("sys", LATEST_ROWS + aggb, U64.pack(n))
    return {a.decode(): n for a, n in counts.items()}


def migrate_latest(txn: Txn) -> int:
    """Format 2 kept the rows in `latest` (by key) and an empty time index in `latest_time`: swap them
    (see _apply_latest). Returns the rows moved."""
    moved = 0
    for k, row in list(txn.scan("latest")):
        cut = k.index(b"\x00") + 1
        aggb, h, end = k[:cut], k[cut:cut + 16], k[cut + 16:]
        txn.put("latest_time", aggb + end + h, row)
        txn.put("latest", k, b"")
        moved += 1
    return moved


def migrate_latest_counts(txn: Txn) -> int:
    """Format 3 kept each key's latest-row count in `latest_count`: move them before the key's entries
    in `latest` (see _apply_latest) and empty that table. Returns the counts moved."""
    moved = 0
    for k, v in txn.scan("latest_count"):   # written to another table: the walk is not disturbed
        txn.put("latest", k, bytes(v))
        moved += 1
    txn.clear("latest_count")
    return moved


def _apply_anomalies(txn: Txn, unit: CommitUnit, seq: int) -> None:
    if not unit.anomalies:
        return
    for i, (ts_ms, row) in enumerate(unit.anomalies):
        txn.put("anomalies", U64.pack(max(0, ts_ms)) + U64.pack(seq) + U32.pack(i), row)
    n = get_u64(txn, "sys", ANOMALY_COUNT_KEY) + len(unit.anomalies)
    if n > unit.keep_anomalies:
        for k in list(islice(txn.keys("anomalies"), n - unit.keep_anomalies)):
            txn.delete("anomalies", k)
        n = unit.keep_anomalies
    txn.put("sys", ANOMALY_COUNT_KEY, U64.pack(n))


def latest_windows(txn: Txn, aggregation: str, key: bytes | None, limit: int) -> list[bytes]:
    """Row json newest window_end first, for one key or across all keys of the aggregation."""
    aggb = _name(aggregation, "aggregation") + b"\x00"
    if key is None:
        return [v for _, v in islice(txn.scan("latest_time", aggb, reverse=True), limit)]
    h = _h(key)
    out = []
    entry = len(aggb) + len(h) + 8   # longer than the key's count, which sorts first (last here)
    for k in islice((k for k, _ in txn.scan("latest", aggb + h, reverse=True) if len(k) == entry), limit):
        row = txn.get("latest_time", aggb + k[-8:] + h)
        if row is not None:
            out.append(row)
    return out


def recent_anomalies(txn: Txn, since_ms: int | None, limit: int) -> list[bytes]:
    """Anomaly json with ts_ms >= since_ms, newest first."""
    out = []
    for k, v in txn.scan("anomalies", reverse=True):
        if len(out) >= limit or (since_ms is not None and U64.unpack_from(k)[0] < since_ms):
            break
        out.append(v)
    return out
