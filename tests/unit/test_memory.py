"""runtime/memory.py against the real kernel and glibc: mapped pages leave RSS, trims are counted."""

import mmap
import re
from pathlib import Path

import pytest

from daemon.runtime import memory
from daemon.stores.lmdb_state import LmdbState

pytestmark = pytest.mark.skipif(not memory.available(), reason="needs glibc (malloc_trim, madvise)")

MIB = 2**20


def rss_file_kib() -> int:
    return int(re.search(r"RssFile:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))


def test_drop_mapped_gives_read_pages_back_and_keeps_the_content(tmp_path):
    path = tmp_path / "f.bin"
    data = bytes(range(256)) * (32 * MIB // 256)
    path.write_bytes(data)
    with path.open("rb") as f, mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as m:
        before = rss_file_kib()
        assert sum(m[i + 1] for i in range(0, len(m), mmap.PAGESIZE)) > 0   # touch every page
        assert rss_file_kib() - before >= 30 * 1024
        addr, size = memory.mapped_range(path)
        assert size == len(data)
        assert memory.drop_mapped(addr, size)
        assert rss_file_kib() - before < 4 * 1024
        assert m[:] == data          # faulted back in from the page cache, the same bytes


def test_mapped_range_is_none_for_a_file_not_mapped(tmp_path):
    path = tmp_path / "g.bin"
    path.write_bytes(b"x" * 4096)
    assert memory.mapped_range(path) is None


def test_lmdb_drop_read_pages(tmp_path):
    db = LmdbState.open(tmp_path / "db", lock_path=tmp_path / "lock", db_names=("a",),
                        map_size_initial_bytes=64 * MIB, map_size_max_bytes=256 * MIB)
    try:
        value = b"v" * (4 * MIB)
        db.write(lambda txn: [txn.put("a", b"k%d" % i, value) for i in range(8)])
        db.recycle()                   # a fresh map: nothing read through it yet
        before = rss_file_kib()
        with db.reading() as txn:
            assert all(txn.get("a", b"k%d" % i) == value for i in range(8))
        assert rss_file_kib() - before >= 28 * 1024
        db.drop_read_pages()
        assert rss_file_kib() - before < 4 * 1024
        with db.reading() as txn:
            assert txn.get("a", b"k7") == value
    finally:
        db.close()


def test_trimmer_counts_and_times():
    t = memory.Trimmer()
    blocks = [bytearray(64 * 1024) for _ in range(2000)]   # ~128 MiB from malloc's heap
    del blocks[::2]
    t.trim()
    t.trim()
    assert t.trims == 2 and t.seconds > 0


def test_heap_figures_walk_the_heap_at_most_once_per_max_age():
    """mallinfo2 walks every free chunk under the arena's lock, so /stats reads it at most every
    max_age_s and answers the kept figures in between (with their age); the figures are glibc's own."""
    kept = memory.HeapFigures(max_age_s=3600)
    first = kept.read()
    blocks = [bytearray(64 * 1024) for _ in range(500)]   # ~32 MiB more in use
    again = kept.read()
    assert kept.walks == 1 and again["heap_in_use_bytes"] == first["heap_in_use_bytes"]
    assert again["heap_figures_age_s"] >= 0 and again["heap_walk_ms"] >= 0
    fresh = memory.HeapFigures(max_age_s=0)
    now = fresh.read()
    assert fresh.walks == 1 and now["heap_figures_age_s"] == 0
    assert now["heap_in_use_bytes"] + now["heap_mmap_bytes"] >= first["heap_in_use_bytes"] + 30 * 1024 * 1024
    fresh.read()
    assert fresh.walks == 2
    del blocks
    out = memory.breakdown(kept)
    assert out["heap_in_use_bytes"] == first["heap_in_use_bytes"] and out["python_blocks"] > 0


def rss_anon_mib() -> float:
    return int(re.search(r"RssAnon:\s+(\d+)", Path("/proc/self/status").read_text()).group(1)) / 1024


def test_release_arrow_pool_gives_back_what_a_finished_thread_freed():
    """pyarrow's default pool (mimalloc) keeps the pages its buffers were freed from, in the heap of
    the thread that used them, after that thread ended too: release_arrow_pool gives them back."""
    import threading

    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    if pa.default_memory_pool().backend_name != "mimalloc":
        pytest.skip("the kept pages are mimalloc's")
    base = pa.array(np.arange(8192, dtype=np.int64))   # numpy's memory: not the pool's

    def work() -> None:
        arrays = [pc.add(base, i) for i in range(1500)]   # ~94 MiB from the pool, each 64 KiB written
        assert pa.default_memory_pool().bytes_allocated() >= 1500 * 64 * 1024
        del arrays

    memory.release_arrow_pool()   # what earlier tests in this process left kept
    before = rss_anon_mib()
    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    kept = rss_anon_mib()
    assert pa.default_memory_pool().bytes_allocated() < MIB and kept - before > 50   # freed, still resident
    memory.release_arrow_pool()
    assert rss_anon_mib() < kept - 50
