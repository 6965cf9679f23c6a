"""sd_notify messages over a real datagram socket, the watchdog policy and the heartbeat's timing."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from daemon.runtime.systemd import (
    Notifier, ServiceHeartbeat, WatchdogBounds, format_status, should_feed_watchdog, wedged_reason,
)

BOUNDS = WatchdogBounds(max_loop_lag_ms=1000, max_commit_age_ms=5000)


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify"))
    sock.settimeout(0)
    try:
        yield sock
    finally:
        sock.close()


def received(sock: socket.socket) -> list[str]:
    out = []
    while True:
        try:
            out.append(sock.recv(4096).decode())
        except BlockingIOError:
            return out


def notifier_for(sock: socket.socket, watchdog_usec: int | None = None) -> Notifier:
    env = {"NOTIFY_SOCKET": sock.getsockname()}
    if watchdog_usec is not None:
        env["WATCHDOG_USEC"] = str(watchdog_usec)
    return Notifier(env)


class Log:
    """Collects (level, event, fields) like a bound structlog logger would print them."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str, dict]] = []

    def error(self, event: str, **kw: object) -> None:
        self.lines.append(("error", event, kw))

    def warning(self, event: str, **kw: object) -> None:
        self.lines.append(("warning", event, kw))


def test_notify_messages_reach_the_socket(notify_socket: socket.socket) -> None:
    """READY (with STATUS), WATCHDOG, STATUS and STOPPING arrive as one datagram each."""
    n = notifier_for(notify_socket)
    n.ready("running")
    n.watchdog()
    n.status("12 events/s")
    n.stopping()
    n.close()
    assert received(notify_socket) == ["READY=1\nSTATUS=running", "WATCHDOG=1", "STATUS=12 events/s", "STOPPING=1"]


def test_abstract_socket_address() -> None:
    """A NOTIFY_SOCKET starting with @ names an abstract socket."""
    name = f"storepulse-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(2)
        Notifier({"NOTIFY_SOCKET": "@" + name}).ready()
        assert sock.recv(100) == b"READY=1"


def test_without_notify_socket_nothing_happens() -> None:
    """No NOTIFY_SOCKET: every call is a no-op and the watchdog is off."""
    n = Notifier({})
    n.ready("x")
    n.watchdog()
    assert not n.enabled and n.watchdog_interval_s is None


def test_gone_socket_is_ignored(tmp_path: Path) -> None:
    """Notifying a socket path nobody listens on does not raise."""
    Notifier({"NOTIFY_SOCKET": str(tmp_path / "missing")}).ready()


@pytest.mark.parametrize(("env", "interval"), [
    ({"WATCHDOG_USEC": "30000000"}, 15.0),
    ({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(os.getpid())}, 1.0),
    ({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "1"}, None),
    ({"WATCHDOG_USEC": "0"}, None),
    ({"WATCHDOG_USEC": "soon"}, None),
])
def test_watchdog_interval_is_half_of_watchdog_usec(env: dict[str, str], interval: float | None) -> None:
    """The ping interval is WATCHDOG_USEC / 2, and off when WATCHDOG_PID names another process."""
    assert Notifier({"NOTIFY_SOCKET": "/run/x", **env}).watchdog_interval_s == interval


def test_bounds_follow_the_watchdog_timeout() -> None:
    """The loop may lag half the timeout; a commit may stall the whole timeout but at least 5 s and 10 intervals."""
    b = WatchdogBounds.for_watchdog(30_000_000, 0.2)
    assert (b.max_loop_lag_ms, b.max_commit_age_ms) == (15_000, 30_000)
    assert WatchdogBounds.for_watchdog(2_000_000, 0.2).max_commit_age_ms == 5_000
    assert WatchdogBounds.for_watchdog(2_000_000, 1.0).max_commit_age_ms == 10_000
    assert WatchdogBounds.for_watchdog(None, 0.2) == b


@pytest.mark.parametrize(("lag_ms", "age_ms", "pending", "feed"), [
    (3, 150, True, True),            # healthy and busy
    (3, 3_600_000, False, True),     # idle for an hour: nothing to commit
    (3, 5_001, True, False),         # work waits past the bound: commit wedged
    (1_001, 10, False, False),       # loop too slow
    (1_000, 5_000, True, True),      # bounds are inclusive
])
def test_should_feed_watchdog(lag_ms: float, age_ms: float, pending: bool, feed: bool) -> None:
    """WATCHDOG=1 is withheld only for a lagging loop or pending work without a commit past the bound."""
    assert should_feed_watchdog(lag_ms, age_ms, pending, BOUNDS) is feed


def test_wedged_reason_says_what_is_stuck() -> None:
    """The reason names the stuck part and the figures."""
    assert wedged_reason(2500, 0, False, BOUNDS) == "event loop lag 2.5s > 1.0s"
    assert wedged_reason(0, 7000, True, BOUNDS) == "no commit for 7.0s with work pending (> 5.0s)"
    # The archive's Arrow flush runs beside the commits: one that hangs is a wedge of its own.
    assert wedged_reason(0, 0, False, BOUNDS, flush_running_ms=6000) == "an Arrow flush running for 6.0s (> 5.0s)"
    assert wedged_reason(0, 0, False, BOUNDS, flush_running_ms=5000) == ""


