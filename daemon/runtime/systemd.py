"""sd_notify over the NOTIFY_SOCKET datagram socket (READY, WATCHDOG, STATUS, STOPPING; no-op without it),
and the policy that withholds WATCHDOG=1 while the pipeline is wedged so systemd restarts the daemon.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# A ping goes out once this fraction of the ping interval (half of WATCHDOG_USEC) has passed, so a
# probe tick landing just short of the interval does not postpone it by a whole tick.
PING_EARLY_FRACTION = 0.9
STATUS_INTERVAL_S = 5.0
MIN_COMMIT_STALL_S = 5.0
DEFAULT_WATCHDOG_USEC = 30_000_000     # bounds for STATUS when systemd set no watchdog


class Notifier:
    """Sends systemd notify messages; does nothing when NOTIFY_SOCKET is unset."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        addr = env.get("NOTIFY_SOCKET", "")
        if addr.startswith("@"):
            addr = "\0" + addr[1:]
        self._addr = addr or None
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        enabled = usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid()))
        # systemd's advice (sd_watchdog_enabled(3)): ping at half the timeout.
        self.watchdog_usec = int(usec) if enabled else None
        self.watchdog_interval_s = int(usec) / 2_000_000 if enabled else None
        self._sock: socket.socket | None = None

    @property
    def enabled(self) -> bool:
        return self._addr is not None

    def notify(self, *lines: str) -> None:
        if self._addr is None:
            return
        if self._sock is None:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        try:
            self._sock.sendto("\n".join(lines).encode(), self._addr)
        except OSError:
            pass  # systemd gone or socket full: notifying is best effort

    def ready(self, status: str = "") -> None:
        self.notify("READY=1", *([f"STATUS={status}"] if status else []))

    def watchdog(self) -> None:
        self.notify("WATCHDOG=1")

    def status(self, text: str) -> None:
        self.notify(f"STATUS={text}")

    def stopping(self) -> None:
        self.notify("STOPPING=1")

    def reloading(self) -> None:
        self.notify("RELOADING=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


@dataclass(frozen=True, slots=True, kw_only=True)
class WatchdogBounds:
    """How far the loop may lag and how long pending work may wait for a commit before we stop pinging."""

    max_loop_lag_ms: float
    max_commit_age_ms: float

    @classmethod
    def for_watchdog(cls, watchdog_usec: int | None, commit_interval_s: float) -> WatchdogBounds:
        """Bounds for a WatchdogSec of `watchdog_usec` (None or 0: systemd's usual 30 s).

        A loop late by more than half the timeout has already missed a ping; a commit may stall
        for the whole timeout (at least 5 s and 10 commit intervals: a slow fsync is not a wedge).
        """
        timeout_s = (watchdog_usec or DEFAULT_WATCHDOG_USEC) / 1_000_000
        return cls(max_loop_lag_ms=timeout_s / 2 * 1000,
                   max_commit_age_ms=max(timeout_s, MIN_COMMIT_STALL_S, 10 * commit_interval_s) * 1000)


def wedged_reason(loop_lag_ms: float, last_commit_age_ms: float, pending_work: bool, bounds: WatchdogBounds,
                  flush_running_ms: float = 0.0) -> str:
    """Why the daemon counts as wedged ("" when healthy).

    `pending_work` is true while the runner holds uncommitted changes, queued deliveries or a
    commit in flight; without it an old commit only means nothing happened. `flush_running_ms`:
    how long the background Arrow flush of the archive has run. The commits no longer wait for
    it, so a hung one (a disk that stopped answering) would otherwise go unnoticed while the
    outbox grows; it gets the commit's bound.
    """
    if loop_lag_ms > bounds.max_loop_lag_ms:
        return f"event loop lag {loop_lag_ms / 1000:.1f}s > {bounds.max_loop_lag_ms / 1000:.1f}s"
    if pending_work and last_commit_age_ms > bounds.max_commit_age_ms:
        return f"no commit for {last_commit_age_ms / 1000:.1f}s with work pending (> {bounds.max_commit_age_ms / 1000:.1f}s)"
    if flush_running_ms > bounds.max_commit_age_ms:
        return f"an Arrow flush running for {flush_running_ms / 1000:.1f}s (> {bounds.max_commit_age_ms / 1000:.1f}s)"
    return ""


def should_feed_watchdog(loop_lag_ms: float, last_commit_age_ms: float, pending_work: bool, bounds: WatchdogBounds,
                         flush_running_ms: float = 0.0) -> bool:
    """True when WATCHDOG=1 may be sent: the loop turns, and commits and flushes keep up."""
    return not wedged_reason(loop_lag_ms, last_commit_age_ms, pending_work, bounds, flush_running_ms)


def format_status(*, events_per_s: float, watermark_lag_ms: float | None, queued: int, wedged: str = "") -> str:
    """The one-line STATUS= text `systemctl status` shows."""
    if wedged:
        return f"wedged: {wedged}"
    lag = "no watermark yet" if watermark_lag_ms is None else f"watermark lag {watermark_lag_ms / 1000:.1f}s"
    return f"{events_per_s:.0f} events/s, {lag}, {queued} deliveries queued"


class ServiceHeartbeat:
    """Called on every monitor tick: sends WATCHDOG=1 about every half of WATCHDOG_USEC while the
    pipeline is healthy, and STATUS= every few seconds (at once when the verdict changes).

    Time comes in as `now_s` (monotonic); the only I/O is through the Notifier.
    """

    def __init__(self, notifier: Notifier, bounds: WatchdogBounds, *, log: Any = None,
                 status_interval_s: float = STATUS_INTERVAL_S) -> None:
        self.notifier = notifier
        self.bounds = bounds
        self.log = log
        self.status_interval_s = status_interval_s
        self.wedged = ""
        self._last_ping_s: float | None = None
        self._last_status_s: float | None = None
        self._last_count: tuple[int, float] | None = None
        self._rate = 0.0
        self._pending_since_s: float | None = None

    def tick(self, now_s: float, *, loop_lag_ms: float, accepted: int, last_commit_age_ms: float,
             pending_work: bool, watermark_lag_ms: float | None, queued: int, flush_running_ms: float = 0.0) -> bool:
        """Decide and notify; return whether the daemon counts as healthy.

        Work that turned up after a long idle spell has waited only since it turned up, not since
        the last commit: the age used is the smaller of the two.
        """
        if not pending_work:
            self._pending_since_s = None
        elif self._pending_since_s is None:
            self._pending_since_s = now_s
        waited_ms = last_commit_age_ms
        if self._pending_since_s is not None:
            waited_ms = min(waited_ms, (now_s - self._pending_since_s) * 1000)
        reason = wedged_reason(loop_lag_ms, waited_ms, pending_work, self.bounds, flush_running_ms)
        changed = bool(reason) != bool(self.wedged)    # the figures in the text change every tick
        if changed and self.log is not None:
            if reason:
                self.log.error("watchdog_withheld", reason=reason)
            else:
                self.log.warning("watchdog_resumed", after=self.wedged)
        self.wedged = reason
        interval = self.notifier.watchdog_interval_s
        if not reason and interval:
            if self._last_ping_s is None or now_s - self._last_ping_s >= interval * PING_EARLY_FRACTION:
                self.notifier.watchdog()
                self._last_ping_s = now_s
        self._measure(now_s, accepted)
        if changed or self._last_status_s is None or now_s - self._last_status_s >= self.status_interval_s:
            self.notifier.status(format_status(events_per_s=self._rate, watermark_lag_ms=watermark_lag_ms,
                                               queued=queued, wedged=reason))
            self._last_status_s = now_s
        return not reason

    def _measure(self, now_s: float, accepted: int) -> None:
        # The rate over the last status interval, so STATUS shows a steady figure.
        if self._last_count is None:
            self._last_count = (accepted, now_s)
            return
        count0, t0 = self._last_count
        if now_s - t0 >= self.status_interval_s:
            self._rate = max(0, accepted - count0) / (now_s - t0)
            self._last_count = (accepted, now_s)
