"""Columnar grouping of one batch: rows cut into (pane, key) groups or (key, session run) groups (pure).

Why this shape: a batch of ~4k events holds ~3k distinct users and ~1.5k (item, pane) pairs, so
most groups hold one event and any per-row Python step costs as much as the fold itself. Here the
only per-row step is giving each key an integer code (one dict lookup, daemon/columns.py); panes, sorting, run
cuts and group bounds are numpy over those codes and the timestamps. The caller then walks groups,
not rows: it finds each group's states, and folds every group of the batch metric by metric
(`MetricSet.fold_groups`) over the rows in group order.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np

from daemon.columns import key_codes, take_ints

SMALL_ROWS = 64   # below this many selected rows, fixed-window grouping uses a dict (see _few_pane_groups)


class Groups(NamedTuple):
    """Groups as parallel int64 arrays: group g holds rows[lo[g]:hi[g]] (original row indices), its
    key is keys[key_code[g]], its `lead` the pane start or a run's first ts (`last`: its last ts)."""

    rows: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    key_code: np.ndarray
    lead: np.ndarray
    last: np.ndarray
    keys: list[Any]


def _no_groups(keys: list[Any]) -> Groups:
    empty = np.zeros(0, dtype=np.int64)
    return Groups(empty, empty, empty, empty, empty, empty, keys)


def selected_ts(ts: list[int], rows: list[int] | None) -> tuple[np.ndarray, np.ndarray]:
    """The selected rows' indices and timestamps as int64 arrays."""
    if rows is None:
        return np.arange(len(ts), dtype=np.int64), np.asarray(ts, dtype=np.int64)
    # A filter often keeps few rows (purchases): convert only those.
    return np.asarray(rows, dtype=np.int64), take_ints(ts, rows)


def pane_groups(ts: list[int], rows: list[int] | None, columns: Sequence[list[Any]], slide_ms: int,
                bare: bool = False) -> Groups:
    """Rows grouped by (pane start, key), groups in order of their first row (as the row-wise
    grouping made them, so max_keys overflows the same rows). `bare`: see key_codes."""
    sel, t = selected_ts(ts, rows)
    codes, keys = key_codes(columns, rows, len(ts), bare)
    if not len(t):
        return _no_groups(keys)
    if len(t) <= SMALL_ROWS:
        return _few_pane_groups(sel.tolist(), t.tolist(), codes.tolist(), keys, slide_ms)
    panes = t - t % slide_ms
    if panes[0] == panes[-1] and (panes == panes[0]).all():   # the usual batch: one pane
        order = np.argsort(codes, kind="stable")
        sizes = np.bincount(codes)   # codes are 0..k-1, in order of first appearance
        hi = np.cumsum(sizes)
        lead = np.full(len(sizes), panes[0], dtype=np.int64)
        return Groups(sel[order], hi - sizes, hi, np.arange(len(sizes), dtype=np.int64), lead, lead, keys)
    pane_values, pane_code = np.unique(panes, return_inverse=True)
    combined = codes * len(pane_values) + pane_code
    uniq, first_row, inverse = np.unique(combined, return_index=True, return_inverse=True)
    by_first = np.argsort(first_row, kind="stable")
    rank = np.empty_like(by_first)
    rank[by_first] = np.arange(len(by_first))
    group = rank[inverse]
    order = np.argsort(group, kind="stable")
    sizes = np.bincount(group, minlength=len(uniq))
    hi = np.cumsum(sizes)
    lo = hi - sizes
    ordered = uniq[by_first]
    lead = pane_values[ordered % len(pane_values)]
    return Groups(sel[order], lo, hi, ordered // len(pane_values), lead, lead, keys)


def _few_pane_groups(sel: list[int], ts: list[int], codes: list[int], keys: list[Any], slide_ms: int) -> Groups:
    """pane_groups for a few rows (a filter kept a handful of purchases), where a dict beats numpy's
    fixed cost per call; the same groups in the same order."""
    groups: dict[tuple[int, int], list[int]] = {}
    for row, t, code in zip(sel, ts, codes):
        groups.setdefault((t - t % slide_ms, code), []).append(row)
    sizes = np.fromiter(map(len, groups.values()), dtype=np.int64, count=len(groups))
    hi = np.cumsum(sizes)
    lead = np.fromiter((p for p, _ in groups), dtype=np.int64, count=len(groups))
    key_code = np.fromiter((c for _, c in groups), dtype=np.int64, count=len(groups))
    rows = np.fromiter((r for g in groups.values() for r in g), dtype=np.int64, count=len(sel))
    return Groups(rows, hi - sizes, hi, key_code, lead, lead, keys)


def session_runs(ts: list[int], rows: list[int] | None, columns: Sequence[list[Any]], gap_ms: int,
                 bare: bool = False) -> Groups:
    """Rows grouped by key and cut into runs whose neighbours are < gap apart: keys in order of
    first appearance, a key's runs oldest first, rows of a run by (ts, row). `bare`: see key_codes."""
    sel, t = selected_ts(ts, rows)
    codes, keys = key_codes(columns, rows, len(ts), bare)
    if not len(t):
        return _no_groups(keys)
    order = np.lexsort((t, codes))   # stable: equal (key, ts) keep row order
    c, s = codes[order], t[order]
    cut = np.flatnonzero((c[1:] != c[:-1]) | (s[1:] - s[:-1] >= gap_ms)) + 1
    lo = np.concatenate(([0], cut))
    hi = np.concatenate((cut, [len(s)]))
    return Groups(sel[order], lo, hi, c[lo], s[lo], s[hi - 1], keys)
