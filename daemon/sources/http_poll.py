"""HTTP polling source: cursor, ETag/304, adaptive interval, backoff with jitter.

`parse_page` is pure; `HttpPollSource.run` is the only place that does I/O.
Position encoding (checkpointed with each delivery): orjson of {"cursor": str | None, "etag": str | None}.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import NamedTuple

import aiohttp
import anyio
import orjson
from yarl import URL

from daemon.errors import FetchError, FetchTimeout, SourceError, map_exceptions
from daemon.pipeline.structdecode import StructDecoder
from daemon.pipeline.validate import Decoded, Validator
from daemon.sources.backoff import MAX_RETRY_AFTER_S, Backoff, parse_retry_after
from daemon.sources.base import SourceContext, SourceStats
from daemon.sources.common import CommonSourceSettings, check_url
from daemon.tomlreader import TableReader

# TimeoutError first: aiohttp's ServerTimeoutError is both a timeout and a ClientError
_LIBRARY_ERRORS = MappingProxyType({TimeoutError: FetchTimeout, aiohttp.ClientError: FetchError, OSError: FetchError})


@dataclass(frozen=True, slots=True, kw_only=True)
class HttpPollConfig:
    name: str
    url: str
    limit: int = 500
    cursor_param: str = "cursor"
    limit_param: str = "limit"
    events_field: str = "events"          # "" = the body itself is the payload (object, array or NDJSON)
    cursor_field: str = "next_cursor"
    min_interval_s: float = 0.2
    max_interval_s: float = 10.0
    timeout_s: float = 10.0
    min_backoff_s: float = 0.5            # first retry delay ceiling after an error
    max_backoff_s: float = 60.0
    max_retry_after_s: float = MAX_RETRY_AFTER_S
    headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)   # may hold tokens: never shown
    common: CommonSourceSettings = field(default_factory=CommonSourceSettings)

    type = "http_poll"

    @classmethod
    def from_toml(cls, r: TableReader, name: str) -> HttpPollConfig:
        url = check_url(r, "url", ("http", "https"))
        min_interval_s = r.duration_s("min_interval", 0.2)
        max_interval_s = r.duration_s("max_interval", 10.0)
        if max_interval_s < min_interval_s:
            r.error("max_interval", f"must be >= min_interval ({min_interval_s}s)")
        min_backoff_s = r.duration_s("min_backoff", 0.5)
        max_backoff_s = r.duration_s("max_backoff", 60.0)
        if max_backoff_s < min_backoff_s:
            r.error("max_backoff", f"must be >= min_backoff ({min_backoff_s}s)")
        return cls(
            name=name,
            url=url,
            limit=r.int("limit", 500, min_value=1, max_value=1_000_000),
            cursor_param=r.str("cursor_param", "cursor", nonempty=True),
            limit_param=r.str("limit_param", "limit", nonempty=True),
            events_field=r.str("events_field", "events"),
            cursor_field=r.str("cursor_field", "next_cursor"),
            min_interval_s=min_interval_s,
            max_interval_s=max(max_interval_s, min_interval_s),
            timeout_s=r.duration_s("timeout", 10.0),
            min_backoff_s=min_backoff_s,
            max_backoff_s=max(max_backoff_s, min_backoff_s),
            max_retry_after_s=r.duration_s("max_retry_after", MAX_RETRY_AFTER_S),
            headers=tuple(sorted(r.str_map("headers").items())),
            common=CommonSourceSettings.from_reader(r),
        )

    def build(self, ctx: SourceContext) -> HttpPollSource:
        return HttpPollSource(self, ctx)


class Page(NamedTuple):
    """One parsed response: either decoded items (object form, JSON array) or raw NDJSON bytes."""

    items: list[object] | None
    payload: bytes | None
    next_cursor: str | None          # None: the page named no cursor (keep the current one)


def parse_page(body: bytes, events_field: str, cursor_field: str) -> Page:
    """Split a response body into its events and next cursor; FetchError when it is not a page at all.

    Accepted forms: `{events_field: [...], cursor_field: "..."}`, a bare JSON array, NDJSON
    (bad lines become rejected events later), an empty body. With `events_field = ""` a single
    object is one event. A body that is not JSON (not even its first line) is an error, so the
    poll is retried rather than skipped.
    """
    if not body.strip():
        return Page([], None, None)
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        first = next(line for line in body.split(b"\n") if line.strip())
        try:
            orjson.loads(first)
        except orjson.JSONDecodeError:
            raise FetchError(f"page is not JSON or NDJSON ({len(body)} bytes)") from None
        return Page(None, body, None)
    if isinstance(value, list):
        return Page(value, None, None)
    if not isinstance(value, dict) or not events_field:
        return Page([value], None, None)
    if events_field not in value:
        raise FetchError(f"page has no {events_field!r} field")
    events = value[events_field]
    if events is None:
        events = []
    elif not isinstance(events, list):
        raise FetchError(f"page field {events_field!r} is {type(events).__name__}, not an array")
    return Page(events, None, page_cursor(value.get(cursor_field) if cursor_field else None))


def decode_page(body: bytes, validator: Validator, pages: StructDecoder, events_field: str, cursor_field: str,
                now_ms: int) -> tuple[Decoded, str | None]:
    """A page's events, validated, and its next cursor, in one call (one trip to the CPU lane);
    FetchError when the body is not a page. A page of many events, all valid, is decoded straight
    into columns (`pages`, from validator.page_decoder: 0.93 -> ~0.6 us per event); any other goes
    through parse_page and the validator, which say what is wrong."""
    if validator.try_columns():
        cols, cursor = pages.page(body) or (None, None)
        decoded = validator.decode_columns(cols, now_ms)
        if decoded is not None:
            return decoded, page_cursor(cursor)
    page = parse_page(body, events_field, cursor_field)
    if page.payload is not None:
        return validator.decode(page.payload, now_ms), page.next_cursor
    # The parsed list goes to the validator as it is (no orjson dumps+loads round trip).
    return validator.decode_items(page.items, now_ms), page.next_cursor


def page_cursor(value: object) -> str | None:
    """A page's next cursor from its cursor field's value: a string or an integer, else none."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        return None
    return str(value)


