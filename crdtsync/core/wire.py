"""The wire format: a versioned, checksummed envelope around a msgpack body.

Every frame that crosses a socket is one envelope::

    offset size field
    0      2    magic  b"CS"
    2      1    version (WIRE_VERSION)
    3      1    kind    (MessageKind)
    4      1    flags   (bit 0: body is lz4-block compressed)
    5      4    body length in bytes, big-endian (as sent, after compression)
    9      4    crc32 of the body as sent, big-endian
    13     ...  body

The body is a msgpack array whose shape depends on the kind (`_body_of`; the message classes are in
`crdtsync.core.messages`, re-exported here).
Everything is validated here, before any byte reaches pycrdt: magic, version, kind, declared and
actual length, checksum, decompressed size, msgpack limits and the exact shape and types of each
field. A frame that fails any check raises `WireError` naming what was wrong.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from enum import IntEnum
from typing import Any

import lz4.block
import msgpack

from crdtsync.core import chunks, load_wire
from crdtsync.core.counters import WireErrorReason
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
    TreeEntries,
    TreeEntriesRequest,
    TreeRoot,
    TreeSegments,
    TreeSegmentsRequest,
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
    "SYNC_DOCS_PER_MESSAGE_MAX",
    "TREE_BRANCHES",
    "TREE_HASH_BYTES",
    "TREE_SEGMENTS",
    "WIRE_VERSION",
    "ZONE_BYTES_MAX",
    "Delta",
    "Deltas",
    "Ephemeral",
    "HandoffAck",
    "HandoffOffer",
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
    "TreeEntries",
    "TreeEntriesRequest",
    "TreeRoot",
    "TreeSegments",
    "TreeSegmentsRequest",
    "WireError",
    "decode",
    "decode_counted",
    "encode",
    "encode_counted",
]

MAGIC = b"CS"
WIRE_VERSION = 1
HEADER = struct.Struct("!2sBBBII")
HEADER_BYTES = HEADER.size
FLAG_LZ4 = 0x01
_KNOWN_FLAGS = FLAG_LZ4

FRAME_BYTES_MAX = 8 * 1024 * 1024
"""Largest envelope accepted or produced (header + body as sent)."""
BODY_BYTES_MAX = 16 * 1024 * 1024
"""Largest body after decompression: caps what a hostile compressed frame can make us allocate."""
COMPRESS_MIN_BYTES = 200
"""Bodies smaller than this are sent uncompressed: lz4 framing makes small bodies grow."""
ZONE_BYTES_MAX = 64
NODE_ID_BYTES_MAX = 64
DOC_ID_BYTES_MAX = 512
DELTAS_PER_BATCH_MAX = 4096
SYNC_DOCS_PER_MESSAGE_MAX = 1024
"""Most docs one SYNC_REQUEST, SYNC_RESPONSE or SYNC_PUSH carries."""
ENTRIES_PER_MESSAGE_MAX = 4096
"""Most (segment, doc id, digest) entries in one TREE_ENTRIES message."""
TREE_SEGMENTS = 4096
TREE_BRANCHES = 64
"""The Merkle tree's shape is part of the protocol: every node of a cluster uses the same one."""
TREE_HASH_BYTES = 16
DC_BYTES_MAX = 64
MEMBERS_PER_MESSAGE_MAX = 1024
"""Most member records one MEMBERS gossip message carries."""
EPHEMERAL_BYTES_MAX = 64 * 1024
"""Largest payload of an EPHEMERAL message (an awareness update of a few clients is well under 1 KiB)."""


