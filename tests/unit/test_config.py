"""Config loading: typed values and `dotted.key: message` problems."""

import subprocess
import sys
from pathlib import Path

import pytest

from daemon.config import RetentionConfig, load_config, parse_config
from daemon.errors import ConfigErrors

REPO = Path(__file__).resolve().parents[2]


def test_default_config_is_valid():
    """The shipped config/storepulse.toml loads with its three sources."""
    cfg = load_config(str(REPO / "config/storepulse.toml"))
    assert {s.type for s in cfg.sources} == {"http_poll", "websocket", "ingest"}
    assert cfg.http.host == "127.0.0.1" and cfg.http.port == 8787
    assert cfg.storage.commit_interval_s == 0.2
    day = 86_400_000   # every Arrow table bounded by age: what a daemon left running for months needs
    assert cfg.storage.retention == RetentionConfig(events_ms=7 * day, deadletter_ms=30 * day,
                                                    windows_ms=90 * day, anomalies_ms=365 * day)


def test_empty_config_gets_defaults():
    """An empty file is a valid config with loopback defaults."""
    cfg = parse_config({})
    assert cfg.http.is_loopback and cfg.sources == () and cfg.aggregations == ()


def _problems(data: dict) -> list[str]:
    with pytest.raises(ConfigErrors) as info:
        parse_config(data)
    return [str(e) for e in info.value.errors]


def test_every_problem_is_reported_with_its_path():
    """Unknown key, wrong type, bad duration, missing url, unknown source type: one line each."""
    problems = _problems({
        "http": {"listen": "127.0.0.1:8787", "colour": "red"},
        "storage": {"commit_interval": "soon", "archive_events": "yes"},
        "sources": {"a": {"type": "http_poll"}, "b": {"type": "kafka"}},
    })
    assert sorted(problems) == sorted([
        "http.colour: unknown key",
        "storage.archive_events: expected true or false, got a string",
        "storage.commit_interval: bad duration 'soon': use a number and one of ms, s, m, h, d (e.g. \"250ms\", \"5s\")",
        "sources.a.url: required key is missing",
        "sources.b.type: unknown source type 'kafka' (one of http_poll, websocket, ingest)",
    ])


def test_aggregation_problems_name_the_entry():
    """Metric, window and filter problems point into aggregations[i]."""
    problems = _problems({"aggregations": [{
        "name": "x", "where": {"type": ["buy"]}, "group_by": ["colour"],
        "window": {"type": "hopping", "size": "5m", "slide": "2m"},
        "metrics": {"a": "sum(category)", "b": "p95(price)", "c": "topk(item_id)"},
    }]})
    assert "aggregations[0].where.type: unknown event type 'buy' (one of view, cart, remove_from_cart, purchase, search)" in problems
    assert "aggregations[0].group_by[0]: unknown event field 'colour'" in problems
    assert "aggregations[0].window.slide: size must be a whole multiple of slide" in problems
    assert any(p.startswith("aggregations[0].metrics.a: sum needs a numeric field") for p in problems)
    assert any(p.startswith("aggregations[0].metrics.c: topk needs") for p in problems)
    assert not any(".metrics.b" in p for p in problems)


def test_latest_window_bounds_per_key_and_per_aggregation():
    """keep_latest (per key) and keep_latest_rows (per aggregation) have defaults, are read, and a value
    out of range names its key."""
    agg = {"name": "x", "group_by": ["user_id"], "window": {"type": "session", "gap": "5m"}, "metrics": {"n": "count"}}
    (default,) = parse_config({"aggregations": [agg]}).aggregations
    assert (default.keep_latest, default.keep_latest_rows) == (1000, 1_000_000)
    (given,) = parse_config({"aggregations": [{**agg, "keep_latest": 5, "keep_latest_rows": 200}]}).aggregations
    assert (given.keep_latest, given.keep_latest_rows) == (5, 200)
    problems = _problems({"aggregations": [{**agg, "keep_latest_rows": 0}]})
    assert len(problems) == 1 and problems[0].startswith("aggregations[0].keep_latest_rows:")


def test_non_loopback_listen_needs_a_token():
    """Listening on 0.0.0.0 without token_file is refused."""
    assert _problems({"http": {"listen": "0.0.0.0:8787"}}) == [
        "http.token_file: required when listen is not a loopback address (0.0.0.0)"]


def test_recommendations_listen_is_host_port_and_off_loopback_needs_the_token():
    cfg = parse_config({"recommendations": {"listen": "127.0.0.1:8788"}})
    assert (cfg.recommendations.listen_host, cfg.recommendations.listen_port) == ("127.0.0.1", 8788)
    assert parse_config({"recommendations": {}}).recommendations.listen_port == 0   # read through the daemon's port only
    with pytest.raises(ConfigErrors) as e:
        parse_config({"recommendations": {"listen": "8788"}})
    assert [str(x) for x in e.value.errors] == ['recommendations.listen: expected host:port like "127.0.0.1:8787", got \'8788\'']
    with pytest.raises(ConfigErrors) as e:
        parse_config({"recommendations": {"listen": "0.0.0.0:8788"}})
    assert str(e.value.errors[0]).startswith("recommendations.listen: a non-loopback address (0.0.0.0) needs http.token_file")
    cfg = parse_config({"http": {"token_file": "/run/token"}, "recommendations": {"listen": "0.0.0.0:8788"}})
    assert cfg.recommendations.listen_host == "0.0.0.0"
    assert _problems({"recommendations": {"listen": "127.0.0.1:0"}}) == [
        "recommendations.listen: needs a port between 1 and 65535 (leave the key out to read through the daemon's port only)"]
    assert _problems({"recommendations": {"listen": "127.0.0.1:8787"}}) == [
        "recommendations.listen: is http.listen too (127.0.0.1:8787); the recommendations process needs its own port"]


def test_check_config_three_mistakes_three_lines(tmp_path):
    """`storepulse check-config` prints one line per mistake and exits 1, no traceback."""
    path = tmp_path / "bad.toml"
    path.write_text('[http]\nmax_body = "lots"\n[sources.x]\ntype = "websocket"\n[pipeline]\nidle_timeout = 5\n')
    proc = subprocess.run([sys.executable, "-m", "daemon", "check-config", "-c", str(path)], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 3, proc.stderr
    assert lines[0].startswith("http.max_body: bad size")
    assert lines[1].startswith("pipeline.idle_timeout: expected a duration string")
    assert lines[2] == "sources.x.url: required key is missing"
    assert "Traceback" not in proc.stderr


def test_invalid_toml_is_one_clear_line(tmp_path):
    """A TOML syntax error names the file and the problem."""
    path = tmp_path / "broken.toml"
    path.write_text("[http\n")
    proc = subprocess.run([sys.executable, "-m", "daemon", "check-config", "-c", str(path)], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "invalid TOML" in proc.stderr and "Traceback" not in proc.stderr


def test_storage_compression():
    """Arrow files are lz4-compressed unless storage.compression says otherwise; a bad value names the key."""
    assert parse_config({}).storage.compression == "lz4"
    assert parse_config({"storage": {"compression": "zstd"}}).storage.compression == "zstd"
    assert _problems({"storage": {"compression": "gzip"}}) == [
        "storage.compression: must be one of 'lz4', 'zstd', 'none', got 'gzip'"]


def test_storage_compaction():
    assert parse_config({}).storage.compaction is True
    assert parse_config({"storage": {"compaction": False}}).storage.compaction is False
    assert _problems({"storage": {"compaction": "no"}}) == ["storage.compaction: expected true or false, got a string"]
