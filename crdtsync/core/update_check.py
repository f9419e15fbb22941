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

from crdtsync.core.state import STATE_VECTOR_CLIENTS_MAX, StateDecodeError, StateVector, read_varuint

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
        data, pos = self.data, self.pos
        if pos < len(data) and data[pos] < 0x80:  # one byte: most lengths, counts and clocks
            self.pos = pos + 1
            return data[pos]
        try:
            value, self.pos = read_varuint(data, pos)
        except StateDecodeError as exc:
            raise UpdateError(f"at byte {pos}: {exc}") from None
        return value

    def count(self, what: str) -> int:
        """A length or count, which can never exceed the bytes left (each element takes >= 1)."""
        data, pos = self.data, self.pos
        if pos < len(data) and data[pos] < 0x80:  # `uint`'s one-byte case, inline: most counts
            self.pos = pos + 1
            value = data[pos]
        else:
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
        """Skip a length-prefixed string (`count` and `skip` in one: it runs for every key and name)."""
        length = self.uint()
        end = self.pos + length
        if end > len(self.data):
            raise UpdateError(
                f"at byte {self.pos}: string length of {length} exceeds the {len(self.data) - self.pos} bytes left"
            )
        self.pos = end

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


def dependencies(update: bytes) -> StateVector:
    """The state vector a doc must cover for pycrdt to integrate all of `update` at once (see
    `causal_range`). Raises `UpdateError` on an update that does not parse."""
    return causal_range(update)[0]


def causal_range(update: bytes) -> tuple[StateVector, StateVector]:
    """(dependencies, after) of `update`: what a doc must cover for pycrdt to integrate every struct
    and every deletion of it at once, rather than hold some pending (which pycrdt 0.14 may never
    resolve), and what a doc that covered the dependencies covers after applying it.

    Conservative by construction: per client, the clock its first struct starts at and the end of
    every Skip (a gap the update does not fill); per item a struct points to (origins, parent)
    outside the update's own structs, that item's clock + 1; per deleted range, the end of its part
    outside the update's own structs (pycrdt keeps deletions of items it lacks pending). `after` is
    the dependencies with each client of the update moved to the end of its structs. Raises
    `UpdateError` on an update that does not parse, or has bytes after its end."""
    reader = _Reader(update)
    needed: StateVector = {}
    own: dict[int, list[tuple[int, int]]] = {}
    """Client -> the clock ranges of the update's own structs (Skips excluded), in order."""
    refs: list[tuple[int, int]] = []
    for structs, client, clock in client_blocks(reader):
        ranges = own.setdefault(client, [])
        _need(needed, client, clock)
        for _ in range(structs):
            length, skip = _check_struct(reader, client, refs)
            if skip:
                _need(needed, client, clock + length)
            elif length:
                if ranges and ranges[-1][1] == clock:
                    ranges[-1] = (ranges[-1][0], clock + length)
                else:
                    ranges.append((clock, clock + length))
            clock += length
    for client, ranges in own.items():
        if len(ranges) > 1:  # several blocks of one client (merged updates have one): in clock order
            own[client] = _merged(ranges)
    for client, clock in refs:
        if _outside_end(own.get(client), clock, clock + 1):
            _need(needed, client, clock + 1)
    clients = reader.count("delete set size")
    for _ in range(clients):
        client = reader.uint()
        for _ in range(reader.count("delete ranges")):
            clock = reader.uint()
            _need(needed, client, _outside_end(own.get(client), clock, clock + reader.uint()))
    if reader.pos != len(update):
        raise UpdateError(f"{len(update) - reader.pos} bytes after the end of the update")
    after = dict(needed)
    for client, ranges in own.items():
        if ranges:
            _need(after, client, ranges[-1][1])
    return needed, after


def _merged(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for low, high in sorted(ranges):
        if merged and low <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(high, merged[-1][1]))
        else:
            merged.append((low, high))
    return merged


def _need(vector: StateVector, client: int, clock: int) -> None:
    if clock > vector.get(client, 0):
        vector[client] = clock


def _outside_end(ranges: list[tuple[int, int]] | None, start: int, end: int) -> int:
    """The end of the last part of the clock range [start, end) outside `ranges` (ordered, not
    overlapping: an update's own structs of one client), or 0 when it is all inside."""
    if not ranges:
        return end if end > start else 0
    outside = 0
    position = start
    for low, high in ranges:
        if high <= position:
            continue
        if low >= end:
            break
        if low > position:
            outside = low
        position = high
        if position >= end:
            return outside
    return end if position < end else outside


def _check_struct(
    reader: _Reader, client: int, refs: list[tuple[int, int]] | None = None
) -> tuple[int, bool]:
    """Walk one struct; with `refs`, append the ids of the items it points to. Its length in clock
    units, and whether it is a Skip (a gap, not content)."""
    start = reader.pos
    info = reader.byte()
    kind = info & 0x1F
    if kind in (_GC, _SKIP):
        length = reader.uint()
        if length == 0:
            raise UpdateError(
                f"at byte {start}: a {'GC' if kind == _GC else 'skip'} range of length 0 (client {client})"
            )
        return length, kind == _SKIP
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
    return _skip_content(reader, kind), False


_ASTRAL_LEADS = bytes(range(0xF0, 0x100))
"""First bytes of the UTF-8 sequences of code points beyond U+FFFF (two UTF-16 units each)."""


def _skip_content(reader: _Reader, kind: int) -> int:
    """Skip an item's content; its length in clock units (strings count UTF-16 units, as Yjs does)."""
    if kind == _CONTENT_DELETED:
        return reader.uint()
    if kind == _CONTENT_STRING:
        size = reader.count("string length")
        text = reader.data[reader.pos : reader.pos + size]
        reader.skip(size)
        try:
            code_points = len(text.decode("utf-8"))
        except UnicodeDecodeError:
            raise UpdateError(f"at byte {reader.pos - size}: a string that is not UTF-8") from None
        return code_points + len(text) - len(text.translate(None, _ASTRAL_LEADS))
    if kind == _CONTENT_JSON:
        count = reader.count("JSON item count")
        for _ in range(count):
            reader.string()
        return count
    if kind == _CONTENT_ANY:
        count = reader.count("value count")
        for _ in range(count):
            reader.any_value(0)
        return count
    if kind == _CONTENT_BINARY:
        reader.skip(reader.count("binary length"))
    elif kind in (_CONTENT_EMBED, _CONTENT_FORMAT):
        reader.string()
        if kind == _CONTENT_FORMAT:
            reader.string()
    elif kind == _CONTENT_TYPE:
        if reader.uint() in (_XML_ELEMENT, _XML_HOOK):
            reader.string()
    elif kind == _CONTENT_DOC:
        reader.string()
        reader.any_value(0)
    else:
        raise UpdateError(f"at byte {reader.pos - 1}: unknown content type {kind}")
    return 1  # binary, embed, format, type, doc: one clock each
