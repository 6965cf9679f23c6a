"""Merging a day's small Arrow files into a few, without a reader ever seeing both or neither.

Window rows reach their file at every commit that closes some (a session aggregation: nearly every
commit, up to 432k files a day), events every flush_interval. A day's folder is merged by writing the
merged files into a folder of the same name under `<root>/.compact/` (`stage`), exchanging the two
folders in one `renameat2(RENAME_EXCHANGE)` (`swap`; files flushed into the live folder meanwhile are
linked into the merged one first), then deleting what the staged folder holds after it, the old files
(`discard`). A crash leaves `.compact/` holding either the merged files not swapped in or the old files
swapped out, so ArrowFiles.cleanup_tmp deletes it at the next open.
Checkpoint.compact_archive decides which folders (past days', and today's as it fills) and holds the
table's flush lock over the swap.
"""

from __future__ import annotations

import contextlib
import ctypes
import datetime as dt
import errno
import functools
import os
import shutil
import threading
from pathlib import Path
from typing import Any

import pyarrow as pa

from daemon.errors import StoreError
from daemon.stores.arrow_files import BATCH_ROWS, COMPACT_DIR, ArrowFiles, fsync_dir, fsync_file, native_sink, part_seq

COMPACT_FILE_BYTES = 64 * 2**20   # a merged file takes input files until they reach this size
COMPACT_SMALL_BYTES = COMPACT_FILE_BYTES // 4   # a file this big is left as it is (linked, not rewritten)
# A day not past yet (today's) is merged once it holds this many small files, as it fills: a folder
# then holds at most about this many plus what one archive pass interval writes, and its merged files
# grow until they are big (linked from then on), so a pass rewrites at most ~16 MiB it merged before.
COMPACT_LIVE_FILES = 1_000
_READ_OPTIONS = pa.ipc.IpcReadOptions(use_threads=False)   # decompressed in this thread, as it writes


