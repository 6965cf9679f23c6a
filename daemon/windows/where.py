"""Compile an aggregation's `where` table into a row filter over an EventBatch (pure)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from daemon.columns import select as select_rows
from daemon.events import FIELDS, EventBatch

RowFilter = Callable[[EventBatch], list[int]]


def compile_where(where: Sequence[tuple[str, Sequence[Any]]]) -> RowFilter:
    """A function giving the indices of the rows that pass every condition (any listed value).

    Without conditions every row passes.
    """
    conditions = []
    for field, allowed in where:
        if field not in FIELDS:
            raise ValueError(f"where: unknown event field {field!r}")
        conditions.append((field, frozenset(allowed)))

    def select(batch: EventBatch) -> list[int]:
        if not conditions:
            return list(range(len(batch)))
        field, allowed = conditions[0]
        rows = select_rows(batch.column(field), allowed)
        for field, allowed in conditions[1:]:
            col = batch.column(field)
            rows = [i for i in rows if col[i] in allowed]
        return rows

    return select

