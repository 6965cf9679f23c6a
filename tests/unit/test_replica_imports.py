"""The recommendations process loads what it uses: not Arrow, numpy, the sketches or the metrics
exposition (together ~50 MiB of its RSS, counted in the benchmark's memory figure)."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("pyarrow", "numpy", "datasketches", "prometheus_client", "lmdb")


def test_the_recommendations_process_imports_no_heavy_library():
    code = ("import sys, daemon.replica.server\n"
            f"print(','.join(sorted(m for m in {HEAVY!r} if m in sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == ""


def test_the_daemon_still_loads_them():
    """The counter-check: the same probe sees the daemon's app load Arrow and the metrics library."""
    code = ("import sys, daemon.app\n"
            "print(','.join(sorted(m for m in ('pyarrow', 'prometheus_client') if m in sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "prometheus_client,pyarrow"
