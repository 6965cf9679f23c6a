"""The commit protocol on real LMDB and Arrow files: round trips, outbox flushes, crash recovery."""

from __future__ import annotations

import datetime
import hashlib
import os
import subprocess
import sys
import threading
from pathlib import Path

import anyio
import duckdb
import orjson
import pyarrow as pa
import pyarrow.dataset as ds
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.config import RetentionConfig, StorageConfig
from daemon.errors import StoreError, StoreLocked
from daemon.events import EventBatch
from daemon.stores import lmdb_state as layout
from daemon.stores import segments
from daemon.stores import checkpoint as checkpoint_module
from daemon.stores.checkpoint import Checkpoint, CommitUnit, CrashPoints
from daemon.stores.schemas import DEADLETTER, TS, events_to_record_batch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
DAY_MS = 86_400_000
MIDNIGHT_MS = 19_000 * DAY_MS       # 2022-01-08T00:00Z


def _cfg(data_dir: Path, initial: int = 64 * 1024, cap: int = 256 * 2**20) -> StorageConfig:
    return StorageConfig(data_dir=str(data_dir), map_size_initial_bytes=initial, map_size_max_bytes=cap)


def _events(i: int) -> pa.RecordBatch:
    """Four events of commit i, two on each side of a UTC midnight."""
    b = EventBatch("shop")
    for j in range(4):
        b.event_id.append(f"e{i}-{j}")
        b.ts.append(MIDNIGHT_MS + (j - 2) * 1000 + i)
        b.type.append("view")
        b.user_id.append(f"u{j}")
        b.session_id.append(None)
        b.item_id.append(f"item{i}")
        b.category.append(None)
        b.price.append(None)
        b.quantity.append(1)
        b.revenue.append(0.0)
    return events_to_record_batch(b, received_ms=MIDNIGHT_MS + 10_000)


def _unit(i: int) -> CommitUnit:
    return CommitUnit(
        state={"agg:t": {b"k%d" % i: b"v%d" % i}},
        positions={"shop": b"cursor-%d" % i},
        dedupe_ids=[b"e%d" % i], dedupe_expiry_ms=[1_000 + i],
        meta={"watermark": b"%d" % i},
        rows={"events": _events(i)},
    )


def run_workload(data_dir: str, start: int, stop: int, environ: dict[str, str] | None = None) -> None:
    """Commit units start..stop-1, flushing after each; the crash tests run this in a child."""
    cp = Checkpoint.open(_cfg(Path(data_dir)), environ=environ)
    for i in range(start, stop):
        cp.commit(_unit(i))
        cp.flush()
    cp.close()


def _all_chunks(store: Checkpoint, namespace: str, max_bytes: int) -> list[tuple[bytes, bytes]]:
    """Every record of a namespace, read chunk by chunk (Checkpoint.scan_chunk) as a sync reads them."""
    got, after = [], None
    while True:
        items, after = store.scan_chunk(namespace, after, max_bytes)
        got += items
        if after is None:
            return got


def _snapshot(data_dir: Path) -> dict[str, list[dict]]:
    """Relative path → rows, for every Arrow file below data_dir."""
    return {str(p.relative_to(data_dir)): pa.ipc.open_file(p).read_all().to_pylist()
            for p in sorted(data_dir.rglob("*.arrow"))}


def test_commit_restore_round_trip(tmp_path):
    """State, positions, meta and dedupe ids come back after reopen; None deletes a key."""
    cp = Checkpoint.open(_cfg(tmp_path), environ={})
    long_key, long_id = b"x" * 2000, ("é" * 128).encode()    # both beyond LMDB's 511-byte keys
    assert cp.commit(CommitUnit(state={"agg:a": {b"k1": b"1", b"k2": b"2", long_key: b"L"}, "ma:a": {b"m": b"3"}},
                                positions={"orders": b"c1"}, meta={"watermark": b"100"},
                                dedupe_ids=[b"id1", b"id2", long_id],
                                dedupe_expiry_ms=[500, 900, 950])) == 1
    assert cp.commit(CommitUnit(state={"agg:a": {b"k1": None}}, positions={"orders": b"c2"},
                                dedupe_expire_before_ms=600)) == 2
    assert cp.get("agg:a", long_key) == b"L" and cp.get("agg:a", b"k1") is None
    assert cp.scan("agg:a", b"x") == [(long_key, b"L")]
    cp.close()
    cp = Checkpoint.open(_cfg(tmp_path), environ={})
    r = cp.restore()
    assert r.commit_seq == 2
    assert dict(r.state["agg:a"]) == {b"k2": b"2", long_key: b"L"} and r.state["ma:a"] == [(b"m", b"3")]
    assert r.positions == {"orders": b"c2"} and r.meta == {"watermark": b"100"}
    assert sorted(r.dedupe) == [(b"id2", 900), (long_id, 950)]
    cp.close()


def test_fresh_store_restores_empty(tmp_path):
    """A new data_dir restores commit seq 0 and nothing else."""
    cp = Checkpoint.open(_cfg(tmp_path), environ={})
    r = cp.restore()
    assert (r.commit_seq, dict(r.meta), dict(r.positions), dict(r.state), r.dedupe) == (0, {}, {}, {}, [])
    cp.close()


def test_map_growth_during_commits_loses_nothing(tmp_path):
    """Commits far bigger than a 64 KiB initial map all survive (the map grows between retries)."""
    cp = Checkpoint.open(_cfg(tmp_path), environ={})
    for i in range(30):
        cp.commit(CommitUnit(state={"agg:big": {b"%04d" % i: bytes([i]) * 20_000}}, rows={"events": _events(i)}))
    assert cp.statistics().lmdb.map_grows >= 3
    assert cp.pending_rows() == {"events": 120}
    cp.close()
    cp = Checkpoint.open(_cfg(tmp_path), environ={})     # reopening flushes the outbox
    assert [v for _, v in cp.scan("agg:big")] == [bytes([i]) * 20_000 for i in range(30)]
    assert cp.pending_rows() == {}
    assert ds.dataset(tmp_path / "events", format="ipc", partitioning="hive").count_rows() == 120
    cp.close()


def test_second_checkpoint_on_same_data_dir_is_locked(tmp_path):
    """Opening a Checkpoint twice on one data_dir raises StoreLocked."""
    cp = Checkpoint.open(_cfg(tmp_path), environ={})
    with pytest.raises(StoreLocked, match="LOCK"):
        Checkpoint.open(_cfg(tmp_path), environ={})
    cp.close()


def test_outbox_flushes_to_deterministic_files(tmp_path):
    """Flushed rows land in date partitions named after the first commit seq; a second flush is a no-op."""
    cp = Checkpoint.open(_cfg(tmp_path), environ={})
    cp.commit(_unit(1))
    cp.commit(_unit(2))
    cp.commit(CommitUnit(meta={"x": b"1"}))
    assert cp.pending_rows() == {"events": 8}
    assert cp.flush(["deadletter"]) == 0
    assert cp.flush(["events"]) == 8
    assert cp.flush() == 0 and cp.pending_rows() == {}
    assert sorted(_snapshot(tmp_path)) == ["events/date=2022-01-07/part-0000000000000001.arrow",
                                           "events/date=2022-01-08/part-0000000000000001.arrow"]
    stats = cp.statistics()
    assert stats.commit_seq == 3 and stats.commits == 3 and stats.arrow.rows_written == 8
    assert stats.flushes == 1 and dict(stats.outbox_rows) == {}
    cp.close()


