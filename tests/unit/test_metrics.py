"""Metrics: exact metrics against references, sketch error bounds, merge laws, dump/load."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.aggconfig import parse_metric
from daemon.metrics import METRICS, MetricSet, build_metric
from daemon.metrics.basic import exact_partials
from daemon.metrics import sketches
from daemon.metrics.sketches import HLL_LG_K, KLL_K, Quantile, TopK, topk_lg_size
from tests.native import LOOPS
from tests.native import loop as loop_of
from tests.strategies import label_values, numeric_values

EXACT = {"count": "count", "sum": "sum(price)", "mean": "mean(price)", "min": "min(price)", "max": "max(price)"}


def metric(expr: str):
    return build_metric(parse_metric("m", expr))


def fold_all(m, values, chunk: int | None = None):
    state = m.empty()
    if chunk is None:
        return m.fold(state, list(values))
    for i in range(0, len(values), chunk):
        state = m.fold(state, list(values[i:i + chunk]))
    return state


def reference(func: str, values: list) -> object:
    present = [v for v in values if v is not None]
    if func == "count":
        return len(values)
    if func == "sum":
        return math.fsum(present)
    if func == "mean":
        return math.fsum(present) / len(present) if present else None
    if func in ("min", "max"):
        return float((min if func == "min" else max)(present)) if present else None
    raise AssertionError(func)


def nearest_rank(values: list, q: float) -> float | None:
    present = sorted(float(v) for v in values if v is not None)
    return present[max(0, math.ceil(q * len(present)) - 1)] if present else None


def test_registry_has_the_contract_functions():
    """METRICS names every metric function of the contract, plus funnel."""
    assert set(METRICS) == {"count", "sum", "mean", "min", "max", "distinct", "quantile", "topk", "funnel"}


def test_unregistered_function_is_a_clear_error():
    """build_metric refuses a func missing from METRICS with a ValueError naming it."""
    from daemon.aggconfig import MetricSpec
    from daemon.metrics import build_metric

    with pytest.raises(ValueError, match="nope"):
        build_metric(MetricSpec(name="x", func="nope", field="price"))


def test_kinds_name_the_result_types():
    """Each metric's kind is one of the Arrow result types."""
    kinds = {f: metric(e).kind for f, e in {**EXACT, "distinct": "distinct(user_id)",
                                            "quantile": "p95(price)", "topk": "topk(item_id, 3)"}.items()}
    assert kinds == {"count": "int64", "sum": "float64", "mean": "float64", "min": "float64", "max": "float64",
                     "distinct": "int64", "quantile": "float64", "topk": "topk"}


@settings(max_examples=150, deadline=None)
@given(st.lists(st.floats(allow_nan=False, allow_infinity=False, min_value=-1e300, max_value=1e300), max_size=40),
       st.randoms(use_true_random=False))
def test_exact_partials_depend_only_on_the_exact_sum(values, rng):
    """exact_partials gives the same partials for any order, and they sum to fsum(values)."""
    shuffled = list(values)
    rng.shuffle(shuffled)
    parts = exact_partials(list(values))
    assert parts == exact_partials(shuffled)
    assert math.fsum(parts) == math.fsum(values)


def test_exact_sum_beats_naive_float_order():
    """A sum is exact where naive float addition depends on order."""
    m = metric("sum(price)")
    values = [1e16, 1.0, -1e16, 1.0]
    assert sum(values) != 2.0
    assert m.result(fold_all(m, values, chunk=1)) == 2.0


@pytest.mark.parametrize("func", list(EXACT))
@settings(max_examples=60, deadline=None)
@given(values=numeric_values(), chunk=st.integers(min_value=1, max_value=10))
def test_exact_metric_matches_reference(func, values, chunk):
    """count/sum/mean/min/max equal a straightforward reference, however values are chunked."""
    m = metric(EXACT[func])
    assert m.result(fold_all(m, values, chunk)) == reference(func, values)


@pytest.mark.parametrize("func", list(EXACT))
@settings(max_examples=60, deadline=None)
@given(a=numeric_values(20), b=numeric_values(20), c=numeric_values(20))
def test_exact_merge_is_associative_and_order_independent(func, a, b, c):
    """Exact metrics merge associatively and commutatively, equal to folding everything."""
    m = metric(EXACT[func])
    sa, sb, sc = (fold_all(m, v) for v in (a, b, c))
    left = m.merge(m.merge(sa, sb), sc)
    assert left == m.merge(sa, m.merge(sb, sc)) == m.merge(m.merge(sc, sb), sa)
    assert m.result(left) == m.result(fold_all(m, a + b + c))


