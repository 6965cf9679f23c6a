"""POST /ingest against a real daemon: 202 counts, 413 over max_body, 429 when full, fuzzed lines."""

from __future__ import annotations

import json
import random
import statistics
import time

import orjson
import pyarrow.dataset as ds
import pytest

from tests.conftest import http_get, http_post, wait_until

pytestmark = pytest.mark.timeout(120)

INGEST = """
[http]
listen = "127.0.0.1:{{port}}"
max_body = "64KiB"

[storage]
data_dir = "{{data}}"
commit_interval = "50ms"
flush_interval = "200ms"

[pipeline]
allowed_lateness = "1h"
max_future_skew = "5m"

[sources.webhook]
type = "ingest"
ack = "{ack}"
queue_capacity = {capacity}
"""


def start(daemon_factory, *, ack="accepted", capacity=100_000, env=None):
    return daemon_factory.start(INGEST.format(ack=ack, capacity=capacity), env=env)


def event(i: int, now_ms: int, **over) -> dict:
    ev = {"event_id": f"e{i}", "ts": now_ms - 1000, "type": "purchase", "user_id": f"u{i % 7}",
          "item_id": f"i{i % 11}", "category": "books", "price": 5.0, "quantity": 1}
    ev.update(over)
    return ev


def fuzz_line(rng: random.Random, i: int, now_ms: int) -> bytes:
    """One NDJSON line: valid, garbage, truncated, wrong types, NaN, huge numbers, deep nesting, bad UTF-8."""
    kind = rng.randrange(10)
    good = orjson.dumps(event(i, now_ms))
    if kind == 0:
        return good
    if kind == 1:
        return bytes(rng.randrange(33, 256) for _ in range(rng.randrange(1, 40)))
    if kind == 2:
        return good[: rng.randrange(1, len(good) - 1)]
    if kind == 3:
        return orjson.dumps(event(i, now_ms, price=rng.choice(["12", None, [], {}, True, -3])))
    if kind == 4:
        return good.replace(b'"price":5.0', b'"price":NaN')
    if kind == 5:
        return good.replace(b'"quantity":1', b'"quantity":' + b"9" * rng.randrange(20, 400))
    if kind == 6:
        depth = rng.randrange(100, 3000)
        return b"[" * depth + b"]" * depth if rng.random() < 0.5 else b'{"a":' * depth + b"1" + b"}" * depth
    if kind == 7:
        return good.replace(b'"books"', b'"b\xff\xfeoks"')
    if kind == 8:
        return json.dumps(event(i, now_ms, ts=rng.choice(["yesterday", 1.5, -5, 10**30]))).encode()
    return orjson.dumps(event(i, now_ms, type=rng.choice(["buy", 3, None])))


def count_items(line: bytes) -> int:
    """How many events-to-be one NDJSON line holds (an array counts each element)."""
    try:
        value = orjson.loads(line)
    except orjson.JSONDecodeError:
        return 1
    return len(value) if isinstance(value, list) else 1


def test_ingest_answers_accepted_and_rejected_counts(daemon_factory, tmp_path):
    """A mixed body gets 202 with the exact accepted/rejected split, visible in /stats."""
    d = start(daemon_factory)
    now = int(time.time() * 1000)
    body = b"\n".join([orjson.dumps(event(1, now)), b"{oops", orjson.dumps(event(2, now, type="nope"))])
    status, answer = http_post(d.url + "/ingest", body)
    assert status == 202 and json.loads(answer) == {"accepted": 1, "rejected": 2}
    stats = wait_until(lambda: (s := d.get_json("/stats"))["events"]["accepted"] == 1 and s, what="accepted=1")
    assert stats["events"]["rejected_by_reason"] == {"malformed_json": 1, "bad_value": 1}
    assert stats["sources"]["webhook"]["received"] == 3


def test_malloc_is_trimmed_once_the_pipeline_is_quiet(daemon_factory):
    """After commits, ~TRIM_IDLE_S of quiet ends in one malloc_trim (not one per idle turn): /stats counts it."""
    d = start(daemon_factory)
    now = int(time.time() * 1000)
    assert http_post(d.url + "/ingest", orjson.dumps([event(i, now) for i in range(500)]))[0] == 202
    trims = wait_until(lambda: d.get_json("/stats")["process"]["malloc_trims"], 20, what="a trim after the quiet")
    time.sleep(1.5)   # quiet on: no commit, so no further trim
    process = d.get_json("/stats")["process"]
    assert process["malloc_trims"] == trims and process["malloc_trim_seconds"] > 0
    status, metrics = http_get(d.url + "/metrics")
    assert status == 200 and f"storepulse_process_malloc_trims_total {trims}".encode() in metrics


