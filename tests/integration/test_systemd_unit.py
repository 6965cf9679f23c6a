"""systemd/storepulse.service: the settings the contract names, `systemd-analyze verify` silent, and
`systemd-analyze security --offline=true` rating it at most 2.0 ("OK")."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

UNIT = REPO / "systemd" / "storepulse.service"
INSTALLED_PATH = "/usr/local/bin/storepulse"
MAX_EXPOSURE = 2.0
needs_analyze = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                   reason="systemd-analyze not installed (apt-get install systemd; .ci/install-ops-tools.sh)")


def unit_settings() -> dict[str, list[str]]:
    """`Key` → every value it is given (a unit file may repeat keys)."""
    out: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        out.setdefault(key.strip(), []).append(value.strip())
    return out


@pytest.fixture
def installed_unit(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at an installed `storepulse` (or a stand-in that runs this tree)."""
    exe = shutil.which("storepulse")
    if exe is None:
        stub = tmp_path / "bin" / "storepulse"
        stub.parent.mkdir()
        stub.write_text(f"#!/bin/sh\ncd {REPO} && exec {sys.executable} -m daemon \"$@\"\n")
        stub.chmod(0o755)
        exe = str(stub)
    unit = tmp_path / "storepulse.service"
    unit.write_text(UNIT.read_text().replace(INSTALLED_PATH, exe))
    return unit


def test_unit_declares_the_contract() -> None:
    """Type=notify with a watchdog, SIGHUP reload, a dynamic user with state and config dirs, a strict sandbox."""
    s = unit_settings()
    assert s["Type"] == ["notify"]
    assert s["ExecStart"][0].startswith(f"{INSTALLED_PATH} run -c ")
    assert s["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert s["WatchdogSec"] and s["TimeoutStopSec"]
    for key in ("DynamicUser", "NoNewPrivileges", "PrivateTmp", "PrivateDevices", "ProtectHome",
                "ProtectKernelTunables", "ProtectControlGroups", "RestrictNamespaces", "MemoryDenyWriteExecute"):
        assert s[key] == ["yes"], key
    assert s["ProtectSystem"] == ["strict"]
    assert s["StateDirectory"] == ["storepulse"] and s["ConfigurationDirectory"] == ["storepulse"]
    assert s["CapabilityBoundingSet"] == [""]
    assert s["Restart"] == ["on-failure"]


def test_readme_covers_install_enable_logs_reload() -> None:
    """systemd/README.md says how to install, enable, read the journal and reload."""
    text = (REPO / "systemd" / "README.md").read_text()
    for phrase in ("## Install", "systemctl enable --now storepulse", "journalctl -u storepulse",
                   "systemctl reload storepulse"):
        assert phrase in text, phrase


@needs_analyze
def test_systemd_analyze_verify_is_silent(installed_unit: Path) -> None:
    """`systemd-analyze verify` prints nothing and exits 0."""
    out = subprocess.run(["systemd-analyze", "verify", str(installed_unit)], cwd=installed_unit.parent,
                         capture_output=True, text=True, timeout=60, env={**os.environ, "SYSTEMD_LOG_COLOR": "0"})
    assert (out.returncode, out.stdout, out.stderr) == (0, "", "")


@needs_analyze
def test_systemd_analyze_security_rates_it_ok(installed_unit: Path) -> None:
    """`systemd-analyze security --offline=true` rates the unit at most 2.0, "OK"."""
    out = subprocess.run(["systemd-analyze", "security", "--offline=true", "--no-pager", str(installed_unit)],
                         cwd=installed_unit.parent, capture_output=True, text=True, timeout=60)
    if "--offline" in out.stderr and out.returncode != 0:
        pytest.skip(f"this systemd-analyze has no --offline: {out.stderr.strip()[:200]}")
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+) (\w+)", out.stdout)
    assert match, out.stdout[-2000:] + out.stderr
    assert float(match.group(1)) <= MAX_EXPOSURE, out.stdout
    assert match.group(2) == "OK", out.stdout
