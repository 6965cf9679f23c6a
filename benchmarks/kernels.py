"""The compiled loops against their Python originals, on the benchmark's events, in one process.

    python -m benchmarks.kernels [--events 200000] [--rounds 7]

For each compiled loop (daemon/native.py), the work that uses it runs over the same batches twice per
round, once with the compiled form and once with the Python original (which goes first alternates),
in this one process, and the least CPU time of the rounds is reported in µs per event. Why one
process: an A/B across processes on this VM showed a systematic 5-9% difference between two identical
arms (they differed only in their command line's length, which moves the stack; that is the likely
cause, not a proven one), larger than some of the gains.

- aggregations: the benchmark config's four aggregations folding batches of 4,096 events from empty
  state (`StateParts.observe`: filters, grouping, states, metric folds), with the row loops of
  daemon/columns.py compiled or not ("row loops"), and with Distinct's group folds
  (metrics/_distinct.pyx: "distinct"); the other compiled loops stay as built;
- dedupe: `DedupeFilter.keep` over the events' ids (pipeline/_dedupe.pyx);
- archive rows: `events_to_record_batch` (stores/_arrowcols.pyx);
- recommender: `Recommender.observe` over the same events (analyzers/_recfold.pyx);
- trending: `Trending.observe` over the same events in pieces of 1,024, as the recommendations process
  calls it (analyzers/_recfold.pyx `trending_events`, `trending_add`);
- state write: a full state write's build after the four aggregations folded the events
  (`StateParts.take_changes(packed=True)`: windows/_statedump.pyx and stores/_segments.pyx's
  SegmentBuilder.put against windows/statedump.py and PySegmentBuilder), in µs per record; the
  folds before it are not timed.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from benchmarks.lane import FOLD_PAGES, START_MS


def _batches(events: int, seed: int) -> tuple[Any, list[Any]]:
    """The benchmark config and its events as the runner folds them: pages of 1,000 decoded as
    http_poll decodes them, joined 4 at a time."""
    from benchmarks.feeder import SHOP
    from benchmarks.run import render_config, source_toml
    from daemon.config import load_config
    from daemon.events import EventBatch
    from daemon.pipeline.validate import Validator
    from daemon.sources.http_poll import decode_page
    from daemon.storefront.generator import Generator, encode_ndjson

    with tempfile.TemporaryDirectory(prefix="kernels-") as tmp:
        path = Path(tmp) / "kernels.toml"
        path.write_text(render_config(port=1, data_dir=Path(tmp) / "data", sources=source_toml("http_poll", "http://127.0.0.1:1/e"),
                                      idle_timeout="1h", max_keys=1_000_000, recommendations=True))
        cfg = load_config(path)
    gen = Generator(seed, start_ms=START_MS, rate=20_000.0, shop=SHOP)
    validator = Validator(cfg.sources[0].name)
    decoder = validator.page_decoder("events", "next_cursor")
    out, joined = [], EventBatch(cfg.sources[0].name)
    for k in range(0, events, 1000):
        body = encode_ndjson(gen.next_batch(1000)).rstrip(b"\n").replace(b"\n", b",")
        page = b'{"events":[' + body + b'],"next_cursor":"' + str(k).encode() + b'"}'
        decoded, _ = decode_page(page, validator, decoder, "events", "next_cursor", START_MS)
        joined.extend(decoded.batch)
        if (k // 1000 + 1) % FOLD_PAGES == 0:
            out.append(joined)
            joined = EventBatch(cfg.sources[0].name)
    if len(joined):
        out.append(joined)
    return cfg, out


def _work(cfg: Any, batches: list[Any]) -> dict[str, tuple[list[ModuleType], Callable[[], None]]]:
    """Per kernel: the modules whose `_compiled` it toggles, and one run over every batch from scratch."""
    from daemon import columns
    from daemon.analyzers import recommend, trending
    from daemon.analyzers.recommend import Recommender
    from daemon.analyzers.trending import Trending
    from daemon.metrics import sketches
    from daemon.pipeline import dedupe
    from daemon.pipeline.dedupe import DedupeFilter
    from daemon.pipeline.stateparts import StateParts
    from daemon.stores import schemas

    def aggregations() -> None:
        parts = StateParts(cfg)
        for b in batches:
            parts.observe(b)

    def dedupe_keep() -> None:
        d = DedupeFilter(3_600_000, 5_000_000)
        for b in batches:
            d.keep(b.event_id, b.ts, range(len(b)))

    def archive_rows() -> None:
        for b in batches:
            schemas.events_to_record_batch(b, START_MS)

    def recommender() -> None:
        assert cfg.recommendations is not None
        rec = Recommender(cfg.recommendations)
        for b in batches:
            rec.observe(b, trending=False)

    pieces = [b.slice(i, i + 1024) for b in batches for i in range(0, len(b), 1024)]

    def trending_observe() -> None:
        assert cfg.recommendations is not None
        tr = Trending(cfg.recommendations.half_life_s)
        for piece in pieces:
            tr.observe(piece)

    return {"aggregations: row loops": ([columns], aggregations), "aggregations: distinct": ([sketches], aggregations),
            "dedupe": ([dedupe], dedupe_keep),
            "archive rows": ([schemas], archive_rows), "recommender": ([recommend], recommender),
            "trending": ([trending], trending_observe)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--only", help="comma list of kernels (default: all)")
    args = parser.parse_args()
    from daemon.cli import tune_interpreter

    tune_interpreter()
    cfg, batches = _batches(args.events, args.seed)
    n = sum(map(len, batches))
    work = _work(cfg, batches)
    if args.only:
        work = {k: v for k, v in work.items() if k in args.only.split(",")}
    missing = [m.__name__ for mods, _ in work.values() for m in mods if m._compiled is None]
    if missing:
        sys.exit(f"not built (or STOREPULSE_NO_EXTENSIONS is set): the compiled loops of {', '.join(missing)}")
    print(f"CPU µs per event over {n:,} events ({len(batches)} batches), least and median of {args.rounds} "
          "rounds, compiled and Python alternating in this process\n")
    print("| kernel | Python least (median) | compiled least (median) | compiled / Python (least) |")
    print("|---|---:|---:|---:|")
    for name, (modules, run) in work.items():
        built = {m: m._compiled for m in modules}
        times: dict[str, list[float]] = {"python": [], "compiled": []}
        run()   # warm-up, not timed (imports, first allocations)
        for r in range(args.rounds):
            for kind in ("python", "compiled") if r % 2 == 0 else ("compiled", "python"):
                for m in modules:
                    m._compiled = built[m] if kind == "compiled" else None
                gc.collect()
                t0 = time.thread_time()
                run()
                times[kind].append((time.thread_time() - t0) / n * 1e6)
        for m in modules:
            m._compiled = built[m]
        _row(name, times)
    if not args.only or "state write" in args.only.split(","):
        _row("state write (µs per record)", _state_write(cfg, batches, args.rounds))


def _row(name: str, times: dict[str, list[float]]) -> None:
    py, c = times["python"], times["compiled"]
    print(f"| {name} | {min(py):.3f} ({statistics.median(py):.3f}) | {min(c):.3f} ({statistics.median(c):.3f}) "
          f"| {min(c) / min(py):.2f} |", flush=True)


def _state_write(cfg: Any, batches: list[Any], rounds: int) -> dict[str, list[float]]:
    """µs per record of `take_changes(packed=True)` after folding every batch, compiled and Python
    alternating (each round folds afresh, untimed)."""
    from daemon.pipeline import stateparts
    from daemon.pipeline.stateparts import StateParts
    from daemon.stores import segments
    from daemon.windows import statedump

    built = statedump._compiled
    times: dict[str, list[float]] = {"python": [], "compiled": []}
    try:
        for r in range(rounds):
            for kind in ("python", "compiled") if r % 2 == 0 else ("compiled", "python"):
                statedump._compiled = built if kind == "compiled" else None
                stateparts.SegmentBuilder = segments.SegmentBuilder if kind == "compiled" else segments.PySegmentBuilder
                parts = StateParts(cfg)
                for b in batches:
                    parts.observe(b)
                gc.collect()
                t0 = time.thread_time()
                out = parts.take_changes(packed=True)
                times[kind].append((time.thread_time() - t0) / sum(map(len, out.values())) * 1e6)
    finally:
        statedump._compiled = built
        stateparts.SegmentBuilder = segments.SegmentBuilder
    return times


if __name__ == "__main__":
    main()
