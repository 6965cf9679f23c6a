"""Retry delays as a value: exponential backoff with full or decorrelated jitter, and Retry-After (pure).

Randomness is passed in (`rng`), so a schedule is reproducible under a seeded `random.Random`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from datetime import timezone
from email.utils import parsedate_to_datetime
from typing import Protocol

JITTERS = ("full", "decorrelated")
MAX_RETRY_AFTER_S = 300.0
_SECONDS = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*$")


class Rng(Protocol):
    def uniform(self, a: float, b: float) -> float: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class Backoff:
    """An immutable retry schedule; `next(rng)` returns the delay to wait and the advanced schedule.

    `full` jitter draws uniform(0, min(cap, base * 2**attempt)) (AWS "full jitter");
    `decorrelated` draws min(cap, uniform(base, 3 * previous delay)). A server's Retry-After,
    when given, replaces the drawn delay (bounded by `max_retry_after_s`, so it may exceed `cap_s`).
    """

    base_s: float = 0.5
    cap_s: float = 30.0
    jitter: str = "full"
    max_retry_after_s: float = MAX_RETRY_AFTER_S
    attempt: int = 0            # failures since the last reset
    previous_s: float = 0.0     # the last drawn delay (decorrelated jitter grows from it)

    def __post_init__(self) -> None:
        if not 0 < self.base_s <= self.cap_s:
            raise ValueError(f"need 0 < base_s <= cap_s, got base_s={self.base_s} cap_s={self.cap_s}")
        if self.jitter not in JITTERS:
            raise ValueError(f"jitter must be one of {JITTERS}, got {self.jitter!r}")
        if self.max_retry_after_s < 0:
            raise ValueError("max_retry_after_s must be >= 0")

    @property
    def ceiling_s(self) -> float:
        """The largest delay the next draw can give (before any Retry-After)."""
        if self.jitter == "full":
            # min() on the exponent keeps 2.0**n finite after thousands of failures
            return min(self.cap_s, self.base_s * 2.0 ** min(self.attempt, 64))
        return min(self.cap_s, max(self.base_s, 3.0 * self.previous_s))

    def next(self, rng: Rng, retry_after_s: float | None = None) -> tuple[float, Backoff]:
        """The delay before the next attempt and the schedule one failure further."""
        ceiling = self.ceiling_s
        low = 0.0 if self.jitter == "full" else self.base_s
        drawn = min(max(rng.uniform(low, ceiling), low), ceiling)
        delay = drawn if retry_after_s is None else min(max(retry_after_s, 0.0), self.max_retry_after_s)
        return delay, replace(self, attempt=self.attempt + 1, previous_s=drawn)

    def reset(self) -> Backoff:
        """The schedule after a success: back to the first, shortest delays."""
        return replace(self, attempt=0, previous_s=0.0)


def parse_retry_after(value: str | None, now_s: float) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP date); None when absent or invalid.

    `now_s` is the wall clock in epoch seconds, used for the HTTP-date form; a date in the past gives 0.
    """
    if not value:
        return None
    match = _SECONDS.match(value)
    if match is not None:
        return float(match.group(1))
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:   # "-0000" means UTC with no stated zone (RFC 5322)
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, when.timestamp() - now_s)
