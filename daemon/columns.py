"""A batch's columns are Python lists: the rows a filter keeps, the values at some rows, and a code per
row's key (pure).

The folds of windows/ select rows (a `where`), group them by key codes and gather the metrics' values
in group order; these are the per-row steps of that, each a loop over a list with one dict probe or
one index per row. They have a compiled twin (_columns.pyx, ~1.5x faster for key codes, ~5x for
gathering) that runs when it was built (daemon/native.py); the loops here are the fallback and the
reference it must equal (tests/unit/test_columns.py runs both).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import repeat
from typing import Any

import numpy as np

from daemon import native

_compiled: Any = native.compiled("daemon._columns")


def select(column: list[Any], allowed: frozenset[Any]) -> list[int]:
    """The indices of the rows whose value is in `allowed` (with one allowed value: == it)."""
    if _compiled is not None and type(column) is list and type(allowed) is frozenset:
        return _compiled.select(column, allowed)
    if len(allowed) == 1:
        (value,) = allowed
        return [i for i, v in enumerate(column) if v == value]
    return [i for i, v in enumerate(column) if v in allowed]


def take(column: list[Any], rows: list[int]) -> list[Any]:
    """The values at `rows`, in that order."""
    if _compiled is not None and type(column) is list and type(rows) is list:
        return _compiled.take(column, rows)
    return [column[i] for i in rows]


def take_ints(column: list[int], rows: list[int]) -> np.ndarray:
    """The int values at `rows` as an int64 array."""
    if _compiled is not None and type(column) is list and type(rows) is list:
        got = _compiled.take_ints(column, rows)
        if got is not None:   # None: a value that is not an int (numpy converts or refuses it below)
            return got
    return np.asarray([column[i] for i in rows], dtype=np.int64)


def lookup(index: Mapping[Any, int], keys: Sequence[Any]) -> np.ndarray:
    """index[key] for each key as an int64 array, -1 where a key is not in `index`."""
    if _compiled is not None and type(index) is dict and type(keys) is list:
        return _compiled.lookup(index, keys)
    return np.fromiter(map(index.get, keys, repeat(-1, len(keys))), dtype=np.int64, count=len(keys))


def key_codes(columns: Sequence[list[Any]], rows: list[int] | None, n: int,
              bare: bool = False) -> tuple[np.ndarray, list[Any]]:
    """A code per selected row (0, 1, ... in order of first appearance) and the key tuple of each code
    (with `bare` and one column, the value itself: no tuple per key).

    Keys compare as dict keys do (as the row-at-a-time grouping did); no columns make one key ().
    """
    if not columns:
        return np.zeros(n if rows is None else len(rows), dtype=np.int64), [()]
    if (_compiled is not None and all(type(c) is list for c in columns)
            and (rows is None or type(rows) is list)):
        return _compiled.key_codes(list(columns), rows, bare)
    if rows is not None:
        columns = [[c[i] for i in rows] for c in columns]
    index: dict[Any, int] = {}
    values = columns[0] if len(columns) == 1 else zip(*columns)
    codes = [index.setdefault(v, len(index)) for v in values]
    keys = [(v,) for v in index] if len(columns) == 1 and not bare else list(index)
    return np.asarray(codes, dtype=np.int64), keys
