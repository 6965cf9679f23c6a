"""CPU per event of the recommendations process (daemon/replica/), this tree against a git revision, interleaved.

    python -m benchmarks.replica_cpu [--rev main] [--rounds 5] [--events 400000] [--cut-every 200000]

Storefront events (the benchmark's shop, benchmarks/feeder.py) are validated into batches of FOLD_EVENTS as the
daemon folds them, logged as fold steps (pipeline/foldlog.py) and framed as the daemon sends them (an OBSERVE frame
per step, a CUT every --cut-every events: the daemon writes its full state every 5 s, ~400k events at ~80k/s;
the default is half that, so that a run answers two cuts before the last).
Each round runs one worker process per side, in alternating order, on the same frame stream: the worker feeds
the frames to the real `Replica` (its event loop, frame reader and collector) in 1 MiB reads, as the process's
stdin loop does, and times the parts in CPU time of its thread (other agents share the 2 cores: wall time would
count their turns too). The other revision's `daemon` package comes from `git archive`. Both sides must answer
the cuts with the same records and end with the same records (checked, order-free, users by the state their
records hold; the run fails if not).
Prints medians (and least) over the rounds, in µs per event: `observe + batching` is the fold of the steps less
trending and GC (Recommender.observe, cutting pieces into 16-event batches, the loop's turns); `decode` is the
total less the fold and the cut answers (frame parsing, JSON, building the batches of the steps).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson

from benchmarks.revtree import old_tree

REPO = Path(__file__).resolve().parent.parent
PARTS = ("decode", "observe + batching", "trending", "cut answers", "gc", "total CPU")


def make_frames(events: int, cut_every: int, seed: int) -> bytes:
    """The daemon's OBSERVE and CUT frames for `events` storefront events (after the config frame)."""
    from benchmarks.feeder import SHOP, generate
    from daemon.pipeline.foldlog import FoldLog
    from daemon.pipeline.runner import FOLD_EVENTS
    from daemon.pipeline.validate import Validator
    from daemon.replica import protocol

    start_ms = 1_700_000_000_000
    wl = generate(events, seed=seed, start_ms=start_ms, rate=20_000.0, shop=SHOP)
    validator = Validator("webhook")
    now_ms = start_ms + 10 * 86_400_000
    log = FoldLog()
    out: list[bytes] = []
    blocks = wl.blocks
    per_fold = FOLD_EVENTS // 100           # Workload blocks hold 100 events
    folded = since_cut = seq = 0
    for i in range(0, len(blocks), per_fold):
        batch = validator.decode(b"".join(blocks[i:i + per_fold]), now_ms).batch
        for step in log.observe(batch):
            out.append(protocol.observe_frame(step, max(batch.ts) - 5_000))
        log.clear()
        folded += len(batch)
        since_cut += len(batch)
        if since_cut >= cut_every:
            seq += 1
            out.append(protocol.cut_frame(seq))
            since_cut = 0
    seq += 1
    out.append(protocol.cut_frame(seq))
    return b"".join(out)


# ---- the worker: one side, one round, in its own process --------------------------------------------

