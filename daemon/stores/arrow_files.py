"""The only module that writes Arrow files: hive partitions, temp + fsync + rename, deterministic names.

Layout: `<root>/<table>/date=YYYY-MM-DD/part-<first_seq:016d>.arrow` (Arrow IPC *file* format).
A file appears under its final name only when complete; rewriting a chunk replaces the same
file, so a crash between the rename and the outbox delete never leaves a second copy.
Old partitions are deleted whole (`delete_partition`, for `[storage.retention]`); a past day's many
small files are merged by stores/compaction.py.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from daemon.config import COMPRESSIONS
from daemon.errors import StoreError
from daemon.stores.base import ArrowStats
from daemon.stores.retention import partition_day
from daemon.stores.schemas import time_column

NULL_PARTITION = "__HIVE_DEFAULT_PARTITION__"   # pyarrow's hive null fallback
BATCH_ROWS = 64 * 1024
WRITE_BUFFER = 256 * 1024   # bytes a file's writes are gathered into before each write(2)
TABLE_DIRS = ("windows", "events", "deadletter", "anomalies")   # the table folders under root
COMPACT_DIR = ".compact"   # under root, beside the tables: merged partitions before their swap, old ones after


def _no_crash(point: str) -> None:
    return None


class ArrowFiles:
    """Writes one outbox chunk of one table as one file per UTC date of its time column.

    Chunks of different tables may be written at once, from different threads (their folders differ);
    the caller keeps those of one table one at a time."""

    def __init__(self, root: str | os.PathLike[str], *, crash: Callable[[str], None] = _no_crash,
                 compression: str = "lz4") -> None:
        self.root = Path(root)
        self._crash = crash
        self.options = write_options(compression)
        self._known_dirs: set[Path] = set()
        self._count_lock = threading.Lock()
        self._files = 0
        self._rows = 0
        self._bytes = 0
        self._deleted = [0, 0, 0]   # partitions, files, bytes
        self._compacted = [0, 0]    # partitions, files merged
        # Arrow files and their bytes below root at the last `measure`, and files_written/bytes_written then.
        self._on_disk = (0, 0, 0, 0)

    def write(self, table: str, first_seq: int, rows: pa.Table) -> list[str]:
        """Write `rows` (all from outbox entries starting at commit `first_seq`); return the paths.

        Rows of several dates become one file per date, each named part-<first_seq>.arrow.
        """
        chunk = self.chunk(table, first_seq)
        try:
            chunk.write(rows)
        except BaseException:
            chunk.abort()
            raise
        return chunk.close()

    def chunk(self, table: str, first_seq: int) -> ChunkFiles:
        """The files of one outbox chunk, written as its entries are read (`ChunkFiles`)."""
        return ChunkFiles(self, table, first_seq)

    def _ensure_dir(self, folder: Path) -> None:
        if folder in self._known_dirs:
            return
        missing = []
        p = folder
        while not p.exists():
            missing.append(p)
            p = p.parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
            # A new folder's entry must be durable in its parent before files in it count.
            for d in reversed(missing):
                fsync_dir(d.parent)
        except OSError as exc:
            raise StoreError(f"cannot create {folder}: {exc.strerror or exc}") from exc
        self._known_dirs.add(folder)

    def cleanup_tmp(self) -> int:
        """Delete `.*.tmp` files and the compaction folder a crash left behind; return how many files.

        `.compact/` holds either a merged partition not swapped in yet (the live one is whole) or,
        after the swap, the old files the merged ones replaced: deleting it is right either way."""
        removed = 0
        compact = self.root / COMPACT_DIR
        if compact.exists():
            removed += sum(len(files) for _d, _s, files in os.walk(compact))
            shutil.rmtree(compact)
        for top in TABLE_DIRS:
            for dirpath, _dirs, files in os.walk(self.root / top):
                for fname in files:
                    if fname.startswith(".") and fname.endswith(".tmp"):
                        os.unlink(os.path.join(dirpath, fname))
                        removed += 1
        return removed

    def tables(self) -> list[str]:
        """The tables that have a folder under root: events, deadletter, anomalies, windows/<aggregation>."""
        out = [t for t in TABLE_DIRS if t != "windows" and (self.root / t).is_dir()]
        windows = self.root / "windows"
        if windows.is_dir():
            out += sorted(f"windows/{p.name}" for p in windows.iterdir() if p.is_dir())
        return out

    def partition_days(self, table: str) -> list[dt.date]:
        """The dates of `table`'s `date=` folders (not its null partition), oldest first."""
        try:
            names = os.listdir(self.root / table)
        except FileNotFoundError:
            return []
        return sorted(d for d in map(partition_day, names) if d is not None)

    def delete_partition(self, table: str, day: dt.date,
                         writers: contextlib.AbstractContextManager[Any] | None = None,
                         stop: threading.Event | None = None) -> tuple[int, int]:
        """Delete `table`'s folder of `day` with its Arrow files; (files, bytes) deleted.

        The files go one by one without holding anything up (an expired day's folder is rarely
        written); then, within `writers` (Checkpoint's table lock: this table's writers kept out), any
        file that came meanwhile and the folder itself. A crash midway leaves fewer files, and the
        next pass deletes the rest; a file that is not the daemon's keeps the folder in place. Once
        `stop` is set it stops within a thousand files, the folder left for the next pass."""
        folder = self.root / table / f"date={day.isoformat()}"
        files = size = 0
        try:
            files, size = _unlink_ours(folder, stop)
            if stop is not None and stop.is_set():
                return files, size
            with writers or contextlib.nullcontext():
                late_files, late_size = _unlink_ours(folder)
                self._known_dirs.discard(folder)
                with contextlib.suppress(OSError):   # not empty: someone else's file stays, with its folder
                    folder.rmdir()
            files, size = files + late_files, size + late_size
            fsync_dir(folder.parent)
        except FileNotFoundError:
            return files, size
        except OSError as exc:
            raise StoreError(f"cannot delete {folder}: {exc.strerror or exc}") from exc
        with self._count_lock:
            self._deleted[0] += 1
            self._deleted[1] += files
            self._deleted[2] += size
        return files, size

    def measure(self) -> tuple[int, int]:
        """Count the Arrow files below root and their bytes; one stat per file. `statistics` adds the
        files written since (a chunk rewritten after a crash is rewritten at open, before any count)."""
        files = size = 0
        for top in TABLE_DIRS:
            for dirpath, _dirs, names in os.walk(self.root / top):
                for name in names:
                    if name.endswith(".arrow"):
                        with contextlib.suppress(FileNotFoundError):   # deleted meanwhile
                            size += os.stat(os.path.join(dirpath, name)).st_size
                            files += 1
        with self._count_lock:
            self._on_disk = (files, size, self._files, self._bytes)
        return files, size

    def partition_files(self, table: str, day: dt.date) -> list[tuple[str, int]]:
        """(name, size) of the Arrow files in `table`'s folder of `day`, in commit order."""
        try:
            with os.scandir(self.root / table / f"date={day.isoformat()}") as entries:
                found = [(e.name, e.stat(follow_symlinks=False).st_size) for e in entries
                         if part_seq(e.name) is not None and e.is_file(follow_symlinks=False)]
        except FileNotFoundError:
            return []
        return sorted(found)

    def count_compacted(self, files: int) -> None:
        """A partition's `files` were merged (stores/compaction.py)."""
        with self._count_lock:
            self._compacted[0] += 1
            self._compacted[1] += files

    def _written(self, rows: int, size: int) -> None:
        with self._count_lock:
            self._files += 1
            self._rows += rows
            self._bytes += size

    def statistics(self) -> ArrowStats:
        with self._count_lock:
            partitions, files, size = self._deleted
            compacted, merged = self._compacted
            files_then, bytes_then, written_then, written_bytes_then = self._on_disk
            # What the last count found, and every file written since (deletions and merges come with a count).
            on_disk_files = files_then + self._files - written_then
            on_disk_bytes = bytes_then + self._bytes - written_bytes_then
        return ArrowStats(root=str(self.root), files_written=self._files,
                          rows_written=self._rows, bytes_written=self._bytes,
                          partitions_deleted=partitions, files_deleted=files, bytes_deleted=size,
                          partitions_compacted=compacted, files_merged=merged,
                          files_on_disk=on_disk_files, bytes_on_disk=on_disk_bytes)


