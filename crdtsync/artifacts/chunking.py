"""Content-defined chunking of a file into BLAKE3-named chunks, streamed (never the whole file in memory).

FastCDC (pyfastcdc, native) cuts where the content says, so an insertion moves the boundaries only
near itself and the chunks after it keep their ids. A safetensors file is first split at its header
and at every tensor's byte range (the header's JSON table of offsets), and each range is cut on its
own: an unchanged tensor yields the same chunks wherever it moved in the file.
"""

from __future__ import annotations

import itertools
import json
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

import blake3
from pyfastcdc import FastCDC

CHUNK_ID_BYTES = 32
"""A chunk id is the BLAKE3 digest of its bytes."""
SAFETENSORS_HEADER_BYTES_MAX = 16 * 1024 * 1024
"""A bigger header (the format allows 100 MB) is chunked as plain bytes, to bound the memory of a put."""
SAFETENSORS_TENSORS_MAX = 1 << 20
_READ_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class ChunkSizes:
    """FastCDC's bounds. The mean lands a little over `avg_bytes` (FastCDC skips `min_bytes` first)."""

    min_bytes: int = 8 * 1024
    avg_bytes: int = 64 * 1024
    max_bytes: int = 128 * 1024

    def __post_init__(self) -> None:
        if not 64 <= self.min_bytes <= self.avg_bytes <= self.max_bytes <= 16 * 1024 * 1024:
            raise ValueError(
                f"chunk sizes must satisfy 64 <= min <= avg <= max <= 16 MiB, got "
                f"{self.min_bytes}/{self.avg_bytes}/{self.max_bytes}"
            )
        if self.avg_bytes < 256 or self.max_bytes < 1024:
            raise ValueError("chunk sizes: avg_bytes must be >= 256 and max_bytes >= 1024 (FastCDC's bounds)")


@dataclass(frozen=True, slots=True)
class Chunk:
    offset: int
    length: int
    chunk_id: bytes


@dataclass(frozen=True, slots=True)
class TensorRange:
    """A tensor's bytes in the file: [start, end)."""

    name: str
    start: int
    end: int


def chunk_id(data: bytes | bytearray | memoryview) -> bytes:
    return blake3.blake3(data).digest()


class _Window:
    """A reader of [position, end) of a file, for FastCDC's `cut_stream`."""

    def __init__(self, file: BinaryIO, start: int, end: int) -> None:
        file.seek(start)
        self._file = file
        self._left = end - start

    def readinto(self, buffer: memoryview) -> int:
        if self._left <= 0:
            return 0
        count = self._file.readinto(buffer[: min(len(buffer), self._left)])  # type: ignore[attr-defined]
        self._left -= count
        return int(count)


def safetensors_tensors(file: BinaryIO, size_bytes: int) -> tuple[int, list[TensorRange]] | None:
    """The header's length (8-byte prefix included) and the tensors' ranges in the file, sorted by
    start; None when the file is not a well-formed safetensors file (then it is chunked as bytes)."""
    file.seek(0)
    prefix = file.read(8)
    if len(prefix) < 8:
        return None
    (header_bytes,) = struct.unpack("<Q", prefix)
    if not 2 <= header_bytes <= min(SAFETENSORS_HEADER_BYTES_MAX, size_bytes - 8):
        return None
    try:
        table = json.loads(file.read(header_bytes))
    except (UnicodeDecodeError, ValueError):
        return None
    if not isinstance(table, dict) or len(table) > SAFETENSORS_TENSORS_MAX:
        return None
    data_start = 8 + header_bytes
    tensors = []
    for name, entry in table.items():
        if name == "__metadata__":
            continue
        offsets = entry.get("data_offsets") if isinstance(entry, dict) else None
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)):
            return None
        begin, end = offsets
        if not 0 <= begin <= end <= size_bytes - data_start:
            return None
        tensors.append(TensorRange(name, data_start + begin, data_start + end))
    tensors.sort(key=lambda tensor: (tensor.start, tensor.end))
    for before, after in itertools.pairwise(tensors):
        if after.start < before.end:
            return None  # overlapping tensors: not a file this chunker trusts
    return data_start, tensors


def segments(file: BinaryIO, size_bytes: int) -> list[tuple[int, int]]:
    """The ranges chunked independently: the whole file, or a safetensors file's header, each
    tensor and whatever lies between or after them."""
    parsed = safetensors_tensors(file, size_bytes)
    if parsed is None:
        return [(0, size_bytes)] if size_bytes else []
    data_start, tensors = parsed
    cuts = [0, data_start, size_bytes]
    for tensor in tensors:
        cuts += [tensor.start, tensor.end]
    points = sorted(set(cuts))
    return list(itertools.pairwise(points))


def chunk_stream(file: BinaryIO, size_bytes: int, sizes: ChunkSizes) -> Iterator[tuple[Chunk, bytes]]:
    """Every chunk of an open file of `size_bytes`, in order, with its bytes (valid until the next)."""
    cutter = FastCDC(sizes.avg_bytes, min_size=sizes.min_bytes, max_size=sizes.max_bytes)
    for start, end in segments(file, size_bytes):
        if end - start <= sizes.max_bytes:
            file.seek(start)
            data = file.read(end - start)
            if len(data) != end - start:
                raise OSError(f"the file shrank while it was read (at byte {start + len(data)})")
            yield Chunk(start, len(data), chunk_id(data)), data
            continue
        position = start
        for piece in cutter.cut_stream(_Window(file, start, end)):
            data = bytes(piece.data)
            yield Chunk(position, len(data), chunk_id(data)), data
            position += len(data)
        if position != end:
            raise OSError(f"the file shrank while it was read (at byte {position})")


def chunk_file(path: str, sizes: ChunkSizes | None = None) -> Iterator[tuple[Chunk, bytes]]:
    """`chunk_stream` of the file at `path`."""
    with open(path, "rb", buffering=_READ_BYTES) as file:
        size_bytes = file.seek(0, 2)
        yield from chunk_stream(file, size_bytes, sizes or ChunkSizes())
