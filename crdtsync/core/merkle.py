"""A Tictac-style Merkle tree over doc_id -> canonical digest.

The tree has a fixed shape: `segments` leaves-buckets grouped under `branches` branches under one
root. A doc lives in the segment chosen by the hash of its id. Every hash is the XOR of the 128-bit
leaf hashes `H(doc_id, digest)` below it, so adding, removing or changing one doc updates its
segment, its branch and the root in O(1), and the tree can be built from stored digests without
loading any doc. Two trees of the same shape have equal roots iff they hold the same (doc_id,
digest) pairs (up to a 2^-128 chance of XOR cancellation).

Comparison walks down only where hashes differ: roots, then the branch hashes, then the segment
hashes of differing branches, then the (doc_id, digest) entries of differing segments. Its cost is
proportional to the divergence, not to the number of docs.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Callable

HASH_BYTES = 16
CHANGES_KEPT_MAX = 4096
"""At least this many of the latest changes are remembered (at most twice as many), so that a
filtered view computed earlier catches up by them alone (`grouped_branch_values`): an anti-entropy
round under placement then costs O(changes since the last one), not a walk of every segment."""


def _hash128(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=HASH_BYTES).digest(), "big")


def leaf_hash(doc_id: str, digest: bytes) -> int:
    encoded = doc_id.encode()
    return _hash128(len(encoded).to_bytes(4, "big") + encoded + digest)


class MerkleTree:
    """With `bucket_of` (doc id -> an int), each segment also keeps its hash per bucket, so that
    two nodes can compare only the buckets both hold (`filtered_*`: placement's (rule, partition))."""

    def __init__(self, segments: int, branches: int, bucket_of: Callable[[str], int] | None = None) -> None:
        if segments < 1 or branches < 1 or segments % branches:
            raise ValueError("segments must be a positive multiple of branches")
        self.bucket_of = bucket_of
        self.version = 0
        """Bumped by every change: what is computed from the tree can be cached against it."""
        self._bucket_hashes: list[dict[int, int] | None] = [None] * segments
        self.segments = segments
        self.branches = branches
        self.segments_per_branch = segments // branches
        self.root = 0
        self._segment_hashes = [0] * segments
        self._branch_hashes = [0] * branches
        # Plain dicts, sorted only when a segment's entries are asked for (differing segments only):
        # keeping a million ids sorted on insert costs seconds at start-up.
        self._segment_docs: list[dict[str, bytes] | None] = [None] * segments
        self._count = 0
        self._changes: list[tuple[int, int, int]] = []
        """(branch, bucket, hash change) of each version after `_changes_after`, with `bucket_of`."""
        self._changes_after = 0

    def __len__(self) -> int:
        return self._count

    def segment_of(self, doc_id: str) -> int:
        """CRC-32 of the UTF-8 doc id modulo the segment count: part of the protocol, every node must
        place a doc in the same segment."""
        return zlib.crc32(doc_id.encode()) % self.segments

    def get(self, doc_id: str) -> bytes | None:
        docs = self._segment_docs[self.segment_of(doc_id)]
        return docs.get(doc_id) if docs is not None else None

    def set(self, doc_id: str, digest: bytes) -> None:
        """Insert or update a doc's digest in O(1) hashes."""
        segment = self.segment_of(doc_id)
        docs = self._segment_docs[segment]
        if docs is None:
            docs = self._segment_docs[segment] = {}
        old = docs.get(doc_id)
        if old == digest:
            return
        change = leaf_hash(doc_id, digest)
        if old is None:
            self._count += 1
        else:
            change ^= leaf_hash(doc_id, old)
        docs[doc_id] = digest
        self._xor(segment, change, doc_id)

    def remove(self, doc_id: str) -> None:
        segment = self.segment_of(doc_id)
        docs = self._segment_docs[segment]
        old = docs.pop(doc_id, None) if docs is not None else None
        if old is None:
            return
        self._count -= 1
        self._xor(segment, leaf_hash(doc_id, old), doc_id)

    def _xor(self, segment: int, change: int, doc_id: str) -> None:
        self.version += 1
        if self.bucket_of is not None:
            buckets = self._bucket_hashes[segment]
            if buckets is None:
                buckets = self._bucket_hashes[segment] = {}
            bucket = self.bucket_of(doc_id)
            self._changes.append((segment // self.segments_per_branch, bucket, change))
            if len(self._changes) > 2 * CHANGES_KEPT_MAX:
                del self._changes[:CHANGES_KEPT_MAX]
                self._changes_after += CHANGES_KEPT_MAX
            value = buckets.get(bucket, 0) ^ change
            if value:
                buckets[bucket] = value
            else:
                buckets.pop(bucket, None)
        self._segment_hashes[segment] ^= change
        self._branch_hashes[segment // self.segments_per_branch] ^= change
        self.root ^= change

    def root_bytes(self) -> bytes:
        return self.root.to_bytes(HASH_BYTES, "big")

    def branch_hashes(self) -> list[bytes]:
        return [value.to_bytes(HASH_BYTES, "big") for value in self._branch_hashes]

    def segment_hashes(self, branch: int) -> list[bytes]:
        start = branch * self.segments_per_branch
        return [
            value.to_bytes(HASH_BYTES, "big")
            for value in self._segment_hashes[start : start + self.segments_per_branch]
        ]

    def segment_values(self, branch: int, accept: Callable[[int], bool] | None = None) -> list[int]:
        """The segment hashes of `branch` as ints, over the docs whose bucket `accept`s (None: all)."""
        start = branch * self.segments_per_branch
        if accept is None:
            return self._segment_hashes[start : start + self.segments_per_branch]
        return [
            self._filtered_segment(segment, accept)
            for segment in range(start, start + self.segments_per_branch)
        ]

    def segment_entries(self, segment: int) -> list[tuple[str, bytes]]:
        docs = self._segment_docs[segment]
        return sorted(docs.items()) if docs is not None else []

    def differing_branches(self, remote: list[bytes]) -> list[int]:
        return [
            index
            for index, value in enumerate(self.branch_hashes())
            if index < len(remote) and remote[index] != value
        ]

    def differing_segments(self, branch: int, remote: list[bytes]) -> list[int]:
        start = branch * self.segments_per_branch
        local = self.segment_hashes(branch)
        return [
            start + index
            for index, value in enumerate(local)
            if index < len(remote) and remote[index] != value
        ]

    # ------------------------------------------------------------------ filtered by bucket

    def _filtered_segment(self, segment: int, accept: Callable[[int], bool]) -> int:
        buckets = self._bucket_hashes[segment]
        value = 0
        if buckets:
            for bucket, bucket_hash in buckets.items():
                if accept(bucket):
                    value ^= bucket_hash
        return value

    def _filtered_branch(self, branch: int, accept: Callable[[int], bool]) -> int:
        start = branch * self.segments_per_branch
        value = 0
        for segment in range(start, start + self.segments_per_branch):
            value ^= self._filtered_segment(segment, accept)
        return value

    def filtered_root(self, accept: Callable[[int], bool]) -> bytes:
        """The root over the docs whose bucket `accept`s (needs `bucket_of`)."""
        value = 0
        for branch in range(self.branches):
            value ^= self._filtered_branch(branch, accept)
        return value.to_bytes(HASH_BYTES, "big")

    def filtered_branch_hashes(self, accept: Callable[[int], bool]) -> list[bytes]:
        return [self._filtered_branch(b, accept).to_bytes(HASH_BYTES, "big") for b in range(self.branches)]

    def grouped_branch_values(
        self, group_of: Callable[[int], int], since: tuple[int, dict[int, dict[int, int]]] | None = None
    ) -> tuple[int, dict[int, dict[int, int]]]:
        """(this tree's version, group -> branch -> the hash of the docs of that group's buckets in
        that branch), each bucket in group `group_of(bucket)` (negative: left out). The branch
        hashes over any union of groups are the XOR of theirs: placement groups buckets by holder
        set, so one walk per member view serves every peer. `since`, an earlier answer for the same
        `group_of`, is brought up to date in place by the changes after it while the tree remembers
        them. A group has an entry only for branches where it has docs: at most one per bucket and
        branch with docs."""
        groups: dict[int, dict[int, int]]
        if (
            since is not None
            and self.bucket_of is not None
            and self._changes_after <= since[0] <= self.version
        ):
            groups = since[1]
            for branch, bucket, change in self._changes[since[0] - self._changes_after :]:
                group = group_of(bucket)
                if group >= 0:
                    values = groups.setdefault(group, {})
                    values[branch] = values.get(branch, 0) ^ change
            return self.version, groups
        groups = {}
        per_branch = self.segments_per_branch
        for segment, buckets in enumerate(self._bucket_hashes):
            if buckets:
                branch = segment // per_branch
                for bucket, bucket_hash in buckets.items():
                    group = group_of(bucket)
                    if group >= 0:
                        values = groups.setdefault(group, {})
                        values[branch] = values.get(branch, 0) ^ bucket_hash
        return self.version, groups

    def filtered_segment_hashes(self, branch: int, accept: Callable[[int], bool]) -> list[bytes]:
        start = branch * self.segments_per_branch
        return [
            self._filtered_segment(segment, accept).to_bytes(HASH_BYTES, "big")
            for segment in range(start, start + self.segments_per_branch)
        ]

    def filtered_segment_entries(
        self, segment: int, accept: Callable[[int], bool]
    ) -> list[tuple[str, bytes]]:
        bucket_of = self.bucket_of
        assert bucket_of is not None, "a filtered tree needs bucket_of"
        return [
            (doc_id, digest) for doc_id, digest in self.segment_entries(segment) if accept(bucket_of(doc_id))
        ]


# ---------------------------------------------------------------------- cells: a branch's sketch

CELL_SIDE = 8
"""A branch's 64 segments as an 8 x 8 grid: its cells are the XOR of each row and of each column."""
CELL_BYTES = 4
"""Each cell is sent as 4 bytes of its 16: which 4 turns with the round (`cell_window`)."""
CELL_WINDOWS = HASH_BYTES // CELL_BYTES


def cell_window(round_id: int) -> int:
    """Which 4-byte window of the cells a round compares, drawn from the round id (Fibonacci hashing:
    the rounds with one peer have ids in steps of the peer count), so that a difference hidden in one
    round's window (a 2^-32 chance) shows in a later round's with probability 3/4 each."""
    return ((round_id * 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF) * CELL_WINDOWS >> 64


def branch_cells(segment_values: list[int], window: int) -> bytes:
    """The sketch of a branch from its segment hashes (`CELL_SIDE`² of them): the XOR of each row,
    then of each column, each cut to its `CELL_BYTES` bytes at `window`, big-endian."""
    side = CELL_SIDE
    if len(segment_values) != side * side:
        raise ValueError(f"a branch has {side * side} segments, got {len(segment_values)}")
    rows = [0] * side
    columns = [0] * side
    for index, value in enumerate(segment_values):
        if value:
            rows[index // side] ^= value
            columns[index % side] ^= value
    shift = 8 * CELL_BYTES * window
    mask = (1 << (8 * CELL_BYTES)) - 1
    return b"".join(((cell >> shift) & mask).to_bytes(CELL_BYTES, "big") for cell in rows + columns)


def differing_from_cells(local: bytes, remote: bytes) -> list[int]:
    """The segments (indexes in the branch) that may differ, given both sides' cells of one branch:
    every segment in a differing row and a differing column. Every differing segment is among them
    unless its difference cancels out in its row or column (a 2^-32 chance a round); when one row or
    one column differs, exactly the differing segments."""
    side, width = CELL_SIDE, CELL_BYTES
    differs = [
        local[i * width : (i + 1) * width] != remote[i * width : (i + 1) * width] for i in range(2 * side)
    ]
    rows = [row for row in range(side) if differs[row]]
    columns = [column for column in range(side) if differs[side + column]]
    return [row * side + column for row in rows for column in columns]


LEAF_BYTES = 3
"""Each leaf in a TREE_LEAVES_REQUEST is 3 bytes of its 16, at the round's window (`cell_window`): a
differing doc is hidden for a round when its 3 bytes match one of the other side's leaves of its
segment, about n / 2^24 for n docs a segment (1.4e-6 at 100,000 docs); one more byte would cost a
third more of the request's bytes, which grow with the docs of the differing segments."""


def short_leaves(entries: list[tuple[str, bytes]], window: int) -> bytes:
    """The leaf hashes of (doc id, digest) entries, each cut to `LEAF_BYTES` bytes at `window`, in the
    entries' order: what a TREE_LEAVES_REQUEST says of a segment instead of its doc ids and digests."""
    shift = 8 * LEAF_BYTES * window
    mask = (1 << (8 * LEAF_BYTES)) - 1
    return b"".join(
        ((leaf_hash(doc_id, digest) >> shift) & mask).to_bytes(LEAF_BYTES, "big")
        for doc_id, digest in entries
    )
