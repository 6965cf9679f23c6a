"""Offline evaluation on storefront generator events: anomaly detection vs baselines, recommendations vs popularity.

Needs no daemon: the aggregations are simulated here (epoch-aligned tumbling counts).
`python -m daemon.analyzers.evaluate [--seed N --minutes M --rate R --json PATH]` prints markdown tables
and writes the full report as JSON (default bench-results/evaluation.json).
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import orjson

from daemon.aggconfig import AggregationConfig, AnomalySpec, MetricSpec, WindowSpec
from daemon.analyzers.anomaly import AnomalyDetector
from daemon.analyzers.recommend import Recommender
from daemon.config import RecommendationsConfig
from daemon.events import EventBatch, WindowResult

WINDOW_MS = 60_000


def eval_aggregations(warmup: int = 5) -> tuple[AggregationConfig, ...]:
    """The aggregations whose keys the labels use, configured as an operator would.

    Purchases per category: 8 keys with steady rates, threshold 4. Views per user: ~1000 active keys
    a window whose sessions come in bursts; threshold 8, since with that many keys tested per
    window a z of 4 is crossed by chance every few windows.
    """
    def agg(name: str, etype: str, field: str, threshold: float) -> AggregationConfig:
        return AggregationConfig(name=name, where=(("type", (etype,)),), group_by=(field,),
                                 window=WindowSpec(type="tumbling", size_ms=WINDOW_MS, slide_ms=WINDOW_MS),
                                 metrics=(MetricSpec(name="n", func="count"),),
                                 anomaly=AnomalySpec(metric="n", threshold=threshold, warmup=warmup))
    return (agg("purchases_by_category", "purchase", "category", 4.0), agg("views_by_user", "view", "user_id", 8.0))


def window_series(events: Iterable[dict[str, Any]], agg: AggregationConfig) -> list[list[WindowResult]]:
    """Closed windows of a count aggregation, one list per window end in time order (sparse, as emitted)."""
    wheres = dict(agg.where)
    size = agg.window.size_ms
    counts: dict[int, dict[tuple[Any, ...], int]] = defaultdict(lambda: defaultdict(int))
    for ev in events:
        if any(ev.get(f) not in vals for f, vals in wheres.items()):
            continue
        counts[ev["ts"] - ev["ts"] % size][tuple(ev.get(f) for f in agg.group_by)] += 1
    name = agg.metrics[0].name
    return [[WindowResult(agg.name, start, start + size, key, {name: n}) for key, n in sorted(counts[start].items(), key=str)]
            for start in sorted(counts)]


def dense_series(windows: list[list[WindowResult]], metric: str, forget: int = 10) -> list[list[tuple[tuple[Any, ...], int, float]]]:
    """The same windows with 0 for keys seen in the last `forget` windows: [(key, window_start, value)]."""
    last_seen: dict[tuple[Any, ...], int] = {}
    out = []
    for i, group in enumerate(windows):
        start = group[0].window_start_ms
        present = {r.key: float(r.metrics[metric]) for r in group}
        for key in present:
            last_seen[key] = i
        out.append([(key, start, present.get(key, 0.0)) for key, seen in last_seen.items() if i - seen <= forget])
    return out


@dataclass(frozen=True, slots=True)
class Alert:
    """A detector's incident start: aggregation, key as {field: value}, window start."""

    aggregation: str
    key: dict[str, Any]
    window_start_ms: int


@dataclass(frozen=True, slots=True)
class DetectionScore:
    alerts: int
    matched_alerts: int
    incidents: int
    detected: int
    precision: float
    recall: float
    f1: float
    median_delay_windows: float | None
    mean_delay_windows: float | None


