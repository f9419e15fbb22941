"""Property tests of the envelope codec, in every wire version: round trips, and hostile bytes only
ever raise `WireError`."""

from __future__ import annotations

import dataclasses
import struct
import zlib
from typing import Any

import msgpack
from hypothesis import given, settings
from hypothesis import strategies as st

from crdtsync.core import envelope, wire
from crdtsync.core.wire import MessageKind, WireError

# A character is at most 4 UTF-8 bytes, so these sizes keep ids within the byte limits.
node_ids = st.text(min_size=1, max_size=wire.NODE_ID_BYTES_MAX // 4)
doc_ids = st.text(max_size=wire.DOC_ID_BYTES_MAX // 4)
addresses = st.text(max_size=64)
uints = st.integers(min_value=0, max_value=(1 << 63) - 1)
blobs = st.binary(max_size=300)

# An encoded state vector is never empty (an empty before state means "derived", version 3).
deltas = st.builds(wire.Delta, doc_ids, st.binary(min_size=1, max_size=300), blobs, blobs)


@st.composite
def retransmit_requests(draw: st.DrawFn) -> wire.RetransmitRequest:
    lo = draw(uints)
    hi = draw(st.integers(min_value=lo, max_value=(1 << 63) - 1))
    return wire.RetransmitRequest(draw(node_ids), draw(uints), lo, hi)


hashes = st.binary(min_size=wire.TREE_HASH_BYTES, max_size=wire.TREE_HASH_BYTES)
branch_sets = st.lists(st.integers(0, wire.TREE_BRANCHES - 1), unique=True, max_size=8).map(tuple)
segment_sets = st.lists(st.integers(0, wire.TREE_SEGMENTS - 1), unique=True, max_size=8).map(tuple)


@st.composite
def branch_segments(draw: st.DrawFn) -> wire.TreeSegments:
    branches = draw(st.lists(st.integers(0, wire.TREE_BRANCHES - 1), unique=True, max_size=2).map(tuple))
    per_branch = wire.TREE_SEGMENTS // wire.TREE_BRANCHES
    segment_hashes = draw(
        st.lists(hashes, min_size=len(branches) * per_branch, max_size=len(branches) * per_branch)
    )
    return wire.TreeSegments(draw(node_ids), draw(uints), branches, tuple(segment_hashes))


@st.composite
def branch_cells(draw: st.DrawFn) -> wire.TreeCells:
    branches = draw(branch_sets)
    cells = draw(
        st.lists(st.binary(min_size=64, max_size=64), min_size=len(branches), max_size=len(branches))
    )
    return wire.TreeCells(draw(node_ids), draw(uints), branches, tuple(cells))


@st.composite
def tree_leaves(draw: st.DrawFn) -> wire.TreeLeaves | wire.TreeLeavesRequest:
    segments = draw(st.lists(st.integers(0, wire.TREE_SEGMENTS - 1), unique=True, max_size=4).map(tuple))
    if draw(st.booleans()):
        leaves = draw(
            st.lists(
                st.binary(max_size=12).map(lambda b: b[: len(b) // 3 * 3]),
                min_size=len(segments),
                max_size=len(segments),
            )
        )
        return wire.TreeLeavesRequest(draw(node_ids), draw(uints), segments, tuple(leaves))
    positions = st.lists(st.integers(0, 50), unique=True, max_size=4).map(tuple)
    unmatched = draw(st.lists(positions, min_size=len(segments), max_size=len(segments)))
    entries = (
        draw(st.lists(st.tuples(st.sampled_from(segments), doc_ids, hashes), max_size=6)) if segments else []
    )
    return wire.TreeLeaves(draw(node_ids), draw(uints), segments, tuple(unmatched), tuple(entries))


@st.composite
def tree_entries(draw: st.DrawFn) -> wire.TreeEntries:
    segments = draw(st.lists(st.integers(0, wire.TREE_SEGMENTS - 1), unique=True, min_size=1, max_size=4))
    entries = draw(st.lists(st.tuples(st.sampled_from(segments), doc_ids, hashes), max_size=8))
    return wire.TreeEntries(draw(node_ids), draw(uints), tuple(segments), tuple(entries))


messages: st.SearchStrategy[wire.Message] = st.one_of(
    st.builds(wire.Hello, node_ids, uints, addresses, addresses, uints, node_ids),
    st.builds(wire.HelloAck, node_ids, uints, addresses, addresses, uints, node_ids),
    st.builds(
        wire.Members,
        node_ids,
        st.booleans(),
        st.lists(
            st.builds(
                wire.MemberEntry, node_ids, node_ids, addresses, addresses, uints, uints, st.booleans()
            ),
            min_size=1,
            max_size=6,
        ).map(tuple),
    ),
    st.builds(wire.Relayed, node_ids, node_ids, st.lists(deltas, min_size=1, max_size=6).map(tuple)),
    st.builds(wire.Ephemeral, node_ids, node_ids, doc_ids, blobs),
    st.builds(wire.Deltas, node_ids, uints, uints, st.lists(deltas, min_size=1, max_size=12).map(tuple)),
    st.builds(wire.Heartbeat, node_ids, uints, uints),
    retransmit_requests(),
    st.builds(wire.RetransmitGone, node_ids, uints, uints),
    st.builds(
        wire.SyncRequest, node_ids, st.lists(st.tuples(doc_ids, blobs), min_size=1, max_size=6).map(tuple)
    ),
    st.builds(
        wire.SyncResponse,
        node_ids,
        st.lists(st.tuples(doc_ids, blobs, blobs), min_size=1, max_size=6).map(tuple),
    ),
    st.builds(
        wire.SyncPush, node_ids, st.lists(st.tuples(doc_ids, blobs), min_size=1, max_size=6).map(tuple)
    ),
    st.builds(wire.TreeRoot, node_ids, uints, hashes),
    st.builds(wire.TreeBranches, node_ids, uints, st.just(True), st.just(())),
    st.builds(
        wire.TreeBranches,
        node_ids,
        uints,
        st.just(False),
        st.lists(hashes, min_size=64, max_size=64).map(tuple),
    ),
    st.builds(wire.TreeSegmentsRequest, node_ids, uints, branch_sets),
    branch_segments(),
    branch_cells(),
    tree_leaves(),
    st.builds(wire.TreeEntriesRequest, node_ids, uints, segment_sets),
    tree_entries(),
)


def _decode_or_wire_error(frame: bytes) -> wire.Message | None:
    """Decode `frame`; a `WireError` is an accepted outcome, any other exception fails the test."""
    try:
        return wire.decode(frame)
    except WireError as exc:
        assert exc.reason in {
            "truncated",
            "too_large",
            "bad_magic",
            "bad_version",
            "bad_header",
            "bad_kind",
            "bad_flags",
            "bad_length",
            "bad_checksum",
            "bad_compression",
            "bad_body",
        }, exc.reason
        return None


def _with_body(kind: int, flags: int, body: bytes) -> bytes:
    """A version-1 envelope around `body`."""
    return struct.pack("!2sBBBII", wire.MAGIC, 1, kind, flags, len(body), zlib.crc32(body)) + body


versions = st.sampled_from([1, 2, 3])


def _as_decoded(message: wire.Message, version: int) -> wire.Message:
    """Version 3 sends deltas without states: they decode empty (the receiver derives them)."""
    if version >= 3 and isinstance(message, wire.Deltas | wire.Relayed):
        stripped = tuple(wire.Delta(d.doc_id, b"", b"", d.update) for d in message.deltas)
        return dataclasses.replace(message, deltas=stripped)
    return message


@given(messages, versions)
def test_any_valid_message_round_trips(message: wire.Message, version: int) -> None:
    frame = wire.encode(message, version)
    assert wire.decode(frame) == _as_decoded(message, version)


@given(st.binary(max_size=600))
def test_arbitrary_bytes_decode_or_raise_wire_error(data: bytes) -> None:
    _decode_or_wire_error(data)


@given(st.binary(max_size=600), st.integers(0, 255), st.sampled_from([0, wire.FLAG_LZ4]))
def test_arbitrary_body_behind_a_valid_header_decodes_or_raises_wire_error(
    data: bytes, kind: int, flags: int
) -> None:
    _decode_or_wire_error(_with_body(kind, flags, data))


msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(1 << 63), (1 << 64) - 1)
    | st.floats()
    | st.text(max_size=20)
    | blobs,
    lambda children: st.lists(children, max_size=6),
    max_leaves=20,
)


@given(st.lists(msgpack_values, max_size=12), st.sampled_from(list(MessageKind)))
def test_arbitrary_msgpack_arrays_decode_or_raise_wire_error(fields: list[Any], kind: MessageKind) -> None:
    body: bytes = msgpack.packb(fields, use_bin_type=True)
    _decode_or_wire_error(_with_body(kind, 0, body))


@given(messages, versions, st.data())
def test_single_byte_mutation_of_a_valid_frame_decodes_or_raises_wire_error(
    message: wire.Message, version: int, data: st.DataObject
) -> None:
    frame = bytearray(wire.encode(message, version))
    index = data.draw(st.integers(0, len(frame) - 1), label="index")
    value = data.draw(st.integers(0, 255).filter(lambda v: v != frame[index]), label="value")
    frame[index] = value
    _decode_or_wire_error(bytes(frame))


@settings(max_examples=200)
@given(messages, versions, st.data())
def test_single_byte_mutation_of_a_body_with_fixed_checksum_decodes_or_raises_wire_error(
    message: wire.Message, version: int, data: st.DataObject
) -> None:
    # Re-sealing the mutated body with a correct length and checksums drives the mutation past the
    # envelope checks into decompression, msgpack and the field validation.
    frame = wire.encode(message, version)
    header = wire.read_header(frame)
    body = bytearray(frame[header.body_start :])
    index = data.draw(st.integers(0, len(body) - 1), label="index")
    body[index] = data.draw(st.integers(0, 255).filter(lambda v: v != body[index]), label="value")
    sender = header.sender.encode()
    resealed = envelope.pack(
        version, header.kind, header.flags, bytes(body), sender, header.epoch, header.seq
    )
    _decode_or_wire_error(resealed)
