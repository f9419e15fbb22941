"""The envelope codec: round trips, compression policy and every validation error path, on version-1
frames built by hand (the version-2 header has its own tests in test_wire_v2.py)."""

from __future__ import annotations

import random
import struct
import zlib
from typing import Any

import lz4.block
import msgpack
import pytest

from crdtsync.core import chunks, forward, load_wire, wire
from crdtsync.core.wire import MessageKind, WireError

NODE = "node-a"
_SEGMENTS_PER_BRANCH = wire.TREE_SEGMENTS // wire.TREE_BRANCHES


def _delta(doc_id: str, update: bytes) -> wire.Delta:
    return wire.Delta(doc_id, b"\x01\x0b\x00", b"\x01\x0b\x01", update)


ONE_OF_EACH_KIND: list[wire.Message] = [
    wire.Hello(
        NODE, 17, "tcp://127.0.0.1:5000", "tcp://127.0.0.1:5001", 42, "eu-west", "rack-1", 2.5, 1024, 1
    ),
    wire.HelloAck(NODE, 18, "tcp://127.0.0.1:5002", "tcp://127.0.0.1:5003", 0, "us-east"),
    wire.Deltas(NODE, 3, 7, (_delta("doc-1", b"\x01\x02"), _delta("doc-2", b"\x03"), _delta("doc-1", b""))),
    wire.Heartbeat(NODE, 3, 99),
    wire.SeqIndex(NODE, 3, 100, (7, 7, 4095, 8191)),
    wire.SeqAck(NODE, 3, 5, 9, 0xFFFFFFFF),
    wire.RetransmitRequest(NODE, 3, 5, 9),
    wire.RetransmitGone(NODE, 3, 12),
    wire.SyncRequest(NODE, (("doc-1", b"\x01\x0b\x02"), ("doc-2", b"\x00"))),
    wire.SyncResponse(NODE, (("doc-1", b"\x00\x00", b"\x00"),)),
    wire.SyncPush(NODE, (("doc-ü", b"\x01\x02\x03"), ("doc-2", b""))),
    wire.TreeRoot(NODE, 1, b"\x10" * 16),
    wire.TreeBranches(NODE, 1, True, ()),
    wire.TreeBranches(NODE, 1, False, tuple(bytes([i]) * 16 for i in range(wire.TREE_BRANCHES))),
    wire.TreeSegmentsRequest(NODE, 2, (0, 63)),
    wire.TreeSegments(NODE, 2, (5,), tuple(bytes([i]) * 16 for i in range(_SEGMENTS_PER_BRANCH))),
    wire.TreeCells(NODE, 2, (5, 63), (bytes(range(64)), b"\xff" * 64)),
    wire.TreeLeavesRequest(NODE, 3, (0, 4095), (b"\x01\x02\x03" * 4, b"")),
    wire.TreeLeaves(NODE, 3, (0, 4095), ((0, 2), ()), ((4095, "doc-1", b"\x07" * 16),)),
    wire.TreeEntriesRequest(NODE, 3, (0, 4095)),
    wire.TreeEntries(NODE, 3, (7, 9), ((7, "doc-1", b"\x11" * 16), (9, "doc-2", b"\x22" * 16))),
    wire.TreeEntries(NODE, 3, (11,), ()),
    wire.Members(
        NODE,
        False,
        (
            wire.MemberEntry(
                NODE, "eu-west", "tcp://127.0.0.1:5000", "tcp://127.0.0.1:5001", 17, 3, False, "az-b", 0.25
            ),
            wire.MemberEntry("other", "us-east", "tcp://10.0.0.2:5000", "tcp://10.0.0.2:5001", 9, 0, True),
        ),
    ),
    wire.Relayed(NODE, "origin-node", (_delta("doc-1", b"\x01\x02"), _delta("doc-2", b""))),
    wire.Ephemeral(NODE, "origin-node", "doc-1", b"\x01\x2a\x03\x02{}"),
    wire.HandoffOffer(NODE, (("doc-1", b"\x01\x05\x02", b"\x01\x02"), ("doc-2", b"\x00", b"\x00\x00"))),
    wire.HandoffOffer(NODE, (("doc-3", b"\x00", b"\x00\x00"),), leaving=True),
    wire.HandoffAck(NODE, (("doc-1", 1, b"\x01\x05\x02"), ("doc-2", 2, b"\x00"))),
    chunks.ChunkRequest(NODE, 7, "checkpoints/llama-ft", "0123456789abcdef", (b"\x01" * 32, b"\x02" * 32)),
    chunks.ChunkReply(NODE, 7, ((b"\x01" * 32, b"chunk bytes"),), (b"\x02" * 32,)),
    forward.ForwardRequest(NODE, 9, "PUT", "/v1/docs/models/a/keys/k?write_acks=2", "application/json", b"1"),
    forward.ForwardReply(
        NODE, 9, 200, "application/json; charset=utf-8", "holder", b'{"doc_id": "models/a"}'
    ),
    load_wire.LoadSummaries(
        NODE,
        (
            load_wire.NodeLoad(
                NODE, "east", 1, 2, 0.25, (load_wire.DocLoad("d", True, 0.0, (("read", "east", 1.5),)),)
            ),
        ),
    ),
]


