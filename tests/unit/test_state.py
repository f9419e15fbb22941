"""State vectors and canonical digests."""

from __future__ import annotations

from typing import Any

import pytest
from pycrdt import Doc, Map, Snapshot, Text, merge_updates

from crdtsync.core.state import (
    _NOT_MINIMAL,
    _VARINT,
    DIGEST_BYTES,
    STATE_VECTOR_CLIENTS_MAX,
    StateDecodeError,
    StateVector,
    _canonical_from_snapshot,
    _canonical_from_tokens,
    apply_in,
    canonical_state,
    check_state_vector,
    covers,
    decode_state_vector,
    digest,
    encode_state_vector,
    merge_into,
    state_bytes_of,
    update_since,
)


def _new_doc(client_id: int) -> Doc[Any]:
    return Doc(client_id=client_id)


def _varuint(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


@pytest.mark.parametrize(
    "vector",
    [{}, {1: 0}, {1: 1}, {7: 3, 2: 127, 5: 128}, {(1 << 53) - 1: (1 << 32) + 5, 1: 16384, 300: 2}],
    ids=["empty", "zero-clock", "one", "unsorted", "large-values"],
)
def test_state_vector_encode_decode_round_trip(vector: StateVector) -> None:
    assert decode_state_vector(encode_state_vector(vector)) == vector


def test_encoding_is_sorted_by_client_so_insertion_order_does_not_matter() -> None:
    one = encode_state_vector({9: 1, 3: 2, 700: 5})
    other = encode_state_vector({700: 5, 3: 2, 9: 1})
    assert one == other
    assert one == _varuint(3) + _varuint(3) + _varuint(2) + _varuint(9) + _varuint(1) + _varuint(
        700
    ) + _varuint(5)


def test_decode_reads_pycrdt_state_vectors() -> None:
    doc = _new_doc(77)
    doc.get("text", type=Text).insert(0, "abc")  # three items of client 77
    doc.get("data", type=Map)["k"] = 1  # a fourth
    assert decode_state_vector(doc.get_state()) == {77: 4}


def test_pycrdt_accepts_our_encoding_for_get_update() -> None:
    source = _new_doc(1)
    source.get("text", type=Text).insert(0, "hello")
    target = _new_doc(2)
    target.apply_update(source.get_update(encode_state_vector({})))
    source.get("text", type=Text).insert(5, " world")
    target.apply_update(source.get_update(encode_state_vector(decode_state_vector(target.get_state()))))
    assert str(target.get("text", type=Text)) == "hello world"
    assert decode_state_vector(target.get_state()) == decode_state_vector(source.get_state())


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x01",
        b"\x01\x05",
        b"\x02\x05\x01",
        b"\x80",
        b"\x80" * 11,
        b"\x00\x00",
        _varuint(STATE_VECTOR_CLIENTS_MAX + 1),
    ],
    ids=[
        "empty",
        "count-only",
        "client-without-clock",
        "one-of-two",
        "open-varuint",
        "overlong",
        "trailing",
        "huge",
    ],
)
def test_malformed_state_vector_raises_state_decode_error(data: bytes) -> None:
    with pytest.raises(StateDecodeError):
        decode_state_vector(data)


@pytest.mark.parametrize(
    ("have", "need", "expected"),
    [
        ({}, {}, True),
        ({1: 3}, {}, True),
        ({}, {1: 0}, True),
        ({1: 3}, {1: 3}, True),
        ({1: 4, 2: 1}, {1: 3}, True),
        ({1: 2}, {1: 3}, False),
        ({1: 3}, {1: 3, 2: 1}, False),
        ({1: 3, 2: 0}, {2: 1}, False),
        ({1: 3, 2: 5}, {1: 3, 2: 5, 3: 0}, True),
        ({1: 3, 2: 1}, {1: 5, 2: 1, 3: 2}, False),
        ({1: 9}, {1: 5}, True),
    ],
)
def test_covers(have: StateVector, need: StateVector, expected: bool) -> None:
    assert covers(have, need) is expected


def test_merge_into_takes_the_maximum_per_client() -> None:
    target = {1: 3, 2: 1}
    merge_into(target, {2: 4, 3: 2, 1: 1})
    assert target == {1: 3, 2: 4, 3: 2}


# ---------------------------------------------------------------------------------------------- digests


def _writer(client_id: int) -> Doc[Any]:
    return _new_doc(client_id)


def _concurrent_updates() -> list[bytes]:
    """Full updates of three writers that edited the same Map keys and Text concurrently."""
    a, b, c = _writer(101), _writer(202), _writer(303)
    for doc, name in ((a, "a"), (b, "b"), (c, "c")):
        doc.get("data", type=Map)["shared"] = name
        doc.get("data", type=Map)[f"own-{name}"] = len(name)
        doc.get("text", type=Text).insert(0, f"<{name}>")
    # Let a and b see each other, then edit on top of what they saw.
    a.apply_update(b.get_update(a.get_state()))
    b.apply_update(a.get_update(b.get_state()))
    del a.get("data", type=Map)["own-b"]
    b.get("text", type=Text).insert(2, "xyz")
    del c.get("text", type=Text)[0:2]
    return [a.get_update(), b.get_update(), c.get_update()]