def score_alerts(alerts: Sequence[Alert], labels: Sequence[dict[str, Any]], window_ms: int = WINDOW_MS,
                 judge_until_ms: int | None = None) -> DetectionScore:
    """Match alerts to labels: same key on the shared fields and the alert window overlaps the incident.

    Recall counts the incidents that start before `judge_until_ms` (one that starts in the run's
    last windows cannot be seen yet); precision matches alerts against every label.
    """
    def matches(a: Alert, lab: dict[str, Any]) -> bool:
        shared = set(a.key) & set(lab["key"])
        return (bool(shared) and all(str(a.key[f]) == str(lab["key"][f]) for f in shared)
                and a.window_start_ms < lab["end_ms"] and a.window_start_ms + window_ms > lab["start_ms"])
    matched = sum(1 for a in alerts if any(matches(a, lab) for lab in labels))
    delays = []
    judged = [lab for lab in labels if judge_until_ms is None or lab["start_ms"] < judge_until_ms]
    for lab in judged:
        hits = [a.window_start_ms for a in alerts if matches(a, lab)]
        if hits:
            delays.append((min(hits) - (lab["start_ms"] - lab["start_ms"] % window_ms)) // window_ms)
    p = matched / len(alerts) if alerts else 0.0
    r = len(delays) / len(judged) if judged else 0.0
    return DetectionScore(alerts=len(alerts), matched_alerts=matched, incidents=len(judged), detected=len(delays),
                          precision=round(p, 4), recall=round(r, 4), f1=round(2 * p * r / (p + r), 4) if p + r else 0.0,
                          median_delay_windows=statistics.median(delays) if delays else None,
                          mean_delay_windows=round(statistics.fmean(delays), 3) if delays else None)


# -- baselines ------------------------------------------------------------------------------------

def runs_to_alerts(flags: Iterable[tuple[tuple[Any, ...], int, bool]], agg: AggregationConfig) -> list[Alert]:
    """One alert per run of successive flagged windows of a key (the same courtesy as our hysteresis)."""
    last_flag: dict[tuple[Any, ...], int] = {}
    alerts = []
    for key, start, flagged in flags:
        if flagged:
            if last_flag.get(key) != start - agg.window.size_ms:
                alerts.append(Alert(agg.name, dict(zip(agg.group_by, key)), start))
            last_flag[key] = start
    return alerts


Dense = list[list[tuple[tuple[Any, ...], int, float]]]


class FixedThreshold:
    """Baseline: static per-key bounds median ± k·(1.4826·MAD), fitted on a normal run's windows.

    A key unseen in the normal run gets bounds from all keys' values pooled.
    """

    def __init__(self, normal: Dense, skip_windows: int = 5) -> None:
        hist: dict[tuple[Any, ...], list[float]] = defaultdict(list)
        for group in normal[skip_windows:]:      # the generator's first minutes ramp up from nothing
            for key, _, x in group:
                hist[key].append(x)
        pooled = [x for h in hist.values() for x in h] or [0.0]
        self._fit = {key: _median_mad(h) for key, h in hist.items()}
        self._pooled = _median_mad(pooled)

    def flags(self, dense: Dense, k: float) -> list[tuple[tuple[Any, ...], int, bool]]:
        out = []
        for group in dense:
            for key, start, x in group:
                med, mad = self._fit.get(key, self._pooled)
                out.append((key, start, abs(x - med) > k * max(1.4826 * mad, 1.0)))
        return out


def _median_mad(xs: list[float]) -> tuple[float, float]:
    med = statistics.median(xs)
    return med, statistics.median(abs(x - med) for x in xs)


class HalfSpaceTreesBaseline:
    """Baseline: River HalfSpaceTrees on log1p(value), warmed on the normal run, then scored and learnt online.

    One model per key when an aggregation has few keys (<= 100 in the normal run); else one model
    for the whole aggregation (per-key models for thousands of users take minutes, and a new key,
    such as a bot, would meet an empty model).
    """

    def __init__(self, normal: Dense, seed: int = 0, max_keyed: int = 100) -> None:
        from river import anomaly   # test/bench extra, imported only here

        keys = {key for group in normal for key, _, _ in group}
        top = max((x for group in normal for _, _, x in group), default=1.0)
        limits = {"x": (0.0, math.log1p(top) * 1.5)}
        self._keyed = len(keys) <= max_keyed
        self._make = lambda: anomaly.HalfSpaceTrees(n_trees=10, height=6, window_size=50, limits=limits, seed=seed)
        self._models: dict[Any, Any] = {}
        for group in normal:
            for key, _, x in group:
                self._model(key).learn_one({"x": math.log1p(x)})

    def _model(self, key: tuple[Any, ...]) -> Any:
        slot = key if self._keyed else None
        m = self._models.get(slot)
        if m is None:
            m = self._models[slot] = self._make()
        return m

    def scores(self, dense: Dense) -> list[tuple[tuple[Any, ...], int, float]]:
        out = []
        for group in dense:
            for key, start, x in group:
                m, feats = self._model(key), {"x": math.log1p(x)}
                out.append((key, start, m.score_one(feats)))
                m.learn_one(feats)
        return out


def best_of(grid: Sequence[Any], run: Callable[[Any], list[Alert]], labels: list[dict[str, Any]],
            judge_until_ms: int) -> tuple[Any, DetectionScore]:
    """The grid value with the best F1 on this very run (an oracle setting, generous to the baseline)."""
    best: tuple[Any, DetectionScore] | None = None
    for g in grid:
        s = score_alerts(run(g), labels, judge_until_ms=judge_until_ms)
        if best is None or s.f1 > best[1].f1:
            best = (g, s)
    assert best is not None
    return best


# -- anomaly evaluation ---------------------------------------------------------------------------

def generate(seed: int, minutes: float, rate: float, anomalies: bool = True) -> tuple[list[dict[str, Any]], list[dict[str, Any]], int]:
    """Generator events of whole windows, their labels, and the run's end (ms, a window boundary)."""
    from daemon.storefront.generator import Generator

    gen = Generator(seed=seed, rate=rate, anomalies=anomalies)
    start = gen.statistics().last_ts_ms
    end = start + int(minutes * 60_000)
    end -= end % WINDOW_MS
    return gen.events_until(end - 1), gen.labels, end


def labels_for(labels: list[dict[str, Any]], agg: AggregationConfig) -> list[dict[str, Any]]:
    """The labels whose key uses a field this aggregation groups by."""
    return [lab for lab in labels if set(lab["key"]) & set(agg.group_by)]


def evaluate_anomalies(events: list[dict[str, Any]], labels: list[dict[str, Any]], end_ms: int, *,
                       normal: list[dict[str, Any]] | None = None, warmup: int = 5,
                       baselines: bool = True) -> dict[str, Any]:
    """Ours vs the baselines on the same windows: precision, recall, F1 and delay in windows.

    Ours runs online from the first window. The baselines are fitted on `normal` (a run of the same
    shop without incidents) and get their best setting per aggregation chosen on this very run.

    Incidents starting in the last two windows are not judged for recall (nothing could see them yet).
    """
    aggs = eval_aggregations(warmup=warmup)
    judge = end_ms - 2 * WINDOW_MS
    series = {a.name: window_series(events, a) for a in aggs}
    ours: list[Alert] = []
    per_agg = {}
    t0 = time.perf_counter()
    for a in aggs:
        det = AnomalyDetector.from_aggregation(a)
        found = [Alert(a.name, dict(zip(a.group_by, an.key)), an.window_start_ms)
                 for group in series[a.name] for an in det.observe(group) if an.state == "open"]
        per_agg[a.name] = asdict(score_alerts(found, labels_for(labels, a), judge_until_ms=judge))
        ours.extend(found)
    seconds = time.perf_counter() - t0
    out: dict[str, Any] = {"ours": {**asdict(score_alerts(ours, labels, judge_until_ms=judge)),
                                    "seconds": round(seconds, 3), "per_aggregation": per_agg,
                                    "thresholds": {a.name: a.anomaly.threshold for a in aggs if a.anomaly}}}
    if not baselines:
        return out
    normal_events = normal if normal is not None else []
    dense = {a.name: dense_series(series[a.name], "n") for a in aggs}
    fitted = {a.name: dense_series(window_series(normal_events, a), "n") for a in aggs}
    fixed = {a.name: FixedThreshold(fitted[a.name]) for a in aggs}
    flags = {a.name: lambda kk, a=a: fixed[a.name].flags(dense[a.name], kk) for a in aggs}
    out["fixed_threshold"] = _baseline(aggs, labels, judge, (2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 12.0, 16.0, 24.0), flags, "k=")
    try:
        t0 = time.perf_counter()
        scores = {a.name: HalfSpaceTreesBaseline(fitted[a.name]).scores(dense[a.name]) for a in aggs}
        flags = {a.name: lambda cut, a=a: [(kk, st, sc >= cut) for kk, st, sc in scores[a.name]] for a in aggs}
        grid = (0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.98, 0.99)
        out["half_space_trees"] = _baseline(aggs, labels, judge, grid, flags, "score>=")
        out["half_space_trees"]["seconds"] = round(time.perf_counter() - t0, 3)
    except ImportError:
        out["half_space_trees"] = None
    return out


def _baseline(aggs: Sequence[AggregationConfig], labels: list[dict[str, Any]], judge_until_ms: int, grid: Sequence[float],
              flags: dict[str, Callable[[float], list[tuple[tuple[Any, ...], int, bool]]]], name: str) -> dict[str, Any]:
    """A baseline with its best grid setting per aggregation (chosen on this run: generous to it)."""
    alerts: list[Alert] = []
    settings = {}
    for a in aggs:
        g, _ = best_of(grid, lambda v, a=a: runs_to_alerts(flags[a.name](v), a), labels_for(labels, a), judge_until_ms)
        settings[a.name] = f"{name}{g}"
        alerts.extend(runs_to_alerts(flags[a.name](g), a))
    return {**asdict(score_alerts(alerts, labels, judge_until_ms=judge_until_ms)), "settings": settings}


# -- recommendation evaluation --------------------------------------------------------------------

def to_batch(events: Sequence[dict[str, Any]], source: str = "eval") -> EventBatch:
    """Generator events as one EventBatch (ids as str, revenue derived)."""
    b = EventBatch(source)
    for ev in events:
        qty = ev.get("quantity", 1)
        price = ev.get("price")
        b.event_id.append(ev["event_id"])
        b.ts.append(ev["ts"])
        b.type.append(ev["type"])
        b.user_id.append(str(ev["user_id"]))
        b.session_id.append(ev.get("session_id"))
        b.item_id.append(None if ev.get("item_id") is None else str(ev["item_id"]))
        b.category.append(ev.get("category"))
        b.price.append(price)
        b.quantity.append(qty)
        b.revenue.append(price * qty if ev["type"] == "purchase" and price is not None else 0.0)
    return b


def evaluate_recommendations(events: list[dict[str, Any]], *, k: int = 10, test_fraction: float = 0.2,
                             cfg: RecommendationsConfig | None = None) -> dict[str, Any]:
    """Replay the stream; for each purchase in the last `test_fraction`, was the item in the top k just before?

    HitRate@k and MRR for ours and for the popularity baseline (decayed overall trending, minus the
    user's recent purchases, as ours), plus the latency of recommend() over those queries.
    """
    cfg = cfg or RecommendationsConfig()
    rec = Recommender(cfg)
    plain = Recommender(cfg, self_weight=0.0)   # neighbours only: the user's own recent items not ranked
    cut = int(len(events) * (1 - test_fraction))
    rec.observe(to_batch(events[:cut]))
    plain.observe(to_batch(events[:cut]))
    hits = {"ours": 0, "ours_neighbours_only": 0, "popularity": 0}
    rr = {"ours": 0.0, "ours_neighbours_only": 0.0, "popularity": 0.0}
    latencies: list[float] = []
    pending: list[dict[str, Any]] = []
    bought: dict[str, dict[str, int]] = defaultdict(dict)
    n = 0
    for ev in events[:cut]:
        if ev["type"] == "purchase":
            bought[str(ev["user_id"])][str(ev["item_id"])] = ev["ts"]
    for ev in events[cut:]:
        if ev["type"] == "purchase" and ev.get("item_id") is not None:
            if pending:
                batch = to_batch(pending)
                rec.observe(batch)
                plain.observe(batch)
                pending = []
            user, item, now = str(ev["user_id"]), str(ev["item_id"]), ev["ts"]
            t0 = time.perf_counter()
            ours = [i for i, _ in rec.recommend(user, k, now)]
            latencies.append(time.perf_counter() - t0)
            recent = {i for i, ts in bought[user].items() if ts >= now - cfg.half_life_s * 1000}
            popular = [i for i, _ in rec.trending.top(None, k + len(recent), now) if i not in recent][:k]
            neighbours = [i for i, _ in plain.recommend(user, k, now)]
            for name, ranked in (("ours", ours), ("ours_neighbours_only", neighbours), ("popularity", popular)):
                if item in ranked:
                    hits[name] += 1
                    rr[name] += 1.0 / (ranked.index(item) + 1)
            bought[user][item] = now
            n += 1
        pending.append(ev)
    latencies.sort()
    out: dict[str, Any] = {name: {f"hit_rate@{k}": round(hits[name] / n, 4) if n else 0.0,
                                  "mrr": round(rr[name] / n, 4) if n else 0.0} for name in hits}
    out["purchases"] = n
    out["recommend_ms"] = {"p50": round(1000 * latencies[len(latencies) // 2], 3) if latencies else None,
                           "p99": round(1000 * latencies[int(len(latencies) * 0.99)], 3) if latencies else None}
    out["state"] = asdict(rec.statistics())
    return out


# -- command line ---------------------------------------------------------------------------------

def run_evaluation(seed: int = 11, minutes: float = 40.0, rate: float = 200.0, rec_rate: float = 100.0,
                   baselines: bool = True) -> dict[str, Any]:
    """Both evaluations on seeded generator runs; a JSON-ready dict."""
    events, labels, end = generate(seed, minutes, rate)
    normal, _, _ = generate(seed, minutes, rate, anomalies=False) if baselines else ([], [], 0)
    anomalies = evaluate_anomalies(events, labels, end, normal=normal, baselines=baselines)
    shop, _, _ = generate(seed, minutes, rec_rate, anomalies=False)
    recs = evaluate_recommendations(shop)
    return {"run": {"seed": seed, "minutes": minutes, "rate": rate, "events": len(events), "incidents": len(labels),
                    "rec_rate": rec_rate, "rec_events": len(shop)},
            "anomalies": anomalies, "recommendations": recs}


def markdown(report: dict[str, Any]) -> str:
    """The report as two markdown tables."""
    lines = ["| anomaly detector | precision | recall | F1 | median delay (windows) | alerts | setting |",
             "|---|---|---|---|---|---|---|"]
    for name, r in report["anomalies"].items():
        if r is None:
            lines.append(f"| {name} | n/a (river not installed) | | | | | |")
            continue
        setting = r.get("settings") or r.get("thresholds")
        lines.append(f"| {name} | {r['precision']:.3f} | {r['recall']:.3f} | {r['f1']:.3f} | "
                     f"{r['median_delay_windows']} | {r['alerts']} | {setting} |")
    rec = report["recommendations"]
    k = next(key for key in rec["ours"] if key.startswith("hit_rate@"))
    lines += ["", f"| recommender | {k} | MRR |", "|---|---|---|"]
    for name in ("ours", "ours_neighbours_only", "popularity"):
        if name in rec:
            lines.append(f"| {name} | {rec[name][k]:.4f} | {rec[name]['mrr']:.4f} |")
    lines.append(f"\n{rec['purchases']} purchases judged; recommend() p50 {rec['recommend_ms']['p50']} ms, "
                 f"p99 {rec['recommend_ms']['p99']} ms")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m daemon.analyzers.evaluate", description=__doc__)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--minutes", type=float, default=40.0)
    parser.add_argument("--rate", type=float, default=200.0, help="events/s of the anomaly run")
    parser.add_argument("--rec-rate", type=float, default=100.0, help="events/s of the recommendation run")
    parser.add_argument("--no-baselines", action="store_true")
    parser.add_argument("--json", default="bench-results/evaluation.json", help="where to write the full report")
    args = parser.parse_args(argv)
    report = run_evaluation(args.seed, args.minutes, args.rate, args.rec_rate, baselines=not args.no_baselines)
    os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
    with open(args.json, "wb") as f:
        f.write(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
