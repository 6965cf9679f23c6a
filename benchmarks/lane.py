"""The daemon's CPU lane without the network: CPU µs per event of decode → fold → commit, per part.

    python -m benchmarks.lane [--events 400000] [--rounds 3] [--rev REV]

What `make bench` measures end to end mixes the daemon's lane with the event loop, the feeder and
the recommendations process on two cores. This runs the lane's own work in one thread, in the
order the daemon does it: http_poll pages of 1,000 are parsed and validated (sources/http_poll.py,
pipeline/validate.py), taken 4 at a time into one fold (`Runner.fold`: dedupe, the aggregations,
the fold log, window closes as the watermark moves), and a commit is built and written to a real
LMDB data_dir every ~200 ms of the feed (`Runner._build_unit`, `Checkpoint.commit`, with the full
state write every 5 s and the Arrow flush), with the benchmark's config (benchmarks/config.toml.in)
and a clock that moves as a feed at 80k events/s would. What the recommendations process does with
the fold steps (fold them, answer each cut with its changed records) runs here too, timed apart
("recs process"), so that the daemon's share of it (storing the answers) is measured. The windows
still open at the end are not closed (that tail is the close benchmark's).

With `--rev`, the same run is made in a throwaway worktree of that git revision too, alternating
between the two trees round by round (a noisy neighbour slows both alike), and the medians of
CPU per event are compared.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from orjson import loads as json_loads

REPO = Path(__file__).resolve().parent.parent
FEED_RATE = 80_000        # events/s the fake clock moves by (a commit every ~16k events)
FOLD_PAGES = 4            # pages per fold: FOLD_EVENTS (4096) takes 4 pages of 1,000
START_MS = 1_700_000_000_000


def run_once(events: int, seed: int) -> dict[str, float]:
    """One run in this process: CPU µs per event per part (in an event loop: queues need one)."""
    import anyio

    try:
        from daemon.cli import tune_interpreter
    except ImportError:   # a revision from before it: the settings it had
        def tune_interpreter() -> None:
            sys.setswitchinterval(0.0005)
            gc.set_threshold(20_000, 5, 1000)
    tune_interpreter()

    async def main() -> dict[str, float]:
        return _run(events, seed)
    return anyio.run(main)


def _run(events: int, seed: int) -> dict[str, float]:
    import structlog

    from benchmarks.feeder import SHOP
    from benchmarks.run import TEMPLATE, render_config, source_toml
    from daemon.clock import FakeClock
    from daemon.config import load_config
    from daemon.pipeline.queue import BoundedQueue, Delivery, Wakeup
    from daemon.pipeline.runner import Runner
    from daemon.pipeline.stateparts import StateParts
    from daemon.pipeline.validate import Validator
    from daemon.sources.http_poll import parse_page
    from daemon.storefront.generator import Generator, encode_ndjson
    from daemon.stores.checkpoint import Checkpoint
    from daemon.analyzers.recommend import Recommender
    from daemon.replica import protocol

    assert TEMPLATE.exists()
    gen = Generator(seed, start_ms=START_MS, rate=20_000.0, shop=SHOP)   # the end-to-end benchmark's shop
    pages = []
    for k in range(0, events, 1000):
        body = encode_ndjson(gen.next_batch(1000)).rstrip(b"\n").replace(b"\n", b",")
        pages.append(b'{"events":[' + body + b'],"next_cursor":"' + str(k).encode() + b'"}')
    with tempfile.TemporaryDirectory(prefix="lane-") as tmp:
        cfg_path = Path(tmp) / "lane.toml"
        cfg_path.write_text(render_config(port=1, data_dir=Path(tmp) / "data", sources=source_toml("http_poll", "http://127.0.0.1:1/e"),
                                          idle_timeout="1h", max_keys=1_000_000, recommendations=True))
        cfg = load_config(cfg_path)
        log = structlog.get_logger("lane")
        clock = FakeClock(START_MS)
        checkpoint = Checkpoint.open(cfg.storage, log=log)
        try:
            wakeup = Wakeup()
            queues = {sc.name: BoundedQueue(sc.common.queue.capacity, sc.common.queue.overflow, wakeup) for sc in cfg.sources}
            parts = StateParts(cfg)
            runner = Runner(cfg, checkpoint, parts, queues, wakeup, clock, log)
            runner.restore()
            assert cfg.recommendations is not None
            recs = _Recommendations(Recommender(cfg.recommendations), protocol)
            runner.replica = recs   # type: ignore[assignment]
            validator = Validator(cfg.sources[0].name)
            try:   # as HttpPollSource decodes a page
                from daemon.sources.http_poll import decode_page
                page_decoder = validator.page_decoder("events", "next_cursor")

                def decode(body: bytes, now_ms: int) -> tuple[Any, str | None]:
                    return decode_page(body, validator, page_decoder, "events", "next_cursor", now_ms)
            except ImportError:   # a revision from before decode_page
                def decode(body: bytes, now_ms: int) -> tuple[Any, str | None]:
                    page = parse_page(body, "events", "next_cursor")
                    return validator.decode_items(page.items, now_ms), page.next_cursor
            spent = {"decode": 0.0, "fold": 0.0, "build": 0.0, "commit": 0.0, "flush": 0.0, "recs process": 0.0}
            cpu = time.thread_time
            since_commit = since_flush = 0
            gc.collect()
            t_all = cpu()
            for i in range(0, len(pages), FOLD_PAGES):
                t0 = cpu()
                deliveries = []
                for body in pages[i:i + FOLD_PAGES]:
                    d, cursor = decode(body, clock.now_ms())
                    deliveries.append(Delivery(d.batch, d.rejected, position=(cursor or "").encode(), received_ms=clock.now_ms()))
                t1 = cpu()
                runner.fold(deliveries)
                t2 = cpu()
                frames, runner._replica_frames = runner._replica_frames, []
                recs.take(frames)
                spent["recs process"] += cpu() - t2
                spent["decode"] += t1 - t0
                spent["fold"] += t2 - t1
                n = sum(len(d.batch) for d in deliveries)
                clock.advance(n / FEED_RATE)
                since_commit += n
                since_flush += n
                if since_commit >= FEED_RATE * cfg.storage.commit_interval_s:
                    since_commit = 0
                    t0 = cpu()
                    answers, recs.answers = recs.answers, []
                    unit, p = runner._build_unit(False, answers)
                    t1 = cpu()
                    seq = checkpoint.commit(unit)
                    runner._state_cut, runner._recs_cut = p.cuts
                    t2 = cpu()
                    spent["build"] += t1 - t0
                    spent["commit"] += t2 - t1
                    if unit.state_complete:   # the daemon sends a CUT; the process answers it
                        recs.cut(seq)
                        spent["recs process"] += cpu() - t2
                        t2 = cpu()
                    if since_flush >= FEED_RATE * cfg.storage.flush_interval_s:
                        since_flush = 0
                        checkpoint.flush(None)
                        spent["flush"] += cpu() - t2
            total = cpu() - t_all - spent["recs process"]
        finally:
            checkpoint.close()
    out = {k: v / events * 1e6 for k, v in spent.items()}
    out["total"] = total / events * 1e6   # the lane's: all but the recommendations process's part
    return out


class _Recommendations:
    """What the recommendations process does with the daemon's frames (daemon/replica/server.py's
    fold and CUT answer, without its event loop), in this thread: the runner's `replica`. Timed apart.

    Not server.Replica itself: its Collector turns the automatic GC off for the whole process, which
    would change the daemon's side of this measurement (benchmarks/replica_cpu.py drives the real one)."""

    live = True

    def __init__(self, recommender: Any, protocol: Any) -> None:
        self.rec = recommender
        self.protocol = protocol
        self.reader = protocol.FrameReader()
        self.answers: list[tuple[int, bytes]] = []

    def take(self, frames: list[bytes]) -> None:
        p = self.protocol
        for kind, payload in self.reader.feed(b"".join(frames)):
            assert kind == p.OBSERVE
            piece = p.step_piece(json_loads(p.read_observe(payload)[1]))
            self.rec.trending.observe(piece)
            for batch in p.cut(piece):
                self.rec.observe(batch, trending=False)

    def cut(self, seq: int) -> None:
        deleted, items, users, trending = self.rec.take_dirty()
        out: dict[bytes, bytes | None] = dict.fromkeys(deleted)
        out.update(self.rec.records(items, users))
        out.update(trending)
        frame = self.protocol.changes_frame(seq, out)
        (kind, payload), = self.reader.feed(frame)
        self.answers.append((seq, payload))


