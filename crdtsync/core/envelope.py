"""The envelope's header: what a receiver reads of a frame before it touches the body; and a body's
framing under it (`framed`: msgpack, lz4 when that makes it smaller; `body_of` undoes it).

Version 1 (frozen: what every node of releases before wire negotiation sends)::

    offset size field
    0      2    magic  b"CS"
    2      1    version (1)
    3      1    kind    (MessageKind)
    4      1    flags   (bit 0: body is lz4-block compressed)
    5      4    body length in bytes, big-endian (as sent, after compression)
    9      4    crc32 of the body as sent, big-endian
    13     ...  body (starts with the sender's node id)

Version 2 keeps those 13 bytes (so any version reads the version byte at the same place) and adds
the sender, so that admission (identity, quarantine, token bucket) runs before lz4 and msgpack::

    13     1    n: length of the sender's node id in bytes (1..NODE_ID_BYTES_MAX)
    14     n    sender node id, UTF-8
    14+n   1..9 sender epoch, unsigned LEB128 (0 for kinds that carry none)
    ...    1..9 sender sequence number, unsigned LEB128 (0 for kinds that carry none)
    ...    4    crc32 of every header byte before it, big-endian
    ...    ...  body (without the fields the header carries)

A length-prefixed id rather than a short per-link index: PUB/SUB frames go to subscribers the
publisher never greeted, and an index would need a table both sides agree on; the id leaves the
body instead, so a frame grows only by the header checksum. The header has its own checksum so
that admission decides on verified bytes without reading the body.

Versions 3 and 4 leave out the body length, which a receiver derives from the frame (ZeroMQ delivers whole
messages, and the body checksum catches any other cut): 4 bytes less on every frame, and the sender
part starts at offset 9::

    0      2    magic  b"CS"
    2      1    version (3)
    3      1    kind
    4      1    flags
    5      4    crc32 of the body as sent, big-endian
    9      ...  as version 2 from offset 13: sender id length and id, epoch, seq, header crc32, body
"""

from __future__ import annotations

import struct
import zlib
from typing import Any, NamedTuple

import lz4.block
import msgpack

from crdtsync.core.counters import WireErrorReason
from crdtsync.core.state import write_varuint

MAGIC = b"CS"
WIRE_VERSION_MIN = 1
WIRE_VERSION = 4
"""The highest version this code speaks (and writes by default). Version 3 has version 2's header;
only the bodies of DELTAS and RELAYED differ (`crdtsync.core.wire`). Version 4 frames are version 3's;
a node that speaks it answers a few branches' segment hashes with TREE_CELLS (`crdtsync.core.merkle`)."""
HEADER = struct.Struct("!2sBBBII")
"""The 13 bytes versions 1 and 2 start with (all of version 1's header)."""
HEADER_BYTES = HEADER.size
_PREFIX = struct.Struct("!2sBBB")
"""What every version starts with: magic, version, kind and flags."""
_FIXED_V3 = struct.Struct("!2sBBBI")
"""Version 3's fixed part: the prefix and the body checksum."""
FRAME_BYTES_MAX = 8 * 1024 * 1024
"""Largest envelope accepted or produced (header + body as sent)."""
BODY_BYTES_MAX = 16 * 1024 * 1024
"""Largest body after decompression: caps what a hostile compressed frame can make us allocate."""
FLAG_LZ4 = 0x01
COMPRESS_MIN_BYTES = 200
"""Bodies smaller than this are sent uncompressed: lz4 framing makes small bodies grow."""
NODE_ID_BYTES_MAX = 64
VARINT_BYTES_MAX = 9
"""A 63-bit unsigned integer in LEB128 (seven bits a byte)."""


_ONE_BYTE = [bytes((value,)) for value in range(0x80)]
"""The varints of 0..127, made once: most epochs and many sequence numbers."""