@pytest.mark.parametrize("expr", [*EXACT.values(), "distinct(user_id)", "p95(price)", "p50(price)", "topk(item_id, 3)"])
@settings(max_examples=40, deadline=None)
@given(nums=numeric_values(), labels=label_values())
def test_dump_load_round_trips(expr, nums, labels):
    """load(dump(state)) answers the same result, also after further folds and merges."""
    m = metric(expr)
    values = labels if expr.startswith(("distinct", "topk")) else nums
    state = fold_all(m, values)
    again = m.load(m.dump(state))
    assert m.result(again) == m.result(state)
    assert m.result(m.fold(again, values)) == m.result(m.fold(state, values))
    if expr in EXACT.values():
        assert again == state


@settings(max_examples=60, deadline=None)
@given(a=label_values(), b=label_values(), c=label_values())
def test_distinct_is_exact_on_small_sets_and_merges_order_independently(a, b, c):
    """distinct counts small sets exactly; merge order never changes the answer."""
    m = metric("distinct(user_id)")
    sa, sb, sc = (fold_all(m, v) for v in (a, b, c))
    expected = len({v for v in a + b + c if v is not None})
    results = {m.result(m.merge(m.merge(sa, sb), sc)), m.result(m.merge(sa, m.merge(sb, sc))),
               m.result(m.merge(m.merge(sc, sa), sb)), m.result(fold_all(m, a + b + c))}
    assert results == {expected}


def test_distinct_error_within_two_percent_and_independent_of_order():
    """On 200k values distinct errs < 2% and gives one answer for any order, batching or merge."""
    m = metric("distinct(user_id)")
    values = [f"user-{i}" for i in range(200_000)]
    answers = set()
    for seed in range(3):
        random.Random(seed).shuffle(values)
        answers.add(m.result(fold_all(m, values, chunk=997)))
        answers.add(m.result(m.merge(fold_all(m, values[:70_000]), fold_all(m, values[70_000:]))))
    assert len(answers) == 1
    assert abs(answers.pop() - 200_000) / 200_000 < 0.02
    assert HLL_LG_K >= 12


@pytest.mark.parametrize("q", [0.5, 0.95, 0.99])
@settings(max_examples=60, deadline=None)
@given(values=numeric_values(60), chunk=st.integers(min_value=1, max_value=30))
def test_quantile_is_exact_nearest_rank_while_small(q, values, chunk):
    """Up to k values, pNN is the exact nearest-rank quantile, however values are chunked."""
    m = Quantile(q=q)
    assert m.result(fold_all(m, values, chunk)) == nearest_rank(values, q)


@settings(max_examples=40, deadline=None)
@given(a=numeric_values(30), b=numeric_values(30), c=numeric_values(30))
def test_quantile_merge_is_associative_while_small(a, b, c):
    """Merging small KLL sketches in any grouping gives the exact quantile of all values."""
    m = Quantile(q=0.95)
    sa, sb, sc = (fold_all(m, v) for v in (a, b, c))
    expected = nearest_rank(a + b + c, 0.95)
    assert m.result(m.merge(m.merge(sa, sb), sc)) == m.result(m.merge(sa, m.merge(sb, sc))) == expected
    assert m.result(m.merge(sc, m.merge(sb, sa))) == expected


def test_quantile_rank_error_on_large_input():
    """On 100k values merged from parts, p95's true rank is within the KLL bound (k=200: 1.33%)."""
    rng = random.Random(7)
    values = [rng.lognormvariate(3, 1) for _ in range(100_000)]
    m = Quantile(q=0.95)
    parts = [fold_all(m, values[i:i + 10_000], chunk=1_000) for i in range(0, len(values), 10_000)]
    state = parts[0]
    for p in parts[1:]:
        state = m.merge(state, p)
    answer = m.result(state)
    rank = sum(v <= answer for v in values) / len(values)
    assert KLL_K == 200
    assert abs(rank - 0.95) <= 0.0133 * 1.5


