"""The bearer token check of the HTTP API (`http.tokens_file`): which requests need which token, and
the count and log of refusals. See crdtsync.daemon.http for the rules."""

from __future__ import annotations

import hashlib
import hmac
import logging
import time
from collections.abc import Awaitable, Callable, Collection

from aiohttp import web

from crdtsync.daemon.config import Token
from crdtsync.daemon.http_input import error_response
from crdtsync.daemon.websocket import PATH_PREFIX as WS_PATH_PREFIX

log = logging.getLogger("crdtsync.http")

READ_METHODS = frozenset({"GET", "HEAD"})
OPEN_PATHS = frozenset({"/health", "/ui"})
REFUSAL_REASONS = ("unauthorized", "forbidden")
REFUSAL_LOG_INTERVAL_S = 1.0

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def bearer_token(header: str) -> str | None:
    """The token of an `Authorization: Bearer TOKEN` header (the scheme is case-insensitive)."""
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token


TOKEN_KEY = web.RequestKey("token", Token)
"""The request's bearer token, once `TokenCheck` accepted it (absent without `[[tokens]]`)."""


def find_token(tokens: tuple[Token, ...], presented: str) -> Token | None:
    """The configured token whose SHA-256 is that of `presented`, compared in constant time (every
    configured digest is compared, whether or not one matched already)."""
    # aiohttp decodes header bytes that are not UTF-8 to surrogates: hash the bytes that were sent.
    digest = hashlib.sha256(presented.encode("utf-8", "surrogateescape")).digest()
    found = None
    for token in tokens:
        if hmac.compare_digest(digest, token.sha256):
            found = token
    return found


class TokenCheck:
    """The middleware that checks every request's token, and what it refused."""

    def __init__(
        self,
        tokens: tuple[Token, ...],
        *,
        open_files: Collection[str],
    ) -> None:
        """`open_files`: the dashboard's files under /ui/, open without a token."""
        self.tokens = tokens
        self.open_files = open_files
        self.refused: dict[str, int] = dict.fromkeys(REFUSAL_REASONS, 0)
        """Requests refused by the token check, by reason (crdtsync_http_requests_refused_total)."""
        self._refusal_logged: dict[str, float] = {}
        self._refusals_unlogged: dict[str, int] = dict.fromkeys(REFUSAL_REASONS, 0)

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        open_path = request.path in OPEN_PATHS or request.path.removeprefix("/ui/") in self.open_files
        if open_path and request.method in READ_METHODS:
            return await handler(request)
        presented = bearer_token(request.headers.get("Authorization", ""))
        if presented is None and request.path.startswith(WS_PATH_PREFIX):
            presented = request.query.get("token") or None  # a browser's WebSocket cannot send headers
        token = None if presented is None else find_token(self.tokens, presented)
        if token is None:
            what = "no bearer token" if presented is None else "an unknown bearer token"
            challenge = 'Bearer realm="crdtsync"' + ("" if presented is None else ', error="invalid_token"')
            self._refuse("unauthorized", request, what)
            return error_response(
                401,
                "unauthorized",
                f"{what}: send Authorization: Bearer TOKEN with a token of this node",
                headers={"WWW-Authenticate": challenge},
            )
        if token.scope != "write" and request.method not in READ_METHODS:
            self._refuse("forbidden", request, f"read token {token.name!r} on a write", token.name)
            return error_response(
                403,
                "forbidden",
                f"token {token.name!r} has read scope; {request.method} needs a write token",
                headers={"WWW-Authenticate": 'Bearer realm="crdtsync", error="insufficient_scope"'},
            )
        request[TOKEN_KEY] = token
        return await handler(request)

    def _refuse(self, reason: str, request: web.Request, what: str, token: str | None = None) -> None:
        """Count a refusal and log it, at most one line per second per reason (with the number of
        refusals not logged since the last line)."""
        self.refused[reason] += 1
        now = time.monotonic()
        last = self._refusal_logged.get(reason)
        if last is not None and now - last < REFUSAL_LOG_INTERVAL_S:
            self._refusals_unlogged[reason] += 1
            return
        self._refusal_logged[reason] = now
        unlogged, self._refusals_unlogged[reason] = self._refusals_unlogged[reason], 0
        fields: dict[str, object] = {
            "reason": reason,
            "method": request.method,
            "path": request.path[:200],
            "remote": request.remote,
        }
        if token is not None:
            fields["token"] = token
        log.warning("refused request: %s", what, extra={**fields, "refused_unlogged": unlogged})
