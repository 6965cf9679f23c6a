"""The Metric protocol: a mergeable, serialisable aggregate over one group's values."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, Protocol, TypeVar

S = TypeVar("S")

Kind = Literal["int64", "float64", "topk", "json"]


class Metric(Protocol[S]):
    """One aggregate function, configured (e.g. q or k) but holding no data itself.

    States are values the aggregator keeps per (key, window). `fold` may mutate and return
    its state; `merge` never mutates its arguments. `kind` names the result type for the
    Arrow schema: "int64", "float64" or "topk" (a list of {"value": str, "count": int}).
    A metric that needs several event fields may set `fields` (a tuple of field names); the
    aggregator then passes a list of tuples. Otherwise it passes the values of the spec's
    field, or, for a field-less metric such as count, a sequence of the group's length.

    Optional, for speed (MetricSet falls back to fold/merge/result): `fold_one(state, value)`,
    `fold_groups(states, j, values, lo, hi)` (fold values[lo[g]:hi[g]] into states[g][j] for
    every g, in place), `fold_column(column, slots, values, lo, hi)` (the same into column[slots[g]],
    for stores that keep one list per metric), `merge_many(states)` and `result_many(states)`
    (of all states merged).
    """

    kind: Kind

    def empty(self) -> S:
        """A state holding nothing."""
        ...

    def fold(self, state: S, values: Sequence[Any]) -> S:
        """Add one group's values from one batch (None values are skipped)."""
        ...

    def merge(self, a: S, b: S) -> S:
        """The state of both inputs together (associative and order-independent)."""
        ...

    def result(self, state: S) -> Any:
        """The value emitted for a closed window."""
        ...

    def dump(self, state: S) -> bytes:
        """Serialise a state; `load(dump(s))` gives an equivalent state."""
        ...

    def load(self, data: bytes) -> S:
        """Rebuild a state from `dump` bytes."""
        ...
