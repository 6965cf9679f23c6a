"""Sustained load: does anything grow without bound while the daemon runs for hours of event time?

    python -m benchmarks.soak [--minutes 20] [--rate 20000] [--event-hours 6] [--keep-latest-rows N]
                              [--user-ttl DURATION] [--out bench-results/soak.json]

The throughput scenarios of benchmarks/run.py feed 2M events spanning ~100 s of event time: no
dedupe id reaches its 1 h TTL, no session is expired by a later one, the recommender's decay and
bounds never act, LMDB never reuses its free pages. This runs the benchmark's config (every
aggregation, the recommendations process, `archive_events = true`) for `--minutes` of wall time at
a steady `--rate` events/s over http_poll, with the events spread over `--event-hours` of event time
(ending shortly before now), so the event clock passes every TTL and window several times over.

Pages are generated as the daemon asks for them (the storefront generator, the benchmark's shop) and
paced to `--rate`: a cursor that is not due yet gets an empty page, as a quiet shop API answers.
Every `--sample-s` it records both processes' RSS (anonymous and file-mapped) and where it is (glibc's
heap in use and free, pymalloc's blocks, pyarrow's pool: /stats `process` and the recommendations
process's /healthz), open states, dedupe ids held, the LMDB file's high-water mark, Arrow bytes
written, open file descriptors and threads.
At the end the feed stops, the windows close (idle timeout), every event must be counted exactly
once (run.check_outputs), and the daemon is stopped with SIGTERM (exit code and time taken).

The verdict printed: RSS (both processes), open states, dedupe ids, descriptors and threads must not
grow by more than `GROWTH_LIMIT` from the second quarter of the feed (past the first event-time hour,
the dedupe TTL) to the last (medians of their samples); the LMDB file's high-water mark by no more
than `LMDB_GROWTH_LIMIT` within the last quarter (it never shrinks; once every bound is reached, e.g.
`keep_latest_rows`, its free pages are reused: at the default 1M rows the sessions by user of the
benchmark's shop reach it after ~35M events, so `--keep-latest-rows` sets a lower one to see the
plateau in a shorter run). Arrow bytes grow with the archive by design (date-partitioned files; old
partitions are the user's to delete).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from benchmarks.feeder import PAGE_EVENTS, SHOP, PageServer
from benchmarks.run import DaemonProc, check_outputs, free_port, machine, open_states, render_config, source_toml
from daemon.config import COMPRESSIONS
from daemon.storefront.generator import Generator, encode_ndjson

GROWTH_LIMIT = 0.10        # last quarter vs second quarter, median of the samples in each
LMDB_GROWTH_LIMIT = 0.05   # within the last quarter
CACHED_PAGES = 64          # a cursor asked again (a retried GET) is answered from these
DRAIN_TIMEOUT_S = 600.0


class PacedPageServer(PageServer):
    """GET /events?cursor=K → page K, generated on first request and due at K * PAGE_EVENTS / rate
    seconds after the first; before that (or past `total` events) an empty page with the same cursor.
    PageServer's listener (start, stop, url) over pages made as they fall due, not pre-encoded ones."""

    def __init__(self, gen: Generator, total: int, rate: float) -> None:
        # Not PageServer.__init__ (it encodes every page up front): here only what its listener uses.
        self._gen, self.total, self.rate = gen, total, rate
        self._pages: dict[int, bytes] = {}
        self._next = 0           # the next page to generate
        self.sent = 0            # events handed over
        self.t0: float | None = None
        self.last_s = 0.0
        self.port = 0
        self._server: asyncio.Server | None = None

    def _empty(self, cursor: int) -> bytes:
        return self._wrap(b'{"events":[],"next_cursor":"' + str(cursor).encode() + b'"}')

    def response(self, cursor: int) -> bytes:
        if cursor in self._pages:
            return self._pages[cursor]
        now = time.monotonic()
        if self.t0 is None:
            self.t0 = now
        if cursor != self._next or self.sent >= self.total or now < self.t0 + cursor * PAGE_EVENTS / self.rate:
            return self._empty(cursor)
        n = min(PAGE_EVENTS, self.total - self.sent)
        events = self._gen.next_batch(n)
        body = (b'{"events":[' + encode_ndjson(events).rstrip(b"\n").replace(b"\n", b",")
                + b'],"next_cursor":"' + str(cursor + 1).encode() + b'"}')
        page = self._pages[cursor] = self._wrap(body)
        self._pages.pop(cursor - CACHED_PAGES, None)
        self._next = cursor + 1
        self.sent += n
        self.last_s = time.monotonic()
        return page


