"""CHUNK_REQUEST and CHUNK_REPLY (crdtsync/core/chunks.py): round trips through `wire`, and every
malformed body refused with a reason before it reaches the transfer."""

from __future__ import annotations

import struct
import zlib
from typing import Any

import msgpack
import pytest

from crdtsync.core import chunks, wire
from crdtsync.core.wire import MessageKind, WireError

NODE = "node-a"
ID = b"\x07" * 32


def _frame(kind: MessageKind, fields: list[Any]) -> bytes:
    body: bytes = msgpack.packb(fields, use_bin_type=True)
    return struct.pack("!2sBBBII", wire.MAGIC, 1, kind, 0, len(body), zlib.crc32(body)) + body


def test_the_kinds_are_22_and_23() -> None:
    assert (MessageKind.CHUNK_REQUEST, MessageKind.CHUNK_REPLY) == (22, 23)


def test_a_full_reply_round_trips() -> None:
    data = bytes(range(256)) * 4096  # 1 MiB
    reply = chunks.ChunkReply(NODE, 2**40, ((ID, data), (b"\x08" * 32, b"")), (b"\x09" * 32,))
    assert wire.decode(wire.encode(reply)) == reply


@pytest.mark.parametrize(
    ("name", "kind", "fields", "reason"),
    [
        ("request-without-ids", MessageKind.CHUNK_REQUEST, [NODE, 1, "", ""], "bad_body"),
        ("request-short-id", MessageKind.CHUNK_REQUEST, [NODE, 1, "", "", b"\x01" * 31], "bad_body"),
        ("request-text-id", MessageKind.CHUNK_REQUEST, [NODE, 1, "", "", "x" * 32], "bad_body"),
        ("request-too-many", MessageKind.CHUNK_REQUEST, [NODE, 1, "", "", *([ID] * 257)], "bad_body"),
        ("request-artifact-too-long", MessageKind.CHUNK_REQUEST, [NODE, 1, "a" * 257, "", ID], "bad_body"),
        ("request-version-not-text", MessageKind.CHUNK_REQUEST, [NODE, 1, "a", 5, ID], "bad_body"),
        ("request-negative-id", MessageKind.CHUNK_REQUEST, [NODE, -1, "", "", ID], "bad_body"),
        ("reply-count-over-carried", MessageKind.CHUNK_REPLY, [NODE, 1, 2, ID, b"x"], "bad_body"),
        ("reply-data-not-bytes", MessageKind.CHUNK_REPLY, [NODE, 1, 1, ID, "x"], "bad_body"),
        (
            "reply-over-bytes",
            MessageKind.CHUNK_REPLY,
            [NODE, 1, 2, ID, b"x" * (3 << 20), ID, b"y" * (2 << 20)],
            "too_large",
        ),
        ("reply-too-many", MessageKind.CHUNK_REPLY, [NODE, 1, 0, *([ID] * 257)], "too_large"),
    ],
)
def test_malformed_chunk_messages_are_rejected(
    name: str, kind: MessageKind, fields: list[Any], reason: str
) -> None:
    with pytest.raises(WireError) as caught:
        wire.decode(_frame(kind, fields))
    assert caught.value.reason == reason, name


def test_a_request_of_no_chunks_cannot_be_encoded() -> None:
    with pytest.raises(ValueError, match=r"names 1\.\.256 chunks"):
        wire.encode(chunks.ChunkRequest(NODE, 1, "", "", ()))