def work(frames_path: str) -> None:
    """Feed the frames to a Replica as server.py's stdin loop does; print the timings and answer digests."""
    from daemon.analyzers.recommend import Recommender
    from daemon.analyzers.recusers import from_record
    from daemon.config import RecommendationsConfig
    from daemon.replica import protocol, server

    import daemon
    assert Path(daemon.__file__).resolve().is_relative_to(Path.cwd().resolve()), daemon.__file__
    data = Path(frames_path).read_bytes()
    answers = hashlib.sha256()
    frames: list[bytes] = []

    async def answer(*pieces: bytes) -> None:
        frames.append(b"".join(pieces))   # digested after the timing (a frame comes whole or in pieces)

    async def main() -> dict[str, float]:
        collector = server.Collector()
        rep = server.Replica(Recommender(RecommendationsConfig(half_life_s=3600.0)), collector, answer)
        # CPU time of this thread (other agents share the machine's 2 cores: wall time would count their
        # turns too), read per piece, per GC and per cut, not per small batch: a read costs ~0.5 µs.
        spent = dict.fromkeys(("fold", "trending", "gc", "cut answers"), 0.0)
        cpu = time.thread_time
        rec = rep.recommender
        trending_observe, collect, fold, apply = rec.trending.observe, collector.collect, rep._fold, rep._apply

        def timed_trending(batch):   # type: ignore[no-untyped-def]
            t0 = cpu()
            trending_observe(batch)
            spent["trending"] += cpu() - t0

        def timed_collect():   # type: ignore[no-untyped-def]
            t0 = cpu()
            collect()
            spent["gc"] += cpu() - t0

        async def timed_fold(step, **kw):   # type: ignore[no-untyped-def]
            t0 = cpu()
            n = await fold(step, **kw)
            spent["fold"] += cpu() - t0
            return n

        async def timed_apply(kind, payload):   # type: ignore[no-untyped-def]
            if kind != protocol.CUT:
                return await apply(kind, payload)
            t0 = cpu()
            await apply(kind, payload)
            spent["cut answers"] += cpu() - t0

        rec.trending.observe, collector.collect, rep._fold, rep._apply = (timed_trending, timed_collect, timed_fold,
                                                                          timed_apply)
        reader = protocol.FrameReader()
        cpu0 = cpu()
        for i in range(0, len(data), 1 << 20):
            for kind, payload in reader.feed(data[i:i + (1 << 20)]):
                await rep.apply(kind, payload)
        total = cpu() - cpu0
        parts = {"observe + batching": spent["fold"] - spent["trending"] - spent["gc"], "trending": spent["trending"],
                 "cut answers": spent["cut answers"], "gc": spent["gc"],
                 "decode": total - spent["fold"] - spent["cut answers"], "total CPU": total}
        final = {**rec.records(list(rec._count), list(rec._users)), **rec.trending.records()}

        def canonical(records: dict[bytes, bytes | None]) -> list[tuple[bytes, bytes | None]]:
            """Sorted (order-free: the daemon writes a CHANGES frame's records into LMDB, where their order
            is lost), a user by the state its record holds (the record format may differ between sides)."""
            return sorted((k, orjson.dumps(from_record(v, {}, {})) if k.startswith(b"u:") and v is not None else v)
                          for k, v in records.items())
        # A revision from before bucketed answers packed them as one record list.
        unpack = getattr(protocol, "unpack_changes", None) or protocol.unpack_records
        by_cut: dict[int, dict[bytes, bytes | None]] = {}
        for frame in frames:   # an answer by its cut, whatever its split into PART frames (it follows sizes)
            seq, packed = protocol.read_changes(frame[protocol.HEADER.size:])
            by_cut.setdefault(seq, {}).update(unpack(packed))
        for seq in sorted(by_cut):
            answers.update(protocol.pack_records(canonical(by_cut[seq])))
        answers.update(protocol.pack_records(canonical(final)))
        return {k: v / rep.events * 1e6 for k, v in parts.items()} | {"events": rep.events}

    result = asyncio.run(main())
    print(orjson.dumps({"us": result, "digest": answers.hexdigest()}).decode())


# ---- the driver ----------------------------------------------------------------------------------------

def run_side(root: Path, frames_path: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(root), "PYTHONHASHSEED": "0"}
    out = subprocess.run([sys.executable, "-m", "benchmarks.replica_cpu", "--worker", str(frames_path)],
                         cwd=root, env=env, check=True, capture_output=True, text=True).stdout
    return orjson.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rev", default="main")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--events", type=int, default=400_000)
    parser.add_argument("--cut-every", type=int, default=200_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        work(args.worker)
        return
    with tempfile.TemporaryDirectory(prefix="replica_cpu-") as tmp:
        old_root = old_tree(args.rev, Path(tmp), ("replica_cpu.py",))
        t = time.perf_counter()
        frames_path = Path(tmp) / "frames.bin"
        frames_path.write_bytes(make_frames(args.events, args.cut_every, args.seed))
        print(f"{args.events:,} events framed in {time.perf_counter() - t:.1f}s "
              f"({frames_path.stat().st_size / 2**20:.0f} MiB); {args.rounds} rounds", file=sys.stderr)
        sides = {args.rev: old_root, "new": REPO}
        samples: dict[str, list[dict]] = {name: [] for name in sides}
        order = list(sides)
        digests: dict[str, set[str]] = {name: set() for name in sides}
        for r in range(args.rounds):
            order.reverse()
            for name in order:
                res = run_side(sides[name], frames_path)
                samples[name].append(res["us"])
                digests[name].add(res["digest"])
            print(f"round {r + 1}: " + ", ".join(f"{n} {samples[n][-1]['total CPU']:.2f}" for n in sides),
                  file=sys.stderr)
    same = len(digests[args.rev] | digests["new"]) == 1
    print(f"\n{samples['new'][0]['events']:,.0f} events, a cut every {args.cut_every:,}; answers and final records "
          f"{'IDENTICAL' if same else 'DIFFER'} ({args.rev} vs new)\n")
    print(f"| part | {args.rev} µs/event median (min) | new µs/event median (min) | change |")
    print("|---|---|---|---|")
    for part in PARTS:
        old = [s[part] for s in samples[args.rev]]
        new = [s[part] for s in samples["new"]]
        before, after = statistics.median(old), statistics.median(new)
        print(f"| {part} | {before:.2f} ({min(old):.2f}) | {after:.2f} ({min(new):.2f}) "
              f"| {after / before - 1:+.0%} |")
    if not same:
        sys.exit(1)


if __name__ == "__main__":
    main()