def _doc_from(updates: list[bytes], client_id: int = 999) -> Doc[Any]:
    doc = _new_doc(client_id)
    for update in updates:
        doc.apply_update(update)
    return doc


def _json(doc: Doc[Any]) -> tuple[dict[str, object], str]:
    return doc.get("data", type=Map).to_py() or {}, str(doc.get("text", type=Text))


def test_digest_is_equal_for_docs_that_received_the_same_updates_in_different_orders() -> None:
    a_up, b_up, c_up = _concurrent_updates()
    orders = [[a_up, b_up, c_up], [c_up, b_up, a_up], [b_up, c_up, a_up], [c_up, a_up, b_up]]
    docs = [_doc_from(order, client_id=900 + i) for i, order in enumerate(orders)]
    reference = docs[0]
    for doc in docs[1:]:
        assert _json(doc) == _json(reference)
        assert digest(doc) == digest(reference)
    assert len(digest(reference)) == DIGEST_BYTES


def test_digest_differs_when_the_items_differ() -> None:
    a_up, b_up, c_up = _concurrent_updates()
    assert digest(_doc_from([a_up, b_up])) != digest(_doc_from([a_up, b_up, c_up]))


def test_digest_differs_when_only_a_deletion_is_missing() -> None:
    writer = _writer(5)
    writer.get("text", type=Text).insert(0, "hello")
    writer.get("data", type=Map)["k"] = 1
    before_delete = writer.get_update()
    del writer.get("text", type=Text)[1:3]

    behind = _doc_from([before_delete])
    ahead = _doc_from([writer.get_update()])
    assert decode_state_vector(behind.get_state()) == decode_state_vector(ahead.get_state()), (
        "a deletion must not change the state vector"
    )
    assert str(ahead.get("text", type=Text)) != str(behind.get("text", type=Text))
    assert digest(behind) != digest(ahead)

    behind.apply_update(writer.get_update(behind.get_state()))
    assert digest(behind) == digest(ahead)


def test_digest_differs_when_only_a_map_key_deletion_is_missing() -> None:
    writer = _writer(6)
    writer.get("data", type=Map)["k"] = 1
    writer.get("data", type=Map)["j"] = 2
    behind = _doc_from([writer.get_update()])
    del writer.get("data", type=Map)["k"]
    ahead = _doc_from([writer.get_update()])
    assert decode_state_vector(behind.get_state()) == decode_state_vector(ahead.get_state())
    assert digest(behind) != digest(ahead)


def test_digest_does_not_depend_on_the_byte_order_of_get_state() -> None:
    writers = [_writer(client) for client in (1, 2, 3, 1000, 5_000_000, 1 << 40, 77, 123456789)]
    updates = []
    for doc in writers:
        doc.get("data", type=Map)[f"k{doc.client_id}"] = doc.client_id
        updates.append(doc.get_update())
    # Equal docs whose own (non-writing) client ids differ: pycrdt's hash-map order makes get_state differ.
    docs = [_doc_from(updates[i:] + updates[:i], client_id=10_000 + 37 * i) for i in range(len(updates))]
    docs += [_doc_from(list(reversed(updates)), client_id=(1 << 50) + i) for i in range(4)]
    assert len({doc.get_state() for doc in docs}) > 1, "precondition: get_state byte order must vary"
    assert len({canonical_state(doc) for doc in docs}) == 1
    assert len({digest(doc) for doc in docs}) == 1


def test_digest_of_an_empty_doc_ignores_its_client_id() -> None:
    assert digest(_new_doc(1)) == digest(_new_doc(2))


def _snapshot_of(doc: Doc[Any]) -> bytes:
    return Snapshot.from_doc(doc).encode()


def test_canonical_state_sorts_client_varints_of_equal_length_in_numeric_order() -> None:
    """Ids whose varints are as long but whose first bytes sort the other way (129: 81 01, 256: 80 02),
    with deletions by each: the fast path must give the bytes of the fully decoded form."""
    clients = [129, 256, 16_383, 16_384, 2_097_151, 5, (1 << 53) - 1]
    updates = []
    for client in clients:
        writer = _writer(client)
        writer.get("text", type=Text).insert(0, "abcd")
        del writer.get("text", type=Text)[1:3]
        updates.append(writer.get_update())
    doc = _doc_from(updates, client_id=77)
    tokens = _VARINT.findall(_snapshot_of(doc))
    fast = _canonical_from_tokens(tokens)
    assert fast is not None, "precondition: the snapshot takes the fast path"
    assert fast == _canonical_from_snapshot(_snapshot_of(doc))
    assert canonical_state(doc) == fast


