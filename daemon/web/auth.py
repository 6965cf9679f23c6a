"""Bearer-token auth for every route but /healthz, compared in constant time.

The listen address check (a non-loopback listen needs `http.token_file`) lives in HttpConfig, so
`check-config` reports it too. The token itself is never logged or echoed in an answer.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web

from daemon.errors import ConfigError

OPEN_PATHS = frozenset({"/healthz"})
# Visible ASCII, no spaces: anything else cannot travel in an Authorization header unchanged.
_TOKEN = re.compile(rb"^[\x21-\x7e]+$")
MIN_TOKEN_BYTES = 16

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def load_token(path: str) -> bytes:
    """Read the token file (surrounding whitespace stripped); a missing, empty or unusable one is a config error."""
    try:
        token = Path(path).read_bytes().strip()
    except OSError as exc:
        raise ConfigError("http.token_file", f"cannot read {path}: {exc.strerror or exc}") from None
    if not token:
        raise ConfigError("http.token_file", f"{path} is empty")
    if not _TOKEN.match(token):
        raise ConfigError("http.token_file", f"{path}: the token must be printable ASCII without spaces")
    if len(token) < MIN_TOKEN_BYTES:
        raise ConfigError("http.token_file", f"{path}: the token must be at least {MIN_TOKEN_BYTES} characters")
    return token


def bearer_matches(authorization: str, token_digest: bytes) -> bool:
    """Whether an Authorization header carries the token whose SHA-256 is `token_digest`.

    Digests are compared, not the tokens, so the time taken leaks neither content nor length.
    """
    scheme, _, credentials = authorization.strip().partition(" ")
    given = hashlib.sha256(credentials.strip().encode("utf-8", "surrogateescape")).digest()
    # The scheme is case-insensitive (RFC 9110 11.1); compare the digest even on a wrong scheme.
    return hmac.compare_digest(given, token_digest) & (scheme.lower() == "bearer")


def auth_middleware(token: bytes) -> Callable[[web.Request, Handler], Awaitable[web.StreamResponse]]:
    """Answer 401 to any request but OPEN_PATHS without `Authorization: Bearer <token>`."""
    digest = hashlib.sha256(token).digest()

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in OPEN_PATHS or bearer_matches(request.headers.get("Authorization", ""), digest):
            return await handler(request)
        return web.json_response({"error": "missing or wrong bearer token"}, status=401,
                                 headers={"WWW-Authenticate": 'Bearer realm="storepulse"'})

    return check
