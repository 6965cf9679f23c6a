"""HTTP limits on a real daemon: slow (1 byte/s) clients are dropped, oversized lines, headers and bodies
are refused, and 1,000 idle connections do not stall /stats."""

from __future__ import annotations

import json
import resource
import socket
import time
from collections.abc import Iterator

import pytest

from tests.conftest import DaemonFactory, Proc, http_get, http_post

pytestmark = pytest.mark.timeout(120)

IDLE_TIMEOUT_S = 2.0
CONFIG = """
[http]
listen = "127.0.0.1:{port}"
max_body = "64KiB"
idle_timeout = "%s"

[sources.webhook]
type = "ingest"

[[aggregations]]
name = "events_by_type"
group_by = ["type"]
window = { type = "tumbling", size = "10s" }
metrics = { events = "count" }
"""
IDLE_CONNECTIONS = 1000


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    factory = DaemonFactory(tmp_path_factory.mktemp("limits"))
    try:
        yield factory.start(CONFIG % f"{IDLE_TIMEOUT_S:g}s")
    finally:
        factory.close()


def connect(proc: Proc) -> socket.socket:
    return socket.create_connection(("127.0.0.1", proc.port), timeout=5)


def trickle_until_dropped(sock: socket.socket, head: bytes, limit_s: float) -> float | None:
    """Send `head`, then one byte a second; seconds until the server closes or answers, None if it never does."""
    t0 = time.monotonic()
    sock.sendall(head)
    sock.settimeout(1.0)
    while time.monotonic() - t0 < limit_s:
        try:
            sock.sendall(b"a")
            sock.recv(4096)         # b"" (closed) or an error answer: either way the client is dropped
            return time.monotonic() - t0
        except TimeoutError:
            continue
        except OSError:                            # reset or broken pipe
            return time.monotonic() - t0
    return None


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/") else 0


def raw_request(proc: Proc, data: bytes) -> bytes:
    with connect(proc) as sock:
        sock.sendall(data)
        try:
            return sock.recv(4096)
        except ConnectionResetError:
            return b""


def test_slow_header_client_is_dropped(daemon: Proc) -> None:
    """A client sending its headers at 1 byte/s is disconnected after about http.idle_timeout."""
    with connect(daemon) as sock:
        took = trickle_until_dropped(sock, b"GET /stats HTTP/1.1\r\nHost: x\r\nX-Slow: ", IDLE_TIMEOUT_S + 8)
    assert took is not None and took < IDLE_TIMEOUT_S + 3, took


def test_slow_body_client_is_dropped(daemon: Proc) -> None:
    """A POST whose body comes at 1 byte/s is cut off (closed or 408) after about http.idle_timeout."""
    head = b"POST /ingest HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
    with connect(daemon) as sock:
        took = trickle_until_dropped(sock, head, IDLE_TIMEOUT_S + 13)
    assert took is not None and took < IDLE_TIMEOUT_S + 8, took


def test_slow_client_does_not_delay_others(daemon: Proc) -> None:
    """While a slow client trickles, /stats answers at once on another connection."""
    with connect(daemon) as slow:
        slow.sendall(b"GET /stats HTTP/1.1\r\nHost: x\r\nX-Slow: a")
        t0 = time.monotonic()
        assert http_get(daemon.url + "/stats")[0] == 200
        assert time.monotonic() - t0 < 1.0


@pytest.mark.parametrize(("name", "request_bytes"), [
    ("long header", b"GET /stats HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n"),
    ("many headers", b"GET /stats HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(200)) + b"\r\n"),
    ("long request line", b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n"),
])
def test_oversized_requests_are_refused(daemon: Proc, name: str, request_bytes: bytes) -> None:
    """Request lines or header fields over 8 KiB and more than the header count limit get a 4xx; the daemon is fine."""
    status = status_of(raw_request(daemon, request_bytes))
    assert status in (0, 400, 413, 414, 431), (name, status)
    assert http_get(daemon.url + "/healthz")[0] == 200


def test_body_over_max_body_is_413(daemon: Proc) -> None:
    """A POST /ingest body over http.max_body is answered 413."""
    assert http_post(daemon.url + "/ingest", b"[" + b" " * (70 * 1024) + b"]")[0] == 413


@pytest.fixture
def many_fds() -> Iterator[None]:
    """Room for 1,000 client sockets here and 1,000 server sockets in the daemon (which inherits the limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 4 * IDLE_CONNECTIONS
    if hard != resource.RLIM_INFINITY and hard < want:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < {want}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_idle_connections_do_not_stall_stats(daemon_factory: DaemonFactory, many_fds: None) -> None:
    """With 1,000 idle connections open (half with a started request), /stats still answers within a second."""
    proc = daemon_factory.start(CONFIG % "30s")
    socks: list[socket.socket] = []
    try:
        for i in range(IDLE_CONNECTIONS):
            s = socket.create_connection(("127.0.0.1", proc.port), timeout=10)
            if i % 2:
                s.sendall(b"GET /stats HTTP/1.1\r\n")
            socks.append(s)
        for _ in range(5):
            t0 = time.monotonic()
            status, _ = http_get(proc.url + "/stats", timeout=5)
            assert status == 200
            assert time.monotonic() - t0 < 1.0
        assert http_get(proc.url + "/metrics", timeout=5)[0] == 200
    finally:
        for s in socks:
            s.close()


def test_connections_beyond_max_connections_get_503_and_are_counted(daemon_factory: DaemonFactory) -> None:
    """With http.max_connections = 4: four idle connections are kept, a fifth is answered 503 and
    closed, /stats and /metrics count it, and once one closes a new connection is served again."""
    proc = daemon_factory.start(CONFIG.replace('idle_timeout = "%s"', 'idle_timeout = "30s"\nmax_connections = 4'))
    socks = [socket.create_connection(("127.0.0.1", proc.port), timeout=5) for _ in range(4)]
    try:
        time.sleep(0.3)                               # the daemon has accepted all four
        extra = socket.create_connection(("127.0.0.1", proc.port), timeout=5)
        answer = extra.recv(4096)
        assert answer.startswith(b"HTTP/1.1 503 ") and b"Retry-After: 1" in answer and b"max_connections" in answer
        assert extra.recv(4096) == b""                # and closed
        extra.close()
        socks.pop().close()
        time.sleep(0.3)
        status, body = http_get(proc.url + "/stats")
        assert status == 200
        http = json.loads(body)["http"]
        assert http["refused_connections"] == 1 and http["max_connections"] == 4
        assert http["open_connections"] == 4            # three idle ones and this request's
        status, metrics = http_get(proc.url + "/metrics")
        assert status == 200 and b"storepulse_http_refused_connections_total 1.0" in metrics
    finally:
        for s in socks:
            s.close()
