"""/metrics rendering: every /stats figure as a Prometheus series with conventional names and base units."""

from __future__ import annotations

import copy
import shutil
import subprocess
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from daemon.pipeline.watermark import NO_WATERMARK
from daemon.web.prometheus import REJECT_REASONS, render_metrics, unexported_figures


def sample_stats() -> dict[str, Any]:
    """A /stats document shaped like collect_stats() answers it: two sources, one aggregation."""
    source = {"name": "orders", "type": "http_poll", "state": "polling", "received": 120, "accepted": 118,
              "rejected": 2, "requests": 9, "errors": 1, "reconnects": 0, "last_error": "HTTP 503",
              "lag_ms": 1500, "connected": False}
    return {
        "version": "0.1.0",
        "uptime_s": 12.5,
        "events": {"received": 130, "accepted": 126, "rejected": 4, "rejected_by_reason": {"late": 1, "bad_type": 3},
                   "duplicate": 2, "late": 1, "dropped": 5},
        "pipeline": {"watermark_ms": 1_714_521_600_000, "closed_through_ms": 1_714_521_590_000, "idle_sources": ["webhook"], "batches": 14,
                     "events_processed": 129, "process_seconds": 0.0125,
                     "dedupe": {"ids": 126, "duplicates": 2, "evicted": 0}},
        "sources": {
            "orders": source,
            "webhook": {**source, "name": "webhook", "type": "ingest", "state": "listening", "received": 10,
                        "accepted": 8, "lag_ms": None, "connected": True, "last_error": ""},
        },
        "queues": {
            "orders": {"depth": 3, "deliveries": 1, "capacity": 10000, "overflow": "block", "dropped_events": 0,
                       "dropped_deliveries": 0, "blocked_puts": 4, "put_events": 120},
            "webhook": {"depth": 0, "deliveries": 0, "capacity": 500, "overflow": "drop_oldest",
                        "dropped_events": 5, "dropped_deliveries": 1, "blocked_puts": 0, "put_events": 10},
        },
        "aggregations": {"sales": {"open_windows": 4, "emitted_windows": 7, "events_folded": 60, "keys": 3,
                                   "overflowed": 0, "late": 0, "watermark_ms": 1_714_521_600_000, "late_events": 1}},
        "store": {"commit_seq": 42, "commits": 40, "last_commit_ms": 2.5, "avg_commit_ms": 1.75, "flushes": 3,
                  "last_flush_ms": 12.0, "outbox_rows": {"events": 30, "deadletter": 2},
                  "lmdb": {"path": "/var/lib/storepulse/state", "used_bytes": 65536, "map_size_bytes": 67108864,
                           "map_size_max_bytes": 68719476736, "map_grows": 0, "write_txns": 40,
                           "last_write_ms": 0.75, "readers": 2},
                  "arrow": {"root": "/var/lib/storepulse", "files_written": 6, "rows_written": 300,
                            "bytes_written": 123456, "partitions_deleted": 1, "files_deleted": 2,
                            "bytes_deleted": 4096, "partitions_compacted": 1, "files_merged": 40,
                            "files_on_disk": 12, "bytes_on_disk": 1_048_576}},
        "process": {"rss_bytes": 52_428_800, "max_rss_bytes": 60_000_000, "cpu_seconds": 3.25,
                    "loop_lag_ms": 12.5, "time_ms": 1_714_521_605_000, "gc_collections": 90,
                    "gc_full_collections": 1, "gc_seconds": 0.25, "gc_max_pause_ms": 40.0},
    }


def scrape(stats: dict[str, Any]) -> dict[str, Any]:
    """name → parsed family of one rendering."""
    text = render_metrics(lambda: stats).decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


def value(families: dict[str, Any], sample_name: str, **labels: str) -> float:
    for family in families.values():
        for s in family.samples:
            if s.name == sample_name and s.labels == labels:
                return s.value
    raise KeyError((sample_name, labels))


def test_every_stats_figure_is_exported() -> None:
    """No numeric /stats leaf is left without a series (text fields are excused by name)."""
    assert unexported_figures(sample_stats()) == []


def test_a_new_stats_figure_is_noticed() -> None:
    """A figure /stats gains later shows up as unexported until /metrics maps it."""
    stats = sample_stats()
    stats["pipeline"]["new_thing"] = 3
    stats["queues"]["orders"]["surprise_ms"] = 1
    assert unexported_figures(stats) == ["pipeline.new_thing", "queues.orders.surprise_ms"]


def test_names_follow_prometheus_conventions() -> None:
    """Every family has the storepulse_ prefix and HELP text; counters end in _total; no abbreviated units."""
    text = render_metrics(lambda: sample_stats()).decode()
    families = list(text_string_to_metric_families(text))
    assert len(families) > 50
    for f in families:
        assert f.name.startswith("storepulse_"), f.name
        assert f.documentation, f.name
        assert "_ms" not in f.name and "_s_" not in f.name
        for s in f.samples:
            assert s.name.endswith("_total") == (f.type == "counter"), s.name
    assert text.count("# TYPE ") == text.count("# HELP ") == len(families)


