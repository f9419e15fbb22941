"""Forwarded requests (docs/placement.md#forwarding): a node that does not hold a doc sends an HTTP
request about it to the doc's nearest alive holder over the replication link, and the holder answers
with the response it served. Sans-IO like the rest of the core: the codec and its bounds; choosing
the holder, waiting, timeouts and serving the request are the driver's (crdtsync.daemon.forward_http).

- FORWARD_REQUEST (26): node id, request id, the HTTP method, the target (path and query), the
  content type and the body.
- FORWARD_REPLY (27): node id, request id, the HTTP status (0: not served here, the asker serves it
  itself), the content type, how the doc was served (`X-Served-As`) and the body, then the answer's
  own `X-` headers (e.g. `X-State-Vector`) as name, value pairs. A node that reads only the first six
  fields ignores the pairs, so nodes of either release forward to each other.

The envelope, its checks and the admission of the sender are `wire`'s and the replica's as for every
kind. Of the core it imports only `envelope` (its errors) and `field_reader`: `messages` and `wire` import it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from crdtsync.core.envelope import WireError
from crdtsync.core.field_reader import FieldReader

FORWARD_REQUEST = 26
FORWARD_REPLY = 27
METHOD_BYTES_MAX = 16
TARGET_BYTES_MAX = 8 * 1024
CONTENT_TYPE_BYTES_MAX = 256
SERVED_AS_BYTES_MAX = 32
BODY_BYTES_MAX = 4 * 1024 * 1024
"""The largest request or response body forwarded (well under `envelope.FRAME_BYTES_MAX`): a bigger
request is served where it arrived, a bigger answer is declined (status 0) and served there too."""
STATUS_NOT_SERVED = 0
STATUS_MAX = 599
HEADERS_MAX = 8
HEADER_NAME_BYTES_MAX = 64
HEADER_VALUE_BYTES_MAX = 1024
_HEADER_NAME = re.compile(f"X-[A-Za-z0-9-]{{1,{HEADER_NAME_BYTES_MAX - 2}}}")
_HEADER_VALUE = re.compile(r"[\x20-\x7e]*")


@dataclass(frozen=True, slots=True)
class ForwardRequest:
    node_id: str
    request_id: int
    method: str
    target: str
    content_type: str
    body: bytes


@dataclass(frozen=True, slots=True)
class ForwardReply:
    node_id: str
    request_id: int
    status: int
    content_type: str
    served_as: str
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()
    """The answer's own `X-` headers: at most `HEADERS_MAX`, names of `X-` and letters, digits and
    dashes, values of printable ASCII (nothing that could split or end a header)."""


ForwardMessage = ForwardRequest | ForwardReply


def body_of(message: ForwardMessage) -> tuple[int, list[Any]]:
    """The kind and the fields of a forward message (`wire.encode` wraps them in the envelope)."""
    if len(message.body) > BODY_BYTES_MAX:
        raise ValueError(f"a forwarded body is at most {BODY_BYTES_MAX} bytes")
    head: list[Any] = [message.node_id, message.request_id]
    if isinstance(message, ForwardRequest):
        return FORWARD_REQUEST, [*head, message.method, message.target, message.content_type, message.body]
    if not headers_allowed(message.headers):
        raise ValueError(f"forwarded headers are at most {HEADERS_MAX} `X-` names with printable values")
    fields = [*head, message.status, message.content_type, message.served_as, message.body]
    for name, value in message.headers:
        fields += (name, value)
    return FORWARD_REPLY, fields


def headers_allowed(headers: tuple[tuple[str, str], ...]) -> bool:
    """Whether a reply may carry `headers` (the serving side keeps within this, the reader checks it)."""
    return len(headers) <= HEADERS_MAX and all(
        _HEADER_NAME.fullmatch(name)
        and len(value) <= HEADER_VALUE_BYTES_MAX
        and _HEADER_VALUE.fullmatch(value)
        for name, value in headers
    )


def _body(f: FieldReader) -> bytes:
    body = f.blob("body")
    if len(body) > BODY_BYTES_MAX:
        raise WireError(
            "too_large", f"{f.kind.name} carries a body of {len(body)} bytes, over {BODY_BYTES_MAX}"
        )
    return body


def read_request(f: FieldReader, node_id: str) -> ForwardRequest:
    request_id = f.uint("request_id")
    method = f.text("method", METHOD_BYTES_MAX)
    target = f.text("target", TARGET_BYTES_MAX)
    if not target.startswith("/"):
        raise WireError("bad_body", "FORWARD_REQUEST target is not a path")
    return ForwardRequest(
        node_id, request_id, method, target, f.text("content_type", CONTENT_TYPE_BYTES_MAX), _body(f)
    )


def read_reply(f: FieldReader, node_id: str) -> ForwardReply:
    request_id, status = f.uint("request_id"), f.uint("status")
    if status != STATUS_NOT_SERVED and not 100 <= status <= STATUS_MAX:
        raise WireError("bad_body", f"FORWARD_REPLY status {status} is not an HTTP status")
    content_type = f.text("content_type", CONTENT_TYPE_BYTES_MAX)
    served_as = f.text("served_as", SERVED_AS_BYTES_MAX)
    body = _body(f)
    pairs = f.remaining()
    if pairs % 2 or pairs > 2 * HEADERS_MAX:
        raise WireError(
            "bad_body", f"FORWARD_REPLY carries {pairs} header fields: pairs, at most {HEADERS_MAX}"
        )
    headers = tuple(
        (f.text("header_name", HEADER_NAME_BYTES_MAX), f.text("header_value", HEADER_VALUE_BYTES_MAX))
        for _ in range(pairs // 2)
    )
    if not headers_allowed(headers):
        raise WireError(
            "bad_body", "FORWARD_REPLY carries a header that is not an `X-` name with a printable value"
        )
    return ForwardReply(node_id, request_id, status, content_type, served_as, body, headers)