def _child(tree: Path, events: int, seed: int) -> dict[str, float]:
    """run_once in a new process whose `daemon` package is `tree`'s (this file is the harness for both)."""
    code = (f"import importlib.util, json, sys; sys.path.insert(0, {str(tree)!r}); "
            f"spec = importlib.util.spec_from_file_location('lane_harness', {str(Path(__file__).resolve())!r}); "
            f"lane = importlib.util.module_from_spec(spec); spec.loader.exec_module(lane); "
            f"print(json.dumps(lane.run_once({events}, {seed})))")
    env = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run([sys.executable, "-c", code], cwd=tree, env=env, check=True, capture_output=True, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=400_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--rev", help="also run this git revision (in a throwaway worktree), interleaved")
    args = parser.parse_args()
    trees = {"this tree": REPO}
    with contextlib.ExitStack() as stack:
        if args.rev:
            wt = Path(tempfile.mkdtemp(prefix="lane-rev-"))
            subprocess.run(["git", "worktree", "add", "--detach", str(wt), args.rev], cwd=REPO, check=True,
                           capture_output=True)
            stack.callback(subprocess.run, ["git", "worktree", "remove", "--force", str(wt)], cwd=REPO, check=False)
            trees = {args.rev: wt, "this tree": REPO}
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in trees}
        order = list(trees)
        for r in range(args.rounds):
            for name in order if r % 2 == 0 else reversed(order):
                runs[name].append(_child(trees[name], args.events, args.seed))
                print(f"[lane] round {r + 1} {name}: {runs[name][-1]['total']:.2f} µs/event", file=sys.stderr)
    parts = list(next(iter(runs.values()))[0])
    print(f"CPU µs per event, median of {args.rounds} runs of {args.events:,} events, in one thread; `total` is the\n"
          "daemon's CPU lane (decode, fold, build and write the commits, flush), the recommendations process apart\n")
    print("| part | " + " | ".join(trees) + " |")
    print("|---|" + "---:|" * len(trees))
    for part in parts:
        print(f"| {part} | " + " | ".join(f"{statistics.median(x[part] for x in runs[name]):.2f}" for name in trees) + " |")


if __name__ == "__main__":
    main()
