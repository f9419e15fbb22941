"""What changed between two versions: bytes and chunks, and for safetensors files the tensors.

Chunk boundaries align with tensor boundaries (`chunking.segments`), so a tensor is unchanged exactly
when the ids of the chunks covering its byte range are the same in both versions.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from crdtsync.artifacts.chunking import TensorRange, safetensors_tensors
from crdtsync.artifacts.manifest import VersionRecord

if TYPE_CHECKING:
    from crdtsync.artifacts.api import Artifacts

TENSOR_NAMES_MAX = 1000
"""At most this many names in each list of a diff (the counts are always exact)."""


@dataclass(frozen=True, slots=True)
class ArtifactDiff:
    old: str
    new: str
    bytes_old: int
    bytes_new_total: int
    bytes_changed: int
    """Bytes of `new` in chunks that `old` does not have: what a node holding `old` must fetch."""
    chunks_changed: int
    tensors_changed: tuple[str, ...]
    tensors_added: tuple[str, ...]
    tensors_removed: tuple[str, ...]
    tensors_changed_count: int
    tensors_added_count: int
    tensors_removed_count: int
    tensors_unchanged_count: int


def _head(artifacts: Artifacts, record: VersionRecord, size: int) -> bytes:
    """The first `size` bytes of the version."""
    parts = []
    have = 0
    for chunk, _ in artifacts.entries(record):
        if have >= size:
            break
        data = artifacts.store.read(chunk)
        parts.append(data)
        have += len(data)
    return b"".join(parts)[:size]


def tensor_ranges(artifacts: Artifacts, record: VersionRecord) -> list[TensorRange] | None:
    if record.format != "safetensors":
        return None
    prefix = _head(artifacts, record, 8)
    header_bytes = int.from_bytes(prefix, "little") if len(prefix) == 8 else 0
    head = _head(artifacts, record, 8 + header_bytes)
    # The parser reads only the prefix and the header: those bytes stand for the whole file.
    parsed = safetensors_tensors(io.BytesIO(head), record.bytes_total)
    return None if parsed is None else parsed[1]


def signatures(
    entries: Iterator[tuple[bytes, int]], tensors: list[TensorRange]
) -> dict[str, tuple[bytes, ...]]:
    """Each tensor's chunk ids (tensors sorted by start, as `safetensors_tensors` returns them)."""
    found: dict[str, list[bytes]] = {tensor.name: [] for tensor in tensors}
    index = 0
    offset = 0
    for chunk, length in entries:
        while index < len(tensors) and tensors[index].end <= offset:
            index += 1
        probe = index
        while probe < len(tensors) and tensors[probe].start < offset + length:
            if tensors[probe].end > offset:
                found[tensors[probe].name].append(chunk)
            probe += 1
        offset += length
    return {name: tuple(chunks) for name, chunks in found.items()}


def diff_tables(artifacts: Artifacts, old: VersionRecord, new: VersionRecord) -> ArtifactDiff:
    """Blocking (reads tables and headers from the chunk store)."""
    old_chunks = {chunk for chunk, _ in artifacts.entries(old)}
    changed_bytes = 0
    changed_chunks: set[bytes] = set()
    for chunk, length in artifacts.entries(new):
        if chunk not in old_chunks and chunk not in changed_chunks:
            changed_chunks.add(chunk)
            changed_bytes += length
    changed: list[str] = []
    added: list[str] = []
    removed: list[str] = []
    unchanged = 0
    old_tensors, new_tensors = tensor_ranges(artifacts, old), tensor_ranges(artifacts, new)
    if old_tensors is not None and new_tensors is not None:
        before = signatures(artifacts.entries(old), old_tensors)
        after = signatures(artifacts.entries(new), new_tensors)
        for name, chunks in after.items():
            if name not in before:
                added.append(name)
            elif before[name] != chunks:
                changed.append(name)
            else:
                unchanged += 1
        removed = [name for name in before if name not in after]
    return ArtifactDiff(
        old=old.version,
        new=new.version,
        bytes_old=old.bytes_total,
        bytes_new_total=new.bytes_total,
        bytes_changed=changed_bytes,
        chunks_changed=len(changed_chunks),
        tensors_changed=tuple(sorted(changed)[:TENSOR_NAMES_MAX]),
        tensors_added=tuple(sorted(added)[:TENSOR_NAMES_MAX]),
        tensors_removed=tuple(sorted(removed)[:TENSOR_NAMES_MAX]),
        tensors_changed_count=len(changed),
        tensors_added_count=len(added),
        tensors_removed_count=len(removed),
        tensors_unchanged_count=unchanged,
    )