def _proc_counts(pids: list[int]) -> tuple[int, int]:
    """(open file descriptors, threads) summed over the processes."""
    fds = threads = 0
    for pid in pids:
        try:
            fds += len(os.listdir(f"/proc/{pid}/fd"))
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("Threads:"):
                    threads += int(line.split()[1])
        except OSError:
            continue
    return fds, threads


def _arrow_files(data_dir: Path) -> tuple[int, float, float]:
    """(Arrow files, their MiB, the events archive's MiB) below data_dir now: compaction merges a
    past day's files, retention deletes old days."""
    n = size = events = 0
    for folder, _sub, files in os.walk(data_dir):
        for f in files:
            if f.endswith(".arrow"):
                with contextlib.suppress(FileNotFoundError):   # deleted or merged while walking
                    b = os.stat(os.path.join(folder, f)).st_size
                    n, size = n + 1, size + b
                    events += b if Path(folder).parent.name == "events" else 0
    return n, size / 2**20, events / 2**20


MEMORY_FIGURES = ("heap_in_use_bytes", "heap_free_bytes", "heap_mmap_bytes", "arrow_pool_bytes", "arrow_pool_max_bytes")


def _breakdown(process: dict[str, Any], prefix: str) -> dict[str, Any]:
    """A process's /stats `process` (or the recommendations process's /healthz) memory figures, in MiB."""
    out = {f"{prefix}{k.removesuffix('_bytes')}_mib": round(process[k] / 2**20, 1) for k in MEMORY_FIGURES if k in process}
    for k in ("python_blocks", "heap_walk_ms"):   # a count; how long glibc's last heap walk took
        if k in process:
            out[f"{prefix}{k}"] = process[k]
    return out


async def _recs_health(http: aiohttp.ClientSession, stats: dict[str, Any]) -> dict[str, Any]:
    """The recommendations process's /healthz with its recommender's counts (users, items, links), or {}
    while it has no port or does not answer."""
    port = stats.get("replica", {}).get("port")
    if not port:
        return {}
    try:
        async with http.get(f"http://127.0.0.1:{port}/healthz?recommender=1", timeout=aiohttp.ClientTimeout(total=5)) as r:
            return await r.json() if r.status == 200 else {}
    except (aiohttp.ClientError, asyncio.TimeoutError):
        return {}


def _sample(t: float, daemon: DaemonProc, stats: dict[str, Any], fed: int, data_dir: Path,
            recs: dict[str, Any]) -> dict[str, Any]:
    mem = daemon.memory()
    fds, threads = _proc_counts(daemon.family())
    store = stats["store"]
    files, arrow_mib, events_mib = _arrow_files(data_dir)
    return {
        "t_s": round(t, 1), "fed": fed,
        "processed": stats["pipeline"]["events_processed"],
        "watermark_ms": stats["pipeline"]["watermark_ms"],
        "rss_mib": mem.get("VmRSS", 0) / 2**20, "rss_anon_mib": mem.get("RssAnon", 0) / 2**20,
        "rss_file_mib": mem.get("RssFile", 0) / 2**20, "recs_rss_mib": mem.get("recs_VmRSS", 0) / 2**20,
        "daemon_anon_mib": (mem.get("RssAnon", 0) - mem.get("recs_RssAnon", 0)) / 2**20,
        "recs_anon_mib": mem.get("recs_RssAnon", 0) / 2**20,
        "open_states": open_states(stats), "dedupe_ids": stats["pipeline"]["dedupe"]["ids"],
        "lmdb_used_mib": store["lmdb"]["used_bytes"] / 2**20,
        "arrow_written_mib": store["arrow"]["bytes_written"] / 2**20,
        "arrow_files": files, "arrow_mib": round(arrow_mib, 1), "events_archive_mib": round(events_mib, 1),
        "queued": sum(q["depth"] for q in stats["queues"].values()),
        "fds": fds, "threads": threads, "cpu_s": daemon.cpu_s(),
        "gc_s": stats["process"].get("gc_seconds"),
        **_breakdown(stats["process"], ""), **_breakdown(recs, "recs_"),
        **{f"recs_{k}": recs["recommender"][k] for k in ("users", "items", "links") if k in recs.get("recommender", {})},
    }


