"""Reading the y-protocols messages of WebSocket clients, bounds-checked (pycrdt's `Decoder` trusts
its input): one message per binary frame, a varuint type (0 sync, 1 awareness, 3 query-awareness) and
its payload; a sync message is a varuint subtype (step 1, step 2, update) and a varUint8Array. And
which browser pages may open a connection without a token (`same_origin`)."""

from __future__ import annotations

from urllib.parse import urlsplit

from aiohttp import web

from crdtsync.core.state import StateDecodeError, read_varuint

MESSAGE_QUERY_AWARENESS = 3
"""y-protocols' query-awareness message: answered with every awareness state of the room."""
EMPTY_UPDATE = b"\x00\x00"


class MalformedError(ValueError):
    """A message that closes its connection with CLOSE_MALFORMED."""


def varuint(data: bytes, pos: int, what: str) -> tuple[int, int]:
    """lib0's varUint at `pos`, and the position after it."""
    try:
        return read_varuint(data, pos)
    except StateDecodeError as exc:
        raise MalformedError(f"{what}: {exc}") from None


def var_bytes(data: bytes, pos: int, what: str) -> bytes:
    """lib0's varUint8Array at `pos`, which must end the message."""
    length, pos = varuint(data, pos, what)
    if pos + length != len(data):
        raise MalformedError(f"{what}: a length of {length} with {len(data) - pos} bytes left")
    return data[pos:]


def same_origin(request: web.Request) -> bool:
    """Whether the request has no `Origin` (not a browser) or one whose host and port are those the
    request was sent to: a page this node served. Browsers let any web page open a WebSocket to any
    address, a daemon on localhost included, and send its cookies-free request with the page's Origin."""
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    try:
        page = urlsplit(origin)
        page_port = page.port
    except ValueError:
        return False
    if page.scheme not in ("http", "https") or not page.hostname:
        return False
    try:
        target = urlsplit(f"{'https' if request.secure else 'http'}://{request.host}")
        target_port = target.port
    except ValueError:
        return False
    default = {"http": 80, "https": 443}
    return (page.hostname, page_port or default[page.scheme]) == (
        target.hostname,
        target_port or default[target.scheme],
    )
