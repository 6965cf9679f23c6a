"""[storage.retention]: the config and which date= partitions a sweep deletes (pure)."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st

from daemon.config import RetentionConfig, parse_config
from daemon.errors import ConfigErrors
from daemon.stores.retention import DAY_MS, archive_time, day_end_ms, expired_days, is_expired, partition_day, table_kind

DAYS = st.dates(min_value=dt.date(1971, 1, 1), max_value=dt.date(2100, 12, 31))
NOW = st.integers(min_value=0, max_value=4_200_000_000_000)
KEEP = st.integers(min_value=1, max_value=400 * DAY_MS)


def _ms(t: dt.datetime) -> int:
    return round(t.replace(tzinfo=dt.timezone.utc).timestamp() * 1000)


@given(DAYS, NOW, KEEP)
def test_a_partition_expires_exactly_when_its_newest_possible_row_is_older_than_the_retention(day, now_ms, keep_ms):
    newest_ms = day_end_ms(day) - 1
    assert newest_ms == _ms(dt.datetime.combine(day, dt.time(23, 59, 59, 999_000)))
    assert is_expired(day, now_ms, keep_ms) == (now_ms - newest_ms > keep_ms)


@given(st.lists(DAYS, unique=True), NOW, KEEP)
def test_expired_days_are_an_oldest_first_prefix_of_the_sorted_days(days, now_ms, keep_ms):
    out = expired_days(days, now_ms, keep_ms)
    assert out == sorted(days)[:len(out)]
    assert all(not is_expired(d, now_ms, keep_ms) for d in days if d not in out)


def test_the_example_in_the_docstring():
    """events = "7d": date=2026-11-01 goes at 2026-11-09 00:00 UTC, not a millisecond before."""
    at = _ms(dt.datetime(2026, 11, 9))
    assert is_expired(dt.date(2026, 11, 1), at, 7 * DAY_MS)
    assert not is_expired(dt.date(2026, 11, 1), at - 1, 7 * DAY_MS)
    assert not is_expired(dt.date(2026, 11, 2), at, 7 * DAY_MS)


def test_partition_names():
    assert partition_day("date=2026-11-01") == dt.date(2026, 11, 1)
    for name in ("date=__HIVE_DEFAULT_PARTITION__", "date=2026-13-01", "day=2026-11-01", "date", "part-1.arrow"):
        assert partition_day(name) is None
    assert table_kind("windows/sales_by_category") == "windows" and table_kind("events") == "events"


def test_retention_config_defaults_to_keeping_everything():
    cfg = parse_config({})
    assert cfg.storage.retention == RetentionConfig() and not cfg.storage.retention.enabled


def test_retention_config_reads_each_table():
    cfg = parse_config({"storage": {"retention": {"events": "7d", "windows": "400d", "deadletter": "36h"}}})
    r = cfg.storage.retention
    assert r.enabled
    assert (r.keep_ms("events"), r.keep_ms("deadletter"), r.keep_ms("windows"), r.keep_ms("anomalies")) == (
        7 * DAY_MS, 36 * 3_600_000, 400 * DAY_MS, None)
    assert r.keep_ms("state") is None


def test_retention_config_problems_name_the_key():
    with pytest.raises(ConfigErrors) as info:
        parse_config({"storage": {"retention": {"events": "a week", "event": "7d", "windows": "0d"}}})
    assert sorted(map(str, info.value.errors)) == [
        "storage.retention.event: unknown key",
        "storage.retention.events: bad duration 'a week': use a number and one of ms, s, m, h, d (e.g. \"250ms\", \"5s\")",
        "storage.retention.windows: must be greater than zero",
    ]
    with pytest.raises(ConfigErrors) as info:
        parse_config({"storage": {"retention": "30d"}})
    assert [str(e) for e in info.value.errors] == ["storage.retention: expected a table, got a string"]


@given(NOW, st.one_of(st.none(), NOW))
def test_archive_time_is_the_watermark_never_past_the_wall_clock(wall_ms, watermark_ms):
    """A wall clock set far ahead deletes nothing the events have not passed; no event yet, no time."""
    t = archive_time(wall_ms, watermark_ms)
    assert t is None if watermark_ms is None else t == min(wall_ms, watermark_ms)
