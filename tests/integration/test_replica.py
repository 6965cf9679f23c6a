"""The recommendations replica (`[recommendations] listen`): a second process answering
/recommendations and /trending like the daemon does, with the daemon's token, restarted from a
fresh snapshot when it dies, and gone when the daemon stops or is killed."""

from __future__ import annotations

import json
import os
import random
import signal
import time
from pathlib import Path

import orjson
import pytest

from daemon.analyzers.recommend import TYPE_WEIGHTS, Recommender
from daemon.storefront.generator import Generator
from daemon.web.prometheus import unexported_figures
from tests.conftest import free_port, http_get, http_post, wait_until
from tests.integration.test_crash_recovery import crash_seed

pytestmark = pytest.mark.timeout(120)

TOKEN = "sp-replica-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
CONFIG = """
[http]
listen = "127.0.0.1:{port}"
token_file = "{token_file}"

[storage]
data_dir = "{data}"
commit_interval = "50ms"

[pipeline]
allowed_lateness = "10m"

[sources.webhook]
type = "ingest"
ack = "durable"

[recommendations]
half_life = "1h"
listen = "127.0.0.1:{replica_port}"
"""


def get(url: str) -> dict:
    status, body = http_get(url, headers=AUTH)
    assert status == 200, (url, status, body[:300])
    return json.loads(body)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by its parent) counts as gone.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def same_answers(d_url: str, r_url: str, users: list[str], categories: list[str]) -> bool:
    """Every answer of the replica equals the daemon's (ids in order; scores to the 6 decimals sent)."""
    paths = [f"/recommendations/{u}?k=10" for u in users]
    paths += ["/trending?k=10"] + [f"/trending?category={c}&k=5" for c in categories]
    for path in paths:
        a, b = get(d_url + path)["items"], get(r_url + path)["items"]
        if [i["item_id"] for i in a] != [i["item_id"] for i in b]:
            return False
        if any(abs(x["score"] - y["score"]) > 2e-6 * max(1.0, abs(x["score"])) for x, y in zip(a, b)):
            return False
    return True


def replica_daemon_restart(d):
    again = d.extra["factory"].start(d.extra["config_path"].read_text(), raw_config=True, port=d.port)
    again.extra["replica_url"] = d.extra["replica_url"]
    return again


@pytest.fixture
def replica_daemon(daemon_factory, tmp_path: Path):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    token_file.chmod(0o600)
    port, replica_port = free_port(), free_port()
    body = CONFIG.format(port=port, replica_port=replica_port, token_file=token_file, data=tmp_path / "data")
    d = daemon_factory.start(body, port=port, raw_config=True)
    d.extra["replica_url"] = f"http://127.0.0.1:{replica_port}"
    d.extra["factory"] = daemon_factory
    return d


def feed(d, seed: int, n: int) -> list[dict]:
    events = Generator(seed=seed, start_ms=int(time.time() * 1000) - 5 * 60_000, rate=50).next_batch(n)
    for i in range(0, n, 1000):
        status, _ = http_post(d.url + "/ingest", orjson.dumps(events[i:i + 1000]), headers=AUTH)
        assert status == 202
    return events


def settled(d, r_url: str) -> bool:
    """Everything accepted is folded and sent, and the process has folded what it was sent."""
    st = get(d.url + "/stats")
    if st["pipeline"]["pending_work"] if "pending_work" in st["pipeline"] else False:
        return False
    if st["replica"]["outbox_bytes"] or not st["replica"]["running"]:
        return False
    first = get(r_url + "/healthz")
    time.sleep(0.3)
    second = get(r_url + "/healthz")
    return first["status"] == "ok" and first["frames"] == second["frames"]


def answers(r_url: str, users: list[str], categories: list[str], at: int) -> dict[str, list]:
    paths = [f"/recommendations/{u}?k=10" for u in users]
    paths += ["/trending?k=10"] + [f"/trending?category={c}&k=5" for c in categories]
    return {p: get(f"{r_url}{p}&at={at}")["items"] for p in paths}