def test_format_status() -> None:
    """STATUS shows throughput, watermark lag and queued deliveries, or the wedge."""
    assert format_status(events_per_s=1234.4, watermark_lag_ms=5200, queued=3) == \
        "1234 events/s, watermark lag 5.2s, 3 deliveries queued"
    assert format_status(events_per_s=0, watermark_lag_ms=None, queued=0) == \
        "0 events/s, no watermark yet, 0 deliveries queued"
    assert format_status(events_per_s=9, watermark_lag_ms=1, queued=1, wedged="loop stuck") == "wedged: loop stuck"


def tick(hb: ServiceHeartbeat, now_s: float, *, age_ms: float = 100, pending: bool = False, lag_ms: float = 1,
         accepted: int = 0) -> bool:
    return hb.tick(now_s, loop_lag_ms=lag_ms, accepted=accepted, last_commit_age_ms=age_ms,
                   pending_work=pending, watermark_lag_ms=5000, queued=0)


def test_heartbeat_pings_at_half_the_timeout(notify_socket: socket.socket) -> None:
    """With WATCHDOG_USEC=2s and 0.25 s probe ticks, WATCHDOG=1 goes out once a second."""
    hb = ServiceHeartbeat(notifier_for(notify_socket, 2_000_000), BOUNDS)
    pings = []
    for i in range(41):
        now = i * 0.25
        tick(hb, now)
        if "WATCHDOG=1" in received(notify_socket):
            pings.append(now)
    assert pings == [float(s) for s in range(11)]


def test_heartbeat_stops_pinging_while_wedged_and_resumes(notify_socket: socket.socket) -> None:
    """Work waiting past the bound without a commit stops the pings, says so in STATUS and the log once."""
    log = Log()
    hb = ServiceHeartbeat(notifier_for(notify_socket, 2_000_000), BOUNDS, log=log)
    healthy = {}
    msgs = []
    for i in range(20):
        now = i * 0.5
        healthy[now] = tick(hb, now, age_ms=100 + now * 1000, pending=True)
        msgs += [(now, m) for m in received(notify_socket)]
    assert all(ok for t, ok in healthy.items() if t <= 5.0)
    assert not any(ok for t, ok in healthy.items() if t > 5.0)
    assert max(t for t, m in msgs if m == "WATCHDOG=1") <= 5.0
    assert [m for t, m in msgs if t == 5.5] == ["STATUS=wedged: no commit for 5.5s with work pending (> 5.0s)"]
    assert [(lvl, ev) for lvl, ev, _ in log.lines] == [("error", "watchdog_withheld")]
    assert tick(hb, 20.0, age_ms=10, pending=True)
    assert "WATCHDOG=1" in received(notify_socket)
    assert log.lines[-1][:2] == ("warning", "watchdog_resumed")


def test_work_after_a_long_idle_spell_is_not_a_wedge(notify_socket: socket.socket) -> None:
    """The first work after an hour without commits counts from when it turned up, not from the last commit."""
    hb = ServiceHeartbeat(notifier_for(notify_socket, 2_000_000), BOUNDS)
    assert tick(hb, 0.0, age_ms=3_600_000, pending=False)
    assert tick(hb, 0.25, age_ms=3_600_250, pending=True)
    assert tick(hb, 4.0, age_ms=3_604_000, pending=True)
    assert not tick(hb, 5.5, age_ms=3_605_500, pending=True)


def test_heartbeat_without_watchdog_still_sends_status(notify_socket: socket.socket) -> None:
    """Without WATCHDOG_USEC no WATCHDOG=1 is sent, but STATUS= is, every status interval."""
    hb = ServiceHeartbeat(notifier_for(notify_socket), BOUNDS, status_interval_s=5.0)
    sent = []
    for i in range(41):
        tick(hb, i * 0.25, accepted=i * 250)
        sent += received(notify_socket)
    assert sent == ["STATUS=0 events/s, watermark lag 5.0s, 0 deliveries queued",
                    "STATUS=1000 events/s, watermark lag 5.0s, 0 deliveries queued",
                    "STATUS=1000 events/s, watermark lag 5.0s, 0 deliveries queued"]


@given(st.lists(st.floats(0.2, 0.3), min_size=50, max_size=200))
def test_ping_gaps_stay_near_half_the_timeout(steps: list[float]) -> None:
    """Whatever the probe jitter, healthy pings are at least 0.9 and at most 1 interval + 1 probe apart."""
    class Counting(Notifier):
        def __init__(self) -> None:
            super().__init__({"NOTIFY_SOCKET": "", "WATCHDOG_USEC": "2000000"})
            self.watchdog_interval_s = 1.0
            self.pings: list[float] = []
            self.now = 0.0

        def watchdog(self) -> None:
            self.pings.append(self.now)

    n = Counting()
    hb = ServiceHeartbeat(n, BOUNDS)
    for step in steps:
        n.now += step
        tick(hb, n.now)
    gaps = [b - a for a, b in zip(n.pings, n.pings[1:])]
    assert all(0.9 <= g <= 1.0 + 0.3 + 1e-9 for g in gaps)
