"""Property tests of state vectors and canonical digests over random concurrent pycrdt edits."""

from __future__ import annotations

from typing import Any

from doc_edits import EDITS, apply_edit
from hypothesis import event, given
from hypothesis import strategies as st
from pycrdt import Doc, Map, Snapshot, Text, merge_updates

from crdtsync.core.state import (
    StateVector,
    _canonical_from_snapshot,
    canonical_state,
    covers,
    decode_state_vector,
    digest,
    encode_state_vector,
    merge_into,
)


def _new_doc(client_id: int) -> Doc[Any]:
    return Doc(client_id=client_id)


state_vectors = st.dictionaries(st.integers(0, (1 << 53) - 1), st.integers(0, 1 << 40), max_size=20)


@given(state_vectors)
def test_state_vector_round_trips(vector: StateVector) -> None:
    assert decode_state_vector(encode_state_vector(vector)) == vector


@given(state_vectors, state_vectors)
def test_merge_covers_both_inputs_and_covers_is_reflexive(a: StateVector, b: StateVector) -> None:
    merged = dict(a)
    merge_into(merged, b)
    assert covers(a, a)
    assert covers(merged, a)
    assert covers(merged, b)
    assert covers(a, merged) == covers(a, b)


# An edit: (writer index, operation, argument). Operations draw their positions from the doc at run time.
edits = st.lists(
    st.tuples(
        st.integers(0, 2),
        st.sampled_from(["map_set", "map_delete", "text_insert", "text_delete", "sync"]),
        st.integers(0, 1 << 16),
        st.text(alphabet="abcxyz", min_size=1, max_size=4),
    ),
    min_size=1,
    max_size=25,
)


def _run(writer_count: int, script: list[tuple[int, str, int, str]]) -> list[Doc[Any]]:
    """Play the script on `writer_count` concurrent writers (client ids 1..n); returns the writers."""
    writers = [_new_doc(i + 1) for i in range(writer_count)]
    for index, op, arg, text in script:
        doc = writers[index % writer_count]
        if op in EDITS:
            apply_edit(doc, op, arg, text)
        else:  # sync from another writer, by state vector, so the writers build on each other's edits
            other = writers[(index + 1 + arg) % writer_count]
            if other is not doc:
                doc.apply_update(other.get_update(doc.get_state()))
    return writers


def _json(doc: Doc[Any]) -> tuple[dict[str, object], str]:
    return doc.get("data", type=Map).to_py() or {}, str(doc.get("text", type=Text))


def _receiver(updates: list[bytes], client_id: int) -> Doc[Any]:
    doc = _new_doc(client_id)
    for update in updates:
        doc.apply_update(update)
    return doc


@given(st.integers(2, 3), edits, st.data())
def test_digest_is_equal_after_the_same_updates_in_any_order(
    writer_count: int, script: list[tuple[int, str, int, str]], data: st.DataObject
) -> None:
    writers = _run(writer_count, script)
    full_updates = [w.get_update() for w in writers]
    first = _receiver(full_updates, client_id=1000)
    order = data.draw(st.permutations(full_updates), label="order")
    second = _receiver(list(order), client_id=2000)
    assert _json(first) == _json(second)
    assert decode_state_vector(first.get_state()) == decode_state_vector(second.get_state())
    assert digest(first) == digest(second)


def _would_change(doc: Doc[Any], update: bytes) -> bool:
    """Whether applying `update` to (a copy of) `doc` changes it: pycrdt emits a non-empty update."""
    copy = _new_doc(doc.client_id)
    copy.apply_update(doc.get_update())
    emitted: list[bytes] = []
    subscription = copy.observe(lambda event: emitted.append(event.update))
    copy.apply_update(update)
    copy.unobserve(subscription)
    return any(u != b"\x00\x00" for u in emitted)


@given(st.integers(2, 3), edits)
def test_digest_differs_exactly_when_a_receiver_lacks_something(
    writer_count: int, script: list[tuple[int, str, int, str]]
) -> None:

    writers = _run(writer_count, script)
    everything = _receiver([w.get_update() for w in writers], client_id=1000)
    for left_out in range(writer_count):
        partial = _receiver([w.get_update() for i, w in enumerate(writers) if i != left_out], client_id=2000)
        lacks_something = _would_change(partial, everything.get_update())
        event(f"receiver lacks something: {lacks_something}")
        assert (digest(partial) != digest(everything)) == lacks_something
        # Once it gets the rest by state-vector exchange, the digests agree.
        partial.apply_update(everything.get_update(partial.get_state()))
        assert digest(partial) == digest(everything)


# Client ids of every varint length (1 to 8 bytes), so that sorting the snapshot's client varints as
# tokens is checked against sorting the decoded ids.
client_ids = st.lists(
    st.one_of(st.integers(1, 127), st.integers(128, 1 << 20), st.integers(1 << 20, (1 << 53) - 1)),
    min_size=2,
    max_size=4,
    unique=True,
)


@given(client_ids, edits, st.data())
def test_canonical_state_is_the_fully_decoded_form_whatever_the_history(
    ids: list[int], script: list[tuple[int, str, int, str]], data: st.DataObject
) -> None:
    """The snapshot's varints sorted as tokens (the fast path) give exactly the bytes of decoding,
    sorting and re-encoding it: digests are compared across nodes and versions and kept in stores."""
    writers = [_new_doc(client) for client in ids]
    for index, op, arg, text in script:
        doc = writers[index % len(writers)]
        if op in EDITS:
            apply_edit(doc, op, arg, text)
        else:
            other = writers[(index + 1 + arg) % len(writers)]
            if other is not doc:
                doc.apply_update(other.get_update(doc.get_state()))
    full_updates = [w.get_update() for w in writers]
    merged = _receiver(
        [merge_updates(*data.draw(st.permutations(full_updates), label="order"))],
        next(c for c in range(6, 11) if c not in ids),
    )
    for doc in [*writers, merged]:
        snapshot = Snapshot.from_doc(doc).encode()
        assert canonical_state(doc) == _canonical_from_snapshot(snapshot)
    everything = _receiver(full_updates, client_id=next(c for c in range(11, 16) if c not in ids))
    assert digest(merged) == digest(everything)
