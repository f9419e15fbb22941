"""Wire versions: version 1 frozen (frames pinned from the release before negotiation), the
version-2 header codec and its every malformed case, after states sent as patches, and admission
before the body is read."""

from __future__ import annotations

import dataclasses
import json
import random
import struct
import zlib
from pathlib import Path
from typing import Any

import msgpack
import pytest
from pycrdt import Doc, Map

from crdtsync.core import envelope, wire
from crdtsync.core.replica import Replica, ReplicaConfig
from crdtsync.core.wire import MessageKind, WireError
from crdtsync.core.wire_fields import after_patch, patched_after

NODE = "node-a"
V1_FRAMES: dict[str, str] = json.loads((Path(__file__).parent / "data" / "wire_v1_frames.json").read_text())
"""What a version-1 node (main at 06c068a, before wire negotiation) sent for each message below."""


def _delta(doc_id: str, update: bytes) -> wire.Delta:
    return wire.Delta(doc_id, b"\x01\x0b\x00", b"\x01\x0b\x01", update)


V1_MESSAGES: dict[str, wire.Message] = {
    "hello": wire.Hello(
        NODE, 17, "tcp://127.0.0.1:5000", "tcp://127.0.0.1:5001", 42, "eu-west", "rack-1", 2.5, 4096, 2
    ),
    "hello_ack": wire.HelloAck(NODE, 18, "tcp://127.0.0.1:5002", "tcp://127.0.0.1:5003", 0, "us-east"),
    "deltas": wire.Deltas(NODE, 3, 7, (_delta("doc-1", b"\x01\x02"), _delta("doc-2", b"\x03"))),
    "deltas_compressed": wire.Deltas(
        NODE, 3, 9, tuple(_delta(f"doc-{i % 3}", b"update-bytes" * 4) for i in range(20))
    ),
    "heartbeat": wire.Heartbeat(NODE, 3, 99),
    "seq_index": wire.SeqIndex(NODE, 3, 100, (7, 7, 4095)),
    "retransmit_request": wire.RetransmitRequest(NODE, 3, 5, 9),
    "sync_push": wire.SyncPush(NODE, (("doc-1", b"\x01\x02\x03"),)),
    "members": wire.Members(
        NODE,
        False,
        (
            wire.MemberEntry(
                NODE, "eu-west", "tcp://127.0.0.1:5000", "tcp://127.0.0.1:5001", 17, 3, False, "az-b", 0.25
            ),
        ),
    ),
    "relayed": wire.Relayed(NODE, "origin-node", (_delta("doc-1", b"\x01\x02"),)),
}


# ---------------------------------------------------------------------------------------------- version 1


@pytest.mark.parametrize("name", sorted(V1_MESSAGES))
def test_version_1_is_frozen_byte_for_byte(name: str) -> None:
    pinned = bytes.fromhex(V1_FRAMES[name])
    assert wire.encode(V1_MESSAGES[name], 1) == pinned
    assert wire.decode(pinned) == V1_MESSAGES[name]
    assert wire.decode(pinned, version_max=1) == V1_MESSAGES[name]


def test_a_node_pinned_to_version_1_refuses_version_2_naming_the_versions() -> None:
    with pytest.raises(WireError) as caught:
        wire.decode(wire.encode(wire.Heartbeat(NODE, 3, 99), 2), version_max=1)
    assert caught.value.reason == "bad_version"
    assert "wire version 2" in caught.value.detail and "1..1" in caught.value.detail


def test_a_version_1_hello_cannot_carry_the_range_and_reads_as_speaking_1_only() -> None:
    hello = wire.Hello(NODE, 1, "a", "p", 0, "dc", wire_version_min=1, wire_version_max=2)
    assert wire.decode(wire.encode(hello, 2)) == hello
    decoded = wire.decode(wire.encode(hello, 1))
    assert isinstance(decoded, wire.Hello)
    assert (decoded.wire_version_min, decoded.wire_version_max) == (1, 1)


# ---------------------------------------------------------------------------------------------- version 2