def test_archived_events_reach_their_file_within_flush_interval_while_idle(daemon_factory, tmp_path):
    """Events committed just after a flush wait at most ~flush_interval (200 ms here) for their Arrow
    file even when nothing else comes: the runner's idle turn writes them, no later commit needed."""
    d = start(daemon_factory, ack="durable")
    now = int(time.time() * 1000)

    def archived() -> int:
        root = tmp_path / "data" / "events"
        return ds.dataset(root, format="ipc", partitioning="hive").count_rows() if root.exists() else 0

    for first, last in ((0, 10), (10, 30)):   # the second right after the first one's flush
        assert http_post(d.url + "/ingest", orjson.dumps([event(i, now) for i in range(first, last)]))[0] == 202
        wait_until(lambda n=last: archived() == n, 5, interval=0.05, what=f"{last} events in Arrow files, daemon running")
    assert d.get_json("/stats")["events"]["accepted"] == 30


def test_a_slow_archive_flush_holds_up_no_durable_ack(daemon_factory, tmp_path):
    """The archive's Arrow flush (every flush_interval) runs beside the commits: with every such flush
    3 s slower (STOREPULSE_FAULT=slow_flush: a slow disk), durable acks still come a commit after
    their POST (awaited in the commit, the flush held each ack behind it for up to 3 s), and the
    events still reach their files.

    Held behind back-to-back 3 s flushes, the acks would wait 0-3 s, half of them over 1.5 s. A
    single wait is not the test: in a full parallel run another daemon's fsyncs can make one commit's
    fsync take seconds (this failed twice in ~7 full runs on `max(waits) < 2.0`, passing alone)."""
    d = start(daemon_factory, ack="durable", env={"STOREPULSE_FAULT": "slow_flush"})
    now = int(time.time() * 1000)
    waits = []
    for i in range(40):   # ~6 s: two or more slow flushes under way
        t0 = time.monotonic()
        assert http_post(d.url + "/ingest", orjson.dumps([event(i, now)]))[0] == 202
        waits.append(time.monotonic() - t0)
        time.sleep(0.15)
    slow = [round(w, 2) for w in waits if w > 1.5]
    assert statistics.median(waits) < 0.5 and len(slow) <= 3, (statistics.median(waits), slow)
    root = tmp_path / "data" / "events"
    wait_until(lambda: root.exists() and ds.dataset(root, format="ipc", partitioning="hive").count_rows() == 40,
               30, interval=0.2, what="the 40 events in Arrow files")


def test_body_over_max_body_is_413(daemon_factory, tmp_path):
    """A body larger than http.max_body is refused with 413 and counts nothing."""
    d = start(daemon_factory)
    status, answer = http_post(d.url + "/ingest", b"[" + b" " * 70_000 + b"]")
    assert status == 413 and b"max_body" in answer
    assert d.get_json("/stats")["sources"]["webhook"]["received"] == 0


def test_durable_ack_means_committed(daemon_factory, tmp_path):
    """With ack = "durable" the 202 comes after the commit: a kill -9 right after loses nothing."""
    d = start(daemon_factory, ack="durable")
    now = int(time.time() * 1000)
    for batch in range(5):
        body = orjson.dumps([event(batch * 100 + i, now) for i in range(100)])
        status, answer = http_post(d.url + "/ingest", body)
        assert status == 202 and json.loads(answer)["accepted"] == 100
    d.kill()
    again = daemon_factory.start(d.extra["config_path"].read_text(), raw_config=True, port=d.port)
    assert again.stop() == 0
    events = ds.dataset(tmp_path / "data" / "events", format="ipc", partitioning="hive").to_table()
    assert events.num_rows == 500
    assert len(set(events.column("event_id").to_pylist())) == 500


def test_full_queue_answers_429_with_retry_after(daemon_factory, tmp_path):
    """When the ingest queue is full under `block`, POST answers 429 with Retry-After."""
    d = start(daemon_factory, capacity=10, env={"STOREPULSE_FAULT": "wedge_commit"})   # the runner stalls
    now = int(time.time() * 1000)
    import urllib.request
    statuses = []
    retry_after = None
    for k in range(200):
        req = urllib.request.Request(d.url + "/ingest", data=orjson.dumps([event(k * 50 + i, now) for i in range(50)]),
                                     method="POST")
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                statuses.append(resp.status)
        except urllib.error.HTTPError as exc:
            statuses.append(exc.code)
            if exc.code == 429:
                retry_after = exc.headers.get("Retry-After")
                break
    assert 429 in statuses, statuses[-5:]
    assert retry_after is not None and int(retry_after) >= 1


