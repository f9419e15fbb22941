"""The Tictac tree: roots equal iff contents equal; incremental updates equal a rebuild; the
comparison walk finds exactly the differing docs."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crdtsync.core.merkle import (
    CELL_BYTES,
    CELL_SIDE,
    CELL_WINDOWS,
    MerkleTree,
    branch_cells,
    cell_window,
    differing_from_cells,
)

doc_ids = st.text(alphabet="abcdefghij/-0123456789", min_size=1, max_size=12)
digests = st.binary(min_size=16, max_size=16)
contents = st.dictionaries(doc_ids, digests, max_size=60)


def _tree(content: dict[str, bytes]) -> MerkleTree:
    tree = MerkleTree(segments=64, branches=8)
    for doc_id, digest in content.items():
        tree.set(doc_id, digest)
    return tree


def _walk_differences(a: MerkleTree, b: MerkleTree) -> set[str]:
    if a.root == b.root:
        return set()
    found: set[str] = set()
    for branch in a.differing_branches(b.branch_hashes()):
        for segment in a.differing_segments(branch, b.segment_hashes(branch)):
            left, right = dict(a.segment_entries(segment)), dict(b.segment_entries(segment))
            found |= {doc for doc in left.keys() | right.keys() if left.get(doc) != right.get(doc)}
    return found


@settings(max_examples=200)
@given(contents, contents)
def test_roots_equal_iff_contents_equal(left: dict[str, bytes], right: dict[str, bytes]) -> None:
    assert (_tree(left).root == _tree(right).root) == (left == right)


@settings(max_examples=200)
@given(contents, st.lists(st.tuples(doc_ids, st.one_of(st.none(), digests)), max_size=40))
def test_incremental_updates_equal_a_rebuild(
    start: dict[str, bytes], changes: list[tuple[str, bytes | None]]
) -> None:
    tree = _tree(start)
    final = dict(start)
    for doc_id, digest in changes:
        if digest is None:
            tree.remove(doc_id)
            final.pop(doc_id, None)
        else:
            tree.set(doc_id, digest)
            final[doc_id] = digest
    rebuilt = _tree(final)
    assert tree.root == rebuilt.root
    assert tree.branch_hashes() == rebuilt.branch_hashes()
    assert len(tree) == len(final)


@settings(max_examples=200)
@given(contents, contents)
def test_walk_finds_exactly_the_differing_docs(left: dict[str, bytes], right: dict[str, bytes]) -> None:
    expected = {doc for doc in left.keys() | right.keys() if left.get(doc) != right.get(doc)}
    assert _walk_differences(_tree(left), _tree(right)) == expected


def test_shape_must_be_consistent() -> None:
    with pytest.raises(ValueError, match="multiple"):
        MerkleTree(segments=100, branches=8)


# ---------------------------------------------------------------------- cells (wire version 4)


def _real_tree(content: dict[str, bytes]) -> MerkleTree:
    tree = MerkleTree(segments=4096, branches=64)  # the protocol's shape: 64 segments a branch
    for doc_id, digest in content.items():
        tree.set(doc_id, digest)
    return tree


def _cells_walk(a: MerkleTree, b: MerkleTree, round_id: int) -> tuple[set[int], set[int]]:
    """(segments the cells name, segments that differ) over every differing branch."""
    window = cell_window(round_id)
    named: set[int] = set()
    differ: set[int] = set()
    for branch in a.differing_branches(b.branch_hashes()):
        ours, theirs = a.segment_values(branch), b.segment_values(branch)
        found = differing_from_cells(branch_cells(ours, window), branch_cells(theirs, window))
        named |= {branch * 64 + at for at in found}
        differ |= {branch * 64 + at for at in range(64) if ours[at] != theirs[at]}
    return named, differ


@settings(max_examples=200)
@given(contents, st.lists(st.tuples(doc_ids, digests), max_size=6), st.integers(0, 1 << 40))
def test_cells_name_every_differing_segment(
    start: dict[str, bytes], changes: list[tuple[str, bytes]], round_id: int
) -> None:
    """Segment hashes are 128-bit XORs of leaf hashes: a difference cancels in a row or column, or
    in a round's 4-byte window, with a 2^-32 chance, which these few examples never meet."""
    changed = {**start, **dict(changes)}
    named, differ = _cells_walk(_real_tree(start), _real_tree(changed), round_id)
    assert differ <= named
    by_branch: dict[int, set[int]] = {}
    for segment in differ:
        by_branch.setdefault(segment // 64, set()).add(segment % 64)
    for branch, segments in by_branch.items():
        rows, columns = {s // CELL_SIDE for s in segments}, {s % CELL_SIDE for s in segments}
        named_here = {segment % 64 for segment in named if segment // 64 == branch}
        assert len(named_here) <= len(rows) * len(columns)
        if len(rows) == 1 or len(columns) == 1:
            assert named_here == segments, "one differing row or column names exactly its segments"


@given(st.lists(st.integers(0, (1 << 128) - 1), min_size=64, max_size=64), st.integers(0, 1 << 40))
def test_equal_branches_have_equal_cells_and_name_nothing(values: list[int], round_id: int) -> None:
    cells = branch_cells(values, cell_window(round_id))
    assert len(cells) == 2 * CELL_SIDE * CELL_BYTES
    assert differing_from_cells(cells, branch_cells(list(values), cell_window(round_id))) == []


def test_a_difference_hidden_in_one_window_shows_in_another() -> None:
    """Two segments of one row whose differences agree in the low 4 bytes cancel in that row's cell
    in the window of those bytes, and only there: other rounds see the row (and both columns)."""
    ours = [0] * 64
    theirs = list(ours)
    theirs[1] = 0x11111111_11111111_11111111_12345678
    theirs[2] = 0x22222222_22222222_22222222_12345678
    hidden = [
        w
        for w in range(CELL_WINDOWS)
        if not differing_from_cells(branch_cells(ours, w), branch_cells(theirs, w))
    ]
    assert hidden == [0]  # window 0 is the low 4 bytes (big-endian cells, shifted by the window)
    shown = differing_from_cells(branch_cells(ours, CELL_WINDOWS - 1), branch_cells(theirs, CELL_WINDOWS - 1))
    assert shown == [1, 2]
    assert {cell_window(round_id) for round_id in range(1, 400, 4)} == set(range(CELL_WINDOWS))


def test_cells_need_a_whole_branch() -> None:
    with pytest.raises(ValueError, match="64 segments"):
        branch_cells([0] * 63, 0)