class WireError(ValueError):
    """A frame that is not a valid crdtsync message. `reason` is a short stable label for metrics."""

    def __init__(self, reason: WireErrorReason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


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
    TREE_ROOT = 10
    TREE_BRANCHES = 11
    TREE_SEGMENTS_REQUEST = 12
    TREE_SEGMENTS = 13
    TREE_ENTRIES_REQUEST = 14
    TREE_ENTRIES = 15
    MEMBERS = 16
    RELAYED = 17
    HANDOFF_OFFER = 18
    HANDOFF_ACK = 19
    EPHEMERAL = 21
    CHUNK_REQUEST = chunks.CHUNK_REQUEST
    CHUNK_REPLY = chunks.CHUNK_REPLY
    SEQ_INDEX = 20
    LOAD_SUMMARIES = load_wire.LOAD_SUMMARIES
    SEQ_ACK = 24


def _body_of(message: Message) -> tuple[MessageKind, list[Any]]:
    match message:
        case Hello(n, e, a, p, s, dc, zone, weight, partitions, version):
            return MessageKind.HELLO, [n, e, a, p, s, dc, zone, _milli(weight), partitions, version]
        case HelloAck(n, e, a, p, s, dc, zone, weight, partitions, version):
            return MessageKind.HELLO_ACK, [n, e, a, p, s, dc, zone, _milli(weight), partitions, version]
        case Deltas(n, e, first, deltas):
            flat: list[Any] = [n, e, first]
            for d in deltas:
                flat.extend((d.doc_id, d.before_state, d.after_state, d.update))
            return MessageKind.DELTAS, flat
        case Heartbeat(n, e, s):
            return MessageKind.HEARTBEAT, [n, e, s]
        case SeqIndex(n, e, first, buckets):
            return MessageKind.SEQ_INDEX, [n, e, first, *buckets]
        case SeqAck(n, e, lo, hi):
            return MessageKind.SEQ_ACK, [n, e, lo, hi]
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
        case TreeRoot(n, round_id, root):
            return MessageKind.TREE_ROOT, [n, round_id, root]
        case TreeBranches(n, round_id, equal, hashes):
            return MessageKind.TREE_BRANCHES, [n, round_id, equal, *hashes]
        case TreeSegmentsRequest(n, round_id, branches):
            return MessageKind.TREE_SEGMENTS_REQUEST, [n, round_id, *branches]
        case TreeSegments(n, round_id, branches, hashes):
            return MessageKind.TREE_SEGMENTS, [n, round_id, list(branches), *hashes]
        case TreeEntriesRequest(n, round_id, segments):
            return MessageKind.TREE_ENTRIES_REQUEST, [n, round_id, *segments]
        case TreeEntries(n, round_id, segments, entries):
            flat_entries: list[Any] = [n, round_id, list(segments)]
            for segment, doc_id, digest in entries:
                flat_entries.extend((segment, doc_id, digest))
            return MessageKind.TREE_ENTRIES, flat_entries
        case Members(n, reply, members):
            flat_members: list[Any] = [n, reply]
            for m in members:
                flat_members.extend(
                    (
                        *(m.node_id, m.dc, m.address, m.publish_endpoint, m.incarnation, m.heartbeat, m.left),
                        *(m.zone, _milli(m.weight)),
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
    raise TypeError(f"not a crdtsync message: {message!r}")


def encode(message: Message) -> bytes:
    """Encode one message as an envelope, compressing the body when that makes it smaller."""
    return encode_counted(message)[0]


def encode_counted(message: Message) -> tuple[bytes, int]:
    """`encode`, plus the size the frame would have without compression."""
    kind, fields = _body_of(message)
    body: bytes = msgpack.packb(fields, use_bin_type=True)
    raw_size = HEADER_BYTES + len(body)
    flags = 0
    if len(body) >= COMPRESS_MIN_BYTES:
        packed: bytes = lz4.block.compress(body, store_size=True)
        if len(packed) < len(body):
            body, flags = packed, FLAG_LZ4
    if HEADER_BYTES + len(body) > FRAME_BYTES_MAX:
        raise WireError(
            "too_large", f"encoded frame of {HEADER_BYTES + len(body)} bytes exceeds {FRAME_BYTES_MAX}"
        )
    return HEADER.pack(MAGIC, WIRE_VERSION, kind, flags, len(body), zlib.crc32(body)) + body, raw_size


def decode(frame: bytes) -> Message:
    """Decode and fully validate one envelope. Raises `WireError` for anything malformed."""
    return decode_counted(frame)[0]


def decode_counted(frame: bytes) -> tuple[Message, int]:
    """Decode and fully validate one envelope. Raises `WireError` for anything malformed."""
    if len(frame) > FRAME_BYTES_MAX:
        raise WireError("too_large", f"frame of {len(frame)} bytes exceeds {FRAME_BYTES_MAX}")
    if len(frame) < HEADER_BYTES:
        raise WireError(
            "truncated", f"frame of {len(frame)} bytes is shorter than the {HEADER_BYTES}-byte header"
        )
    magic, version, kind_number, flags, body_length, checksum = HEADER.unpack_from(frame)
    if magic != MAGIC:
        raise WireError("bad_magic", f"magic {magic!r} is not {MAGIC!r}")
    if version != WIRE_VERSION:
        raise WireError(
            "bad_version", f"wire version {version} is not supported (this node speaks {WIRE_VERSION})"
        )
    try:
        kind = MessageKind(kind_number)
    except ValueError:
        raise WireError("bad_kind", f"unknown message kind {kind_number}") from None
    if flags & ~_KNOWN_FLAGS:
        raise WireError("bad_flags", f"unknown flag bits {flags & ~_KNOWN_FLAGS:#x}")
    body = frame[HEADER_BYTES:]
    if len(body) != body_length:
        raise WireError("bad_length", f"header declares {body_length} body bytes, frame carries {len(body)}")
    if zlib.crc32(body) != checksum:
        raise WireError("bad_checksum", "body checksum does not match the header")
    if flags & FLAG_LZ4:
        body = _decompress(body)
    try:
        fields = msgpack.unpackb(
            body,
            use_list=True,
            raw=False,
            strict_map_key=True,
            max_array_len=max(
                4 * DELTAS_PER_BATCH_MAX,
                3 * ENTRIES_PER_MESSAGE_MAX,
                7 * MEMBERS_PER_MESSAGE_MAX,
                TREE_SEGMENTS,
            )
            + 8,
            max_map_len=0,
            max_ext_len=0,
        )
    except Exception as exc:  # msgpack raises several unrelated types for bad input
        raise WireError("bad_body", f"body is not valid msgpack: {exc}") from None
    if not isinstance(fields, list):
        raise WireError("bad_body", f"body is a {type(fields).__name__}, not an array")
    return _message_from(kind, fields), HEADER_BYTES + len(body)


def _decompress(body: bytes) -> bytes:
    if len(body) < 4:
        raise WireError("bad_compression", "compressed body shorter than its size prefix")
    declared = int.from_bytes(body[:4], "little")
    if declared > BODY_BYTES_MAX:
        raise WireError("too_large", f"decompressed size {declared} exceeds {BODY_BYTES_MAX}")
    try:
        out: bytes = lz4.block.decompress(body)
    except Exception as exc:
        raise WireError("bad_compression", f"lz4 block does not decompress: {exc}") from None
    return out


class _Fields:
    """Typed, bounds-checked reads from a decoded msgpack array."""

    __slots__ = ("index", "items", "kind")

    def __init__(self, kind: MessageKind, items: list[Any]) -> None:
        self.kind = kind
        self.items = items
        self.index = 0

    def _next(self) -> Any:
        if self.index >= len(self.items):
            raise WireError("bad_body", f"{self.kind.name} body has too few fields ({len(self.items)})")
        value = self.items[self.index]
        self.index += 1
        return value

    def text(self, name: str, max_bytes: int) -> str:
        value = self._next()
        if not isinstance(value, str):
            raise WireError("bad_body", f"{self.kind.name}.{name} is {type(value).__name__}, not a string")
        if len(value) > max_bytes or len(value.encode()) > max_bytes:
            raise WireError("bad_body", f"{self.kind.name}.{name} is longer than {max_bytes} bytes")
        return value

    def blob(self, name: str) -> bytes:
        value = self._next()
        if not isinstance(value, bytes):
            raise WireError("bad_body", f"{self.kind.name}.{name} is {type(value).__name__}, not bytes")
        return value

    def uint(self, name: str) -> int:
        value = self._next()
        if type(value) is not int or value < 0 or value >= 1 << 63:
            raise WireError("bad_body", f"{self.kind.name}.{name} is not an unsigned 63-bit integer")
        return value

    def hash(self, name: str) -> bytes:
        value = self.blob(name)
        if len(value) != TREE_HASH_BYTES:
            raise WireError(
                "bad_body", f"{self.kind.name}.{name} is {len(value)} bytes, not {TREE_HASH_BYTES}"
            )
        return value

    def _index(self, name: str, value: Any, bound: int) -> int:
        if type(value) is not int or not 0 <= value < bound:
            raise WireError(
                "bad_body", f"{self.kind.name}.{name} holds {value!r}, not an index below {bound}"
            )
        return value

    def indexes(self, name: str, count: int, bound: int) -> tuple[int, ...]:
        """`count` distinct indexes below `bound`, read as consecutive fields."""
        if count > bound:
            raise WireError("too_large", f"{self.kind.name}.{name} lists more than {bound} indexes")
        values = tuple(self._index(name, self._next(), bound) for _ in range(count))
        if len(set(values)) != len(values):
            raise WireError("bad_body", f"{self.kind.name}.{name} repeats an index")
        return values

    def index_list(self, name: str, bound: int) -> tuple[int, ...]:
        """A nested array of distinct indexes below `bound`."""
        value = self._next()
        if not isinstance(value, list) or len(value) > bound:
            raise WireError("bad_body", f"{self.kind.name}.{name} is not an array of at most {bound} indexes")
        values = tuple(self._index(name, item, bound) for item in value)
        if len(set(values)) != len(values):
            raise WireError("bad_body", f"{self.kind.name}.{name} repeats an index")
        return values

    def flag(self, name: str) -> bool:
        value = self._next()
        if not isinstance(value, bool):
            raise WireError("bad_body", f"{self.kind.name}.{name} is not a boolean")
        return value

    def check_entries(self, width: int, count_max: int) -> None:
        """The rest of the body is 1..count_max entries of `width` fields each."""
        if self.remaining() == 0 or self.remaining() % width:
            raise WireError(
                "bad_body", f"{self.kind.name} must carry a whole, non-zero number of {width}-field entries"
            )
        if self.remaining() // width > count_max:
            raise WireError("too_large", f"{self.kind.name} carries more than {count_max} entries")

    def deltas(self) -> tuple[Delta, ...]:
        """The rest of the body as 1..DELTAS_PER_BATCH_MAX (doc id, before, after, update) deltas."""
        self.check_entries(4, DELTAS_PER_BATCH_MAX)
        deltas = []
        while self.remaining():
            deltas.append(
                Delta(
                    self.text("doc_id", DOC_ID_BYTES_MAX),
                    self.blob("before_state"),
                    self.blob("after_state"),
                    self.blob("update"),
                )
            )
        return tuple(deltas)

    def remaining(self) -> int:
        return len(self.items) - self.index

    def done(self) -> None:
        if self.index != len(self.items):
            raise WireError(
                "bad_body", f"{self.kind.name} body has {len(self.items) - self.index} extra fields"
            )


_ADDRESS_BYTES_MAX = 256


def _message_from(kind: MessageKind, items: list[Any]) -> Message:
    f = _Fields(kind, items)
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
    return cls(
        node_id,
        f.uint("epoch"),
        f.text("address", _ADDRESS_BYTES_MAX),
        f.text("publish_endpoint", _ADDRESS_BYTES_MAX),
        f.uint("last_seq"),
        f.text("dc", DC_BYTES_MAX),
        f.text("zone", ZONE_BYTES_MAX),
        _weight(f),
        f.uint("partitions"),
        f.uint("placement_version"),
    )


WEIGHT_MILLI_MAX = 1_000_000
"""Weights travel as thousandths in 1..1,000,000 (0.001 to 1000)."""


def _milli(weight: float) -> int:
    return round(weight * 1000)


def _weight(f: _Fields) -> float:
    milli = f.uint("weight")
    if not 1 <= milli <= WEIGHT_MILLI_MAX:
        raise WireError("bad_body", f"{f.kind.name}.weight {milli}/1000 is outside 0.001..1000")
    return milli / 1000.0


def _read_deltas(f: _Fields, node_id: str) -> Message:
    epoch, first_seq = f.uint("epoch"), f.uint("first_seq")
    return Deltas(node_id, epoch, first_seq, f.deltas())


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
                _weight(f),
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
    return SeqAck(node_id, epoch, lo, hi)


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


def _read_tree_root(f: _Fields, node_id: str) -> Message:
    return TreeRoot(node_id, f.uint("round_id"), f.hash("root"))


def _read_tree_branches(f: _Fields, node_id: str) -> Message:
    round_id, equal = f.uint("round_id"), f.flag("equal")
    if f.remaining() != (0 if equal else TREE_BRANCHES):
        raise WireError("bad_body", f"TREE_BRANCHES must carry {TREE_BRANCHES} hashes unless equal")
    return TreeBranches(node_id, round_id, equal, tuple(f.hash("hash") for _ in range(f.remaining())))


def _read_tree_segments_request(f: _Fields, node_id: str) -> Message:
    round_id = f.uint("round_id")
    branches = f.indexes("branches", f.remaining(), TREE_BRANCHES)
    return TreeSegmentsRequest(node_id, round_id, branches)


def _read_tree_segments(f: _Fields, node_id: str) -> Message:
    round_id = f.uint("round_id")
    branches = f.index_list("branches", TREE_BRANCHES)
    if f.remaining() != len(branches) * (TREE_SEGMENTS // TREE_BRANCHES):
        raise WireError("bad_body", "TREE_SEGMENTS must carry every segment hash of each listed branch")
    return TreeSegments(node_id, round_id, branches, tuple(f.hash("hash") for _ in range(f.remaining())))


def _read_tree_entries_request(f: _Fields, node_id: str) -> Message:
    round_id = f.uint("round_id")
    return TreeEntriesRequest(node_id, round_id, f.indexes("segments", f.remaining(), TREE_SEGMENTS))


def _read_tree_entries(f: _Fields, node_id: str) -> Message:
    round_id = f.uint("round_id")
    segments = f.index_list("segments", TREE_SEGMENTS)
    if f.remaining() % 3:
        raise WireError("bad_body", "TREE_ENTRIES entries must be (segment, doc_id, digest) triples")
    if f.remaining() // 3 > ENTRIES_PER_MESSAGE_MAX:
        raise WireError("too_large", f"TREE_ENTRIES carries more than {ENTRIES_PER_MESSAGE_MAX} entries")
    listed = set(segments)
    entries = []
    while f.remaining():
        segment, doc_id, digest = f.uint("segment"), f.text("doc_id", DOC_ID_BYTES_MAX), f.blob("digest")
        if segment not in listed:
            raise WireError("bad_body", f"TREE_ENTRIES has an entry in unlisted segment {segment}")
        entries.append((segment, doc_id, digest))
    return TreeEntries(node_id, round_id, segments, tuple(entries))


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
    MessageKind.TREE_ROOT: _read_tree_root,
    MessageKind.TREE_BRANCHES: _read_tree_branches,
    MessageKind.TREE_SEGMENTS_REQUEST: _read_tree_segments_request,
    MessageKind.TREE_SEGMENTS: _read_tree_segments,
    MessageKind.TREE_ENTRIES_REQUEST: _read_tree_entries_request,
    MessageKind.TREE_ENTRIES: _read_tree_entries,
    MessageKind.MEMBERS: _read_members,
    MessageKind.RELAYED: _read_relayed,
    MessageKind.EPHEMERAL: _read_ephemeral,
    MessageKind.CHUNK_REQUEST: chunks.read_request,
    MessageKind.CHUNK_REPLY: chunks.read_reply,
    MessageKind.LOAD_SUMMARIES: load_wire.read_summaries,
}
"""How to read the body of each kind (every `MessageKind` has one)."""