def encode_position(cursor: str | None, etag: str | None) -> bytes:
    return orjson.dumps({"cursor": cursor, "etag": etag})


def decode_position(position: bytes | None) -> tuple[str | None, str | None]:
    """(cursor, etag) from a checkpointed position; ValueError when it is not ours."""
    if position is None:
        return None, None
    try:
        value = orjson.loads(position)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"position is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ValueError("position is not an object")
    cursor, etag = value.get("cursor"), value.get("etag")
    if not isinstance(cursor, (str, type(None))) or not isinstance(etag, (str, type(None))):
        raise ValueError("position cursor/etag must be strings or null")
    return cursor, etag


class HttpPollSource:
    """Polls one URL until cancelled; hands each page to the queue as one delivery."""

    def __init__(self, cfg: HttpPollConfig, ctx: SourceContext) -> None:
        self.name = cfg.name
        self._cfg = cfg
        self._ctx = ctx
        self._url = URL(cfg.url)
        try:
            self._cursor, self._etag = decode_position(ctx.position)
        except ValueError as exc:
            ctx.log.warning("position_ignored", error=str(exc))
            self._cursor, self._etag = None, None
        self._backoff = Backoff(base_s=cfg.min_backoff_s, cap_s=cfg.max_backoff_s,
                                max_retry_after_s=cfg.max_retry_after_s)
        self._idle_s = cfg.min_interval_s
        self._pages = ctx.validator.page_decoder(cfg.events_field, cfg.cursor_field)

    def statistics(self) -> SourceStats:
        return self._ctx.health.snapshot(self._ctx.clock.now_ms())

    async def run(self) -> None:
        """Poll until cancelled; peer failures back off and retry, they never end the loop."""
        health = self._ctx.health
        timeout = aiohttp.ClientTimeout(total=self._cfg.timeout_s)
        try:
            async with aiohttp.ClientSession(headers=dict(self._cfg.headers), timeout=timeout) as session:
                self._ctx.log.info("poll_started", cursor=self._cursor, resumed=self._ctx.position is not None)
                while True:
                    try:
                        delay_s = await self._poll(session)
                    except SourceError as exc:
                        delay_s = self._failed(exc)
                    except Exception as exc:   # a peer must never end the daemon: log loudly, back off, retry
                        self._ctx.log.error("poll_crashed", exc_info=True)
                        delay_s = self._failed(FetchError(f"unexpected {type(exc).__name__}"))
                    await anyio.sleep(delay_s)
        finally:
            health.state = "stopped"
            health.connected = False

    async def _poll(self, session: aiohttp.ClientSession) -> float:
        """One GET; returns the delay before the next one."""
        cfg, ctx = self._cfg, self._ctx
        query = {cfg.limit_param: str(cfg.limit)}
        if self._cursor is not None:
            query[cfg.cursor_param] = self._cursor
        headers = {"If-None-Match": self._etag} if self._etag else None
        with map_exceptions(_LIBRARY_ERRORS):
            async with session.get(self._url.update_query(query), headers=headers) as resp:
                status = resp.status
                if status == 304:
                    body, etag = None, self._etag
                elif 200 <= status < 300:
                    body, etag = await resp.read(), resp.headers.get("ETag")
                else:
                    raise self._status_error(status, resp.headers.get("Retry-After"))
        # Parsing and validating a page (~0.6 ms per 1000 events) runs off the event loop.
        got = None if body is None else await ctx.run_off_loop(self._decode_body, body, ctx.clock.now_ms())
        health = ctx.health
        health.state, health.connected = "polling", True
        self._backoff = self._backoff.reset()
        if got is None:
            health.requests += 1
            return self._idle_delay(0, status)
        decoded, next_cursor = ctx.count(got[0]), got[1]
        cursor = self._cursor if next_cursor is None else next_cursor
        if decoded.total or (cursor, etag) != (self._cursor, self._etag):
            # the cursor moves only once the runner has the page (at-least-once, never a gap)
            await ctx.deliver(decoded, encode_position(cursor, etag))
        self._cursor, self._etag = cursor, etag
        return self._idle_delay(decoded.total, status)

    def _decode_body(self, body: bytes, now_ms: int) -> tuple[Decoded, str | None]:
        cfg = self._cfg
        return decode_page(body, self._ctx.validator, self._pages, cfg.events_field, cfg.cursor_field, now_ms)

    def _idle_delay(self, events: int, status: int) -> float:
        """Adaptive interval: a full page polls at once, a partial one after min_interval,
        an empty one (or 304) after an interval that doubles up to max_interval."""
        cfg = self._cfg
        if events:
            self._idle_s = cfg.min_interval_s
            delay_s = 0.0 if events >= cfg.limit else cfg.min_interval_s
        else:
            delay_s = self._idle_s
            self._idle_s = min(cfg.max_interval_s, self._idle_s * 2)
        self._ctx.log.debug("polled", status=status, events=events, delay_s=delay_s)
        return delay_s

    def _status_error(self, status: int, retry_after: str | None) -> FetchError:
        retry_after_s = None
        if status in (429, 503):
            retry_after_s = parse_retry_after(retry_after, self._ctx.clock.now_ms() / 1000)
        return FetchError(f"HTTP {status}", status=status, retry_after_s=retry_after_s)

    def _failed(self, exc: SourceError) -> float:
        """Count a failed poll and return the backoff delay before the next one."""
        status = getattr(exc, "status", None)
        retry_after_s = getattr(exc, "retry_after_s", None)
        delay_s, self._backoff = self._backoff.next(self._ctx.rng, retry_after_s)
        message = str(exc) if str(exc) else type(exc).__name__
        if isinstance(exc, FetchTimeout):
            message = f"no complete answer within {self._cfg.timeout_s:g}s"
        health = self._ctx.health
        health.requests += 1
        health.errors += 1
        health.last_error = message[:300]
        health.state, health.connected = "backoff", False
        self._ctx.log.warning("poll_failed", attempt=self._backoff.attempt, delay_s=round(delay_s, 3),
                              status=status, retry_after_s=retry_after_s, error=health.last_error)
        return delay_s
