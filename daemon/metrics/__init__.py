"""Metrics: the registry of aggregate functions (one line per function), build_metric, MetricSet."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from operator import itemgetter
from typing import Any

import orjson

from daemon.aggconfig import MetricSpec
from daemon.columns import take
from daemon.metrics.base import Kind, Metric
from daemon.metrics.basic import Count, Max, Mean, Min, Sum
from daemon.metrics.funnel import Funnel
from daemon.metrics.sketches import Distinct, Quantile, TopK

METRICS = {
    "count": Count,
    "sum": Sum,
    "mean": Mean,
    "min": Min,
    "max": Max,
    "distinct": Distinct,
    "quantile": Quantile,
    "topk": TopK,
    "funnel": Funnel,
}


def build_metric(spec: MetricSpec) -> Metric:
    """The configured metric for one spec; ValueError for a func missing from METRICS."""
    cls = METRICS.get(spec.func)
    if cls is None:
        raise ValueError(f"metric {spec.name!r}: function {spec.func!r} is not available "
                         f"(registered: {', '.join(METRICS)})")
    return cls.from_spec(spec)


class MetricSet:
    """The metrics of one aggregation, handled as one list of states per (key, window).

    `gather` copies each needed column once per group, so metrics sharing a field (sum, mean
    and p95 of price) share one list.
    """

    def __init__(self, specs: Sequence[MetricSpec]) -> None:
        self.specs = tuple(specs)
        self.names = tuple(s.name for s in specs)
        self.metrics = tuple(build_metric(s) for s in specs)
        self.kinds: tuple[Kind, ...] = tuple(m.kind for m in self.metrics)
        inputs = [tuple(getattr(m, "fields", None) or ((s.field,) if s.field else ()))
                  for s, m in zip(specs, self.metrics)]
        self.fields = tuple(dict.fromkeys(f for inp in inputs for f in inp))
        # Per metric: None = the group's row indices (count); an int = a field's slot;
        # a tuple of slots = a list of tuples zipped from several fields.
        self._slots = tuple(None if not inp else self.fields.index(inp[0]) if len(inp) == 1
                            else tuple(self.fields.index(f) for f in inp) for inp in inputs)
        self._folds = tuple(m.fold for m in self.metrics)
        # Per metric, its state's bytes for a record that copies them (dump_temporary where it has one).
        self.dumps = tuple(getattr(m, "dump_temporary", m.dump) for m in self.metrics)
        self._plan = tuple(zip(range(len(self.metrics)), self._folds, self._slots))
        self._plan_groups = tuple(zip(range(len(self.metrics)), self.metrics, self._slots))

    def empty(self) -> list[Any]:
        """Fresh states, one per metric."""
        return [m.empty() for m in self.metrics]

    def gather(self, columns: Sequence[list[Any]], rows: list[int]) -> list[list[Any]]:
        """The values of `rows` in each needed column (columns in `self.fields` order)."""
        return [take(col, rows) for col in columns]

    def fold(self, states: list[Any], rows: list[int], values: list[list[Any]]) -> None:
        """Fold one group (its row indices and gathered values) into `states`, in place."""
        for j, fold, slot in self._plan:
            if slot is None:
                states[j] = fold(states[j], rows)
            elif type(slot) is int:
                states[j] = fold(states[j], values[slot])
            else:
                states[j] = fold(states[j], list(zip(*(values[s] for s in slot))))

    def fold_groups(self, states: list[list[Any]], lo: list[int], hi: list[int], rows: list[int],
                    values: list[list[Any]]) -> None:
        """Fold many groups at once, in place: group g is rows[lo[g]:hi[g]], folded into states[g].

        `values` is `gather(columns, rows)`. The loop runs per metric over every group, not per
        group over every metric, and a metric with `fold_groups` does all of a batch's groups in
        one call (count adds the group sizes, sum folds only groups with a non-zero value, distinct
        updates its sketch inline); most groups hold one event, so per-group calls were the cost.
        The states equal folding each group with `fold`.
        """
        if not states:
            return
        for j, metric, slot in self._plan_groups:
            vals = _slot_values(slot, rows, values)
            bulk = getattr(metric, "fold_groups", None)
            if bulk is not None:
                bulk(states, j, vals, lo, hi)
            else:
                _fold_each_group(metric, states, j, vals, lo, hi)

    def fold_slots(self, columns: list[list[Any]], slots: list[int], lo: list[int], hi: list[int],
                   rows: list[int], values: list[list[Any]]) -> None:
        """`fold_groups` for states kept in columns (windows/session.py): group g is folded into
        columns[j][slots[g]] for each metric j, by the metric's `fold_column` when it has one."""
        if not slots:
            return
        for j, metric, slot in self._plan_groups:
            vals = _slot_values(slot, rows, values)
            bulk = getattr(metric, "fold_column", None)
            if bulk is not None:
                bulk(columns[j], slots, vals, lo, hi)
            else:
                _fold_each_slot(metric, columns[j], slots, vals, lo, hi)

    def merge(self, a: list[Any], b: list[Any]) -> list[Any]:
        """The states of both inputs together."""
        return [m.merge(x, y) for m, x, y in zip(self.metrics, a, b)]

    @staticmethod
    def _merge_column(m: Any, column: list[Any]) -> Any:
        """One metric's states merged: by its `merge_many` in one step when it has one."""
        bulk = getattr(m, "merge_many", None)
        return bulk(column) if bulk is not None else functools.reduce(m.merge, column)

    def results(self, states: list[Any]) -> dict[str, Any]:
        """Metric name -> result value."""
        return {name: m.result(s) for name, m, s in zip(self.names, self.metrics, states)}

    def results_many(self, many: Sequence[list[Any]]) -> dict[str, Any]:
        """The results of all inputs merged (a hopping window's panes), without building the merged
        states where a metric can answer from the parts (`result_many`: count sums, distinct unions once)."""
        if len(many) == 1:
            return self.results(many[0])
        return {name: self._result_of(m, [states[j] for states in many])
                for j, (name, m) in enumerate(zip(self.names, self.metrics))}

    def results_rows(self, states: Sequence[list[Any]], bounds: Sequence[int] | None = None) -> list[dict[str, Any]]:
        """The results of many closed windows at once: row r is `results(states[r])`, or with `bounds`,
        `results_many(states[bounds[r]:bounds[r + 1]])` (a hopping window's panes).

        The same dicts as a call per row, worked out metric by metric over a column of all rows' states
        (a close emits tens of thousands of rows at once): no dispatch per row and metric, and a metric
        with `results_of(column, bounds)` (several states per row) or `results_each(column)` (one)
        answers every row in one call."""
        names, metrics = self.names, self.metrics
        rows = len(states) if bounds is None else len(bounds) - 1
        if not metrics or not rows:
            return [{} for _ in range(rows)]
        if bounds is not None and len(states) == rows:
            bounds = None   # one part per row (tumbling windows)
        columns = []
        for j, m in enumerate(metrics):
            column = list(map(itemgetter(j), states))
            if bounds is None:
                each = getattr(m, "results_each", None)
                columns.append(each(column) if each is not None else list(map(m.result, column)))
                continue
            bulk = getattr(m, "results_of", None)
            if bulk is not None:
                columns.append(bulk(column, bounds))
            else:
                columns.append([m.result(column[a]) if b - a == 1 else self._result_of(m, column[a:b])
                                for a, b in zip(bounds, bounds[1:])])
        # Filled column by column too: a third of the time of dict(zip(names, row)) per row.
        first = names[0]
        out = [{first: v} for v in columns[0]]
        for name, column in zip(names[1:], columns[1:]):
            for row, v in zip(out, column):
                row[name] = v
        return out

    def _result_of(self, m: Any, states: list[Any]) -> Any:
        """One metric's result of several states merged, as `results_many` answers it."""
        bulk = getattr(m, "result_many", None)
        return bulk(states) if bulk is not None else m.result(self._merge_column(m, states))

    def dump(self, states: list[Any]) -> bytes:
        """One blob: an orjson list of blob lengths, a newline, then each metric's dump."""
        return b"".join(self.dump_parts(states))

    def dump_parts(self, states: list[Any]) -> list[bytes]:
        """`dump`'s pieces, for a record that joins them with more (one copy of the bytes, not three:
        a full state write dumps ~10^5 states, and jsonbytes' right-sized copy of each piece and of
        their join was a third of it). A metric's `dump_temporary`, where it has one, gives its
        dump's bytes without a copy of their own."""
        blobs = [dump(s) for dump, s in zip(self.dumps, states)]
        return [orjson.dumps([len(b) for b in blobs]), b"\n", *blobs]

    def load(self, data: bytes | memoryview) -> list[Any]:
        """States from a `dump` blob."""
        data = bytes(data)
        head, _, body = data.partition(b"\n")
        lengths = orjson.loads(head)
        if len(lengths) != len(self.metrics):
            raise ValueError(f"stored state has {len(lengths)} metrics, config has {len(self.metrics)}")
        states, pos = [], 0
        for m, n in zip(self.metrics, lengths):
            states.append(m.load(body[pos:pos + n]))
            pos += n
        return states

    def signature(self) -> list[list[Any]]:
        """What a stored state depends on: each metric's name, func, field, q and k."""
        return [[s.name, s.func, s.field, s.q, s.k, list(s.steps)] for s in self.specs]


