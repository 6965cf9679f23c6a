"""Moving averages: SMA is the mean of the last n values, EMA follows its recurrence and stays in
[min, max], missing values carry the previous averages, and state survives snapshot/restore."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.aggconfig import MovingAverageSpec
from daemon.analyzers.moving_average import MovingAverages, ema, sma
from daemon.events import WindowResult

finite = st.floats(min_value=-1e12, max_value=1e12, allow_nan=False, allow_infinity=False)
series = st.lists(finite, min_size=1, max_size=60)
alphas = st.floats(min_value=0.0, max_value=1.0)


def results(values: list, key: tuple = ("k",), metric: str = "revenue") -> list[WindowResult]:
    return [WindowResult(aggregation="a", window_start_ms=i * 60_000, window_end_ms=(i + 1) * 60_000, key=key,
                         metrics={metric: v}) for i, v in enumerate(values)]


@settings(max_examples=200, deadline=None)
@given(values=series, n=st.integers(min_value=1, max_value=10))
def test_sma_is_the_mean_of_the_last_n(values, n):
    """SMA_t equals the (exactly summed) mean of the last n values."""
    for t, got in enumerate(sma(values, n)):
        last = values[max(0, t + 1 - n): t + 1]
        assert got == math.fsum(last) / len(last)


@settings(max_examples=200, deadline=None)
@given(values=series, alpha=alphas)
def test_ema_stays_between_min_and_max(values, alpha):
    """EMA never leaves [min, max] of the values seen so far."""
    for t, e in enumerate(ema(values, alpha)):
        assert min(values[: t + 1]) <= e <= max(values[: t + 1])


@settings(max_examples=100, deadline=None)
@given(values=st.lists(st.floats(min_value=0, max_value=1e6), min_size=1, max_size=30), alpha=alphas)
def test_ema_follows_its_recurrence(values, alpha):
    """EMA_1 = x_1 and EMA_t = a*x_t + (1-a)*EMA_(t-1) (up to rounding)."""
    out = ema(values, alpha)
    assert out[0] == values[0]
    for t in range(1, len(values)):
        assert out[t] == pytest.approx(alpha * values[t] + (1 - alpha) * out[t - 1], rel=1e-12, abs=1e-9)


def test_missing_values_carry_previous_averages():
    """A None value leaves SMA and EMA at their previous values (None before the first value)."""
    assert sma([None, 2.0, None, 4.0], 2) == [None, 2.0, 2.0, 3.0]
    assert ema([None, 2.0, None, 4.0], 0.5) == [None, 2.0, 2.0, 3.0]


@settings(max_examples=100, deadline=None)
@given(values=st.lists(st.none() | finite, max_size=40), n=st.integers(min_value=1, max_value=8), alpha=alphas)
def test_moving_averages_match_pure_functions_per_key(values, n, alpha):
    """MovingAverages adds <metric>_sma/_ema per key equal to sma()/ema() over that key's series."""
    ma = MovingAverages(MovingAverageSpec(of=("revenue",), sma=n, ema_alpha=alpha))
    mixed = [r for pair in zip(results(values, ("a",)), results(values[::-1], ("b",))) for r in pair]
    out = ma.apply(mixed)
    assert [r.key for r in out] == [r.key for r in mixed]
    for key, vals in ((("a",), values), (("b",), values[::-1])):
        mine = [r.metrics for r in out if r.key == key]
        assert [m["revenue_sma"] for m in mine] == sma(vals, n)
        assert [m["revenue_ema"] for m in mine] == ema(vals, alpha)
        assert [m["revenue"] for m in mine] == vals


def _replace_through(ma: MovingAverages, how: str) -> MovingAverages:
    spec = ma.spec
    fresh = MovingAverages(spec)
    if how == "snapshot":
        fresh.restore(ma.snapshot())
    else:
        fresh.restore_items(ma.take_changes().items())
    return fresh


@pytest.mark.parametrize("how", ["snapshot", "items"])
@settings(max_examples=50, deadline=None)
@given(values=st.lists(st.none() | finite, max_size=30), cut=st.integers(min_value=0, max_value=30),
       n=st.integers(min_value=1, max_value=5))
def test_restore_mid_series_equals_an_uninterrupted_run(how, values, cut, n):
    """Restoring from snapshot() or take_changes() mid-series gives the same averages as never stopping."""
    spec = MovingAverageSpec(of=("revenue",), sma=n, ema_alpha=0.3)
    rs = results(values)
    expected = MovingAverages(spec).apply(rs)
    ma = MovingAverages(spec)
    first = ma.apply(rs[:cut])
    assert first + _replace_through(ma, how).apply(rs[cut:]) == expected


def test_take_changes_reports_only_touched_keys():
    """take_changes returns the keys updated since the last call, once."""
    ma = MovingAverages(MovingAverageSpec(of=("revenue",), sma=3, ema_alpha=0.5))
    ma.apply(results([1.0], ("a",)) + results([2.0], ("b",)))
    assert len(ma.take_changes()) == 2
    assert ma.take_changes() == {}
    ma.apply(results([3.0], ("a",)))
    assert list(ma.take_changes()) == [b'k["a"]']
