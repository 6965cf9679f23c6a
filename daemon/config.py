"""TOML file → frozen Config tree; every problem reported as `dotted.key.path: message`."""

from __future__ import annotations

import ipaddress
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from daemon.aggconfig import AggregationConfig
from daemon.errors import ConfigError, ConfigErrors
from daemon.sources import SOURCES, SourceConfig
from daemon.tomlreader import TableReader

DEFAULT_CONFIG_PATH = "config/storepulse.toml"
LOG_LEVELS = ("debug", "info", "warning", "error")


def is_loopback_host(host: str) -> bool:
    """Whether `host` (a name or an IP literal) only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _listen(r: TableReader, key: str, default: str) -> tuple[str, int]:
    """`key` as host:port (an error names the key; the default stands in then)."""
    listen = r.str(key, default)
    h, sep, p = listen.rpartition(":")
    if not sep or not p.isdigit() or not 0 <= int(p) <= 65535 or not h:
        r.error(key, f"expected host:port like \"127.0.0.1:8787\", got {listen!r}")
        h, _, p = default.rpartition(":")
        if not p:
            return "", 0
    return h.strip("[]"), int(p)


@dataclass(frozen=True, slots=True, kw_only=True)
class HttpConfig:
    host: str = "127.0.0.1"
    port: int = 8787
    token_file: str = ""
    max_body_bytes: int = 4 * 2**20
    max_connections: int = 2048
    idle_timeout_s: float = 30.0

    @property
    def is_loopback(self) -> bool:
        return is_loopback_host(self.host)

    @classmethod
    def from_toml(cls, r: TableReader) -> HttpConfig:
        host, port = _listen(r, "listen", "127.0.0.1:8787")
        cfg = cls(
            host=host,
            port=port,
            token_file=r.str("token_file", ""),
            max_body_bytes=r.size_bytes("max_body", 4 * 2**20),
            max_connections=r.int("max_connections", 2048, min_value=1),
            idle_timeout_s=r.duration_s("idle_timeout", 30.0),
        )
        if not cfg.is_loopback and not cfg.token_file:
            r.error("token_file", f"required when listen is not a loopback address ({cfg.host})")
        r.finish()
        return cfg


COMPRESSIONS = ("lz4", "zstd", "none")   # storage.compression of the Arrow files' buffers (stores.arrow_files)
RETENTION_TABLES = ("events", "deadletter", "windows", "anomalies")


@dataclass(frozen=True, slots=True, kw_only=True)
class RetentionConfig:
    """`[storage.retention]`: how long each Arrow table's `date=` partitions are kept (None: for ever).

    `windows` covers every `windows/<aggregation>` table. Ages are measured against a partition's UTC
    date, "now" being the watermark capped by the wall clock (stores/retention.py)."""

    events_ms: int | None = None
    deadletter_ms: int | None = None
    windows_ms: int | None = None
    anomalies_ms: int | None = None

    @property
    def enabled(self) -> bool:
        return any(self.keep_ms(t) is not None for t in RETENTION_TABLES)

    def keep_ms(self, kind: str) -> int | None:
        """The retention of one table kind (`stores.retention.table_kind`); None for an unknown one."""
        return getattr(self, f"{kind}_ms", None) if kind in RETENTION_TABLES else None

    @classmethod
    def from_toml(cls, r: TableReader) -> RetentionConfig:
        # Absent, or invalid (reported; the default 0 comes back): kept for ever.
        kept = {f"{kind}_ms": r.duration_ms(kind, 0) or None for kind in RETENTION_TABLES}
        r.finish()
        return cls(**kept)


@dataclass(frozen=True, slots=True, kw_only=True)
class StorageConfig:
    data_dir: str = "var/storepulse"
    archive_events: bool = True
    commit_interval_s: float = 0.2
    flush_interval_s: float = 5.0          # most time events/dead letters wait before their Arrow file
    state_interval_s: float = 5.0          # most time between full state writes; commits between log fold steps
    map_size_initial_bytes: int = 64 * 2**20
    map_size_max_bytes: int = 64 * 2**30
    compression: str = "lz4"               # of the Arrow files' buffers: lz4, zstd or none
    compaction: bool = True                # merge a day's small Arrow files (stores/compaction.py)
    retention: RetentionConfig = field(default_factory=RetentionConfig)

    @classmethod
    def from_toml(cls, r: TableReader) -> StorageConfig:
        cfg = cls(
            data_dir=r.str("data_dir", "var/storepulse", nonempty=True),
            archive_events=r.bool("archive_events", True),
            commit_interval_s=r.duration_s("commit_interval", 0.2),
            flush_interval_s=r.duration_s("flush_interval", 5.0),
            state_interval_s=r.duration_s("state_interval", 5.0),
            map_size_initial_bytes=r.size_bytes("map_size_initial", 64 * 2**20),
            map_size_max_bytes=r.size_bytes("map_size_max", 64 * 2**30),
            compression=r.choice("compression", "lz4", COMPRESSIONS),
            compaction=r.bool("compaction", True),
            retention=RetentionConfig.from_toml(r.sub("retention")),
        )
        if cfg.map_size_max_bytes < cfg.map_size_initial_bytes:
            r.error("map_size_max", "must be >= map_size_initial")
        if cfg.state_interval_s < cfg.commit_interval_s:
            r.error("state_interval", "must be >= commit_interval")
        r.finish()
        return cfg


@dataclass(frozen=True, slots=True, kw_only=True)
class PipelineConfig:
    allowed_lateness_ms: int = 5_000
    idle_timeout_ms: int = 10_000
    dedupe_ttl_ms: int = 3_600_000
    dedupe_max_ids: int = 5_000_000
    max_future_skew_ms: int = 300_000

    @classmethod
    def from_toml(cls, r: TableReader) -> PipelineConfig:
        cfg = cls(
            allowed_lateness_ms=r.duration_ms("allowed_lateness", 5_000, positive=False),
            idle_timeout_ms=r.duration_ms("idle_timeout", 10_000),
            dedupe_ttl_ms=r.duration_ms("dedupe_ttl", 3_600_000, positive=False),
            dedupe_max_ids=r.int("dedupe_max_ids", 5_000_000, min_value=0),
            max_future_skew_ms=r.duration_ms("max_future_skew", 300_000),
        )
        r.finish()
        return cfg


@dataclass(frozen=True, slots=True, kw_only=True)
class RecommendationsConfig:
    half_life_s: float = 3600.0
    neighbours_per_item: int = 50
    recent_items_per_user: int = 20
    user_ttl_s: float = 7 * 86400.0
    max_users: int = 1_000_000
    max_items: int = 1_000_000
    # Users beyond this many most recently active are kept as their records while idle (~120 bytes
    # instead of ~460; daemon/analyzers/recusers.py); 0 keeps every idle user that way.
    hot_users: int = 100_000
    # The recommender runs in its own process (daemon/replica/); with `listen` it also answers
    # GET /recommendations and /trending on that address (else only the daemon's port forwards there).
    listen_host: str = ""
    listen_port: int = 0

    @classmethod
    def from_toml(cls, r: TableReader) -> RecommendationsConfig:
        host, port = _listen(r, "listen", "") if r.has("listen") else ("", 0)
        if r.has("listen") and host and port == 0:
            r.error("listen", "needs a port between 1 and 65535 (leave the key out to read through the daemon's port only)")
        cfg = cls(
            listen_host=host,
            listen_port=port,
            half_life_s=r.duration_s("half_life", 3600.0),
            neighbours_per_item=r.int("neighbours_per_item", 50, min_value=1, max_value=10_000),
            recent_items_per_user=r.int("recent_items_per_user", 20, min_value=1, max_value=10_000),
            user_ttl_s=r.duration_s("user_ttl", 7 * 86400.0),
            max_users=r.int("max_users", 1_000_000, min_value=1),
            max_items=r.int("max_items", 1_000_000, min_value=1),
            hot_users=r.int("hot_users", 100_000, min_value=0),
        )
        r.finish()
        return cfg


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    path: str = ""
    log_level: str = "info"
    http: HttpConfig = field(default_factory=HttpConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    sources: tuple[SourceConfig, ...] = ()
    recommendations: RecommendationsConfig | None = None
    aggregations: tuple[AggregationConfig, ...] = ()

    def source(self, name: str) -> SourceConfig:
        for s in self.sources:
            if s.name == name:
                return s
        raise KeyError(name)


def parse_config(data: dict[str, object], path: str = "") -> Config:
    """Build a Config from parsed TOML; raise ConfigErrors listing every problem."""
    errors: list[ConfigError] = []
    top = TableReader(data, "", errors)
    log_level = top.choice("log_level", "info", LOG_LEVELS)
    http = HttpConfig.from_toml(top.sub("http"))
    storage = StorageConfig.from_toml(top.sub("storage"))
    pipeline = PipelineConfig.from_toml(top.sub("pipeline"))
    sources = _read_sources(top.sub("sources"))
    recommendations = None
    if top.has("recommendations"):
        rr = top.sub("recommendations")
        recommendations = RecommendationsConfig.from_toml(rr)
        if recommendations.listen_port and not is_loopback_host(recommendations.listen_host) and not http.token_file:
            rr.error("listen", f"a non-loopback address ({recommendations.listen_host}) needs http.token_file")
        if (recommendations.listen_host, recommendations.listen_port) == (http.host, http.port):
            rr.error("listen", f"is http.listen too ({http.host}:{http.port}); the recommendations process needs its own port")
    aggregations = _read_aggregations(top, errors)
    top.finish()
    if errors:
        raise ConfigErrors(errors)
    return Config(path=path, log_level=log_level, http=http, storage=storage, pipeline=pipeline,
                  sources=sources, recommendations=recommendations, aggregations=aggregations)


def _read_sources(r: TableReader) -> tuple[SourceConfig, ...]:
    out = []
    for name in r.table:
        sub = r.sub(name)
        if not sub.table and not isinstance(r.table[name], dict):
            continue
        stype = sub.str("type", required=True)
        cls = SOURCES.get(stype)
        if cls is None:
            if stype:
                sub.error("type", f"unknown source type {stype!r} (one of {', '.join(SOURCES)})")
            continue
        out.append(cls.from_toml(sub, name))
        sub.finish()
    return tuple(out)


def _read_aggregations(top: TableReader, errors: list[ConfigError]) -> tuple[AggregationConfig, ...]:
    raw = top.raw("aggregations", [])
    if not isinstance(raw, list):
        errors.append(ConfigError("aggregations", "expected [[aggregations]] entries (an array of tables)"))
        return ()
    out: list[AggregationConfig] = []
    seen: set[str] = set()
    for i, table in enumerate(raw):
        agg = AggregationConfig.from_toml(TableReader(table, f"aggregations[{i}]", errors))
        if agg.name in seen:
            errors.append(ConfigError(f"aggregations[{i}].name", f"duplicate aggregation name {agg.name!r}"))
        seen.add(agg.name)
        out.append(agg)
    return tuple(out)


def resolve_config_path(cli_path: str | None) -> str:
    """`-c PATH`, else $STOREPULSE_CONFIG, else config/storepulse.toml."""
    return cli_path or os.environ.get("STOREPULSE_CONFIG") or DEFAULT_CONFIG_PATH


def load_config(path: str) -> Config:
    """Read and parse a TOML file; raise ConfigErrors (also for an unreadable or invalid file)."""
    try:
        text = Path(path).read_bytes().decode("utf-8")
    except OSError as exc:
        raise ConfigErrors([ConfigError(path, f"cannot read config file: {exc.strerror or exc}")]) from None
    except UnicodeDecodeError:
        raise ConfigErrors([ConfigError(path, "config file is not UTF-8")]) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigErrors([ConfigError(path, f"invalid TOML: {exc}")]) from None
    return parse_config(data, path)