def _frame(
    kind: int,
    body: bytes,
    *,
    flags: int = 0,
    magic: bytes = wire.MAGIC,
    version: int = 1,
    length: int | None = None,
    checksum: int | None = None,
) -> bytes:
    """An envelope built by hand from the documented layout, so that any header field can be wrong."""
    header = struct.pack(
        "!2sBBBII",
        magic,
        version,
        kind,
        flags,
        len(body) if length is None else length,
        zlib.crc32(body) if checksum is None else checksum,
    )
    return header + body


def _packed(fields: Any) -> bytes:
    packed: bytes = msgpack.packb(fields, use_bin_type=True)
    return packed


def _frame_of(kind: MessageKind, fields: list[Any]) -> bytes:
    return _frame(kind, _packed(fields))


def _reason(frame: bytes) -> str:
    with pytest.raises(WireError) as caught:
        wire.decode(frame)
    return caught.value.reason


def _kind_of(message: wire.Message) -> MessageKind:
    return MessageKind(wire.encode(message)[3])


@pytest.mark.parametrize("version", [1, 2])
def test_every_message_kind_round_trips(version: int) -> None:
    kinds = {_kind_of(message) for message in ONE_OF_EACH_KIND}
    assert kinds == set(MessageKind), "the sample must cover every message kind"
    for message in ONE_OF_EACH_KIND:
        assert wire.decode(wire.encode(message, version)) == message


def test_encoded_header_follows_the_documented_layout() -> None:
    message = wire.Heartbeat(NODE, 3, 99)
    frame = wire.encode(message, 1)
    magic, version, kind, flags, length, checksum = struct.unpack_from("!2sBBBII", frame)
    body = frame[wire.HEADER_BYTES :]
    assert (magic, version, kind, flags) == (b"CS", 1, MessageKind.HEARTBEAT, 0)
    assert length == len(body)
    assert checksum == zlib.crc32(body)
    assert msgpack.unpackb(body) == [NODE, 3, 99]


@pytest.mark.parametrize(
    ("name", "kind", "fields"),
    [
        ("root-hash-short", MessageKind.TREE_ROOT, [NODE, 1, b"\x01" * 15]),
        ("seq-index-empty", MessageKind.SEQ_INDEX, [NODE, 1, 5]),
        ("seq-index-negative-bucket", MessageKind.SEQ_INDEX, [NODE, 1, 5, -1]),
        ("seq-ack-from-zero", MessageKind.SEQ_ACK, [NODE, 1, 0, 5, 7]),
        ("seq-ack-empty-range", MessageKind.SEQ_ACK, [NODE, 1, 6, 5, 7]),
        ("seq-ack-view-beyond-32-bits", MessageKind.SEQ_ACK, [NODE, 1, 5, 6, 1 << 32]),
        ("branches-missing-hashes", MessageKind.TREE_BRANCHES, [NODE, 1, False, b"\x01" * 16]),
        ("branches-equal-with-hashes", MessageKind.TREE_BRANCHES, [NODE, 1, True, b"\x01" * 16]),
        ("segments-request-out-of-range", MessageKind.TREE_SEGMENTS_REQUEST, [NODE, 1, wire.TREE_BRANCHES]),
        ("segments-request-repeated", MessageKind.TREE_SEGMENTS_REQUEST, [NODE, 1, 3, 3]),
        ("segments-wrong-count", MessageKind.TREE_SEGMENTS, [NODE, 1, [2], b"\x01" * 16]),
        ("cells-missing", MessageKind.TREE_CELLS, [NODE, 1, [2, 3], b"\x01" * 64]),
        ("cells-short", MessageKind.TREE_CELLS, [NODE, 1, [2], b"\x01" * 63]),
        ("cells-not-bytes", MessageKind.TREE_CELLS, [NODE, 1, [2], "x" * 64]),
        ("cells-branch-out-of-range", MessageKind.TREE_CELLS, [NODE, 1, [64], b"\x01" * 64]),
        ("leaves-request-missing", MessageKind.TREE_LEAVES_REQUEST, [NODE, 1, [2, 3], b"\x01" * 3]),
        ("leaves-request-partial-leaf", MessageKind.TREE_LEAVES_REQUEST, [NODE, 1, [2], b"\x01" * 4]),
        ("leaves-unmatched-missing", MessageKind.TREE_LEAVES, [NODE, 1, [2, 3], [[0]]]),
        ("leaves-unmatched-repeated", MessageKind.TREE_LEAVES, [NODE, 1, [2], [[0, 0]]]),
        ("leaves-unlisted-segment", MessageKind.TREE_LEAVES, [NODE, 1, [2], [[]], 3, "doc", b"\x01" * 16]),
        ("entries-request-negative", MessageKind.TREE_ENTRIES_REQUEST, [NODE, 1, -1]),
        ("entries-unlisted-segment", MessageKind.TREE_ENTRIES, [NODE, 1, [1], 2, "doc", b"\x01" * 16]),
        ("entries-not-triples", MessageKind.TREE_ENTRIES, [NODE, 1, [1], 1, "doc"]),
    ],
)
def test_malformed_tree_messages_are_rejected(name: str, kind: MessageKind, fields: list[Any]) -> None:
    with pytest.raises(WireError) as excinfo:
        wire.decode(_frame_of(kind, fields))
    assert excinfo.value.reason == "bad_body", name


