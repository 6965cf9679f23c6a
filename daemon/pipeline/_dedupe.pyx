# cython: language_level=3, boundscheck=False, wraparound=False
"""`DedupeFilter._insert_each` compiled (pipeline/dedupe.py): the same linear probe over the same int64
table, id by id, in C. It replaces the numpy rounds for batches of any size there (a probe is a few ns
here; a numpy round over a 4k batch costs ~10 calls). Equal results: tests/unit/test_dedupe.py runs
both against the per-id reference. A change to one is made to the other.
"""

cdef enum:
    EMPTY = 0


def insert_each(long long[::1] table, const long long[::1] hashes, unsigned char[::1] added):
    """Add each hash not in `table` (a power-of-two size, less than full), in order: added[j] = 1 where
    hash j was added (so only the first of repeats is). Returns how many were added."""
    cdef Py_ssize_t j, n = hashes.shape[0], count = 0
    cdef unsigned long long mask = table.shape[0] - 1, p
    cdef long long h, cell
    cdef Py_ssize_t size = table.shape[0], probes
    cdef bint full = False
    if added.shape[0] != n:
        raise ValueError("insert_each: hashes and added of unequal length")
    if table.shape[0] == 0 or table.shape[0] & (table.shape[0] - 1):
        raise ValueError("insert_each: the table's size is not a power of two")
    with nogil:
        for j in range(n):
            h = hashes[j]
            p = (<unsigned long long>h) & mask
            probes = 0
            while True:
                probes += 1
                if probes > size:   # no empty cell (the caller keeps the table at most half full)
                    full = True
                    break
                cell = table[p]
                if cell == h:
                    added[j] = 0
                    break
                if cell == EMPTY:
                    table[p] = h
                    added[j] = 1
                    count += 1
                    break
                p = (p + 1) & mask
            if full:
                break
    if full:
        raise ValueError("insert_each: the table is full")
    return count
