#!/usr/bin/env bash
# StorePulse developer entry point: `./dev.sh run` (storefront + daemon), `./dev.sh test`, `./dev.sh bench`,
# `./dev.sh soak` (hours of event time at a steady rate: benchmarks/soak.py).
# Creates .venv and installs the project on first use; needs only python3 (>= 3.11) and pip.
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
VENV=.venv

setup() {
  if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
  fi
  # Installed again when the dependencies or the compiled loops' sources (setup.py) change.
  local stamp="$VENV/.installed-$(cat pyproject.toml setup.py $(find daemon -name "*.pyx" | sort) | sha1sum | cut -c1-12)"
  if [ ! -e "$stamp" ]; then
    "$VENV/bin/python" -m pip install -q --upgrade pip
    "$VENV/bin/python" -m pip install -q -e '.[test]'
    rm -f "$VENV"/.installed-*
    touch "$stamp"
  fi
}

# The package's bytecode, written even where PYTHONDONTWRITEBYTECODE is set (this machine's image sets it):
# without it every daemon a test starts compiles ~90 modules from source again (~0.1 s of CPU each time).
# Only the files changed since the last call are compiled.
bytecode() {
  "$VENV/bin/python" -m compileall -q daemon benchmarks tests >/dev/null
}

cmd=${1:-help}
shift || true
case "$cmd" in
  setup)
    setup ;;
  run)
    setup
    bytecode
    "$VENV/bin/storepulse" storefront --port 8900 --rate "${RATE:-500}" --seed 1 &
    sf=$!
    trap 'kill $sf 2>/dev/null || true' EXIT INT TERM
    "$VENV/bin/storepulse" run -c "${STOREPULSE_CONFIG:-config/storepulse.toml}" "$@" ;;
  test)
    setup
    bytecode
    # Three workers on two cores (with two, ~24% of the cores' time sat idle: tests wait on daemons), a
    # test file each at a time (module fixtures run once); TEST_WORKERS=0 runs in-process.
    "$VENV/bin/python" -m pytest -m "not slow" -q -n "${TEST_WORKERS:-3}" --dist loadfile "$@" ;;
  bench)
    setup
    "$VENV/bin/python" -m benchmarks.run "$@" ;;
  soak)
    setup
    "$VENV/bin/python" -m benchmarks.soak "$@" ;;
  *)
    echo "usage: ./dev.sh run | test [pytest args] | bench | soak | setup" >&2
    exit 2 ;;
esac