def test_the_process_answers_for_the_daemon_and_a_kill_9_of_it_loses_nothing(replica_daemon):
    d, r_url = replica_daemon, replica_daemon.extra["replica_url"]
    wait_until(lambda: get(r_url + "/healthz")["status"] == "ok", 20, what="process synced")
    assert http_get(r_url + "/recommendations/u1")[0] == 401          # the daemon's token guards it too
    assert http_get(r_url + "/healthz")[0] == 200                    # like the daemon's, open

    events = feed(d, seed=3, n=8000)
    users = sorted({e["user_id"] for e in events if e["type"] == "view"})[:40]
    categories = sorted({e["category"] for e in events if e.get("category")})[:3]
    wait_until(lambda: settled(d, r_url), 20, what="process caught up")
    at = max(e["ts"] for e in events)
    before = answers(r_url, users, categories, at)
    assert sum(1 for u in users if before[f"/recommendations/{u}?k=10"]) >= 30
    assert same_answers(d.url, r_url, users, categories)             # the daemon's port forwards to it
    assert unexported_figures(get(d.url + "/stats")) == []          # every replica figure is in /metrics
    status, metrics = http_get(d.url + "/metrics", headers=AUTH)
    assert status == 200 and b"storepulse_replica_running 1.0" in metrics

    # Killed: the daemon logs it and starts a new one from the stored records and the fold log
    # after them; it holds exactly what the killed one held (same answers at the same clock)...
    first = get(d.url + "/stats")["replica"]
    os.kill(first["pid"], signal.SIGKILL)
    wait_until(lambda: get(d.url + "/stats")["replica"]["starts"] == 2, 30, what="process restarted")
    wait_until(lambda: get(r_url + "/healthz")["status"] == "ok", 20, what="new process synced")
    assert get(r_url + "/healthz")["snapshots"] == 1
    assert any(e.get("event") == "replica_exited" and e.get("code") == -9 for e in d.log_events())
    assert answers(r_url, users, categories, at) == before
    # ... and follows new events again.
    more = feed(d, seed=4, n=3000)
    wait_until(lambda: settled(d, r_url), 20, what="restarted process caught up")
    assert answers(r_url, users, categories, at) != before
    assert same_answers(d.url, r_url, users, categories)

    pid = get(d.url + "/stats")["replica"]["pid"]
    assert d.stop() == 0
    wait_until(lambda: not alive(pid), 10, what="process gone after the daemon stopped")
    # The daemon stored the answer to its last cut before it stopped: a restart replays nothing.
    again = replica_daemon_restart(d)
    wait_until(lambda: get(again.extra["replica_url"] + "/healthz")["status"] == "ok", 20, what="synced after restart")
    health = get(again.extra["replica_url"] + "/healthz")
    assert health["replayed_events"] == 0 and health["snapshots"] == 1
    assert len(more) == 3000


def test_replica_exits_when_the_daemon_is_killed(replica_daemon):
    d, r_url = replica_daemon, replica_daemon.extra["replica_url"]
    wait_until(lambda: get(r_url + "/healthz")["status"] == "ok", 20, what="replica synced")
    pid = get(d.url + "/stats")["replica"]["pid"]
    d.kill()                                   # kill -9: nothing tells the replica, but its stdin ends
    wait_until(lambda: not alive(pid), 10, what="replica gone after kill -9 of the daemon")