def test_ten_thousand_fuzzed_lines_accepted_plus_rejected_equals_sent(daemon_factory, tmp_path):
    """10,000 fuzzed NDJSON lines: no crash, every line accounted for as accepted or rejected."""
    d = start(daemon_factory)
    rng = random.Random(42)
    now = int(time.time() * 1000)
    lines = [fuzz_line(rng, i, now).replace(b"\n", b" ") for i in range(10_000)]
    sent = sum(count_items(ln) for ln in lines if ln.strip())
    accepted = rejected = 0
    bodies, body = [], b""
    for ln in lines:                      # bodies just under http.max_body (64 KiB)
        if len(body) + len(ln) + 1 > 60_000:
            bodies.append(body)
            body = b""
        body += ln + b"\n"
    bodies.append(body)
    for body in bodies:
        status, answer = http_post(d.url + "/ingest", body)
        assert status == 202, answer[:300]
        a = json.loads(answer)
        accepted += a["accepted"]
        rejected += a["rejected"]
    assert accepted + rejected == sent
    assert accepted > 500 and rejected > 5000
    assert d.get_json("/healthz")["status"] == "ok"
    stats = wait_until(lambda: (s := d.get_json("/stats"))["events"]["accepted"] == accepted and s,
                       what="all accepted events processed")
    assert sum(stats["events"]["rejected_by_reason"].values()) == rejected
    assert d.stop() == 0
    dead = ds.dataset(tmp_path / "data" / "deadletter", format="ipc", partitioning="hive").to_table()
    assert dead.num_rows == rejected
    assert max(len(r) for r in dead.column("raw").to_pylist()) <= 4096


def test_big_bodies_in_every_layout_are_decoded_alike(daemon_factory):
    """A multi-line array, a compact array and NDJSON, each longer than one decode chunk, decode alike."""
    d = start(daemon_factory)
    now = int(time.time() * 1000)
    multiline = json.dumps([event(i, now) for i in range(300)], indent=0).encode()
    compact = orjson.dumps([event(1000 + i, now) for i in range(300)])
    ndjson = b"\n".join(orjson.dumps(event(2000 + i, now)) for i in range(299)) + b"\n{broken\n"
    assert multiline.count(b"\n") > 256 and len(multiline) < 64 * 1024
    answers = [json.loads(http_post(d.url + "/ingest", body)[1]) for body in (multiline, compact, ndjson)]
    assert answers == [{"accepted": 300, "rejected": 0}, {"accepted": 300, "rejected": 0},
                       {"accepted": 299, "rejected": 1}]


SLOW = """
[http]
listen = "127.0.0.1:{port}"

[storage]
data_dir = "{data}"
commit_interval = "50ms"

[pipeline]
allowed_lateness = "5s"
idle_timeout = "1s"

[sources.webhook]
type = "ingest"
ack = "durable"
"""


def test_a_commit_longer_than_idle_timeout_does_not_make_the_source_idle(daemon_factory):
    """A durable-ack client cannot send while the commit it waits for runs: with commits slower than
    idle_timeout (the slow_commit fault: 1.5 s), its next body must not be judged late because the
    source looked silent meanwhile (the watermark would jump to the wall clock)."""
    d = daemon_factory.start(SLOW, env={"STOREPULSE_FAULT": "slow_commit"})
    past = int(time.time() * 1000) - 600_000
    for k in range(3):
        body = orjson.dumps([event(k * 100 + i, past + k * 100 + i + 1000) for i in range(100)])
        assert http_post(d.url + "/ingest", body)[0] == 202
    stats = d.get_json("/stats")
    assert stats["events"]["late"] == 0 and stats["events"]["accepted"] == 300, stats["events"]


def test_a_full_queue_makes_posts_wait_their_turn_not_fail(daemon_factory):
    """With room for one body at a time, 20 concurrent POSTs all get 202: a POST finding the queue full
    waits (up to 1 s) for the room the runner frees instead of answering 429 at once."""
    from concurrent.futures import ThreadPoolExecutor
    d = start(daemon_factory, capacity=100)
    now = int(time.time() * 1000)
    bodies = [orjson.dumps([event(k * 100 + i, now) for i in range(100)]) for k in range(20)]
    with ThreadPoolExecutor(20) as pool:
        statuses = list(pool.map(lambda b: http_post(d.url + "/ingest", b)[0], bodies))
    assert statuses == [202] * 20
    wait_until(lambda: d.get_json("/stats")["events"]["accepted"] == 2000, what="all 2000 events accepted")