def _v2(
    kind: int = MessageKind.HEARTBEAT,
    body_fields: Any = (),
    *,
    sender: bytes = NODE.encode(),
    sender_length: int | None = None,
    epoch: bytes = b"\x03",
    seq: bytes = b"\x63",
    flags: int = 0,
    version: int = 2,
    header_crc: int | None = None,
) -> bytes:
    """A version-2 frame built by hand from the documented layout, so that any field can be wrong."""
    body: bytes = msgpack.packb(list(body_fields), use_bin_type=True)
    fixed = struct.pack("!2sBBBII", b"CS", version, kind, flags, len(body), zlib.crc32(body))
    length = len(sender) if sender_length is None else sender_length
    header = fixed + bytes((length,)) + sender + epoch + seq
    crc = zlib.crc32(header) if header_crc is None else header_crc
    return header + struct.pack("!I", crc) + body


def test_the_header_follows_the_documented_layout_and_carries_sender_epoch_and_seq() -> None:
    message = wire.Deltas(NODE, 300, 70_000, (_delta("doc-1", b"\x01"),))
    frame = wire.encode(message, 2)
    assert frame[:5] == b"CS\x02" + bytes((MessageKind.DELTAS, 0))
    assert frame[13] == len(NODE) and frame[14 : 14 + len(NODE)] == NODE.encode()
    header = wire.read_header(frame)
    assert (header.version, header.kind, header.sender, header.epoch, header.seq) == (
        2,
        MessageKind.DELTAS,
        NODE,
        300,
        70_000,
    )
    # 300 and 70,000 take 2 and 3 varint bytes, then the header's own checksum.
    assert header.body_start == 14 + len(NODE) + 2 + 3 + 4
    body = msgpack.unpackb(frame[header.body_start :])
    # The body leaves out the header's fields; the after state is a patch of the before state: 2
    # bytes kept from the front, none from the end, then b"\x01".
    assert body == ["doc-1", b"\x01\x0b\x00", b"\x02\x00\x01", b"\x01"]
    assert wire.decode(frame) == message
    # Version 3's header has the same sender part, 4 bytes earlier (no body length: test_wire_v3.py).
    assert wire.encode(message)[9 : header.body_start - 8] == frame[13 : header.body_start - 4]


def test_kinds_without_a_stream_position_carry_zero_and_keep_their_body() -> None:
    header = wire.read_header(wire.encode(wire.RetransmitRequest(NODE, 3, 5, 9)))
    assert (header.sender, header.epoch, header.seq) == (NODE, 0, 0)


def test_a_relayed_frame_names_its_origins_numbers_in_the_header_in_version_2_only() -> None:
    named = wire.Relayed(NODE, "origin-node", (_delta("doc-1", b"\x01\x02"),), 5, 300)
    header = wire.read_header(wire.encode(named, 2))
    assert (header.epoch, header.seq) == (5, 300)
    assert wire.decode(wire.encode(named, 2)) == named
    # Version 1 cannot name them: the frame is the pinned one, and reads as naming none.
    assert wire.encode(named, 1) == bytes.fromhex(V1_FRAMES["relayed"])
    assert wire.decode(wire.encode(named, 1)) == V1_MESSAGES["relayed"]
    # A version-2 frame without them (as a relay sends numbers that are not consecutive) adds nothing.
    unnamed = V1_MESSAGES["relayed"]
    assert len(wire.encode(named, 2)) == len(wire.encode(unnamed, 2)) + 1  # 300: 2 varint bytes, 5 and 0 one


def test_a_write_ack_question_is_flagged_in_the_header_in_version_2_only() -> None:
    question = wire.HandoffOffer(NODE, (("doc-1", b"\x00", b"\x00\x00"),), wants_acks=True)
    assert wire.read_header(wire.encode(question)).seq == 1
    assert wire.decode(wire.encode(question)) == question
    assert wire.decode(wire.encode(question, 1)) == dataclasses.replace(question, wants_acks=False)


@pytest.mark.parametrize("value", [0, 1, 127, 128, 16_383, 16_384, (1 << 63) - 1])
def test_epoch_and_seq_round_trip_at_every_varint_width(value: int) -> None:
    message = wire.Heartbeat(NODE, value, value)
    assert wire.decode(wire.encode(message)) == message


