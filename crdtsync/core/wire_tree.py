"""The anti-entropy messages' shape, encoding and readers: the Merkle tree's fixed shape (part of
the protocol: every node of a cluster uses the same one), the TREE_* bodies' fields, and their
validation (`crdtsync.core.wire` dispatches to them)."""

from __future__ import annotations

from typing import Any

from crdtsync.core.envelope import WireError
from crdtsync.core.merkle import CELL_BYTES, CELL_SIDE, LEAF_BYTES
from crdtsync.core.messages import (
    Message,
    TreeBranches,
    TreeCells,
    TreeEntries,
    TreeEntriesRequest,
    TreeLeaves,
    TreeLeavesRequest,
    TreeRoot,
    TreeSegments,
    TreeSegmentsRequest,
)
from crdtsync.core.wire_fields import DOC_ID_BYTES_MAX, Fields

ENTRIES_PER_MESSAGE_MAX = 4096
"""Most (segment, doc id, digest) entries in one TREE_ENTRIES message."""
TREE_SEGMENTS = 4096
TREE_BRANCHES = 64
"""The Merkle tree's shape is part of the protocol: every node of a cluster uses the same one."""
TREE_CELLS_BYTES = 2 * CELL_SIDE * CELL_BYTES
"""One branch's cells in TREE_CELLS (wire version 4): a row and a column per side of its grid."""

# The anti-entropy kinds' numbers (`wire.MessageKind` names them with the others).
TREE_ROOT_KIND = 10
TREE_BRANCHES_KIND = 11
TREE_SEGMENTS_REQUEST_KIND = 12
TREE_SEGMENTS_KIND = 13
TREE_ENTRIES_REQUEST_KIND = 14
TREE_ENTRIES_KIND = 15
TREE_CELLS_KIND = 28
TREE_LEAVES_REQUEST_KIND = 29
TREE_LEAVES_KIND = 30
TreeMessage = (
    TreeRoot | TreeBranches | TreeSegmentsRequest | TreeSegments | TreeCells | TreeLeavesRequest | TreeLeaves
    | TreeEntriesRequest | TreeEntries
)  # fmt: skip


def body_of(message: TreeMessage) -> tuple[int, list[Any]]:
    """The kind and the fields of an anti-entropy message (`wire.encode` wraps them in the envelope)."""
    match message:
        case TreeRoot(n, round_id, root):
            return TREE_ROOT_KIND, [n, round_id, root]
        case TreeBranches(n, round_id, equal, hashes):
            return TREE_BRANCHES_KIND, [n, round_id, equal, *hashes]
        case TreeSegmentsRequest(n, round_id, branches):
            return TREE_SEGMENTS_REQUEST_KIND, [n, round_id, *branches]
        case TreeSegments(n, round_id, branches, hashes):
            return TREE_SEGMENTS_KIND, [n, round_id, list(branches), *hashes]
        case TreeCells(n, round_id, branches, cells):
            return TREE_CELLS_KIND, [n, round_id, list(branches), *cells]
        case TreeLeavesRequest(n, round_id, segments, leaves):
            return TREE_LEAVES_REQUEST_KIND, [n, round_id, list(segments), *leaves]
        case TreeLeaves(n, round_id, segments, unmatched, entries):
            flat_leaves: list[Any] = [n, round_id, list(segments), [list(p) for p in unmatched]]
            for segment, doc_id, digest in entries:
                flat_leaves.extend((segment, doc_id, digest))
            return TREE_LEAVES_KIND, flat_leaves
        case TreeEntriesRequest(n, round_id, segments):
            return TREE_ENTRIES_REQUEST_KIND, [n, round_id, *segments]
        case TreeEntries(n, round_id, segments, entries):
            flat_entries: list[Any] = [n, round_id, list(segments)]
            for segment, doc_id, digest in entries:
                flat_entries.extend((segment, doc_id, digest))
            return TREE_ENTRIES_KIND, flat_entries
    raise TypeError(f"not an anti-entropy message: {message!r}")


def read_tree_root(f: Fields, node_id: str) -> Message:
    return TreeRoot(node_id, f.uint("round_id"), f.hash("root"))


def read_tree_branches(f: Fields, node_id: str) -> Message:
    round_id, equal = f.uint("round_id"), f.flag("equal")
    if f.remaining() != (0 if equal else TREE_BRANCHES):
        raise WireError("bad_body", f"TREE_BRANCHES must carry {TREE_BRANCHES} hashes unless equal")
    return TreeBranches(node_id, round_id, equal, tuple(f.hash("hash") for _ in range(f.remaining())))


