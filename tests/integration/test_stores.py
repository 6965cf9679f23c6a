"""LmdbState (lock, growth, cap, reads) and ArrowFiles (partitions, names, atomic writes) on real disks."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.dataset as ds
import pytest

from daemon.errors import StoreError, StoreFull, StoreLocked
from daemon.stores.arrow_files import ArrowFiles
from daemon.stores.lmdb_state import DBS, LmdbState
from daemon.stores.schemas import TS

ROOT = Path(__file__).resolve().parents[2]
DAY_MS = 86_400_000
KIB = 1024


def _open(tmp_path: Path, initial: int = 64 * KIB, cap: int = 64 * 2**20) -> LmdbState:
    return LmdbState.open(tmp_path / "state", lock_path=tmp_path / "LOCK", db_names=DBS,
                          map_size_initial_bytes=initial, map_size_max_bytes=cap)


def _put_many(db: LmdbState, start: int, n: int, size: int = 1000) -> None:
    def fn(txn):
        for i in range(start, start + n):
            txn.put("state", b"k%08d" % i, bytes([i % 251]) * size)
    db.write(fn)


def test_write_then_read_scan_forward_and_reverse(tmp_path):
    """Committed items are readable; prefix scans run in key order both ways and stop at the prefix."""
    db = _open(tmp_path)
    db.write(lambda txn: [txn.put("meta", k, b"v" + k) for k in (b"a1", b"a2", b"a3", b"b1", b"a\xff")])
    with db.reading() as txn:
        assert txn.get("meta", b"a2") == b"va2"
        assert [k for k, _ in txn.scan("meta", b"a")] == [b"a1", b"a2", b"a3", b"a\xff"]
        assert [k for k, _ in txn.scan("meta", b"a", reverse=True)] == [b"a\xff", b"a3", b"a2", b"a1"]
        assert [k for k, _ in txn.scan("meta", b"b", reverse=True)] == [b"b1"]
        assert [k for k, _ in txn.scan("meta", b"c", reverse=True)] == []
        assert [k for k, _ in txn.scan("meta", b"a", start=b"a2")] == [b"a2", b"a3", b"a\xff"]
    db.close()


def test_map_grows_from_64_kib_without_losing_data(tmp_path):
    """A 64 KiB map doubles as needed; every committed value is still there, also after reopen."""
    db = _open(tmp_path)
    for batch in range(20):
        _put_many(db, batch * 100, 100)
    stats = db.statistics()
    assert stats.map_grows >= 4 and stats.map_size_bytes > 64 * KIB
    db.close()
    db = _open(tmp_path)
    with db.reading() as txn:
        items = list(txn.scan("state"))
    assert len(items) == 2000
    assert all(v == bytes([int(k[1:]) % 251]) * 1000 for k, v in items)
    db.close()


def test_store_full_at_the_cap_keeps_earlier_commits(tmp_path):
    """At map_size_max the write fails loudly with StoreFull and nothing of it is half-applied."""
    db = _open(tmp_path, initial=64 * KIB, cap=256 * KIB)
    _put_many(db, 0, 20)
    with pytest.raises(StoreFull, match="map_size_max"):
        _put_many(db, 1000, 1000)
    with db.reading() as txn:
        assert len(list(txn.scan("state"))) == 20
    assert db.statistics().map_size_bytes == 256 * KIB
    db.close()


@contextmanager
def _scanning_reader(db: LmdbState) -> Iterator[tuple[list[int], list[BaseException]]]:
    """A thread that scans `state` in read transactions (and reads the statistics) until the block
    ends: the entries each scan saw, and any error it met."""
    stop = threading.Event()
    seen: list[int] = []
    errors: list[BaseException] = []

    def reader():
        while not stop.is_set():
            try:
                with db.reading() as txn:
                    seen.append(sum(1 for _ in txn.scan("state")))
                db.statistics()
            except BaseException as exc:  # noqa: BLE001 - surfaced by the caller
                errors.append(exc)
                return

    t = threading.Thread(target=reader)
    t.start()
    try:
        yield seen, errors
    finally:
        stop.set()
        t.join()


def test_readers_run_while_the_map_grows(tmp_path):
    """Concurrent read transactions in another thread survive map growth (the gate)."""
    db = _open(tmp_path)
    with _scanning_reader(db) as (_, errors):
        for batch in range(15):
            _put_many(db, batch * 100, 100)
    assert not errors
    assert db.statistics().map_grows >= 3
    db.close()


def test_recycling_the_environment_keeps_data_and_lets_readers_wait(tmp_path):
    """Recycles between writes, with a reader thread scanning throughout (the gate), lose nothing;
    the process's mapped LMDB pages drop with each recycle, and the statistics count them."""
    db = _open(tmp_path, initial=8 * 2**20)
    with _scanning_reader(db) as (seen, errors):
        for batch in range(10):
            _put_many(db, batch * 100, 100)
            db.recycle()
        deadline = time.monotonic() + 10
        while not errors and (not seen or seen[-1] != 1000) and time.monotonic() < deadline:
            time.sleep(0.01)   # a scan after the last recycle sees the last write
    assert not errors and seen == sorted(seen) and seen[-1] == 1000
    assert db.statistics().recycles == 10

    def mapped_kib() -> int:
        rss = 0
        with open("/proc/self/smaps") as f:
            inside = False
            for line in f:
                if "-" in line.split(" ", 1)[0] and len(line.split()) >= 5:
                    inside = line.rstrip().endswith("data.mdb") and str(tmp_path) in line
                elif inside and line.startswith("Rss:"):
                    rss += int(line.split()[1])
        return rss

    with db.reading() as txn:
        assert sum(len(v) for _, v in txn.scan("state")) == 1000 * 1000
    assert mapped_kib() >= 900     # the values were read through the map
    db.recycle()
    assert mapped_kib() < 100
    db.close()


