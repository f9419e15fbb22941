"""Chunk transfer messages (issue 15, docs/artifacts.md): a node asks a holder for artifact chunks it
lacks over the request path (ROUTER/DEALER), never the PUB stream, and the holder answers with the
chunks it has. Sans-IO like the rest of the core: the codec and the checks; reading and storing
chunks, windows, timeouts and bandwidth caps are the driver's (crdtsync.artifacts.transfer).

- CHUNK_REQUEST (22): node id, request id, the artifact and version the chunks are of (a relay
  asked for chunks it lacks fetches them from there; empty: unknown), then 1..CHUNKS_PER_REQUEST_MAX
  chunk ids (32 bytes each).
- CHUNK_REPLY (23): node id, request id, the count of chunks sent, that many (id, bytes) pairs, then
  the ids of the requested chunks not sent (the holder lacks them, or the reply was full).

The envelope, its checks and the admission of the sender are `wire`'s and the replica's as for every
kind (`wire` calls `body_of` and the readers here); a chunk whose bytes do not hash to its id is the
driver's to refuse. Of the core it imports only `envelope` (its errors) and `field_reader`:
`messages` and `wire` import it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from crdtsync.core.envelope import WireError
from crdtsync.core.field_reader import FieldReader

CHUNK_REQUEST = 22
CHUNK_REPLY = 23
CHUNK_ID_BYTES = 32
CHUNKS_PER_REQUEST_MAX = 256
ARTIFACT_BYTES_MAX = 256
VERSION_BYTES_MAX = 64
REPLY_BYTES_MAX = 4 * 1024 * 1024
"""The chunk bytes one reply carries at most (well under `wire.FRAME_BYTES_MAX`)."""


@dataclass(frozen=True, slots=True)
class ChunkRequest:
    node_id: str
    request_id: int
    artifact: str
    version: str
    chunk_ids: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class ChunkReply:
    node_id: str
    request_id: int
    chunks: tuple[tuple[bytes, bytes], ...]
    not_sent: tuple[bytes, ...]


ChunkMessage = ChunkRequest | ChunkReply


def body_of(message: ChunkMessage) -> tuple[int, list[Any]]:
    """The kind and the fields of a chunk message (`wire.encode` wraps them in the envelope)."""
    if isinstance(message, ChunkRequest):
        if not 1 <= len(message.chunk_ids) <= CHUNKS_PER_REQUEST_MAX:
            raise ValueError(f"a chunk request names 1..{CHUNKS_PER_REQUEST_MAX} chunks")
        head = [message.node_id, message.request_id, message.artifact, message.version]
        return CHUNK_REQUEST, [*head, *message.chunk_ids]
    fields: list[Any] = [message.node_id, message.request_id, len(message.chunks)]
    for chunk_id, data in message.chunks:
        fields += [chunk_id, data]
    return CHUNK_REPLY, [*fields, *message.not_sent]


def _chunk_id(f: FieldReader) -> bytes:
    value = f.blob("chunk_id")
    if len(value) != CHUNK_ID_BYTES:
        raise WireError("bad_body", f"{f.kind.name} chunk id is {len(value)} bytes, not {CHUNK_ID_BYTES}")
    return value


def read_request(f: FieldReader, node_id: str) -> ChunkRequest:
    request_id = f.uint("request_id")
    artifact, version = f.text("artifact", ARTIFACT_BYTES_MAX), f.text("version", VERSION_BYTES_MAX)
    if not 1 <= f.remaining() <= CHUNKS_PER_REQUEST_MAX:
        raise WireError("bad_body", f"CHUNK_REQUEST must name 1..{CHUNKS_PER_REQUEST_MAX} chunks")
    return ChunkRequest(
        node_id, request_id, artifact, version, tuple(_chunk_id(f) for _ in range(f.remaining()))
    )


def read_reply(f: FieldReader, node_id: str) -> ChunkReply:
    request_id, count = f.uint("request_id"), f.uint("count")
    if count > CHUNKS_PER_REQUEST_MAX or f.remaining() < 2 * count:
        raise WireError("bad_body", f"CHUNK_REPLY declares {count} chunks it does not carry")
    chunks = []
    size = 0
    for _ in range(count):
        chunk_id, data = _chunk_id(f), f.blob("data")
        size += len(data)
        chunks.append((chunk_id, data))
    if size > REPLY_BYTES_MAX:
        raise WireError("too_large", f"CHUNK_REPLY carries {size} chunk bytes, over {REPLY_BYTES_MAX}")
    if count + f.remaining() > CHUNKS_PER_REQUEST_MAX:
        raise WireError("too_large", f"CHUNK_REPLY answers more than {CHUNKS_PER_REQUEST_MAX} chunks")
    not_sent = tuple(_chunk_id(f) for _ in range(f.remaining()))
    return ChunkReply(node_id, request_id, tuple(chunks), not_sent)
