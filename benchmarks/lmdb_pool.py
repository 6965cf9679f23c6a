"""LMDB's page pool per write: the heap one write of N latest-window entries at random keys leaves held.

    python -m benchmarks.lmdb_pool [--keys 1000000] [--sizes 20000,8192,4096,2048] [--repeat 2]

liblmdb keeps every page a write transaction dirtied, once freed, in its environment's own pool for
reuse until the environment is closed (`mdb_page_free`), so the largest write since the last
`LmdbState.recycle` sets what the daemon's heap holds for LMDB. A write of random keys dirties about
one leaf page per entry while the entries are few against the index's leaves. This builds an index of
--keys keys (`lmdb_state._apply_latest`, as the daemon's closes write it: one aggregation, one window
end), then for each size, --repeat times: recycles the environment, writes that many entries at random
keys (a new window end) in one transaction, and prints malloc's growth (`mallinfo2`: bytes in use,
mmapped chunks included) and the time per entry, the commit and its fsyncs included. Session 18's
figures are in benchmarks/README.md ("Session 18").
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from benchmarks.memprobe.sitecustomize import heap_reader
from daemon.stores import lmdb_state as layout

ROW = b'{"window_start":1800000000000,"window_end":1800000060000,"user_id":"u1","events":3,"revenue":4.5}'
BUILD_PER_WRITE = 50_000
BASE_END_MS = 1_800_000_000_000


def heap_mib(read: Callable[[], dict[str, int]]) -> float:
    """malloc's bytes in use, its mmapped chunks included, in MiB."""
    h = read()
    return float(h.get("malloc_used", 0) + h.get("malloc_mmapped", 0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--sizes", default="20000,8192,4096,2048", help="entries per write, comma-separated")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    sizes = [int(x) for x in args.sizes.split(",")]
    read = heap_reader()
    keys = [b'["u%d"]' % n for n in range(args.keys)]
    rng = random.Random(args.seed)
    keep = {"s": 5}
    with tempfile.TemporaryDirectory(prefix="lmdb_pool-") as tmp:
        d = Path(tmp)
        st = layout.LmdbState.open(d / "state", lock_path=d / "LOCK", db_names=layout.DBS,
                                   map_size_initial_bytes=1 << 30, map_size_max_bytes=16 << 30)
        try:
            t = time.perf_counter()
            for i in range(0, len(keys), BUILD_PER_WRITE):
                part = [("s", k, BASE_END_MS, ROW) for k in keys[i:i + BUILD_PER_WRITE]]
                st.write(lambda txn: layout._apply_latest(txn, part, keep))
                st.recycle()
            print(f"index of {len(keys):,} keys built in {time.perf_counter() - t:.1f} s")
            print("| entries per write | heap growth MiB | µs per entry |")
            print("|---:|---:|---:|")
            end = BASE_END_MS
            for size in sizes:
                for _ in range(args.repeat):
                    st.recycle()
                    end += 60_000
                    part = [("s", k, end, ROW) for k in rng.sample(keys, min(size, len(keys)))]
                    before = heap_mib(read)
                    t = time.perf_counter()
                    st.write(lambda txn: layout._apply_latest(txn, part, keep))
                    us = (time.perf_counter() - t) / len(part) * 1e6
                    print(f"| {len(part):,} | {heap_mib(read) - before:.1f} | {us:.1f} |")
        finally:
            st.close()


if __name__ == "__main__":
    main()
