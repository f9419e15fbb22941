"""The Tictac tree: roots equal iff contents equal; incremental updates equal a rebuild; the
comparison walk finds exactly the differing docs."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crdtsync.core.merkle import MerkleTree

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