def test_a_version_2_frame_is_no_longer_than_version_1_plus_the_header_checksum() -> None:
    for message in V1_MESSAGES.values():
        assert len(wire.encode(message, 2)) <= len(wire.encode(message, 1)) + 4 + 4  # + range of a hello


def _hello_with_range(low: int, high: int) -> bytes:
    fields = ["a", "p", "dc", "", 1000, 4096, 2, low, high]
    return _v2(MessageKind.HELLO, fields, seq=b"\x00")


_VALID = _v2()
MALFORMED: list[tuple[str, bytes, str, str]] = [
    ("cut-in-fixed-part", _VALID[:12], "truncated", "13-byte header"),
    ("cut-before-sender-length", _VALID[:13], "truncated", "sender id's length"),
    ("cut-in-sender", _VALID[:16], "truncated", "sender id"),
    ("cut-after-sender", _VALID[: 14 + len(NODE)], "truncated", "inside the epoch"),
    ("cut-in-epoch", _v2(epoch=b"\x83")[: 14 + len(NODE) + 1], "truncated", "epoch"),
    ("cut-before-checksum", _VALID[: 14 + len(NODE) + 2 + 2], "truncated", "checksum"),
    ("sender-empty", _v2(sender=b""), "bad_header", "sender id length 0"),
    ("sender-too-long", _v2(sender=b"x" * 65), "bad_header", "sender id length 65"),
    ("sender-not-utf8", _v2(sender=b"\xff\xfe"), "bad_header", "not UTF-8"),
    ("epoch-over-9-bytes", _v2(epoch=b"\xff" * 9 + b"\x01"), "bad_header", "epoch is longer than 9"),
    ("seq-over-9-bytes", _v2(seq=b"\x80" * 10), "bad_header", "seq is longer than 9"),
    ("header-checksum", _v2(header_crc=1), "bad_checksum", "header checksum"),
    ("version-5", _v2(version=5), "bad_version", "wire version 5 is not accepted (this node speaks 1..4)"),
    ("version-99", _v2(version=99), "bad_version", "wire version 99"),
    ("version-0", _v2(version=0), "bad_version", "wire version 0"),
    ("kind-unknown", _v2(kind=200), "bad_kind", "unknown message kind 200"),
    ("flags-unknown", _v2(flags=0x04), "bad_flags", "0x4"),
    ("body-cut", _VALID[:-1], "bad_length", "declares 1 body bytes, frame carries 0"),
    ("body-extra", _VALID + b"\x90", "bad_length", "declares 1 body bytes, frame carries 2"),
    ("body-checksum", _VALID[:-1] + b"\x91", "bad_checksum", "body checksum"),
    ("body-extra-field", _v2(MessageKind.HEARTBEAT, (1,)), "bad_body", "1 extra fields"),
    ("hello-range-inverted", _hello_with_range(3, 2), "bad_body", "wire versions 3..2"),
    ("hello-range-zero", _hello_with_range(0, 2), "bad_body", "wire versions 0..2"),
    (
        "relayed-epoch-without-seq",
        _v2(MessageKind.RELAYED, ["o", "d", b"\x00", b"\x00\x00", b"\x00\x00"], epoch=b"\x05", seq=b"\x00"),
        "bad_header",
        "RELAYED names origin epoch 5 without a sequence number",
    ),
    (
        "offer-flag-not-1",
        _v2(MessageKind.HANDOFF_OFFER, [False, "d", b"\x00", b"\x00\x00"], epoch=b"\x00", seq=b"\x02"),
        "bad_header",
        "HandoffOffer header carries epoch 0 and seq 2",
    ),
    (
        "position-on-a-kind-without-one",
        _v2(MessageKind.SYNC_PUSH, ["d", b"\x00\x00"], epoch=b"\x01", seq=b"\x01"),
        "bad_header",
        "SyncPush header carries epoch 1 and seq 1",
    ),
    (
        "hello-without-range",
        _v2(MessageKind.HELLO, ["a", "p", "dc", "", 1000, 4096, 2], seq=b"\x00"),
        "bad_body",
        "too few fields",
    ),
]


