"""The daemon under a fake NOTIFY_SOCKET: READY=1 once ready, WATCHDOG=1 at half of WATCHDOG_USEC,
none once a commit is wedged by an injected fault, STATUS= lines, and STOPPING=1 on SIGTERM."""

from __future__ import annotations

import socket
import statistics
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import pytest

from tests.conftest import DaemonFactory, Proc, http_get, http_post, wait_until

pytestmark = pytest.mark.timeout(120)

WATCHDOG_USEC = 2_000_000            # pings expected every 1 s
PING_S = WATCHDOG_USEC / 2_000_000
CONFIG = """
[storage]
data_dir = "{data}"
commit_interval = "100ms"

[sources.webhook]
type = "ingest"

[[aggregations]]
name = "events_by_type"
group_by = ["type"]
window = { type = "tumbling", size = "10s" }
metrics = { events = "count" }
"""


@dataclass
class NotifyListener:
    """A datagram socket standing in for systemd; records (monotonic time, line) of every message."""

    path: Path
    messages: list[tuple[float, str]] = field(default_factory=list)
    on_ready: list = field(default_factory=list)
    ready_checks: list[int] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.path))
        self.sock.settimeout(0.1)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            now = time.monotonic()
            for line in data.decode().splitlines():
                if line == "READY=1":
                    # Ask the daemon at the moment READY arrives: it must be ready already. (Before the
                    # line is recorded: a test that saw READY=1 then finds the checks' answers.)
                    for check in self.on_ready:
                        self.ready_checks.append(check())
                self.messages.append((now, line))

    def close(self) -> None:
        self._stop.set()
        self.thread.join(2)
        self.sock.close()

    def times(self, line: str) -> list[float]:
        return [t for t, m in list(self.messages) if m == line]

    def lines(self, prefix: str) -> list[str]:
        return [m for _, m in list(self.messages) if m.startswith(prefix)]


@pytest.fixture
def listener(tmp_path: Path):
    lst = NotifyListener(tmp_path / "notify.sock")
    lst.start()
    try:
        yield lst
    finally:
        lst.close()


def start_daemon(daemon_factory: DaemonFactory, listener: NotifyListener, fault: str = "") -> Proc:
    env = {"NOTIFY_SOCKET": str(listener.path), "WATCHDOG_USEC": str(WATCHDOG_USEC)}
    if fault:
        env["STOREPULSE_FAULT"] = fault
    port_holder: dict[str, int] = {}
    listener.on_ready.append(lambda: http_get(f"http://127.0.0.1:{port_holder['port']}/readyz", timeout=5)[0])
    proc = daemon_factory.start(CONFIG, env=env, wait=False)
    port_holder["port"] = proc.port
    daemon_factory.wait_healthy(proc)
    return proc


def post_event(proc: Proc, event_id: str) -> int:
    event = {"event_id": event_id, "ts": int(time.time() * 1000), "type": "view", "user_id": "u1", "item_id": "i1"}
    return http_post(proc.url + "/ingest", orjson.dumps(event), timeout=5)[0]


def test_ready_watchdog_status_and_stopping(daemon_factory: DaemonFactory, listener: NotifyListener) -> None:
    """READY=1 comes once, when /readyz is already 200; WATCHDOG=1 every WATCHDOG_USEC/2; STOPPING=1 on SIGTERM."""
    proc = start_daemon(daemon_factory, listener)
    wait_until(lambda: listener.times("READY=1"), 20, what="READY=1")
    assert listener.ready_checks == [200]
    assert post_event(proc, "e1") == 202
    wait_until(lambda: len(listener.times("WATCHDOG=1")) >= 6, 15, what="six WATCHDOG=1")
    pings = listener.times("WATCHDOG=1")
    gaps = [b - a for a, b in zip(pings, pings[1:])]
    assert 0.85 * PING_S <= statistics.median(gaps) <= 1.2 * PING_S, gaps
    assert max(gaps) < 2 * PING_S, gaps          # never close to the 2 s timeout
    assert pings[0] >= listener.times("READY=1")[0] - 0.5
    status = listener.lines("STATUS=")
    assert status and any("events/s" in s for s in status), status

    assert proc.stop() == 0
    stopping = listener.times("STOPPING=1")
    assert len(stopping) == 1
    assert len(listener.times("READY=1")) == 1