# ---------------------------------------------------------------------------------------------- compression


def _deltas_body(message: wire.Deltas) -> bytes:
    fields: list[Any] = [message.node_id, message.epoch, message.first_seq]
    for d in message.deltas:
        fields += [d.doc_id, d.before_state, d.after_state, d.update]
    return _packed(fields)


def test_small_body_is_sent_uncompressed() -> None:
    message = wire.Deltas(NODE, 1, 1, (_delta("doc", b"\x00" * 50),))
    frame = wire.encode(message, 1)
    assert frame[4] & wire.FLAG_LZ4 == 0
    assert frame[wire.HEADER_BYTES :] == _deltas_body(message)


def test_compressible_batch_is_compressed_and_decompresses_to_the_same_body() -> None:
    message = wire.Deltas(NODE, 1, 1, tuple(_delta(f"doc-{i % 3}", b"update-bytes" * 4) for i in range(20)))
    plain_body = _deltas_body(message)
    frame = wire.encode(message, 1)
    sent_body = frame[wire.HEADER_BYTES :]
    assert frame[4] & wire.FLAG_LZ4
    assert len(sent_body) < len(plain_body)
    assert lz4.block.decompress(sent_body) == plain_body
    assert wire.decode(frame) == message


def test_incompressible_body_is_sent_uncompressed() -> None:
    rng = random.Random(1234)
    noise = bytes(rng.randrange(256) for _ in range(2000))
    message = wire.SyncPush(NODE, (("doc", noise),))
    plain_body = _packed([NODE, "doc", noise])
    assert len(lz4.block.compress(plain_body, store_size=True)) >= len(plain_body), "precondition"
    frame = wire.encode(message, 1)
    assert frame[4] & wire.FLAG_LZ4 == 0
    assert frame[wire.HEADER_BYTES :] == plain_body
    assert wire.decode(frame) == message


def test_encoding_a_frame_larger_than_the_maximum_fails() -> None:
    noise = random.Random(99).randbytes(wire.FRAME_BYTES_MAX)
    with pytest.raises(WireError) as caught:
        wire.encode(wire.SyncPush(NODE, (("doc", noise),)))
    assert caught.value.reason == "too_large"


# ---------------------------------------------------------------------------------------------- validation

_HEARTBEAT_BODY = _packed([NODE, 1, 2])
_VALID = _frame(MessageKind.HEARTBEAT, _HEARTBEAT_BODY)


def _lz4_frame(kind: MessageKind, compressed: bytes) -> bytes:
    return _frame(kind, compressed, flags=wire.FLAG_LZ4)


def _too_many_deltas() -> bytes:
    fields: list[Any] = [NODE, 1, 1]
    for _ in range(wire.DELTAS_PER_BATCH_MAX + 1):
        fields += ["d", b"", b"", b""]
    return _frame_of(MessageKind.DELTAS, fields)


def _too_many_digest_entries() -> bytes:
    fields: list[Any] = [NODE, 1, [0]]
    for i in range(wire.ENTRIES_PER_MESSAGE_MAX + 1):
        fields += [0, f"d{i}", b"x" * 16]
    return _frame_of(MessageKind.TREE_ENTRIES, fields)


