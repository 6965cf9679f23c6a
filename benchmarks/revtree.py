"""A git revision's `daemon` package beside this tree's benchmark workers, for the A/B tools that run
one worker process per side (benchmarks/replica_cpu.py, benchmarks/recs_memory.py).

The revision's extensions are built in place (its setup.py, ~30-40 s on two cores), so that both sides
run their compiled loops where this tree does: without them (until session 19) the old side timed its
pure-Python twins, so a CPU comparison against a revision with compiled loops of its own would have been
pure against compiled (the figures in benchmarks/README.md predate such revisions). If the build fails the tool stops: run it again with the
extensions off on both sides (STOREPULSE_NO_EXTENSIONS=1) for a like-for-like comparison."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def old_tree(rev: str, into: Path, workers: tuple[str, ...]) -> Path:
    """`into`/old holding `rev`'s daemon package (its extensions built) and this tree's
    benchmarks/`workers` (the same worker drives both sides); a worker run there with cwd = that root
    imports the old daemon."""
    root = into / "old"
    root.mkdir()
    has_setup = subprocess.run(["git", "cat-file", "-e", f"{rev}:setup.py"], cwd=REPO).returncode == 0
    paths = ["daemon", "setup.py"] if has_setup else ["daemon"]
    archive = subprocess.run(["git", "archive", rev, *paths], cwd=REPO, check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(root)], input=archive, check=True)
    if has_setup:
        built = subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--inplace"], cwd=root,
                               capture_output=True, text=True)
        if built.returncode:
            raise SystemExit(f"building {rev}'s extensions failed:\n{built.stderr[-2000:]}")
    (root / "benchmarks").mkdir()
    for name in ("__init__.py", "feeder.py", "revtree.py", *workers):
        shutil.copy(REPO / "benchmarks" / name, root / "benchmarks" / name)
    return root