def test_retention_deletes_whole_expired_partitions_and_writes_go_on(tmp_path):
    """A sweep deletes the date= folders older than the table's retention, counts them, leaves the
    others and other tables; a file that is not the daemon's keeps its folder; rows for a deleted
    date that come later get their folder back."""
    cp = Checkpoint.open(_cfg(tmp_path), environ={})
    cp.commit(_unit(1))
    cp.commit(CommitUnit(rows={"deadletter": _deadletter(MIDNIGHT_MS - 5_000)}))
    cp.flush()
    assert sorted(_snapshot(tmp_path)) == ["deadletter/date=2022-01-07/part-0000000000000002.arrow",
                                           "events/date=2022-01-07/part-0000000000000001.arrow",
                                           "events/date=2022-01-08/part-0000000000000001.arrow"]
    size = (tmp_path / "events" / "date=2022-01-07" / "part-0000000000000001.arrow").stat().st_size
    keep = RetentionConfig(events_ms=DAY_MS)
    assert cp.apply_retention(keep, MIDNIGHT_MS + DAY_MS - 1) == []        # 2022-01-07 ended less than a day ago
    deleted = cp.apply_retention(keep, MIDNIGHT_MS + DAY_MS)
    assert [(d.table, d.date, d.files, d.bytes) for d in deleted] == [("events", "2022-01-07", 1, size)]
    assert sorted(_snapshot(tmp_path)) == ["deadletter/date=2022-01-07/part-0000000000000002.arrow",
                                           "events/date=2022-01-08/part-0000000000000001.arrow"]
    assert not (tmp_path / "events" / "date=2022-01-07").exists()
    arrow = cp.statistics().arrow
    assert (arrow.partitions_deleted, arrow.files_deleted, arrow.bytes_deleted) == (1, 1, size)

    cp.commit(_unit(3))          # rows for the deleted date again: its folder is made anew
    cp.flush()
    assert "events/date=2022-01-07/part-0000000000000003.arrow" in _snapshot(tmp_path)
    notes = tmp_path / "events" / "date=2022-01-07" / "NOTES.txt"
    notes.write_text("an operator's file")
    deleted = cp.apply_retention(keep, MIDNIGHT_MS + 3 * DAY_MS)
    assert [(d.table, d.date, d.files) for d in deleted] == [("events", "2022-01-07", 1), ("events", "2022-01-08", 2)]
    assert [p.name for p in (tmp_path / "events").rglob("*") if p.is_file()] == ["NOTES.txt"]
    assert "deadletter/date=2022-01-07/part-0000000000000002.arrow" in _snapshot(tmp_path)   # not covered
    cp.close()


def test_a_stopped_retention_pass_leaves_the_rest_for_the_next(tmp_path):
    """At shutdown a deletion stops within a thousand files; the folder stays until the next pass."""
    cp = Checkpoint.open(_cfg(tmp_path), environ={})
    cp.commit(_unit(1))
    cp.flush()
    folder = tmp_path / "events" / "date=2022-01-07"
    for i in range(2, 2502):     # 2,500 more files of the daemon's naming (copies of its own)
        (folder / f"part-{i:016d}.arrow").write_bytes((folder / "part-0000000000000001.arrow").read_bytes())
    stop = threading.Event()
    stop.set()
    assert cp.apply_retention(RetentionConfig(events_ms=DAY_MS), MIDNIGHT_MS + 3 * DAY_MS, stop) == []
    deleted = cp._files.delete_partition("events", datetime.date(2022, 1, 7), stop=stop)
    assert deleted[0] == 1000 and len(os.listdir(folder)) == 1501
    assert [(d.date, d.files) for d in cp.apply_retention(RetentionConfig(events_ms=DAY_MS), MIDNIGHT_MS + 3 * DAY_MS)] == [
        ("2022-01-07", 1501), ("2022-01-08", 1)]
    assert not folder.exists()
    cp.close()


def test_a_failed_retention_sweep_is_logged_and_the_next_one_goes_on(tmp_path):
    """A partition that cannot be deleted (here its date= name is a file, not a folder) fails the sweep
    with a logged `retention_failed`, keeping what it deleted before; once it is gone, the next sweep
    deletes the rest, each partition logged."""
    from daemon.runtime.archive import ArchiveUpkeep

    cp = Checkpoint.open(_cfg(tmp_path), environ={})
    cp.commit(_unit(1))
    cp.flush()
    blocker = tmp_path / "events" / "date=2022-01-06"
    blocker.write_bytes(b"not a folder")
    log = _ListLog()
    sweeper = ArchiveUpkeep(cp, RetentionConfig(events_ms=DAY_MS), lambda: MIDNIGHT_MS + 3 * DAY_MS, log)
    assert anyio.run(sweeper.sweep) == []
    [(event, fields)] = log.events
    assert event == "retention_failed" and fields["error"].startswith(f"cannot delete {blocker}: ")
    assert sorted(_snapshot(tmp_path)) == ["events/date=2022-01-07/part-0000000000000001.arrow",
                                           "events/date=2022-01-08/part-0000000000000001.arrow"]
    blocker.unlink()
    log.events.clear()
    deleted = anyio.run(sweeper.sweep)
    assert [d.date for d in deleted] == ["2022-01-07", "2022-01-08"] and _snapshot(tmp_path) == {}
    assert [(e, kw["table"], kw["date"], kw["files"]) for e, kw in log.events] == [
        ("retention_deleted", "events", "2022-01-07", 1), ("retention_deleted", "events", "2022-01-08", 1)]
    cp.close()


def _deadletter(received_ms: int) -> pa.Table:
    return pa.table({f.name: pa.array([received_ms] if f.name == "received_at" else [None], f.type)
                     for f in DEADLETTER}, schema=DEADLETTER)


def test_files_readable_by_pyarrow_dataset_and_duckdb(tmp_path):
    """The events table reads back with hive partitioning in pyarrow and in DuckDB."""
    run_workload(str(tmp_path), 1, 4, environ={})
    dset = ds.dataset(tmp_path / "events", format="ipc", partitioning="hive")
    t = dset.to_table()
    assert t.num_rows == 12 and t.schema.field("ts").type == TS
    assert sorted(set(t.column("date").to_pylist())) == ["2022-01-07", "2022-01-08"]
    rows = duckdb.sql("SELECT date, count(*) FROM dset GROUP BY date ORDER BY date").fetchall()
    assert rows == [("2022-01-07", 6), ("2022-01-08", 6)]


def test_schema_change_starts_a_new_file(tmp_path):
    """Outbox entries with different schemas are never concatenated: the change starts the next file."""
    cp = Checkpoint.open(_cfg(tmp_path), environ={})
    a = pa.table({"window_start": pa.array([0], TS), "n": [1]})
    b = pa.table({"window_start": pa.array([0], TS), "n": [2], "m": [3.0]})
    cp.commit(CommitUnit(rows={"windows/agg": a}))
    cp.commit(CommitUnit(rows={"windows/agg": b}))
    assert cp.flush() == 2
    assert sorted(_snapshot(tmp_path)) == ["windows/agg/date=1970-01-01/part-0000000000000001.arrow",
                                           "windows/agg/date=1970-01-01/part-0000000000000002.arrow"]
    cp.close()


def test_file_size_bound_splits_chunks(tmp_path):
    """max_file_rows cuts a long outbox into several files, each named after its first commit."""
    cp = Checkpoint.open(_cfg(tmp_path), environ={}, max_file_rows=6)
    for i in range(1, 5):
        cp.commit(CommitUnit(rows={"anomalies": pa.table({"window_start": pa.array([0] * 4, TS)})}))
    assert cp.flush() == 16
    assert sorted(_snapshot(tmp_path)) == ["anomalies/date=1970-01-01/part-0000000000000001.arrow",
                                           "anomalies/date=1970-01-01/part-0000000000000003.arrow"]
    cp.close()


def test_a_flush_streams_its_entries_and_gives_the_map_pages_back_as_it_goes(tmp_path, monkeypatch):
    """A chunk of many outbox entries is written an entry at a time, the map pages read given back
    every STREAM_DROP_BYTES, into the one file a whole-chunk write made, rows in commit order."""
    from daemon.stores import checkpoint as checkpoint_module

    monkeypatch.setattr(checkpoint_module, "STREAM_DROP_BYTES", 4096)
    cp = Checkpoint.open(_cfg(tmp_path), environ={})
    for i in range(40):
        cp.commit(CommitUnit(rows={"anomalies": pa.table({"window_start": pa.array([i * 1000] * 50, TS),
                                                          "n": list(range(i * 50, i * 50 + 50))})}))
    drops = []
    monkeypatch.setattr(cp._db, "drop_read_pages", lambda wait=True: drops.append(1))
    assert cp.flush() == 2000
    assert len(drops) >= 10
    files = _snapshot(tmp_path)
    assert list(files) == ["anomalies/date=1970-01-01/part-0000000000000001.arrow"]
    assert [r["n"] for r in files["anomalies/date=1970-01-01/part-0000000000000001.arrow"]] == list(range(2000))
    cp.close()


