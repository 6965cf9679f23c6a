"""Memory given back: glibc malloc's arenas and free pages, and the pages read through a file map.

Both processes hold ~10^6 long-lived small objects (pymalloc) and make large short-lived buffers
now and then (a full state write serialises every changed state; an answer of the recommendations
process is 20-40 MiB). Measured in the benchmark's memory scenario (~1M open states), glibc's
`mallinfo2` at the plateau showed 154 MiB free but kept in the daemon's malloc arenas and 61 MiB in
the process's, and the daemon's CPU lane runs in anyio's worker threads, which take turns: each
thread gets its own arena, and what one frees the next one does not reuse.

- `limit_arenas` (at start, before threads): one arena. The GIL already serialises nearly every
  allocation, so more arenas only add free memory nobody reuses (with `MALLOC_ARENA_MAX=1` in the
  environment the daemon's heap at that plateau was −68 MiB).
- `trim`: `malloc_trim(0)` returns the whole free pages of every arena (not only the top of the
  heap) to the kernel; called after the transients (a full state write's or a large close's
  commit, an answer sent) and once the daemon has been quiet for a second after a commit, not
  periodically under load (what it gives back would be faulted in again at once). It walks the free
  lists once, ~3 ms, without the GIL (ctypes releases it).
- `drop_mapped`: `madvise(MADV_DONTNEED)` over a read-only shared file map (LMDB's): the pages
  read through it leave the process's RSS (RssFile) and stay in the page cache; the next read of
  one is a minor fault. Invisible to readers (the map shows the file either way).

`breakdown` says where the memory is, for /stats and the recommendations process's /healthz:
glibc's heap (in use, free chunks, mmapped chunks; the free figure counts trimmed pages too; read
through `HeapFigures`, at most every 10 s, since the walk holds the arena's lock), the
blocks pymalloc holds, and what pyarrow's memory pool has allocated (mimalloc by default: its own
maps, which `malloc_trim` does not touch, so a pool that keeps its freed pages shows as RSS none of
the other figures explain; `release_arrow_pool` gives them back, session 25: 17.6 -> 3.6 MiB after
a compaction of 3,000 files).

Session 7 measured the other knob, a fixed `M_MMAP_THRESHOLD`: ~150 MiB less but 5-10% more CPU per
event (an mmap and fresh page faults per large buffer); not used. Elsewhere than glibc (musl) both
are no-ops.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
import time
from pathlib import Path
from typing import Any

_M_ARENA_MAX = -8    # malloc.h
_MADV_DONTNEED = 4   # sys/mman.h
ARENAS = 1


def _libc() -> Any:
    name = ctypes.util.find_library("c") or "libc.so.6"
    try:
        lib = ctypes.CDLL(name)
    except OSError:
        return None
    if not hasattr(lib, "malloc_trim") or not hasattr(lib, "mallopt"):
        return None
    lib.malloc_trim.argtypes = [ctypes.c_size_t]
    lib.malloc_trim.restype = ctypes.c_int
    lib.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    lib.mallopt.restype = ctypes.c_int
    lib.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    lib.madvise.restype = ctypes.c_int
    return lib


_LIBC = _libc()


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


def _mallinfo2() -> Any:
    if _LIBC is None or not hasattr(_LIBC, "mallinfo2"):   # glibc >= 2.33
        return None
    _LIBC.mallinfo2.argtypes = []
    _LIBC.mallinfo2.restype = _Mallinfo2
    return _LIBC.mallinfo2


_MALLINFO2 = _mallinfo2()


def available() -> bool:
    """True where glibc's malloc_trim and mallopt exist."""
    return _LIBC is not None


def limit_arenas(n: int = ARENAS) -> bool:
    """Cap glibc's malloc arenas (call before the process starts threads); False where unsupported."""
    return _LIBC is not None and _LIBC.mallopt(_M_ARENA_MAX, n) == 1


HEAP_FIGURES_MAX_AGE_S = 10.0   # /stats, /metrics and /healthz read glibc's heap at most this often


