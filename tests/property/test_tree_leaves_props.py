"""Leaves instead of entries (wire version 4, `crdtsync.core.tree_leaves`): from its own entries of a
segment and the responder's answer to their leaves, the initiator knows exactly which docs differ."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from crdtsync.core.merkle import CELL_WINDOWS, LEAF_BYTES
from crdtsync.core.tree_leaves import answer_leaves, remote_view, request_leaves

doc_ids = st.text(alphabet="abcdef0123456789", min_size=1, max_size=6)
digests = st.binary(min_size=16, max_size=16)
segments = st.dictionaries(doc_ids, digests, max_size=30)


def _entries(content: dict[str, bytes]) -> list[tuple[str, bytes]]:
    return sorted(content.items())


@given(segments, st.lists(st.tuples(doc_ids, st.one_of(st.none(), digests)), max_size=8), st.data())
def test_the_initiator_learns_what_the_responder_holds_of_the_differing_docs(
    ours: dict[str, bytes], changes: list[tuple[str, bytes | None]], data: st.DataObject
) -> None:
    """Leaf hashes are 128-bit; two distinct leaves agree on 3 bytes with a 2^-24 chance, which these
    few examples never meet."""
    theirs = dict(ours)
    for doc_id, digest in changes:
        if digest is None:
            theirs.pop(doc_id, None)
        else:
            theirs[doc_id] = digest
    window = data.draw(st.integers(0, CELL_WINDOWS - 1), label="window")
    sent, leaves = request_leaves({7: _entries(ours)}, window, 4096)
    assert list(sent) == [7] and len(leaves[0]) == LEAF_BYTES * len(ours)
    listed, unmatched = answer_leaves(_entries(theirs), leaves[0], window)
    differing = {doc for doc in ours.keys() | theirs.keys() if ours.get(doc) != theirs.get(doc)}
    assert {doc_id for doc_id, _ in listed} == {doc for doc in differing if doc in theirs}
    assert {sent[7][index][0] for index in unmatched} == {doc for doc in differing if doc in ours}
    view = remote_view(sent[7], unmatched, dict(listed))
    assert view == theirs


def test_a_request_holds_the_segments_whose_leaves_fit() -> None:
    entries_of = {1: [("a", b"\x01" * 16)] * 3, 2: [("b", b"\x02" * 16)] * 2, 3: [("c", b"\x03" * 16)]}
    sent, leaves = request_leaves(entries_of, 0, 5)
    assert list(sent) == [1, 2] and [len(blob) for blob in leaves] == [9, 6]
    assert request_leaves({1: [("a", b"\x01" * 16)] * 6}, 0, 5) == ({}, ())


def test_positions_beyond_what_was_sent_are_ignored() -> None:
    sent = [("a", b"\x01" * 16), ("b", b"\x02" * 16)]
    assert remote_view(sent, (1, 9), {"c": b"\x03" * 16}) == {"a": b"\x01" * 16, "c": b"\x03" * 16}
