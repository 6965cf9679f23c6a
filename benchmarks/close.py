"""Window close cost per emitted row, this tree's code against another git revision's, interleaved in one process.

    python -m benchmarks.close [--rev main] [--rounds 5] [--events 1000000] [--rate 20000]

The other revision's `daemon` package is extracted with `git archive` into a temporary directory as
`_old_daemon` (its imports rewritten), so both sides run in this process. Each round, each side (in
alternating order, so a noisy neighbour slows both alike) folds the same storefront events (the
aggregations of benchmarks/config.toml.in), closing as the runner does after each batch of 1000 at
max ts - allowed lateness (the "slide" closes: each minute's, each 10 s's), then closes everything
("final", as after the feed stops). Per aggregation it times the close (Aggregator.close, moving
averages, anomaly detector) and the commit's work on its rows (windows_to_record_batch and
latest_entries); both sides' rows are checked equal (but for quantiles, which KLL randomises).
Prints the median (and least) µs per emitted row; a slide figure includes the closes that emitted
nothing (one per batch) spread over its rows. The process runs with the daemon's GC thresholds, and
collects before the final close (else a full collection the folds made due lands in it or not).
"""

from __future__ import annotations

import argparse
import gc
import importlib
import io
import re
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import tomllib
import types
from collections import defaultdict
from pathlib import Path
from typing import Any

from benchmarks.feeder import SHOP
from benchmarks.run import LATENESS_MS, render_config
from daemon.pipeline.validate import Validator
from daemon.storefront.generator import Generator

START_MS = 1_700_000_000_000
BATCH = 1000
OLD_PACKAGE = "_old_daemon"
STAGES = ("close", "arrow", "latest")


