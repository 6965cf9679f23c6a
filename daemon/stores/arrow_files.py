"""The only module that writes Arrow files: hive partitions, temp + fsync + rename, deterministic names.

Layout: `<root>/<table>/date=YYYY-MM-DD/part-<first_seq:016d>.arrow` (Arrow IPC *file* format).
A file appears under its final name only when complete; rewriting a chunk replaces the same
file, so a crash between the rename and the outbox delete never leaves a second copy.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from daemon.errors import StoreError
from daemon.stores.base import ArrowStats
from daemon.stores.schemas import time_column

NULL_PARTITION = "__HIVE_DEFAULT_PARTITION__"   # pyarrow's hive null fallback
BATCH_ROWS = 64 * 1024
TABLE_DIRS = ("windows", "events", "deadletter", "anomalies")   # the only folders written under root


def _no_crash(point: str) -> None:
    return None


class ArrowFiles:
    """Writes one outbox chunk of one table as one file per UTC date of its time column."""

    def __init__(self, root: str | os.PathLike[str], *, crash: Callable[[str], None] = _no_crash) -> None:
        self.root = Path(root)
        self._crash = crash
        self._known_dirs: set[Path] = set()
        self._files = 0
        self._rows = 0
        self._bytes = 0

    def write(self, table: str, first_seq: int, rows: pa.Table) -> list[str]:
        """Write `rows` (all from outbox entries starting at commit `first_seq`); return the paths.

        Rows of several dates become one file per date, each named part-<first_seq>.arrow.
        """
        if rows.num_rows == 0:
            return []
        name = f"part-{first_seq:016d}.arrow"
        paths = []
        for date, part in _split_by_date(rows, time_column(table)):
            folder = self.root / table / f"date={date}"
            self._ensure_dir(folder)
            paths.append(str(self._write_file(folder / name, part)))
        return paths

    def _write_file(self, final: Path, rows: pa.Table) -> Path:
        tmp = final.with_name(f".{final.name}.tmp")
        try:
            with open(tmp, "wb") as f:
                with pa.ipc.new_file(f, rows.schema) as writer:
                    for i, batch in enumerate(rows.to_batches(max_chunksize=BATCH_ROWS)):
                        writer.write_batch(batch)
                        if i == 0:
                            self._crash("mid_arrow_write")
                f.flush()
                os.fsync(f.fileno())
                size = f.tell()
            self._crash("before_arrow_rename")
            os.replace(tmp, final)
            self._crash("after_arrow_rename")
            _fsync_dir(final.parent)
        except OSError as exc:
            raise StoreError(f"cannot write {final}: {exc.strerror or exc}") from exc
        self._files += 1
        self._rows += rows.num_rows
        self._bytes += size
        return final

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
                _fsync_dir(d.parent)
        except OSError as exc:
            raise StoreError(f"cannot create {folder}: {exc.strerror or exc}") from exc
        self._known_dirs.add(folder)

    def cleanup_tmp(self) -> int:
        """Delete `.*.tmp` files a crash left behind; return how many."""
        removed = 0
        for top in TABLE_DIRS:
            for dirpath, _dirs, files in os.walk(self.root / top):
                for fname in files:
                    if fname.startswith(".") and fname.endswith(".tmp"):
                        os.unlink(os.path.join(dirpath, fname))
                        removed += 1
        return removed

    def statistics(self) -> ArrowStats:
        return ArrowStats(root=str(self.root), files_written=self._files,
                          rows_written=self._rows, bytes_written=self._bytes)


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


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
