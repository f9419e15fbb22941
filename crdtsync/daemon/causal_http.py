"""The HTTP side of causal tokens (docs/consistency.md): `min_state` and `wait_ms` on reads, the
`token` of every doc answer (merged into the request's `session` token), and the watch stream's
event ids and `Last-Event-ID`.

Errors are `RequestError`s, which the API's error middleware answers like its own (with `details`
beside `code` and `message`).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web
from pycrdt import Doc

from crdtsync.consistency import (
    CausalToken,
    DocState,
    NotCoveredError,
    TokenError,
    TokenTooLargeError,
    TooManyWaitersError,
    doc_state,
)
from crdtsync.node import Node

WAIT_MS_DEFAULT = 2000
SESSION_KEY = "causal_session"
"""Where `doc_route` keeps the request's parsed `session` token."""


class RequestError(Exception):
    def __init__(self, status: int, code: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details or {}


def _token(text: str, name: str) -> CausalToken:
    try:
        return CausalToken.decode(text)
    except TokenError as exc:
        raise RequestError(400, "bad_token", f"{name} is not a causal token of this version: {exc}") from None


def session_token(request: web.Request) -> CausalToken | None:
    """The request's `session` token (checked before anything is written), or None."""
    text = request.query.get("session")
    return None if text is None else _token(text, "session")


def wait_ms(request: web.Request, wait_ms_max: int) -> int:
    text = request.query.get("wait_ms")
    if text is None:
        return min(WAIT_MS_DEFAULT, wait_ms_max)
    if not text.isdigit() or int(text) > wait_ms_max:
        raise RequestError(400, "bad_wait_ms", f"wait_ms must be an integer in 0..{wait_ms_max}")
    return int(text)


def wanted_token(request: web.Request, *, watch: bool) -> CausalToken | None:
    """What a read must wait for: `min_state`, merged for a watch with its `Last-Event-ID` (a
    reconnecting stream resumes from no older state than the one it saw last)."""
    text = request.query.get("min_state")
    token = None if text is None else _token(text, "min_state")
    last = request.headers.get("Last-Event-ID") if watch else None
    if last:
        seen = _token(last, "Last-Event-ID")
        try:
            token = seen if token is None else token.merge(seen)
        except TokenTooLargeError as exc:
            raise RequestError(400, "bad_token", f"min_state and Last-Event-ID together: {exc}") from None
    return token


async def await_token(
    node: Node, request: web.Request, doc_id: str, wait_ms_max: int, *, watch: bool
) -> None:
    """Return once the node covers the read's token for `doc_id` (at once without one); 504
    `not_yet_covered` naming what it lacks after `wait_ms`, 503 `too_many_waiters` beyond the bound."""
    token = wanted_token(request, watch=watch)
    if token is None:
        return
    timeout_ms = wait_ms(request, wait_ms_max)
    try:
        await node.wait_for(doc_id, token, timeout_ms=timeout_ms)
    except NotCoveredError as exc:
        raise RequestError(
            504,
            "not_yet_covered",
            f"this node does not yet hold everything the token names of doc {doc_id!r} "
            f"(waited {timeout_ms} ms); retry, or read from another node",
            {"doc_id": doc_id, "waited_ms": timeout_ms, "missing": exc.missing.to_json()},
        ) from None
    except TooManyWaitersError as exc:
        raise RequestError(503, "too_many_waiters", str(exc)) from None


def token_fields(request: web.Request, doc_id: str, doc: Doc[Any]) -> dict[str, Any]:
    """The answer's `token`: what this node holds of the doc now, merged into the request's
    `session` token. Beyond the token bounds: the doc's own token and a `token_note` (the session
    token could not take the doc), or no token at all for a doc too large for any (see
    docs/consistency.md); the write itself stands either way."""
    try:
        own = CausalToken.of({doc_id: doc_state(doc)})
    except TokenTooLargeError as exc:
        return {"token": None, "token_note": str(exc)}
    session: CausalToken | None = request.get(SESSION_KEY)
    if session is None:
        return {"token": own.encode()}
    try:
        return {"token": session.merge(own).encode()}
    except TokenTooLargeError as exc:
        return {"token": own.encode(), "token_note": f"session token not merged: {exc}"}


def event_id(doc_id: str, state: DocState) -> str:
    """A watch event's `id:`: the doc's token (empty, which resets the client's last id, for a doc
    beyond the token bounds)."""
    try:
        return CausalToken.of({doc_id: state}).encode()
    except TokenTooLargeError:
        return ""


def last_event_state(request: web.Request, doc_id: str) -> DocState | None:
    """What the watcher saw last (its `Last-Event-ID`), or None for a fresh watch."""
    last = request.headers.get("Last-Event-ID")
    return None if not last else _token(last, "Last-Event-ID").get(doc_id)
