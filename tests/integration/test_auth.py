"""Bearer-token auth on a real daemon: 401 without or with a wrong token, 200 with it, /healthz open,
a non-loopback listen refused without a token, and the token never echoed in logs or answers."""

from __future__ import annotations

import json
import subprocess
import urllib.error
import urllib.request
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, DaemonFactory, http_get, http_post, wait_until

pytestmark = pytest.mark.timeout(120)

TOKEN = "sp-test-token-0123456789abcdef"
PIPELINE = """
[sources.webhook]
type = "ingest"

[[aggregations]]
name = "events_by_type"
group_by = ["type"]
window = { type = "tumbling", size = "10s" }
metrics = { events = "count" }
"""


def bearer(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def config(tmp_path: Path, listen: str, token_file: str | None) -> str:
    http = f'[http]\nlisten = "{listen}"\n'
    if token_file is not None:
        http += f'token_file = "{token_file}"\n'
    return http + PIPELINE


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    path.chmod(0o600)
    return path


@pytest.fixture
def guarded(daemon_factory: DaemonFactory, tmp_path: Path, token_file: Path):
    return daemon_factory.start(config(tmp_path, "127.0.0.1:{port}", str(token_file)))


@pytest.mark.parametrize("path", ["/stats", "/metrics", "/readyz", "/windows/events_by_type", "/anomalies",
                                  "/trending", "/no-such-route"])
def test_routes_need_the_token(guarded, path: str) -> None:
    """Every route but /healthz answers 401 without a token or with a wrong one."""
    for headers in ({}, bearer("wrong-token-0123456789abcdef"), bearer(TOKEN + "x"), bearer(TOKEN[:-1]),
                    {"Authorization": f"Basic {TOKEN}"}, {"Authorization": TOKEN}):
        status, body = http_get(guarded.url + path, headers=headers)
        assert status == 401, (path, headers, status)
        assert TOKEN.encode() not in body


def test_the_right_token_opens_every_route(guarded) -> None:
    """With `Authorization: Bearer <token>` the routes answer as without auth (scheme case-insensitive)."""
    assert http_get(guarded.url + "/stats", headers=bearer())[0] == 200
    assert http_get(guarded.url + "/metrics", headers=bearer())[0] == 200
    assert http_get(guarded.url + "/stats", headers={"Authorization": f"bearer {TOKEN}"})[0] == 200
    assert http_get(guarded.url + "/no-such-route", headers=bearer())[0] == 404


def test_healthz_is_open(guarded) -> None:
    """/healthz needs no token, so a load balancer can probe it."""
    assert http_get(guarded.url + "/healthz")[0] == 200


def test_ingest_needs_the_token(guarded) -> None:
    """POST /ingest is refused without the token and accepted with it."""
    event = json.dumps({"event_id": "a1", "ts": 1_714_521_600_000, "type": "view", "user_id": "u", "item_id": "i"})
    assert http_post(guarded.url + "/ingest", event.encode())[0] == 401
    assert http_post(guarded.url + "/ingest", event.encode(), headers=bearer())[0] == 202


def test_unauthorized_answer_names_the_scheme(guarded) -> None:
    """A 401 carries WWW-Authenticate: Bearer, as RFC 6750 asks."""
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(guarded.url + "/stats", timeout=5)
    assert err.value.code == 401
    assert err.value.headers["WWW-Authenticate"].startswith("Bearer")


def test_token_never_leaks(guarded) -> None:
    """The token appears in neither the log, /stats nor /metrics."""
    for path in ("/stats", "/metrics", "/readyz"):
        assert TOKEN.encode() not in http_get(guarded.url + path, headers=bearer())[1]
    http_get(guarded.url + "/stats", headers=bearer("wrong-token-0123456789abcdef"))
    guarded.stop()
    assert TOKEN not in guarded.log()


def test_non_loopback_listen_without_token_refuses_to_start(daemon_factory: DaemonFactory, tmp_path: Path) -> None:
    """`listen = "0.0.0.0:..."` without http.token_file exits 1 with a one-line reason, before listening."""
    proc = daemon_factory.start(config(tmp_path, "0.0.0.0:{port}", None), wait=False)
    assert proc.popen.wait(30) == 1
    assert "http.token_file: required when listen is not a loopback address (0.0.0.0)" in proc.log()
    assert not [e for e in proc.log_events() if e.get("event") == "started"]


def test_check_config_reports_the_missing_token(tmp_path: Path) -> None:
    """check-config names the key and the reason for a non-loopback listen without a token."""
    cfg = tmp_path / "c.toml"
    cfg.write_text(config(tmp_path, "0.0.0.0:8787", None).replace("{port}", "8787")
                   + f'\n[storage]\ndata_dir = "{tmp_path / "data"}"\n')
    out = subprocess.run([sys.executable, "-m", "daemon", "check-config", "-c", str(cfg)], cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    assert "http.token_file: required when listen is not a loopback address (0.0.0.0)" in out.stderr


@pytest.mark.parametrize(("content", "message"), [
    ("", "is empty"),
    ("short", "at least 16 characters"),
    ("has a space in it 0123456789", "printable ASCII without spaces"),
])
def test_unusable_token_file_refuses_to_start(daemon_factory: DaemonFactory, tmp_path: Path, content: str,
                                              message: str) -> None:
    """An empty, short or unprintable token file is a config error (exit 1), never a silently open port."""
    path = tmp_path / "token"
    path.write_text(content)
    proc = daemon_factory.start(config(tmp_path, "0.0.0.0:{port}", str(path)), wait=False)
    assert proc.popen.wait(30) == 1
    assert f"http.token_file: {path}" in proc.log() and message in proc.log()
    if content:
        assert content not in proc.log().replace(str(path), "")


def test_missing_token_file_refuses_to_start(daemon_factory: DaemonFactory, tmp_path: Path) -> None:
    """A token_file that cannot be read stops the start with the path and the OS reason."""
    proc = daemon_factory.start(config(tmp_path, "0.0.0.0:{port}", str(tmp_path / "nope")), wait=False)
    assert proc.popen.wait(30) == 1
    assert "http.token_file: cannot read" in proc.log()


def test_all_interfaces_with_token_serves_with_auth(daemon_factory: DaemonFactory, tmp_path: Path,
                                                    token_file: Path) -> None:
    """0.0.0.0 with a token starts, and the token guards it."""
    proc = daemon_factory.start(config(tmp_path, "0.0.0.0:{port}", str(token_file)))
    assert http_get(proc.url + "/stats")[0] == 401
    wait_until(lambda: http_get(proc.url + "/stats", headers=bearer())[0] == 200, 10, what="authorised /stats")