class HeapFigures:
    """glibc's heap figures (`mallinfo2`), read at most once per `max_age_s` and kept in between.

    `mallinfo2` walks every free chunk of every arena under that arena's lock, and each malloc of
    every thread waits for it: 1.5 us on a fresh heap, 73 ms with 500k free chunks (in process), 0.3-0.4
    ms in the daemon and 1.3 ms in the recommendations process under a soak (session 26). Read on each
    request, a client polling /stats (the benchmark does, every 50 ms) or a tight scrape loop would
    stall the CPU lane's allocations that often; kept, it costs one walk per `max_age_s` at most.
    `read` adds `heap_walk_ms` (how long the last walk took) and `heap_figures_age_s` (how old it is)."""

    def __init__(self, max_age_s: float = HEAP_FIGURES_MAX_AGE_S) -> None:
        self.max_age_s = max_age_s
        self.walks = 0
        self._at: float | None = None
        self._figures = {"heap_in_use_bytes": 0, "heap_free_bytes": 0, "heap_mmap_bytes": 0, "heap_walk_ms": 0.0}

    def read(self) -> dict[str, Any]:
        """The figures, walked again when they are older than `max_age_s` (zeros without mallinfo2)."""
        now = time.monotonic()
        if _MALLINFO2 is not None and (self._at is None or now - self._at >= self.max_age_s):
            t0 = time.perf_counter()
            info = _MALLINFO2()
            walk_ms = (time.perf_counter() - t0) * 1000
            self._figures = {"heap_in_use_bytes": info.uordblks, "heap_free_bytes": info.fordblks,
                             "heap_mmap_bytes": info.hblkhd, "heap_walk_ms": round(walk_ms, 3)}
            self._at = now
            self.walks += 1
        age = 0.0 if self._at is None else now - self._at
        return {**self._figures, "heap_figures_age_s": round(age, 3)}


def breakdown(heap: HeapFigures) -> dict[str, Any]:
    """Where this process's memory is, in bytes: glibc's heap from `heap` (`heap_in_use_bytes`,
    `heap_free_bytes`: free chunks in the arenas, resident or not: `malloc_trim` gives their whole
    pages back to the kernel and this figure stays, `heap_mmap_bytes`: chunks in maps of their own,
    in use; read at most every `heap.max_age_s`, with `heap_walk_ms` and `heap_figures_age_s`), the
    blocks pymalloc has handed out (`python_blocks`, a count), and pyarrow's pool (`arrow_pool_bytes`
    allocated now, `arrow_pool_max_bytes` its high-water mark, `arrow_pool_backend`) when pyarrow is
    loaded (this does not load it). The heap figures are 0 where glibc's mallinfo2 is missing."""
    out: dict[str, Any] = {**heap.read(), "python_blocks": sys.getallocatedblocks()}
    pa = sys.modules.get("pyarrow")
    if pa is not None:
        pool = pa.default_memory_pool()
        out.update(arrow_pool_bytes=pool.bytes_allocated(), arrow_pool_max_bytes=pool.max_memory(),
                   arrow_pool_backend=pool.backend_name)
    return out


def release_arrow_pool() -> None:
    """Give pyarrow's pool's free pages back (mimalloc keeps them, in the heap of the thread that
    freed them and of threads that have ended: this collects the calling thread's and those;
    ~0.3 ms). Nothing when pyarrow is not loaded."""
    pa = sys.modules.get("pyarrow")
    if pa is not None:
        pa.default_memory_pool().release_unused()


def mapped_range(path: Path) -> tuple[int, int] | None:
    """(address, length) of this process's one shared map of `path` (from /proc/self/maps), or None."""
    target = os.path.realpath(path)
    found = None
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                fields = line.split(maxsplit=5)
                if len(fields) == 6 and fields[5].rstrip("\n") == target and fields[1].endswith("s"):
                    if found is not None:
                        return None    # more than one map of it: not the case this is for
                    lo, hi = (int(x, 16) for x in fields[0].split("-"))
                    found = (lo, hi - lo)
    except OSError:
        return None
    return found


def drop_mapped(addr: int, size: int) -> bool:
    """Drop the pages of a read-only shared file map at [addr, addr + size) from this process's RSS
    (they stay in the page cache); False where unsupported or refused."""
    return _LIBC is not None and size > 0 and _LIBC.madvise(addr, size, _MADV_DONTNEED) == 0


class Trimmer:
    """`malloc_trim(0)` and `release_arrow_pool()`, with their count and time, for /stats; a no-op
    where glibc is missing."""

    def __init__(self) -> None:
        self.trims = 0
        self.seconds = 0.0

    def trim(self) -> None:
        if _LIBC is None:
            return
        t0 = time.perf_counter()
        _LIBC.malloc_trim(0)
        release_arrow_pool()
        self.seconds += time.perf_counter() - t0
        self.trims += 1
