# cython: language_level=3, wraparound=False, boundscheck=False
"""`SegmentBuilder.put` compiled (stores/segments.py `_Buffers`): the builder's buffers as attributes of
a C base class, the record appended to its key's bucket with the two lengths written straight into the
bucket's arrays. A full state write puts every changed state (~30-50k every 5 s at 20-30k events/s):
~0.7 -> ~0.4 µs per record. Equal segments: tests/unit/test_segments.py builds the same records with
both. A change to one is made to the other.
"""

from cpython cimport array
from zlib import crc32

N_BUCKETS = 64                                # segments.BUCKETS (segments.py checks they agree)
cdef unsigned int TOMBSTONE = 0xFFFFFFFF      # segments.TOMBSTONE
cdef Py_ssize_t BUCKETS = N_BUCKETS


cdef inline void _append(array.array a, unsigned int v) except *:
    cdef Py_ssize_t n = len(a)
    array.resize_smart(a, n + 1)
    a.data.as_uints[n] = v


cdef class Buffers:
    """The per-bucket buffers and counters of a SegmentBuilder, and its `put`."""

    cdef public list _keys, _values, _klen, _vlen
    cdef public Py_ssize_t _n, _bytes, spill_bytes
    cdef public object _spill
    cdef public list spilled

    def put(self, key, value):
        """Add a record (None: a tombstone)."""
        cdef Py_ssize_t b = crc32(key) % BUCKETS
        cdef Py_ssize_t kn = len(key), vn
        self._keys[b] += key
        _append(<array.array>self._klen[b], <unsigned int>kn)
        if value is None:
            _append(<array.array>self._vlen[b], TOMBSTONE)
            self._bytes += kn + 8
        else:
            vn = len(value)
            self._values[b] += value
            _append(<array.array>self._vlen[b], <unsigned int>vn)
            self._bytes += kn + vn + 8
        self._n += 1
        if self._bytes >= self.spill_bytes and self._spill is not None:
            self._spill_out()
