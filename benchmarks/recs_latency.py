"""Measure GET /recommendations latency while the daemon ingests at full speed (issue 5).

    python -m benchmarks.recs_latency [--events 300000]

Starts a daemon (ingest source, recommendations on, the default aggregations), feeds storefront
events through POST /ingest as fast as it takes them (bodies of 1000, two concurrent posters), and
meanwhile, from a separate process, asks /recommendations for users seen so far, one request
at a time. Prints the ingest rate and the latency percentiles measured at the client (loopback HTTP included).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import orjson

from daemon.storefront.generator import Generator, encode_ndjson

REPO = Path(__file__).resolve().parent.parent

CONFIG = """
[http]
listen = "127.0.0.1:{port}"
max_body = "16MiB"

[storage]
data_dir = "{data}"

[pipeline]
allowed_lateness = "10m"

[sources.webhook]
type = "ingest"
queue_capacity = 20000

[recommendations]
half_life = "1h"

[[aggregations]]
name = "sales_by_category"
where = {{ type = ["purchase"] }}
group_by = ["category"]
window = {{ type = "tumbling", size = "1m" }}
metrics = {{ orders = "count", revenue = "sum(revenue)", buyers = "distinct(user_id)", p95_price = "p95(price)" }}

[[aggregations]]
name = "events_by_type"
group_by = ["type"]
window = {{ type = "tumbling", size = "10s" }}
metrics = {{ events = "count" }}
"""


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def query_loop(port: int, users: list[str], stop: "multiprocessing.synchronize.Event", out: "multiprocessing.Queue") -> None:
    """Runs in its own process, so the feeder's work never delays a measured request."""
    import http.client

    rng = random.Random(1)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    latencies = []
    while not stop.is_set():
        t0 = time.perf_counter()
        conn.request("GET", f"/recommendations/{rng.choice(users)}?k=10")
        conn.getresponse().read()
        latencies.append((time.perf_counter() - t0) * 1000)
        time.sleep(0.002)
    out.put(latencies)


async def run(events: int, port: int) -> dict[str, float]:
    gen = Generator(seed=5, start_ms=int(time.time() * 1000) - 20 * 60_000, rate=events / 1200)
    batches = [gen.next_batch(1000) for _ in range(events // 1000)]
    users = sorted({e["user_id"] for b in batches[:20] for e in b})
    bodies = [encode_ndjson(b) for b in batches]
    base = f"http://127.0.0.1:{port}"
    async with aiohttp.ClientSession() as session:
        async def post_all(part: list[bytes]) -> None:
            for body in part:
                while True:
                    async with session.post(base + "/ingest", data=body) as resp:
                        await resp.read()
                        if resp.status == 202:
                            break
                    await asyncio.sleep(0.01)   # 429: the queue is full, back off briefly

        stop, out = multiprocessing.Event(), multiprocessing.Queue()
        querier = multiprocessing.Process(target=query_loop, args=(port, users, stop, out))
        querier.start()
        t0 = time.perf_counter()
        await asyncio.gather(post_all(bodies[0::2]), post_all(bodies[1::2]))
        elapsed = time.perf_counter() - t0
        stop.set()
        latencies = out.get(timeout=30)
        querier.join(10)
    return {"events": len(bodies) * 1000, "ingest_events_per_s": len(bodies) * 1000 / elapsed, "queries": len(latencies),
            "p50_ms": percentile(latencies, 0.50), "p99_ms": percentile(latencies, 0.99),
            "max_ms": max(latencies), "mean_ms": statistics.fmean(latencies)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=300_000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        port = 18787
        cfg = Path(tmp) / "cfg.toml"
        cfg.write_text(CONFIG.format(port=port, data=Path(tmp) / "data"))
        daemon = subprocess.Popen([sys.executable, "-m", "daemon", "run", "-c", str(cfg)], cwd=REPO,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            for _ in range(100):
                try:
                    import urllib.request
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1)
                    break
                except OSError:
                    time.sleep(0.1)
            result = asyncio.run(run(args.events, port))
        finally:
            daemon.terminate()
            daemon.wait(20)
    print("| events | ingest events/s | queries | p50 ms | p99 ms | max ms |")
    print("|---|---|---|---|---|---|")
    print(f"| {result['events']:,} | {result['ingest_events_per_s']:,.0f} | {result['queries']} | "
          f"{result['p50_ms']:.2f} | {result['p99_ms']:.2f} | {result['max_ms']:.1f} |")
    print(orjson.dumps(result).decode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