def test_unknown_table_or_missing_time_column_is_refused(tmp_path):
    """Rows for an unknown table, or without the table's time column, fail the commit before LMDB."""
    cp = Checkpoint.open(_cfg(tmp_path), environ={})
    with pytest.raises(StoreError, match="unknown Arrow table"):
        cp.commit(CommitUnit(rows={"nope": pa.table({"ts": pa.array([0], TS)})}))
    with pytest.raises(StoreError, match="time column"):
        cp.commit(CommitUnit(rows={"events": pa.table({"x": [1]})}))
    assert cp.restore().commit_seq == 0
    cp.close()


def test_latest_keeps_newest_per_key(tmp_path):
    """latest keeps at most keep_latest windows per (aggregation, key), newest first, also across keys."""
    cp = Checkpoint.open(_cfg(tmp_path), environ={})
    for end in range(1, 6):
        cp.commit(CommitUnit(latest=[("sales", b'["a"]', end * 1000, b"a%d" % end),
                                     ("sales", b'["b"]', end * 1000 + 500, b"b%d" % end)],
                             keep_latest={"sales": 3}))
    cp.commit(CommitUnit(latest=[("sales", b'["a"]', 5000, b"a5-again")], keep_latest={"sales": 3}))
    assert cp.latest_windows("sales", b'["a"]', 10) == [b"a5-again", b"a4", b"a3"]
    assert cp.latest_windows("sales", b'["b"]', 2) == [b"b5", b"b4"]
    assert cp.latest_windows("sales", None, 4) == [b"b5", b"a5-again", b"b4", b"a4"]
    assert cp.latest_windows("sales", None, 100) == [b"b5", b"a5-again", b"b4", b"a4", b"b3", b"a3"]
    assert cp.latest_windows("other", None, 10) == []
    with cp._db.reading() as txn:   # each key's count sits just before its entries (format 4)
        h = hashlib.blake2b(b'["a"]', digest_size=16).digest()
        assert [(bytes(k), bytes(v)) for k, v in txn.scan("latest", b"sales\x00" + h)][0] == (
            b"sales\x00" + h, layout.U32.pack(3))
        assert list(txn.scan("latest_count")) == []
    cp.close()


def test_latest_in_commits_of_several_slices(tmp_path):
    """A commit of more latest rows than one slice (LATEST_SLICE) of index puts, keys repeated across
    slices, trims each key to keep_latest and counts each row once, also in the next commit."""
    cp = Checkpoint.open(_cfg(tmp_path), environ={})
    n = 1101
    assert n > 2 * layout.LATEST_SLICE
    keys = [b'["k%d"]' % (i % 300) for i in range(n)]   # 3 or 4 rows each: those with 4 are trimmed
    cp.commit(CommitUnit(latest=[("sales", k, 1000 + i, b"r%d" % i) for i, k in enumerate(keys)],
                         keep_latest={"sales": 3}))
    cp.commit(CommitUnit(latest=[("sales", b'["k0"]', 10**9, b"last")], keep_latest={"sales": 3}))
    kept = 0
    for j in range(300):
        rows = [b"r%d" % i for i in range(n) if i % 300 == j] + ([b"last"] if j == 0 else [])
        want = rows[::-1][:3]
        assert cp.latest_windows("sales", b'["k%d"]' % j, 10) == want
        kept += len(want)
    assert len(cp.latest_windows("sales", None, 10_000)) == kept == 900
    cp.close()


def test_latest_apply_gives_the_maps_pages_back_every_slice(tmp_path, monkeypatch):
    """A commit of many latest rows gives the pages it read through the map back after every slice of
    LATEST_SLICE rows (each random-key read can map a whole 2 MiB page-cache folio: the memory
    benchmark's peak was set inside one 128-row slice), and the rows all land."""
    cp = Checkpoint.open(_cfg(tmp_path), environ={})
    drops = []
    real = cp._db._drop_read
    monkeypatch.setattr(cp._db, "_drop_read", lambda: (drops.append(1), real()))
    n = 20 * layout.LATEST_SLICE + 5
    cp.commit(CommitUnit(latest=[("sales", b'["k%d"]' % i, 1000 + i, b"r%d" % i) for i in range(n)],
                         keep_latest={"sales": 3}))
    assert len(drops) >= n // layout.LATEST_SLICE
    assert len(cp.latest_windows("sales", None, 10 * n)) == n
    assert cp.latest_windows("sales", b'["k7"]', 10) == [b"r7"]
    cp.close()


_LATEST_COMMITS = st.lists(st.tuples(
    st.lists(st.tuples(st.sampled_from(["sales", "größe"]), st.sampled_from([b'["a"]', b""]),
                       st.sampled_from([1, 2, 2**40]), st.binary(max_size=8)), max_size=8),
    st.booleans(), st.sampled_from(["commit", "apply", "reopen"])), min_size=1, max_size=8)


@settings(max_examples=40, deadline=None)
@given(commits=_LATEST_COMMITS)
def test_deferred_latest_entries_read_as_entries_put_at_once(tmp_path_factory, commits):
    """Latest-window entries a commit defers (CommitUnit.defer_latest) are invisible until the next
    write (a commit, apply_pending_latest, or the next open), then the index reads as if every commit
    had put its own at once: same rows per key, same trimming to keep_latest, newest first."""
    tmp = tmp_path_factory.mktemp("deferred")
    stores = {True: Checkpoint.open(_cfg(tmp / "deferred"), environ={}), False: Checkpoint.open(_cfg(tmp / "now"), environ={})}
    keep = {"sales": 2}

    def view(cp):
        return {(agg, k): cp.latest_windows(agg, k, 10) for agg in ("sales", "größe") for k in (None, b'["a"]', b"")}

    try:
        for c, (drawn, defer, then) in enumerate(commits):
            entries = [(agg, k, end, row + b"#%d.%d" % (c, i)) for i, (agg, k, end, row) in enumerate(drawn)]   # the newer row wins: tell them apart
            before = view(stores[False])
            for deferred, cp in stores.items():
                cp.commit(CommitUnit(latest=entries, keep_latest=keep, defer_latest=deferred and defer))
            if defer and entries:
                assert stores[True].latest_pending and view(stores[True]) == before
            if then == "apply":
                stores[True].apply_pending_latest()
            elif then == "reopen":
                stores[True].close()
                stores[True] = Checkpoint.open(_cfg(tmp / "deferred"), environ={})
            if then != "commit" or not (defer and entries):
                assert not stores[True].latest_pending and view(stores[True]) == view(stores[False])
        for cp in stores.values():
            cp.commit(CommitUnit())
        assert view(stores[True]) == view(stores[False])
    finally:
        for cp in stores.values():
            cp.close()


def test_deferred_latest_entries_go_before_the_next_commits_own(tmp_path):
    """A window emitted again (a config change) in the commit after a deferred one: the newer row wins."""
    cp = Checkpoint.open(_cfg(tmp_path), environ={})
    cp.commit(CommitUnit(latest=[("sales", b'["a"]', 1000, b"old")], defer_latest=True))
    assert cp.latest_pending and cp.latest_windows("sales", b'["a"]', 10) == []
    cp.commit(CommitUnit(latest=[("sales", b'["a"]', 1000, b"new")]))
    assert not cp.latest_pending and cp.latest_windows("sales", b'["a"]', 10) == [b"new"]
    cp.close()


def test_pack_latest_round_trips():
    """pack_latest / unpack_latest keep every entry, keep_latest and keep_latest_rows, in order."""
    entries = [("sales", b'["a"]', 2**40 + 5, b'{"x":1}'), ("größe", b"", 0, b""), ("sales", b"[null]", 7, b"r" * 1000)]
    assert layout.unpack_latest(layout.pack_latest(entries, {"sales": 2}, {"sales": 9})) == (entries, {"sales": 2}, {"sales": 9})
    assert layout.unpack_latest(layout.pack_latest([], {})) == ([], {}, {})


def test_a_pending_latest_record_of_format_6_reads_with_the_default_row_bound():
    """A record a format-6 build left pending has no keep_latest_rows in its head: it reads as none
    given (each aggregation's default)."""
    entries = [("sales", b'["a"]', 1000, b"a1")]
    blob = layout.pack_latest(entries, {"sales": 2})
    hlen = layout.U32.unpack_from(blob)[0]
    head = orjson.loads(blob[4:4 + hlen])
    del head["keep_latest_rows"]
    old_head = orjson.dumps(head)
    old = layout.U32.pack(len(old_head)) + old_head + blob[4 + hlen:]
    assert layout.unpack_latest(old) == (entries, {"sales": 2}, {})


