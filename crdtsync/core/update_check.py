"""A structural check of Yjs v1 updates from peers, before pycrdt sees them.

pycrdt 0.14 (yrs) accepts some malformed updates and integrates them into a doc that a later read
dereferences after free: the process crashes (reproducers in tests/fuzz). Every one found so far
holds a GC or Skip range of 0 clocks, which no encoder produces (yrs does write items with empty
content and delete ranges of length 0, so those are allowed). This module walks the update's
structs and delete set as the v1 decoder does and refuses such ranges, trailing bytes and anything
that does not parse, in time linear in the update's size (strings and binary content are skipped
by length, not decoded).
"""

from __future__ import annotations

from collections.abc import Iterator

from crdtsync.core.state import STATE_VECTOR_CLIENTS_MAX, StateDecodeError, read_varuint

ANY_DEPTH_MAX = 64
"""Nesting of arrays and maps inside one `Any` value."""

_GC = 0
_SKIP = 10
_CONTENT_DELETED = 1
_CONTENT_JSON = 2
_CONTENT_BINARY = 3
_CONTENT_STRING = 4
_CONTENT_EMBED = 5
_CONTENT_FORMAT = 6
_CONTENT_TYPE = 7
_CONTENT_ANY = 8
_CONTENT_DOC = 9
_XML_ELEMENT = 3
_XML_HOOK = 5


class UpdateError(ValueError):
    """An update that must not reach pycrdt; the message says what is wrong with it."""


class _Reader:
    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def uint(self) -> int:
        try:
            value, self.pos = read_varuint(self.data, self.pos)
        except StateDecodeError as exc:
            raise UpdateError(f"at byte {self.pos}: {exc}") from None
        return value

    def count(self, what: str) -> int:
        """A length or count, which can never exceed the bytes left (each element takes >= 1)."""
        value = self.uint()
        if value > len(self.data) - self.pos:
            raise UpdateError(
                f"at byte {self.pos}: {what} of {value} exceeds the {len(self.data) - self.pos} bytes left"
            )
        return value

    def skip(self, length: int) -> None:
        if self.pos + length > len(self.data):
            raise UpdateError(f"at byte {self.pos}: {length} bytes wanted, {len(self.data) - self.pos} left")
        self.pos += length

    def byte(self) -> int:
        if self.pos >= len(self.data):
            raise UpdateError("truncated update")
        value = self.data[self.pos]
        self.pos += 1
        return value

    def string(self) -> None:
        self.skip(self.count("string length"))

    def any_value(self, depth: int) -> None:
        if depth > ANY_DEPTH_MAX:
            raise UpdateError(f"at byte {self.pos}: values nested deeper than {ANY_DEPTH_MAX}")
        tag = self.byte()
        if tag in (127, 126, 121, 120):  # undefined, null, false, true
            return
        if tag == 125:  # signed varint
            self.uint()
        elif tag == 124:  # float32
            self.skip(4)
        elif tag in (123, 122):  # float64, bigint64
            self.skip(8)
        elif tag == 119:  # string
            self.string()
        elif tag == 118:  # map
            for _ in range(self.count("map size")):
                self.string()
                self.any_value(depth + 1)
        elif tag == 117:  # array
            for _ in range(self.count("array length")):
                self.any_value(depth + 1)
        elif tag == 116:  # bytes
            self.skip(self.count("binary length"))
        else:
            raise UpdateError(f"at byte {self.pos - 1}: unknown value type {tag}")


def client_blocks(reader: _Reader) -> Iterator[tuple[int, int, int]]:
    """(struct count, client, first clock) of each client's block of an update's structs, read
    lazily: the caller reads a block's structs before it asks for the next block."""
    clients = reader.count("client count")
    if clients > STATE_VECTOR_CLIENTS_MAX:
        raise UpdateError(f"{clients} clients")
    for _ in range(clients):
        structs = reader.count("struct count")
        client = reader.uint()
        yield structs, client, reader.uint()


