"""structlog setup: one JSON line per event on stdout, rendered with orjson."""

from __future__ import annotations

import logging
import sys
from typing import Any

import orjson
import structlog

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def configure_logging(level: str = "info", stream: Any = None) -> None:
    """Configure structlog once for the process (cli.py; the recommendations process logs to stderr,
    its stdout carries frames to the daemon)."""
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(serializer=orjson.dumps),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS.get(level, logging.INFO)),
        logger_factory=structlog.BytesLoggerFactory((stream or sys.stdout).buffer),
        cache_logger_on_first_use=True,
    )
    # aiohttp prints plain-text tracebacks for requests over the header limits; those are the
    # client's fault and would break the one-JSON-object-per-line log.
    logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)


def get_logger(**bind: object) -> structlog.typing.FilteringBoundLogger:
    return structlog.get_logger().bind(**bind)
