# cython: language_level=3, boundscheck=False, wraparound=False
"""daemon/columns.py's loops compiled: the same loops over the same lists and dicts, with the row
indices as C integers and the codes written straight into the int64 array (no list of Python ints to
copy). Rows index as list indices do (negative from the end; IndexError past it). Each returns what
the loop in columns.py returns: tests/unit/test_columns.py runs both. A change to one is made to the other.
"""

import numpy as np

from cpython.dict cimport PyDict_GetItemWithError, PyDict_SetItem
from cpython.list cimport PyList_GET_ITEM, PyList_GET_SIZE, PyList_New, PyList_SET_ITEM
from cpython.ref cimport PyObject, Py_INCREF
from cpython.tuple cimport PyTuple_New, PyTuple_SET_ITEM


cdef inline object _at(list column, object row):
    """column[row], as a list index (Cython's bounds checks are off in this module: this is the check)."""
    cdef Py_ssize_t i = row, n = PyList_GET_SIZE(column)
    if i < 0:
        i += n
    if i < 0 or i >= n:
        raise IndexError("list index out of range")
    return <object>PyList_GET_ITEM(column, i)


cdef inline object _value(list column, list rows, Py_ssize_t k):
    """Row k of the selection: column[k] without `rows`, else column[rows[k]]."""
    if rows is None:
        return <object>PyList_GET_ITEM(column, k)
    return _at(column, <object>PyList_GET_ITEM(rows, k))


def take(list column, list rows):
    """[column[i] for i in rows]."""
    cdef Py_ssize_t k, m = PyList_GET_SIZE(rows)
    cdef list out = PyList_New(m)
    cdef object v
    for k in range(m):
        v = _at(column, <object>PyList_GET_ITEM(rows, k))
        Py_INCREF(v)
        PyList_SET_ITEM(out, k, v)
    return out


def take_ints(list column, list rows):
    """The values at rows as an int64 array; None if one is not an int or does not fit (the caller's
    numpy conversion then converts or refuses it, as it always did)."""
    cdef Py_ssize_t k, m = PyList_GET_SIZE(rows)
    arr = np.empty(m, dtype=np.int64)
    cdef long long[::1] out = arr
    cdef object v
    for k in range(m):
        v = _at(column, <object>PyList_GET_ITEM(rows, k))
        if type(v) is not int:
            return None
        try:
            out[k] = v
        except OverflowError:
            return None
    return arr


def lookup(dict index, list keys):
    """index[key] for each key as an int64 array, -1 where a key is not in index."""
    cdef Py_ssize_t k, m = PyList_GET_SIZE(keys)
    arr = np.empty(m, dtype=np.int64)
    cdef long long[::1] out = arr
    cdef PyObject* got
    for k in range(m):
        got = PyDict_GetItemWithError(index, <object>PyList_GET_ITEM(keys, k))   # raises for an unhashable key
        out[k] = -1 if got is NULL else <object>got
    return arr


def key_codes(list columns, list rows, bint bare):
    """columns.key_codes for one or more list columns: (codes, keys)."""
    cdef Py_ssize_t width = PyList_GET_SIZE(columns), m, k, c, code
    cdef list col, keys = []
    cdef dict index = {}
    cdef object v
    cdef tuple t
    cdef PyObject* got
    cdef list cols = [<list?>col for col in columns]
    if rows is not None:
        m = PyList_GET_SIZE(rows)
    else:   # as zip: the shortest column
        m = min([PyList_GET_SIZE(<list>col) for col in cols])
    arr = np.empty(m, dtype=np.int64)
    cdef long long[::1] out = arr
    col = <list>PyList_GET_ITEM(cols, 0)
    for k in range(m):
        if width == 1:
            v = _value(col, rows, k)
        else:
            t = PyTuple_New(width)
            for c in range(width):
                v = _value(<list>PyList_GET_ITEM(cols, c), rows, k)
                Py_INCREF(v)
                PyTuple_SET_ITEM(t, c, v)
            v = t
        got = PyDict_GetItemWithError(index, v)
        if got is NULL:
            code = len(keys)
            PyDict_SetItem(index, v, code)
            keys.append(v if bare or width > 1 else (v,))
        else:
            code = <object>got
        out[k] = code
    return arr, keys


def select(list column, allowed):
    """The indices of the values in `allowed` (a frozenset); with one allowed value, those == it."""
    cdef Py_ssize_t i, n = PyList_GET_SIZE(column)
    cdef list out = []
    cdef object v, value
    if len(allowed) == 1:
        (value,) = allowed
        for i in range(n):
            v = <object>PyList_GET_ITEM(column, i)
            if v == value:
                out.append(i)
    else:
        for i in range(n):
            if <object>PyList_GET_ITEM(column, i) in allowed:
                out.append(i)
    return out
