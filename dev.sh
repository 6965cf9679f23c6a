#!/usr/bin/env bash
# StorePulse developer entry point: `./dev.sh run` (storefront + daemon), `./dev.sh test`, `./dev.sh bench`.
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

cmd=${1:-help}
shift || true
case "$cmd" in
  setup)
    setup ;;
  run)
    setup
    "$VENV/bin/storepulse" storefront --port 8900 --rate "${RATE:-500}" --seed 1 &
    sf=$!
    trap 'kill $sf 2>/dev/null || true' EXIT INT TERM
    "$VENV/bin/storepulse" run -c "${STOREPULSE_CONFIG:-config/storepulse.toml}" "$@" ;;
  test)
    setup
    # Three workers on two cores (with two, ~24% of the cores' time sat idle: tests wait on daemons), a
    # test file each at a time (module fixtures run once); TEST_WORKERS=0 runs in-process.
    "$VENV/bin/python" -m pytest -m "not slow" -q -n "${TEST_WORKERS:-3}" --dist loadfile "$@" ;;
  bench)
    setup
    "$VENV/bin/python" -m benchmarks.run "$@" ;;
  *)
    echo "usage: ./dev.sh run | test [pytest args] | bench | setup" >&2
    exit 2 ;;
esac
