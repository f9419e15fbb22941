"""The wire format: a versioned, checksummed envelope around a msgpack body.

Every frame is a header (`crdtsync.core.envelope`; from version 2 it carries the sender's node id,
epoch and sequence number, so that a receiver admits the sender before it reads the body) and a
msgpack array whose shape depends on the kind (`_body_of`; the message classes are in
`crdtsync.core.messages`, re-exported here). Version-2 bodies leave out what the header carries
(`_IN_HEADER`) and send each delta's after state as a patch (`_DELTAS_START`); a version-2 hello adds
the versions its sender speaks. Version 3 (the header without the body length, which the frame gives) sends a delta as its doc id
and update only:
the receiver derives its causal metadata from the update (`crdtsync.core.update_check.causal_range`). Everything is validated here before any byte reaches pycrdt: a frame
that fails a check raises `WireError` naming what was wrong (`read_header`, then `decode_body`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from enum import IntEnum
from typing import Any

import msgpack

from crdtsync.core import chunks, envelope, forward, load_wire, wire_tree
from crdtsync.core.envelope import (
    BODY_BYTES_MAX,
    COMPRESS_MIN_BYTES,
    FLAG_LZ4,
    FRAME_BYTES_MAX,
    HEADER,
    HEADER_BYTES,
    MAGIC,
    NODE_ID_BYTES_MAX,
    WIRE_VERSION,
    WIRE_VERSION_MIN,
    Header,
    WireError,
)
from crdtsync.core.messages import (
    HANDOFF_NOT_HOLDER,
    Delta,
    Deltas,
    Ephemeral,
    HandoffAck,
    HandoffOffer,
    Heartbeat,
    Hello,
    HelloAck,
    MemberEntry,
    Members,
    Message,
    Relayed,
    RetransmitGone,
    RetransmitRequest,
    SeqAck,
    SeqIndex,
    SyncPush,
    SyncRequest,
    SyncResponse,
    TreeBranches,
    TreeCells,
    TreeEntries,
    TreeEntriesRequest,
    TreeLeaves,
    TreeLeavesRequest,
    TreeRoot,
    TreeSegments,
    TreeSegmentsRequest,
)
from crdtsync.core.wire_fields import (
    DELTAS_PER_BATCH_MAX,
    DOC_ID_BYTES_MAX,
    SKIPPED_SEQS_MAX,
    TREE_HASH_BYTES,
    delta_fields,
    header_position,
    milli,
    with_header_position,
)
from crdtsync.core.wire_fields import Fields as _Fields
from crdtsync.core.wire_tree import (
    ENTRIES_PER_MESSAGE_MAX,
    TREE_BRANCHES,
    TREE_SEGMENTS,
    read_tree_branches,
    read_tree_cells,
    read_tree_entries,
    read_tree_entries_request,
    read_tree_leaves,
    read_tree_leaves_request,
    read_tree_root,
    read_tree_segments,
    read_tree_segments_request,
)

__all__ = [
    "BODY_BYTES_MAX",
    "COMPRESS_MIN_BYTES",
    "DC_BYTES_MAX",
    "DELTAS_PER_BATCH_MAX",
    "DOC_ID_BYTES_MAX",
    "ENTRIES_PER_MESSAGE_MAX",
    "EPHEMERAL_BYTES_MAX",
    "FLAG_LZ4",
    "FRAME_BYTES_MAX",
    "HEADER",
    "HEADER_BYTES",
    "MAGIC",
    "MEMBERS_PER_MESSAGE_MAX",
    "NODE_ID_BYTES_MAX",
    "SKIPPED_SEQS_MAX",
    "SYNC_DOCS_PER_MESSAGE_MAX",
    "TREE_BRANCHES",
    "TREE_HASH_BYTES",
    "TREE_SEGMENTS",
    "WIRE_VERSION",
    "WIRE_VERSION_MIN",
    "ZONE_BYTES_MAX",
    "Delta",
    "Deltas",
    "Ephemeral",
    "HandoffAck",
    "HandoffOffer",
    "Header",
    "Heartbeat",
    "Hello",
    "HelloAck",
    "MemberEntry",
    "Members",
    "Message",
    "MessageKind",
    "Relayed",
    "RetransmitGone",
    "RetransmitRequest",
    "SeqAck",
    "SeqIndex",
    "SyncPush",
    "SyncRequest",
    "SyncResponse",
    "TreeBranches",
    "TreeCells",
    "TreeEntries",
    "TreeEntriesRequest",
    "TreeLeaves",
    "TreeLeavesRequest",
    "TreeRoot",
    "TreeSegments",
    "TreeSegmentsRequest",
    "WireError",
    "decode",
    "decode_body",
    "decode_counted",
    "encode",
    "encode_counted",
    "read_header",
]

_KNOWN_FLAGS = FLAG_LZ4

ZONE_BYTES_MAX = 64
SYNC_DOCS_PER_MESSAGE_MAX = 1024
"""Most docs one SYNC_REQUEST, SYNC_RESPONSE or SYNC_PUSH carries."""
DC_BYTES_MAX = 64
MEMBERS_PER_MESSAGE_MAX = 1024
"""Most member records one MEMBERS gossip message carries."""
EPHEMERAL_BYTES_MAX = 64 * 1024
"""Largest payload of an EPHEMERAL message (an awareness update of a few clients is well under 1 KiB)."""


class MessageKind(IntEnum):
    HELLO = 1
    HELLO_ACK = 2
    DELTAS = 3
    HEARTBEAT = 4
    RETRANSMIT_REQUEST = 5
    RETRANSMIT_GONE = 6
    SYNC_REQUEST = 7
    SYNC_RESPONSE = 8
    SYNC_PUSH = 9
    TREE_ROOT = wire_tree.TREE_ROOT_KIND
    TREE_BRANCHES = wire_tree.TREE_BRANCHES_KIND
    TREE_SEGMENTS_REQUEST = wire_tree.TREE_SEGMENTS_REQUEST_KIND
    TREE_SEGMENTS = wire_tree.TREE_SEGMENTS_KIND
    TREE_ENTRIES_REQUEST = wire_tree.TREE_ENTRIES_REQUEST_KIND
    TREE_ENTRIES = wire_tree.TREE_ENTRIES_KIND
    MEMBERS = 16
    RELAYED = 17
    HANDOFF_OFFER = 18
    HANDOFF_ACK = 19
    EPHEMERAL = 21
    CHUNK_REQUEST = chunks.CHUNK_REQUEST
    CHUNK_REPLY = chunks.CHUNK_REPLY
    SEQ_INDEX = 20
    SEQ_ACK = 24
    LOAD_SUMMARIES = load_wire.LOAD_SUMMARIES
    FORWARD_REQUEST = forward.FORWARD_REQUEST
    FORWARD_REPLY = forward.FORWARD_REPLY
    TREE_CELLS = wire_tree.TREE_CELLS_KIND
    TREE_LEAVES_REQUEST = wire_tree.TREE_LEAVES_REQUEST_KIND
    TREE_LEAVES = wire_tree.TREE_LEAVES_KIND


def _body_of(message: Message) -> tuple[MessageKind, list[Any]]:
    match message:
        case Hello(n, e, a, p, s, dc, zone, weight, partitions, version):
            return MessageKind.HELLO, [n, e, a, p, s, dc, zone, milli(weight), partitions, version]
        case HelloAck(n, e, a, p, s, dc, zone, weight, partitions, version):
            return MessageKind.HELLO_ACK, [n, e, a, p, s, dc, zone, milli(weight), partitions, version]
        case Deltas(n, e, first, deltas, _skipped):
            flat: list[Any] = [n, e, first]
            for d in deltas:
                flat.extend(d)  # a Delta is a tuple of its four fields, in wire order
            return MessageKind.DELTAS, flat
        case Heartbeat(n, e, s):
            return MessageKind.HEARTBEAT, [n, e, s]
        case SeqIndex(n, e, first, buckets):
            return MessageKind.SEQ_INDEX, [n, e, first, *buckets]
        case SeqAck(n, e, lo, hi, view):
            return MessageKind.SEQ_ACK, [n, e, lo, hi, view]
        case RetransmitRequest(n, e, lo, hi):
            return MessageKind.RETRANSMIT_REQUEST, [n, e, lo, hi]
        case RetransmitGone(n, e, oldest):
            return MessageKind.RETRANSMIT_GONE, [n, e, oldest]
        case SyncRequest(n, entries):
            return MessageKind.SYNC_REQUEST, [n, *(field for entry in entries for field in entry)]
        case SyncResponse(n, entries):
            return MessageKind.SYNC_RESPONSE, [n, *(field for entry in entries for field in entry)]
        case SyncPush(n, entries):
            return MessageKind.SYNC_PUSH, [n, *(field for entry in entries for field in entry)]
        case HandoffOffer(n, entries, leaving):
            return MessageKind.HANDOFF_OFFER, [n, leaving, *(field for entry in entries for field in entry)]
        case HandoffAck(n, entries):
            return MessageKind.HANDOFF_ACK, [n, *(field for entry in entries for field in entry)]
        case (
            TreeRoot() | TreeBranches() | TreeSegmentsRequest() | TreeSegments() | TreeCells()
            | TreeLeavesRequest() | TreeLeaves() | TreeEntriesRequest() | TreeEntries()
        ):  # fmt: skip
            kind, fields = wire_tree.body_of(message)
            return MessageKind(kind), fields
        case Members(n, reply, members):
            flat_members: list[Any] = [n, reply]
            for m in members:
                flat_members.extend(
                    (
                        *(m.node_id, m.dc, m.address, m.publish_endpoint, m.incarnation, m.heartbeat, m.left),
                        *(m.zone, milli(m.weight)),
                    )
                )
            return MessageKind.MEMBERS, flat_members
        case Relayed(n, origin, deltas):
            flat_relayed: list[Any] = [n, origin]
            for d in deltas:
                flat_relayed.extend((d.doc_id, d.before_state, d.after_state, d.update))
            return MessageKind.RELAYED, flat_relayed
        case Ephemeral(n, origin, doc_id, payload):
            return MessageKind.EPHEMERAL, [n, origin, doc_id, payload]
        case chunks.ChunkRequest() | chunks.ChunkReply():
            kind, fields = chunks.body_of(message)
            return MessageKind(kind), fields
        case load_wire.LoadSummaries():
            kind, fields = load_wire.body_of(message)
            return MessageKind(kind), fields
        case forward.ForwardRequest() | forward.ForwardReply():
            kind, fields = forward.body_of(message)
            return MessageKind(kind), fields
    raise TypeError(f"not a crdtsync message: {message!r}")


_IN_HEADER: dict[MessageKind, tuple[int, int]] = {
    MessageKind.HELLO: (1, 4),
    MessageKind.HELLO_ACK: (1, 4),
    MessageKind.DELTAS: (1, 2),
    MessageKind.HEARTBEAT: (1, 2),
    MessageKind.SEQ_INDEX: (1, 2),
}
"""Kinds that state their sender's stream position: where the epoch and the sequence number stand in
the version-1 body. Version 2 moves them, with the node id (field 0 of every kind), to the header."""
_DELTAS_START = {MessageKind.DELTAS: 3, MessageKind.RELAYED: 2}
"""Where deltas start in a version-1 body; version 2 sends after states as patches, version 3 no
states at all (`delta_fields`)."""


def encode(message: Message, version: int = WIRE_VERSION) -> bytes:
    """Encode one message as an envelope of `version`, compressing the body when that makes it smaller."""
    return encode_counted(message, version)[0]


def encode_counted(message: Message, version: int = WIRE_VERSION) -> tuple[bytes, int]:
    """`encode`, plus the size the frame would have without compression."""
    if version >= 3 and type(message) is Deltas:
        # Every local write leaves in one of these: its body straight from the message (what the
        # general path below makes of it, without building and cutting a version-1 body first).
        fields: list[Any] = [list(message.skipped)] if message.skipped else []
        for delta in message.deltas:
            fields += (delta.doc_id, delta.update)
        return envelope.framed(
            version, MessageKind.DELTAS, fields, message.node_id.encode(), message.epoch, message.first_seq
        )
    kind, fields = _body_of(message)
    sender, epoch, seq = b"", 0, 0
    start = _DELTAS_START.get(kind)
    if start is not None:
        fields[start:] = delta_fields(fields[start:], version)
    if version >= 2:
        sender = fields[0].encode()
        epoch_at, seq_at = _IN_HEADER.get(kind, (0, 0))
        if epoch_at:
            epoch, seq = fields[epoch_at], fields[seq_at]
            del fields[seq_at], fields[epoch_at]  # the later first
        else:
            epoch, seq = header_position(message)
        del fields[0]
        if isinstance(message, Hello | HelloAck):
            fields += [message.wire_version_min, message.wire_version_max]
        elif isinstance(message, Deltas) and message.skipped:
            fields.insert(0, list(message.skipped))  # an array: no delta starts with one
    elif isinstance(message, Deltas) and message.skipped:
        raise ValueError("a DELTAS frame lists skipped sequence numbers from wire version 2 only")
    return envelope.framed(version, kind, fields, sender, epoch, seq)


def decode(frame: bytes, version_max: int = WIRE_VERSION) -> Message:
    """Decode and fully validate one envelope. Raises `WireError` for anything malformed."""
    return decode_counted(frame, version_max)[0]


def decode_counted(frame: bytes, version_max: int = WIRE_VERSION) -> tuple[Message, int]:
    """Decode and fully validate one envelope, and the size it has uncompressed. Raises `WireError`
    for anything malformed, or of a version above `version_max`."""
    return decode_body(frame, read_header(frame, version_max))


def read_header(frame: bytes, version_max: int = WIRE_VERSION) -> Header:
    """Read and verify the header only (kind and flags included): cheap, and enough to admit a
    sender of version 2 or later (`Header.sender`) before its body is decompressed or parsed."""
    header = envelope.read(frame, version_max)
    if header.kind not in _KINDS:
        raise WireError("bad_kind", f"unknown message kind {header.kind}")
    if header.flags & ~_KNOWN_FLAGS:
        raise WireError("bad_flags", f"unknown flag bits {header.flags & ~_KNOWN_FLAGS:#x}")
    return header


_BODY_FIELDS_MAX = (
    max(4 * DELTAS_PER_BATCH_MAX, 3 * ENTRIES_PER_MESSAGE_MAX, 7 * MEMBERS_PER_MESSAGE_MAX, TREE_SEGMENTS) + 8
)
"""The longest array a body may hold (the largest message of any kind, plus its fixed fields)."""


def decode_body(frame: bytes, header: Header) -> tuple[Message, int]:
    """The message of a frame whose header `read_header` returned, and its uncompressed size."""
    body = envelope.body_of(frame, header)
    try:
        fields = msgpack.unpackb(
            body,
            use_list=True,
            raw=False,
            strict_map_key=True,
            max_array_len=_BODY_FIELDS_MAX,
            max_map_len=0,
            max_ext_len=0,
        )
    except Exception as exc:  # msgpack raises several unrelated types for bad input
        raise WireError("bad_body", f"body is not valid msgpack: {exc}") from None
    if not isinstance(fields, list):
        raise WireError("bad_body", f"body is a {type(fields).__name__}, not an array")
    kind = _KIND_OF[header.kind]  # `read_header` let through only known kinds
    size = header.body_start + len(body)
    if kind is MessageKind.DELTAS and header.version >= 3:
        # The header's sender, epoch and sequence number are checked already (`envelope.read`:
        # 1..NODE_ID_BYTES_MAX bytes of UTF-8, varints of at most 63 bits): not put in the body
        # to be read back from it, as the general path below does.
        f = _Fields(kind, fields, header.version)
        message: Message = _deltas_from(f, header.sender, header.epoch, header.seq)
        f.done()
        return message, size
    epoch_at = 0
    if header.version >= 2:
        fields.insert(0, header.sender)
        epoch_at, seq_at = _IN_HEADER.get(kind, (0, 0))
        if epoch_at:
            fields.insert(epoch_at, header.epoch)
            fields.insert(seq_at, header.seq)
    message = _message_from(kind, fields, header.version)
    if not epoch_at and (header.epoch or header.seq):
        message = with_header_position(message, header.epoch, header.seq)
    return message, size


_ADDRESS_BYTES_MAX = 256


def _message_from(kind: MessageKind, items: list[Any], version: int) -> Message:
    f = _Fields(kind, items, version)
    node_id = f.text("node_id", NODE_ID_BYTES_MAX)
    if not node_id:
        raise WireError("bad_body", f"{kind.name}.node_id is empty")
    message = _READERS[kind](f, node_id)
    f.done()
    return message


# The rest of each kind's body after the node id, read in order (`_message_from` checks that nothing
# is left over).


def _read_hello(f: _Fields, node_id: str) -> Message:
    cls = Hello if f.kind is MessageKind.HELLO else HelloAck
    hello = cls(
        node_id,
        f.uint("epoch"),
        f.text("address", _ADDRESS_BYTES_MAX),
        f.text("publish_endpoint", _ADDRESS_BYTES_MAX),
        f.uint("last_seq"),
        f.text("dc", DC_BYTES_MAX),
        f.text("zone", ZONE_BYTES_MAX),
        f.weight(),
        f.uint("partitions"),
        f.uint("placement_version"),
    )
    if f.version == 1:
        return hello  # a version-1 hello cannot say more: its sender is taken to speak 1 only
    low, high = f.uint("wire_version_min"), f.uint("wire_version_max")
    if not 1 <= low <= high <= 255:
        raise WireError("bad_body", f"{f.kind.name} wire versions {low}..{high} are not a range in 1..255")
    return dataclasses.replace(hello, wire_version_min=low, wire_version_max=high)


def _read_deltas(f: _Fields, node_id: str) -> Message:
    return _deltas_from(f, node_id, f.uint("epoch"), f.uint("first_seq"))


def _deltas_from(f: _Fields, node_id: str, epoch: int, first_seq: int) -> Deltas:
    skipped: tuple[int, ...] = ()
    if f.version >= 2 and f.next_is_array():
        skipped = f.uint_array("skipped", SKIPPED_SEQS_MAX)
        if len(skipped) >= first_seq:
            raise WireError("bad_body", f"DELTAS skips {len(skipped)} numbers before {first_seq}")
    return Deltas(node_id, epoch, first_seq, f.deltas(), skipped)


def _read_relayed(f: _Fields, node_id: str) -> Message:
    origin = f.text("origin", NODE_ID_BYTES_MAX)
    return Relayed(node_id, origin, f.deltas())


def _read_ephemeral(f: _Fields, node_id: str) -> Message:
    origin = f.text("origin", NODE_ID_BYTES_MAX)
    doc_id = f.text("doc_id", DOC_ID_BYTES_MAX)
    payload = f.blob("payload")
    if len(payload) > EPHEMERAL_BYTES_MAX:
        raise WireError(
            "too_large", f"EPHEMERAL payload of {len(payload)} bytes exceeds {EPHEMERAL_BYTES_MAX}"
        )
    return Ephemeral(node_id, origin, doc_id, payload)


def _read_members(f: _Fields, node_id: str) -> Message:
    reply = f.flag("reply")
    f.check_entries(9, MEMBERS_PER_MESSAGE_MAX)
    members = []
    while f.remaining():
        members.append(
            MemberEntry(
                f.text("node_id", NODE_ID_BYTES_MAX),
                f.text("dc", DC_BYTES_MAX),
                f.text("address", _ADDRESS_BYTES_MAX),
                f.text("publish_endpoint", _ADDRESS_BYTES_MAX),
                f.uint("incarnation"),
                f.uint("heartbeat"),
                f.flag("left"),
                f.text("zone", ZONE_BYTES_MAX),
                f.weight(),
            )
        )
    return Members(node_id, reply, tuple(members))


def _read_heartbeat(f: _Fields, node_id: str) -> Message:
    return Heartbeat(node_id, f.uint("epoch"), f.uint("last_seq"))


def _read_seq_index(f: _Fields, node_id: str) -> Message:
    epoch, first_seq = f.uint("epoch"), f.uint("first_seq")
    f.check_entries(1, DELTAS_PER_BATCH_MAX)
    return SeqIndex(node_id, epoch, first_seq, tuple(f.uint("bucket") for _ in range(f.remaining())))


def _read_retransmit_request(f: _Fields, node_id: str) -> Message:
    epoch, lo, hi = f.uint("epoch"), f.uint("from_seq"), f.uint("to_seq")
    if lo > hi:
        raise WireError("bad_body", f"RETRANSMIT_REQUEST range {lo}..{hi} is empty")
    return RetransmitRequest(node_id, epoch, lo, hi)


def _read_seq_ack(f: _Fields, node_id: str) -> Message:
    epoch, lo, hi = f.uint("epoch"), f.uint("from_seq"), f.uint("through_seq")
    if lo < 1 or lo > hi:
        raise WireError("bad_body", f"SEQ_ACK range {lo}..{hi} is not a range of sequence numbers")
    view = f.uint("view")
    if view >= 1 << 32:
        raise WireError("bad_body", f"SEQ_ACK view {view} is not a 32-bit digest")
    return SeqAck(node_id, epoch, lo, hi, view)


def _read_retransmit_gone(f: _Fields, node_id: str) -> Message:
    return RetransmitGone(node_id, f.uint("epoch"), f.uint("oldest_seq"))


def _read_sync_request(f: _Fields, node_id: str) -> Message:
    f.check_entries(2, SYNC_DOCS_PER_MESSAGE_MAX)
    return SyncRequest(
        node_id,
        tuple((f.text("doc_id", DOC_ID_BYTES_MAX), f.blob("state")) for _ in range(f.remaining() // 2)),
    )


def _read_sync_response(f: _Fields, node_id: str) -> Message:
    f.check_entries(3, SYNC_DOCS_PER_MESSAGE_MAX)
    return SyncResponse(
        node_id,
        tuple(
            (f.text("doc_id", DOC_ID_BYTES_MAX), f.blob("update"), f.blob("state"))
            for _ in range(f.remaining() // 3)
        ),
    )


def _read_sync_push(f: _Fields, node_id: str) -> Message:
    f.check_entries(2, SYNC_DOCS_PER_MESSAGE_MAX)
    return SyncPush(
        node_id,
        tuple((f.text("doc_id", DOC_ID_BYTES_MAX), f.blob("update")) for _ in range(f.remaining() // 2)),
    )


def _read_handoff_offer(f: _Fields, node_id: str) -> Message:
    leaving = f.flag("leaving")
    f.check_entries(3, SYNC_DOCS_PER_MESSAGE_MAX)
    entries = tuple(
        (f.text("doc_id", DOC_ID_BYTES_MAX), f.blob("state"), f.blob("update"))
        for _ in range(f.remaining() // 3)
    )
    return HandoffOffer(node_id, entries, leaving)


def _read_handoff_ack(f: _Fields, node_id: str) -> Message:
    f.check_entries(3, SYNC_DOCS_PER_MESSAGE_MAX)
    entries: list[tuple[str, int, bytes]] = []
    for _ in range(f.remaining() // 3):
        doc_id, status, state = f.text("doc_id", DOC_ID_BYTES_MAX), f.uint("status"), f.blob("state")
        if status > HANDOFF_NOT_HOLDER:
            raise WireError("bad_body", f"HANDOFF_ACK status {status} is unknown")
        entries.append((doc_id, status, state))
    return HandoffAck(node_id, tuple(entries))


_READERS: dict[MessageKind, Callable[[_Fields, str], Message]] = {
    MessageKind.HANDOFF_OFFER: _read_handoff_offer,
    MessageKind.HANDOFF_ACK: _read_handoff_ack,
    MessageKind.HELLO: _read_hello,
    MessageKind.HELLO_ACK: _read_hello,
    MessageKind.DELTAS: _read_deltas,
    MessageKind.HEARTBEAT: _read_heartbeat,
    MessageKind.SEQ_INDEX: _read_seq_index,
    MessageKind.SEQ_ACK: _read_seq_ack,
    MessageKind.RETRANSMIT_REQUEST: _read_retransmit_request,
    MessageKind.RETRANSMIT_GONE: _read_retransmit_gone,
    MessageKind.SYNC_REQUEST: _read_sync_request,
    MessageKind.SYNC_RESPONSE: _read_sync_response,
    MessageKind.SYNC_PUSH: _read_sync_push,
    MessageKind.TREE_ROOT: read_tree_root,
    MessageKind.TREE_BRANCHES: read_tree_branches,
    MessageKind.TREE_SEGMENTS_REQUEST: read_tree_segments_request,
    MessageKind.TREE_SEGMENTS: read_tree_segments,
    MessageKind.TREE_CELLS: read_tree_cells,
    MessageKind.TREE_LEAVES_REQUEST: read_tree_leaves_request,
    MessageKind.TREE_LEAVES: read_tree_leaves,
    MessageKind.TREE_ENTRIES_REQUEST: read_tree_entries_request,
    MessageKind.TREE_ENTRIES: read_tree_entries,
    MessageKind.MEMBERS: _read_members,
    MessageKind.RELAYED: _read_relayed,
    MessageKind.EPHEMERAL: _read_ephemeral,
    MessageKind.CHUNK_REQUEST: chunks.read_request,
    MessageKind.CHUNK_REPLY: chunks.read_reply,
    MessageKind.LOAD_SUMMARIES: load_wire.read_summaries,
    MessageKind.FORWARD_REQUEST: forward.read_request,
    MessageKind.FORWARD_REPLY: forward.read_reply,
}
"""How to read the body of each kind (every `MessageKind` has one)."""
_KIND_OF = {int(kind): kind for kind in MessageKind}
"""Kind number -> kind: a dict lookup is several times cheaper than `MessageKind(number)`."""
_KINDS = frozenset(_KIND_OF)
