"""Wire version 3: a delta is its doc id and update only, and the receiver derives its causal
metadata from the update (`update_check.causal_range`). Version 2 stays byte for byte what it was
(frames pinned from main before version 3); a delta received in version 3 and relayed to a link of
version 1 or 2 gets derived states; every malformed version-3 delta is refused, counted, naming what."""

from __future__ import annotations

import dataclasses
import json
import struct
import zlib
from pathlib import Path
from typing import Any

import msgpack
import pytest
from pycrdt import Doc, Map
from test_wire import ONE_OF_EACH_KIND
from test_wire_v2 import V1_MESSAGES, _v2

from crdtsync.core import wire
from crdtsync.core.replica import Replica
from crdtsync.core.state import decode_state_vector, encode_state_vector
from crdtsync.core.update_check import causal_range
from crdtsync.core.wire import MessageKind, WireError

NODE = "node-a"
V2_FRAMES: dict[str, str] = json.loads((Path(__file__).parent / "data" / "wire_v2_frames.json").read_text())
"""What a version-2 node (main at 2ceddad, before version 3) sent for each of `V1_MESSAGES`."""


def _v3(
    kind: int = MessageKind.HEARTBEAT,
    body_fields: Any = (),
    *,
    sender: bytes = NODE.encode(),
    epoch: bytes = b"\x03",
    seq: bytes = b"\x63",
    body_crc: int | None = None,
    header_crc: int | None = None,
    version: int = 3,
) -> bytes:
    """A version-3 frame built by hand from the documented layout, so that any field can be wrong
    (version 4 has the same layout)."""
    body: bytes = msgpack.packb(list(body_fields), use_bin_type=True)
    crc = zlib.crc32(body) if body_crc is None else body_crc
    header = (
        struct.pack("!2sBBBI", b"CS", version, kind, 0, crc) + bytes((len(sender),)) + sender + epoch + seq
    )
    checksum = zlib.crc32(header) if header_crc is None else header_crc
    return header + struct.pack("!I", checksum) + body


def _update(client_id: int = 42, value: object = 1) -> bytes:
    doc: Doc[Any] = Doc(client_id=client_id)
    doc.get("data", type=Map)["k"] = value
    return doc.get_update()


def _stripped(message: wire.Message) -> wire.Message:
    """`message` as version 3 decodes it: its deltas without states."""
    if isinstance(message, wire.Deltas | wire.Relayed):
        deltas = tuple(wire.Delta(d.doc_id, b"", b"", d.update) for d in message.deltas)
        return dataclasses.replace(message, deltas=deltas)
    return message


@pytest.mark.parametrize("name", sorted(V2_FRAMES))
def test_version_2_is_unchanged_byte_for_byte(name: str) -> None:
    pinned = bytes.fromhex(V2_FRAMES[name])
    assert wire.encode(V1_MESSAGES[name], 2) == pinned
    assert wire.decode(pinned) == V1_MESSAGES[name]


def test_every_message_kind_round_trips_in_version_3_with_deltas_stripped_of_their_states() -> None:
    for message in ONE_OF_EACH_KIND:
        assert wire.decode(wire.encode(message, 3)) == _stripped(message)


def test_a_version_3_delta_is_its_doc_id_and_update_and_the_receiver_derives_its_states() -> None:
    update = _update()
    message = wire.Deltas(NODE, 3, 9, (wire.Delta("doc-1", b"\x01\x2a\x00", b"\x01\x2a\x01", update),))
    frame = wire.encode(message, 3)
    header = wire.read_header(frame)
    assert header.version == 3
    assert msgpack.unpackb(frame[header.body_start :]) == ["doc-1", update]
    decoded = wire.decode(frame)
    assert isinstance(decoded, wire.Deltas)
    assert decoded.deltas == (wire.Delta("doc-1", b"", b"", update),)
    assert causal_range(update) == ({}, {42: 1})
    # 9 writers' state vectors of about 11 bytes each do not travel any more.
    many = encode_state_vector({client: 1000 + client for client in range(1 << 40, (1 << 40) + 9)})
    with_states = wire.Deltas(NODE, 3, 9, (wire.Delta("doc-1", many, many, update),))
    assert len(wire.encode(with_states, 2)) - len(wire.encode(with_states, 3)) >= len(many) + 3


@pytest.mark.parametrize("version", [1, 2])
def test_a_delta_received_in_version_3_is_relayed_to_an_older_link_with_derived_states(version: int) -> None:
    update = _update()
    received = wire.Relayed(NODE, "origin-node", (wire.Delta("doc-1", b"", b"", update),))
    decoded = wire.decode(wire.encode(received, version))
    assert isinstance(decoded, wire.Relayed)
    before, after = decoded.deltas[0].before_state, decoded.deltas[0].after_state
    assert (decode_state_vector(before), decode_state_vector(after)) == causal_range(update)


def test_an_older_link_cannot_be_given_the_states_of_an_update_that_does_not_parse() -> None:
    received = wire.Deltas(NODE, 1, 1, (wire.Delta("doc-1", b"", b"", b"\xff\xff"),))
    with pytest.raises(WireError) as caught:
        wire.encode(received, 2)
    assert caught.value.reason == "bad_body"
    assert "update does not parse" in caught.value.detail


