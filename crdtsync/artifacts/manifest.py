"""An artifact's manifests live in the CRDT doc `artifacts/{name}`:

- map `versions`: version id -> {seq, bytes_total, chunks, table, format, created_ms, node, dc};
- map `tags`: tag (`latest`, `stable`, ...) -> version id, ordinary replicated keys (last writer wins);
- map `complete`: "{version} {node_id}" -> dc, the nodes that hold every chunk of a version.

A version's chunk table (32-byte id + 4-byte length per chunk, in file order) is itself stored as
chunks (`TABLE_ENTRIES_PER_PIECE` entries each), so the doc names only the pieces' ids and stays
small whatever the file size. The version id is derived from the table: the same bytes put twice, or
on two nodes, are one version; different bytes put concurrently are two versions, both kept.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import blake3

from crdtsync.artifacts.chunking import CHUNK_ID_BYTES

DOC_PREFIX = "artifacts/"
NAME_RE = re.compile(r"^[A-Za-z0-9._~@-]+(/[A-Za-z0-9._~@-]+)*$")
NAME_BYTES_MAX = 256
TAG_RE = re.compile(r"^[A-Za-z][A-Za-z0-9._-]{0,63}$")
TABLE_ENTRY = struct.Struct("<32sI")
TABLE_ENTRIES_PER_PIECE = 1024
VERSION_ID_HEX = 16
FORMATS = ("bytes", "safetensors")


class ArtifactError(Exception):
    """Base of the errors of `node.artifacts`."""


class ArtifactNotFoundError(ArtifactError, KeyError):
    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "not found"


class ArtifactTooLargeError(ArtifactError, ValueError):
    """A version beyond `ArtifactLimits` (bytes or chunks): refused before anything is published."""


class ManifestError(ArtifactError, ValueError):
    """A replicated manifest record that does not follow the format or the limits: ignored, counted."""


@dataclass(frozen=True, slots=True)
class ArtifactLimits:
    bytes_per_version_max: int = 256 * 1024**3
    chunks_per_version_max: int = 1 << 22
    versions_per_artifact_max: int = 4096

    @property
    def table_pieces_max(self) -> int:
        return -(-self.chunks_per_version_max // TABLE_ENTRIES_PER_PIECE)


@dataclass(frozen=True, slots=True)
class VersionRecord:
    """One version's manifest as the doc holds it."""

    version: str
    seq: int
    bytes_total: int
    chunks: int
    table: tuple[bytes, ...]
    format: str
    created_ms: int
    node: str
    dc: str

    def to_doc(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "bytes_total": self.bytes_total,
            "chunks": self.chunks,
            "table": [piece.hex() for piece in self.table],
            "format": self.format,
            "created_ms": self.created_ms,
            "node": self.node,
            "dc": self.dc,
        }


def check_name(name: str) -> str:
    dots = any(segment in (".", "..") for segment in name.split("/"))
    if not NAME_RE.match(name) or dots or len(name.encode()) > NAME_BYTES_MAX:
        raise ArtifactError(
            f"artifact name {name!r} must be 1..{NAME_BYTES_MAX} bytes of A-Z a-z 0-9 . _ ~ @ - "
            "in /-separated segments, none empty, . or .."
        )
    return name


def check_tag(tag: str) -> str:
    if not TAG_RE.match(tag):
        raise ArtifactError(f"tag {tag!r} must be a letter then up to 63 of A-Z a-z 0-9 . _ -")
    return tag


def doc_id(name: str) -> str:
    return DOC_PREFIX + check_name(name)


def version_id(table: list[bytes], bytes_total: int) -> str:
    digest = blake3.blake3(b"".join(table) + bytes_total.to_bytes(8, "little")).hexdigest()
    return digest[:VERSION_ID_HEX]


def encode_piece(entries: list[tuple[bytes, int]]) -> bytes:
    return b"".join(TABLE_ENTRY.pack(chunk, length) for chunk, length in entries)


def decode_piece(piece: bytes) -> Iterator[tuple[bytes, int]]:
    if len(piece) % TABLE_ENTRY.size:
        raise ManifestError(f"a chunk table piece of {len(piece)} bytes is not whole entries")
    yield from TABLE_ENTRY.iter_unpack(piece)


def _integer(record: dict[str, Any], key: str, high: int) -> int:
    value = record.get(key)
    if not isinstance(value, int | float) or isinstance(value, bool) or value != int(value):
        raise ManifestError(f"{key} must be an integer, got {value!r}")
    if not 0 <= value <= high:
        raise ManifestError(f"{key} {int(value)} is outside 0..{high}")
    return int(value)


def _text(record: dict[str, Any], key: str) -> str:
    value = record.get(key)
    if not isinstance(value, str) or len(value) > 256:
        raise ManifestError(f"{key} must be a string of at most 256 characters, got {value!r:.80}")
    return value


def parse_record(version: str, value: Any, limits: ArtifactLimits) -> VersionRecord:
    """A record read from the doc, checked against the format and `limits`: ManifestError."""
    if not re.fullmatch(f"[0-9a-f]{{{VERSION_ID_HEX}}}", version):
        raise ManifestError(f"version id {version!r:.40} is not {VERSION_ID_HEX} hex digits")
    if not isinstance(value, dict):
        raise ManifestError(f"version {version}: the record is not a map")
    table = value.get("table")
    if not isinstance(table, list) or len(table) > limits.table_pieces_max:
        raise ManifestError(
            f"version {version}: table must be a list of at most {limits.table_pieces_max} ids"
        )
    if not all(isinstance(piece, str) and re.fullmatch("[0-9a-f]{64}", piece) for piece in table):
        raise ManifestError(f"version {version}: table ids must be {CHUNK_ID_BYTES * 2} hex digits")
    fmt = _text(value, "format")
    if fmt not in FORMATS:
        raise ManifestError(f"version {version}: format {fmt!r} is not one of {FORMATS}")
    chunks = _integer(value, "chunks", limits.chunks_per_version_max)
    if -(-chunks // TABLE_ENTRIES_PER_PIECE) != len(table):
        raise ManifestError(
            f"version {version}: {chunks} chunks need {-(-chunks // TABLE_ENTRIES_PER_PIECE)} table pieces, got {len(table)}"
        )
    return VersionRecord(
        version=version,
        seq=_integer(value, "seq", 2**53),
        bytes_total=_integer(value, "bytes_total", limits.bytes_per_version_max),
        chunks=chunks,
        table=tuple(bytes.fromhex(piece) for piece in table),
        format=fmt,
        created_ms=_integer(value, "created_ms", 2**53),
        node=_text(value, "node"),
        dc=_text(value, "dc"),
    )
