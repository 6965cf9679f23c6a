"""Websocket source: subscribe, heartbeat, seq resume, reconnect with backoff and jitter.

Position encoding (checkpointed with each delivery): orjson of {"seq": int} — the largest
`seq_field` value delivered so far; a reconnect asks for `resume_param` = seq + 1.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType

import aiohttp
import anyio
import orjson
from yarl import URL

from daemon.errors import FetchError, FetchTimeout, SourceError, map_exceptions
from daemon.sources.backoff import Backoff, parse_retry_after
from daemon.sources.base import SourceContext, SourceStats
from daemon.sources.common import CommonSourceSettings, check_url
from daemon.tomlreader import TableReader

_CLEAN_CLOSE = frozenset((1000, 1001))   # normal closure, going away: reconnect, but not an error
# TimeoutError first: aiohttp's ServerTimeoutError is both a timeout and a ClientError
_LIBRARY_ERRORS = MappingProxyType({TimeoutError: FetchTimeout, aiohttp.ClientError: FetchError, OSError: FetchError})


@dataclass(frozen=True, slots=True, kw_only=True)
class WebsocketConfig:
    name: str
    url: str
    subscribe: str = ""
    seq_field: str = "seq"
    resume_param: str = "from_seq"
    heartbeat_s: float = 15.0
    connect_timeout_s: float = 10.0
    min_backoff_s: float = 0.5            # first reconnect delay ceiling
    max_backoff_s: float = 30.0
    max_frame_bytes: int = 16 * 2**20     # a larger frame is a protocol error (aiohttp's default is 4 MiB)
    headers: tuple[tuple[str, str], ...] = field(default=(), repr=False)   # may hold tokens: never shown
    common: CommonSourceSettings = field(default_factory=CommonSourceSettings)

    type = "websocket"

    @classmethod
    def from_toml(cls, r: TableReader, name: str) -> WebsocketConfig:
        url = check_url(r, "url", ("ws", "wss"))
        subscribe = r.str("subscribe", "")
        if subscribe:
            try:
                orjson.loads(subscribe)
            except orjson.JSONDecodeError as exc:
                r.error("subscribe", f"is not valid JSON ({exc})")
        min_backoff_s = r.duration_s("min_backoff", 0.5)
        max_backoff_s = r.duration_s("max_backoff", 30.0)
        if max_backoff_s < min_backoff_s:
            r.error("max_backoff", f"must be >= min_backoff ({min_backoff_s}s)")
        return cls(
            name=name,
            url=url,
            subscribe=subscribe,
            seq_field=r.str("seq_field", "seq"),
            resume_param=r.str("resume_param", "from_seq"),
            heartbeat_s=r.duration_s("heartbeat", 15.0),
            connect_timeout_s=r.duration_s("connect_timeout", 10.0),
            min_backoff_s=min_backoff_s,
            max_backoff_s=max(max_backoff_s, min_backoff_s),
            max_frame_bytes=r.size_bytes("max_frame", 16 * 2**20),
            headers=tuple(sorted(r.str_map("headers").items())),
            common=CommonSourceSettings.from_reader(r),
        )

    def build(self, ctx: SourceContext) -> WebsocketSource:
        return WebsocketSource(self, ctx)


def encode_position(seq: int) -> bytes:
    return orjson.dumps({"seq": seq})


def decode_position(position: bytes | None) -> int | None:
    """The last delivered seq from a checkpointed position; ValueError when it is not ours."""
    if position is None:
        return None
    try:
        value = orjson.loads(position)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"position is not JSON: {exc}") from None
    seq = value.get("seq") if isinstance(value, dict) else None
    if isinstance(seq, bool) or not isinstance(seq, (int, type(None))):
        raise ValueError("position seq must be an integer or null")
    return seq


class WebsocketSource:
    """Reads one websocket feed until cancelled; each frame is one delivery; reconnects with backoff."""

    def __init__(self, cfg: WebsocketConfig, ctx: SourceContext) -> None:
        self.name = cfg.name
        self._cfg = cfg
        self._ctx = ctx
        try:
            self._last_seq = decode_position(ctx.position)
        except ValueError as exc:
            ctx.log.warning("position_ignored", error=str(exc))
            self._last_seq = None
        self._backoff = Backoff(base_s=cfg.min_backoff_s, cap_s=cfg.max_backoff_s)
        self._delivered = False          # did the current connection deliver anything?
        self._replay_said = False        # has it warned about replayed frames?

    def statistics(self) -> SourceStats:
        return self._ctx.health.snapshot(self._ctx.clock.now_ms())

    async def run(self) -> None:
        """Connect, read and reconnect until cancelled; peer failures never end the loop."""
        health = self._ctx.health
        try:
            async with aiohttp.ClientSession(headers=dict(self._cfg.headers)) as session:
                while True:
                    retry_after_s = None
                    try:
                        await self._connect_and_read(session)
                        error = ""
                    except Exception as exc:   # a peer must never end the daemon: back off and retry
                        if not isinstance(exc, SourceError):
                            self._ctx.log.error("ws_crashed", exc_info=True)
                            exc = FetchError(f"unexpected {type(exc).__name__}")
                        error = (str(exc) or type(exc).__name__)[:300]
                        retry_after_s = getattr(exc, "retry_after_s", None)
                        health.errors += 1
                        health.last_error = error
                    if self._delivered:
                        self._backoff = self._backoff.reset()
                    delay_s, self._backoff = self._backoff.next(self._ctx.rng, retry_after_s)
                    health.state, health.connected = "backoff", False
                    health.reconnects += 1
                    self._ctx.log.info("ws_reconnecting", attempt=self._backoff.attempt, delay_s=round(delay_s, 3),
                                       last_seq=self._last_seq, error=error or None)
                    await anyio.sleep(delay_s)
        finally:
            health.state = "stopped"
            health.connected = False

    def _connect_url(self) -> URL:
        url = URL(self._cfg.url)
        if self._last_seq is not None and self._cfg.resume_param:
            url = url.update_query({self._cfg.resume_param: str(self._last_seq + 1)})
        return url

    async def _connect_and_read(self, session: aiohttp.ClientSession) -> None:
        """One connection: handshake (bounded by connect_timeout), subscribe, read until it closes."""
        cfg, ctx = self._cfg, self._ctx
        self._delivered = False
        self._replay_said = False
        url = self._connect_url()
        try:
            with map_exceptions(_LIBRARY_ERRORS):
                with anyio.fail_after(cfg.connect_timeout_s):
                    ws = await session.ws_connect(url, heartbeat=cfg.heartbeat_s, decode_text=False,
                                                  max_msg_size=cfg.max_frame_bytes)
        except FetchTimeout:
            raise FetchTimeout(f"no handshake within {cfg.connect_timeout_s:g}s") from None
        except FetchError as exc:
            raise _handshake_error(exc, ctx.clock.now_ms() / 1000) from exc
        async with ws:
            health = ctx.health
            health.state, health.connected = "connected", True
            ctx.log.info("ws_connected", resume_from=None if self._last_seq is None else self._last_seq + 1)
            with map_exceptions(_LIBRARY_ERRORS):
                if cfg.subscribe:
                    await ws.send_str(cfg.subscribe)
                while True:
                    msg = await ws.receive()
                    if msg.type is aiohttp.WSMsgType.TEXT or msg.type is aiohttp.WSMsgType.BINARY:
                        await self._deliver_frame(msg.data)
                    elif msg.type is aiohttp.WSMsgType.ERROR:
                        error = msg.data
                        cls = FetchTimeout if isinstance(error, TimeoutError) else FetchError
                        raise cls(f"{type(error).__name__}: {error}")
                    else:        # CLOSE / CLOSING / CLOSED
                        break
        code = ws.close_code
        if code not in _CLEAN_CLOSE:
            raise FetchError(f"connection closed abnormally (code {code})")
        ctx.log.info("ws_closed", code=code)

    async def _deliver_frame(self, payload: bytes) -> None:
        """Decode one frame and deliver it with the position after it.

        A frame whose every seq is at or below the last delivered seq is a replay (a server that
        ignored resume_param) and is skipped; partial overlaps are left to the dedupe filter.
        """
        ctx = self._ctx
        decoded = ctx.decode(payload)
        seq = decoded.max_seq
        last = self._last_seq
        if seq is not None and last is not None and seq <= last:
            if not self._replay_said:   # once per connection: a server that restarted its numbering
                self._replay_said = True   # (e.g. the built-in storefront after a restart) looks like this
                ctx.log.warning("ws_frames_replayed", max_seq=seq, last_seq=last, action="skipped",
                                hint="frames at or below the last delivered seq are skipped until the "
                                     "server's seq passes it; a server that restarted its numbering needs "
                                     "the source's position reset")
            ctx.log.debug("ws_frame_replayed", max_seq=seq, last_seq=last, events=decoded.total)
            return
        if seq is not None:
            last = seq
        await ctx.deliver(decoded, None if last is None else encode_position(last))
        self._last_seq = last
        self._delivered = True


def _handshake_error(exc: FetchError, now_s: float) -> FetchError:
    """Keep the HTTP status (and a 429/503 Retry-After) of a refused websocket handshake."""
    cause = exc.__cause__
    if isinstance(cause, aiohttp.WSServerHandshakeError):
        retry_after_s = None
        if cause.status in (429, 503) and cause.headers is not None:
            retry_after_s = parse_retry_after(cause.headers.get("Retry-After"), now_s)
        return FetchError(f"handshake refused: HTTP {cause.status}", status=cause.status, retry_after_s=retry_after_s)
    return exc