def test_milliseconds_become_seconds() -> None:
    """Millisecond figures are exported in seconds, epoch times as Unix seconds."""
    m = scrape(sample_stats())
    assert value(m, "storepulse_event_loop_lag_seconds") == pytest.approx(0.0125)
    assert value(m, "storepulse_watermark_seconds") == pytest.approx(1_714_521_600.0)
    assert value(m, "storepulse_closed_through_seconds") == pytest.approx(1_714_521_590.0)
    assert value(m, "storepulse_source_lag_seconds", source="orders") == pytest.approx(1.5)
    assert value(m, "storepulse_store_last_commit_duration_seconds") == pytest.approx(0.0025)
    assert value(m, "storepulse_lmdb_last_write_duration_seconds") == pytest.approx(0.00075)
    assert value(m, "storepulse_process_resident_memory_bytes") == 52_428_800
    assert value(m, "storepulse_process_gc_max_pause_seconds") == pytest.approx(0.040)
    assert value(m, "storepulse_process_gc_seconds_total") == pytest.approx(0.25)


def test_per_component_series_carry_labels() -> None:
    """Sources, queues, aggregations, reasons and outbox tables become labels."""
    m = scrape(sample_stats())
    assert value(m, "storepulse_source_events_received_total", source="webhook") == 10
    assert value(m, "storepulse_source_connected", source="webhook") == 1
    assert value(m, "storepulse_source_connected", source="orders") == 0
    assert value(m, "storepulse_queue_dropped_events_total", queue="webhook") == 5
    assert value(m, "storepulse_queue_capacity_events", queue="orders") == 10000
    assert value(m, "storepulse_aggregation_open_windows", aggregation="sales") == 4
    assert value(m, "storepulse_events_rejected_total", reason="bad_type") == 3
    assert value(m, "storepulse_store_outbox_rows", table="events") == 30
    assert value(m, "storepulse_build_info", version="0.1.0") == 1


def test_states_and_policies_are_one_hot() -> None:
    """Source state and queue overflow policy are 1 for the current value and 0 for the others."""
    m = scrape(sample_stats())
    assert value(m, "storepulse_source_state", source="orders", state="polling") == 1
    assert value(m, "storepulse_source_state", source="orders", state="backoff") == 0
    assert value(m, "storepulse_queue_overflow_policy", queue="webhook", policy="drop_oldest") == 1
    assert value(m, "storepulse_queue_overflow_policy", queue="webhook", policy="block") == 0
    assert value(m, "storepulse_source_idle", source="webhook") == 1
    assert value(m, "storepulse_source_info", source="webhook", type="ingest") == 1


def test_every_reject_reason_has_a_series_from_the_start() -> None:
    """Reasons not seen yet are exported as 0, so rate() works from the first rejection."""
    stats = sample_stats()
    stats["events"]["rejected_by_reason"] = {}
    m = scrape(stats)
    for reason in REJECT_REASONS:
        assert value(m, "storepulse_events_rejected_total", reason=reason) == 0


def test_missing_values_have_no_sample() -> None:
    """No watermark yet and an unknown source lag give no sample instead of a sentinel."""
    stats = sample_stats()
    stats["pipeline"]["watermark_ms"] = stats["pipeline"]["closed_through_ms"] = NO_WATERMARK
    stats["aggregations"]["sales"]["watermark_ms"] = NO_WATERMARK
    m = scrape(stats)
    assert m["storepulse_watermark_seconds"].samples == []
    assert m["storepulse_closed_through_seconds"].samples == []
    assert m["storepulse_aggregation_watermark_seconds"].samples == []
    with pytest.raises(KeyError):
        value(m, "storepulse_source_lag_seconds", source="webhook")


def test_a_partial_stats_document_still_renders() -> None:
    """A /stats without some sections renders what is there (a scrape never fails on shape)."""
    stats = sample_stats()
    del stats["store"], stats["sources"]
    m = scrape(stats)
    assert value(m, "storepulse_events_accepted_total") == 126
    assert m["storepulse_store_commits"].samples == []


def test_each_scrape_reads_a_fresh_snapshot() -> None:
    """Two renders share no state: the second shows the second snapshot only."""
    a, b = sample_stats(), copy.deepcopy(sample_stats())
    b["events"]["accepted"] = 999
    del b["sources"]["webhook"]
    assert value(scrape(a), "storepulse_events_accepted_total") == 126
    m = scrape(b)
    assert value(m, "storepulse_events_accepted_total") == 999
    with pytest.raises(KeyError):
        value(m, "storepulse_source_connected", source="webhook")


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed (Debian package `prometheus`)")
def test_promtool_accepts_the_rendering() -> None:
    """`promtool check metrics` prints nothing and exits 0 for a full rendering."""
    out = subprocess.run(["promtool", "check", "metrics"], input=render_metrics(lambda: sample_stats()),
                         capture_output=True, timeout=30)
    assert (out.returncode, out.stdout, out.stderr) == (0, b"", b"")
