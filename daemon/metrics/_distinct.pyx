# cython: language_level=3, wraparound=False
"""`Distinct.fold_groups` and `Distinct.fold_column` compiled (metrics/sketches.py): the same loop over
the groups, with C locals; a group of several events still goes to `Distinct.fold`, one event is
folded inline exactly as there (an HLL's `update`, or the value added to the small tuple, interned,
or the tuple turned into an HLL past `small`). Equal states: tests/unit/test_metrics.py runs both.
A change to one is made to the other.
"""

from sys import intern


cdef inline object _shared(object v):
    return intern(v) if type(v) is str else v


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
            continue
        v = values[a]
        if v is None:
            continue
        state = s[j]
        if type(state) is not tuple:
            state.update(v)
        elif v not in <tuple>state:
            s[j] = state + (_shared(v),) if len(<tuple>state) < small else metric.sketch((*state, v))


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
            continue
        v = values[a]
        if v is None:
            continue
        state = column[k]
        if type(state) is not tuple:
            state.update(v)
        elif v not in <tuple>state:
            column[k] = state + (_shared(v),) if len(<tuple>state) < small else metric.sketch((*state, v))
