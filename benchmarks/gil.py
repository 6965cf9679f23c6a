"""What a native call that gives the GIL back costs when another thread wants it: the daemon's I/O
libraries timed alone and beside a thread that holds the GIL in a loop (as the CPU lane does).

    python -m benchmarks.gil [--events 200000] [--keys 20000] [--rounds 3]

Every call that releases the GIL must take it back before it returns; with a busy thread waiting, the
taking waits for that thread's switch interval (cli.py sets 0.5 ms), and each hand-over wakes a thread.
So a loop of many short native calls is cheap alone and slow beside the lane. Measured here:

* **Arrow IPC files** (stores/arrow_files.py) written to a Python file object (every small write of the
  IPC writer a call into Python) against Arrow's own buffered file stream, with the archived events of
  `--events` storefront events as the outbox holds them;
* **LMDB** (py-lmdb 3.x releases the GIL around every operation): `--keys` puts one by one, the same
  through `putmulti`, and a cursor walk over them.

Prints wall and CPU seconds of the measuring thread per case, median over `--rounds`.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

import lmdb
import pyarrow as pa

from daemon.stores.arrow_files import _native_sink

SWITCH_INTERVAL_S = 0.0005   # as the daemon sets it (cli.py)


def _archive_blobs(events: int) -> tuple[pa.Schema, list[pa.Buffer]]:
    """The archived events of `events` storefront events as outbox entries: one IPC stream per fold."""
    from benchmarks.kernels import START_MS, _batches
    from daemon.stores import schemas

    _, batches = _batches(events, 7)
    blobs = []
    schema = None
    for b in batches:
        table = pa.Table.from_batches([schemas.events_to_record_batch(b, START_MS)])
        schema = table.schema
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        blobs.append(sink.getvalue())
    assert schema is not None
    return schema, blobs


def _arrow_cases(folder: Path, schema: pa.Schema, blobs: list[pa.Buffer]) -> dict[str, Callable[[], None]]:
    def write(sink: pa.NativeFile | object) -> None:
        with pa.ipc.new_file(sink, schema) as writer:
            for blob in blobs:
                for batch in pa.ipc.open_stream(blob).read_all().to_batches(max_chunksize=64 * 1024):
                    writer.write_batch(batch)

    def python_file() -> None:
        with open(folder / "python.arrow", "wb") as f:
            write(f)

    def arrow_stream() -> None:
        with _native_sink(folder / "native.arrow") as f:   # the daemon's sink (stores/arrow_files.py)
            write(f)

    return {"Arrow file, Python file object": python_file, "Arrow file, Arrow buffered stream": arrow_stream}


def _lmdb_cases(folder: Path, keys: int) -> dict[str, Callable[[], None]]:
    env = lmdb.open(str(folder / "lmdb"), map_size=1 << 30, max_dbs=2, sync=False)
    db = env.open_db(b"t")
    items = sorted((os.urandom(16), b"x" * 20) for _ in range(keys))

    def put() -> None:
        with env.begin(write=True, db=db) as txn:
            for k, v in items:
                txn.put(k, v)

    def putmulti() -> None:
        with env.begin(write=True, db=db) as txn:
            txn.cursor().putmulti(items)

    def walk() -> None:
        with env.begin(db=db) as txn:
            deque(txn.cursor(), maxlen=0)   # consumed in C: only the cursor's steps are timed

    return {f"LMDB {keys:,} puts": put, f"LMDB {keys:,} putmulti": putmulti, f"LMDB cursor walk of {keys:,}": walk}


def _timed(fn: Callable[[], None]) -> tuple[float, float]:
    t0, c0 = time.perf_counter(), time.thread_time()
    fn()
    return time.perf_counter() - t0, time.thread_time() - c0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--events", type=int, default=200_000)
    p.add_argument("--keys", type=int, default=20_000)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    with tempfile.TemporaryDirectory(prefix="gil-") as tmp:
        folder = Path(tmp)
        schema, blobs = _archive_blobs(args.events)
        cases = {**_arrow_cases(folder, schema, blobs), **_lmdb_cases(folder, args.keys)}
        results: dict[tuple[str, bool], list[tuple[float, float]]] = {}
        for busy in (False, True):
            stop = threading.Event()

            def hold() -> None:
                n = 0
                while not stop.is_set():
                    n += 1

            holder = threading.Thread(target=hold, daemon=True)
            if busy:
                holder.start()
            try:
                for _ in range(args.rounds):
                    for name, fn in cases.items():
                        results.setdefault((name, busy), []).append(_timed(fn))
            finally:
                stop.set()
                if busy:
                    holder.join()
    print(f"{args.rounds} rounds, switch interval {SWITCH_INTERVAL_S * 1000:g} ms; seconds of the measuring "
          "thread, median (wall / CPU)\n")
    print("| case | alone | beside a thread holding the GIL |\n|---|---:|---:|")
    for name in cases:
        cells = []
        for busy in (False, True):
            got = results[(name, busy)]
            cells.append(f"{statistics.median(w for w, _ in got):.3f} / {statistics.median(c for _, c in got):.3f}")
        print(f"| {name} | {cells[0]} | {cells[1]} |")


if __name__ == "__main__":
    main()