@settings(max_examples=60, deadline=None)
@given(a=label_values(), b=label_values(), c=label_values())
def test_topk_counts_exactly_when_items_fit_and_merges_order_independently(a, b, c):
    """topk gives the k most frequent values with exact counts, most frequent first, for any merge order."""
    m = TopK(k=3)
    sa, sb, sc = (fold_all(m, v) for v in (a, b, c))
    counts: dict[str, int] = {}
    for v in a + b + c:
        if v is not None:
            counts[v] = counts.get(v, 0) + 1
    expected = [{"value": v, "count": n} for v, n in sorted(counts.items(), key=lambda p: (-p[1], p[0]))[:3]]
    assert m.result(m.merge(m.merge(sa, sb), sc)) == expected
    assert m.result(m.merge(sc, m.merge(sa, sb))) == expected
    assert m.result(fold_all(m, a + b + c, chunk=7)) == expected


def test_topk_finds_heavy_hitters_in_a_long_tail():
    """With far more distinct values than slots, the heavy hitters still come first."""
    rng = random.Random(3)
    values = [f"hot{i}" for i in range(5) for _ in range(2_000)] + [f"tail{rng.randrange(50_000)}" for _ in range(40_000)]
    rng.shuffle(values)
    m = TopK(k=5)
    top = m.result(fold_all(m, values, chunk=500))
    assert {r["value"] for r in top} == {f"hot{i}" for i in range(5)}
    assert all(abs(r["count"] - 2_000) <= 3.5 / 2 ** topk_lg_size(5) * len(values) for r in top)


def test_topk_turns_values_into_strings():
    """topk reports values as str (int item ids included)."""
    m = TopK(k=2)
    assert m.result(fold_all(m, [7, 7, "7", None, 3])) == [{"value": "7", "count": 3}, {"value": "3", "count": 1}]


def test_metric_set_shares_columns_and_round_trips():
    """A MetricSet gathers each field once, folds all metrics and dumps/loads as one blob."""
    specs = [parse_metric(n, e) for n, e in {"n": "count", "s": "sum(price)", "p": "p50(price)",
                                             "u": "distinct(user_id)"}.items()]
    ms = MetricSet(specs)
    assert ms.fields == ("price", "user_id")
    price, user = [1.0, None, 3.0, 5.0], ["a", "b", "a", "c"]
    states = ms.empty()
    rows = [0, 1, 2]
    ms.fold(states, rows, ms.gather([price, user], rows))
    expected = {"n": 3, "s": 4.0, "p": 1.0, "u": 2}
    assert ms.results(states) == expected
    assert ms.results(ms.load(ms.dump(states))) == expected
    assert ms.results(ms.merge(states, ms.empty())) == expected


_ROW_METRICS = {"n": "count", "s": "sum(price)", "m": "mean(price)", "lo": "min(price)", "hi": "max(price)",
                "p": "p95(price)", "u": "distinct(user_id)", "t": "topk(user_id, 3)",
                "f": "funnel(view, cart, purchase)"}


def _row_columns(rows: list[tuple]) -> dict[str, list]:
    """The event columns _ROW_METRICS read, from (price, user_id, type, session_id) rows."""
    return {"price": [r[0] for r in rows], "user_id": [r[1] for r in rows], "type": [r[2] for r in rows],
            "session_id": [r[3] for r in rows], "ts": list(range(len(rows)))}


@pytest.mark.parametrize("loop", LOOPS)
@settings(max_examples=200, deadline=None)
@given(rows=st.lists(st.tuples(st.one_of(st.none(), st.floats(-1e6, 1e6, allow_nan=False)),
                               st.one_of(st.none(), st.sampled_from("abcdef")),
                               st.sampled_from(["view", "cart", "purchase", "search"]),
                               st.sampled_from(["s1", "s2", None])), max_size=30), data=st.data())
def test_fold_groups_equals_fold_of_each_group_for_every_metric_kind(loop, rows, data):
    """MetricSet.fold_groups (a batch's groups, one metric at a time, one-event groups inline) leaves
    the same states as fold() of each group, for every metric kind; one group gives the results of
    folding the rows one by one."""
    ms = MetricSet([parse_metric(n, e) for n, e in _ROW_METRICS.items()])
    cols = _row_columns(rows)
    columns = [cols[f] for f in ms.fields]
    order = data.draw(st.permutations(range(len(rows))))
    cuts = sorted(data.draw(st.sets(st.integers(1, max(len(rows) - 1, 1)), max_size=len(rows))))
    bounds = [0, *(c for c in cuts if c < len(rows)), len(rows)] if rows else [0]
    lo, hi = bounds[:-1], bounds[1:]
    bulk = [ms.empty() for _ in lo]
    with loop_of(sketches, loop):
        ms.fold_groups(bulk, lo, hi, order, ms.gather(columns, order))
    for states, a, b in zip(bulk, lo, hi):
        each = ms.empty()
        ms.fold(each, order[a:b], ms.gather(columns, order[a:b]))
        assert ms.dump(states) == ms.dump(each)
    one_by_one, whole, every = ms.empty(), [ms.empty()], list(range(len(rows)))
    for i in every:
        ms.fold(one_by_one, [i], ms.gather(columns, [i]))
    if rows:   # groups are never empty
        with loop_of(sketches, loop):
            ms.fold_groups(whole, [0], [len(rows)], every, ms.gather(columns, every))
    assert ms.results(whole[0]) == ms.results(one_by_one)