@pytest.mark.parametrize(
    ("frame", "reason", "detail"), [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED]
)
def test_every_malformed_version_2_frame_raises_wire_error_naming_what(
    frame: bytes, reason: str, detail: str
) -> None:
    with pytest.raises(WireError) as caught:
        wire.decode(frame)
    assert caught.value.reason == reason
    assert detail in caught.value.detail


def test_a_hand_built_version_2_frame_decodes() -> None:
    assert wire.decode(_VALID) == wire.Heartbeat(NODE, 3, 99)
    hello = wire.decode(_hello_with_range(2, 7))
    assert isinstance(hello, wire.Hello)
    assert (hello.wire_version_min, hello.wire_version_max, hello.last_seq) == (2, 7, 0)


# ---------------------------------------------------------------------------------------------- after states


def test_after_patches_round_trip_any_pair_of_byte_strings() -> None:
    seed = random.randrange(1 << 32)
    print(f"after-patch seed {seed}")
    rng = random.Random(seed)
    for _ in range(2000):
        before = rng.randbytes(rng.randint(0, 40))
        after = bytearray(before) if rng.random() < 0.7 else bytearray(rng.randbytes(rng.randint(0, 40)))
        for _ in range(rng.randint(0, 3)):  # edits anywhere: replace, insert, delete
            at = rng.randint(0, len(after))
            after[at : at + rng.randint(0, 2)] = rng.randbytes(rng.randint(0, 3))
        assert patched_after(before, after_patch(before, bytes(after))) == bytes(after), (before, after)


def test_a_writers_after_state_takes_a_few_bytes_among_many_clients() -> None:
    docs: list[Doc[Any]] = [Doc() for _ in range(9)]
    for index, doc in enumerate(docs):
        doc.get("m", type=Map)[f"k{index}"] = index
    updates = [doc.get_update() for doc in docs]
    writer = docs[0]
    for update in updates:
        writer.apply_update(update)
    states: list[tuple[bytes, bytes]] = []
    writer.observe(lambda event: states.append((event.before_state, event.after_state)))
    for value in range(20):
        writer.get("m", type=Map)["x"] = value
    for before, after in states:
        assert len(before) > 60, "nine 53-bit client ids"
        patch = after_patch(before, after)
        assert len(patch) <= 5
        assert patched_after(before, patch) == after


@pytest.mark.parametrize(
    ("patch", "detail"),
    [
        (b"\x03\x01", "keeps 3+1 bytes of a 3-byte before"),
        (b"\x80\x80\x80\x80\x01\x00", "truncated or its lengths overlong"),
        (b"\x01", "truncated"),
        (b"", "truncated"),
    ],
)
def test_a_malformed_after_patch_is_a_wire_error(patch: bytes, detail: str) -> None:
    with pytest.raises(WireError) as caught:
        patched_after(b"\x01\x0b\x00", patch)
    assert caught.value.reason == "bad_body"
    assert detail in caught.value.detail
    frame = _v2(MessageKind.DELTAS, ["doc", b"\x01\x0b\x00", patch, b"\x00\x00"])
    with pytest.raises(WireError):
        wire.decode(frame)


# ---------------------------------------------------------------------------------------------- admission


def _quarantined_replica() -> Replica:
    """A replica that has quarantined `mallory` (3 rejected updates)."""
    config = ReplicaConfig(quarantine_after_rejects=3, quarantine_ms=60_000.0)
    replica = Replica(node_id="r", epoch=1, client_id=5, address="r", publish_endpoint="rp", config=config)
    garbage = b"\x01\x01\x05\x00\xff\xff\xff\x0f"
    for seq in range(1, 4):
        delta = wire.Delta(f"doc-{seq}", b"\x00", b"\x01\x05\x01", garbage)
        replica.receive(wire.encode(wire.Deltas("mallory", 1, seq, (delta,))), float(seq))
    assert replica.counters.peers_quarantined == 1
    return replica


