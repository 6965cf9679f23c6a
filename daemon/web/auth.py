"""Bearer-token auth for every route but /healthz, compared in constant time."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web

from daemon.errors import ConfigError

OPEN_PATHS = frozenset({"/healthz"})


def load_token(path: str) -> bytes:
    """Read the token file (whitespace stripped); a missing or empty file is a config error."""
    try:
        token = Path(path).read_bytes().strip()
    except OSError as exc:
        raise ConfigError("http.token_file", f"cannot read {path}: {exc.strerror}") from None
    if not token:
        raise ConfigError("http.token_file", f"{path} is empty")
    return token


def auth_middleware(token: bytes) -> Callable[..., Awaitable[web.StreamResponse]]:
    expected = b"Bearer " + token

    @web.middleware
    async def check(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        if request.path in OPEN_PATHS:
            return await handler(request)
        given = request.headers.get("Authorization", "").encode("utf-8", "replace")
        if not hmac.compare_digest(given, expected):
            return web.json_response({"error": "missing or wrong bearer token"}, status=401,
                                     headers={"WWW-Authenticate": 'Bearer realm="storepulse"'})
        return await handler(request)

    return check
