"""Shared fixtures: free ports, tmp data dirs, and spawned daemons/storefronts that are always killed."""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _ephemeral_low() -> int:
    """The lowest port the kernel hands out on its own (to `bind(0)` and to outgoing connections)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """A loopback port free now, below the kernel's ephemeral range when it leaves room: a port from
    `bind(0)` comes from that range, where any outgoing connection (the tests' clients, a daemon's
    poller) may take it before the daemon binds it (one run failed a test on "address already in use")."""
    low = _ephemeral_low()
    if low > 12_000:
        for _ in range(50):
            port = random.randrange(10_000, low)
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_get(url: str, timeout: float = 5.0, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def http_post(url: str, body: bytes, timeout: float = 10.0, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, method="POST", headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@dataclass
class Proc:
    """A spawned process with its log file; `stop()` sends SIGTERM, `kill()` SIGKILL."""

    popen: subprocess.Popen
    log_path: Path
    port: int
    extra: dict = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_events(self) -> list[dict]:
        out = []
        for line in self.log().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
        return out

    def stop(self, timeout: float = 15.0) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(5)
            raise

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait(10)

    def get_json(self, path: str, headers: dict[str, str] | None = None) -> dict:
        status, body = http_get(self.url + path, headers=headers)
        assert status == 200, (status, body[:500])
        return json.loads(body)


def wait_until(predicate, timeout: float = 20.0, interval: float = 0.1, what: str = "condition"):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
            if last:
                return last
        except Exception as exc:  # noqa: BLE001 - keep polling until the deadline
            last = exc
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def spawn(args: list[str], log_path: Path, port: int, env: dict[str, str] | None = None) -> Proc:
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    log = open(log_path, "wb")
    popen = subprocess.Popen([sys.executable, "-m", "daemon", *args], cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                             env=full_env, start_new_session=True)
    return Proc(popen, log_path, port)


class DaemonFactory:
    """Writes a config, starts `storepulse run`, waits for /healthz; kills everything at teardown."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.procs: list[Proc] = []
        self.count = 0

    def config_text(self, body: str, port: int, data_dir: Path) -> str:
        """Fill `{port}` and `{data}` in `body`; add [http] listen and [storage] data_dir when absent."""
        body = body.replace("{port}", str(port)).replace("{data}", str(data_dir))
        head = ""
        if "[http]" not in body:
            head += f'[http]\nlisten = "127.0.0.1:{port}"\n\n'
        if "[storage]" not in body:
            head += f'[storage]\ndata_dir = "{data_dir}"\n\n'
        return head + body

    def start(self, body: str, *, port: int | None = None, data_dir: Path | None = None, wait: bool = True,
              env: dict[str, str] | None = None, raw_config: bool = False) -> Proc:
        self.count += 1
        port = port or free_port()
        data_dir = data_dir or self.tmp_path / "data"
        cfg_path = self.tmp_path / f"storepulse-{self.count}.toml"
        cfg_path.write_text(body if raw_config else self.config_text(body, port, data_dir))
        proc = spawn(["run", "-c", str(cfg_path)], self.tmp_path / f"daemon-{self.count}.log", port, env)
        proc.extra["config_path"] = cfg_path
        proc.extra["data_dir"] = data_dir
        self.procs.append(proc)
        if wait:
            self.wait_healthy(proc)
        return proc

    def wait_healthy(self, proc: Proc, timeout: float = 30.0) -> None:
        def ok() -> bool:
            if proc.popen.poll() is not None:
                raise AssertionError(f"daemon exited with {proc.popen.returncode}:\n{proc.log()[-3000:]}")
            return http_get(proc.url + "/healthz", timeout=1)[0] == 200
        wait_until(ok, timeout, what="daemon /healthz")

    def close(self) -> None:
        for p in self.procs:
            try:
                p.kill()
            except Exception:  # noqa: BLE001
                pass
            # And whatever it started (the recommendations replica): its own session, see spawn().
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p.popen.pid, signal.SIGKILL)


@pytest.fixture
def daemon_factory(tmp_path: Path) -> Iterator[DaemonFactory]:
    factory = DaemonFactory(tmp_path)
    try:
        yield factory
    finally:
        factory.close()


@pytest.fixture
def storefront(tmp_path: Path) -> Iterator[Proc]:
    """A storefront on a free loopback port at 2,000 events/s."""
    port = free_port()
    proc = spawn(["storefront", "--port", str(port), "--rate", "2000", "--seed", "7"], tmp_path / "storefront.log", port)
    try:
        wait_until(lambda: http_get(proc.url + "/healthz", timeout=1)[0] == 200, 20, what="storefront /healthz")
        yield proc
    finally:
        proc.kill()