def _median(samples: list[dict[str, Any]], key: str) -> float:
    return statistics.median(s[key] for s in samples) if samples else float("nan")


def verdict(samples: list[dict[str, Any]], total: int) -> dict[str, Any]:
    """Second quarter vs last quarter of the samples taken while the feed ran (medians): each bounded
    quantity's growth."""
    fed = [s for s in samples if s["fed"] < total]
    q = len(fed) // 4
    if q < 2:
        return {"ok": None, "why": "too few samples for quarters"}
    second, last = fed[q:2 * q], fed[3 * q:]
    out: dict[str, Any] = {"growth": {}, "ok": True, "failed": []}
    for key in ("rss_mib", "rss_anon_mib", "daemon_anon_mib", "recs_anon_mib", "open_states", "dedupe_ids", "fds", "threads"):
        if key not in fed[0]:   # a JSON of an earlier build
            continue
        a, b = _median(second, key), _median(last, key)
        g = (b - a) / a if a else 0.0
        out["growth"][key] = {"from": round(a, 1), "to": round(b, 1), "growth": round(g, 4),
                              "over": "second quarter → last quarter (medians)"}
        if g > GROWTH_LIMIT:
            out["ok"] = False
            out["failed"].append(key)
    # The file's high-water mark only grows; once every bound is reached its free pages are reused.
    a, b = last[0]["lmdb_used_mib"], last[-1]["lmdb_used_mib"]
    g = (b - a) / a if a else 0.0
    out["growth"]["lmdb_used_mib"] = {"from": round(a, 1), "to": round(b, 1), "growth": round(g, 4),
                                      "over": "the last quarter, first sample → last"}
    if g > LMDB_GROWTH_LIMIT:
        out["ok"] = False
        out["failed"].append("lmdb_used_mib")
    return out


async def soak(args: argparse.Namespace) -> dict[str, Any]:
    total = int(args.minutes * 60 * args.rate)
    event_rate = total / (args.event_hours * 3600)
    span_ms = int(args.event_hours * 3600 * 1000)
    # Event time ends 10 minutes before the wall clock would reach it: nothing is ahead of max_future_skew.
    start_ms = int(time.time() * 1000) - span_ms - 600_000
    gen = Generator(args.seed, start_ms=start_ms, rate=event_rate, shop=SHOP)
    server = PacedPageServer(gen, total, args.rate)
    await server.start()
    work = Path(tempfile.mkdtemp(prefix="soak-", dir=args.workdir))
    port = free_port()
    cfg = work / "soak.toml"
    text = render_config(port=port, data_dir=work / "data", sources=source_toml("http_poll", server.url),
                         idle_timeout="2s", max_keys=1_000_000, recommendations=True, compression=args.compression,
                         user_ttl=args.user_ttl)
    if args.keep_latest_rows:
        text = text.replace("\n[[aggregations]]\n", f"\n[[aggregations]]\nkeep_latest_rows = {args.keep_latest_rows}\n")
    if args.retention_events:   # the events archive only: the exactly-once check reads the window files
        text += f'\n[storage.retention]\nevents = "{args.retention_events}"\n'
    if args.archive_interval:
        os.environ["STOREPULSE_ARCHIVE_INTERVAL_S"] = str(args.archive_interval)
    cfg.write_text(text)
    log(f"{total:,} events at {args.rate:,.0f}/s over {args.minutes:g} min, "
        f"{args.event_hours:g} h of event time ({event_rate:,.0f} events/s of it); work dir {work}")
    daemon = DaemonProc(cfg, port, work / "daemon.log")
    samples: list[dict[str, Any]] = []
    result: dict[str, Any] = {"command": " ".join(["python -m benchmarks.soak", *sys.argv[1:]]), "machine": machine(),
                              "events": total, "rate": args.rate, "minutes": args.minutes,
                              "event_hours": args.event_hours, "event_rate": round(event_rate, 1),
                              "keep_latest_rows": args.keep_latest_rows, "compression": args.compression,
                              "retention_events": args.retention_events, "archive_interval_s": args.archive_interval,
                              "user_ttl": args.user_ttl}
    t_start = time.monotonic()
    try:
        async with aiohttp.ClientSession() as http:
            next_print = 0.0
            last_stats: dict[str, Any] | None = None
            while True:
                await asyncio.sleep(args.sample_s)
                if daemon.popen.poll() is not None:
                    raise RuntimeError(f"the daemon exited ({daemon.popen.returncode}):\n{daemon.log_tail()}")
                stats = await daemon.stats(http)
                if stats is None:
                    continue
                last_stats = stats
                t = time.monotonic() - t_start
                s = _sample(t, daemon, stats, server.sent, work / "data", await _recs_health(http, stats))
                samples.append(s)
                if t >= next_print:
                    log(f"{t:6.0f}s fed {s['fed']:>11,} processed {s['processed']:>11,} rss {s['rss_mib']:6.0f} MiB "
                        f"states {s['open_states']:>9,} dedupe {s['dedupe_ids']:>10,} lmdb {s['lmdb_used_mib']:6.0f} MiB "
                        f"fds {s['fds']} threads {s['threads']}")
                    next_print = t + 60
                if server.sent >= total and s["processed"] >= total and s["open_states"] == 0 and s["queued"] == 0:
                    break
                if t > args.minutes * 60 + DRAIN_TIMEOUT_S:
                    raise RuntimeError(f"not drained {DRAIN_TIMEOUT_S:g}s after the feed's end")
            result["fed_s"] = round((server.last_s - (server.t0 or server.last_s)), 1)
            result["final_stats_events"] = last_stats["events"] if last_stats else None
        t_stop = time.monotonic()
        result["exit_code"] = daemon.stop()
        result["stop_s"] = round(time.monotonic() - t_stop, 2)
        result["check"] = check_outputs(work / "data", total)
    finally:
        if daemon.popen.poll() is None:
            daemon.stop()
        await server.stop()
    result["samples"] = samples
    result["verdict"] = verdict(samples, total)
    result["data_dir_mib"] = round(sum(f.stat().st_blocks * 512 for f in (work / "data").rglob("*") if f.is_file()) / 2**20, 1)
    if args.keep:
        result["work_dir"] = str(work)
    else:
        shutil.rmtree(work, ignore_errors=True)
    return result


