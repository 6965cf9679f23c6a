"""Process lifecycle: one daemon per data_dir, SIGTERM within bounds, clear start-up failures."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from tests.conftest import REPO, free_port

pytestmark = pytest.mark.timeout(60)

CONFIG = """
[storage]
data_dir = "{data}"

[sources.webhook]
type = "ingest"
"""


def test_second_daemon_on_same_data_dir_exits_at_once(daemon_factory, tmp_path):
    """A second daemon on a data_dir in use exits 1 at once, naming the lock and the holder's pid."""
    first = daemon_factory.start(CONFIG)
    cfg = tmp_path / "second.toml"
    cfg.write_text(f'[http]\nlisten = "127.0.0.1:{free_port()}"\n' + CONFIG.replace("{data}", str(tmp_path / "data")))
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "daemon", "run", "-c", str(cfg)], cwd=REPO, capture_output=True,
                          text=True, timeout=30)
    assert proc.returncode == 1
    assert time.monotonic() - t0 < 10
    assert "store_open_failed" in proc.stdout and "LOCK" in proc.stdout and str(first.popen.pid) in proc.stdout
    assert first.get_json("/healthz")["status"] == "ok"


def test_sigterm_exits_zero_quickly(daemon_factory):
    """SIGTERM stops sources, drains, commits and exits 0 well within 10 s."""
    d = daemon_factory.start(CONFIG)
    t0 = time.monotonic()
    assert d.stop(timeout=10) == 0
    assert time.monotonic() - t0 < 10
    events = [e.get("event") for e in d.log_events()]
    assert events.index("stopping") < events.index("stopped")


def test_port_in_use_is_a_clear_error(daemon_factory):
    """When http.listen is taken, the daemon says so and exits 1."""
    first = daemon_factory.start(CONFIG, data_dir=None)
    second = daemon_factory.start(CONFIG.replace("{data}", "{data}-2"), port=first.port, wait=False)
    assert second.popen.wait(30) == 1
    assert "http_listen_failed" in second.log()


def test_unreadable_fold_log_is_a_clear_error(daemon_factory, tmp_path):
    """A fold log entry that cannot be replayed stops the start with `restore_failed` naming it, exit 1."""
    from daemon.config import StorageConfig
    from daemon.stores.checkpoint import Checkpoint, CommitUnit

    data = tmp_path / "data"
    cp = Checkpoint.open(StorageConfig(data_dir=str(data)), environ={})
    cp.commit(CommitUnit(fold_log=b'[[0, "webhook"'))   # cut short, as by a bad disk
    cp.close()
    d = daemon_factory.start(CONFIG, data_dir=data, wait=False)
    assert d.popen.wait(30) == 1
    assert "restore_failed" in d.log() and "fold log entry 1 of 1" in d.log()