class ChunkFiles:
    """One outbox chunk's files, one per UTC date, each written to a temp file as rows come
    (`write`, any number of times: a flush streams its entries, holding one at a time) and
    renamed into place, complete and fsynced, by `close`; `abort` removes the temp files."""

    def __init__(self, files: ArrowFiles, table: str, first_seq: int) -> None:
        self._files = files
        self._table = table
        self._name = part_name(first_seq)
        self._open: dict[str, tuple[Path, Any, Any]] = {}   # date -> (final path, file, IPC writer)
        self._rows: dict[str, int] = {}

    def write(self, rows: pa.Table) -> None:
        crash = self._files._crash
        try:
            for date, part in _split_by_date(rows, time_column(self._table)):
                if date not in self._open:
                    folder = self._files.root / self._table / f"date={date}"
                    self._files._ensure_dir(folder)
                    final = folder / self._name
                    sink = native_sink(_tmp(final))
                    self._open[date] = (final, sink, pa.ipc.new_file(sink, part.schema, options=self._files.options))
                    self._rows[date] = 0
                writer = self._open[date][2]
                first = self._rows[date] == 0
                for batch in part.to_batches(max_chunksize=BATCH_ROWS):
                    writer.write_batch(batch)
                    if first:   # a file's first batch is written, the file not complete
                        crash("mid_arrow_write")
                        first = False
                self._rows[date] += part.num_rows
        except OSError as exc:
            raise StoreError(f"cannot write {self._table} rows: {exc.strerror or exc}") from exc

    def close(self) -> list[str]:
        """Finish every file (in date order): fsync, rename into place, fsync its folder; the paths."""
        paths = []
        crash = self._files._crash
        for date in sorted(self._open, key=lambda d: (d == NULL_PARTITION, d)):
            final, sink, writer = self._open[date]
            try:
                writer.close()
                size = sink.tell()
                sink.close()
                fsync_file(_tmp(final))
                crash("before_arrow_rename")
                os.replace(_tmp(final), final)
                crash("after_arrow_rename")
                fsync_dir(final.parent)
            except OSError as exc:
                self.abort()   # this file too: it stays in _open until it is in place
                raise StoreError(f"cannot write {final}: {exc.strerror or exc}") from exc
            del self._open[date]
            self._files._written(self._rows[date], size)
            paths.append(str(final))
        return paths

    def abort(self) -> None:
        """Close and remove the temp files not renamed yet."""
        for final, sink, _writer in self._open.values():
            with contextlib.suppress(OSError):   # flushing what it buffered may fail as the write did
                sink.close()
            _tmp(final).unlink(missing_ok=True)
        self._open.clear()


