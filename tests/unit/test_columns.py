"""daemon/columns.py: rows taken from list columns and key codes, compiled and pure alike (hypothesis)."""

from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from daemon import columns
from tests.native import LOOPS
from tests.native import loop as loop_of

# Values that collide as dict keys (1 == 1.0 == True, 0 == False), NaN (equal only to itself), None.
NAN = float("nan")
VALUES = st.one_of(st.sampled_from(["a", "b", "c", "", "é", 0, 1, 1.0, True, False, -2, 2.5, NAN, None]),
                   st.text(max_size=3), st.integers(-3, 3))


def _same(a: Any, b: Any) -> bool:
    """Equal as results: the same objects, or containers of the same objects (not merely ==)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(map(_same, a, b))
    if isinstance(a, np.ndarray):
        return a.dtype == b.dtype and np.array_equal(a, b)
    return a is b


def _both(fn: Any, *args: Any) -> Any:
    """fn(*args) with each loop: the same result, or the same exception type, from both."""
    out = {}
    for kind in LOOPS:
        with loop_of(columns, kind):
            try:
                out[kind] = ("ok", fn(*args))
            except Exception as e:   # noqa: BLE001 - the two loops must raise alike
                out[kind] = ("raised", type(e))
    assert out["compiled"][0] == out["python"][0], out
    if out["python"][0] == "raised":
        assert out["compiled"][1] is out["python"][1]
    else:
        assert _same(out["compiled"][1], out["python"][1]), out
    return out["python"]


@st.composite
def table(draw: Any, max_width: int = 3) -> tuple[list[list[Any]], list[int] | None]:
    n = draw(st.integers(0, 12))
    width = draw(st.integers(1, max_width))
    cols = [draw(st.lists(VALUES, min_size=n, max_size=n)) for _ in range(width)]
    rows = draw(st.none() | st.lists(st.integers(-n, n - 1), max_size=15) if n else st.none() | st.just([]))
    return cols, rows


@given(table(), st.booleans())
def test_key_codes_match_the_pure_loop_and_name_each_rows_key(data: Any, bare: bool) -> None:
    cols, rows = data
    status, (codes, keys) = _both(columns.key_codes, cols, rows, len(cols[0]), bare)
    assert status == "ok"
    picked = range(len(cols[0])) if rows is None else rows
    row_keys = [tuple(c[i] for c in cols) for i in picked]
    assert len(codes) == len(row_keys)
    for code, key in zip(codes.tolist(), row_keys):
        got = keys[code]
        assert (got if len(cols) > 1 or not bare else (got,)) == key or key != key   # NaN: equal only to itself
    first = [c for i, c in enumerate(codes.tolist()) if c not in codes.tolist()[:i]]
    assert first == list(range(len(keys)))   # codes in order of first appearance


@given(table(max_width=1))
def test_take_matches_the_pure_loop(data: Any) -> None:
    (col,), rows = data
    _both(columns.take, col, [] if rows is None else rows)


def test_take_refuses_a_row_past_the_end_as_a_list_does() -> None:
    assert _both(columns.take, ["a", "b"], [0, 2]) == ("raised", IndexError)
    assert _both(columns.take, ["a", "b"], [-3]) == ("raised", IndexError)
    assert _both(columns.take, ["a", "b"], [-1, 0])[1] == ["b", "a"]


@given(st.lists(st.integers(-2**63, 2**63 - 1) | st.sampled_from([2**63, -2**63 - 1, True, 2.0, None]), max_size=8),
       st.data())
def test_take_ints_matches_numpys_conversion(col: list[Any], data: Any) -> None:
    rows = data.draw(st.lists(st.integers(-len(col), len(col) - 1), max_size=10)) if col else []
    _both(columns.take_ints, col, rows)


@given(st.dictionaries(VALUES, st.integers(0, 2**40)), st.lists(VALUES, max_size=10))
def test_lookup_matches_the_pure_loop(index: dict[Any, int], keys: list[Any]) -> None:
    status, got = _both(columns.lookup, index, keys)
    assert status == "ok"
    assert got.tolist() == [index.get(k, -1) for k in keys]


def test_lookup_and_key_codes_refuse_an_unhashable_key_alike() -> None:
    assert _both(columns.lookup, {"a": 1}, ["a", ["b"]]) == ("raised", TypeError)
    assert _both(columns.key_codes, [["a", ["b"]]], None, 2, False) == ("raised", TypeError)


def test_key_codes_without_columns_make_one_key() -> None:
    codes, keys = columns.key_codes([], None, 3)
    assert codes.tolist() == [0, 0, 0] and keys == [()]
    codes, keys = columns.key_codes([], [2, 0], 3)
    assert codes.tolist() == [0, 0] and keys == [()]


@given(st.lists(VALUES, max_size=15), st.frozensets(VALUES, min_size=1, max_size=3))
def test_select_matches_the_pure_loop(col: list[Any], allowed: frozenset[Any]) -> None:
    status, rows = _both(columns.select, col, allowed)
    assert status == "ok"
    if len(allowed) > 1:
        assert rows == [i for i, v in enumerate(col) if v in allowed]
    else:
        assert rows == [i for i, v in enumerate(col) if v == next(iter(allowed))]