@pytest.mark.parametrize("loop", LOOPS)
@settings(max_examples=200, deadline=None)
@given(rows=st.lists(st.tuples(st.one_of(st.none(), st.floats(-1e6, 1e6, allow_nan=False)),
                               st.one_of(st.none(), st.sampled_from("abcdefghijk")),
                               st.sampled_from(["view", "cart", "purchase", "search"]),
                               st.sampled_from(["s1", "s2", None])), max_size=40), data=st.data())
def test_fold_slots_equals_fold_groups_for_every_metric_kind(loop, rows, data):
    """MetricSet.fold_slots (states in one list per metric, groups at any slots, over states that
    already hold values) leaves the same states as fold_groups over lists of states."""
    ms = MetricSet([parse_metric(n, e) for n, e in _ROW_METRICS.items()])
    cols = _row_columns(rows)
    columns = [cols[f] for f in ms.fields]
    order = data.draw(st.permutations(range(len(rows))))
    cuts = sorted(data.draw(st.sets(st.integers(1, max(len(rows) - 1, 1)), max_size=len(rows))))
    bounds = [0, *(c for c in cuts if c < len(rows)), len(rows)] if rows else [0]
    lo, hi = bounds[:-1], bounds[1:]
    slots = data.draw(st.permutations(range(len(lo) + 2)))[:len(lo)]
    values = ms.gather(columns, order)
    lists = [ms.empty() for _ in lo]
    store = [[None] * (len(lo) + 2) for _ in ms.metrics]
    for states, s in zip(lists, slots):   # the same non-empty start in both, built the same way
        twin = ms.empty()
        for start in (states, twin):
            ms.fold(start, order[:3], ms.gather(columns, order[:3]))
        for j, state in enumerate(twin):
            store[j][s] = state
    with loop_of(sketches, "python"):
        ms.fold_groups(lists, lo, hi, order, values)
    with loop_of(sketches, loop):
        ms.fold_slots(store, slots, lo, hi, order, values)
    for states, s in zip(lists, slots):
        assert ms.dump([column[s] for column in store]) == ms.dump(states)

def _hll_answer(values: list) -> int:
    """What an HLL fed every value one at a time answers (the pre-tuple Distinct)."""
    import datasketches as ds

    from daemon.metrics.sketches import composite_estimate

    sketch = ds.hll_sketch(HLL_LG_K, ds.HLL_8)
    for v in values:
        if v is not None:
            sketch.update(v)
    return 0 if sketch.is_empty() else int(round(composite_estimate(sketch)))


@settings(max_examples=150, deadline=None)
@given(values=st.lists(st.none() | st.integers(0, 40).map(lambda n: f"v{n}"), max_size=60),
       chunk=st.integers(min_value=1, max_value=12), cut=st.integers(min_value=0, max_value=60))
def test_distinct_is_exact_while_small_then_answers_as_an_hll_fed_every_event(values, chunk, cut):
    """Up to SMALL_DISTINCT values distinct is the exact count, beyond it what an HLL updated per event
    answers, however the values are chunked, merged (pairwise or at once) or dumped and loaded."""
    from daemon.metrics.sketches import SMALL_DISTINCT, Distinct

    m = Distinct()
    exact = len({v for v in values if v is not None})
    expected = exact if exact <= SMALL_DISTINCT else _hll_answer(values)
    one_by_one = m.empty()
    for v in values:
        one_by_one = m.fold_one(one_by_one, v)
    a, b = fold_all(m, values[:cut], chunk), fold_all(m, values[cut:], chunk)
    answers = {m.result(one_by_one), m.result(fold_all(m, values, chunk)), m.result(m.merge(a, b)),
               m.result(m.merge_many([a, m.empty(), b])), m.result_many([a, m.empty(), b]),
               m.result(m.load(m.dump(one_by_one))), m.result(m.merge(m.load(m.dump(a)), b))}
    assert answers == {expected}