def test_replica_stays_in_step_across_a_reload(replica_daemon):
    """A SIGHUP that adds a source and an aggregation, events through the new source, a SIGHUP that
    removes them again: the replica follows without a restart and answers what the daemon answers."""
    d, r_url = replica_daemon, replica_daemon.extra["replica_url"]
    wait_until(lambda: get(r_url + "/healthz")["status"] == "ok", 20, what="replica synced")
    events = feed(d, seed=5, n=3000)
    cfg = d.extra["config_path"]
    base = cfg.read_text()
    cfg.write_text(base + '\n[sources.second]\ntype = "ingest"\n\n[[aggregations]]\nname = "by_type"\n'
                   'group_by = ["type"]\nwindow = { type = "tumbling", size = "1m" }\nmetrics = { n = "count" }\n')
    d.popen.send_signal(signal.SIGHUP)
    wait_until(lambda: any(e.get("event") == "reloaded" for e in d.log_events()), 10, what="first reload")
    more = Generator(seed=6, start_ms=int(time.time() * 1000) - 4 * 60_000, rate=50).next_batch(2000)
    for i in range(0, len(more), 1000):
        status, _ = http_post(d.url + "/ingest/second", orjson.dumps(more[i:i + 1000]), headers=AUTH)
        assert status == 202
    cfg.write_text(base)
    d.popen.send_signal(signal.SIGHUP)
    wait_until(lambda: sum(e.get("event") == "reloaded" for e in d.log_events()) == 2, 10, what="second reload")
    feed(d, seed=7, n=2000)
    users = sorted({e["user_id"] for e in events + more if e["type"] == "view"})[:40]
    categories = sorted({e["category"] for e in events if e.get("category")})[:3]
    wait_until(lambda: get(r_url + "/healthz")["events"] >= get(d.url + "/stats")["events"]["accepted"], 20,
               what="replica caught up")
    assert get(d.url + "/stats")["replica"]["starts"] == 1     # followed the reloads, not restarted
    assert same_answers(d.url, r_url, users, categories)


PLAIN = """
[storage]
data_dir = "{data}"
commit_interval = "50ms"
state_interval = "200ms"

[pipeline]
allowed_lateness = "10m"

[sources.webhook]
type = "ingest"
ack = "durable"

[recommendations]
half_life = "1h"
"""


def folded_by_recommender(events: list[dict]) -> int:
    """Events the recommender counts: a weighted type and an item."""
    return sum(1 for e in events if TYPE_WEIGHTS.get(e["type"]) and e.get("item_id") is not None)


def recommender_events(d) -> int:
    return get(f"http://127.0.0.1:{d.get_json('/stats')['replica']['port']}/healthz?recommender=1")["recommender"]["events"]


def test_both_processes_say_where_their_memory_is(daemon_factory, tmp_path):
    """/stats `process` and the recommendations process's /healthz split the memory: glibc's heap in
    use and free, pymalloc's blocks, pyarrow's pool. The daemon archives events through
    that pool, so its high-water mark is above 0 once a file was written; /metrics carries the figures."""
    d = daemon_factory.start(PLAIN.format(data=tmp_path / "data"))
    events = feed(d, seed=3, n=3000)
    wait_until(lambda: list((tmp_path / "data").rglob("*.arrow")), 20, what="an archived events file")
    process = get(d.url + "/stats")["process"]
    assert 0 < process["heap_in_use_bytes"] < process["rss_bytes"]
    assert process["heap_free_bytes"] >= 0 and process["heap_mmap_bytes"] >= 0
    assert 0 <= process["heap_walk_ms"] < 1000 and 0 <= process["heap_figures_age_s"] <= 15   # kept up to 10 s
    assert process["python_blocks"] > 100_000          # an interpreter with aiohttp and pyarrow loaded
    assert process["arrow_pool_backend"] in ("mimalloc", "jemalloc", "system")
    assert 0 <= process["arrow_pool_bytes"] <= process["arrow_pool_max_bytes"]
    assert process["arrow_pool_max_bytes"] > 0
    status, metrics = http_get(d.url + "/metrics", headers=AUTH)
    assert status == 200
    for name in ("heap_in_use_bytes", "heap_free_bytes", "heap_mmap_bytes", "python_blocks", "arrow_pool_bytes",
                 "arrow_pool_max_bytes", "heap_walk_seconds"):
        assert f"storepulse_process_{name} ".encode() in metrics, name
    assert unexported_figures(get(d.url + "/stats")) == []
    wait_until(lambda: recommender_events(d) == folded_by_recommender(events), 20, what="the process folded them")
    recs = get(f"http://127.0.0.1:{d.get_json('/stats')['replica']['port']}/healthz")
    assert 0 < recs["heap_in_use_bytes"] < recs["rss_bytes"] and recs["python_blocks"] > 10_000
    assert d.stop() == 0


