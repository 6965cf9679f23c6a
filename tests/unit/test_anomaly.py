"""Tests for the per-key spike/drop detector (daemon/analyzers/anomaly.py)."""

from __future__ import annotations

import math
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from daemon.aggconfig import AggregationConfig, AnomalySpec, MetricSpec, WindowSpec
from daemon.analyzers.anomaly import AnomalyDetector
from daemon.events import WindowResult

MIN = 60_000
T0 = 1_700_000_040_000 - 1_700_000_040_000 % MIN
HOUR = 3_600_000


def spec(threshold: float = 4.0, warmup: int = 5, method: str = "zscore") -> AnomalySpec:
    return AnomalySpec(metric="n", threshold=threshold, warmup=warmup, method=method)


def window(i: int, values: dict[str, float], step: int = MIN) -> list[WindowResult]:
    """The results of window i: one per key with a value (a missing key had no events)."""
    return [WindowResult("agg", T0 + i * step, T0 + (i + 1) * step, (key,), {"n": v}) for key, v in values.items()]


def poisson(rng: random.Random, lam: float) -> int:
    """A Poisson draw (Knuth for small means, normal approximation above 50)."""
    if lam > 50:
        return max(0, round(rng.gauss(lam, math.sqrt(lam))))
    limit, k, p = math.exp(-lam), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1


def run(det: AnomalyDetector, windows: list[dict[str, float]], step: int = MIN) -> list:
    out = []
    for i, values in enumerate(windows):
        out.extend(det.observe(window(i, values, step)))
    return out


def steady(n: int, keys: dict[str, float], seed: int = 1) -> list[dict[str, float]]:
    rng = random.Random(seed)
    return [{key: poisson(rng, lam) for key, lam in keys.items()} for _ in range(n)]


def test_steady_series_raises_nothing():
    """Poisson counts around steady rates give no alert over 300 windows and 5 keys."""
    det = AnomalyDetector(spec(), "agg")
    assert run(det, steady(300, {"a": 5, "b": 20, "c": 60, "d": 200, "e": 1000})) == []


def test_spike_opens_once_and_closes_with_its_span():
    """A 3-window spike is one incident: an open alert at its start and a closed one spanning it."""
    series = steady(40, {"a": 50})
    for i in (30, 31, 32):
        series[i]["a"] = 250
    alerts = run(AnomalyDetector(spec(), "agg"), series)
    assert [(a.state, a.direction) for a in alerts] == [("open", "spike"), ("closed", "spike")]
    opened, closed = alerts
    assert opened.key == ("a",) and opened.window_start_ms == T0 + 30 * MIN and opened.value == 250
    assert 30 < opened.expected < 80 and opened.score >= 4.0
    assert closed.window_start_ms == T0 + 30 * MIN and closed.window_end_ms == T0 + 33 * MIN
    assert closed.detected_ms == T0 + 34 * MIN


def test_missing_window_counts_as_zero_drop():
    """A key with no result in a window (the others have theirs) raises a drop in that very window."""
    series = steady(40, {"a": 40, "b": 40})
    del series[30]["a"]
    alerts = run(AnomalyDetector(spec(), "agg"), series)
    assert alerts[0].key == ("a",) and alerts[0].direction == "drop" and alerts[0].value == 0.0
    assert alerts[0].window_start_ms == T0 + 30 * MIN and alerts[0].score <= -4.0


def test_window_with_no_results_at_all_is_filled_by_closed_until():
    """closed_until_ms fills windows that closed without any result: a total outage is a drop."""
    det = AnomalyDetector(spec(), "agg")
    run(det, steady(30, {"a": 40}))
    alerts = det.observe([], closed_until_ms=T0 + 31 * MIN)
    assert [(a.direction, a.window_start_ms) for a in alerts] == [("drop", T0 + 30 * MIN)]


def test_sustained_moderate_drop_is_caught_by_cusum():
    """Two windows each too weak for the threshold alone still open a drop incident."""
    series = steady(40, {"a": 100})
    series[30]["a"] = series[31]["a"] = 66
    alerts = run(AnomalyDetector(spec(), "agg"), series)
    assert alerts and alerts[0].direction == "drop" and alerts[0].window_start_ms == T0 + 31 * MIN
    assert -4.0 < alerts[0].score


def test_no_alert_during_warmup():
    """Nothing is raised before `warmup` windows have been seen."""
    series = steady(12, {"a": 50})
    series[3]["a"] = 1000
    assert run(AnomalyDetector(spec(warmup=5), "agg"), series) == []


def test_new_key_that_starts_hot_is_flagged_but_normal_newcomers_are_not():
    """A key first seen far above what new keys usually show (a bot) is a spike; ordinary ones are not."""
    rng = random.Random(3)
    series = []
    for i in range(40):
        values = {f"u{i}-{j}": poisson(rng, 4) for j in range(30)}   # fresh users every window
        if i == 30:
            values["bot"] = 400
        series.append(values)
    alerts = [a for a in run(AnomalyDetector(spec(threshold=8.0), "agg"), series) if a.state == "open"]
    assert [(a.key, a.direction) for a in alerts] == [(("bot",), "spike")]