INVALID_FRAMES: list[tuple[str, bytes, str]] = [
    ("empty", b"", "truncated"),
    ("shorter-than-header", _VALID[: wire.HEADER_BYTES - 1], "truncated"),
    ("bad-magic", _frame(MessageKind.HEARTBEAT, _HEARTBEAT_BODY, magic=b"XS"), "bad_magic"),
    ("bad-version-0", _frame(MessageKind.HEARTBEAT, _HEARTBEAT_BODY, version=0), "bad_version"),
    ("bad-version-5", _frame(MessageKind.HEARTBEAT, _HEARTBEAT_BODY, version=5), "bad_version"),
    ("kind-0", _frame(0, _HEARTBEAT_BODY), "bad_kind"),
    ("kind-past-last", _frame(max(MessageKind) + 1, _HEARTBEAT_BODY), "bad_kind"),
    ("kind-255", _frame(255, _HEARTBEAT_BODY), "bad_kind"),
    ("flag-bit-1", _frame(MessageKind.HEARTBEAT, _HEARTBEAT_BODY, flags=0x02), "bad_flags"),
    ("flag-bit-7-with-lz4", _frame(MessageKind.HEARTBEAT, _HEARTBEAT_BODY, flags=0x81), "bad_flags"),
    (
        "length-too-large",
        _frame(MessageKind.HEARTBEAT, _HEARTBEAT_BODY, length=len(_HEARTBEAT_BODY) + 1),
        "bad_length",
    ),
    (
        "length-too-small",
        _frame(MessageKind.HEARTBEAT, _HEARTBEAT_BODY, length=len(_HEARTBEAT_BODY) - 1),
        "bad_length",
    ),
    ("body-cut-short", _VALID[:-1], "bad_length"),
    (
        "bad-checksum",
        _frame(MessageKind.HEARTBEAT, _HEARTBEAT_BODY, checksum=zlib.crc32(_HEARTBEAT_BODY) ^ 1),
        "bad_checksum",
    ),
    ("body-not-msgpack", _frame(MessageKind.HEARTBEAT, b"\xc1"), "bad_body"),
    ("body-truncated-msgpack", _frame(MessageKind.HEARTBEAT, _HEARTBEAT_BODY[:-1]), "bad_body"),
    ("body-trailing-bytes", _frame(MessageKind.HEARTBEAT, _HEARTBEAT_BODY + b"\x01"), "bad_body"),
    ("body-empty", _frame(MessageKind.HEARTBEAT, b""), "bad_body"),
    ("body-not-an-array", _frame(MessageKind.HEARTBEAT, _packed(7)), "bad_body"),
    ("body-contains-a-map", _frame_of(MessageKind.HEARTBEAT, [NODE, {"a": 1}, 2]), "bad_body"),
    ("node-id-not-a-string", _frame_of(MessageKind.HEARTBEAT, [b"node", 1, 2]), "bad_body"),
    ("node-id-empty", _frame_of(MessageKind.HEARTBEAT, ["", 1, 2]), "bad_body"),
    (
        "node-id-too-long",
        _frame_of(MessageKind.HEARTBEAT, ["n" * (wire.NODE_ID_BYTES_MAX + 1), 1, 2]),
        "bad_body",
    ),
    ("node-id-too-many-utf8-bytes", _frame_of(MessageKind.HEARTBEAT, ["é" * 40, 1, 2]), "bad_body"),
    ("epoch-a-string", _frame_of(MessageKind.HEARTBEAT, [NODE, "1", 2]), "bad_body"),
    ("epoch-negative", _frame_of(MessageKind.HEARTBEAT, [NODE, -1, 2]), "bad_body"),
    ("epoch-a-bool", _frame_of(MessageKind.HEARTBEAT, [NODE, True, 2]), "bad_body"),
    ("epoch-a-float", _frame_of(MessageKind.HEARTBEAT, [NODE, 1.0, 2]), "bad_body"),
    ("seq-2-to-the-63", _frame_of(MessageKind.HEARTBEAT, [NODE, 1, 1 << 63]), "bad_body"),
    ("too-few-fields", _frame_of(MessageKind.HEARTBEAT, [NODE, 1]), "bad_body"),
    ("extra-field", _frame_of(MessageKind.HEARTBEAT, [NODE, 1, 2, 3]), "bad_body"),
    (
        "hello-extra-field",
        _frame_of(MessageKind.HELLO, [NODE, 1, "tcp://a:1", "tcp://a:2", 0, 0]),
        "bad_body",
    ),
    ("sync-state-not-bytes", _frame_of(MessageKind.SYNC_REQUEST, [NODE, "doc", "state"]), "bad_body"),
    (
        "sync-doc-id-too-long",
        _frame_of(MessageKind.SYNC_PUSH, [NODE, "d" * (wire.DOC_ID_BYTES_MAX + 1), b""]),
        "bad_body",
    ),
    ("deltas-none", _frame_of(MessageKind.DELTAS, [NODE, 1, 1]), "bad_body"),
    ("deltas-partial", _frame_of(MessageKind.DELTAS, [NODE, 1, 1, "doc", b"", b""]), "bad_body"),
    (
        "deltas-update-not-bytes",
        _frame_of(MessageKind.DELTAS, [NODE, 1, 1, "doc", b"", b"", "x"]),
        "bad_body",
    ),
    ("deltas-doc-id-not-a-string", _frame_of(MessageKind.DELTAS, [NODE, 1, 1, 5, b"", b"", b""]), "bad_body"),
    ("retransmit-empty-range", _frame_of(MessageKind.RETRANSMIT_REQUEST, [NODE, 1, 5, 4]), "bad_body"),
    ("tree-equal-not-bool", _frame_of(MessageKind.TREE_BRANCHES, [NODE, 1, 1]), "bad_body"),
    (
        "tree-entry-digest-not-bytes",
        _frame_of(MessageKind.TREE_ENTRIES, [NODE, 1, [0], 0, "doc", "x"]),
        "bad_body",
    ),
    ("too-many-deltas", _too_many_deltas(), "too_large"),
    ("too-many-digest-entries", _too_many_digest_entries(), "too_large"),
    (
        "lz4-declares-oversized-body",
        _lz4_frame(MessageKind.HEARTBEAT, (wire.BODY_BYTES_MAX + 1).to_bytes(4, "little") + b"\x00" * 8),
        "too_large",
    ),
    ("lz4-shorter-than-size-prefix", _lz4_frame(MessageKind.HEARTBEAT, b"\x05\x00"), "bad_compression"),
    (
        "lz4-garbage-block",
        _lz4_frame(MessageKind.HEARTBEAT, b"\x40\x00\x00\x00" + b"\xff" * 12),
        "bad_compression",
    ),
    (
        "lz4-valid-block-of-garbage",
        _lz4_frame(MessageKind.HEARTBEAT, lz4.block.compress(b"\xc1" * 300, store_size=True)),
        "bad_body",
    ),
    ("frame-larger-than-maximum", _frame(MessageKind.HEARTBEAT, b"\x00" * wire.FRAME_BYTES_MAX), "too_large"),
]


