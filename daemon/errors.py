"""The one error hierarchy of StorePulse.

    StorePulseError
    ├── ConfigError(ValueError)      a config problem, always with its dotted key path
    │   └── ConfigErrors             several ConfigError at once (check-config prints them all)
    ├── SourceError(ConnectionError) a source could not fetch; the source retries with backoff
    │   ├── FetchError               the peer answered badly (status, protocol)
    │   └── FetchTimeout(TimeoutError)
    ├── StoreError(OSError)          LMDB or Arrow files failed
    │   ├── StoreFull                the LMDB map reached storage.map_size_max
    │   └── StoreLocked              another daemon holds data_dir
    └── QueueFull                    a non-blocking put met a full queue (ingest answers 429)

A bad event is not an exception: it is data (events.Rejected) with a reason.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager


class StorePulseError(Exception):
    """Base of every error StorePulse raises on purpose."""


class ConfigError(StorePulseError, ValueError):
    """A config value is wrong; `path` is the dotted key, e.g. `sources.orders.url`."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}")
        self.path = path
        self.message = message


class ConfigErrors(StorePulseError, ValueError):
    """Every problem found in one config file, in file order."""

    def __init__(self, errors: Iterable[ConfigError]) -> None:
        self.errors = list(errors)
        super().__init__("\n".join(str(e) for e in self.errors))


class SourceError(StorePulseError, ConnectionError):
    """A source failed to fetch; it backs off and tries again."""


class FetchError(SourceError):
    """The peer answered with an error status or broke the protocol."""

    def __init__(self, message: str, *, status: int | None = None, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after_s = retry_after_s


class FetchTimeout(SourceError, TimeoutError):
    """The peer did not answer in time."""


class StoreError(StorePulseError, OSError):
    """LMDB or the Arrow files failed."""


class StoreFull(StoreError):
    """The LMDB map cannot grow past storage.map_size_max."""


class StoreLocked(StoreError):
    """Another StorePulse process holds the data_dir lock."""


class QueueFull(StorePulseError):
    """A put_nowait met a full queue."""


@contextmanager
def map_exceptions(mapping: Mapping[type[BaseException], type[StorePulseError]]) -> Iterator[None]:
    """Translate library exceptions into ours at an I/O edge (httpcore style)."""
    try:
        yield
    except StorePulseError:
        raise
    except BaseException as exc:
        for from_type, to_type in mapping.items():
            if isinstance(exc, from_type):
                raise to_type(f"{type(exc).__name__}: {exc}") from exc
        raise
