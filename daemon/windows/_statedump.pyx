# cython: language_level=3, wraparound=False, boundscheck=False
"""`pane_records` and `session_records` compiled (windows/statedump.py): the same records, byte for
byte, with each record's bytes laid out once in C (the heads' integers written here, the key's JSON
and the states' dumps still made by orjson and the metrics). Equal records: tests/unit/test_statedump.py
runs both. A change to one is made to the other.
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from libc.string cimport memcpy

import orjson

cdef object _dumps = orjson.dumps
cdef Py_ssize_t MAX_KEY_BYTES = 480   # statedump.MAX_KEY_BYTES


cdef inline Py_ssize_t _int_len(long long v) noexcept:
    """Characters of v in decimal (with its sign)."""
    cdef Py_ssize_t n = 1
    cdef unsigned long long u
    if v < 0:
        n = 2
        u = <unsigned long long>(-(v + 1)) + 1
    else:
        u = <unsigned long long>v
    while u >= 10:
        u //= 10
        n += 1
    return n


cdef inline char* _put_int(char* p, long long v, Py_ssize_t width) noexcept:
    """v in decimal at p, `width` (_int_len) characters; the end."""
    cdef unsigned long long u
    cdef char* q = p + width
    if v < 0:
        p[0] = b'-'
        u = <unsigned long long>(-(v + 1)) + 1
    else:
        u = <unsigned long long>v
    while True:
        q -= 1
        q[0] = <char>(48 + u % 10)
        u //= 10
        if u == 0:
            break
    return p + width


cdef inline char* _put(char* p, bytes b) noexcept:
    cdef Py_ssize_t n = PyBytes_GET_SIZE(b)
    memcpy(p, PyBytes_AS_STRING(b), n)
    return p + n


cdef inline bytes _as_bytes(object blob):
    return blob if type(blob) is bytes else bytes(blob)


cdef Py_ssize_t _dump_states(list blobs, Py_ssize_t* lens, tuple dumps, object states, list columns,
                             Py_ssize_t slot) except -1:
    """Each metric's bytes into blobs (from `states`, or from the columns at `slot`); the length of
    "[l1,l2,...]\\n" and the blobs together."""
    cdef Py_ssize_t j, m = len(dumps), total = 3 + (m - 1 if m > 0 else 0)   # [,,]\n
    cdef bytes blob
    for j in range(m):
        if columns is None:
            blob = _as_bytes(dumps[j](states[j]))
        else:
            blob = _as_bytes(dumps[j]((<list>columns[j])[slot]))
        blobs[j] = blob
        lens[j] = PyBytes_GET_SIZE(blob)
        total += _int_len(lens[j]) + lens[j]
    return total


cdef char* _put_parts(char* p, list blobs, Py_ssize_t* lens, Py_ssize_t m) noexcept:
    """"[l1,l2,...]\\n" and the blobs."""
    cdef Py_ssize_t j
    p[0] = b'['
    p += 1
    for j in range(m):
        if j:
            p[0] = b','
            p += 1
        p = _put_int(p, lens[j], _int_len(lens[j]))
    p[0] = b']'
    p[1] = b'\n'
    p += 2
    for j in range(m):
        p = _put(p, <bytes>blobs[j])
    return p


cdef Py_ssize_t* _lengths(Py_ssize_t m) except NULL:
    """Room for each metric's blob length (freed by the caller)."""
    cdef Py_ssize_t* lens = <Py_ssize_t*>PyMem_Malloc((m if m > 0 else 1) * sizeof(Py_ssize_t))
    if lens == NULL:
        raise MemoryError()
    return lens


def pane_records(put, long long start, long long end, list keys, list states, tuple dumps, bint bare, long_key):
    """statedump.pane_records."""
    cdef Py_ssize_t n = len(keys)
    if len(states) != n:
        raise ValueError("pane_records: keys and states of unequal length")
    cdef Py_ssize_t* lens = _lengths(len(dumps))
    try:
        _pane_loop(put, start, end, keys, states, dumps, bare, long_key, lens)
    finally:
        PyMem_Free(lens)


