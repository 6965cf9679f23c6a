"""`storepulse` command line: run / check-config / storefront / query → exit codes.

The only module that touches process-wide settings (logging).
"""

from __future__ import annotations

import argparse
import gc
import sys
from collections.abc import Sequence
from pathlib import Path

from daemon import __version__
from daemon.config import Config, load_config, resolve_config_path
from daemon.errors import ConfigError, ConfigErrors
from daemon.log import configure_logging, get_logger
from daemon.runtime import memory


def _load(path_arg: str | None) -> Config | None:
    path = resolve_config_path(path_arg)
    try:
        cfg = load_config(path)
        if cfg.http.token_file:
            from daemon.web.auth import load_token
            load_token(cfg.http.token_file)
        return cfg
    except ConfigErrors as errs:
        for e in errs.errors:
            print(str(e), file=sys.stderr)
    except ConfigError as e:
        print(str(e), file=sys.stderr)
    return None


def cmd_check_config(args: argparse.Namespace) -> int:
    cfg = _load(args.config)
    if cfg is None:
        return 1
    print(f"{cfg.path}: ok ({len(cfg.sources)} sources, {len(cfg.aggregations)} aggregations)")
    return 0


def tune_interpreter() -> None:
    """The daemon's GIL switch interval, GC thresholds and malloc arenas (benchmarks/lane.py runs with them too)."""
    # Folding, decoding and commits run in worker threads; a short GIL switch interval lets the event
    # loop answer HTTP within ~0.5 ms meanwhile instead of waiting out CPython's default 5 ms slices.
    sys.setswitchinterval(0.0005)
    # The daemon holds millions of small long-lived objects (dedupe ids, window and analyser state);
    # with CPython's default thresholds the cyclic GC walks them often, pausing the loop for tens of ms.
    # Generation 1 is collected every 5 young collections, not 50: it then holds <= 100k survivors, so
    # its pause stays ~15 ms (with (50_000, 50, 1000) it reached 2.5M objects and 250-280 ms pauses;
    # same total GC time, measured with the benchmark's /stats process.gc_* figures). On the slower machine
    # of 27 Nov the longest collection in the latency benchmark was 31-36 ms (wall time, descheduling
    # included); (20_000, 2, 2500) did not shorten it (47-54 ms, benchmarks/README.md, session 17).
    gc.set_threshold(20_000, 5, 1000)
    # Before any thread starts: the CPU lane's worker threads take turns, one glibc arena each (runtime/memory.py).
    memory.limit_arenas()


def cmd_run(args: argparse.Namespace) -> int:
    cfg = _load(args.config)
    if cfg is None:
        return 1
    configure_logging(cfg.log_level)
    tune_interpreter()
    import anyio

    from daemon.app import Daemon

    daemon = Daemon(cfg, get_logger())
    return anyio.run(daemon.run)


def cmd_storefront(args: argparse.Namespace) -> int:
    from daemon.storefront import main as storefront_main

    return storefront_main.run(args)


def cmd_query(args: argparse.Namespace) -> int:
    from daemon import query

    return query.run(args)


def cmd_bench(args: argparse.Namespace) -> int:
    """The end-to-end benchmark (benchmarks/run.py); it lives in the source checkout, not the wheel."""
    root = Path(__file__).resolve().parent.parent
    if not (root / "benchmarks" / "run.py").is_file():
        print("storepulse bench: needs a source checkout (benchmarks/ next to daemon/); run it there "
              "with `make bench`", file=sys.stderr)
        return 2
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    from benchmarks import run as bench   # needs the test extra (duckdb) for the DuckDB baseline

    return bench.main(list(args.bench_args))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="storepulse", description="Real-time analytics daemon for online shops.")
    parser.add_argument("--version", action="version", version=f"storepulse {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="run the daemon")
    p.add_argument("-c", "--config", help="config file (default: $STOREPULSE_CONFIG or config/storepulse.toml)")
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("check-config", help="validate a config file")
    p.add_argument("-c", "--config", help="config file (default: $STOREPULSE_CONFIG or config/storepulse.toml)")
    p.set_defaults(func=cmd_check_config)
    p = sub.add_parser("storefront", help="run the simulated shop (polling API + websocket feed)")
    from daemon.storefront import main as storefront_main

    storefront_main.add_arguments(p)
    p.set_defaults(func=cmd_storefront)
    p = sub.add_parser("query", help="query the Arrow files offline: filter, group by, aggregate")
    from daemon import query

    query.add_arguments(p)
    p.set_defaults(func=cmd_query)
    p = sub.add_parser("bench", help="the end-to-end benchmark (= make bench; --help after it for its options)",
                       add_help=False)
    p.add_argument("bench_args", nargs=argparse.REMAINDER, help="passed to benchmarks/run.py")
    p.set_defaults(func=cmd_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:   # every option after it is the benchmark's (argparse would claim --help)
        return cmd_bench(argparse.Namespace(bench_args=argv[1:]))
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        return 130