def _counting_unpackb(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real = msgpack.unpackb

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr("crdtsync.core.wire.msgpack.unpackb", counting)
    return calls


@pytest.mark.parametrize(("version", "parsed"), [(2, 0), (1, 50)])
def test_a_quarantined_senders_version_2_frames_never_reach_msgpack(
    monkeypatch: pytest.MonkeyPatch, version: int, parsed: int
) -> None:
    replica = _quarantined_replica()
    push = wire.SyncPush("mallory", tuple((f"doc-{i}", b"\x00" * 300) for i in range(20)))
    frame = wire.encode(push, version)
    assert frame[4] & wire.FLAG_LZ4, "the body is compressed: version 1 pays lz4 and msgpack per frame"
    calls = _counting_unpackb(monkeypatch)
    for index in range(50):
        replica.receive(frame, 10.0 + index)
    assert replica.counters.frames_dropped_quarantined == 50
    assert len(calls) == parsed


def test_an_impostor_and_this_nodes_own_id_are_refused_from_the_header(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    replica = Replica(node_id="r", epoch=1, client_id=6, address="r", publish_endpoint="rp")
    replica.receive(wire.encode(wire.Heartbeat("alice", 1, 0)), 1.0, sender_key="KEY-A")
    calls = _counting_unpackb(monkeypatch)
    replica.receive(wire.encode(wire.Heartbeat("alice", 1, 1)), 2.0, sender_key="KEY-M")
    replica.receive(wire.encode(wire.Heartbeat("r", 1, 1)), 3.0)
    assert replica.counters.frames_dropped_identity == 1
    assert replica.counters.own_frames_dropped == 1
    assert calls == []


def test_a_replica_pinned_to_version_1_counts_version_2_frames_as_bad_version() -> None:
    replica = Replica(
        node_id="r",
        epoch=1,
        client_id=7,
        address="r",
        publish_endpoint="rp",
        config=ReplicaConfig(wire_version_max=1),
    )
    replica.receive(wire.encode(wire.Heartbeat("alice", 1, 0), 2), 1.0)
    replica.receive(wire.encode(wire.Heartbeat("alice", 1, 0), 1), 2.0)
    assert replica.counters.wire_errors == {"bad_version": 1}
    assert replica.counters.frames_received == 2


def test_wire_version_max_outside_the_spoken_versions_is_refused() -> None:
    for bad in (0, 5):
        with pytest.raises(ValueError, match="wire_version_max must be 1, 2, 3 or 4"):
            ReplicaConfig(wire_version_max=bad)
    assert envelope.WIRE_VERSION == 4, "ReplicaConfig's bound follows the highest version"


# ---------------------------------------------------------------------------------------------- skipped numbers


def test_a_deltas_frame_lists_the_buckets_it_skipped_in_version_2_only() -> None:
    listing = wire.Deltas(NODE, 3, 9, (_delta("doc-1", b"\x01"),), skipped=(7, 4095, 1 << 40))
    assert wire.decode(wire.encode(listing, 2)) == listing
    plain = wire.Deltas(NODE, 3, 9, (_delta("doc-1", b"\x01"),))
    assert wire.decode(wire.encode(plain, 2)) == plain
    assert len(wire.encode(listing, 2)) - len(wire.encode(plain, 2)) <= 1 + 1 + 3 + 9, "an array of 3 varints"
    with pytest.raises(ValueError, match="version 2 only"):
        wire.encode(listing, 1)


_DELTA_FIELDS = ["doc-1", b"\x01\x0b\x00", b"\x00\x00", b"\x01"]
"""One delta's version-2 body fields (the after state as an empty patch: equal to the before state)."""


@pytest.mark.parametrize(
    ("skipped", "seq", "detail"),
    [
        (["x"], b"\x09", "skipped holds a value that is not an unsigned 63-bit integer"),
        ([-1], b"\x09", "skipped holds a value"),
        ([1] * (wire.SKIPPED_SEQS_MAX + 1), b"\x7f", f"array of at most {wire.SKIPPED_SEQS_MAX}"),
        ([1, 2, 3], b"\x03", "skips 3 numbers before 3"),
    ],
    ids=["not-an-integer", "negative", "too-many", "before-the-first-number"],
)
def test_a_malformed_skipped_list_is_a_wire_error(skipped: list[Any], seq: bytes, detail: str) -> None:
    frame = _v2(MessageKind.DELTAS, [skipped, *_DELTA_FIELDS], seq=seq)
    with pytest.raises(WireError) as caught:
        wire.decode(frame)
    assert caught.value.reason == "bad_body"
    assert detail in caught.value.detail