@pytest.mark.parametrize(
    ("frame", "reason"), [(f, r) for _, f, r in INVALID_FRAMES], ids=[n for n, _, _ in INVALID_FRAMES]
)
def test_invalid_frame_raises_wire_error_with_its_reason(frame: bytes, reason: str) -> None:
    assert _reason(frame) == reason


def test_valid_hand_built_frame_decodes() -> None:
    # The hand-built frames above differ from this one in exactly one field, so each invalid case fails
    # for the reason it names.
    assert wire.decode(_VALID) == wire.Heartbeat(NODE, 1, 2)


def test_wire_error_is_a_value_error_carrying_reason_and_detail() -> None:
    with pytest.raises(ValueError) as caught:
        wire.decode(b"")
    error = caught.value
    assert isinstance(error, WireError)
    assert error.reason == "truncated"
    assert error.detail
    assert str(error).startswith("truncated: ")


def test_a_handoff_ack_with_an_unknown_status_is_rejected() -> None:
    frame = _frame_of(MessageKind.HANDOFF_ACK, [NODE, "doc-1", 3, b"\x00"])
    assert _reason(frame) == "bad_body"


def test_an_ephemeral_payload_over_its_bound_is_rejected() -> None:
    fields = [NODE, "origin-node", "doc-1", b"x" * (wire.EPHEMERAL_BYTES_MAX + 1)]
    assert _reason(_frame_of(MessageKind.EPHEMERAL, fields)) == "too_large"
    largest = b"x" * wire.EPHEMERAL_BYTES_MAX
    decoded = wire.decode(_frame_of(MessageKind.EPHEMERAL, [NODE, "origin-node", "doc-1", largest]))
    assert decoded == wire.Ephemeral(NODE, "origin-node", "doc-1", largest)


def test_a_weight_out_of_range_is_rejected() -> None:
    fields = [NODE, 1, "tcp://a:1", "tcp://a:2", 0, "dc", "", 0, 4096, 1]
    assert _reason(_frame_of(MessageKind.HELLO, fields)) == "bad_body"
