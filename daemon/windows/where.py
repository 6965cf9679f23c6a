"""Compile an aggregation's `where` table into a row filter over an EventBatch (pure)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

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
        rows = _first_pass(batch.column(field), allowed)
        for field, allowed in conditions[1:]:
            col = batch.column(field)
            rows = [i for i in rows if col[i] in allowed]
        return rows

    return select


def _first_pass(col: list[Any], allowed: frozenset[Any]) -> list[int]:
    if len(allowed) == 1:
        (value,) = allowed
        return [i for i, v in enumerate(col) if v == value]
    return [i for i, v in enumerate(col) if v in allowed]