def test_distinct_keeps_few_values_as_a_tuple_then_an_hll():
    """A distinct state is a tuple of first-seen values up to SMALL_DISTINCT, an HLL beyond."""
    from daemon.metrics.sketches import SMALL_DISTINCT, Distinct

    m = Distinct()
    state = m.fold(m.empty(), ["b", "a", "b", None])
    assert state == ("b", "a")
    assert m.load(m.dump(state)) == ("b", "a") and m.dump(m.empty()) == b"[]"
    state = m.fold(state, [f"x{i}" for i in range(SMALL_DISTINCT)])
    assert type(state) is not tuple and m.result(state) == SMALL_DISTINCT + 2
    assert m.dump(state)[:1] != b"[" and m.result(m.load(m.dump(state))) == SMALL_DISTINCT + 2


def test_distinct_loads_hll_blobs_dumped_before_the_tuple_state():
    """A state dumped as an HLL blob (every state before the tuple form) loads and answers as before."""
    import datasketches as ds

    from daemon.metrics.sketches import Distinct

    m = Distinct()
    for n in (1, 3, 500):
        old = ds.hll_sketch(HLL_LG_K, ds.HLL_8)
        for i in range(n):
            old.update(f"u{i}")
        state = m.load(bytes(old.serialize_compact()))
        assert m.result(state) == n
        assert m.result(m.fold(state, ["u0", "new"])) == n + 1


@pytest.mark.parametrize("loop", LOOPS)
@settings(max_examples=100, deadline=None)
@given(groups=st.lists(st.tuples(st.sampled_from(list(EXACT.values()) + ["distinct(price)"]),
                                 numeric_values(8)), min_size=1, max_size=12))
def test_fold_groups_equals_fold_per_group(loop, groups):
    """MetricSet.fold_groups (one call per metric for a batch's groups) leaves the states fold() leaves."""
    exprs = sorted({e for e, _ in groups})
    ms = MetricSet([parse_metric(f"m{i}", e) for i, e in enumerate(exprs)])
    price = [v for _, vals in groups for v in vals]
    rows = list(range(len(price)))
    bounds = [0]
    for _, vals in groups:
        bounds.append(bounds[-1] + len(vals))
    keep = [g for g in range(len(groups)) if bounds[g + 1] > bounds[g]]
    bulk = [ms.empty() for _ in keep]
    each = [ms.empty() for _ in keep]
    with loop_of(sketches, loop):
        ms.fold_groups(bulk, [bounds[g] for g in keep], [bounds[g + 1] for g in keep], rows, ms.gather([price], rows))
    for states, g in zip(each, keep):
        part = rows[bounds[g]:bounds[g + 1]]
        ms.fold(states, part, ms.gather([price], part))
    assert [ms.dump(s) for s in bulk] == [ms.dump(s) for s in each]


def test_distinct_tuples_hold_one_copy_of_each_string_value():
    """Equal strings from different events (fresh objects each) are kept as one interned object, by
    every fold path and by load; the state still equals the values'."""
    from daemon.metrics.sketches import Distinct

    m = Distinct()
    fresh = ["".join(["user-", str(i)]) for i in (7, 8)]   # built at run time: not interned yet
    states = [m.fold(m.empty(), list(fresh)), m.fold_one(m.fold_one(m.empty(), fresh[0]), fresh[1]),
              m.load(m.dump(tuple(fresh)))]
    holder = [[m.empty()]]
    for value in fresh:   # one-event groups: the inline path
        m.fold_groups(holder, 0, [value], [0], [1])
    states.append(holder[0][0])
    again = ["".join(["user-", str(i)]) for i in (7, 8)]
    for state in states:
        assert state == tuple(fresh)
        assert all(a is b for a, b in zip(state, m.fold(m.empty(), again)))
    assert m.fold(m.empty(), [1.5, 2]) == (1.5, 2)   # other values are kept as given


@settings(max_examples=80, deadline=None)
@given(rows=st.lists(st.lists(st.tuples(st.lists(st.tuples(st.one_of(st.none(), st.floats(-1e6, 1e6, allow_nan=False)),
                                                            st.one_of(st.none(), st.integers(0, 40).map(str)),
                                                            st.sampled_from(["view", "cart", "purchase"])),
                                                  max_size=12),
                                         st.sampled_from([0, 0, 0, 20, 7_000])),
                               min_size=1, max_size=5), max_size=12))