def load_old(rev: str, into: Path) -> types.ModuleType:
    """The `daemon` package as it is at `rev`, importable as _old_daemon (extracted under `into`)."""
    blob = subprocess.run(["git", "archive", rev, "daemon"], check=True, capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
        tar.extractall(into, filter="data")
    root = into / OLD_PACKAGE
    (into / "daemon").rename(root)
    for path in root.rglob("*.py"):
        text = path.read_text()
        text = re.sub(r"\bfrom daemon([. ])", rf"from {OLD_PACKAGE}\1", text)
        path.write_text(text)
    sys.path.insert(0, str(into))
    return importlib.import_module(OLD_PACKAGE)


class Side:
    """One tree's StateParts pieces, schemas and latest entries."""

    def __init__(self, package: str, config_toml: str) -> None:
        config = importlib.import_module(f"{package}.config")
        self.stateparts = importlib.import_module(f"{package}.pipeline.stateparts")
        self.schemas = importlib.import_module(f"{package}.stores.schemas")
        self.latest = importlib.import_module(f"{package}.pipeline.latest")
        self.cfg = config.parse_config(tomllib.loads(config_toml))
        # KLL compaction is randomised: a quantile over more than k values differs from run to run
        self.random = {m.name for a in self.cfg.aggregations for m in a.metrics if m.func == "quantile"}

    def run(self, batches: list[Any], final_ms: int) -> tuple[dict[str, dict[str, list[float]]], dict[str, list[Any]]]:
        """Fold and close as the runner does; (phase -> aggregation -> seconds per stage + rows), rows."""
        parts = {a.name: self.stateparts.AggregationPart.build(a) for a in self.cfg.aggregations}
        took: dict[str, dict[str, list[float]]] = {"slide": defaultdict(lambda: [0.0] * 4),
                                                   "final": defaultdict(lambda: [0.0] * 4)}
        rows: dict[str, list[Any]] = defaultdict(list)
        wm = None
        for batch in batches:
            for part in parts.values():
                part.aggregator.add(batch)
            new_wm = max(batch.ts) - LATENESS_MS
            if wm is None or new_wm > wm:
                wm = new_wm
                self._close(parts, wm, took["slide"], rows)
        gc.collect()
        self._close(parts, final_ms, took["final"], rows)
        return took, rows

    def _close(self, parts: dict[str, Any], wm: int, took: dict[str, list[float]], rows: dict[str, list[Any]]) -> None:
        clock = time.perf_counter
        for name, part in parts.items():
            t0 = clock()
            results = part.aggregator.close(wm)   # StateParts.close, one aggregation
            if results and part.averages is not None:
                results = part.averages.apply(results)
            step = part.cfg.window.slide_ms
            if part.detector is not None and (results or (step and wm // step != part.last_step)):
                part.last_step = wm // step if step else 0
                part.detector.observe(results, closed_until_ms=wm)
            t1 = clock()
            if not results:
                took[name][0] += t1 - t0
                continue
            self.schemas.windows_to_record_batch(results, part.schema)
            t2 = clock()
            self.latest.latest_entries(name, results, part.cfg.group_by)
            t3 = clock()
            spent = took[name]
            spent[0] += t1 - t0
            spent[1] += t2 - t1
            spent[2] += t3 - t2
            spent[3] += len(results)
            skip = self.random
            rows[name].extend((r.window_start_ms, r.window_end_ms, r.key,
                               {m: v for m, v in r.metrics.items() if m not in skip}) for r in results)


def workload(events: int, rate: float, seed: int) -> tuple[list[Any], int]:
    """Validated batches of 1000 storefront events, and a watermark past every window's end."""
    gen = Generator(seed, start_ms=START_MS, rate=rate, shop=SHOP)
    validator = Validator("bench")
    batches, last = [], START_MS
    for _ in range(0, events, BATCH):
        items = gen.next_batch(BATCH)
        batches.append(validator.decode_items(items, items[-1]["ts"]).batch)
        last = max(last, max(batches[-1].ts))
    return batches, last + 3_600_000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rev", default="main")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--rate", type=float, default=20_000, help="events per second of event time")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    gc.set_threshold(20_000, 5, 1000)   # as daemon/cli.py sets it
    config_toml = render_config(port=1, data_dir=Path("/nonexistent"), sources="", idle_timeout="1s",
                                max_keys=1_000_000, recommendations=False)
    with tempfile.TemporaryDirectory() as tmp:
        load_old(args.rev, Path(tmp))
        sides = {args.rev: Side(OLD_PACKAGE, config_toml), "new": Side("daemon", config_toml)}
        batches, final_ms = workload(args.events, args.rate, args.seed)
        # samples[phase][aggregation][side] -> µs per row per stage, one tuple per round
        samples: dict[str, dict[str, dict[str, list[tuple[float, ...]]]]] = defaultdict(
            lambda: defaultdict(lambda: defaultdict(list)))
        counts: dict[str, dict[str, int]] = defaultdict(dict)
        order = list(sides)
        for k in range(args.rounds):
            order.reverse()
            emitted = {}
            for name in order:
                gc.collect()
                took, emitted[name] = sides[name].run(batches, final_ms)
                for phase, per_agg in took.items():
                    for agg, (*secs, n) in per_agg.items():
                        if n:
                            samples[phase][agg][name].append(tuple(s / n * 1e6 for s in secs))
                            counts[phase][agg] = int(n)
            assert emitted[args.rev] == emitted["new"], "the two trees emitted different rows"
            print(f"round {k + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    print(f"{args.events:,} events at {args.rate:,.0f}/s of event time, {args.rounds} rounds; "
          f"µs per emitted row, median (least) over rounds")
    print(f"| phase | aggregation | rows | stage | {args.rev} | new | change |")
    print("|---|---|---|---|---|---|---|")
    for phase, per_agg in samples.items():
        for agg, per_side in per_agg.items():
            for i, stage in enumerate((*STAGES, "total")):
                def pick(side: str) -> list[float]:
                    return [sum(s) if stage == "total" else s[i] for s in per_side[side]]
                before, after = pick(args.rev), pick("new")
                mb, ma = statistics.median(before), statistics.median(after)
                print(f"| {phase} | {agg} | {counts[phase][agg]:,} | {stage} | {mb:.2f} ({min(before):.2f}) "
                      f"| {ma:.2f} ({min(after):.2f}) | {ma / mb - 1:+.0%} |")


if __name__ == "__main__":
    main()
