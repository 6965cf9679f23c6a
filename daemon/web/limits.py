"""A TCP listener with a bound on open connections (`http.max_connections`).

aiohttp has no such bound: every accepted socket gets a request handler and its buffers. Past the
bound, a new connection is answered `503` with `Retry-After: 1` and closed at once, before any of
its bytes are read, so a flood of idle connections costs a socket each, not a handler each.
"""

from __future__ import annotations

import asyncio

from aiohttp import web

MAX_LINE_BYTES = 8190      # request line; longer → 400 (aiohttp's default, stated on purpose)
MAX_FIELD_BYTES = 8190     # one header field
MAX_HEADERS = 64

REFUSAL_BODY = b'{"error":"too many open connections (http.max_connections); retry"}'
REFUSAL = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\n"
           b"Connection: close\r\nContent-Length: " + str(len(REFUSAL_BODY)).encode() + b"\r\n\r\n" + REFUSAL_BODY)


class _Refuse(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.write(REFUSAL)
        transport.close()


class LimitedTCPSite(web.TCPSite):
    """`web.TCPSite` whose listener refuses connections beyond `max_connections` open ones."""

    def __init__(self, runner: web.BaseRunner, host: str, port: int, *, max_connections: int,
                 backlog: int = 128, reuse_address: bool = True) -> None:
        super().__init__(runner, host, port, backlog=backlog, reuse_address=reuse_address)
        self.max_connections = max_connections
        self.refused = 0
        self._limit_args = (host, port, backlog, reuse_address)

    @property
    def open_connections(self) -> int:
        server = self._runner.server
        return len(server.connections) if server is not None else 0

    async def start(self) -> None:
        await web.BaseSite.start(self)   # registers the site; TCPSite.start would listen unbounded
        server = self._runner.server
        assert server is not None
        host, port, backlog, reuse_address = self._limit_args

        def protocol() -> asyncio.Protocol:
            if len(server.connections) >= self.max_connections:
                self.refused += 1
                return _Refuse()
            return server()

        self._server = await asyncio.get_running_loop().create_server(
            protocol, host, port, backlog=backlog, reuse_address=reuse_address)

    def bound_port(self) -> int:
        """The port listened on (the kernel's choice when the site was given port 0)."""
        assert self._server is not None and self._server.sockets
        return int(self._server.sockets[0].getsockname()[1])
