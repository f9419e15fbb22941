"""FORWARD_REQUEST and FORWARD_REPLY (crdtsync/core/forward.py): round trips through `wire` at the
largest body, and every malformed body refused with a reason before it reaches the driver."""

from __future__ import annotations

import struct
import zlib
from typing import Any

import msgpack
import pytest

from crdtsync.core import envelope, forward, wire
from crdtsync.core.wire import MessageKind, WireError

NODE = "node-a"


def _frame(kind: MessageKind, fields: list[Any]) -> bytes:
    body: bytes = msgpack.packb(fields, use_bin_type=True)
    return struct.pack("!2sBBBII", wire.MAGIC, 1, kind, 0, len(body), zlib.crc32(body)) + body


def test_the_kinds_are_26_and_27() -> None:
    assert (MessageKind.FORWARD_REQUEST, MessageKind.FORWARD_REPLY) == (26, 27)


def test_the_largest_bodies_round_trip() -> None:
    body = bytes(range(256)) * (forward.BODY_BYTES_MAX // 256)
    request = forward.ForwardRequest(
        NODE, 2**40, "POST", "/v1/docs/a/update", "application/octet-stream", body
    )
    reply = forward.ForwardReply(NODE, 2**40, forward.STATUS_NOT_SERVED, "", "", b"")
    assert wire.decode(wire.encode(request)) == request
    assert wire.decode(wire.encode(reply)) == reply


def test_a_reply_carries_the_answers_own_headers() -> None:
    headers = tuple(
        (f"X-Header-{i}", "v" * forward.HEADER_VALUE_BYTES_MAX) for i in range(forward.HEADERS_MAX)
    )
    reply = forward.ForwardReply(NODE, 7, 200, "application/octet-stream", "holder", b"u", headers)
    assert wire.decode(wire.encode(reply)) == reply


def test_a_reply_without_headers_reads_as_before() -> None:
    """A node of the release before sends the reply's fields without headers; one of this release reads
    them, and the other way round it reads the fields it knows, which come first, and ignores the rest."""
    decoded = wire.decode(_frame(MessageKind.FORWARD_REPLY, [NODE, 3, 200, "text/plain", "holder", b"x"]))
    assert decoded == forward.ForwardReply(NODE, 3, 200, "text/plain", "holder", b"x", ())

    def body(reply: forward.ForwardReply) -> list[Any]:
        frame = wire.encode(reply)
        fields: list[Any] = msgpack.unpackb(envelope.body_of(frame, envelope.read(frame)))
        return fields

    bare = forward.ForwardReply(NODE, 3, 200, "", "", b"")
    headed = forward.ForwardReply(NODE, 3, 200, "", "", b"", (("X-State-Vector", "AQID"),))
    assert body(headed) == [*body(bare), "X-State-Vector", "AQID"]


@pytest.mark.parametrize(
    "headers",
    [(("Content-Type", "text/plain"),), (("X-A", "1\n2"),), tuple((f"X-{i}", "") for i in range(9))],
)
def test_headers_a_reader_would_refuse_are_not_encoded(headers: tuple[tuple[str, str], ...]) -> None:
    with pytest.raises(ValueError, match="forwarded headers"):
        wire.encode(forward.ForwardReply(NODE, 1, 200, "", "", b"", headers))


def test_a_body_over_the_bound_is_not_encoded() -> None:
    with pytest.raises(ValueError, match="at most"):
        wire.encode(forward.ForwardReply(NODE, 1, 200, "", "", b"x" * (forward.BODY_BYTES_MAX + 1)))


@pytest.mark.parametrize(
    ("name", "kind", "fields", "reason"),
    [
        ("request-short", MessageKind.FORWARD_REQUEST, [NODE, 1, "GET", "/v1/docs/a", ""], "bad_body"),
        (
            "request-not-a-path",
            MessageKind.FORWARD_REQUEST,
            [NODE, 1, "GET", "http://x/", "", b""],
            "bad_body",
        ),
        ("request-long-method", MessageKind.FORWARD_REQUEST, [NODE, 1, "G" * 17, "/", "", b""], "bad_body"),
        (
            "request-long-target",
            MessageKind.FORWARD_REQUEST,
            [NODE, 1, "GET", "/" * 8193, "", b""],
            "bad_body",
        ),
        ("request-body-text", MessageKind.FORWARD_REQUEST, [NODE, 1, "PUT", "/", "", "1"], "bad_body"),
        ("request-negative-id", MessageKind.FORWARD_REQUEST, [NODE, -1, "GET", "/", "", b""], "bad_body"),
        ("reply-status-99", MessageKind.FORWARD_REPLY, [NODE, 1, 99, "", "", b""], "bad_body"),
        ("reply-status-600", MessageKind.FORWARD_REPLY, [NODE, 1, 600, "", "", b""], "bad_body"),
        ("reply-long-served-as", MessageKind.FORWARD_REPLY, [NODE, 1, 200, "", "h" * 33, b""], "bad_body"),
        ("reply-odd-header", MessageKind.FORWARD_REPLY, [NODE, 1, 200, "", "", b"", "X-A"], "bad_body"),
        (
            "reply-header-not-x",
            MessageKind.FORWARD_REPLY,
            [NODE, 1, 200, "", "", b"", "Set-Cookie", "a=b"],
            "bad_body",
        ),
        (
            "reply-header-splits",
            MessageKind.FORWARD_REPLY,
            [NODE, 1, 200, "", "", b"", "X-A", "1\r\nSet-Cookie: a=b"],
            "bad_body",
        ),
        (
            "reply-header-name-space",
            MessageKind.FORWARD_REPLY,
            [NODE, 1, 200, "", "", b"", "X-A B", "1"],
            "bad_body",
        ),
        (
            "reply-too-many-headers",
            MessageKind.FORWARD_REPLY,
            [NODE, 1, 200, "", "", b"", *[f"X-{i}" if j == 0 else "v" for i in range(9) for j in range(2)]],
            "bad_body",
        ),
        (
            "reply-long-header-value",
            MessageKind.FORWARD_REPLY,
            [NODE, 1, 200, "", "", b"", "X-A", "v" * (forward.HEADER_VALUE_BYTES_MAX + 1)],
            "bad_body",
        ),
        (
            "reply-over-bytes",
            MessageKind.FORWARD_REPLY,
            [NODE, 1, 200, "", "", b"x" * (forward.BODY_BYTES_MAX + 1)],
            "too_large",
        ),
    ],
)
def test_malformed_forward_messages_are_rejected(
    name: str, kind: MessageKind, fields: list[Any], reason: str
) -> None:
    with pytest.raises(WireError) as caught:
        wire.decode(_frame(kind, fields))
    assert caught.value.reason == reason, name
