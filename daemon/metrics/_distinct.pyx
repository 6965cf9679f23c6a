# cython: language_level=3, wraparound=False
"""`Distinct.fold_groups` and `Distinct.fold_column` compiled (metrics/sketches.py): the same loop over
the groups, with C locals; a group of several events still goes to `Distinct.fold`, one event is
folded inline exactly as there (an HLL's `update`, or the value added to the small tuple, interned,
or the tuple turned into an HLL past `small`). Equal states: tests/unit/test_metrics.py runs both.
A change to one is made to the other.
"""

from sys import intern


cdef inline object _fold_value(metric, object state, object v, Py_ssize_t small):
    """`state` after one value that is not None: an HLL updated in place, a small tuple as it was or with
    `v` added (interned), or an HLL of the tuple's values and `v` past `small`."""
    if type(state) is not tuple:
        state.update(v)
        return state
    if v in <tuple>state:
        return state
    if len(<tuple>state) < small:
        return state + ((intern(v) if type(v) is str else v),)
    return metric.sketch((*state, v))


def fold_groups(metric, list states, Py_ssize_t j, list values, list lo, list hi):
    """Group g, values[lo[g]:hi[g]], folded into states[g][j] for every g."""
    cdef Py_ssize_t g, a, b, n = len(states)
    cdef Py_ssize_t small = metric.small
    if len(lo) != n or len(hi) != n:
        raise ValueError("fold_groups: states, lo and hi of unequal length")
    fold = metric.fold
    for g in range(n):
        a = lo[g]
        b = hi[g]
        s = states[g]
        if b - a > 1:
            s[j] = fold(s[j], values[a:b])
        elif values[a] is not None:
            s[j] = _fold_value(metric, s[j], values[a], small)


def fold_column(metric, list column, list slots, list values, list lo, list hi):
    """Group g folded into column[slots[g]] for every g."""
    cdef Py_ssize_t g, a, b, k, n = len(slots)
    cdef Py_ssize_t small = metric.small
    if len(lo) != n or len(hi) != n:
        raise ValueError("fold_column: slots, lo and hi of unequal length")
    fold = metric.fold
    for g in range(n):
        a = lo[g]
        b = hi[g]
        k = slots[g]
        if b - a > 1:
            column[k] = fold(column[k], values[a:b])
        elif values[a] is not None:
            column[k] = _fold_value(metric, column[k], values[a], small)
