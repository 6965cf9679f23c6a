"""glibc malloc settings for a long-running process that handles large transient buffers.

glibc serves a request of at least its mmap threshold (128 KiB) with its own mmap, given back on
free; but by default, each time such a block is freed, the threshold rises to its size (up to
32 MiB) and the trim threshold to twice that. The daemon frees multi-MiB buffers all the time (poll
pages, the recommendations process's 20-40 MiB answers, commit bodies), so after a while most
buffers come from the heap, and freed heap memory is only returned once the top 64 MiB are free.
Fixing the thresholds (mallopt(3), as GLIBC_TUNABLES=glibc.malloc.mmap_threshold=131072 does)
turns that raise off. Measured in the memory benchmark: see benchmarks/README.md ("Memory").
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD = 128 * 1024
TRIM_THRESHOLD = 128 * 1024


def fix_malloc_thresholds() -> bool:
    """Fix glibc's mmap and trim thresholds at their defaults (no dynamic raise); False where the C
    library is not glibc (nothing is changed)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        mallopt = libc.mallopt
    except (OSError, AttributeError):   # musl has no mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
