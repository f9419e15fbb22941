"""Content-defined chunking: streaming, deterministic, tensor-aligned for safetensors files."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from crdtsync.artifacts.chunking import ChunkSizes, chunk_file, chunk_id, segments
from crdtsync.testing.safetensors import safetensors_bytes, write_safetensors

SMALL = ChunkSizes(min_bytes=1024, avg_bytes=4096, max_bytes=8192)


def _chunks(path: Path, sizes: ChunkSizes = SMALL) -> list[tuple[int, int, bytes]]:
    return [(chunk.offset, chunk.length, chunk.chunk_id) for chunk, _ in chunk_file(str(path), sizes)]


def test_chunks_cover_the_file_in_order_with_their_hashes(tmp_path: Path) -> None:
    data = random.Random(1).randbytes(300_000)
    (tmp_path / "f").write_bytes(data)
    offset = 0
    for chunk, piece in chunk_file(str(tmp_path / "f"), SMALL):
        assert chunk.offset == offset and chunk.length == len(piece)
        assert SMALL.min_bytes <= chunk.length <= SMALL.max_bytes or offset + chunk.length == len(data)
        assert chunk.chunk_id == chunk_id(data[offset : offset + chunk.length])
        offset += chunk.length
    assert offset == len(data)


def test_an_empty_file_has_no_chunks(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"")
    assert _chunks(tmp_path / "f") == []


def test_default_sizes_are_8_64_128_kib() -> None:
    assert ChunkSizes() == ChunkSizes(8 * 1024, 64 * 1024, 128 * 1024)


def test_sizes_out_of_order_are_refused() -> None:
    with pytest.raises(ValueError, match="min <= avg <= max"):
        ChunkSizes(min_bytes=9000, avg_bytes=4096, max_bytes=8192)


def test_safetensors_files_are_cut_at_every_tensor_boundary(tmp_path: Path) -> None:
    rng = random.Random(2)
    tensors = {f"layer{i}": rng.randbytes(rng.randrange(1, 30_000)) for i in range(12)}
    path = tmp_path / "m.safetensors"
    write_safetensors(str(path), tensors)
    with open(path, "rb") as file:
        ranges = segments(file, path.stat().st_size)
    cuts = {offset for offset, _, _ in _chunks(path)}
    assert len(ranges) == 13  # the header, then one range per tensor
    assert {start for start, _ in ranges} <= cuts


def test_a_moved_tensor_keeps_its_chunks(tmp_path: Path) -> None:
    rng = random.Random(3)
    tensors = {f"t{i}": rng.randbytes(50_000) for i in range(6)}
    moved = dict(reversed(list(tensors.items())))
    (tmp_path / "a").write_bytes(safetensors_bytes(tensors))
    (tmp_path / "b").write_bytes(safetensors_bytes(moved))
    ids_a = {chunk for _, _, chunk in _chunks(tmp_path / "a")}
    new = [(length, chunk) for _, length, chunk in _chunks(tmp_path / "b") if chunk not in ids_a]
    assert len(new) == 1  # the header only: every tensor's chunks are found in the other file
    assert new[0][0] < 1024


def test_a_malformed_header_is_chunked_as_plain_bytes(tmp_path: Path) -> None:
    data = (40).to_bytes(8, "little") + b"{not json" + random.Random(4).randbytes(100_000)
    (tmp_path / "f").write_bytes(data)
    with open(tmp_path / "f", "rb") as file:
        assert segments(file, len(data)) == [(0, len(data))]


def test_the_artifacts_api_is_pinned() -> None:
    import crdtsync.artifacts

    assert crdtsync.artifacts.__all__ == [
        "ArtifactDiff",
        "ArtifactError",
        "ArtifactIncompleteError",
        "ArtifactLimits",
        "ArtifactNotFoundError",
        "ArtifactTooLargeError",
        "ArtifactVersion",
        "Artifacts",
        "ArtifactsConfig",
        "ChunkCorruptError",
        "ChunkMissingError",
        "ChunkSizes",
        "ChunkStoreError",
        "CollectResult",
        "ManifestError",
        "PutResult",
        "TransferCounters",
    ]