def _slot_values(slot: Any, rows: list[int], values: list[list[Any]]) -> list[Any]:
    """A metric's input column for fold_groups/fold_slots: the row numbers (slot None), one gathered
    column (an int) or tuples of several (a tuple of ints)."""
    if slot is None:
        return rows
    if type(slot) is int:
        return values[slot]
    return list(zip(*(values[s] for s in slot)))


def _fold_each_group(metric: Any, states: list[list[Any]], j: int, values: Sequence[Any], lo: list[int],
                     hi: list[int]) -> None:
    """The generic `fold_groups`: one fold per group (fold_one for a one-event group) into states[g][j]."""
    fold = metric.fold
    fold_one = getattr(metric, "fold_one", None) or _one_by_fold(fold)
    for s, a, b in zip(states, lo, hi):
        s[j] = fold_one(s[j], values[a]) if b - a == 1 else fold(s[j], values[a:b])


def _fold_each_slot(metric: Any, column: list[Any], slots: list[int], values: Sequence[Any], lo: list[int],
                    hi: list[int]) -> None:
    """The generic `fold_column`: one fold per group into column[slots[g]]."""
    fold = metric.fold
    fold_one = getattr(metric, "fold_one", None) or _one_by_fold(fold)
    for s, a, b in zip(slots, lo, hi):
        column[s] = fold_one(column[s], values[a]) if b - a == 1 else fold(column[s], values[a:b])


def _one_by_fold(fold: Any) -> Any:
    def fold_one(state: Any, value: Any) -> Any:
        return fold(state, [value])
    return fold_one


__all__ = ["METRICS", "Kind", "Metric", "MetricSet", "build_metric"]
