"""Sources: the registry of source types (one line per type)."""

from daemon.sources.http_poll import HttpPollConfig
from daemon.sources.ingest import IngestConfig
from daemon.sources.websocket import WebsocketConfig

SOURCES = {
    "http_poll": HttpPollConfig,
    "websocket": WebsocketConfig,
    "ingest": IngestConfig,
}

SourceConfig = HttpPollConfig | WebsocketConfig | IngestConfig