cdef _pane_loop(put, long long start, long long end, list keys, list states, tuple dumps, bint bare, long_key,
                Py_ssize_t* lens):
    cdef Py_ssize_t i, n = len(keys), m = len(dumps), kn, ident_n, total, parts
    cdef Py_ssize_t sw = _int_len(start), ew = _int_len(end)
    cdef bytes kj, ek, value
    cdef char* p
    cdef list blobs = [None] * m
    for i in range(n):
        key = keys[i]
        kj = _dumps((key,) if bare else key)
        kn = PyBytes_GET_SIZE(kj)
        ident_n = 1 + sw + 1 + kn + 1                   # [start,KJ]
        if ident_n > MAX_KEY_BYTES:
            ek = long_key(b"w", b"[%d," % start + kj + b"]")
        else:
            ek = PyBytes_FromStringAndSize(NULL, 1 + ident_n)
            p = PyBytes_AS_STRING(ek)
            p[0] = b'w'
            p[1] = b'['
            p = _put_int(p + 2, start, sw)
            p[0] = b','
            p = _put(p + 1, kj)
            p[0] = b']'
        st = states[i]
        if st is None:
            put(ek, None)
            continue
        parts = _dump_states(blobs, lens, dumps, st, None, 0)
        total = 1 + sw + 1 + ew + 1 + kn + 2 + parts     # [start,end,KJ]\n + parts
        value = PyBytes_FromStringAndSize(NULL, total)
        p = PyBytes_AS_STRING(value)
        p[0] = b'['
        p = _put_int(p + 1, start, sw)
        p[0] = b','
        p = _put_int(p + 1, end, ew)
        p[0] = b','
        p = _put(p + 1, kj)
        p[0] = b']'
        p[1] = b'\n'
        _put_parts(p + 2, blobs, lens, m)
        put(ek, value)


def session_records(put, list keys, list slots, list firsts, list lasts, list columns, tuple dumps, bint bare,
                    long_key):
    """statedump.session_records."""
    cdef Py_ssize_t n = len(keys), m = len(dumps)
    if len(columns) != m:
        raise ValueError("session_records: a column per metric")
    if len(slots) != n or len(firsts) != n or len(lasts) != n:
        raise ValueError("session_records: keys, slots, firsts and lasts of unequal length")
    cdef Py_ssize_t* lens = _lengths(m)
    try:
        _session_loop(put, keys, slots, firsts, lasts, columns, dumps, bare, long_key, lens)
    finally:
        PyMem_Free(lens)


cdef _session_loop(put, list keys, list slots, list firsts, list lasts, list columns, tuple dumps, bint bare,
                   long_key, Py_ssize_t* lens):
    cdef Py_ssize_t i, n = len(keys), m = len(dumps), kn, total, parts, fw, lw, nw, slot
    cdef long long first, last
    cdef bytes kj, ek, value
    cdef char* p
    cdef list blobs = [None] * m
    for i in range(n):
        key = keys[i]
        slot = slots[i]
        first = firsts[i]
        last = lasts[i]
        kj = _dumps((key,) if bare else key)
        kn = PyBytes_GET_SIZE(kj)
        if kn > MAX_KEY_BYTES:
            ek = long_key(b"s", kj)
        else:
            ek = PyBytes_FromStringAndSize(NULL, 1 + kn)
            p = PyBytes_AS_STRING(ek)
            p[0] = b's'
            _put(p + 1, kj)
        parts = _dump_states(blobs, lens, dumps, None, columns, slot)
        fw = _int_len(first)
        lw = _int_len(last)
        nw = _int_len(parts)
        total = 1 + kn + 3 + fw + 1 + lw + 1 + nw + 4 + parts   # [KJ,[[first,last,n]]]\n + parts
        value = PyBytes_FromStringAndSize(NULL, total)
        p = PyBytes_AS_STRING(value)
        p[0] = b'['
        p = _put(p + 1, kj)
        p[0] = b','
        p[1] = b'['
        p[2] = b'['
        p = _put_int(p + 3, first, fw)
        p[0] = b','
        p = _put_int(p + 1, last, lw)
        p[0] = b','
        p = _put_int(p + 1, parts, nw)
        p[0] = b']'
        p[1] = b']'
        p[2] = b']'
        p[3] = b'\n'
        _put_parts(p + 4, blobs, lens, m)
        put(ek, value)