def test_daily_cycle_is_learnt_as_seasonality():
    """With hourly windows, the daily swing stops alerting after day one, and a peak at the trough is a spike."""
    rng = random.Random(5)
    series = [{"a": poisson(rng, 100 * (1 + 0.8 * math.sin(2 * math.pi * (h % 24) / 24)))} for h in range(24 * 10)]
    trough = 24 * 9 + 18
    series[trough]["a"] = 170
    det = AnomalyDetector(spec(), "agg", step_ms=HOUR)
    t_day = T0 - T0 % (24 * HOUR)
    alerts = [a for i, values in enumerate(series) for a in det.observe(
        [WindowResult("agg", t_day + i * HOUR, t_day + (i + 1) * HOUR, ("a",), {"n": values["a"]})])
        if a.state == "open" and a.window_start_ms >= t_day + 24 * HOUR]
    assert [(a.window_start_ms, a.direction) for a in alerts] == [(t_day + trough * HOUR, "spike")]
    assert alerts[0].expected < 40


def test_threshold_method_alerts_on_the_fixed_value():
    """method = "threshold" opens when the value reaches the threshold and closes below half of it."""
    series = [{"a": 10}] * 10 + [{"a": 120}, {"a": 90}, {"a": 10}]
    alerts = run(AnomalyDetector(spec(threshold=100, warmup=2, method="threshold"), "agg"), series)
    assert [(a.state, a.value) for a in alerts] == [("open", 120), ("closed", 120)]


def test_fit_then_predict_leaves_the_fitted_detector_unchanged():
    """predict() finds a spike in a new series after fit() on a normal one, and does not alter the model."""
    normal = steady(60, {"a": 50, "b": 10})
    det = AnomalyDetector(spec(), "agg").fit(r for i, v in enumerate(normal) for r in window(i, v))
    before = det.snapshot()
    fresh = steady(20, {"a": 50, "b": 10}, seed=9)
    fresh[5]["a"] = 300
    found = det.predict(r for i, v in enumerate(fresh) for r in window(i, v))
    assert [(a.key, a.state, a.window_start_ms) for a in found][:1] == [(("a",), "open", T0 + 5 * MIN)]
    assert det.snapshot() == before


def test_from_aggregation_uses_window_step_and_metric_kind():
    """from_aggregation zero-fills counts with the window slide, and not means."""
    def agg(func: str, field: str | None) -> AggregationConfig:
        return AggregationConfig(name="x", window=WindowSpec(type="hopping", size_ms=120_000, slide_ms=MIN),
                                 metrics=(MetricSpec(name="n", func=func, field=field),),
                                 anomaly=AnomalySpec(metric="n"))
    counts = AnomalyDetector.from_aggregation(agg("count", None))
    means = AnomalyDetector.from_aggregation(agg("mean", "price"))
    assert counts.zero_fill and counts._step == MIN and counts.sqrt
    assert not means.zero_fill and not means.sqrt


@settings(max_examples=40, deadline=None)
@given(st.lists(st.dictionaries(st.sampled_from("abc"), st.integers(0, 300), max_size=3), min_size=2, max_size=40),
       st.integers(1, 39))
def test_snapshot_restore_continues_identically(windows, split):
    """Stopping at any window, snapshotting and restoring gives the alerts of an uninterrupted run."""
    split = min(split, len(windows) - 1)
    whole = run(AnomalyDetector(spec(warmup=2), "agg"), windows)
    first = AnomalyDetector(spec(warmup=2), "agg")
    out = [a for i, v in enumerate(windows[:split]) for a in first.observe(window(i, v))]
    second = AnomalyDetector(spec(warmup=2), "agg")
    second.restore(first.snapshot())
    out += [a for i, v in enumerate(windows[split:], start=split) for a in second.observe(window(i, v))]
    assert out == whole


@settings(max_examples=60, deadline=None)
@given(st.lists(st.dictionaries(st.sampled_from("abc"), st.integers(0, 500), max_size=3), max_size=60))
def test_alerts_alternate_open_closed_and_agree_with_their_scores(windows):
    """Per key, alerts alternate open/closed; a spike scores > 0 above its expectation, a drop < 0 below it."""
    state: dict[tuple, str] = {}
    for a in run(AnomalyDetector(spec(threshold=3.0, warmup=2), "agg"), windows):
        assert state.get(a.key, "closed") != a.state
        state[a.key] = a.state
        assert a.expected >= 0.0
        if a.direction == "spike":
            assert a.score > 0 and a.value > a.expected
        else:
            assert a.score < 0 and a.value < a.expected
