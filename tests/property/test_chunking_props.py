"""Chunking properties: the same bytes give the same chunks; an insertion changes only the chunks
near it, so every chunk far enough after it keeps its id."""

from __future__ import annotations

import random
import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from crdtsync.artifacts.chunking import ChunkSizes, chunk_file

SIZES = ChunkSizes(min_bytes=256, avg_bytes=1024, max_bytes=4096)


def _ids(data: bytes) -> list[bytes]:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "f"
        path.write_bytes(data)
        return [chunk.chunk_id for chunk, _ in chunk_file(str(path), SIZES)]


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), size=st.integers(0, 60_000))
def test_same_bytes_same_chunks(seed: int, size: int) -> None:
    data = random.Random(seed).randbytes(size)
    assert _ids(data) == _ids(bytes(data))


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    at=st.floats(0.0, 1.0),
    inserted=st.binary(min_size=1, max_size=500),
)
def test_boundaries_are_stable_under_an_insertion(seed: int, at: float, inserted: bytes) -> None:
    data = random.Random(seed).randbytes(80_000)
    position = int(at * len(data))
    before = _ids(data)
    after = _ids(data[:position] + inserted + data[position:])
    # Chunks wholly after the edit resynchronise: most of the file's chunks are found again.
    kept = len(set(before) & set(after))
    changed = len(before) - kept
    assert changed <= 3 + len(inserted) // SIZES.min_bytes, (changed, len(before))
