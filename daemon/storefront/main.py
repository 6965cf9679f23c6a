"""`storepulse storefront`: serve the simulated shop, or with `--out` write its deterministic events as NDJSON."""

from __future__ import annotations

import argparse
import signal
import sys
from typing import Any

import anyio
import orjson

from daemon.storefront.generator import DEFAULT_START_MS, Generator, encode_ndjson
from daemon.storefront.server import StorefrontConfig, open_storefront

CHUNK_EVENTS = 20_000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the storefront's options to `parser` (the subcommand's parser)."""
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8900, help="port to listen on; 0 picks a free one (default 8900)")
    parser.add_argument("--rate", type=float, default=200.0, help="events per second (default 200)")
    parser.add_argument("--seed", type=int, default=1, help="random seed; same seed, same shop (default 1)")
    parser.add_argument("--anomalies", action="store_true", help="inject labelled incidents (see /labels)")
    parser.add_argument("--out", metavar="FILE", help="write --count events as NDJSON to FILE "
                        "(labels to FILE.labels.json) and exit instead of serving")
    parser.add_argument("--count", type=int, default=100_000, help="events to write with --out (default 100000)")
    parser.add_argument("--start-ms", type=int, default=None,
                        help=f"first event time, epoch ms (default: now when serving, {DEFAULT_START_MS} with --out)")
    parser.add_argument("--keep", type=int, default=1_000_000, help="events kept per channel when serving")
    parser.add_argument("--fail-rate", type=float, default=0.0, help="fraction of poll requests answered 503")


def run(args: argparse.Namespace) -> int:
    """Run the subcommand; 0 on success (or on SIGINT/SIGTERM while serving), 1 on failure, 2 on bad options."""
    problem = _check(args)
    if problem:
        _log(event="storefront_bad_option", error=problem)
        return 2
    try:
        if args.out:
            return write_events(args.out, seed=args.seed, rate=args.rate, anomalies=args.anomalies,
                                count=args.count, start_ms=DEFAULT_START_MS if args.start_ms is None else args.start_ms)
        config = StorefrontConfig(host=args.host, port=args.port, rate=args.rate, seed=args.seed,
                                  anomalies=args.anomalies, start_ms=args.start_ms, keep_events=args.keep,
                                  fail_rate=args.fail_rate)
        return anyio.run(_serve, config)
    except OSError as exc:
        _log(event="storefront_failed", error=f"{type(exc).__name__}: {exc}")
        return 1


def _check(args: argparse.Namespace) -> str:
    if not args.rate > 0:
        return "--rate must be > 0"
    if args.count < 0:
        return "--count must be >= 0"
    if not 0.0 <= args.fail_rate <= 1.0:
        return "--fail-rate must be between 0 and 1"
    if args.keep < 1:
        return "--keep must be >= 1"
    return ""


def write_events(path: str, *, seed: int, rate: float, anomalies: bool, count: int, start_ms: int) -> int:
    """Write the first `count` events to `path` and the labels to `path`.labels.json."""
    gen = Generator(seed, start_ms, rate, anomalies)
    with open(path, "wb") as out:
        left = count
        while left > 0:
            batch = gen.next_batch(min(left, CHUNK_EVENTS))
            out.write(encode_ndjson(batch))
            left -= len(batch)
    with open(path + ".labels.json", "wb") as out:
        out.write(orjson.dumps(gen.labels, option=orjson.OPT_INDENT_2) + b"\n")
    snap = gen.statistics()
    _log(event="storefront_written", path=path, events=snap.emitted, labels=snap.incidents,
         first_ts_ms=start_ms, last_ts_ms=snap.last_ts_ms)
    return 0


async def _serve(config: StorefrontConfig) -> int:
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with open_storefront(config) as running:
            _log(event="storefront_started", url=running.url, orders=running.url + "/api/events",
                 clicks=running.feed_url, all=running.url + "/api/all", labels=running.url + "/labels",
                 rate=config.rate, seed=config.seed, anomalies=config.anomalies)
            async for signum in signals:
                _log(event="storefront_stopping", signal=signal.Signals(signum).name)
                break
    return 0


def _log(**fields: Any) -> None:
    sys.stderr.buffer.write(orjson.dumps(fields) + b"\n")
    sys.stderr.flush()