_UPDATE = b"\x00\x00"
MALFORMED_V3: list[tuple[str, bytes, str, str]] = [
    (
        "deltas-odd-fields",
        _v3(MessageKind.DELTAS, ["d", _UPDATE, "e"], seq=b"\x01"),
        "bad_body",
        "2-field entries",
    ),
    ("deltas-none", _v3(MessageKind.DELTAS, [], seq=b"\x01"), "bad_body", "2-field entries"),
    ("update-not-bytes", _v3(MessageKind.DELTAS, ["d", "text"], seq=b"\x01"), "bad_body", "update is str"),
    ("doc-id-not-text", _v3(MessageKind.DELTAS, [b"d", _UPDATE], seq=b"\x01"), "bad_body", "doc_id is bytes"),
    (
        "second-update-not-bytes",
        _v3(MessageKind.DELTAS, ["d", _UPDATE, "e", "text"], seq=b"\x01"),
        "bad_body",
        "update is str",
    ),
    (
        "doc-id-too-long",
        _v3(MessageKind.DELTAS, ["d" * 513, _UPDATE], seq=b"\x01"),
        "bad_body",
        "doc_id is longer than 512 bytes",
    ),
    (
        "doc-id-too-long-in-utf-8",  # 171 characters, 513 bytes
        _v3(MessageKind.DELTAS, ["\u20ac" * 171, _UPDATE], seq=b"\x01"),
        "bad_body",
        "doc_id is longer than 512 bytes",
    ),
    (
        "relayed-odd-fields",
        _v3(MessageKind.RELAYED, ["origin", "d"]),
        "bad_body",
        "RELAYED must carry a whole, non-zero number of 2-field entries",
    ),
    (
        "version-2-empty-before-state",
        _v2(MessageKind.DELTAS, ["d", b"", b"\x00\x00", _UPDATE], seq=b"\x01"),
        "bad_body",
        "DELTAS.before_state is empty",
    ),
    ("cut-in-fixed-part", _v3()[:8], "truncated", "shorter than any header (9 bytes)"),
    ("cut-before-sender-length", _v3()[:9], "truncated", "version-3 header ends before the sender id"),
    ("cut-in-sender", _v3()[:12], "truncated", "version-3 header ends inside the 6-byte sender id"),
    ("cut-before-checksum", _v3()[: 9 + 1 + len(NODE) + 2 + 2], "truncated", "before its checksum"),
    ("header-checksum", _v3(header_crc=1), "bad_checksum", "header checksum"),
    ("body-checksum", _v3(body_crc=1), "bad_checksum", "body checksum"),
    ("body-cut", _v3(MessageKind.HEARTBEAT, [1])[:-1], "bad_checksum", "body checksum"),
]


@pytest.mark.parametrize(
    ("frame", "reason", "detail"), [m[1:] for m in MALFORMED_V3], ids=[m[0] for m in MALFORMED_V3]
)
def test_every_malformed_version_3_frame_raises_wire_error_naming_what(
    frame: bytes, reason: str, detail: str
) -> None:
    with pytest.raises(WireError) as caught:
        wire.decode(frame)
    assert caught.value.reason == reason
    assert detail in caught.value.detail


@pytest.mark.parametrize("skipped", [(), (7, 4095)])
def test_a_version_3_deltas_frame_is_the_documented_layout(skipped: tuple[int, ...]) -> None:
    one, two = _update(1), _update(2, "two")
    states = encode_state_vector({1: 1}), encode_state_vector({1: 2})
    message = wire.Deltas(
        NODE, 3, 99, (wire.Delta("doc-1", *states, one), wire.Delta("d2", b"", b"", two)), skipped
    )
    fields = ([list(skipped)] if skipped else []) + ["doc-1", one, "d2", two]
    for version in (3, 4):
        frame = wire.encode(message, version)
        assert frame == _v3(MessageKind.DELTAS, fields, version=version)
        assert wire.decode(frame) == _stripped(message)


def test_a_version_3_doc_id_of_512_bytes_in_any_encoding_is_read() -> None:
    for doc_id in ("d" * 512, "\U0001f600" * 128, "\u20ac" * 170 + "dd"):
        frame = _v3(MessageKind.DELTAS, [doc_id, _UPDATE, "e", _UPDATE], seq=b"\x01")
        message = wire.decode(frame)
        assert isinstance(message, wire.Deltas)
        assert [d.doc_id for d in message.deltas] == [doc_id, "e"]


def test_the_version_3_header_has_no_body_length() -> None:
    message = wire.Heartbeat(NODE, 300, 70_000)
    frame = wire.encode(message, 3)
    assert frame[:5] == b"CS\x03" + bytes((MessageKind.HEARTBEAT, 0))
    header = wire.read_header(frame)
    assert int.from_bytes(frame[5:9], "big") == zlib.crc32(frame[header.body_start :])
    assert frame[9] == len(NODE) and frame[10 : 10 + len(NODE)] == NODE.encode()
    assert header.body_start == 10 + len(NODE) + 2 + 3 + 4
    assert (header.sender, header.epoch, header.seq) == (NODE, 300, 70_000)
    assert len(frame) == len(wire.encode(message, 2)) - 4
    assert wire.decode(frame) == message
    assert _v3() == wire.encode(wire.Heartbeat(NODE, 3, 99), 3)


def test_an_update_that_does_not_parse_is_refused_alone_and_counted() -> None:
    replica = Replica(node_id="r", epoch=1, client_id=5, address="r", publish_endpoint="rp")
    good = wire.Delta("doc-1", b"", b"", _update())
    bad = wire.Delta("doc-2", b"", b"", b"\x01\x01\x05\x00\xff\xff\xff\x0f")
    replica.receive(wire.encode(wire.Deltas("w", 1, 1, (bad, good))), 1.0)
    assert replica.counters.updates_rejected == 1
    assert replica.counters.deltas_applied == 1
    assert replica.open_doc("doc-1").get("data", type=Map).to_py() == {"k": 1.0}
    assert not replica.has_doc("doc-2")
    assert replica.status(1.0).pending_updates == 0