class Compactor:
    """Merges the folders of one ArrowFiles root."""

    def __init__(self, files: ArrowFiles) -> None:
        self.files = files
        self.small_file_bytes = COMPACT_SMALL_BYTES   # files under this size are merged
        self.merged_file_bytes = COMPACT_FILE_BYTES
        self.live_min_files = COMPACT_LIVE_FILES   # a day not past yet is merged once it has this many small files
        self.can_exchange = True   # False once the filesystem refused RENAME_EXCHANGE: no compaction then

    def stage(self, table: str, day: dt.date, names: list[str], stop: threading.Event | None = None) -> Path | None:
        """Write the rows of `names` (files of `table`'s `day`, in commit order) into fewer files in a
        folder under `.compact/`, complete and fsynced; that folder, or None if `stop` was set first.

        A merged file takes consecutive small input files of one schema until they reach
        `merged_file_bytes`, and is named after the first of them, so the names stay in commit order
        and never meet a newer file's. A file of `small_file_bytes` or more (a merged one, or a flush
        of many events) is hard-linked into the new folder as it is: merging a day again after late
        files came rewrites only those. The inputs are only read, one at a time, so this needs no
        lock: a file is never changed once in place, only replaced by the same rows."""
        root = self.files.root
        src = root / table / f"date={day.isoformat()}"
        staged = root / COMPACT_DIR / table / f"date={day.isoformat()}"
        shutil.rmtree(staged, ignore_errors=True)
        out: _MergedFile | None = None
        try:
            staged.mkdir(parents=True)
            for name in names:
                if stop is not None and stop.is_set():
                    if out is not None:
                        out.abandon()
                    self.discard(staged)
                    return None
                path = src / name
                size = path.stat().st_size
                if size >= self.small_file_bytes:
                    if out is not None:
                        out.close()
                        out = None
                    os.link(path, staged / name)
                    continue
                with pa.OSFile(str(path)) as source:
                    reader = pa.ipc.open_file(source, options=_READ_OPTIONS)
                    if out is not None and (out.taken + size > self.merged_file_bytes
                                            or not reader.schema.equals(out.schema, check_metadata=True)):
                        out.close()
                        out = None
                    if out is None:
                        out = _MergedFile(staged / name, reader.schema, self.files.options)
                    for i in range(reader.num_record_batches):
                        out.add(reader.get_batch(i))
                out.taken += size
            if out is not None:
                out.close()
                out = None
            fsync_dir(staged)
            fsync_dir(staged.parent)
        except (OSError, pa.ArrowInvalid) as exc:
            if out is not None:
                out.abandon()
            self.discard(staged)
            raise StoreError(f"cannot compact {src}: {getattr(exc, 'strerror', None) or exc}") from exc
        return staged

    def swap(self, table: str, day: dt.date, staged: Path, names: list[str]) -> bool:
        """Exchange `table`'s folder of `day` with `staged` in one rename, if it still holds the files
        `names` and otherwise only part files newer than all of them; those are hard-linked into
        `staged` first, so the swap keeps them (the live day's folder gets a file every few commits
        while its merge is written). Else False: an input is gone, or a file that is not the daemon's
        is there, which the swap would take away with the old files. After it `staged` holds the old
        files (`discard`). The caller keeps this table's writers out meanwhile."""
        live = self.files.root / table / f"date={day.isoformat()}"
        try:
            listing = sorted(os.listdir(live))
        except FileNotFoundError:
            return False
        newer = listing[len(names):]
        if listing[:len(names)] != names or not all(part_seq(n) is not None for n in newer):
            return False
        try:
            for name in newer:   # part names sort in commit order: these came after the listing
                os.link(live / name, staged / name)
            if newer:
                fsync_dir(staged)
                self.files._crash("after_compaction_linked")
        except OSError as exc:
            raise StoreError(f"cannot link {table}'s newer files into the compacted {live}: {exc.strerror or exc}") from exc
        try:
            _exchange(live, staged)
            fsync_dir(live.parent)
            fsync_dir(staged.parent)
        except OSError as exc:
            if exc.errno in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                self.can_exchange = False
                raise StoreError(f"cannot swap in the compacted {live}: this filesystem cannot exchange two "
                                 "folders (renameat2 RENAME_EXCHANGE); compaction is off until the next start") from exc
            raise StoreError(f"cannot swap in the compacted {live}: {exc.strerror or exc}") from exc
        self.files.count_compacted(len(names))
        return True

    def discard(self, staged: Path) -> None:
        """Delete a staged folder (merged files not swapped in, or the old files swapped out) and the
        folders above it that it leaves empty, `.compact/` included."""
        shutil.rmtree(staged, ignore_errors=True)
        top = self.files.root / COMPACT_DIR
        for folder in staged.parents:
            if not folder.is_relative_to(top):
                break
            try:
                folder.rmdir()
            except OSError:
                break


class _MergedFile:
    """One file a compaction writes: the input files' batches gathered into batches of BATCH_ROWS
    (the inputs' are as small as a commit's closes, a few rows each), then fsynced."""

    def __init__(self, path: Path, schema: pa.Schema, options: pa.ipc.IpcWriteOptions) -> None:
        self.path = path
        self.schema = schema
        self.taken = 0          # input bytes merged into it
        self._sink = native_sink(path)
        self._writer = pa.ipc.new_file(self._sink, schema, options=options)
        self._pending: list[pa.RecordBatch] = []
        self._rows = 0

    def add(self, batch: pa.RecordBatch) -> None:
        self._pending.append(batch)
        self._rows += batch.num_rows
        if self._rows >= BATCH_ROWS:
            self._write_pending()

    def _write_pending(self) -> None:
        if self._pending:
            table = pa.Table.from_batches(self._pending, self.schema).combine_chunks()
            for batch in table.to_batches(max_chunksize=BATCH_ROWS):
                self._writer.write_batch(batch)
        self._pending, self._rows = [], 0

    def close(self) -> None:
        self._write_pending()
        self._writer.close()
        self._sink.close()
        fsync_file(self.path)

    def abandon(self) -> None:
        with contextlib.suppress(OSError, pa.ArrowException):
            self._writer.close()
        with contextlib.suppress(OSError):
            self._sink.close()



_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


@functools.cache
def _renameat2() -> Any:
    fn = ctypes.CDLL(None, use_errno=True).renameat2
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return fn


def _exchange(a: Path, b: Path) -> None:
    """Swap two paths atomically (Linux renameat2 RENAME_EXCHANGE): a reader sees one or the other."""
    if _renameat2()(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(a))
