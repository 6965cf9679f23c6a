"""A git revision's `daemon` package beside this tree's benchmark workers, for the A/B tools that run
one worker process per side (benchmarks/replica_cpu.py, benchmarks/recs_memory.py)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def old_tree(rev: str, into: Path, workers: tuple[str, ...]) -> Path:
    """`into`/old holding `rev`'s daemon package and this tree's benchmarks/`workers` (the same worker
    drives both sides); a worker run there with cwd = that root imports the old daemon."""
    root = into / "old"
    root.mkdir()
    archive = subprocess.run(["git", "archive", rev, "daemon"], cwd=REPO, check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(root)], input=archive, check=True)
    (root / "benchmarks").mkdir()
    for name in ("__init__.py", "feeder.py", "revtree.py", *workers):
        shutil.copy(REPO / "benchmarks" / name, root / "benchmarks" / name)
    return root
