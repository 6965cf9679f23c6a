"""benchmarks/memprobe: the daemon started with it on PYTHONPATH logs one line per LMDB write transaction."""

from __future__ import annotations

import json
import time

import orjson
import pytest

from tests.conftest import REPO, http_post, wait_until
from tests.integration.test_ingest import event, start

pytestmark = pytest.mark.timeout(60)


def test_memprobe_logs_each_write_transaction_with_its_peak(daemon_factory, tmp_path):
    out = tmp_path / "probe.jsonl"
    d = start(daemon_factory, env={"PYTHONPATH": str(REPO / "benchmarks" / "memprobe"), "STOREPULSE_MEMPROBE": str(out)})
    now = int(time.time() * 1000)
    assert http_post(d.url + "/ingest", orjson.dumps([event(i, now) for i in range(300)]))[0] == 202
    wait_until(lambda: d.get_json("/stats")["store"]["commits"] >= 1, what="a commit")
    d.stop()
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    commits = [x for x in lines if x["fn"] == "Checkpoint.commit.<locals>.<lambda>"]
    assert commits and all(x["hwm_after"] >= x["hwm_before"] > 0 and x["ms"] >= 0 for x in lines)
    assert all(x["anon_max"] >= x["anon_start"] > 0 and x["file_max"] >= x["file_start"] > 0 for x in lines)
    # What the heap held as each began: malloc's bytes in use (glibc), Python's blocks, Arrow's pool.
    assert all(x["malloc_used"] > 0 and x["malloc_free"] >= 0 and x["py_blocks_k"] > 100 and x["arrow"] >= 0
               for x in lines)
    # The recommendations process and anything else started with it leave the file alone.
    assert {x["fn"].split(".")[0] for x in lines} <= {"Checkpoint", "compact_segments", "apply_pending_latest"}
