"""/metrics: every /stats figure in the Prometheus text format, rendered by prometheus-client.

Names follow the Prometheus conventions: a `storepulse_` prefix, `_total` on counters, seconds
and bytes as units (the /stats `_ms` figures are divided by 1000), HELP and TYPE on every family.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest

from daemon.events import Reason
from daemon.pipeline.watermark import NO_WATERMARK
from daemon.web.context import CONTEXT
from daemon.web.stats import collect_stats

COUNTER, GAUGE = "counter", "gauge"
MS = 0.001
# Reasons a rejection can carry; each gets a series from the start so rate() sees the first one.
REJECT_REASONS = tuple(r.value for r in Reason if r is not Reason.DROPPED)
SOURCE_STATES = ("starting", "connected", "polling", "listening", "backoff", "stopped")
OVERFLOW_POLICIES = ("block", "drop_oldest", "drop_newest")
# /stats leaves that are text, or the same figure under another name, and so have no series.
NOT_EXPORTED = (
    "sources.*.name",           # the `source` label already
    "sources.*.last_error",     # free text; unbounded label values
    "aggregations.*.late_events",   # the pipeline-wide late count: storepulse_events_late_total
    "store.lmdb.path",
    "store.arrow.root",
    "process.time_ms",          # the wall clock at the snapshot; Prometheus stamps its own
    "replica.listen",           # configuration, not a figure
    "replica.pid",              # changes at every restart; storepulse_replica_starts_total counts them
    "replica.recs_cut",         # a commit seq, an identifier
    "replica.port",             # an address
    "process.arrow_pool_backend",   # which allocator, fixed for the process's life
    "process.heap_figures_age_s",   # how old the heap figures are (read at most every 10 s), not a figure of the process
)


@dataclass(frozen=True, slots=True)
class Fig:
    """One numeric /stats figure and the metric family it becomes."""

    key: str            # dotted path below the section (e.g. "dedupe.ids")
    name: str           # full metric name, `_total` included for counters
    kind: str           # COUNTER | GAUGE
    doc: str
    scale: float = 1.0  # multiplier to the base unit (MS for milliseconds)


SCALARS = (
    Fig("uptime_s", "storepulse_uptime_seconds", GAUGE, "Seconds since the daemon started."),
    Fig("events.received", "storepulse_events_received_total", COUNTER, "Events decoded from all sources (accepted or rejected)."),
    Fig("events.accepted", "storepulse_events_accepted_total", COUNTER, "Events folded into the pipeline."),
    Fig("events.duplicate", "storepulse_events_duplicate_total", COUNTER, "Events dropped as duplicates of an event_id seen within dedupe_ttl."),
    Fig("events.late", "storepulse_events_late_total", COUNTER, "Events older than the watermark when they arrived (dead-lettered)."),
    Fig("events.dropped", "storepulse_events_dropped_total", COUNTER, "Events dropped by full queues (overflow policy)."),
    Fig("pipeline.watermark_ms", "storepulse_watermark_seconds", GAUGE, "Pipeline watermark as a Unix time in seconds.", MS),
    Fig("pipeline.closed_through_ms", "storepulse_closed_through_seconds", GAUGE, "Windows ending at or before this Unix time in seconds are emitted (trails the watermark during a chunked close).", MS),
    Fig("pipeline.batches", "storepulse_pipeline_batches_total", COUNTER, "Event batches processed by the pipeline."),
    Fig("pipeline.events_processed", "storepulse_pipeline_events_processed_total", COUNTER, "Events processed by the pipeline, late and duplicate ones included."),
    Fig("pipeline.process_seconds", "storepulse_pipeline_process_seconds_total", COUNTER, "Seconds the pipeline spent folding events."),
    Fig("pipeline.dedupe.ids", "storepulse_dedupe_ids", GAUGE, "Event ids held by the dedupe filter."),
    Fig("pipeline.dedupe.duplicates", "storepulse_dedupe_duplicates_total", COUNTER, "Duplicates found by the dedupe filter."),
    Fig("pipeline.dedupe.evicted", "storepulse_dedupe_evicted_total", COUNTER, "Event ids evicted from the dedupe filter before their TTL (size bound)."),
    Fig("store.commit_seq", "storepulse_store_commit_sequence", GAUGE, "Sequence number of the last durable commit."),
    Fig("store.commits", "storepulse_store_commits_total", COUNTER, "Durable commits since start."),
    Fig("store.last_commit_ms", "storepulse_store_last_commit_duration_seconds", GAUGE, "Duration of the last commit in seconds.", MS),
    Fig("store.avg_commit_ms", "storepulse_store_commit_duration_seconds_average", GAUGE, "Mean commit duration since start in seconds.", MS),
    Fig("store.flushes", "storepulse_store_flushes_total", COUNTER, "Flushes of committed rows to Arrow files."),
    Fig("store.last_flush_ms", "storepulse_store_last_flush_duration_seconds", GAUGE, "Duration of the last Arrow flush in seconds.", MS),
    Fig("store.staged_bytes", "storepulse_store_staged_bytes_total", COUNTER, "Bytes of state segments written ahead of their commit (full state writes' rounds, large answer parts of the recommendations process)."),
    Fig("store.lmdb.used_bytes", "storepulse_lmdb_used_bytes", GAUGE, "Bytes of the LMDB map in use."),
    Fig("store.lmdb.map_size_bytes", "storepulse_lmdb_map_size_bytes", GAUGE, "Current LMDB map size in bytes."),
    Fig("store.lmdb.map_size_max_bytes", "storepulse_lmdb_map_size_max_bytes", GAUGE, "Largest LMDB map size allowed (storage.map_size_max) in bytes."),
    Fig("store.lmdb.map_grows", "storepulse_lmdb_map_grows_total", COUNTER, "Times the LMDB map was grown."),
    Fig("store.lmdb.recycles", "storepulse_lmdb_recycles_total", COUNTER,
        "Times the LMDB environment was reopened to release its page pool and mapped pages."),
    Fig("store.lmdb.write_txns", "storepulse_lmdb_write_transactions_total", COUNTER, "LMDB write transactions committed."),
    Fig("store.lmdb.last_write_ms", "storepulse_lmdb_last_write_duration_seconds", GAUGE, "Duration of the last LMDB write transaction in seconds.", MS),
    Fig("store.lmdb.readers", "storepulse_lmdb_readers", GAUGE, "LMDB reader slots in use."),
    Fig("store.arrow.files_written", "storepulse_arrow_files_written_total", COUNTER, "Arrow files written."),
    Fig("store.arrow.rows_written", "storepulse_arrow_rows_written_total", COUNTER, "Rows written to Arrow files."),
    Fig("store.arrow.bytes_written", "storepulse_arrow_written_bytes_total", COUNTER, "Bytes written to Arrow files."),
    Fig("store.arrow.partitions_deleted", "storepulse_arrow_partitions_deleted_total", COUNTER,
        "date= partitions of Arrow files deleted by storage.retention."),
    Fig("store.arrow.files_deleted", "storepulse_arrow_files_deleted_total", COUNTER, "Arrow files deleted by storage.retention."),
    Fig("store.arrow.bytes_deleted", "storepulse_arrow_deleted_bytes_total", COUNTER, "Bytes of Arrow files deleted by storage.retention."),
    Fig("store.arrow.partitions_compacted", "storepulse_arrow_partitions_compacted_total", COUNTER,
        "Past days' date= partitions whose small Arrow files were merged into a few."),
    Fig("store.arrow.files_merged", "storepulse_arrow_files_merged_total", COUNTER, "Arrow files merged away by compaction."),
    Fig("store.arrow.files_on_disk", "storepulse_arrow_files", GAUGE, "Arrow files below data_dir (counted at each upkeep pass, every 10 minutes, plus those written since)."),
    Fig("store.arrow.bytes_on_disk", "storepulse_arrow_bytes", GAUGE, "Bytes of the Arrow files below data_dir (counted at each upkeep pass, plus those written since)."),
    Fig("alerts.queued", "storepulse_alerts_queued", GAUGE, "Anomaly webhooks waiting to be sent."),
    Fig("alerts.sent", "storepulse_alerts_sent_total", COUNTER, "Anomaly webhooks delivered."),
    Fig("alerts.failed", "storepulse_alerts_failed_total", COUNTER, "Anomaly webhooks given up after all retries."),
    Fig("alerts.dropped", "storepulse_alerts_dropped_total", COUNTER, "Anomaly webhooks dropped because the alert queue was full."),
    Fig("http.open_connections", "storepulse_http_open_connections", GAUGE, "HTTP connections open now."),
    Fig("http.max_connections", "storepulse_http_max_connections", GAUGE, "The bound on open HTTP connections (http.max_connections)."),
    Fig("http.refused_connections", "storepulse_http_refused_connections_total", COUNTER, "Connections answered 503 and closed because http.max_connections were open."),
    Fig("replica.running", "storepulse_replica_running", GAUGE, "1 while the recommendations process runs."),
    Fig("replica.starts", "storepulse_replica_starts_total", COUNTER, "Recommendations processes started (restarts included)."),
    Fig("replica.resyncs", "storepulse_replica_resyncs_total", COUNTER, "Recommendations processes killed because they took nothing for 30 s."),
    Fig("replica.frames_sent", "storepulse_replica_frames_total", COUNTER, "Frames queued for the recommendations process."),
    Fig("replica.outbox_bytes", "storepulse_replica_outbox_bytes", GAUGE, "Bytes waiting to be written to the recommendations process."),
    Fig("replica.answers", "storepulse_replica_answers_total", COUNTER, "State changes received from the recommendations process (one per full state write)."),
    Fig("replica.waits", "storepulse_replica_outbox_waits_total", COUNTER, "Folds that waited for room in the recommendations process's outbox (back-pressure)."),
    Fig("replica.log_bytes", "storepulse_recommender_log_bytes", GAUGE, "Fold-log bytes kept for the recommendations process (after its last stored cut)."),
    Fig("replica.log_entries", "storepulse_recommender_log_entries", GAUGE, "Fold-log entries kept for the recommendations process."),
    Fig("replica.compactions", "storepulse_recommender_compactions_total", COUNTER, "Times the daemon folded the kept log into the recommender's stored state itself (no process answered)."),
    Fig("process.rss_bytes", "storepulse_process_resident_memory_bytes", GAUGE, "Resident set size in bytes."),
    Fig("process.max_rss_bytes", "storepulse_process_max_resident_memory_bytes", GAUGE, "Peak resident set size in bytes."),
    Fig("process.cpu_seconds", "storepulse_process_cpu_seconds_total", COUNTER, "User and system CPU time in seconds."),
    Fig("process.loop_lag_ms", "storepulse_event_loop_lag_seconds", GAUGE, "Last measured event-loop lag in seconds.", MS),
    Fig("process.gc_collections", "storepulse_process_gc_collections_total", COUNTER, "Cyclic garbage collections, all generations."),
    Fig("process.gc_full_collections", "storepulse_process_gc_full_collections_total", COUNTER, "Full (generation 2) garbage collections: each walks every tracked object."),
    Fig("process.gc_seconds", "storepulse_process_gc_seconds_total", COUNTER, "Seconds spent in cyclic garbage collections (every thread pauses meanwhile)."),
    Fig("process.gc_max_pause_ms", "storepulse_process_gc_max_pause_seconds", GAUGE, "The longest single garbage collection so far, in seconds.", MS),
    Fig("process.malloc_trims", "storepulse_process_malloc_trims_total", COUNTER, "malloc_trim calls (after large commits and once quiet): free heap pages, and pyarrow's pool's, given back to the kernel."),
    Fig("process.malloc_trim_seconds", "storepulse_process_malloc_trim_seconds_total", COUNTER, "Seconds spent in malloc_trim."),
    Fig("process.heap_in_use_bytes", "storepulse_process_heap_in_use_bytes", GAUGE, "glibc malloc: bytes allocated in its arenas."),
    Fig("process.heap_free_bytes", "storepulse_process_heap_free_bytes", GAUGE, "glibc malloc: bytes of free chunks in its arenas, resident or not (malloc_trim gives their whole pages back and this stays)."),
    Fig("process.heap_mmap_bytes", "storepulse_process_heap_mmap_bytes", GAUGE, "glibc malloc: bytes of large allocations in maps of their own."),
    Fig("process.heap_walk_ms", "storepulse_process_heap_walk_seconds", GAUGE, "How long glibc's last heap walk (mallinfo2, under the arena's lock; at most one every 10 s) took.", MS),
    Fig("process.python_blocks", "storepulse_process_python_blocks", GAUGE, "Memory blocks pymalloc has handed out (a count, not bytes)."),
    Fig("process.arrow_pool_bytes", "storepulse_process_arrow_pool_bytes", GAUGE, "Bytes allocated now from pyarrow's memory pool."),
    Fig("process.arrow_pool_max_bytes", "storepulse_process_arrow_pool_max_bytes", GAUGE, "High-water mark of pyarrow's memory pool, in bytes."),
)
PER_SOURCE = (
    Fig("received", "storepulse_source_events_received_total", COUNTER, "Events decoded from the source (accepted or rejected)."),
    Fig("accepted", "storepulse_source_events_accepted_total", COUNTER, "Events from the source that passed validation."),
    Fig("rejected", "storepulse_source_events_rejected_total", COUNTER, "Events from the source that failed decoding or validation."),
    Fig("requests", "storepulse_source_requests_total", COUNTER, "Polls, frames or POSTs handled by the source."),
    Fig("errors", "storepulse_source_errors_total", COUNTER, "Errors of the source (failed polls, connection errors)."),
    Fig("reconnects", "storepulse_source_reconnects_total", COUNTER, "Reconnects of the source."),
    Fig("lag_ms", "storepulse_source_lag_seconds", GAUGE, "Wall clock minus the newest event time seen from the source, in seconds.", MS),
    Fig("connected", "storepulse_source_connected", GAUGE, "1 while the source is connected."),
)
PER_QUEUE = (
    Fig("depth", "storepulse_queue_depth_events", GAUGE, "Events waiting in the queue."),
    Fig("deliveries", "storepulse_queue_depth_deliveries", GAUGE, "Deliveries (batches) waiting in the queue."),
    Fig("capacity", "storepulse_queue_capacity_events", GAUGE, "Queue capacity in events (queue_capacity)."),
    Fig("dropped_events", "storepulse_queue_dropped_events_total", COUNTER, "Events dropped by the queue's overflow policy."),
    Fig("dropped_deliveries", "storepulse_queue_dropped_deliveries_total", COUNTER, "Deliveries dropped by the queue's overflow policy."),
    Fig("blocked_puts", "storepulse_queue_blocked_puts_total", COUNTER, "Puts that waited for room (overflow = block)."),
    Fig("put_events", "storepulse_queue_put_events_total", COUNTER, "Events put into the queue."),
)
PER_AGGREGATION = (
    Fig("open_windows", "storepulse_aggregation_open_windows", GAUGE, "Windows (or sessions) open, per key."),
    Fig("emitted_windows", "storepulse_aggregation_emitted_windows_total", COUNTER, "Window results emitted."),
    Fig("events_folded", "storepulse_aggregation_events_folded_total", COUNTER, "Events folded into windows."),
    Fig("keys", "storepulse_aggregation_keys", GAUGE, "Group keys with open state."),
    Fig("overflowed", "storepulse_aggregation_overflowed_events_total", COUNTER, "Events not folded because the key limit was reached."),
    Fig("late", "storepulse_aggregation_late_events_total", COUNTER, "Events whose windows had all closed already."),
    Fig("watermark_ms", "storepulse_aggregation_watermark_seconds", GAUGE, "Watermark of the aggregation as a Unix time in seconds.", MS),
)


class _Reader:
    """Reads figures from a /stats dict and remembers which leaves it used."""

    def __init__(self, stats: Mapping[str, Any]) -> None:
        self.stats = stats
        self.used: set[str] = set()

    def get(self, path: str) -> Any:
        node: Any = self.stats
        for part in path.split("."):
            if not isinstance(node, Mapping) or part not in node:
                return None
            node = node[part]
        if not isinstance(node, Mapping):
            self.used.add(path)
        return node

    def names(self, section: str) -> list[str]:
        node = self.get(section)
        return sorted(node) if isinstance(node, Mapping) else []


def _number(value: Any, scale: float = 1.0) -> float | None:
    """A figure as a float in base units; None (no sample) for missing or non-numeric values."""
    if isinstance(value, bool):
        return 1.0 if value else 0.0
    if isinstance(value, (int, float)):
        return value * scale
    return None


def _family(fig: Fig, labels: Iterable[str] = ()) -> Metric:
    cls = CounterMetricFamily if fig.kind == COUNTER else GaugeMetricFamily
    return cls(fig.name, fig.doc, labels=list(labels))


def stats_families(stats: Mapping[str, Any], reader: _Reader | None = None) -> list[Metric]:
    """The metric families of one /stats snapshot (pure: no I/O, no registry)."""
    r = reader or _Reader(stats)
    out: list[Metric] = []
    version = r.get("version")
    if version is not None:
        out.append(InfoMetricFamily("storepulse_build", "StorePulse build.", value={"version": str(version)}))
    for fig in SCALARS:
        value = r.get(fig.key)
        if fig.key in ("pipeline.watermark_ms", "pipeline.closed_through_ms") and value == NO_WATERMARK:
            value = None    # no event yet: no sample rather than a sentinel
        family = _family(fig)
        number = _number(value, fig.scale)
        if number is not None:
            family.add_metric([], number)
        out.append(family)
    out.append(_rejected(r))
    out.extend(_per_name(r, "sources", "source", PER_SOURCE))
    out.extend(_source_states(r))
    out.extend(_per_name(r, "queues", "queue", PER_QUEUE))
    out.append(_overflow_policies(r))
    out.extend(_per_name(r, "aggregations", "aggregation", PER_AGGREGATION))
    out.append(_outbox(r))
    return out


def _rejected(r: _Reader) -> Metric:
    # events.rejected is the sum over reasons; one labelled family carries both.
    r.get("events.rejected")
    by_reason = r.get("events.rejected_by_reason") or {}
    family = CounterMetricFamily("storepulse_events_rejected_total", "Events rejected, by reason (dead-lettered except 'dropped').",
                                 labels=["reason"])
    for reason in sorted(set(REJECT_REASONS) | set(by_reason)):
        family.add_metric([reason], float(r.get(f"events.rejected_by_reason.{reason}") or 0))
    return family


def _per_name(r: _Reader, section: str, label: str, figs: tuple[Fig, ...]) -> list[Metric]:
    families = [_family(fig, [label]) for fig in figs]
    for name in r.names(section):
        for fig, family in zip(figs, families):
            number = _number(r.get(f"{section}.{name}.{fig.key}"), fig.scale)
            if fig.key == "watermark_ms" and number == NO_WATERMARK * fig.scale:
                continue
            if number is not None:
                family.add_metric([name], number)
    return families


def _source_states(r: _Reader) -> list[Metric]:
    state = GaugeMetricFamily("storepulse_source_state", "1 for the current state of each source.", labels=["source", "state"])
    idle = GaugeMetricFamily("storepulse_source_idle", "1 while the source holds no watermark back (idle_timeout).", labels=["source"])
    info = InfoMetricFamily("storepulse_source", "Source type.", labels=["source"])
    idle_names = set(r.get("pipeline.idle_sources") or ())
    for name in r.names("sources"):
        current = r.get(f"sources.{name}.state")
        for s in sorted(set(SOURCE_STATES) | {str(current)}):
            state.add_metric([name, s], 1.0 if s == current else 0.0)
        idle.add_metric([name], 1.0 if name in idle_names else 0.0)
        info.add_metric([name], {"type": str(r.get(f"sources.{name}.type"))})
    return [state, idle, info]


def _overflow_policies(r: _Reader) -> Metric:
    family = GaugeMetricFamily("storepulse_queue_overflow_policy", "1 for the overflow policy of each queue.", labels=["queue", "policy"])
    for name in r.names("queues"):
        current = str(r.get(f"queues.{name}.overflow"))
        for policy in sorted(set(OVERFLOW_POLICIES) | {current}):
            family.add_metric([name, policy], 1.0 if policy == current else 0.0)
    return family


def _outbox(r: _Reader) -> Metric:
    family = GaugeMetricFamily("storepulse_store_outbox_rows", "Committed rows waiting for their Arrow flush, by table.", labels=["table"])
    for table in r.names("store.outbox_rows"):
        family.add_metric([table], float(r.get(f"store.outbox_rows.{table}") or 0))
    return family


def unexported_figures(stats: Mapping[str, Any]) -> list[str]:
    """Leaves of a /stats dict that no series carries and that NOT_EXPORTED does not excuse."""
    reader = _Reader(stats)
    stats_families(stats, reader)
    return sorted(p for p in _leaves(stats)
                  if p not in reader.used and not any(fnmatch.fnmatchcase(p, pat) for pat in NOT_EXPORTED))


def _leaves(node: Mapping[str, Any], prefix: str = "") -> Iterator[str]:
    for key, value in node.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping):
            yield from _leaves(value, path + ".")
        else:
            yield path


class StatsCollector:
    """A prometheus-client collector that reads one /stats snapshot per scrape."""

    def __init__(self, read_stats: Callable[[], Mapping[str, Any]]) -> None:
        self._read_stats = read_stats

    def collect(self) -> Iterator[Metric]:
        return iter(stats_families(self._read_stats()))


def render_metrics(read_stats: Callable[[], Mapping[str, Any]]) -> bytes:
    """The text exposition (format 0.0.4) of one snapshot.

    A registry per scrape, not the global REGISTRY: it holds nothing between scrapes, and two
    daemons in one process (tests) never share series.
    """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatsCollector(read_stats))
    return generate_latest(registry)


async def metrics(request: web.Request) -> web.Response:
    ctx = request.app[CONTEXT]
    body = render_metrics(lambda: collect_stats(ctx))
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_PLAIN_0_0_4})