class _ListLog:
    """A logger that keeps (event, fields) of every call."""

    def __init__(self):
        self.events = []

    def _keep(self, event, **kw):
        self.events.append((event, kw))

    info = warning = error = debug = _keep


def _drop_row_counts(txn):
    """What a build before format 7 leaves: no per-aggregation row counts."""
    for k in [bytes(k) for k, _ in txn.scan("sys", layout.LATEST_ROWS)]:
        txn.delete("sys", k)


@pytest.mark.parametrize("old", [b"4", b"5", b"6"])
def test_a_format_4_5_or_6_data_dir_opens_as_format_7(tmp_path, old):
    """Format 4 differs only by having no pending latest entries, 5 by having no recommender user
    records of format 2 (read as they are), 6 by having no row count per aggregation: it opens, its
    rows and state read the same, each aggregation's rows are counted, and the format becomes 7."""
    data_dir = tmp_path / "data"
    cp = Checkpoint.open(_cfg(data_dir), environ={})
    cp.commit(CommitUnit(latest=[("sales", b'["a"]', 1000, b"a1"), ("sales", b'["b"]', 1500, b"b1"),
                                 ("größe", b'["a"]', 2000, b"g1")], keep_latest={"sales": 3},
                         state={"analyzer:recs": {b"u:a": b'[1,[["i",1,1.0,"s"]],{},{}]'}}))

    def downgrade(txn):
        _drop_row_counts(txn)
        txn.put("sys", layout.FORMAT_KEY, old)
    cp._db.write(downgrade)
    cp.close()
    log = _ListLog()
    cp = Checkpoint.open(_cfg(data_dir), environ={}, log=log)
    assert cp.latest_windows("sales", b'["a"]', 10) == [b"a1"]
    assert dict(cp.restore().state["analyzer:recs"]) == {b"u:a": b'[1,[["i",1,1.0,"s"]],{},{}]'}
    with cp._db.reading() as txn:
        assert txn.get("sys", layout.FORMAT_KEY) == layout.FORMAT == b"7"
        assert layout.get_u64(txn, "sys", layout.LATEST_ROWS + b"sales") == 2
        assert layout.get_u64(txn, "sys", layout.LATEST_ROWS + "größe".encode()) == 1
    migrated = [kw for event, kw in log.events if event == "store_format_migrated"]
    assert migrated and migrated[0]["latest_rows"] == {"sales": 2, "größe": 1}
    # trimming goes on from the counted rows
    cp.commit(CommitUnit(latest=[("sales", b'["c"]', 3000, b"c3")], keep_latest_rows={"sales": 2}))
    assert cp.latest_windows("sales", None, 10) == [b"c3", b"b1"]
    cp.close()


def test_a_data_dir_of_a_newer_format_is_refused_untouched(tmp_path):
    """A build opening a data_dir a newer build wrote stops with a StoreError naming both formats and
    leaves it as it was (what a build from before format 7 does with a format-7 data_dir)."""
    data_dir = tmp_path / "data"
    cp = Checkpoint.open(_cfg(data_dir), environ={})
    cp.commit(CommitUnit(latest=[("sales", b'["a"]', 1000, b"a1")], keep_latest={"sales": 3}))
    cp._db.write(lambda txn: txn.put("sys", layout.FORMAT_KEY, b"8"))
    cp.close()
    for _ in range(2):   # the refused open rewrote nothing: the next one is refused the same way
        with pytest.raises(StoreError, match=r"store format b'8', this build reads b'7'"):
            Checkpoint.open(_cfg(data_dir), environ={})


def test_a_format_3_data_dir_gets_its_latest_counts_moved_at_open(tmp_path):
    """Format 3 kept the latest-row counts in a table of their own: at open they move before their
    keys' entries, the table is emptied, and trimming goes on from the moved counts."""
    data_dir = tmp_path / "data"
    cp = Checkpoint.open(_cfg(data_dir), environ={})
    for end in range(1, 4):
        cp.commit(CommitUnit(latest=[("sales", b'["a"]', end * 1000, b"a%d" % end)], keep_latest={"sales": 3}))

    def to_format_3(txn):
        for k, v in list(txn.scan("latest")):
            if len(k) == len(b"sales\x00") + 16:
                txn.put("latest_count", bytes(k), bytes(v))
                txn.delete("latest", bytes(k))
        txn.put("sys", layout.FORMAT_KEY, b"3")
    cp._db.write(to_format_3)
    cp.close()
    cp = Checkpoint.open(_cfg(data_dir), environ={})
    assert cp.latest_windows("sales", b'["a"]', 10) == [b"a3", b"a2", b"a1"]
    cp.commit(CommitUnit(latest=[("sales", b'["a"]', 4000, b"a4")], keep_latest={"sales": 3}))
    assert cp.latest_windows("sales", b'["a"]', 10) == [b"a4", b"a3", b"a2"]
    assert cp.latest_windows("sales", None, 10) == [b"a4", b"a3", b"a2"]
    with cp._db.reading() as txn:
        assert txn.get("sys", layout.FORMAT_KEY) == layout.FORMAT and list(txn.scan("latest_count")) == []
    cp.close()


def test_recent_anomalies_since_limit_and_cap(tmp_path):
    """Anomalies come back newest first, filtered by since_ms, and only the newest keep_anomalies stay."""
    cp = Checkpoint.open(_cfg(tmp_path), environ={})
    for ts in range(1, 8):
        cp.commit(CommitUnit(anomalies=[(ts * 1000, orjson.dumps({"ts": ts}))], keep_anomalies=5))
    assert [orjson.loads(a)["ts"] for a in cp.recent_anomalies()] == [7, 6, 5, 4, 3]
    assert [orjson.loads(a)["ts"] for a in cp.recent_anomalies(since_ms=5000)] == [7, 6, 5]
    assert len(cp.recent_anomalies(limit=2)) == 2
    cp.close()


def test_readers_in_threads_while_committing(tmp_path):
    """Read helpers run in other threads while one writer commits and the map grows."""
    cp = Checkpoint.open(_cfg(tmp_path), environ={})
    stop, errors = threading.Event(), []

    def reader():
        while not stop.is_set():
            try:
                cp.latest_windows("sales", None, 50)
                cp.scan("agg:t")
                cp.statistics()
            except BaseException as exc:  # noqa: BLE001 - surfaced below
                errors.append(exc)
                return

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    for i in range(40):
        cp.commit(CommitUnit(state={"agg:t": {b"%d" % i: b"x" * 5000}},
                             latest=[("sales", b"%d" % i, i, b"r" * 3000)]))
    stop.set()
    for t in threads:
        t.join()
    assert not errors and cp.statistics().lmdb.map_grows >= 2
    cp.close()


def test_crash_points_read_from_the_environment():
    """STOREPULSE_CRASH_AT names a known point; an unknown one is refused."""
    cp = CrashPoints.from_env({"STOREPULSE_CRASH_AT": "before_arrow_rename", "STOREPULSE_CRASH_AFTER_N": "3"})
    assert (cp.at, cp.after_n) == ("before_arrow_rename", 3)
    cp.hit("after_lmdb_commit")
    with pytest.raises(ValueError, match="STOREPULSE_CRASH_AT"):
        CrashPoints.from_env({"STOREPULSE_CRASH_AT": "whenever"})


# Each flush of one commit writes two files (two dates), both written before the first is renamed:
# crash points count per file.
CRASHES = [
    ("after_lmdb_commit", 3, False),
    ("mid_arrow_write", 5, True),
    ("before_arrow_rename", 6, True),
    ("after_arrow_rename", 5, True),     # the chunk's second file is not renamed yet
    ("after_arrow_rename", 6, False),
    ("before_outbox_delete", 2, False),
]