def test_results_rows_equal_results_many_of_each_row(rows):
    """MetricSet.results_rows (a close's rows metric by metric; distinct by set unions) gives each row's
    results_many, and without bounds each row's results, for every metric kind; distinct states here
    are tuples, small HLLs and HLLs in HLL mode (a part may carry thousands of extra values)."""
    ms = MetricSet([parse_metric(n, e) for n, e in _ROW_METRICS.items()])
    flat, bounds = [], [0]
    for parts in rows:
        for events, extra in parts:
            events = events + [(1.0, f"x{i}", "view") for i in range(extra)]
            cols = {"price": [e[0] for e in events], "user_id": [e[1] for e in events],
                    "type": [e[2] for e in events], "session_id": ["s"] * len(events),
                    "ts": list(range(len(events)))}
            states, every = ms.empty(), list(range(len(events)))
            ms.fold(states, every, ms.gather([cols[f] for f in ms.fields], every))
            flat.append(states)
        bounds.append(len(flat))
    many = [flat[a:b] for a, b in zip(bounds, bounds[1:])]
    assert ms.results_rows(flat, bounds) == [ms.results_many(parts) for parts in many]
    assert ms.results_rows(flat) == [ms.results(states) for states in flat]


@settings(max_examples=150, deadline=None)
@given(rows=st.lists(st.tuples(st.one_of(st.none(), st.floats(-1e6, 1e6, allow_nan=False)),
                               st.one_of(st.none(), st.text(max_size=3)),
                               st.sampled_from(["view", "cart", "purchase", "search"]),
                               st.sampled_from(["s1", "s2", None])), max_size=40))
def test_dump_is_each_metric_dump_joined_as_before(rows):
    """MetricSet.dump (pieces from dump_temporary where a metric has one, joined once) writes the bytes
    the per-metric dumps joined with their lengths wrote, for every metric kind (a distinct past 8
    values is an HLL), so stored states read the same."""
    from daemon import jsonbytes

    ms = MetricSet([parse_metric(n, e) for n, e in _ROW_METRICS.items()])
    cols = _row_columns(rows)
    states = ms.empty()
    every = list(range(len(rows)))
    ms.fold(states, every, ms.gather([cols[f] for f in ms.fields], every))
    blobs = [m.dump(s) for m, s in zip(ms.metrics, states)]
    assert ms.dump(states) == jsonbytes.dumps([len(b) for b in blobs]) + b"\n" + b"".join(blobs)
    assert b"".join(ms.dump_parts(states)) == ms.dump(states)
    assert [ms.results(ms.load(ms.dump(states)))] == [ms.results(states)]


_DISTINCT_VALUES = [f"v{i}" for i in range(30)] + [7, 2.5]


@settings(max_examples=200, deadline=None)
@given(starts=st.lists(st.lists(st.sampled_from(_DISTINCT_VALUES), max_size=24), min_size=1, max_size=8),
       data=st.data())
def test_compiled_distinct_group_folds_equal_the_pure_ones_across_the_tuple_bound(starts, data):
    """Distinct.fold_groups and fold_column compiled (metrics/_distinct.pyx) leave the states the pure
    loops leave, over states of 0-24 values (either side of the 16 a tuple holds, so one-event groups
    fill a tuple, turn it into an HLL or update an HLL) and groups of 1-3 values, None among them."""
    from daemon.metrics.sketches import Distinct

    m = Distinct()
    groups = [data.draw(st.lists(st.one_of(st.none(), st.sampled_from(_DISTINCT_VALUES)), min_size=1, max_size=3))
              for _ in starts]
    values = [v for g in groups for v in g]
    hi = [sum(map(len, groups[:g + 1])) for g in range(len(groups))]
    lo = [h - len(g) for h, g in zip(hi, groups)]
    slots = data.draw(st.permutations(range(len(starts))))
    out = {}
    for kind in LOOPS:
        states = [[None, m.fold(m.empty(), s)] for s in starts]
        column = [None] * len(starts)
        for s, start in zip(slots, starts):
            column[s] = m.fold(m.empty(), start)
        with loop_of(sketches, kind):
            m.fold_groups(states, 1, values, lo, hi)
            m.fold_column(column, slots, values, lo, hi)
        out[kind] = ([m.dump(s[1]) for s in states], [m.dump(c) for c in column])
        assert out[kind][1] == [out[kind][0][g] for g in sorted(range(len(slots)), key=slots.__getitem__)]
    assert out["compiled"] == out["python"]