def markdown(r: dict[str, Any], rows: int = 9) -> str:
    samples = r["samples"]
    pick = [samples[round(i * (len(samples) - 1) / (rows - 1))] for i in range(rows)] if len(samples) >= rows else samples
    first_wm = next((s["watermark_ms"] for s in samples if s["watermark_ms"]), None)
    lines = ["| wall s | event h | events fed | RSS MiB (anon / file) | recs RSS | open states | dedupe ids "
             "| LMDB MiB | Arrow MiB written | Arrow files | Arrow MiB on disk (events) | fds | threads |",
             "|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for s in pick:
        eh = (s["watermark_ms"] - first_wm) / 3.6e6 if first_wm and s["watermark_ms"] else 0.0
        lines.append(f"| {s['t_s']:,.0f} | {eh:.2f} | {s['fed']:,} | {s['rss_mib']:,.0f} ({s['rss_anon_mib']:,.0f} / "
                     f"{s['rss_file_mib']:,.0f}) | {s['recs_rss_mib']:,.0f} | {s['open_states']:,} | {s['dedupe_ids']:,} "
                     f"| {s['lmdb_used_mib']:,.0f} | {s['arrow_written_mib']:,.0f} | {s.get('arrow_files', '–')} | {_on_disk(s)} | {s['fds']} "
                     f"| {s['threads']} |")
    if "daemon_anon_mib" in samples[0]:
        lines += ["", "Where each process's anonymous memory is (MiB): glibc's heap in use / free chunks (resident or "
                  "not: trimmed pages stay counted) / in maps of its own; the rest is anon less the heap in use and "
                  "in maps: the free heap still resident, pymalloc's arenas, pyarrow's pool (now, high-water mark), "
                  "stacks:", "",
                  "| wall s | daemon anon | heap in use | heap free | heap mmap | rest | Arrow pool (max) | Python blocks "
                  "| recs anon | recs heap in use | recs heap free | recs rest | recs Python blocks | recs users |",
                  "|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
        for s in pick:
            daemon, recs = _anon_split(s, "daemon_", ""), _anon_split(s, "recs_", "recs_")
            lines.append(f"| {s['t_s']:,.0f} | {daemon[0]:,.0f} | {daemon[1]:,.0f} | {daemon[2]:,.0f} | {daemon[3]:,.0f} "
                         f"| {daemon[4]:,.0f} | {s.get('arrow_pool_mib', 0):,.0f} ({s.get('arrow_pool_max_mib', 0):,.0f}) "
                         f"| {s.get('python_blocks', 0):,} | {recs[0]:,.0f} | {recs[1]:,.0f} | {recs[2]:,.0f} | {recs[4]:,.0f} "
                         f"| {s.get('recs_python_blocks', 0):,} | {_count(s.get('recs_users'))} |")
    v = verdict(samples, r["events"])   # again: a JSON of an earlier build may hold another form
    lines.append("")
    for key, g in v.get("growth", {}).items():
        lines.append(f"- {key}: {g['from']:,} → {g['to']:,} ({g['growth']:+.1%}), {g['over']}")
    check = r.get("check", {})
    lines.append(f"- exactly once: {check.get('events_counted')} of {r['events']:,} events → {'ok' if check.get('ok') else 'NOT ok'}")
    lag = max((s["fed"] - s["processed"] for s in samples), default=0)
    lines.append(f"- kept up: at most {lag:,} events fed and not yet processed at a sample ({lag / r['rate']:.1f} s of feed)")
    lines.append(f"- SIGTERM at the end: exit code {r.get('exit_code')} after {r.get('stop_s')} s")
    lines.append(f"- bounded: {'yes' if v.get('ok') else 'NO: ' + ', '.join(v.get('failed', [])) if v.get('ok') is False else v.get('why')}")
    return "\n".join(lines)


def _count(n: int | None) -> str:
    return "–" if n is None else f"{n:,}"


def _anon_split(s: dict[str, Any], anon: str, heap: str) -> tuple[float, float, float, float, float]:
    """A sample's (anon, heap in use, heap free, heap mmap, rest) MiB of one process: the rest is anon
    less the heap in use and in maps (the free heap still resident, pymalloc's arenas, Arrow's pool)."""
    total = s[f"{anon}anon_mib"]
    in_use, free, mmap = (s.get(f"{heap}heap_{k}_mib", 0) for k in ("in_use", "free", "mmap"))
    return total, in_use, free, mmap, total - in_use - mmap


def _on_disk(s: dict[str, Any]) -> str:
    """A sample's Arrow MiB on disk and its events archive's (samples of earlier builds have neither)."""
    return f"{s['arrow_mib']:,.0f} ({s['events_archive_mib']:,.0f})" if "arrow_mib" in s else "–"


def log(msg: str) -> None:
    print(f"[soak {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=20.0, help="wall time of the feed")
    parser.add_argument("--rate", type=float, default=20_000.0, help="events/s fed")
    parser.add_argument("--event-hours", type=float, default=6.0, help="event time the events span")
    parser.add_argument("--sample-s", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--workdir", default=None, help="where the throwaway data dir goes (default: the temp dir)")
    parser.add_argument("--compression", default="lz4", choices=COMPRESSIONS, help="storage.compression (default lz4)")
    parser.add_argument("--keep-latest-rows", type=int, default=0,
                        help="set every aggregation's keep_latest_rows (default: the config's, 1M), to reach that bound sooner")
    parser.add_argument("--retention-events", default="", metavar="DURATION",
                        help='[storage.retention] events (e.g. "1d"): the raw archive\'s days deleted as the run passes them')
    parser.add_argument("--archive-interval", type=float, default=0.0, metavar="SECONDS",
                        help="the daemon's retention and compaction pass every this many seconds (default: its 600)")
    parser.add_argument("--user-ttl", default="", metavar="DURATION",
                        help='[recommendations] user_ttl (default: the config\'s, 7d): users idle this long in event '
                             'time are dropped, so the recommendations process reaches its plateau within the run')
    parser.add_argument("--keep", action="store_true", help="keep the data dir and the daemon's log")
    parser.add_argument("--out", default="bench-results/soak.json")
    parser.add_argument("--report", metavar="JSON", help="print the table of an earlier run's JSON and exit")
    args = parser.parse_args(argv)
    if args.report:
        print(markdown(json.loads(Path(args.report).read_text())))
        return 0
    result = asyncio.run(soak(args))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(markdown(result))
    log(f"results → {out}")
    return 0 if result["verdict"].get("ok") and result.get("check", {}).get("ok") and result.get("exit_code") == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
