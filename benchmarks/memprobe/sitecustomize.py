"""Where the daemon's peak RSS is set: a probe of its LMDB write transactions (`benchmarks.run --memprobe FILE`).

Python imports `sitecustomize` at start from the first directory on its path that has one, so with this
directory on PYTHONPATH and STOREPULSE_MEMPROBE naming a file, the daemon's process (`python -m daemon
run`, not its recommendations process) wraps `LmdbState.write` and `Txn.read_through_map` before it
starts. For every write transaction it appends one JSON line to the file:

    {"t": unix s at its end, "fn": the function written, "ms": its duration,
     "hwm_before": VmHWM MiB before it, "hwm_after": after it,
     "anon_start"/"file_start": RssAnon/RssFile MiB (from /proc/self/statm) as it began,
     "anon_max"/"file_max": the largest of them at the samples inside it,
     "malloc_used"/"malloc_free"/"malloc_mmapped", "py_blocks_k", "arrow": what the anonymous memory
     held as it began (heap_reader)}

sampled as the transaction begins, at each `read_through_map` (each slice of the latest-window index,
each merged chain, each walked fold-log or dedupe record) and as it ends. A line whose `hwm_after`
passes its `hwm_before` raised the process's peak inside that transaction; `file_max - file_start`
says how much of the map it mapped (session 16 found the final close's peak that way, inside one slice
of the index). A rise between two lines happened outside the writes. Reading statm costs ~2 us per
sample; the probe is for finding where memory goes, not for timing runs.
"""

from __future__ import annotations

import os
import sys


def _install(path: str) -> None:
    import threading
    import time

    import orjson

    if os.getcwd() not in sys.path:   # `-m` puts the working directory on the path after site runs
        sys.path.insert(0, os.getcwd())
    from daemon.stores import lmdb_state

    page = os.sysconf("SC_PAGE_SIZE")
    mib = 2**20
    statm = os.open("/proc/self/statm", os.O_RDONLY)
    out = open(path, "ab")
    local = threading.local()

    def sample() -> tuple[int, int]:
        fields = os.pread(statm, 128, 0).split()
        resident, shared = int(fields[1]) * page, int(fields[2]) * page
        return resident - shared, shared

    def hwm() -> int:
        with open("/proc/self/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1]) // 1024
        return 0

    def note() -> None:
        marks = getattr(local, "marks", None)
        if marks is not None:
            anon, file = sample()
            marks[0] = max(marks[0], anon)
            marks[1] = max(marks[1], file)

    write, read_through_map = lmdb_state.LmdbState.write, lmdb_state.Txn.read_through_map
    heap = heap_reader()

    def probed_write(self, fn):   # type: ignore[no-untyped-def]
        before, t0 = hwm(), time.perf_counter()
        anon, file = sample()
        start_heap = heap()
        local.marks = [anon, file]
        try:
            return write(self, fn)
        finally:
            note()
            marks, local.marks = local.marks, None
            line = {"t": round(time.time(), 3), "fn": getattr(fn, "__qualname__", repr(fn))[:60],
                    "ms": round((time.perf_counter() - t0) * 1000, 2), "hwm_before": before, "hwm_after": hwm(),
                    "anon_start": anon // mib, "file_start": file // mib,
                    "anon_max": marks[0] // mib, "file_max": marks[1] // mib, **start_heap}
            out.write(orjson.dumps(line) + b"\n")
            out.flush()

    def probed_read_through_map(self, nbytes):   # type: ignore[no-untyped-def]
        note()
        return read_through_map(self, nbytes)

    lmdb_state.LmdbState.write = probed_write
    lmdb_state.Txn.read_through_map = probed_read_through_map


def heap_reader():   # type: ignore[no-untyped-def]
    """What the anonymous memory holds as a transaction begins, in MiB: glibc malloc's bytes in use and
    free in its arenas (`mallinfo2`; LMDB's dirty pages and most C buffers), its mmapped chunks, Python's
    small-object blocks in use (`sys.getallocatedblocks`, a count: pymalloc's own arenas are mmapped,
    outside malloc) and pyarrow's pool. One `mallinfo2` walks malloc's bins: ~0.1-1 ms."""
    import ctypes
    import ctypes.util

    class _Mallinfo2(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                          "fsmblks", "uordblks", "fordblks", "keepcost")]

    mib = 2**20
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallinfo2.restype = _Mallinfo2
    except (OSError, AttributeError):
        libc = None

    def read() -> dict:
        out = {"py_blocks_k": sys.getallocatedblocks() // 1000}
        if libc is not None:
            m = libc.mallinfo2()
            out.update(malloc_used=m.uordblks // mib, malloc_free=m.fordblks // mib, malloc_mmapped=m.hblkhd // mib)
        pa = sys.modules.get("pyarrow")
        if pa is not None:
            out["arrow"] = pa.total_allocated_bytes() // mib
        return out

    return read


if os.environ.get("STOREPULSE_MEMPROBE") and sys.orig_argv[1:4] == ["-m", "daemon", "run"]:
    _install(os.environ["STOREPULSE_MEMPROBE"])