def test_no_watchdog_once_a_commit_is_wedged(daemon_factory: DaemonFactory, listener: NotifyListener) -> None:
    """With STOREPULSE_FAULT=wedge_commit, pings go on while idle, stop once events wait on the hung commit."""
    proc = start_daemon(daemon_factory, listener, fault="wedge_commit")
    wait_until(lambda: len(listener.times("WATCHDOG=1")) >= 3, 15, what="WATCHDOG=1 while idle")
    wedged_at = time.monotonic()
    assert post_event(proc, "e1") == 202            # its commit will hang forever

    def quiet_for(seconds: float) -> bool:
        pings = listener.times("WATCHDOG=1")
        return bool(pings) and time.monotonic() - pings[-1] >= seconds
    # The bound is max(WatchdogSec, 5 s, 10 commit intervals) = 5 s here; then silence.
    wait_until(lambda: quiet_for(4 * PING_S), 20, interval=0.2, what="WATCHDOG=1 to stop")
    last_ping = listener.times("WATCHDOG=1")[-1]
    assert last_ping - wedged_at < 5.0 + 2 * PING_S
    assert any(s.startswith("STATUS=wedged") for s in listener.lines("STATUS=")), listener.lines("STATUS=")
    # The event loop itself still turns: the silence is the policy, not a dead process.
    assert http_get(proc.url + "/healthz", timeout=2)[0] == 200
    events = [e.get("event") for e in proc.log_events()]
    assert "watchdog_withheld" in events
    proc.kill()


def test_no_watchdog_once_the_archive_flush_hangs(daemon_factory: DaemonFactory, listener: NotifyListener) -> None:
    """With STOREPULSE_FAULT=wedge_flush the archive's Arrow flush never ends. The commits do not wait
    for it (it runs in the background), so only the watchdog's own bound on it stops the pings."""
    config = CONFIG.replace('commit_interval = "100ms"', 'commit_interval = "100ms"\narchive_events = true\nflush_interval = "200ms"')
    env = {"NOTIFY_SOCKET": str(listener.path), "WATCHDOG_USEC": str(WATCHDOG_USEC), "STOREPULSE_FAULT": "wedge_flush"}
    proc = daemon_factory.start(config, env=env)
    wait_until(lambda: len(listener.times("WATCHDOG=1")) >= 2, 15, what="WATCHDOG=1 before any flush")
    hung_at = time.monotonic()
    assert post_event(proc, "e1") == 202            # archived: the flush that writes it hangs
    wait_until(lambda: any("Arrow flush" in s for s in listener.lines("STATUS=wedged")), 20, interval=0.2,
               what="STATUS=wedged naming the flush")
    pings = listener.times("WATCHDOG=1")
    assert pings[-1] - hung_at < 5.0 + 2 * PING_S    # the bound: max(WatchdogSec, 5 s, 10 commit intervals)
    assert post_event(proc, "e2") == 202 and http_get(proc.url + "/healthz", timeout=2)[0] == 200
    wait_until(lambda: proc.get_json("/stats")["events"]["accepted"] == 2, 5, what="the commits go on")
    proc.kill()


def test_without_notify_socket_the_daemon_runs(daemon_factory: DaemonFactory) -> None:
    """No NOTIFY_SOCKET: notifying is a no-op and the daemon serves and stops normally."""
    proc = daemon_factory.start(CONFIG)
    assert http_get(proc.url + "/healthz")[0] == 200
    assert proc.stop() == 0