class WireError(ValueError):
    """A frame that is not a valid crdtsync message. `reason` is a short stable label for metrics."""

    def __init__(self, reason: WireErrorReason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class Header(NamedTuple):
    """A frame's header as `read` found it (a tuple: one is made per frame received)."""

    version: int
    kind: int
    flags: int
    sender: str
    """The sender's node id; empty in version 1, where it is the body's first field."""
    epoch: int
    seq: int
    body_start: int
    body_length: int
    body_checksum: int


def pack(
    version: int, kind: int, flags: int, body: bytes, sender: bytes = b"", epoch: int = 0, seq: int = 0
) -> bytes:
    """The whole frame: header (of `version`) and `body` as sent."""
    if version >= 3:
        fixed = _FIXED_V3.pack(MAGIC, version, kind, flags, zlib.crc32(body))
    else:
        fixed = HEADER.pack(MAGIC, version, kind, flags, len(body), zlib.crc32(body))
    if version == 1:
        return fixed + body
    header = b"".join((fixed, bytes((len(sender),)), sender, _varint(epoch), _varint(seq)))
    return b"".join((header, zlib.crc32(header).to_bytes(4, "big"), body))


_PACKER = msgpack.Packer(use_bin_type=True)
"""One packer for every body: `msgpack.packb` makes a new one (and its buffer) per call. Packing
plain lists, strings, bytes and ints calls back into no Python code, so it runs whole under the GIL."""


def framed(
    version: int, kind: int, fields: list[Any], sender: bytes, epoch: int, seq: int
) -> tuple[bytes, int]:
    """The frame of a body's `fields` (msgpack), compressed when that makes it smaller, and the size
    it would have without compression. Raises `WireError` beyond `FRAME_BYTES_MAX`."""
    body: bytes = _PACKER.pack(fields)
    raw_body_bytes = len(body)
    flags = 0
    if len(body) >= COMPRESS_MIN_BYTES:
        packed: bytes = lz4.block.compress(body, store_size=True)
        if len(packed) < len(body):
            body, flags = packed, FLAG_LZ4
    frame = pack(version, kind, flags, body, sender, epoch, seq)
    if len(frame) > FRAME_BYTES_MAX:
        raise WireError("too_large", f"encoded frame of {len(frame)} bytes exceeds {FRAME_BYTES_MAX}")
    return frame, len(frame) - len(body) + raw_body_bytes


def _varint(value: int) -> bytes:
    if value < 0x80:
        return _ONE_BYTE[value]  # the usual epoch and most sequence numbers: no bytearray
    out = bytearray()
    write_varuint(out, value)
    return bytes(out)


def read(frame: bytes, version_max: int = WIRE_VERSION) -> Header:
    """Read and verify the header of `frame` (not the body). Raises `WireError` naming what is wrong."""
    size = len(frame)
    if size > FRAME_BYTES_MAX:
        raise WireError("too_large", f"frame of {size} bytes exceeds {FRAME_BYTES_MAX}")
    if size < _FIXED_V3.size:
        raise WireError(
            "truncated", f"frame of {size} bytes is shorter than any header ({_FIXED_V3.size} bytes)"
        )
    magic, version, kind, flags = _PREFIX.unpack_from(frame)
    if magic != MAGIC:
        raise WireError("bad_magic", f"magic {magic!r} is not {MAGIC!r}")
    if not WIRE_VERSION_MIN <= version <= version_max:
        raise WireError(
            "bad_version",
            f"wire version {version} is not accepted (this node speaks {WIRE_VERSION_MIN}..{version_max})",
        )
    if version >= 3:
        body_checksum = _FIXED_V3.unpack_from(frame)[4]
        return _read_sender(frame, version, kind, flags, _FIXED_V3.size, None, body_checksum)
    if size < HEADER_BYTES:
        raise WireError("truncated", f"frame of {size} bytes is shorter than the {HEADER_BYTES}-byte header")
    body_length, body_checksum = HEADER.unpack_from(frame)[4:]
    if version == 1:
        return Header(1, kind, flags, "", 0, 0, HEADER_BYTES, body_length, body_checksum)
    return _read_sender(frame, version, kind, flags, HEADER_BYTES, body_length, body_checksum)


def _read_sender(
    frame: bytes, version: int, kind: int, flags: int, start: int, body_length: int | None, body_checksum: int
) -> Header:
    """The rest of a version-2 or 3 header from `start`: the sender, its epoch and sequence number,
    and the header's checksum. A version-3 body's length (None) is the rest of the frame."""
    size = len(frame)
    if size == start:
        raise WireError("truncated", f"version-{version} header ends before the sender id's length")
    sender_length = frame[start]
    if not 1 <= sender_length <= NODE_ID_BYTES_MAX:
        raise WireError("bad_header", f"sender id length {sender_length} is not in 1..{NODE_ID_BYTES_MAX}")
    offset = start + 1 + sender_length
    if size < offset:
        raise WireError(
            "truncated", f"version-{version} header ends inside the {sender_length}-byte sender id"
        )
    epoch = frame[offset] if offset < size else 0x80  # one byte in the usual case: read without a call
    epoch, offset = (epoch, offset + 1) if epoch < 0x80 else _read_varint(frame, offset, "epoch", version)
    seq = frame[offset] if offset < size else 0x80
    seq, offset = (seq, offset + 1) if seq < 0x80 else _read_varint(frame, offset, "seq", version)
    if size < offset + 4:
        raise WireError("truncated", f"version-{version} header ends before its checksum")
    if zlib.crc32(frame[:offset]) != int.from_bytes(frame[offset : offset + 4], "big"):
        raise WireError("bad_checksum", "header checksum does not match the header")
    try:
        sender = frame[start + 1 : start + 1 + sender_length].decode()
    except UnicodeDecodeError:
        raise WireError("bad_header", "sender id is not UTF-8") from None
    body_start = offset + 4
    length = size - body_start if body_length is None else body_length
    return Header(version, kind, flags, sender, epoch, seq, body_start, length, body_checksum)


def _read_varint(frame: bytes, offset: int, name: str, version: int) -> tuple[int, int]:
    """(value, offset after it) of the LEB128 varint at `offset`."""
    value = shift = 0
    for index in range(offset, min(offset + VARINT_BYTES_MAX, len(frame))):
        byte = frame[index]
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, index + 1
        shift += 7
    if len(frame) >= offset + VARINT_BYTES_MAX:
        raise WireError("bad_header", f"{name} is longer than {VARINT_BYTES_MAX} bytes")
    raise WireError("truncated", f"version-{version} header ends inside the {name}")


def body_of(frame: bytes, header: Header) -> bytes:
    """The body, after checking its declared length and checksum, decompressed if it was."""
    body = frame[header.body_start :]
    if len(body) != header.body_length:
        raise WireError(
            "bad_length", f"header declares {header.body_length} body bytes, frame carries {len(body)}"
        )
    if zlib.crc32(body) != header.body_checksum:
        raise WireError("bad_checksum", "body checksum does not match the header")
    return _decompress(body) if header.flags & FLAG_LZ4 else body


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
