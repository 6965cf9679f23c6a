#!/bin/sh
# Install promtool (Debian's `prometheus` package) and systemd-analyze (`systemd`) for the ops tests.
# Quietly does nothing when both are present, when not root, or when there is no apt-get;
# the tests that need a missing tool then skip and say which one.
set -eu

missing=""
command -v promtool >/dev/null 2>&1 || missing="$missing prometheus"
command -v systemd-analyze >/dev/null 2>&1 || missing="$missing systemd"
[ -n "$missing" ] || exit 0

if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "install-ops-tools: skipped (need root and apt-get for:$missing)" >&2
    exit 0
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
# --no-install-recommends keeps the prometheus server's web assets and friends out.
apt-get install -y -qq --no-install-recommends $missing >/dev/null
# The prometheus package may have started its server; CI needs only promtool.
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    systemctl disable --now prometheus >/dev/null 2>&1 || true
fi
echo "install-ops-tools: installed$missing" >&2