@pytest.mark.parametrize(
    ("snapshot", "canonical"),
    [
        # no deletions; a state vector listing client 3 twice (decoded, the last clock counts)
        (b"\x00\x02\x03\x01\x03\x02", b"\x00\x01\x03\x02"),
        # client 1 in the delete set twice, ranges [0, 1) and [2, 3); state vector {1: 4}
        (
            b"\x02\x01\x01\x00\x01\x01\x01\x02\x01\x01\x01\x04",
            b"\x01\x01\x02\x00\x01\x02\x01\x01\x01\x04",
        ),
        # client 1 written in two bytes (0x81 0x00) though it fits in one: not minimal
        (b"\x00\x02\x81\x00\x05\x02\x01", b"\x00\x02\x01\x05\x02\x01"),
    ],
    ids=["vector-client-twice", "delete-client-twice", "not-minimal"],
)
def test_canonical_state_of_a_snapshot_yrs_would_not_write_is_decoded_in_full(
    snapshot: bytes, canonical: bytes
) -> None:
    """The fast path declines (None, or the minimal-varint check) and the general path decodes."""
    assert _NOT_MINIMAL.search(snapshot) or _canonical_from_tokens(_VARINT.findall(snapshot)) is None
    assert _canonical_from_snapshot(snapshot) == canonical


def test_canonical_state_refuses_a_snapshot_with_trailing_bytes() -> None:
    with pytest.raises(StateDecodeError, match="trailing"):
        _canonical_from_snapshot(b"\x00\x01\x01\x01\x07")


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x01\x05",  # one client announced, its clock missing
        b"\x01\x05\x80",  # a clock cut inside its varint
        b"\x01\x05\x01\x07",  # a byte after the vector
        b"\x01" + b"\x80" * 10 + b"\x01\x01",  # a client id of 11 bytes
        _varuint(STATE_VECTOR_CLIENTS_MAX + 1) + b"\x01\x01" * (STATE_VECTOR_CLIENTS_MAX + 1),
    ],
    ids=["empty", "missing-clock", "cut-varint", "trailing", "overlong", "too-many-clients"],
)
def test_check_state_vector_refuses_what_decode_refuses(data: bytes) -> None:
    with pytest.raises(StateDecodeError):
        decode_state_vector(data)
    with pytest.raises(StateDecodeError):
        check_state_vector(data)


def test_check_state_vector_accepts_pycrdt_state_vectors() -> None:
    writers = [_writer(client) for client in (3, 300, 1 << 40)]
    for writer in writers:
        writer.get("data", type=Map)["k"] = writer.client_id
    state = _doc_from([writer.get_update() for writer in writers]).get_state()
    assert len(decode_state_vector(state)) == 3
    check_state_vector(state)
    check_state_vector(encode_state_vector({}))


def test_doc_state_and_doc_update_read_as_pycrdt_does_inside_a_transaction_or_not() -> None:
    doc = _writer(5)
    doc.get("data", type=Map)["k"] = 1
    events: list[bytes] = []
    doc.observe(lambda event: events.append(event.update))
    behind = _new_doc(6)
    assert state_bytes_of(doc) == doc.get_state()
    assert update_since(doc) == doc.get_update()
    assert update_since(doc, behind.get_state()) == doc.get_update(behind.get_state())
    assert events == [], "a read commits no change: no observer runs"
    with doc.transaction():
        doc.get("data", type=Map)["k"] = 2
        assert decode_state_vector(state_bytes_of(doc)) == {5: 2}
        assert update_since(doc, state_bytes_of(doc)) == doc.get_update(doc.get_state())  # the delete set
    assert len(events) == 1
    behind.apply_update(update_since(doc, behind.get_state()))
    assert behind.get("data", type=Map)["k"] == 2


def test_apply_in_applies_and_reads_the_state_the_doc_has_after_the_commit() -> None:
    source: Doc[Any] = Doc(client_id=7)
    text = source.get("t", type=Text)
    updates: list[bytes] = []
    source.observe(lambda event: updates.append(event.update))
    for at, word in ((0, "abc"), (3, "def"), (6, "ghi")):
        text.insert(at, word)
    # The first update, whole; then one whose dependency (the second) is missing: pycrdt keeps it pending.
    for update, state in ((updates[0], {7: 3}), (merge_updates(updates[0], updates[2]), {7: 3})):
        target: Doc[Any] = Doc(client_id=9)
        target.get("t", type=Text)
        with target.transaction(origin=5) as transaction:
            inside = apply_in(transaction, target, update)
        assert decode_state_vector(inside) == decode_state_vector(state_bytes_of(target)) == state
        assert str(target.get("t", type=Text)) == "abc"
