"""Durations and sizes."""

import pytest
from hypothesis import given, strategies as st

from daemon.units import parse_duration_ms, parse_duration_s, parse_size_bytes


def test_durations_in_every_unit():
    """Every unit of the contract parses to the right number of seconds."""
    assert parse_duration_s("250ms") == 0.25
    assert parse_duration_s("5s") == 5
    assert parse_duration_s("1m") == 60
    assert parse_duration_s("2h") == 7200
    assert parse_duration_s("1d") == 86400
    assert parse_duration_ms("1.5s") == 1500


@pytest.mark.parametrize("bad", ["", "5", "5 sec", "-1s", "fast", "1w"])
def test_bad_durations_are_refused(bad):
    """A duration without a known unit is a ValueError naming the value."""
    with pytest.raises(ValueError, match="duration"):
        parse_duration_s(bad)


def test_sizes():
    """Binary and decimal size units, and plain integers."""
    assert parse_size_bytes("4MiB") == 4 * 2**20
    assert parse_size_bytes("1GB") == 10**9
    assert parse_size_bytes(123) == 123
    with pytest.raises(ValueError):
        parse_size_bytes("4 lots")


@given(st.integers(min_value=0, max_value=10**9))
def test_ms_round_trip(ms):
    """An integer count of ms written as "<n>ms" reads back exactly."""
    assert parse_duration_ms(f"{ms}ms") == ms
