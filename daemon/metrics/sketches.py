"""Sketch metrics via Apache DataSketches: distinct (HLL), quantiles (KLL), topk (frequent items).

Error bounds (a priori, from the library): distinct is exact up to 16 values (kept as a tuple),
then uses HLL lg_k=16 with the union
(composite) estimator, 0.41% relative standard error (1.2% at 99.7%, so SPEC's "<= 2%" holds
with margin; lg_k=14 missed 2% about once per 1,000 windows in the oracle test's measurements); that
estimate depends only on the set of values, never on their order or batching. pNN uses KLL k=200:
rank error <= 1.33% with 99% confidence, exact while a window holds <= 200 values.
topk uses a frequent-items map of >= 8*k slots: count error <= 3.5/2^lg of the total weight.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Any

import datasketches as ds
import numpy as np
import orjson

from daemon.aggconfig import MetricSpec
from daemon.metrics.sharing import shared
from daemon import jsonbytes, native

HLL_LG_K = 16
_compiled: Any = native.compiled("daemon.metrics._distinct")   # Distinct's group loops compiled (_distinct.pyx)
SMALL_DISTINCT = 16  # a distinct state keeps up to this many values in a tuple before it becomes an HLL
KLL_K = 200
_KLL_BULK_MIN = 16  # below this, per-value update beats building a numpy array


# HLL serialisation preamble (DataSketches HllUtil): byte 1 serial version, 2 family,
# 5 flags (16 = out of order), 7 mode (low bits: 0 list, 1 set, 2 hll).
_HLL_SER_VER, _HLL_FAMILY, _HLL_OOO_FLAG, _HLL_MODE_HLL = 1, 7, 16, 2
_HLL8_MODE_BYTES = 40   # an HLL_8 sketch in HLL mode serialises to this preamble + 2^lg_k registers


def composite_estimate(sketch: ds.hll_sketch) -> float:
    """The HLL estimate from the registers alone, as after a union.

    A directly updated sketch answers with its HIP estimator, which depends on insertion
    order; marking it out of order makes the answer depend only on the set of values, so a
    run replayed after a crash, or batched differently, gives the same number.
    """
    if sketch.get_compact_serialization_bytes() < _HLL8_MODE_BYTES + (1 << sketch.lg_config_k):
        return sketch.get_estimate()   # list/set modes (small counts) are order-independent already
    data = bytearray(sketch.serialize_compact())
    if len(data) < 8 or data[1] != _HLL_SER_VER or data[2] != _HLL_FAMILY or data[7] & 3 != _HLL_MODE_HLL:
        return sketch.get_estimate()   # list/set modes (small counts) are order-independent already
    data[5] |= _HLL_OOO_FLAG
    return ds.hll_sketch.deserialize(bytes(data)).get_estimate()


Small = tuple[Any, ...]   # a Distinct state's distinct values while there are few (an HLL after)


@dataclass(frozen=True, slots=True)
class Distinct:
    """Approximate count of distinct values (HyperLogLog, HLL_8 registers); exact up to SMALL_DISTINCT.

    A state starts as a tuple of its distinct values (first seen first) and becomes an HLL sketch
    past SMALL_DISTINCT of them: most open sessions and panes see a few values, and a tuple of 16
    costs 168 bytes where an HLL holding 9 already costs ~325 (measured RSS: its C++ object and
    coupon table; 8 was the bound until the memory benchmark's item panes, with ~6-12 viewers each,
    showed it). A tuple answers its length, the exact count; an HLL holding those few values
    answered its coupon count, the same number unless two values shared a 26-bit coupon (per state
    of 16 values, ~2e-6), when it was one short. A state is a tuple
    exactly while its set of values is small, so the answer still depends on that set alone, never
    on order, batching or merges; dumps keep the tuple (as a JSON list, which `load` tells from an
    HLL blob by its first byte, so states dumped before it still load), so a restart changes nothing.
    """

    lg_k: int = HLL_LG_K
    small: int = SMALL_DISTINCT
    kind = "int64"

    @classmethod
    def from_spec(cls, spec: MetricSpec) -> Distinct:
        return cls()

    def empty(self) -> Small:
        return ()

    def sketch(self, values: Iterable[Any]) -> ds.hll_sketch:
        """A new HLL holding `values`."""
        out = ds.hll_sketch(self.lg_k, ds.HLL_8)
        update = out.update
        for v in values:
            update(v)
        return out

    def fold(self, state: Small | ds.hll_sketch, values: Sequence[Any]) -> Small | ds.hll_sketch:
        if type(state) is tuple:
            # First-seen order, as fold_one keeps it: a dump then never depends on set order.
            new = dict.fromkeys(values)
            new.pop(None, None)
            for v in state:
                new.pop(v, None)
            if not new:
                return state
            if len(state) + len(new) <= self.small:
                return state + tuple(map(shared, new))
            return self.sketch((*state, *new))
        # A set drops repeats (one user, many events) at C speed before the slower update.
        update = state.update
        for v in set(values):
            if v is not None:
                update(v)
        return state

    def fold_one(self, state: Small | ds.hll_sketch, value: Any) -> Small | ds.hll_sketch:
        if value is None:
            return state
        if type(state) is tuple:
            if value in state:
                return state
            return state + (shared(value),) if len(state) < self.small else self.sketch((*state, value))
        state.update(value)
        return state

    def fold_groups(self, states: list[list[Any]], j: int, values: Sequence[Any], lo: list[int],
                    hi: list[int]) -> None:
        """Fold group g, values[lo[g]:hi[g]], into states[g][j] for every g (see MetricSet.fold_groups);
        a one-event group is fold_one inline, without a call per group."""
        if _compiled is not None:
            _compiled.fold_groups(self, states, j, values, lo, hi)
            return
        fold, small = self.fold, self.small
        for s, a, b in zip(states, lo, hi):
            if b - a > 1:
                s[j] = fold(s[j], values[a:b])
            elif (v := values[a]) is None:
                continue
            elif type(state := s[j]) is not tuple:
                state.update(v)
            elif v not in state:
                s[j] = state + (shared(v),) if len(state) < small else self.sketch((*state, v))

    def fold_column(self, column: list[Any], slots: list[int], values: Sequence[Any], lo: list[int],
                    hi: list[int]) -> None:
        """Fold group g into column[slots[g]] for every g (see MetricSet.fold_slots); as fold_groups."""
        if _compiled is not None:
            _compiled.fold_column(self, column, slots, values, lo, hi)
            return
        fold, small = self.fold, self.small
        for s, a, b in zip(slots, lo, hi):
            if b - a > 1:
                column[s] = fold(column[s], values[a:b])
            elif (v := values[a]) is None:
                continue
            elif type(state := column[s]) is not tuple:
                state.update(v)
            elif v not in state:
                column[s] = state + (shared(v),) if len(state) < small else self.sketch((*state, v))

    def merge(self, a: Small | ds.hll_sketch, b: Small | ds.hll_sketch) -> Small | ds.hll_sketch:
        return self.merge_many([a, b])

    def merge_many(self, states: Sequence[Small | ds.hll_sketch]) -> Small | ds.hll_sketch:
        """All states together in one union (a hopping window merges its panes at once)."""
        sketches = [s for s in states if type(s) is not tuple]
        values = dict.fromkeys(chain.from_iterable(s for s in states if type(s) is tuple))
        if not sketches:
            return tuple(values) if len(values) <= self.small else self.sketch(values)
        union = ds.hll_union(self.lg_k)
        for s in sketches:
            union.update(s)
        for v in values:
            union.update(v)
        return union.get_result(ds.HLL_8)

    def result_many(self, states: Sequence[Small | ds.hll_sketch]) -> int:
        """The result of all states merged, without building the merged state of small ones."""
        if all(type(s) is tuple for s in states):
            values = dict.fromkeys(chain.from_iterable(states))
            return len(values) if len(values) <= self.small else self.result(self.sketch(values))
        return self.result(self.merge_many(states))

    def results_of(self, states: list[Small | ds.hll_sketch], bounds: Sequence[int]) -> list[int]:
        """`result_many(states[bounds[r]:bounds[r + 1]])` for every row r (a closed window's panes).

        A row of tuples is counted by one set union in C; past `small` values its sketch is built from
        that set, in set order (the estimate depends only on the set of values). A row with an HLL
        is merged as `result_many` merges it. (The union's own estimate is not the same number: its
        kxq sums are rebuilt only by `get_result`.)"""
        union, small, result, out = set().union, self.small, self.result, []
        for a, b in zip(bounds, bounds[1:]):
            if b - a == 1:
                state = states[a]
                out.append(len(state) if type(state) is tuple else result(state))
                continue
            part = states[a:b]
            try:
                values = union(*part)
            except TypeError:   # an HLL among them (it is not iterable)
                out.append(result(self.merge_many(part)))
                continue
            n = len(values)
            out.append(n if n <= small else result(self.sketch(values)))
        return out

    def results_each(self, states: list[Small | ds.hll_sketch]) -> list[int]:
        """`result` of each state."""
        result = self.result
        return [len(s) if type(s) is tuple else result(s) for s in states]

    def result(self, state: Small | ds.hll_sketch) -> int:
        if type(state) is tuple:
            return len(state)
        if state.is_empty():
            return 0
        return int(round(composite_estimate(state)))

    def dump(self, state: Small | ds.hll_sketch) -> bytes:
        if type(state) is tuple:
            return jsonbytes.dumps(state)
        return bytes(state.serialize_compact())

    def dump_temporary(self, state: Small | ds.hll_sketch) -> bytes:
        """dump's bytes, for a record that copies them (no right-sized copy of its own)."""
        if type(state) is tuple:
            return orjson.dumps(state)
        return bytes(state.serialize_compact())

    def load(self, data: bytes) -> Small | ds.hll_sketch:
        if data[:1] == b"[":   # an HLL blob starts with its preamble length (2, 3 or 10)
            return tuple(map(shared, orjson.loads(data)))
        sketch = ds.hll_sketch.deserialize(data)
        if sketch.tgt_type != ds.HLL_8:
            union = ds.hll_union(self.lg_k)
            union.update(sketch)
            sketch = union.get_result(ds.HLL_8)
        return sketch


@dataclass(frozen=True, slots=True)
class Quantile:
    """Approximate q-quantile (nearest rank: the smallest value with rank >= q); None when empty."""

    q: float = 0.5
    k: int = KLL_K
    kind = "float64"

    @classmethod
    def from_spec(cls, spec: MetricSpec) -> Quantile:
        if spec.q is None or not 0.0 < spec.q < 1.0:
            raise ValueError(f"metric {spec.name!r}: quantile needs 0 < q < 1, got {spec.q!r}")
        return cls(q=spec.q)

    def empty(self) -> ds.kll_doubles_sketch:
        return ds.kll_doubles_sketch(self.k)

    def fold(self, state: ds.kll_doubles_sketch, values: Sequence[Any]) -> ds.kll_doubles_sketch:
        vals = [v for v in values if v is not None] if None in values else values
        if len(vals) >= _KLL_BULK_MIN:
            state.update(np.asarray(vals, dtype=np.float64))
        else:
            update = state.update
            for v in vals:
                update(float(v))
        return state

    def merge(self, a: ds.kll_doubles_sketch, b: ds.kll_doubles_sketch) -> ds.kll_doubles_sketch:
        return self.merge_many([a, b])

    def merge_many(self, states: Sequence[ds.kll_doubles_sketch]) -> ds.kll_doubles_sketch:
        """All states together: one copy of the first, the others merged into it."""
        out = ds.kll_doubles_sketch.deserialize(states[0].serialize())
        for s in states[1:]:
            out.merge(s)
        return out

    def result(self, state: ds.kll_doubles_sketch) -> float | None:
        if state.is_empty():
            return None
        return float(state.get_quantile(self.q, True))

    def dump(self, state: ds.kll_doubles_sketch) -> bytes:
        return bytes(state.serialize())

    def load(self, data: bytes) -> ds.kll_doubles_sketch:
        return ds.kll_doubles_sketch.deserialize(data)


def topk_lg_size(k: int) -> int:
    """log2 of the frequent-items map size for top-k: at least 8*k slots, at least 256."""
    return max(8, math.ceil(math.log2(8 * k)))


@dataclass(frozen=True, slots=True)
class TopK:
    """The k most frequent values (as str) with estimated counts, most frequent first."""

    k: int = 10
    kind = "topk"

    @classmethod
    def from_spec(cls, spec: MetricSpec) -> TopK:
        if spec.k is None or spec.k < 1:
            raise ValueError(f"metric {spec.name!r}: topk needs k >= 1, got {spec.k!r}")
        return cls(k=spec.k)

    def empty(self) -> ds.frequent_strings_sketch:
        return ds.frequent_strings_sketch(topk_lg_size(self.k))

    def fold(self, state: ds.frequent_strings_sketch, values: Sequence[Any]) -> ds.frequent_strings_sketch:
        update = state.update
        for v, n in Counter(values).items():
            if v is not None:
                update(v if type(v) is str else str(v), n)
        return state

    def merge(self, a: ds.frequent_strings_sketch, b: ds.frequent_strings_sketch) -> ds.frequent_strings_sketch:
        return self.merge_many([a, b])

    def merge_many(self, states: Sequence[ds.frequent_strings_sketch]) -> ds.frequent_strings_sketch:
        """All states together, merged into one new sketch."""
        out = ds.frequent_strings_sketch(topk_lg_size(self.k))
        for s in states:
            out.merge(s)
        return out

    def result(self, state: ds.frequent_strings_sketch) -> list[dict[str, Any]]:
        if state.is_empty():
            return []
        rows = state.get_frequent_items(ds.NO_FALSE_NEGATIVES)
        rows.sort(key=lambda r: (-r[1], r[0]))  # ties by value, for a stable answer
        return [{"value": r[0], "count": int(r[1])} for r in rows[: self.k]]

    def dump(self, state: ds.frequent_strings_sketch) -> bytes:
        return bytes(state.serialize())

    def load(self, data: bytes) -> ds.frequent_strings_sketch:
        return ds.frequent_strings_sketch.deserialize(data)
