"""Typed, bounds-checked reads of a decoded body's fields (`wire`'s readers use one per frame), and
the limits they check."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from enum import IntEnum
from typing import Any

from crdtsync.core.envelope import WireError
from crdtsync.core.messages import Delta, HandoffOffer, Message, Relayed
from crdtsync.core.state import StateDecodeError, encode_state_vector, read_varuint, write_varuint
from crdtsync.core.update_check import UpdateError, causal_range

DOC_ID_BYTES_MAX = 512
DELTAS_PER_BATCH_MAX = 4096
_DOC_ID_CHARS_SAFE = DOC_ID_BYTES_MAX // 4
"""Doc ids of at most this many characters fit `DOC_ID_BYTES_MAX` in any encoding (UTF-8 takes at
most 4 bytes a character): only longer ones are encoded to be measured."""
SKIPPED_SEQS_MAX = 256
"""Sequence numbers a DELTAS frame may list as skipped (`Deltas.skipped`); beyond, the publisher
sends a `SEQ_INDEX` instead."""
TREE_HASH_BYTES = 16
WEIGHT_MILLI_MAX = 1_000_000
"""Weights travel as thousandths in 1..1,000,000 (0.001 to 1000)."""


def milli(weight: float) -> int:
    return round(weight * 1000)


def header_position(message: Message) -> tuple[int, int]:
    """What the version-2 header's epoch and sequence fields carry for a kind whose body has no stream
    position of its sender: a relayed frame's origin numbers, a write-ack question's flag; else 0."""
    if isinstance(message, Relayed):
        return message.origin_epoch, message.origin_first_seq
    if isinstance(message, HandoffOffer):
        return 0, int(message.wants_acks)
    return 0, 0


def with_header_position(message: Message, epoch: int, seq: int) -> Message:
    """`message` with what `header_position` put in a version-2 header. Raises `WireError`."""
    if isinstance(message, Relayed):
        if seq == 0:
            raise WireError("bad_header", f"RELAYED names origin epoch {epoch} without a sequence number")
        return dataclasses.replace(message, origin_epoch=epoch, origin_first_seq=seq)
    if isinstance(message, HandoffOffer) and epoch == 0 and seq == 1:
        return dataclasses.replace(message, wants_acks=True)
    raise WireError("bad_header", f"a {type(message).__name__} header carries epoch {epoch} and seq {seq}")


class Fields:
    """Typed, bounds-checked reads from a decoded msgpack array."""

    __slots__ = ("index", "items", "kind", "version")

    def __init__(self, kind: IntEnum, items: list[Any], version: int) -> None:
        self.kind = kind
        self.items = items
        self.index = 0
        self.version = version

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

    def next_is_array(self) -> bool:
        return self.index < len(self.items) and isinstance(self.items[self.index], list)

    def uint_array(self, name: str, count_max: int) -> tuple[int, ...]:
        """A nested array of at most `count_max` unsigned 63-bit integers."""
        value = self._next()
        if not isinstance(value, list) or len(value) > count_max:
            raise WireError(
                "bad_body", f"{self.kind.name}.{name} is not an array of at most {count_max} integers"
            )
        if any(type(item) is not int or not 0 <= item < 1 << 63 for item in value):
            raise WireError(
                "bad_body", f"{self.kind.name}.{name} holds a value that is not an unsigned 63-bit integer"
            )
        return tuple(value)

    def index_list(self, name: str, bound: int) -> tuple[int, ...]:
        """A nested array of distinct indexes below `bound`."""
        return self._index_values(name, self._next(), bound)

    def index_lists(self, name: str, count: int, bound: int) -> tuple[tuple[int, ...], ...]:
        """A nested array of `count` arrays, each of distinct indexes below `bound`."""
        value = self._next()
        if not isinstance(value, list) or len(value) != count:
            raise WireError("bad_body", f"{self.kind.name}.{name} is not an array of {count} arrays")
        return tuple(self._index_values(name, item, bound) for item in value)

    def _index_values(self, name: str, value: Any, bound: int) -> tuple[int, ...]:
        if not isinstance(value, list) or len(value) > bound:
            raise WireError("bad_body", f"{self.kind.name}.{name} is not an array of at most {bound} indexes")
        values = tuple(self._index(name, item, bound) for item in value)
        if len(set(values)) != len(values):
            raise WireError("bad_body", f"{self.kind.name}.{name} repeats an index")
        return values

    def weight(self) -> float:
        value = self.uint("weight")
        if not 1 <= value <= WEIGHT_MILLI_MAX:
            raise WireError("bad_body", f"{self.kind.name}.weight {value}/1000 is outside 0.001..1000")
        return value / 1000.0

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
        """The rest of the body as 1..DELTAS_PER_BATCH_MAX deltas: (doc id, before, after, update) in
        versions 1 and 2, the after state as a patch of the before state in 2 (`after_patch`); (doc id,
        update) in version 3, whose states the receiver derives (`Delta`: empty here)."""
        if self.version >= 3:
            self.check_entries(2, DELTAS_PER_BATCH_MAX)
            items, start = self.items, self.index
            deltas = []
            # `text` and `blob` inline (every frame of local writes comes this way); anything they
            # would refuse is read again through them, for their error.
            for at in range(start, len(items), 2):
                doc_id, update = items[at], items[at + 1]
                if (
                    type(doc_id) is not str
                    or type(update) is not bytes
                    or (len(doc_id) > _DOC_ID_CHARS_SAFE and len(doc_id.encode()) > DOC_ID_BYTES_MAX)
                ):
                    self.index = at
                    self.text("doc_id", DOC_ID_BYTES_MAX)
                    self.blob("update")
                deltas.append(Delta(doc_id, b"", b"", update))
            self.index = len(items)
            return tuple(deltas)
        self.check_entries(4, DELTAS_PER_BATCH_MAX)
        deltas = []
        while self.remaining():
            doc_id = self.text("doc_id", DOC_ID_BYTES_MAX)
            before = self.blob("before_state")
            if not before:  # an encoded state vector has at least its count: empty means derived
                raise WireError("bad_body", f"{self.kind.name}.before_state is empty")
            after = (
                self.blob("after_state") if self.version == 1 else patched_after(before, self.blob("after"))
            )
            deltas.append(Delta(doc_id, before, after, self.blob("update")))
        return tuple(deltas)

    def remaining(self) -> int:
        return len(self.items) - self.index

    def done(self) -> None:
        if self.index != len(self.items):
            raise WireError(
                "bad_body", f"{self.kind.name} body has {len(self.items) - self.index} extra fields"
            )


# A delta's after state vector is its before state vector with the writer's own clock moved on (the
# encoded vectors list clients in the same order), so version 2 sends the bytes that differ: the
# length of the common prefix and of the common suffix (varuints), then the bytes between them.
# Three to five bytes instead of a whole vector (about 11 bytes a client), and the receiver gets
# the publisher's exact bytes back without decoding either vector.


def delta_fields(flat: list[Any], version: int) -> list[Any]:
    """The (doc id, before, after, update) fields of each delta as `version` sends them: version 3
    drops the states (the receiver derives them from the update), version 2 sends the after state as
    a patch; versions 1 and 2 derive the states of a delta received in version 3 (a relay forwarding
    it to a link of an older version). Raises `WireError` when such an update does not parse."""
    if version >= 3:
        fields: list[Any] = [None] * (len(flat) // 2)
        fields[0::2] = flat[0::4]  # slices, not a loop a delta: this runs for every delta published
        fields[1::2] = flat[3::4]
        return fields
    for at in range(0, len(flat), 4):
        if not flat[at + 1]:
            flat[at + 1], flat[at + 2] = derived_states(flat[at + 3])
        if version == 2:
            flat[at + 2] = after_patch(flat[at + 1], flat[at + 2])
    return flat


def derived_states(update: bytes) -> tuple[bytes, bytes]:
    """The encoded (before, after) state vectors a version-3 receiver derives from `update`: its
    dependencies, and them with the update's own structs (`update_check.causal_range`). Raises
    `WireError` (bad_body) when the update does not parse."""
    try:
        before, after = causal_range(update)
    except UpdateError as exc:
        raise WireError("bad_body", f"a delta's update does not parse: {exc}") from None
    return encode_state_vector(before), encode_state_vector(after)


def after_patch(before: bytes, after: bytes) -> bytes:
    """`after` as the bytes that differ from `before` (see above)."""
    size = len(after)
    if len(before) == size:  # the usual case: the first and last differing bytes from one XOR
        differ = int.from_bytes(before, "big") ^ int.from_bytes(after, "big")
        prefix = size - (differ.bit_length() + 7) // 8
        suffix = ((differ & -differ).bit_length() - 1) // 8 if differ else 0
    else:
        shortest = min(len(before), size)
        prefix = _common_length(shortest, lambda n: before[:n] == after[:n])
        suffix = _common_length(shortest - prefix, lambda n: before[len(before) - n :] == after[size - n :])
    patch = bytearray()
    write_varuint(patch, prefix)
    write_varuint(patch, suffix)
    patch += after[prefix : size - suffix]
    return bytes(patch)


def patched_after(before: bytes, patch: bytes) -> bytes:
    """The after state `after_patch` sent, from the before state. Raises `WireError` (bad_body)."""
    try:  # lengths within a frame: 28 bits, at most 4 bytes each
        prefix, offset = read_varuint(patch, 0, 4)
        suffix, offset = read_varuint(patch, offset, 4)
    except StateDecodeError:
        raise WireError("bad_body", "DELTAS after-state patch is truncated or its lengths overlong") from None
    if prefix + suffix > len(before):
        raise WireError(
            "bad_body",
            f"DELTAS after-state patch keeps {prefix}+{suffix} bytes of a {len(before)}-byte before",
        )
    return b"".join((before[:prefix], patch[offset:], before[len(before) - suffix :]))


def _common_length(longest: int, same: Callable[[int], bool]) -> int:
    """The largest n <= `longest` with same(n), by bisection: slices compare in C, a loop would not."""
    if same(longest):
        return longest
    low, high = 0, longest  # same(low), not same(high)
    while high - low > 1:
        middle = (low + high) // 2
        if same(middle):
            low = middle
        else:
            high = middle
    return low