def write_options(compression: str) -> pa.ipc.IpcWriteOptions:
    """IPC options for `compression` (one of COMPRESSIONS).

    Buffers are compressed one at a time in the writing thread, without the GIL (`use_threads=False`:
    Arrow's pool would take the second core from the CPU lane). On the soak's archived events: none
    127 B per row at 20 ns, lz4 60 B at ~200 ns, zstd (level 1) 31 B at ~800 ns of CPU (session 22).
    pyarrow.dataset, DuckDB (through pyarrow) and Polars read all three."""
    if compression not in COMPRESSIONS:
        raise ValueError(f"compression must be one of {', '.join(COMPRESSIONS)}, got {compression!r}")
    codec = None if compression == "none" else pa.Codec(compression, 1 if compression == "zstd" else None)
    return pa.ipc.IpcWriteOptions(compression=codec, use_threads=False)


def _unlink_ours(folder: Path, stop: threading.Event | None = None) -> tuple[int, int]:
    """Delete the files of `folder` that this module writes; (files, bytes). Gives up once `stop` is set."""
    files = size = 0
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.is_file(follow_symlinks=False) and _is_ours(entry.name):
                size += entry.stat(follow_symlinks=False).st_size
                os.unlink(entry.path)
                files += 1
                if files % 1000 == 0 and stop is not None and stop.is_set():
                    break
    return files, size


def part_name(first_seq: int) -> str:
    """The file name of an outbox chunk that starts at commit `first_seq`."""
    return f"part-{first_seq:016d}.arrow"


def part_seq(name: str) -> int | None:
    """The first commit seq a `part_name` stands for; None for any other name."""
    if name.startswith("part-") and name.endswith(".arrow") and name[5:-6].isdigit():
        return int(name[5:-6])
    return None


def _is_ours(name: str) -> bool:
    """A file name this module writes: a part file, or its temp file."""
    if name.startswith(".") and name.endswith(".tmp"):
        name = name[1:-4]
    return part_seq(name) is not None


def _tmp(final: Path) -> Path:
    """Where a file is written before it is renamed to `final` (cleanup_tmp removes leftovers)."""
    return final.with_name(f".{final.name}.tmp")


def native_sink(path: Path) -> pa.NativeFile:
    """A buffered stream to a new file at `path`, written by Arrow's own C++ file I/O.

    Not a Python file object: through one, every small write of the IPC writer (each buffer, its
    padding, each message's metadata) is a call into Python that takes the GIL back from the CPU
    lane. Writing 200k archived events while another thread holds the GIL in a loop (as the lane does):
    0.60 s of wall time and 0.065 s of CPU through a Python file, 0.096 s and 0.020 s through this
    (`python -m benchmarks.gil`; in http_poll +6.6%, benchmarks/README.md, session 20). A write error
    is an OSError either way, and one that the buffer holds back surfaces at `close`."""
    return pa.BufferedOutputStream(pa.OSFile(str(path), "wb"), WRITE_BUFFER)


def fsync_file(path: Path) -> None:
    """fsync a file written and closed through another descriptor (Linux syncs the file's data and
    metadata whichever descriptor asks)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _split_by_date(rows: pa.Table, column: str) -> list[tuple[str, pa.Table]]:
    """(YYYY-MM-DD, rows of that UTC date) in date order; a null time goes to the null partition."""
    if column not in rows.column_names:
        raise StoreError(f"rows have no time column {column!r}: {rows.schema}")
    days = rows.column(column).cast(pa.date32())
    unique = pc.unique(days).to_pylist()
    if len(unique) == 1:
        return [(_label(unique[0]), rows)]
    out = [(_label(day), rows.filter(pc.equal(days, pa.scalar(day, pa.date32()))))
           for day in sorted(d for d in unique if d is not None)]
    if None in unique:
        out.append((NULL_PARTITION, rows.filter(pc.is_null(days))))
    return out


def _label(day: dt.date | None) -> str:
    return NULL_PARTITION if day is None else day.isoformat()


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