@pytest.mark.parametrize(("point", "after_n", "leaves_tmp"), CRASHES)
def test_crash_then_recovery_converges_to_the_same_files(tmp_path, point, after_n, leaves_tmp):
    """A child killed at a crash point, reopened and resumed, ends with exactly the files of a clean run."""
    crashed, clean = tmp_path / "crashed", tmp_path / "clean"
    code = (f"import sys; sys.path.insert(0, {str(HERE)!r}); import test_checkpoint as t; "
            "t.run_workload(sys.argv[1], 1, 7)")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "STOREPULSE_CRASH_AT": point,
           "STOREPULSE_CRASH_AFTER_N": str(after_n)}
    proc = subprocess.run([sys.executable, "-c", code, str(crashed)], cwd=ROOT, env=env,
                          capture_output=True, timeout=60)
    assert proc.returncode == 137, proc.stderr.decode()
    assert bool(list(crashed.rglob("*.tmp"))) == leaves_tmp

    cp = Checkpoint.open(_cfg(crashed), environ={})      # recovery: cleans .tmp, flushes the outbox
    seq = cp.restore().commit_seq
    assert seq < 6 and cp.pending_rows() == {}
    cp.close()
    assert not list(crashed.rglob("*.tmp"))
    run_workload(str(crashed), seq + 1, 7, environ={})
    run_workload(str(clean), 1, 7, environ={})

    got, want = _snapshot(crashed), _snapshot(clean)
    assert got == want
    ids = [r["event_id"] for rows in got.values() for r in rows]
    assert len(ids) == len(set(ids)) == 24


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.text(min_size=1, max_size=128).map(str.encode), st.integers(0, 2**53)), max_size=50))
def test_dedupe_record_packing_round_trips(items):
    """A commit's ids in one dedupe record come back byte for byte, with their expiries."""
    assert layout.unpack_ids(layout.pack_ids([i for i, _ in items], [e for _, e in items])) == items


def test_dedupe_ids_expire_by_whole_minutes_and_restore_exactly(tmp_path):
    """Records of minutes wholly before the bound are deleted; restore drops the rest below it."""
    cp = Checkpoint.open(_cfg(tmp_path), environ={})
    cp.commit(CommitUnit(dedupe_ids=[b"a", b"b", b"c"], dedupe_expiry_ms=[10_000, 70_000, 130_000]))
    cp.commit(CommitUnit(dedupe_ids=[b"d"], dedupe_expiry_ms=[65_000], dedupe_expire_before_ms=120_000))
    with cp._db.reading() as txn:
        starts = sorted({layout.U64.unpack_from(k)[0] for k, _ in txn.scan("dedupe")})
    assert starts == [120_000]          # minutes [0, 60s) and [60s, 120s) are gone whole
    cp.commit(CommitUnit(dedupe_expire_before_ms=125_000))
    cp.close()
    cp = Checkpoint.open(_cfg(tmp_path), environ={})
    assert sorted(cp.restore().dedupe) == [(b"c", 130_000)]
    cp.close()


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(st.tuples(st.binary(min_size=1, max_size=40), st.integers(0, 400_000)), max_size=30),
                min_size=1, max_size=5),
       st.integers(0, 300_000))
def test_dedupe_commits_restore_every_id_at_or_over_the_bound(tmp_path_factory, commits, bound):
    """Commits whose ids fall in one expiry minute (one record, written from columns) or in several
    (one record per minute) restore the same: every id that expires at or after the bound."""
    cp = Checkpoint.open(_cfg(tmp_path_factory.mktemp("dd")), environ={})
    cp.commit(CommitUnit(dedupe_expire_before_ms=bound))
    for adds in commits:
        cp.commit(CommitUnit(dedupe_ids=[i for i, _ in adds], dedupe_expiry_ms=[e for _, e in adds]))
    got = sorted(cp.restore().dedupe)
    cp.close()
    assert got == sorted((i, e) for adds in commits for i, e in adds if e >= bound)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.lists(st.tuples(st.sampled_from([b'["a"]', b'["b"]', b'["c"]']), st.integers(1, 12)),
                         max_size=8), min_size=1, max_size=8),
       st.integers(1, 4))
def test_latest_matches_a_model_with_repeated_windows(tmp_path_factory, commits, keep):
    """Per key the newest `keep` window ends survive, a window written again keeps its newest row,
    and the per-key count stays exact, whatever mix of new and repeated windows each commit brings;
    the rows across keys are those same rows (a trimmed window's row goes too)."""
    cp = Checkpoint.open(_cfg(tmp_path_factory.mktemp("latest")), environ={})
    model: dict[bytes, dict[int, bytes]] = {}
    for n, windows in enumerate(commits):
        latest = [("sales", key, end, b"%s@%d#%d" % (key, end, n)) for key, end in dict.fromkeys(windows)]
        cp.commit(CommitUnit(latest=latest, keep_latest={"sales": keep}))
        for _, key, end, row in latest:
            model.setdefault(key, {})[end] = row
        for key, rows in model.items():
            model[key] = dict(sorted(rows.items())[-keep:])
    for key, rows in model.items():
        assert cp.latest_windows("sales", key, 100) == [rows[e] for e in sorted(rows, reverse=True)]
    assert sorted(cp.latest_windows("sales", None, 1000)) == sorted(r for rows in model.values() for r in rows.values())
    cp.close()


def _h(key: bytes) -> bytes:
    return hashlib.blake2b(key, digest_size=16).digest()


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.lists(st.tuples(st.sampled_from([b'["a"]', b'["b"]', b'["c"]', b'["d"]']),
                                             st.integers(1, 12), st.sampled_from(["sales", "views"])), max_size=10),
                          st.booleans()),
                min_size=1, max_size=8),
       st.integers(1, 3), st.integers(1, 7))
def test_latest_rows_per_aggregation_match_a_model(tmp_path_factory, commits, keep, keep_rows):
    """Past keep_latest_rows an aggregation's rows of the oldest window ends go (ties: by key hash, the
    index's order), after each key was trimmed to keep_latest; every key's count stays exact and a key
    left with no row has no count; deferred commits read the same once applied; the row count held in
    sys is the number of rows; another aggregation is not touched."""
    cp = Checkpoint.open(_cfg(tmp_path_factory.mktemp("rows")), environ={})
    model: dict[tuple[str, bytes], dict[int, bytes]] = {}
    for n, (windows, defer) in enumerate(commits):
        latest = [(agg, key, end, b"%s@%d#%d" % (key, end, n)) for key, end, agg in dict.fromkeys(windows)]
        cp.commit(CommitUnit(latest=latest, keep_latest={"sales": keep, "views": keep},
                             keep_latest_rows={"sales": keep_rows}, defer_latest=defer))
        for agg, key, end, row in latest:
            model.setdefault((agg, key), {})[end] = row
        for ak, rows in model.items():
            model[ak] = dict(sorted(rows.items())[-keep:])
        if latest and any(agg == "sales" for agg, *_ in latest):
            sales = sorted((end, _h(key), key) for (agg, key), rows in model.items() if agg == "sales" for end in rows)
            for end, _, key in sales[:max(0, len(sales) - keep_rows)]:
                del model[("sales", key)][end]
    cp.apply_pending_latest()
    for (agg, key), rows in model.items():
        assert cp.latest_windows(agg, key, 100) == [rows[e] for e in sorted(rows, reverse=True)]
    for agg in ("sales", "views"):
        want = sorted(r for (a, _), rows in model.items() if a == agg for r in rows.values())
        assert sorted(cp.latest_windows(agg, None, 1000)) == want
    with cp._db.reading() as txn:
        for (agg, key), rows in model.items():
            base = agg.encode() + b"\x00" + _h(key)
            count = txn.get("latest", base)
            assert (layout.U32.unpack(count)[0] if count is not None else 0) == len(rows)
        for agg in ("sales", "views"):
            assert layout.get_u64(txn, "sys", layout.LATEST_ROWS + agg.encode()) == sum(
                len(rows) for (a, _), rows in model.items() if a == agg)
    cp.close()


def test_fold_log_entries_are_kept_under_their_commit_and_dropped_through_a_cut(tmp_path):
    """Every commit's fold steps are stored under its seq; `fold_log_drop_through` deletes the entries
    up to a seq (both cuts cover them) and keeps the rest, including the new one."""
    cp = Checkpoint.open(StorageConfig(data_dir=str(tmp_path / "data")), environ={})
    for i in range(1, 6):
        assert cp.next_seq == i
        assert cp.commit(CommitUnit(fold_log=f"[{i}]".encode())) == i
    assert [b for _, b in cp.fold_log_after(0)] == [b"[1]", b"[2]", b"[3]", b"[4]", b"[5]"]
    assert cp.fold_log_after(3) == [(4, b"[4]"), (5, b"[5]")]
    assert cp.fold_log_after(1, upto=3) == [(2, b"[2]"), (3, b"[3]")]
    assert cp.fold_log_after(1, max_entries=1) == [(2, b"[2]")]
    cp.commit(CommitUnit(fold_log=b"[6]", fold_log_drop_through=4))
    assert [b for _, b in cp.fold_log_after(0)] == [b"[5]", b"[6]"]
    cp.commit(CommitUnit(fold_log=b"[7]", fold_log_drop_through=7))   # covered at once: not kept
    assert cp.fold_log_after(0) == []
    cp.close()
    again = Checkpoint.open(StorageConfig(data_dir=str(tmp_path / "data")), environ={})
    assert list(again.restore().fold_log) == [] and again.next_seq == 8
    again.close()


