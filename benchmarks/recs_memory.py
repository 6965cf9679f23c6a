"""Memory per tracked user of the recommendations process (daemon/replica/), this tree against a git revision.

    python -m benchmarks.recs_memory [--rev main] [--users 200000] [--top 0]

The stream is the benchmark's memory scenario (benchmarks/feeder.py `memory_workload`: 2 events for each of
--users users, one session each, over users/5 items), validated into batches as the daemon folds them and
logged as its fold steps (pipeline/foldlog.py). A worker process per side folds the steps as server.py's
Replica does (trending per piece, the recommender per `protocol.cut` batch) and reports the bytes the fold
left allocated: by tracemalloc in one run, and as the growth of RssAnon in another (tracemalloc's own
bookkeeping would count in RSS); that run also times the fold in CPU time of its thread (one run per
side: for CPU, benchmarks/replica_cpu.py's interleaved rounds are the measure). The other revision's
`daemon` package comes from `git archive`. Both sides must end with the same records, users compared
by the state their records hold (checked by digest; the run fails if not).
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import os
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import orjson

from benchmarks.revtree import old_tree

REPO = Path(__file__).resolve().parent.parent


def make_steps(users: int, seed: int) -> bytes:
    """The fold steps of the memory scenario's stream for `users` users, as the daemon's OBSERVE frames."""
    from benchmarks.feeder import memory_workload
    from daemon.pipeline.foldlog import FoldLog
    from daemon.pipeline.runner import FOLD_EVENTS
    from daemon.pipeline.validate import Validator
    from daemon.replica import protocol

    wl = memory_workload(users, seed, 20_000.0)
    validator = Validator("webhook")
    now_ms = int(time.time() * 1000)
    log = FoldLog()
    per_fold = FOLD_EVENTS // 100           # Workload blocks hold 100 events
    frames = [protocol.observe_frame(step, now_ms)
              for i in range(0, len(wl.blocks), per_fold)
              for step in log.observe(validator.decode(b"".join(wl.blocks[i:i + per_fold]), now_ms).batch)]
    return b"".join(frames)


def _rss_anon_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no RssAnon in /proc/self/status")


def work(steps_path: str, traced: bool, top: int) -> None:
    """Fold the steps as the replica does (packing the users beyond `hot_users` as its _pack_idle does);
    print the bytes it left allocated and a digest of the records."""
    from daemon.analyzers.recommend import Recommender
    from daemon.config import RecommendationsConfig
    from daemon.pipeline import foldlog
    from daemon.replica import protocol
    from daemon.replica.server import PACK_AFTER_LISTS

    import daemon
    assert Path(daemon.__file__).resolve().is_relative_to(Path.cwd().resolve()), daemon.__file__
    # The steps stay bytes until folded, as frames arrive in the process: parsing them all first would
    # leave freed pymalloc arenas that the state then fills, and hide its growth in RSS.
    steps = [protocol.read_observe(payload)[1] for _, payload in protocol.FrameReader().feed(
        Path(steps_path).read_bytes())]
    rec = Recommender(RecommendationsConfig())
    gc.disable()              # as the replica's Collector: collections at chosen moments only
    gc.collect()
    if traced:
        tracemalloc.start()
    rss0 = _rss_anon_bytes()
    cpu0 = time.thread_time()
    for blob in steps:
        step = orjson.loads(blob)
        if step[0] not in (foldlog.OBSERVE, foldlog.MORE):
            continue
        piece = protocol.step_piece(step)
        del step
        rec.trending.observe(piece)
        for batch in protocol.cut(piece):
            rec.observe(batch, trending=False)
            if rec.lists_made >= PACK_AFTER_LISTS:
                rec.pack(rec.idle_users(rec.cfg.hot_users))
        del piece
    rec.pack(rec.idle_users(rec.cfg.hot_users))   # as after an answer
    fold_cpu_s = time.thread_time() - cpu0
    gc.collect()
    kept = [u for u in rec._users.values() if u.__class__ is not list]
    out: dict[str, object] = {"users": len(rec._users), "items": len(rec._count), "rss_bytes": _rss_anon_bytes() - rss0,
                              "fold_us_per_event": fold_cpu_s / rec._events * 1e6, "packed": len(kept),
                              "packed_record_bytes": sum(map(len, kept)) / max(1, len(kept))}
    if traced:
        out["traced_bytes"] = tracemalloc.get_traced_memory()[0]
        if top:
            snap = tracemalloc.take_snapshot()
            out["top"] = [f"{s.size / len(rec._users):7.1f} B/user  {s.count:>9,} blocks  {s.traceback[0]}"
                          for s in snap.statistics("lineno")[:top]]
        tracemalloc.stop()
    from daemon.analyzers.recusers import from_record
    digest = hashlib.sha256()   # a user by its state, not its record: the record format may differ
    for key, value in sorted({**rec.records(list(rec._count), list(rec._users)), **rec.trending.records()}.items()):
        if key.startswith(b"u:") and value is not None:
            value = orjson.dumps(from_record(value, {}, {}))
        digest.update(key + b"\0" + (value or b"") + b"\0")
    out["digest"] = digest.hexdigest()
    print(orjson.dumps(out).decode())


def run_side(root: Path, steps_path: Path, traced: bool, top: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(root), "PYTHONHASHSEED": "0"}
    cmd = [sys.executable, "-m", "benchmarks.recs_memory", "--worker", str(steps_path), "--top", str(top)]
    out = subprocess.run(cmd + (["--traced"] if traced else []), cwd=root, env=env, check=True,
                         capture_output=True, text=True).stdout
    return orjson.loads(out.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rev", default="main")
    parser.add_argument("--users", type=int, default=200_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--top", type=int, default=0, help="also print the N largest allocation sites per side")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--traced", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        work(args.worker, args.traced, args.top)
        return
    with tempfile.TemporaryDirectory(prefix="recs_memory-") as tmp:
        old_root = old_tree(args.rev, Path(tmp), ("recs_memory.py",))
        t = time.perf_counter()
        steps_path = Path(tmp) / "steps.bin"
        steps_path.write_bytes(make_steps(args.users, args.seed))
        print(f"{2 * args.users:,} events for {args.users:,} users logged in {time.perf_counter() - t:.1f}s",
              file=sys.stderr)
        sides = {args.rev: old_root, "new": REPO}
        res = {name: run_side(root, steps_path, True, args.top) for name, root in sides.items()}
        for name, root in sides.items():   # untraced: tracemalloc's bookkeeping would count in RSS and CPU
            untraced = run_side(root, steps_path, False, 0)
            res[name] |= {key: untraced[key] for key in ("rss_bytes", "fold_us_per_event")}
    same = len({r["digest"] for r in res.values()}) == 1
    users = res["new"]["users"]
    print(f"\n{users:,} users, {res['new']['items']:,} items; final records "
          f"{'IDENTICAL' if same else 'DIFFER'} ({args.rev} vs new)\n")
    print(f"| measure | {args.rev} | new | change |")
    print("|---|---|---|---|")
    for key, label in (("traced_bytes", "tracemalloc bytes/user"), ("rss_bytes", "RssAnon growth bytes/user")):
        before, after = res[args.rev][key] / users, res["new"][key] / users
        print(f"| {label} | {before:,.0f} | {after:,.0f} | {after / before - 1:+.0%} |")
    before, after = res[args.rev]["fold_us_per_event"], res["new"]["fold_us_per_event"]
    print(f"| fold CPU µs/event (one run each: a hint, not an A/B) | {before:.2f} | {after:.2f} "
          f"| {after / before - 1:+.0%} |")
    before, after = res[args.rev]["packed_record_bytes"], res["new"]["packed_record_bytes"]
    print(f"| bytes per kept record ({res['new']['packed']:,} users beyond hot_users) | {before:.0f} | {after:.0f} "
          f"| {after / before - 1:+.0%} |")
    for name in sides:
        for line in res[name].get("top", []):
            print(f"{name}: {line}")
    if not same:
        sys.exit(1)


if __name__ == "__main__":
    main()