def check_update(update: bytes) -> None:
    """Raise `UpdateError` unless `update` is a well-formed Yjs v1 update with no empty GC or Skip."""
    reader = _Reader(update)
    for structs, client, _clock in client_blocks(reader):
        for _ in range(structs):
            _check_struct(reader, client)
    ranges_clients = reader.count("delete set size")
    for _ in range(ranges_clients):
        reader.uint()
        for _ in range(reader.count("delete ranges")):
            reader.uint()
            reader.uint()
    if reader.pos != len(update):
        raise UpdateError(f"{len(update) - reader.pos} bytes after the end of the update")


def dependencies(update: bytes) -> dict[int, int]:
    """The state vector a doc must cover for pycrdt to integrate every struct of `update` at once,
    rather than hold some pending (which pycrdt 0.14 may never resolve): per client of the update, the
    clock its structs start at; per item that a struct points to (origins, parent) outside the
    update's own ranges, that item's clock + 1. Deletions are not counted, nor the gaps that Skip
    structs leave inside a client's range (updates from a Yjs transaction or sync step have none).
    Raises `UpdateError` on structs that do not parse (call `check_update` for the whole check)."""
    reader = _Reader(update)
    starts: dict[int, int] = {}
    refs: list[tuple[int, int]] = []
    for structs, client, clock in client_blocks(reader):
        starts[client] = min(clock, starts.get(client, clock))
        for _ in range(structs):
            _check_struct(reader, client, refs)
    needed = {client: clock for client, clock in starts.items() if clock}
    for client, clock in refs:
        if client in starts and clock >= starts[client]:
            continue  # an item of the update itself
        if needed.get(client, 0) <= clock:
            needed[client] = clock + 1
    return needed


def _check_struct(reader: _Reader, client: int, refs: list[tuple[int, int]] | None = None) -> None:
    """Walk one struct; with `refs`, append the ids of the items it points to."""
    start = reader.pos
    info = reader.byte()
    kind = info & 0x1F
    if kind in (_GC, _SKIP):
        if reader.uint() == 0:
            raise UpdateError(
                f"at byte {start}: a {'GC' if kind == _GC else 'skip'} range of length 0 (client {client})"
            )
        return
    # Item ids inline (not a helper): this walk runs on every update from a peer.
    if info & 0x80:  # origin id
        ref_client, ref_clock = reader.uint(), reader.uint()
        if refs is not None:
            refs.append((ref_client, ref_clock))
    if info & 0x40:  # right origin id
        ref_client, ref_clock = reader.uint(), reader.uint()
        if refs is not None:
            refs.append((ref_client, ref_clock))
    if not info & 0xC0:  # no origins: the parent is written out
        if reader.uint() == 1:
            reader.string()  # a root type's name
        else:
            ref_client, ref_clock = reader.uint(), reader.uint()  # the parent item's id
            if refs is not None:
                refs.append((ref_client, ref_clock))
        if info & 0x20:
            reader.string()  # the key in a map parent
    _skip_content(reader, kind)


def _skip_content(reader: _Reader, kind: int) -> None:
    if kind == _CONTENT_DELETED:
        reader.uint()
    elif kind == _CONTENT_JSON:
        for _ in range(reader.count("JSON item count")):
            reader.string()
    elif kind == _CONTENT_BINARY:
        reader.skip(reader.count("binary length"))
    elif kind in (_CONTENT_STRING, _CONTENT_EMBED):
        reader.string()
    elif kind == _CONTENT_FORMAT:
        reader.string()
        reader.string()
    elif kind == _CONTENT_TYPE:
        if reader.uint() in (_XML_ELEMENT, _XML_HOOK):
            reader.string()
    elif kind == _CONTENT_ANY:
        for _ in range(reader.count("value count")):
            reader.any_value(0)
    elif kind == _CONTENT_DOC:
        reader.string()
        reader.any_value(0)
    else:
        raise UpdateError(f"at byte {reader.pos - 1}: unknown content type {kind}")
