"""Decode + validate cost per event, this tree's code against another git revision's, interleaved in one process.

    python -m benchmarks.decode [--rev main] [--rounds 15]

The other revision's pipeline/decode.py, columnar.py and validate.py and sources/http_poll.py are loaded from
`git show` into throwaway modules; both sides then decode the same storefront pages in alternating order each
round, so a noisy neighbour slows both alike. Prints the median (and least) µs/event per source kind.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
import types
from collections.abc import Callable

from daemon.pipeline import validate as new_validate
from daemon.sources import http_poll as new_http_poll
from daemon.storefront.generator import Generator, encode_ndjson

START_MS = 1_700_000_000_000
# module path -> throwaway name; imports of the earlier ones are rewritten in the later ones
OLD_MODULES = {
    "daemon.pipeline.decode": "_old_decode",
    "daemon.pipeline.columnar": "_old_columnar",
    "daemon.pipeline.validate": "_old_validate",
    "daemon.sources.http_poll": "_old_http_poll",
}


def load_old(rev: str) -> dict[str, types.ModuleType]:
    """The modules of OLD_MODULES as they are at `rev`."""
    out: dict[str, types.ModuleType] = {}
    for dotted, alias in OLD_MODULES.items():
        text = subprocess.run(["git", "show", f"{rev}:{dotted.replace('.', '/')}.py"], check=True,
                              capture_output=True, text=True).stdout
        for other, other_alias in OLD_MODULES.items():
            text = text.replace(f"from {other} import", f"from {other_alias} import")
        text = text.replace("from daemon.pipeline import decode", "import _old_decode as decode")
        module = types.ModuleType(alias)
        module.__file__ = f"<{rev}:{dotted}>"
        sys.modules[alias] = module
        exec(compile(text, module.__file__, "exec"), module.__dict__)
        out[dotted] = module
    return out


def workloads(pages: int) -> tuple[dict[str, list[bytes]], int]:
    """Wire units as the benchmark feeder cuts them: http_poll pages of 1000, websocket frames of 100
    (with seq), ingest bodies of 1000 (JSON array; and with one bad event each), NDJSON bodies of 1000 and
    bodies of one event (a webhook's); and a `now_ms` after them."""
    gen = Generator(11, start_ms=START_MS, rate=2000.0)
    lines: list[bytes] = []
    for _ in range(pages):
        lines += encode_ndjson(gen.next_batch(1000)).rstrip(b"\n").split(b"\n")
    now_ms = START_MS + 3_600_000 + len(lines)
    units: dict[str, list[bytes]] = {"http_poll": [], "websocket": [], "ingest": [], "ingest_ndjson": [],
                                     "ingest_1_bad": [], "ingest_single": lines[:2000]}
    for k in range(0, len(lines), 1000):
        part = lines[k:k + 1000]
        units["http_poll"].append(b'{"events":[' + b",".join(part) + b'],"next_cursor":"' + str(k).encode() + b'"}')
        units["ingest"].append(b"[" + b",".join(part) + b"]")
        units["ingest_ndjson"].append(b"\n".join(part) + b"\n")
        bad = part[:500] + [part[500].replace(b'"type":"', b'"type":"x', 1)] + part[501:]   # one bad_value
        units["ingest_1_bad"].append(b"[" + b",".join(bad) + b"]")
    for k in range(0, len(lines), 100):
        framed = [b'{"seq":%d,%s' % (k + j, line[1:]) for j, line in enumerate(lines[k:k + 100])]
        units["websocket"].append(b"[" + b",".join(framed) + b"]")
    return units, now_ms


def runner(validate: types.ModuleType, http_poll: types.ModuleType, kind: str, now_ms: int
           ) -> Callable[[bytes], tuple[int, int]]:
    """bytes -> (accepted, rejected) counts, as the source of `kind` decodes a unit."""
    if kind == "http_poll":
        v = validate.Validator("orders")
        if hasattr(http_poll, "decode_page"):   # one call, as HttpPollSource decodes a page
            pages = v.page_decoder("events", "next_cursor")
            return lambda body: _counts(http_poll.decode_page(body, v, pages, "events", "next_cursor", now_ms)[0])

        def poll(body: bytes) -> int:
            page = http_poll.parse_page(body, "events", "next_cursor")
            return _counts(v.decode_items(page.items, now_ms))
        return poll
    v = validate.Validator(kind, seq_field="seq" if kind == "websocket" else "")
    return lambda body: _counts(v.decode(body, now_ms))


def _counts(decoded: object) -> tuple[int, int]:
    return len(decoded.batch), len(decoded.rejected)   # type: ignore[attr-defined]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rev", default="main")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--pages", type=int, default=20)
    args = parser.parse_args()
    old = load_old(args.rev)
    units, now_ms = workloads(args.pages)
    sides = {args.rev: (old["daemon.pipeline.validate"], old["daemon.sources.http_poll"]),
             "new": (new_validate, new_http_poll)}
    print(f"| source kind | events/unit | {args.rev} µs/event median (min) | new µs/event median (min) | change |")
    print("|---|---|---|---|---|")
    for kind, payloads in units.items():
        runs = {name: runner(*mods, kind, now_ms) for name, mods in sides.items()}
        counts = {name: [run(p) for p in payloads] for name, run in runs.items()}
        assert len(set(map(tuple, counts.values()))) == 1, f"{kind}: accepted counts differ"
        events = sum(map(sum, counts["new"]))
        samples: dict[str, list[float]] = {name: [] for name in runs}
        order = list(runs)
        for _ in range(args.rounds):
            order.reverse()
            for name in order:
                run = runs[name]
                t0 = time.perf_counter()
                for p in payloads:
                    run(p)
                samples[name].append((time.perf_counter() - t0) / events * 1e6)
        before, after = statistics.median(samples[args.rev]), statistics.median(samples["new"])
        low_before, low_after = min(samples[args.rev]), min(samples["new"])
        print(f"| {kind} | {events // len(payloads)} | {before:.3f} ({low_before:.3f}) | {after:.3f} ({low_after:.3f}) "
              f"| {after / before - 1:+.0%} ({low_after / low_before - 1:+.0%}) |")


if __name__ == "__main__":
    main()