def test_a_namespace_is_read_in_chunks_that_join_to_the_whole(tmp_path):
    cp = Checkpoint.open(StorageConfig(data_dir=str(tmp_path / "data")), environ={})
    records = {f"u:{i:05d}".encode(): b"v" * (i % 50) for i in range(3000)}
    records[b"k" * 600] = b"long key"                         # stored under its hash
    cp.commit(CommitUnit(state={"recs": records, "agg:x": {b"u:00001": b"other"}}))
    got, after, chunks = [], None, 0
    while True:
        items, after = cp.scan_chunk("recs", after, 4096)
        got += items
        chunks += 1
        if after is None:
            break
    assert chunks > 10 and dict(got) == records and len(got) == len(records)
    cp.close()


@settings(max_examples=25, deadline=None)
@given(st.lists(st.dictionaries(st.sampled_from([b"k%d" % i for i in range(300)]),
                                st.none() | st.binary(min_size=0, max_size=3000), max_size=120),
                min_size=1, max_size=12))
def test_state_segments_match_a_model_through_merges_and_reopen(tmp_path_factory, commits):
    """Puts, overwrites and deletes over many commits (big values, so buckets merge often), as a
    commit's own changes or as packed answers applied after them, restore,
    read, scan and chunk exactly as a dict updated commit by commit; a bucket's chain stays within
    twice its live bytes plus the slack; a reopened store reads the same."""
    data_dir = tmp_path_factory.mktemp("seg")
    cp = Checkpoint.open(_cfg(data_dir), environ={})
    model: dict[bytes, bytes] = {}
    for n, changes in enumerate(commits):
        # Every other commit also brings the same changes as packed answers (split in two, in order,
        # as the recommendations process sends them), on top of an older value: the answers win.
        answers = []
        if n % 2:
            items = list(changes.items())
            for half in (items[: len(items) // 2], items[len(items) // 2:]):
                answers.append(list(segments.SegmentBuilder.of(dict(half)).segments()))
            own = {k: b"older" for k in changes}
        else:
            own = changes
        cp.commit(CommitUnit(state={"agg:s": own, "recs": {b"r": b"%d" % len(model)}},
                             state_segments={"agg:s": answers} if answers else {}))
        for k, v in changes.items():
            if v is None:
                model.pop(k, None)
            else:
                model[k] = v
    with cp._db.reading() as txn:
        stored = sum(len(v) for _, v in txn.scan("segments", b"agg:s\x00"))
        meta = txn.get("sys", layout.SEGMENTS_META + b"agg:s")
    assert stored <= 2 * (len(model) * 3100 + 64) + segments.BUCKETS * segments.SLACK_BYTES
    assert meta is not None or not any(commits)
    for store in (cp, None):
        if store is None:
            cp.close()
            store = cp = Checkpoint.open(_cfg(data_dir), environ={})
        assert dict(store.restore().state.get("agg:s", [])) == model
        assert store.restore().state.get("agg:s", []) == sorted(model.items())
        assert store.scan("agg:s") == sorted(model.items())
        assert all(store.get("agg:s", k) == v for k, v in model.items())
        assert store.get("agg:s", b"absent") is None
        assert sorted(_all_chunks(store, "agg:s", 2048)) == sorted(model.items())
    cp.close()


def test_a_format_2_data_dir_is_migrated_to_segments_at_open(tmp_path):
    """A data_dir written by format 2 (one LMDB record per state key, over-long keys hashed; latest
    rows by key) opens with every state record in segments, the old records gone, the latest rows
    in window-end order and the format updated."""
    from daemon.stores.lmdb_state import LmdbState
    import hashlib
    data_dir = tmp_path / "data"
    db = LmdbState.open(data_dir / "state", lock_path=data_dir / "LOCK", db_names=layout.DBS,
                        map_size_initial_bytes=1 << 20, map_size_max_bytes=1 << 30)
    long_key = b"L" * 700

    def old(txn):
        txn.put("sys", layout.FORMAT_KEY, b"2")
        txn.put("sys", layout.SEQ_KEY, layout.U64.pack(41))
        for i in range(500):
            txn.put("state", b"agg:a\x00k%03d" % i, b"v%d" % i)
        txn.put("state", b"recs\x00u:x", b"user")
        txn.put("state", b"agg:a\x01" + hashlib.blake2b(long_key, digest_size=32).digest(),
                layout.U32.pack(len(long_key)) + long_key + b"long")
        for key in (b'["x"]', b'["y"]'):   # format 2's latest rows: by key, with an empty time index
            h = hashlib.blake2b(key, digest_size=16).digest()
            for end in (60_000, 120_000):
                txn.put("latest", b"sales\x00" + h + layout.U64.pack(end), b"%s@%d" % (key, end))
                txn.put("latest_time", b"sales\x00" + layout.U64.pack(end) + h, b"")
            txn.put("latest_count", b"sales\x00" + h, layout.U32.pack(2))
    db.write(old)
    db.close()
    cp = Checkpoint.open(_cfg(data_dir), environ={})
    r = cp.restore()
    assert r.commit_seq == 41
    assert dict(r.state["agg:a"]) == {**{b"k%03d" % i: b"v%d" % i for i in range(500)}, long_key: b"long"}
    assert r.state["recs"] == [(b"u:x", b"user")]
    assert cp.latest_windows("sales", b'["x"]', 10) == [b'["x"]@120000', b'["x"]@60000']
    assert sorted(cp.latest_windows("sales", None, 10)) == sorted(
        b"%s@%d" % (k, e) for k in (b'["x"]', b'["y"]') for e in (60_000, 120_000))
    assert cp.latest_windows("sales", None, 2)[0].endswith(b"@120000")
    cp.commit(CommitUnit(state={"agg:a": {b"k000": None}}))
    cp.close()
    cp = Checkpoint.open(_cfg(data_dir), environ={})
    assert len(cp.restore().state["agg:a"]) == 500 and cp.get("agg:a", b"k000") is None
    with cp._db.reading() as txn:
        assert txn.get("sys", layout.FORMAT_KEY) == layout.FORMAT and list(txn.scan("state")) == []
        assert list(txn.scan("latest_count")) == []
    cp.close()


def test_the_environment_is_recycled_after_many_latest_rows_and_after_flushes(tmp_path, monkeypatch):
    """LMDB's page pool and mapped pages are given back after commits that wrote RECYCLE_AFTER_ROWS
    latest-window rows, and after a flush once RECYCLE_INTERVAL_S has passed; reads go on unchanged."""
    from daemon.stores import checkpoint as checkpoint_module
    monkeypatch.setattr(checkpoint_module, "RECYCLE_AFTER_ROWS", 10)
    monkeypatch.setattr(checkpoint_module, "RECYCLE_INTERVAL_S", 3600.0)
    cp = Checkpoint.open(_cfg(tmp_path), environ={})
    for i in range(5):   # 4 rows each: recycled once, after the third commit (12 rows); 8 since
        cp.commit(CommitUnit(latest=[("sales", b'["k%d"]' % j, 1000 + i, b"r%d" % i) for j in range(4)],
                             state={"agg:a": {b"k": b"%d" % i}}))
    assert cp.statistics().lmdb.recycles == 1
    cp.commit(_unit(9))
    cp.flush()
    assert cp.statistics().lmdb.recycles == 1      # the interval has not passed
    monkeypatch.setattr(checkpoint_module, "RECYCLE_INTERVAL_S", 0.0)
    cp.commit(_unit(10))
    cp.flush()
    assert cp.statistics().lmdb.recycles == 2
    assert cp.latest_windows("sales", b'["k0"]', 10) == [b"r%d" % i for i in range(4, -1, -1)]
    assert cp.get("agg:a", b"k") == b"4" and cp.restore().commit_seq == 7
    cp.close()


def test_buckets_that_fall_due_together_merge_in_bounded_transactions_over_several_commits(tmp_path, monkeypatch):
    """A namespace growing evenly makes every bucket due for a merge at the same commit; the commit
    only appends, and the merges follow in transactions of their own reading at most
    MERGE_BYTES_PER_WRITE (plus the bucket that crossed it) each, for at most UPKEEP_S after each
    commit (here 0: one transaction), so a commit leaves buckets due that the next ones merge; the
    chains stay bounded, nothing is due once the growth stops, and the state reads back whole, before
    and after a reopen."""
    monkeypatch.setattr(segments, "SLACK_BYTES", 0)
    monkeypatch.setattr(layout, "MERGE_BYTES_PER_WRITE", 160_000)
    monkeypatch.setattr(checkpoint_module, "UPKEEP_S", 0.0)
    compact, txns = layout.compact_segments, []

    def recorded(txn):
        merged, read = compact(txn)
        txns[-1].append(read)
        return merged, read

    monkeypatch.setattr(layout, "compact_segments", recorded)
    cp = Checkpoint.open(_cfg(tmp_path), environ={})
    model: dict[bytes, bytes] = {}
    left_due, longest = [], 0
    for seq in range(1, 61):
        changes = {b"u:%06d" % (seq * 1000 + i): b"v" * 100 for i in range(640)} if seq <= 40 else {}
        model.update(changes)
        txns.append([])
        cp.commit(CommitUnit(state={"agg:s": changes}))
        with cp._db.reading() as txn:
            chains = layout._Chains(txn, b"agg:s")
            left_due.append(len(chains.due()))
            longest = max(longest, int(chains.meta[2].max()))
            bucket = int(chains.meta[1].max())   # the largest bucket's live bytes
        assert len(txns[-1]) <= 1 and all(read <= 160_000 + 3 * bucket for read in txns[-1]), txns[-1]
    total = sum(len(k) + len(v) + 8 for k, v in model.items())
    assert max(r for t in txns for r in t) < total / 4          # never the whole namespace at once
    assert max(left_due[:40]) >= 3, left_due                     # buckets due together went over several commits
    assert left_due[-1] == 0 and longest <= segments.MAX_CHAIN, (left_due, longest)
    for store in (cp, None):
        if store is None:
            cp.close()
            store = cp = Checkpoint.open(_cfg(tmp_path), environ={})
        assert dict(store.restore().state["agg:s"]) == model
    cp.close()


def test_a_chain_merge_gives_the_maps_pages_back_every_few_segments(tmp_path, monkeypatch):
    """A merge reads its chain a segment at a time and gives the pages read through the map back at
    least every 8 segments (each segment's read can map whole page-cache folios: merges of chains of up
    to MAX_CHAIN segments mapped 50-60 MiB of the file in the memory benchmark), and the state reads
    back whole."""
    cp = Checkpoint.open(_cfg(tmp_path), environ={})
    drops, merges = [], []
    real = cp._db._drop_read
    monkeypatch.setattr(cp._db, "_drop_read", lambda: (drops.append(1), real()))
    compact = layout.compact_segments

    def counted(txn):
        before = len(drops)
        merged, read = compact(txn)
        if merged:
            merges.append((merged, len(drops) - before))
        return merged, read

    monkeypatch.setattr(layout, "compact_segments", counted)
    for seq in range(segments.MAX_CHAIN):   # one hot key: a segment per commit in one bucket's chain
        cp.commit(CommitUnit(state={"agg:s": {b"hot": b"v%d" % seq, b"k%d" % seq: b"x"}}))
    assert [m for m, _ in merges] == [1] and merges[0][1] >= segments.MAX_CHAIN // 8, merges
    assert dict(cp.restore().state["agg:s"]) == {b"hot": b"v%d" % (segments.MAX_CHAIN - 1),
                                                 **{b"k%d" % i: b"x" for i in range(segments.MAX_CHAIN)}}
    cp.close()


def test_a_failed_compaction_does_not_fail_the_commit_and_runs_after_the_next(tmp_path, monkeypatch):
    """The commit is durable before its due chains merge: a merge that fails is logged, the commit
    returns its seq (the runner would otherwise write the same unit again: its rows twice), and the
    merge runs after the next commit."""
    monkeypatch.setattr(segments, "SLACK_BYTES", 0)
    compact, calls = layout.compact_segments, []

    def failing_once(txn):
        calls.append(1)
        if len(calls) == 1:
            raise StoreError("disk trouble")
        return compact(txn)

    monkeypatch.setattr(layout, "compact_segments", failing_once)
    cp = Checkpoint.open(_cfg(tmp_path), environ={})
    model = {}
    for seq in range(1, 4):
        changes = {b"k%d-%d" % (seq, i): b"v" * 50 for i in range(200)}
        model.update(changes)
        rows = pa.table({"window_start": pa.array([seq * 1000], TS)})
        assert cp.commit(CommitUnit(state={"agg:s": changes}, rows={"anomalies": rows})) == seq
        if seq == 1:
            assert calls == [1] and cp.restore().commit_seq == 1
    assert len(calls) > 1
    with cp._db.reading() as txn:
        assert layout._Chains(txn, b"agg:s").due() == []
    assert dict(cp.restore().state["agg:s"]) == model
    assert cp.flush() == 3          # each commit's row once
    cp.close()


def _spilling(cp: Checkpoint, ns: str, records: dict[bytes, bytes | None], spill_bytes: int = 4096) -> segments.SegmentBuilder:
    """A full state write's builder: records put one by one, rounds written ahead through `cp.stage`."""
    built = segments.SegmentBuilder(lambda rnd, pieces: cp.stage(ns, rnd, pieces), spill_bytes=spill_bytes)
    for k, v in records.items():
        built.put(k, v)
    return built


def _segment_keys(cp: Checkpoint) -> list[tuple[bytes, int]]:
    with cp._db.reading() as txn:
        return [(k, layout._segment_seq(k)) for k in txn.keys("segments")]


def _marks(cp: Checkpoint) -> list[bytes]:
    with cp._db.reading() as txn:
        return list(txn.keys("sys", layout.STAGED))


@settings(max_examples=20, deadline=None)
@given(st.lists(st.dictionaries(st.sampled_from([b"k%d" % i for i in range(200)]),
                                st.none() | st.binary(min_size=1, max_size=400), max_size=120),
                min_size=1, max_size=6),
       st.sampled_from([512, 4096, 10**9]))
def test_state_written_ahead_of_its_commit_is_invisible_until_it_and_then_reads_as_one_write(
        tmp_path_factory, commits, spill_bytes):
    """A full state write whose builder spills rounds into LMDB ahead of its commit (Checkpoint.stage):
    until the commit, restore, get, scan and chunks read the previous commit's state; after it, the
    same as a dict updated commit by commit, with answers after it, through merges and a reopen; no
    mark of a written-ahead segment is left."""
    data_dir = tmp_path_factory.mktemp("stage")
    cp = Checkpoint.open(_cfg(data_dir), environ={})
    model: dict[bytes, bytes] = {}
    for n, changes in enumerate(commits):
        built = _spilling(cp, "agg:s", changes, spill_bytes)
        assert dict(cp.restore().state.get("agg:s", [])) == model            # written ahead: not yet state
        assert cp.scan("agg:s") == sorted(model.items())
        assert all(cp.get("agg:s", k) == model.get(k) for k in changes)
        assert bool(_marks(cp)) == bool(built.spilled)
        answers = [list(segments.SegmentBuilder.of({b"k0": b"answer%d" % n}).segments())] if n % 2 else []
        cp.commit(CommitUnit(state={"agg:s": built}, state_segments={"agg:s": answers} if answers else {},
                             state_complete=True))
        for k, v in changes.items():
            if v is None:
                model.pop(k, None)
            else:
                model[k] = v
        if answers:
            model[b"k0"] = b"answer%d" % n
        assert _marks(cp) == []
    for store in (cp, None):
        if store is None:
            cp.close()
            store = cp = Checkpoint.open(_cfg(data_dir), environ={})
        assert dict(store.restore().state.get("agg:s", [])) == model
        assert store.scan("agg:s") == sorted(model.items())
        assert sorted(_all_chunks(store, "agg:s", 1024)) == sorted(model.items())
    cp.close()


def test_state_written_ahead_of_a_commit_that_never_came_is_dropped(tmp_path):
    """Rounds staged for a commit that was abandoned (the process died, or a new unit was built for
    the same seq) never become state: the next open removes them, and so does the commit of that seq."""
    cp = Checkpoint.open(_cfg(tmp_path), environ={})
    cp.commit(CommitUnit(state={"agg:s": {b"a": b"1"}}))
    abandoned = _spilling(cp, "agg:s", {b"k%d" % i: b"x" * 100 for i in range(200)})
    assert abandoned.spilled and _marks(cp)
    assert max(seq for _, seq in _segment_keys(cp)) == 2
    cp.commit(CommitUnit(state={"agg:s": {b"b": b"2"}}))               # seq 2, another unit: orphans go
    assert _marks(cp) == [] and dict(cp.restore().state["agg:s"]) == {b"a": b"1", b"b": b"2"}
    assert len(_segment_keys(cp)) == 2
    _spilling(cp, "agg:s", {b"k%d" % i: b"y" * 100 for i in range(200)})   # for seq 3, then the "crash"
    cp.close()
    cp = Checkpoint.open(_cfg(tmp_path), environ={})
    assert _marks(cp) == [] and all(seq <= 2 for _, seq in _segment_keys(cp))
    assert dict(cp.restore().state["agg:s"]) == {b"a": b"1", b"b": b"2"}
    cp.close()


def stage_workload(data_dir: str, commits: int, environ: dict[str, str] | None = None) -> None:
    """Commits of 300 keys each, their builders spilling 2 rounds ahead; the crash test runs this in a child."""
    cp = Checkpoint.open(_cfg(Path(data_dir)), environ=environ)
    for i in range(1, commits + 1):
        cp.commit(CommitUnit(state={"agg:s": _spilling(cp, "agg:s", {b"k%d" % k: b"%d" % i * 20 for k in range(300)})},
                             meta={"i": b"%d" % i}))
    cp.close()


@pytest.mark.parametrize("after_n", [1, 3, 6])
def test_a_crash_after_state_was_written_ahead_restores_the_last_commit(tmp_path, after_n):
    """SIGKILL-like exit right after a round was written ahead of its commit: the reopened store holds
    exactly the last committed state, and the run resumed from it ends as a clean one."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "STOREPULSE_CRASH_AT": "after_state_staged",
           "STOREPULSE_CRASH_AFTER_N": str(after_n)}
    code = (f"import sys; sys.path.insert(0, {str(HERE)!r}); import test_checkpoint as t; "
            "t.stage_workload(sys.argv[1], 3)")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=ROOT, env=env,
                          capture_output=True, timeout=60)
    assert proc.returncode == 137, proc.stderr.decode()
    cp = Checkpoint.open(_cfg(tmp_path), environ={})
    restored = cp.restore()
    seq = restored.commit_seq
    assert _marks(cp) == [] and all(s <= seq for _, s in _segment_keys(cp))
    want = {b"k%d" % k: b"%d" % seq * 20 for k in range(300)} if seq else {}
    assert dict(restored.state.get("agg:s", [])) == want and restored.meta.get("i", b"0") == b"%d" % seq
    assert seq < 3
    cp.close()


def test_answers_are_written_ahead_of_their_commit_once_even_when_it_is_retried(tmp_path, monkeypatch):
    """A unit's packed answers (the recommendations process's parts) are each written in a transaction
    of their own before the commit and marked so in the unit (a small one goes in the commit's own);
    a commit that fails after that and is retried with the same unit writes none of them twice, and
    the store reads as one write."""
    monkeypatch.setattr(checkpoint_module, "STAGE_ANSWER_BYTES", 2000)
    cp = Checkpoint.open(_cfg(tmp_path), environ={})
    cp.commit(CommitUnit(state={"agg:s": {b"a": b"1"}}))
    parts = [{b"u%d" % i: b"first" for i in range(300)}, {b"u%d" % i: b"second" for i in range(0, 300, 2)},
             {b"u7": None}]
    answers = [list(segments.SegmentBuilder.of(p).segments()) for p in parts]
    unit = CommitUnit(state={"agg:s": {b"b": b"2"}}, state_segments={"recs": answers})
    real = layout.apply_commit
    calls = []

    def failing_once(txn, unit, seq, outbox):
        calls.append(seq)
        if len(calls) == 1:
            raise StoreError("injected: the disk is full")
        return real(txn, unit, seq, outbox)

    monkeypatch.setattr(layout, "apply_commit", failing_once)
    with pytest.raises(StoreError):
        cp.commit(unit)
    assert [isinstance(a, layout.Staged) for a in unit.state_segments["recs"]] == [True, True, False]
    assert _marks(cp)
    assert cp.restore().commit_seq == 1 and "recs" not in cp.restore().state     # not state yet
    staged = cp.statistics().staged_bytes
    assert cp.commit(unit) == 2 and calls == [2, 2]
    assert cp.statistics().staged_bytes == staged and _marks(cp) == []
    want = {b"u%d" % i: b"second" if i % 2 == 0 else b"first" for i in range(300)}
    del want[b"u7"]
    for store in (cp, None):
        if store is None:
            cp.close()
            store = cp = Checkpoint.open(_cfg(tmp_path), environ={})
        assert dict(store.restore().state["recs"]) == want
        assert dict(store.restore().state["agg:s"]) == {b"a": b"1", b"b": b"2"}
        with store._db.reading() as txn:
            assert len(list(txn.keys("segments", b"recs\x00"))) == sum(len(a) for a in answers)
    cp.close()


def test_a_flush_under_way_holds_up_neither_commits_nor_another_tables_flush(tmp_path, monkeypatch):
    """The runner flushes the archive in the background. While a flush of `events` is stuck in its
    Arrow writing (inside its read transaction), a commit goes through and a flush of another table
    completes; a commit that grows the map then waits for that reader, which gives way (inside its
    read transaction a flush gives map pages back only when no write is under way: waiting for the
    write there deadlocked with the grow). Everything lands once."""
    monkeypatch.setattr(checkpoint_module, "STREAM_DROP_BYTES", 1)   # a drop after every entry
    cp = Checkpoint.open(_cfg(tmp_path), environ={})
    for i in range(3):
        cp.commit(CommitUnit(rows={"events": _events(i)}))
    entered, release = threading.Event(), threading.Event()
    real_chunk = cp._files.chunk

    def chunk(table: str, first_seq: int):
        files = real_chunk(table, first_seq)
        if table == "events":
            real_write = files.write

            def write(rows):
                entered.set()
                assert release.wait(60)
                real_write(rows)
            files.write = write
        return files

    monkeypatch.setattr(cp._files, "chunk", chunk)
    done: dict[str, object] = {}

    def run(name, fn):
        t = threading.Thread(target=lambda: done.__setitem__(name, fn()), daemon=True)
        t.start()
        return t

    flusher = run("events flush", lambda: cp.flush(["events"]))
    assert entered.wait(10)
    anomalies = pa.table({"window_start": pa.array([0] * 5, TS), "n": list(range(5))})
    run("commit", lambda: cp.commit(CommitUnit(rows={"anomalies": anomalies}))).join(10)
    assert done.get("commit") == 4
    run("anomalies flush", lambda: cp.flush(["anomalies"])).join(10)
    assert done.get("anomalies flush") == 5
    grows = cp.statistics().lmdb.map_grows
    big = {b"%04d" % i: bytes([i % 256]) * 2_000 for i in range(1_000)}
    grower = run("growing commit", lambda: cp.commit(CommitUnit(state={"agg:big": big}, rows={"events": _events(9)})))
    grower.join(0.5)
    release.set()
    flusher.join(30)
    grower.join(30)
    assert done.get("growing commit") == 5 and cp.statistics().lmdb.map_grows > grows
    # (the stuck flush may take the growing commit's rows too: it flushes what it finds)
    assert done.get("events flush") in (12, 16) and done["events flush"] + cp.flush() == 16
    assert cp.pending_rows() == {}
    files = _snapshot(tmp_path)
    events = sorted(r["event_id"] for name, rows in files.items() if name.startswith("events/") for r in rows)
    assert events == sorted(f"e{i}-{j}" for i in (0, 1, 2, 9) for j in range(4))
    cp.close()
