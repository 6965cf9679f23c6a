"""Measure GET /recommendations latency while the daemon ingests at full speed (issue 5).

    python -m benchmarks.recs_latency [--events 300000] [--no-replica]

Starts a daemon (ingest source, recommendations on, the default aggregations), feeds storefront
events through POST /ingest as fast as it takes them (bodies of 1000, two concurrent posters), and
meanwhile, from separate processes, asks /recommendations for users seen so far, one request at a
time: on the daemon's own port, and (unless --no-replica) on the replica's port
(`[recommendations] listen`, daemon/replica/). Prints the ingest rate and the latency percentiles
measured at the client (loopback HTTP included), one row per port.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterable
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
{replica}

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


def query_loop(port: int, users: list[str], stop: "multiprocessing.synchronize.Event", out: "multiprocessing.Queue",
               seed: int) -> None:
    """Runs in its own process, so the feeder's work never delays a measured request."""
    import http.client

    rng = random.Random(seed)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    latencies = []
    while not stop.is_set():
        t0 = time.perf_counter()
        conn.request("GET", f"/recommendations/{rng.choice(users)}?k=10")
        conn.getresponse().read()
        latencies.append((time.perf_counter() - t0) * 1000)
        time.sleep(0.002)
    out.put((port, latencies))


async def run(events: int, ports: dict[str, int], feeder_nice: int = 0) -> list[dict[str, float]]:
    gen = Generator(seed=5, start_ms=int(time.time() * 1000) - 20 * 60_000, rate=events / 1200)
    batches = [gen.next_batch(1000) for _ in range(events // 1000)]
    users = sorted({e["user_id"] for b in batches[:20] for e in b})
    bodies = [encode_ndjson(b) for b in batches]
    base = f"http://127.0.0.1:{ports['daemon']}"
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
        queriers = [multiprocessing.Process(target=query_loop, args=(port, users, stop, out, i + 1))
                    for i, port in enumerate(ports.values())]
        for q in queriers:
            q.start()
        if feeder_nice:
            os.nice(feeder_nice)   # after the queriers started: they keep the normal priority
        t0 = time.perf_counter()
        await asyncio.gather(post_all(bodies[0::2]), post_all(bodies[1::2]))
        elapsed = time.perf_counter() - t0
        stop.set()
        by_port = dict(out.get(timeout=30) for _ in queriers)
        for q in queriers:
            q.join(10)
    rate = len(bodies) * 1000 / elapsed
    rows = []
    for name, port in ports.items():
        lat = by_port[port]
        rows.append({"served_by": name, "port": port, "events": len(bodies) * 1000, "ingest_events_per_s": rate,
                     "queries": len(lat), "p50_ms": percentile(lat, 0.50), "p99_ms": percentile(lat, 0.99),
                     "max_ms": max(lat), "mean_ms": statistics.fmean(lat)})
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=300_000)
    ap.add_argument("--no-replica", action="store_true", help="only query the daemon's own port")
    ap.add_argument("--feeder-nice", type=int, default=0, metavar="N",
                    help="run the posting client at nice N (it shares the machine's cores with the daemon; "
                         "a shop's clients would not)")
    args = ap.parse_args()
    ports = {"daemon": 18787} if args.no_replica else {"daemon": 18787, "replica": 18788}
    replica = "" if args.no_replica else f'listen = "127.0.0.1:{ports["replica"]}"'
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "cfg.toml"
        cfg.write_text(CONFIG.format(port=ports["daemon"], data=Path(tmp) / "data", replica=replica))
        daemon = subprocess.Popen([sys.executable, "-m", "daemon", "run", "-c", str(cfg)], cwd=REPO,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_ready(ports.values())
            rows = asyncio.run(run(args.events, ports, args.feeder_nice))
            peaks = peak_rss_mib(daemon.pid, ports["daemon"])
            for r in rows:
                r["peak_rss_mib"] = peaks.get(r["served_by"])
        finally:
            daemon.terminate()
            daemon.wait(20)
    print("| served by | events | ingest events/s | queries | p50 ms | p99 ms | max ms | peak RSS MiB |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        rss = "?" if r["peak_rss_mib"] is None else f"{r['peak_rss_mib']:,.0f}"
        print(f"| {r['served_by']} | {r['events']:,} | {r['ingest_events_per_s']:,.0f} | {r['queries']} | "
              f"{r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['max_ms']:.1f} | {rss} |")
    print(orjson.dumps(rows).decode())
    return 0


def peak_rss_mib(daemon_pid: int, daemon_port: int) -> dict[str, float]:
    """Peak RSS (VmHWM) of the daemon and of its replica (its pid from /stats), read before they stop."""
    pids = {"daemon": daemon_pid}
    with contextlib.suppress(OSError, ValueError, KeyError):
        with urllib.request.urlopen(f"http://127.0.0.1:{daemon_port}/stats", timeout=5) as resp:
            replica = orjson.loads(resp.read())["replica"]
        if replica.get("pid"):
            pids["replica"] = replica["pid"]
    out = {}
    for name, pid in pids.items():
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    out[name] = int(line.split()[1]) / 1024
    return out


def wait_ready(ports: Iterable[int]) -> None:
    """Until the daemon answers /healthz and the replica (if any) has its snapshot (10 s at most)."""
    deadline = time.monotonic() + 10
    for port in ports:
        while True:
            with contextlib.suppress(OSError):   # not listening yet
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as resp:
                    if orjson.loads(resp.read()).get("status") == "ok":
                        break
            if time.monotonic() > deadline:
                raise SystemExit(f"nothing ready on port {port} after 10 s")
            time.sleep(0.1)


if __name__ == "__main__":
    raise SystemExit(main())