def test_second_open_in_process_is_locked(tmp_path):
    """A second open of the same data_dir raises StoreLocked naming the lock path; close releases it."""
    db = _open(tmp_path)
    with pytest.raises(StoreLocked, match=str(tmp_path / "LOCK")):
        _open(tmp_path)
    db.close()
    _open(tmp_path).close()


def test_second_process_is_locked(tmp_path):
    """Another process opening the same data_dir gets StoreLocked with the holder's pid."""
    db = _open(tmp_path)
    code = (
        "import sys; from pathlib import Path\n"
        "from daemon.errors import StoreLocked\n"
        "from daemon.stores.lmdb_state import DBS, LmdbState\n"
        "p = Path(sys.argv[1])\n"
        "try:\n"
        "    LmdbState.open(p / 'state', lock_path=p / 'LOCK', db_names=DBS,\n"
        "                   map_size_initial_bytes=65536, map_size_max_bytes=2**20)\n"
        "except StoreLocked as exc:\n"
        "    print(exc); sys.exit(3)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=ROOT, capture_output=True,
                          text=True, timeout=30, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 3, proc.stderr
    assert str(tmp_path / "LOCK") in proc.stdout and f"pid {os.getpid()}" in proc.stdout
    db.close()


def test_closed_store_refuses_work(tmp_path):
    """After close, reads and writes raise StoreError instead of touching a closed environment."""
    db = _open(tmp_path)
    db.close()
    db.close()
    with pytest.raises(StoreError):
        db.write(lambda txn: None)
    with pytest.raises(StoreError):
        with db.reading():
            pass


def _rows(ts_ms: list[int]) -> pa.Table:
    return pa.table({"ts": pa.array(ts_ms, TS), "n": pa.array(range(len(ts_ms)), pa.int64())})


def test_arrow_rows_split_by_utc_date_with_one_name(tmp_path):
    """Rows of two UTC dates become two files with the same deterministic part-<seq> name."""
    files = ArrowFiles(tmp_path)
    base = 19_000 * DAY_MS
    paths = files.write("events", 7, _rows([base - 1, base, base + 5, base - 10]))
    rel = sorted(str(Path(p).relative_to(tmp_path)) for p in paths)
    assert rel == ["events/date=2022-01-07/part-0000000000000007.arrow",
                   "events/date=2022-01-08/part-0000000000000007.arrow"]
    t = ds.dataset(tmp_path / "events", format="ipc", partitioning="hive").to_table()
    assert sorted(t.column("n").to_pylist()) == [0, 1, 2, 3]
    assert files.statistics().files_written == 2 and files.statistics().rows_written == 4
    assert not list(tmp_path.rglob("*.tmp"))


def test_arrow_rewrite_replaces_the_same_file(tmp_path):
    """Writing the same chunk again replaces the file instead of adding a copy."""
    files = ArrowFiles(tmp_path)
    files.write("deadletter", 1, _rows([5]).rename_columns(["received_at", "n"]))
    files.write("deadletter", 1, _rows([5, 6]).rename_columns(["received_at", "n"]))
    found = list((tmp_path / "deadletter").rglob("*.arrow"))
    assert len(found) == 1
    assert pa.ipc.open_file(found[0]).read_all().num_rows == 2


def test_arrow_write_error_is_a_store_error_and_leaves_no_partial_file(tmp_path):
    """A file that cannot be written (here its temp name is taken by a folder) fails the chunk with a
    StoreError naming the table; the chunk's other file, already begun, is removed with it."""
    files = ArrowFiles(tmp_path)
    base = 19_000 * DAY_MS
    blocked = tmp_path / "events" / "date=2022-01-08" / ".part-0000000000000003.arrow.tmp"
    blocked.mkdir(parents=True)
    with pytest.raises(StoreError, match="cannot write events rows"):
        files.write("events", 3, _rows([base - 1, base]))
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []
    assert files.statistics().files_written == 0
    blocked.rmdir()
    assert len(files.write("events", 3, _rows([base - 1, base]))) == 2


def test_cleanup_tmp_removes_only_leftovers(tmp_path):
    """cleanup_tmp deletes `.x.tmp` files in table folders and nothing else."""
    files = ArrowFiles(tmp_path)
    files.write("events", 1, _rows([0]))
    leftover = tmp_path / "events" / "date=1970-01-01" / ".part-0000000000000002.arrow.tmp"
    leftover.write_bytes(b"partial")
    (tmp_path / "state").mkdir()
    keep = tmp_path / "state" / ".other.tmp"
    keep.write_bytes(b"")
    assert files.cleanup_tmp() == 1
    assert not leftover.exists() and keep.exists()
    assert len(list((tmp_path / "events").rglob("*.arrow"))) == 1


def test_duckdb_reads_the_hive_dataset(tmp_path):
    """DuckDB queries the files through a pyarrow dataset (it has no built-in Arrow IPC file reader)."""
    files = ArrowFiles(tmp_path)
    base = 19_000 * DAY_MS
    files.write("windows/sales", 1, _rows([base, base + 1]).rename_columns(["window_start", "n"]))
    files.write("windows/sales", 2, _rows([base + DAY_MS]).rename_columns(["window_start", "n"]))
    dset = ds.dataset(tmp_path / "windows" / "sales", format="ipc", partitioning="hive")
    con = duckdb.connect()
    con.register("w", dset)
    rows = con.sql("SELECT date, count(*) AS c, sum(n) AS s FROM w GROUP BY date ORDER BY date").fetchall()
    assert rows == [("2022-01-08", 2, 1), ("2022-01-09", 1, 0)]


@pytest.mark.parametrize("compression", ["lz4", "zstd", "none"])
def test_arrow_compression_reads_back_the_same_rows_in_pyarrow_and_duckdb(tmp_path, compression):
    """storage.compression compresses the files' buffers; pyarrow.dataset and DuckDB read the rows back
    unchanged, and repetitive columns (as archived events are) take a fraction of the bytes."""
    files = ArrowFiles(tmp_path, compression=compression)
    base = 19_000 * DAY_MS
    n = 20_000
    rows = pa.table({"ts": pa.array([base + i for i in range(n)], TS),
                     "category": pa.array([f"category-{i % 7}" for i in range(n)]),
                     "n": pa.array(range(n), pa.int64())})
    (path,) = files.write("events", 1, rows)
    back = ds.dataset(tmp_path / "events", format="ipc", partitioning="hive").to_table().drop_columns(["date"])
    assert back.equals(rows)
    dset = ds.dataset(tmp_path / "events", format="ipc", partitioning="hive")
    assert duckdb.sql("SELECT count(*), sum(n), count(DISTINCT category) FROM dset").fetchall() == [(n, n * (n - 1) // 2, 7)]
    size = os.path.getsize(path)
    assert files.statistics().bytes_written == size
    if compression == "none":
        assert size > rows.nbytes
    else:
        assert size < rows.nbytes / 2


def test_unknown_arrow_compression_is_refused(tmp_path):
    with pytest.raises(ValueError, match="compression must be one of lz4, zstd, none"):
        ArrowFiles(tmp_path, compression="snappy")


def test_files_of_different_compressions_read_as_one_dataset(tmp_path):
    """A data_dir written before storage.compression changed (uncompressed files beside lz4 ones) reads as one table."""
    base = 19_000 * DAY_MS
    ArrowFiles(tmp_path, compression="none").write("events", 1, _rows([base, base + 1]))
    ArrowFiles(tmp_path, compression="lz4").write("events", 2, _rows([base + 2]))
    ArrowFiles(tmp_path, compression="zstd").write("events", 3, _rows([base + 3]))
    t = ds.dataset(tmp_path / "events", format="ipc", partitioning="hive").to_table()
    assert sorted(t.column("ts").cast(pa.int64()).to_pylist()) == [base, base + 1, base + 2, base + 3]


def test_files_on_disk_are_counted_and_kept_current_by_what_is_written(tmp_path):
    base = 19_000 * DAY_MS
    ArrowFiles(tmp_path).write("events", 1, _rows([base, base - 1]))    # two files, before this process
    files = ArrowFiles(tmp_path)
    assert files.statistics().files_on_disk == 0      # nothing counted yet
    assert files.measure() == (2, sum(p.stat().st_size for p in tmp_path.rglob("*.arrow")))
    files.write("events", 2, _rows([base]))
    st = files.statistics()
    assert st.files_on_disk == 3 and st.bytes_on_disk == sum(p.stat().st_size for p in tmp_path.rglob("*.arrow"))
