"""Replica Merkle roots: equal iff the replicas' canonical doc states are equal, including
delete-only and concurrent-edit differences, and independent of the order updates were applied in."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from pycrdt import Doc, Map, Text

from crdtsync.core.replica import Replica
from crdtsync.core.state import canonical_state

DOC_IDS = ("models/a", "flags/b", "fleet/c")

# (writer, doc, action, key or position, value)
operations = st.lists(
    st.tuples(
        st.integers(0, 2),
        st.sampled_from(DOC_IDS),
        st.sampled_from(["set", "delete", "insert", "cut"]),
        st.integers(0, 4),
        st.integers(0, 99),
    ),
    min_size=1,
    max_size=30,
)


def _writer_updates(ops: list[tuple[int, str, str, int, int]]) -> list[list[tuple[str, bytes]]]:
    """Run the operations on independent (concurrent, never synced) writers; each writer's list of
    (doc id, update) is causally ordered by itself."""
    writers: list[dict[str, Doc[Any]]] = [{} for _ in range(3)]
    captured: list[list[tuple[str, bytes]]] = [[] for _ in range(3)]
    for writer, doc_id, action, key, value in ops:
        doc = writers[writer].get(doc_id)
        if doc is None:
            doc = writers[writer][doc_id] = Doc(client_id=100 + writer)
            doc.observe(lambda e, w=writer, d=doc_id: captured[w].append((d, e.update)))
        data, text = doc.get("data", type=Map), doc.get("text", type=Text)
        if action == "set":
            data[f"k{key}"] = value
        elif action == "delete" and f"k{key}" in data:
            del data[f"k{key}"]  # a delete-only update: the state vector does not move
        elif action == "insert":
            text.insert(min(key, len(text)), str(value))
        elif action == "cut" and len(text):
            start = min(key, len(text) - 1)
            del text[start : start + 1]
    return captured


def _replica(name: str, streams: list[list[tuple[str, bytes]]]) -> Replica:
    replica = Replica(node_id=name, epoch=1, client_id=900 + len(name), address=name, publish_endpoint=name)
    for stream in streams:
        for doc_id, update in stream:
            replica.load_update(doc_id, update)
    return replica


def _states(replica: Replica) -> dict[str, bytes]:
    return {
        doc_id: canonical_state(replica.open_doc(doc_id))
        for doc_id in replica.doc_ids()
        if not replica.doc_is_empty(doc_id)
    }


@settings(max_examples=150, deadline=None)
@given(operations, st.permutations([0, 1, 2]), st.integers(0, 2), st.integers(0, 3))
def test_roots_equal_iff_states_equal(
    ops: list[tuple[int, str, str, int, int]], order: list[int], truncated_writer: int, dropped: int
) -> None:
    streams = _writer_updates(ops)
    full = _replica("full", streams)
    reordered = _replica("reordered", [streams[i] for i in order])
    assert full.merkle_root() == reordered.merkle_root(), "the order of concurrent writers' updates matters"
    assert _states(full) == _states(reordered)

    partial_streams = [list(stream) for stream in streams]
    del partial_streams[truncated_writer][len(partial_streams[truncated_writer]) - dropped :]
    partial = _replica("partial", partial_streams)
    assert (partial.merkle_root() == full.merkle_root()) == (_states(partial) == _states(full))


def test_delete_only_divergence_changes_the_root() -> None:
    ops = [(0, "models/a", "set", 1, 7), (0, "models/a", "delete", 1, 0)]
    (stream, _, _) = _writer_updates(ops)
    with_delete = _replica("with", [stream])
    without_delete = _replica("without", [stream[:1]])
    doc_with, doc_without = with_delete.open_doc("models/a"), without_delete.open_doc("models/a")
    assert doc_with.get_state() == doc_without.get_state(), "same state vector: only the delete set differs"
    assert with_delete.merkle_root() != without_delete.merkle_root()
