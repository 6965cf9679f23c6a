"""Compaction of the Arrow files: a past day's many small files become a few, swapped in atomically,
with every row once, also when the process dies at any step or a flush left its files behind."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import anyio
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pytest

from daemon.stores.arrow_files import ArrowFiles
from daemon.stores.checkpoint import COMPACT_AFTER_MS, COMPACT_MIN_FILES, COMPACTION_CRASH_POINTS, Checkpoint
from daemon.stores.compaction import Compactor
from tests.conftest import http_post, wait_until
from tests.integration.test_checkpoint import DAY_MS, MIDNIGHT_MS, _cfg, _snapshot, _unit

ROOT = Path(__file__).resolve().parents[2]
MIDNIGHT_DAY = __import__("datetime").date(2022, 1, 8)
UNITS = 40                                        # each flushed alone: 40 files on each of two days
AFTER = MIDNIGHT_MS + DAY_MS + COMPACT_AFTER_MS   # when both days (2022-01-07 and -08) may be merged


def _rows(data_dir: Path) -> list[dict]:
    """Every event row of the events table, by event_id (the partition column left out)."""
    t = ds.dataset(data_dir / "events", format="ipc", partitioning="hive").to_table()
    return sorted(t.drop_columns(["date"]).to_pylist(), key=lambda r: r["event_id"])


def _workload(data_dir: str, units: int) -> None:
    cp = Checkpoint.open(_cfg(Path(data_dir)), environ={})
    for i in range(1, units + 1):
        cp.commit(_unit(i))
        cp.flush()
    cp.close()


def _compact(data_dir: str, now_ms: int) -> None:
    """One compaction pass in this process (the crash tests run it in a child)."""
    cp = Checkpoint.open(_cfg(Path(data_dir)))
    cp.compact_archive(now_ms)
    cp.close()


def test_a_past_days_files_are_merged_into_one_with_every_row_once(tmp_path):
    _workload(str(tmp_path), UNITS)
    before = _rows(tmp_path)
    assert len(before) == 4 * UNITS and len(_snapshot(tmp_path)) == 2 * UNITS
    cp = Checkpoint.open(_cfg(tmp_path), environ={})
    done = cp.compact_archive(AFTER - 1)         # 2022-01-08 ended less than COMPACT_AFTER_MS ago
    assert [(c.table, c.date, c.files_before, c.files_after) for c in done] == [("events", "2022-01-07", UNITS, 1)]
    done = cp.compact_archive(AFTER)
    assert [(c.table, c.date, c.files_before, c.files_after) for c in done] == [("events", "2022-01-08", UNITS, 1)]
    assert sorted(_snapshot(tmp_path)) == ["events/date=2022-01-07/part-0000000000000001.arrow",
                                           "events/date=2022-01-08/part-0000000000000001.arrow"]
    assert _rows(tmp_path) == before
    arrow = cp.statistics().arrow
    assert (arrow.partitions_compacted, arrow.files_merged) == (2, 2 * UNITS)

    cp.commit(_unit(UNITS + 1))          # a late file for a merged day: beside the merged one, not in it
    cp.flush()
    assert len(_rows(tmp_path)) == 4 * (UNITS + 1)
    assert cp.compact_archive(AFTER) == []   # two files: nothing worth merging
    cp.close()
    assert not (tmp_path / ".compact").exists()


def test_compaction_waits_for_files_whose_outbox_entries_are_still_there(tmp_path):
    """A file written by a flush that failed before deleting its entries is written again by the next
    flush: merged before that, its rows would come back twice. So a day with such a file waits."""
    _workload(str(tmp_path), UNITS - 1)
    cp = Checkpoint.open(_cfg(tmp_path), environ={})
    seq = cp.restore().commit_seq + 1
    unit = _unit(UNITS)
    cp.commit(unit)
    # What the failed flush left: the chunk's files in place, its entry still in the outbox.
    cp._files.write("events", seq, pa.Table.from_batches([unit.rows["events"]]))
    assert cp.pending_rows() == {"events": 4} and len(_snapshot(tmp_path)) == 2 * UNITS
    assert cp.compact_archive(AFTER) == [] and len(_snapshot(tmp_path)) == 2 * UNITS
    assert cp.flush() == 4                    # the retry writes the same files again
    assert [c.files_before for c in cp.compact_archive(AFTER)] == [UNITS, UNITS]
    rows = _rows(tmp_path)
    assert len(rows) == 4 * UNITS and len({r["event_id"] for r in rows}) == 4 * UNITS
    cp.close()


@pytest.mark.parametrize("point, merged", [(COMPACTION_CRASH_POINTS[0], False), (COMPACTION_CRASH_POINTS[-1], True)])
def test_a_crash_during_compaction_loses_nothing_and_duplicates_nothing(tmp_path, point, merged):
    _workload(str(tmp_path), UNITS)
    before = _rows(tmp_path)
    code = (f"import sys; sys.path.insert(0, {str(ROOT)!r}); from tests.integration import test_compaction as t; "
            f"t._compact(sys.argv[1], {AFTER})")
    env = {**os.environ, "STOREPULSE_CRASH_AT": point}
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], env=env, capture_output=True, timeout=60)
    assert proc.returncode == 137, proc.stderr.decode()
    assert (tmp_path / ".compact").exists()        # what the crash left: the merged day, or the old files
    assert len(_snapshot(tmp_path / "events")) == (UNITS + 1 if merged else 2 * UNITS)

    cp = Checkpoint.open(_cfg(tmp_path), environ={})   # the leftovers go at open
    assert not (tmp_path / ".compact").exists()
    assert _rows(tmp_path) == before
    cp.compact_archive(AFTER)
    assert len(_snapshot(tmp_path)) == 2 and _rows(tmp_path) == before
    cp.close()


def _swap_with_a_newer_file(data_dir: str) -> None:
    """Stage 2022-01-08, flush a newer commit's files into both days, swap (the crash test's child)."""
    cp = Checkpoint.open(_cfg(Path(data_dir)))
    names = [n for n, _ in cp._files.partition_files("events", MIDNIGHT_DAY)]
    staged = cp.compactor.stage("events", MIDNIGHT_DAY, names)
    cp.commit(_unit(UNITS + 1))
    cp.flush()
    cp.compactor.swap("events", MIDNIGHT_DAY, staged, names)
    cp.close()


def test_a_crash_after_linking_the_newer_files_loses_nothing_and_duplicates_nothing(tmp_path):
    """The newer files are linked into the merged folder before the exchange: a crash then leaves
    `.compact/` holding the merge and the links, and the live folder as it was."""
    _workload(str(tmp_path), UNITS)
    code = (f"import sys; sys.path.insert(0, {str(ROOT)!r}); from tests.integration import test_compaction as t; "
            "t._swap_with_a_newer_file(sys.argv[1])")
    env = {**os.environ, "STOREPULSE_CRASH_AT": "after_compaction_linked"}
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path)], env=env, capture_output=True, timeout=60)
    assert proc.returncode == 137, proc.stderr.decode()
    staged = tmp_path / ".compact" / "events" / f"date={MIDNIGHT_DAY}"
    assert sorted(os.listdir(staged)) == ["part-0000000000000001.arrow", f"part-{UNITS + 1:016d}.arrow"]
    assert len(_snapshot(tmp_path / "events")) == 2 * (UNITS + 1)

    cp = Checkpoint.open(_cfg(tmp_path), environ={})
    assert not (tmp_path / ".compact").exists()
    rows = _rows(tmp_path)
    assert len(rows) == 4 * (UNITS + 1) and len({r["event_id"] for r in rows}) == len(rows)
    assert [c.files_after for c in cp.compact_archive(AFTER)] == [1, 1] and _rows(tmp_path) == rows
    cp.close()


def test_an_unreadable_file_keeps_its_folder_as_it_is_and_the_others_are_merged(tmp_path):
    _workload(str(tmp_path), UNITS)
    before = _rows(tmp_path)
    broken = tmp_path / "events" / "date=2022-01-07" / "part-0000000000000005.arrow"
    good = broken.read_bytes()
    broken.write_bytes(good[:len(good) // 2])         # a disk that lost the end of it
    cp = Checkpoint.open(_cfg(tmp_path), environ={})
    done = cp.compact_archive(AFTER - 1)    # 2022-01-07 only
    assert [(c.date, c.files_after, bool(c.error)) for c in done] == [("2022-01-07", UNITS, True)]
    assert "cannot compact" in done[0].error and not (tmp_path / ".compact").exists()
    done = cp.compact_archive(AFTER)
    assert [(c.date, c.files_after, bool(c.error)) for c in done] == [("2022-01-07", UNITS, True), ("2022-01-08", 1, False)]
    broken.write_bytes(good)
    assert [(c.date, c.files_after, c.error) for c in cp.compact_archive(AFTER)] == [("2022-01-07", 1, "")]
    assert _rows(tmp_path) == before
    cp.close()


def test_a_stopped_pass_merges_nothing_and_leaves_nothing(tmp_path):
    _workload(str(tmp_path), UNITS)
    cp = Checkpoint.open(_cfg(tmp_path), environ={})
    stop = threading.Event()
    stop.set()
    assert cp.compact_archive(AFTER, stop) == []
    names = [n for n, _ in cp._files.partition_files("events", MIDNIGHT_DAY)]
    assert cp.compactor.stage("events", MIDNIGHT_DAY, names, stop) is None
    assert len(_snapshot(tmp_path)) == 2 * UNITS and not list((tmp_path / ".compact").rglob("*.arrow"))
    cp.close()


def test_files_of_two_schemas_merge_into_one_file_each(tmp_path):
    """An aggregation reconfigured mid-day wrote files of another schema: they are merged apart."""
    files = ArrowFiles(tmp_path)
    compactor = Compactor(files)
    old = [pa.table({"window_start": pa.array([MIDNIGHT_MS + i], pa.timestamp("ms", tz="UTC")), "n": [i]}) for i in range(3)]
    new = [t.append_column("m", pa.array([1.5])) for t in old]
    for seq, t in enumerate(old + new + old[:1], start=1):
        files.write("windows/agg", seq, t)
    names = [n for n, _ in files.partition_files("windows/agg", MIDNIGHT_DAY)]
    staged = compactor.stage("windows/agg", MIDNIGHT_DAY, names)
    assert compactor.swap("windows/agg", MIDNIGHT_DAY, staged, names)
    compactor.discard(staged)
    merged = {p.name: pa.ipc.open_file(p).read_all() for p in sorted((tmp_path / "windows" / "agg").rglob("*.arrow"))}
    assert {n: (t.num_rows, t.column_names) for n, t in merged.items()} == {
        "part-0000000000000001.arrow": (3, ["window_start", "n"]),
        "part-0000000000000004.arrow": (3, ["window_start", "n", "m"]),
        "part-0000000000000007.arrow": (1, ["window_start", "n"]),
    }


def test_a_file_flushed_after_the_listing_is_kept_and_a_foreign_file_stops_the_swap(tmp_path):
    """Today's folder gets files while its merge is written: those are linked into the merged folder
    and swapped in with it, unmerged (the next merge takes them). A file that is not the daemon's
    would leave with the old files: such a folder is never swapped."""
    files = ArrowFiles(tmp_path)
    compactor = Compactor(files)
    folder = tmp_path / "events" / f"date={MIDNIGHT_DAY}"

    def t(i):
        return pa.table({"ts": pa.array([MIDNIGHT_MS + i], pa.timestamp("ms", tz="UTC"))})

    files.write("events", 1, t(1))
    files.write("events", 2, t(2))
    names = [n for n, _ in files.partition_files("events", MIDNIGHT_DAY)]
    staged = compactor.stage("events", MIDNIGHT_DAY, names)
    files.write("events", 3, t(3))
    newer = folder / "part-0000000000000003.arrow"
    inode = newer.stat().st_ino
    assert compactor.swap("events", MIDNIGHT_DAY, staged, names)
    compactor.discard(staged)
    assert sorted(os.listdir(folder)) == ["part-0000000000000001.arrow", "part-0000000000000003.arrow"]
    assert newer.stat().st_ino == inode and newer.stat().st_nlink == 1   # the flushed file itself, linked
    assert _ts(folder) == [MIDNIGHT_MS + 1, MIDNIGHT_MS + 2, MIDNIGHT_MS + 3]
    assert not (tmp_path / ".compact").exists()

    names = sorted(os.listdir(folder))
    (folder / "zz-NOTES.txt").write_text("an operator's file")   # sorts after every part file
    staged = compactor.stage("events", MIDNIGHT_DAY, names)
    assert not compactor.swap("events", MIDNIGHT_DAY, staged, names)
    compactor.discard(staged)
    assert sorted(os.listdir(folder)) == names + ["zz-NOTES.txt"] and not (tmp_path / ".compact").exists()
    (folder / "zz-NOTES.txt").unlink()
    files.write("events", 4, t(4))
    os.unlink(folder / names[0])                                # an input gone (retention): no swap either
    staged = compactor.stage("events", MIDNIGHT_DAY, names[1:])
    assert not compactor.swap("events", MIDNIGHT_DAY, staged, names)
    compactor.discard(staged)
    assert _ts(folder) == [MIDNIGHT_MS + 3, MIDNIGHT_MS + 4]


def _ts(folder: Path) -> list[int]:
    t = ds.dataset(folder, format="ipc").to_table()
    return sorted(t.column("ts").cast(pa.int64()).to_pylist())


def test_todays_folder_is_merged_once_it_holds_live_min_files(tmp_path):
    """A day not an hour past its end (the watermark's today) waits for `live_min_files` small files,
    not COMPACT_MIN_FILES: merged as it fills, a day's folder stays small however long the day."""
    _workload(str(tmp_path), UNITS)
    before = _rows(tmp_path)
    cp = Checkpoint.open(_cfg(tmp_path), environ={})
    now = MIDNIGHT_MS + 1000                           # 2022-01-08 is today; 2022-01-07 ended a second ago
    assert cp.compactor.live_min_files > UNITS and cp.compact_archive(now) == []
    cp.compactor.live_min_files = UNITS
    done = cp.compact_archive(now)
    assert [(c.date, c.files_before, c.files_after) for c in done] == [("2022-01-07", UNITS, 1), ("2022-01-08", UNITS, 1)]
    for i in range(UNITS + 1, UNITS + 11):            # today goes on: ten more files, under the bound again
        cp.commit(_unit(i))
        cp.flush()
    assert cp.compact_archive(now) == []
    cp.compactor.live_min_files = 10
    done = cp.compact_archive(now)
    assert [(c.date, c.files_before, c.files_after) for c in done] == [("2022-01-07", 11, 1), ("2022-01-08", 11, 1)]
    rows = _rows(tmp_path)
    assert len(rows) == 4 * (UNITS + 10) and len({r["event_id"] for r in rows}) == len(rows)
    assert all(r in rows for r in before)
    cp.close()


def test_merging_today_while_commits_and_flushes_go_on_keeps_every_row_once(tmp_path):
    """The live day's merge races the flushes that add files to its folder (the daemon's upkeep thread
    and its commits): however they interleave, every row is there once, and the folder stays small."""
    cp = Checkpoint.open(_cfg(tmp_path), environ={})
    cp.compactor.live_min_files = 8
    now = MIDNIGHT_MS + 1000
    stop = threading.Event()
    passes: list[int] = []

    def compact() -> None:
        while not stop.is_set():
            passes.append(len(cp.compact_archive(now)))

    worker = threading.Thread(target=compact)
    worker.start()
    try:
        for i in range(1, 301):
            cp.commit(_unit(i))
            cp.flush()
    finally:
        stop.set()
        worker.join(30)
    assert not worker.is_alive()
    rows = _rows(tmp_path)
    assert len(rows) == 4 * 300 and len({r["event_id"] for r in rows}) == 4 * 300
    assert sum(passes) >= 2                            # merged while the files came, not only at the end
    done = cp.compact_archive(now)
    assert all(c.files_after <= 2 for c in done)
    assert len(_rows(tmp_path)) == 4 * 300 and not (tmp_path / ".compact").exists()
    cp.close()


CONFIG = """
[storage]
data_dir = "{data}"
commit_interval = "50ms"
flush_interval = "200ms"

[pipeline]
allowed_lateness = "0s"
idle_timeout = "30s"

[sources.webhook]
type = "ingest"
ack = "durable"

[[aggregations]]
name = "by_cat"
group_by = ["category"]
window = { type = "tumbling", size = "1s" }
metrics = { events = "count" }
"""


def test_a_live_daemon_merges_a_past_days_window_files(daemon_factory, tmp_path):
    d = daemon_factory.start(CONFIG, env={"STOREPULSE_ARCHIVE_INTERVAL_S": "0.5"})
    start = (int(time.time() * 1000) - 3 * DAY_MS) // 1000 * 1000
    posts = COMPACT_MIN_FILES + 8
    for w in range(posts):    # a window a request: each commit closes the one before, one file each
        body = [{"event_id": f"e{w}-{i}", "ts": start + w * 1000 + i, "type": "view", "user_id": "u1",
                 "item_id": "i1", "category": "books"} for i in range(5)]
        status, _ = http_post(d.url + "/ingest", orjson.dumps(body))
        assert status == 202
    # Compaction goes by the watermark: an event of now moves it past the old day (closing the last window).
    status, _ = http_post(d.url + "/ingest", orjson.dumps([{"event_id": "now", "ts": int(time.time() * 1000) - 60_000,
                                                            "type": "view", "user_id": "u1", "item_id": "i1", "category": "toys"}]))
    assert status == 202
    day = time.strftime("%Y-%m-%d", time.gmtime(start / 1000))
    folder = tmp_path / "data" / "windows" / "by_cat" / f"date={day}"
    arrow = wait_until(lambda: (a := d.get_json("/stats")["store"]["arrow"])["partitions_compacted"] >= 1 and a,
                       30, what="a compacted partition")
    assert arrow["files_merged"] >= COMPACT_MIN_FILES
    logged = wait_until(lambda: [e for e in d.log_events() if e.get("event") == "archive_compacted"
                                 and e["table"] == "windows/by_cat"], 10, what="the archive_compacted line")
    assert day in {e["date"] for e in logged} and max(e["files_before"] for e in logged) >= COMPACT_MIN_FILES
    assert d.stop() == 0
    # Merged: one file, or two if a pass came between the watermark's jump and the commit of its closes.
    assert len(list(folder.glob("*.arrow"))) <= 2
    t = ds.dataset(tmp_path / "data" / "windows" / "by_cat", format="ipc", partitioning="hive").to_table()
    # Every old window is there, once (the window of now stays open: the source never goes idle).
    t = t.filter(pc.equal(t.column("category"), "books"))
    assert sorted(t.column("window_start").cast(pa.int64()).to_pylist()) == [start + w * 1000 for w in range(posts)]
    assert sum(t.column("events").to_pylist()) == 5 * posts
    assert not (tmp_path / "data" / ".compact").exists()


def test_a_live_daemon_merges_todays_window_files_as_they_come(daemon_factory, tmp_path):
    live_files = 12
    d = daemon_factory.start(CONFIG, env={"STOREPULSE_ARCHIVE_INTERVAL_S": "0.3",
                                          "STOREPULSE_COMPACT_LIVE_FILES": str(live_files)})
    start = (int(time.time() * 1000) - 120_000) // 1000 * 1000   # windows of the last two minutes: today's
    posts = 3 * live_files

    def post(w: int) -> None:   # a window a request: each commit closes the one before, one file each
        body = [{"event_id": f"e{w}-{i}", "ts": start + w * 1000 + i, "type": "view", "user_id": "u1",
                 "item_id": "i1", "category": "books"} for i in range(5)]
        status, _ = http_post(d.url + "/ingest", orjson.dumps(body))
        assert status == 202

    def compacted() -> int:
        return d.get_json("/stats")["store"]["arrow"]["partitions_compacted"]

    for w in range(posts):
        post(w)
    merged_before = wait_until(lambda: compacted() or 0, 30, what="today's window files merged")
    for w in range(posts, 2 * posts):                # the day goes on: more files, merged again
        post(w)
    wait_until(lambda: compacted() > merged_before, 30, what="today's folder merged again")
    logged = [e for e in d.log_events() if e.get("event") == "archive_compacted" and e["table"] == "windows/by_cat"]
    assert logged and max(e["files_before"] for e in logged) >= live_files
    assert d.stop() == 0
    folders = list((tmp_path / "data" / "windows" / "by_cat").glob("date=*"))
    assert all(len(list(f.glob("*.arrow"))) < 2 * posts for f in folders)
    assert sum(len(list(f.glob("*.arrow"))) for f in folders) < 2 * posts - live_files
    t = ds.dataset(tmp_path / "data" / "windows" / "by_cat", format="ipc", partitioning="hive").to_table()
    # Every closed window once (the last stays open: the source never goes idle).
    starts = sorted(t.column("window_start").cast(pa.int64()).to_pylist())
    assert starts == [start + w * 1000 for w in range(len(starts))] and len(starts) >= 2 * posts - 1
    assert sum(t.column("events").to_pylist()) == 5 * len(starts)
    assert not (tmp_path / "data" / ".compact").exists()


def test_merging_a_day_again_rewrites_only_its_small_files(tmp_path):
    """Late files for a merged day (a replay, a backfill): the next merge links the big merged file
    into the new folder untouched and merges only the small ones after it."""
    _workload(str(tmp_path), UNITS)
    cp = Checkpoint.open(_cfg(tmp_path), environ={})
    assert len(cp.compact_archive(AFTER)) == 2
    merged = tmp_path / "events" / "date=2022-01-08" / "part-0000000000000001.arrow"
    cp.compactor.small_file_bytes = merged.stat().st_size     # the merged file now counts as big
    for i in range(UNITS + 1, 2 * UNITS + 1):
        cp.commit(_unit(i))
        cp.flush()
    inode = merged.stat().st_ino
    done = cp.compact_archive(AFTER)
    assert [(c.date, c.files_before, c.files_after) for c in done] == [("2022-01-07", UNITS + 1, 2), ("2022-01-08", UNITS + 1, 2)]
    assert merged.stat().st_ino == inode and merged.stat().st_nlink == 1    # the same file, not a copy
    assert sorted(os.listdir(merged.parent)) == ["part-0000000000000001.arrow", f"part-{UNITS + 1:016d}.arrow"]
    rows = _rows(tmp_path)
    assert len(rows) == 8 * UNITS and len({r["event_id"] for r in rows}) == 8 * UNITS
    cp.close()


def test_storage_compaction_false_leaves_the_files_alone(tmp_path):
    from daemon.config import RetentionConfig
    from daemon.runtime.archive import ArchiveUpkeep

    _workload(str(tmp_path), UNITS)
    cp = Checkpoint.open(_cfg(tmp_path), environ={})
    off = ArchiveUpkeep(cp, RetentionConfig(), lambda: AFTER, log=None, compaction=False)
    before_any_event = ArchiveUpkeep(cp, RetentionConfig(), lambda: None, log=None)
    on = ArchiveUpkeep(cp, RetentionConfig(), lambda: AFTER, log=_Log())
    assert anyio.run(off.compact) == [] and anyio.run(before_any_event.compact) == []
    assert len(_snapshot(tmp_path)) == 2 * UNITS
    assert [c.files_after for c in anyio.run(on.compact)] == [1, 1] and len(_snapshot(tmp_path)) == 2
    cp.close()


class _Log:
    def info(self, event, **kw):
        assert event == "archive_compacted"


def test_a_filesystem_without_rename_exchange_turns_compaction_off_and_keeps_every_file(tmp_path, monkeypatch):
    """No folder of this machine's filesystems refuses RENAME_EXCHANGE (vfat, some FUSE and NFS mounts
    do, with EINVAL), so the refusal is the syscall's errno, raised where the swap calls it."""
    import errno

    from daemon.runtime.archive import ArchiveUpkeep
    from daemon.config import RetentionConfig
    from daemon.stores import compaction

    def refused(a, b):
        raise OSError(errno.EINVAL, os.strerror(errno.EINVAL), str(a))

    _workload(str(tmp_path), UNITS)
    before, files = _rows(tmp_path), sorted(_snapshot(tmp_path))
    monkeypatch.setattr(compaction, "_exchange", refused)
    cp = Checkpoint.open(_cfg(tmp_path), environ={})
    log = _Errors()
    done = anyio.run(ArchiveUpkeep(cp, RetentionConfig(), lambda: AFTER, log=log).compact)
    assert [(c.date, c.files_after) for c in done] == [("2022-01-07", UNITS)]   # the first folder only
    assert "RENAME_EXCHANGE" in done[0].error and "off until the next start" in done[0].error
    assert log.events == [("compaction_failed", "2022-01-07")]
    assert not cp.compactor.can_exchange
    assert cp.compact_archive(AFTER) == []                  # off: nothing staged, nothing tried
    assert sorted(_snapshot(tmp_path)) == files and _rows(tmp_path) == before
    assert not (tmp_path / ".compact").exists()
    cp.close()

    monkeypatch.undo()                                      # the next start tries again
    cp = Checkpoint.open(_cfg(tmp_path), environ={})
    assert [(c.date, c.files_after, c.error) for c in cp.compact_archive(AFTER)] == [("2022-01-07", 1, ""),
                                                                                 ("2022-01-08", 1, "")]
    assert _rows(tmp_path) == before
    cp.close()


class _Errors:
    def __init__(self):
        self.events = []

    def info(self, event, **kw):
        self.events.append((event, kw.get("date")))

    def error(self, event, **kw):
        self.events.append((event, kw.get("date")))
