"""The storage vocabulary the pipeline and the web depend on: CommitUnit, Restored, stats, protocols.

Nothing here does I/O or imports lmdb/pyarrow, so the pipeline can import it freely.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import pyarrow as pa

# The Arrow tables the outbox accepts: "windows/<aggregation>" plus these three.
ROW_TABLES = ("events", "deadletter", "anomalies")
DEFAULT_KEEP_LATEST = 1000
DEFAULT_KEEP_LATEST_ROWS = 1_000_000
DEFAULT_KEEP_ANOMALIES = 100_000


@dataclass(slots=True, kw_only=True)
class CommitUnit:
    """Everything one durable commit writes, in ONE LMDB write transaction.

    state: namespace ("agg:sales", "ma:sales", "analyzer:recs") → key → value (None deletes), or the
      namespace's changes already packed per bucket (stores/segments.py SegmentBuilder).
    positions: source name → opaque resume position (poll cursor + ETag, websocket seq).
    dedupe_ids, dedupe_expiry_ms: the event ids to remember (str or UTF-8 bytes) and when each expires,
      as two columns (a commit adds ~16k at 80k events/s: no tuple per id); dedupe_expire_before_ms
      drops ids that expire before it.
    meta: small named values (e.g. the watermark).
    rows: Arrow table name ("windows/<agg>", "events", "deadletter", "anomalies") → rows for
      the outbox; they reach the Arrow files at the next flush of that table.
    latest: (aggregation, key, window_end_ms, row json) for GET /windows; at most
      keep_latest[aggregation] (default 1000) are kept per (aggregation, key), and at most
      keep_latest_rows[aggregation] (default 1M) per aggregation, the oldest window ends going first. With `defer_latest`
      they are stored as one record and put into the index by the next write (the next commit, or
      Checkpoint.apply_pending_latest): a close's rows reach their Arrow file ~10 us per row sooner,
      and GET /windows shows them one commit later.
    anomalies: (ts_ms, anomaly json) for GET /anomalies; the newest keep_anomalies are kept.
    fold_log: the fold steps since the previous commit (pipeline/foldlog.py), stored under this
      commit's seq; fold_log_drop_through deletes the stored entries of commits up to that seq
      (every part's stored state covers them).
    state_complete: this unit carries every state change since the last such unit.
    state_segments: namespace → changes already packed as (bucket, state segment) lists, applied
      after `state`'s, in order (the recommendations process's answers: stores/segments.py).
    """

    state: dict[str, Any] = field(default_factory=dict)   # per namespace a dict, or a segments.SegmentBuilder
    positions: dict[str, bytes] = field(default_factory=dict)
    dedupe_ids: Sequence[str | bytes] = ()
    dedupe_expiry_ms: Sequence[int] = ()
    dedupe_expire_before_ms: int | None = None
    meta: dict[str, bytes] = field(default_factory=dict)
    rows: dict[str, pa.RecordBatch | pa.Table] = field(default_factory=dict)
    latest: list[tuple[str, bytes, int, bytes]] = field(default_factory=list)
    keep_latest: dict[str, int] = field(default_factory=dict)
    keep_latest_rows: dict[str, int] = field(default_factory=dict)
    defer_latest: bool = False
    anomalies: list[tuple[int, bytes]] = field(default_factory=list)
    keep_anomalies: int = DEFAULT_KEEP_ANOMALIES
    fold_log: bytes | None = None
    fold_log_drop_through: int | None = None
    state_complete: bool = False
    state_segments: dict[str, list[list[tuple[int, bytes | memoryview]]]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True, kw_only=True)
class Restored:
    """What the last commit left: the pipeline restores its state from this after a restart."""

    commit_seq: int
    meta: Mapping[str, bytes]
    positions: Mapping[str, bytes]
    state: Mapping[str, list[tuple[bytes, bytes]]]   # namespace → [(key, value)] in key order
    dedupe: list[tuple[bytes, int]]                   # (event id, expiry_ms)
    fold_log: Sequence[tuple[int, bytes]] = ()        # (commit seq, steps folded in it), oldest first


@dataclass(frozen=True, slots=True, kw_only=True)
class LmdbStats:
    path: str
    used_bytes: int
    map_size_bytes: int
    map_size_max_bytes: int
    map_grows: int
    recycles: int   # environment reopened to give its page pool and mapped pages back (LmdbState.recycle)
    write_txns: int
    last_write_ms: float
    readers: int


@dataclass(frozen=True, slots=True, kw_only=True)
class ArrowStats:
    root: str
    files_written: int
    rows_written: int
    bytes_written: int
    partitions_deleted: int = 0    # date= folders deleted by [storage.retention]
    files_deleted: int = 0
    bytes_deleted: int = 0
    partitions_compacted: int = 0  # past days' date= folders whose small files were merged
    files_merged: int = 0          # the files they had before
    files_on_disk: int = 0         # Arrow files below data_dir: counted at each upkeep pass (start, every 10 min) + written since
    bytes_on_disk: int = 0


@dataclass(frozen=True, slots=True, kw_only=True)
class StoreStats:
    commit_seq: int
    commits: int
    last_commit_ms: float
    avg_commit_ms: float
    flushes: int
    last_flush_ms: float
    outbox_rows: Mapping[str, int]
    lmdb: LmdbStats
    arrow: ArrowStats
    staged_bytes: int = 0      # state segments written ahead of their commits (Checkpoint.stage, answers), total


def frozen_map(d: Mapping[str, int]) -> Mapping[str, int]:
    """A read-only copy, so a stats snapshot cannot be changed by its reader."""
    return MappingProxyType(dict(d))


class StateStore(Protocol):
    """The durable store as the pipeline runner and the web queries see it."""

    def restore(self) -> Restored: ...
    def commit(self, unit: CommitUnit) -> int: ...
    def flush(self, tables: Collection[str] | None = None) -> int: ...
    def pending_rows(self) -> dict[str, int]: ...
    def get(self, namespace: str, key: bytes) -> bytes | None: ...
    def scan(self, namespace: str, prefix: bytes = b"") -> list[tuple[bytes, bytes]]: ...
    def latest_windows(self, aggregation: str, key: bytes | None = None, limit: int = 100) -> list[bytes]: ...
    def recent_anomalies(self, since_ms: int | None = None, limit: int = 100) -> list[bytes]: ...
    def statistics(self) -> StoreStats: ...
    def close(self) -> None: ...


class RowSink(Protocol):
    """Writes complete, immutable Arrow files for one outbox chunk."""

    def write(self, table: str, first_seq: int, rows: pa.Table) -> list[str]: ...
    def statistics(self) -> ArrowStats: ...
