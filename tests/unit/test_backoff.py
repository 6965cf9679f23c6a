"""Backoff: delays stay in bounds, grow to the cap, reset, and honour Retry-After."""

from __future__ import annotations

import random
from datetime import datetime, timezone
from email.utils import format_datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from daemon.sources.backoff import Backoff, parse_retry_after

bases = st.floats(min_value=0.001, max_value=10.0)
caps = st.floats(min_value=0.001, max_value=600.0)
seeds = st.integers(min_value=0, max_value=2**32)
jitters = st.sampled_from(["full", "decorrelated"])


def schedule(base_s: float, cap_s: float, jitter: str) -> Backoff:
    return Backoff(base_s=min(base_s, cap_s), cap_s=max(base_s, cap_s), jitter=jitter)


@given(bases, caps, jitters, seeds, st.integers(min_value=1, max_value=200))
def test_delays_stay_within_zero_and_cap(base_s, cap_s, jitter, seed, n):
    """Every drawn delay lies in [0, cap] (decorrelated: in [base, cap]) however many failures."""
    b = schedule(base_s, cap_s, jitter)
    rng = random.Random(seed)
    for _ in range(n):
        delay, b = b.next(rng)
        assert 0.0 <= delay <= b.cap_s
        if jitter == "decorrelated":
            assert delay >= b.base_s


@given(bases, caps, seeds)
def test_full_jitter_ceiling_doubles_until_the_cap(base_s, cap_s, seed):
    """Under full jitter the ceiling never shrinks, doubles each failure, and reaches the cap."""
    b = schedule(base_s, cap_s, "full")
    rng = random.Random(seed)
    ceilings = []
    for _ in range(40):
        ceilings.append(b.ceiling_s)
        _, b = b.next(rng)
    assert ceilings[0] == b.base_s
    assert all(a <= c for a, c in zip(ceilings, ceilings[1:]))
    assert all(c == min(b.cap_s, 2 * a) for a, c in zip(ceilings, ceilings[1:]))
    assert ceilings[-1] == b.cap_s


def test_full_jitter_delays_grow_on_average():
    """Later attempts wait longer on average than the first (the jitter does not hide the growth)."""
    rng = random.Random(7)
    first, late = [], []
    for _ in range(500):
        b = Backoff(base_s=0.1, cap_s=10.0)
        d0, b = b.next(rng)
        for _ in range(5):
            _, b = b.next(rng)
        d6, _ = b.next(rng)
        first.append(d0)
        late.append(d6)
    assert sum(late) / len(late) > 10 * sum(first) / len(first)


@given(bases, caps, jitters, seeds, st.integers(min_value=0, max_value=50))
def test_reset_restarts_the_schedule(base_s, cap_s, jitter, seed, n):
    """reset() after any number of failures gives the same schedule as a fresh Backoff."""
    fresh = schedule(base_s, cap_s, jitter)
    b = fresh
    rng = random.Random(seed)
    for _ in range(n):
        _, b = b.next(rng)
    assert b.reset() == fresh
    assert b.reset().next(random.Random(seed)) == fresh.next(random.Random(seed))


@given(bases, caps, jitters, seeds, st.floats(min_value=0.0, max_value=10_000.0))
def test_retry_after_replaces_the_delay_up_to_its_bound(base_s, cap_s, jitter, seed, retry_after_s):
    """A server's Retry-After is waited exactly, but never longer than max_retry_after_s."""
    b = schedule(base_s, cap_s, jitter)
    delay, after = b.next(random.Random(seed), retry_after_s)
    assert delay == min(retry_after_s, b.max_retry_after_s)
    assert after.attempt == 1


def test_next_is_pure():
    """next() leaves the Backoff it was called on unchanged and is reproducible with a seeded rng."""
    b = Backoff(base_s=0.5, cap_s=8.0, jitter="decorrelated")
    assert b.next(random.Random(1)) == b.next(random.Random(1))
    assert b.attempt == 0


def test_invalid_schedules_are_refused():
    """A zero base, a cap below the base or an unknown jitter is a ValueError."""
    for kwargs in ({"base_s": 0.0}, {"base_s": 2.0, "cap_s": 1.0}, {"jitter": "none"}):
        with pytest.raises(ValueError):
            Backoff(**kwargs)


def test_retry_after_parses_seconds_and_http_dates():
    """Retry-After is delta-seconds or an HTTP date relative to now; junk and absence give None."""
    now_s = 1_700_000_000.0
    later = datetime.fromtimestamp(now_s + 120, tz=timezone.utc)
    assert parse_retry_after("7", now_s) == 7.0
    assert parse_retry_after(" 1.5 ", now_s) == 1.5
    assert parse_retry_after(format_datetime(later, usegmt=True), now_s) == pytest.approx(120.0)
    assert parse_retry_after("Tue, 14 Nov 2023 22:13:20 GMT", now_s + 600) == 0.0
    for junk in (None, "", "-3", "soon", "inf", "nan"):
        assert parse_retry_after(junk, now_s) is None