def read_tree_segments_request(f: Fields, node_id: str) -> Message:
    round_id = f.uint("round_id")
    branches = f.indexes("branches", f.remaining(), TREE_BRANCHES)
    return TreeSegmentsRequest(node_id, round_id, branches)


def read_tree_segments(f: Fields, node_id: str) -> Message:
    round_id = f.uint("round_id")
    branches = f.index_list("branches", TREE_BRANCHES)
    if f.remaining() != len(branches) * (TREE_SEGMENTS // TREE_BRANCHES):
        raise WireError("bad_body", "TREE_SEGMENTS must carry every segment hash of each listed branch")
    return TreeSegments(node_id, round_id, branches, tuple(f.hash("hash") for _ in range(f.remaining())))


def read_tree_cells(f: Fields, node_id: str) -> Message:
    round_id = f.uint("round_id")
    branches = f.index_list("branches", TREE_BRANCHES)
    if f.remaining() != len(branches):
        raise WireError("bad_body", "TREE_CELLS must carry the cells of each listed branch")
    cells = tuple(f.blob("cells") for _ in branches)
    if any(len(blob) != TREE_CELLS_BYTES for blob in cells):
        raise WireError("bad_body", f"TREE_CELLS cells must be {TREE_CELLS_BYTES} bytes a branch")
    return TreeCells(node_id, round_id, branches, cells)


def read_tree_entries_request(f: Fields, node_id: str) -> Message:
    round_id = f.uint("round_id")
    return TreeEntriesRequest(node_id, round_id, f.indexes("segments", f.remaining(), TREE_SEGMENTS))


def read_tree_entries(f: Fields, node_id: str) -> Message:
    round_id = f.uint("round_id")
    segments = f.index_list("segments", TREE_SEGMENTS)
    return TreeEntries(node_id, round_id, segments, _entries(f, "TREE_ENTRIES", set(segments)))


def _entries(f: Fields, kind: str, listed: set[int]) -> tuple[tuple[int, str, bytes], ...]:
    """The (segment, doc id, digest) triples that end a TREE_ENTRIES or TREE_LEAVES body."""
    if f.remaining() % 3:
        raise WireError("bad_body", f"{kind} entries must be (segment, doc_id, digest) triples")
    if f.remaining() // 3 > ENTRIES_PER_MESSAGE_MAX:
        raise WireError("too_large", f"{kind} carries more than {ENTRIES_PER_MESSAGE_MAX} entries")
    entries = []
    while f.remaining():
        segment, doc_id, digest = f.uint("segment"), f.text("doc_id", DOC_ID_BYTES_MAX), f.blob("digest")
        if segment not in listed:
            raise WireError("bad_body", f"{kind} has an entry in unlisted segment {segment}")
        entries.append((segment, doc_id, digest))
    return tuple(entries)


def read_tree_leaves_request(f: Fields, node_id: str) -> Message:
    round_id = f.uint("round_id")
    segments = f.index_list("segments", TREE_SEGMENTS)
    if f.remaining() != len(segments):
        raise WireError("bad_body", "TREE_LEAVES_REQUEST must carry the leaves of each listed segment")
    leaves = tuple(f.blob("leaves") for _ in segments)
    if any(len(blob) % LEAF_BYTES for blob in leaves):
        raise WireError("bad_body", f"TREE_LEAVES_REQUEST leaves must be {LEAF_BYTES} bytes each")
    if sum(len(blob) for blob in leaves) > ENTRIES_PER_MESSAGE_MAX * LEAF_BYTES:
        raise WireError(
            "too_large", f"TREE_LEAVES_REQUEST carries more than {ENTRIES_PER_MESSAGE_MAX} leaves"
        )
    return TreeLeavesRequest(node_id, round_id, segments, leaves)


def read_tree_leaves(f: Fields, node_id: str) -> Message:
    round_id = f.uint("round_id")
    segments = f.index_list("segments", TREE_SEGMENTS)
    unmatched = f.index_lists("unmatched", len(segments), ENTRIES_PER_MESSAGE_MAX)
    entries = _entries(f, "TREE_LEAVES", set(segments))
    return TreeLeaves(node_id, round_id, segments, unmatched, entries)