def test_with_no_process_the_daemon_folds_the_kept_log_itself(daemon_factory, tmp_path):
    """A recommendations process that cannot start answers no cut: past its bound, the daemon folds
    the fold log into the stored records itself, so the log stays bounded; a process started later
    begins from there and has counted every event exactly once."""
    body = PLAIN.format(data=tmp_path / "data")
    d = daemon_factory.start(body, env={"STOREPULSE_FAULT": "recs_process_fails",
                                        "STOREPULSE_RECS_LOG_MAX_BYTES": "50000"})
    events = []
    for seed in range(6):
        events += feed(d, seed=10 + seed, n=1000)
    wait_until(lambda: d.get_json("/stats")["replica"]["compactions"] >= 2, 20, what="compactions")
    st = d.get_json("/stats")["replica"]
    assert st["log_bytes"] < 50_000 + 200_000                  # the bound + one commit's entry
    assert st["answers"] == 0 and st["starts"] >= 1           # started (and exited) again and again
    assert http_get(d.url + "/recommendations/u1")[0] == 503
    assert any(e.get("event") == "recommender_compacted" for e in d.log_events())
    assert d.stop() == 0

    again = daemon_factory.start(body)
    wait_until(lambda: again.get_json("/stats")["replica"].get("port") is not None, 20, what="process ready")
    wait_until(lambda: recommender_events(again) == folded_by_recommender(events), 20,
               what="every event counted once")
    assert again.get_json(f"/recommendations/{events[-1]['user_id']}?k=5")["items"]


def test_kill_9_of_the_daemon_while_events_flow_counts_every_event_once(daemon_factory, tmp_path):
    """The daemon (and with it its process) killed at random moments between durable POSTs; each
    POST is retried until acknowledged. The recommender has counted every event exactly once."""
    seed = crash_seed()
    rng = random.Random(seed)
    body = PLAIN.format(data=tmp_path / "data")
    events = Generator(seed=21, start_ms=int(time.time() * 1000) - 5 * 60_000, rate=50).next_batch(12_000)
    bodies = [orjson.dumps(events[i:i + 500]) for i in range(0, len(events), 500)]
    sent = 0
    for round_ in range(4):
        d = daemon_factory.start(body)
        stop_at = min(len(bodies), sent + rng.randint(3, 8)) if round_ < 3 else len(bodies)
        while sent < stop_at:
            status, _ = http_post(d.url + "/ingest", bodies[sent])
            assert status == 202
            sent += 1
        if round_ < 3:
            time.sleep(rng.uniform(0.0, 0.6))
            d.kill()
    wait_until(lambda: recommender_events(d) == folded_by_recommender(events), 30,
               what=f"every event counted once (STOREPULSE_CRASH_SEED={seed})")
    assert d.stop() == 0


def test_a_data_dir_from_before_the_process_is_picked_up_whole(daemon_factory, tmp_path):
    """A data_dir written when the daemon folded the recommender itself: its records stored with the
    state and fold-log entries after them, no cuts. The process starts from the records and replays
    every entry: it has counted the events of both, once."""
    from daemon.config import RecommendationsConfig, StorageConfig
    from daemon.pipeline.foldlog import FoldLog
    from daemon.pipeline.validate import Validator
    from daemon.stores.checkpoint import Checkpoint, CommitUnit

    start = int(time.time() * 1000) - 10 * 60_000
    gen = Generator(seed=31, start_ms=start, rate=50)
    first, second = gen.next_batch(3000), gen.next_batch(2000)
    decode = Validator("webhook").decode_items
    rec = Recommender(RecommendationsConfig(half_life_s=3600.0))
    rec.observe(decode(first, start + 10**7).batch)
    cp = Checkpoint.open(StorageConfig(data_dir=str(tmp_path / "data")), environ={})
    cp.commit(CommitUnit(state={"recs": rec.take_changes()}, state_complete=True))
    log = FoldLog()
    log.observe(decode(second, start + 10**7).batch)
    cp.commit(CommitUnit(fold_log=log.take()))
    cp.close()

    d = daemon_factory.start(PLAIN.format(data=tmp_path / "data"))
    wait_until(lambda: d.get_json("/stats")["replica"].get("port") is not None, 20, what="process ready")
    wait_until(lambda: recommender_events(d) == folded_by_recommender(first + second), 20,
               what="the stored records and the logged events, once each")
    assert d.get_json(f"/recommendations/{second[-1]['user_id']}?k=5")["items"]
    assert d.stop() == 0
