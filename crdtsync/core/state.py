"""State vectors and canonical digests of pycrdt documents.

pycrdt's own encodings are not canonical: `get_state()` follows hash-map order and equal docs can
produce different bytes (DESIGN.md). Everything that compares or hashes doc states goes through
this module, which decodes the Yjs v1 encodings and re-encodes them in sorted order.
"""

from __future__ import annotations

import functools
import hashlib
import re
from typing import Any

from pycrdt import Doc, Transaction, merge_updates
from pycrdt._pycrdt import Snapshot as _Snapshot

StateVector = dict[int, int]
"""client id -> number of items of that client integrated (the next expected clock)."""

DIGEST_BYTES = 16
_VARUINT_BYTES_MAX = 10
STATE_VECTOR_CLIENTS_MAX = 1 << 16
"""Bounds what a hostile encoded state vector can make us allocate."""


class StateDecodeError(ValueError):
    pass


def read_varuint(data: bytes, pos: int, bytes_max: int = _VARUINT_BYTES_MAX) -> tuple[int, int]:
    """The unsigned LEB128 integer at `pos` and the position after it (at most `bytes_max` bytes)."""
    result = 0
    shift = 0
    end = min(len(data), pos + bytes_max)
    while pos < end:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
    raise StateDecodeError("truncated or overlong varuint")


def write_varuint(out: bytearray, value: int) -> None:
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


def _read_state_vector(data: bytes, pos: int) -> tuple[StateVector, int]:
    count, pos = read_varuint(data, pos)
    if count > STATE_VECTOR_CLIENTS_MAX:
        raise StateDecodeError(f"state vector claims {count} clients")
    vector: StateVector = {}
    for _ in range(count):
        client, pos = read_varuint(data, pos)
        clock, pos = read_varuint(data, pos)
        vector[client] = clock
    return vector, pos


def decode_state_vector(data: bytes) -> StateVector:
    """Decode an encoded Yjs state vector. Raises `StateDecodeError` on malformed bytes."""
    vector, pos = _read_state_vector(data, 0)
    if pos != len(data):
        raise StateDecodeError(f"{len(data) - pos} trailing bytes after the state vector")
    return vector


def check_state_vector(data: bytes) -> None:
    """Raise `StateDecodeError` unless `data` is an encoded state vector `decode_state_vector` takes;
    for a vector only handed on to pycrdt, this checks it without decoding each varint."""
    tokens = _VARINT.findall(data)
    if tokens and sum(map(len, tokens)) == len(data):
        count = _token_int(tokens[0])
        if count <= STATE_VECTOR_CLIENTS_MAX and 1 + 2 * count == len(tokens):
            return  # every byte is in a varint of at most 10 bytes, as many as the count says
    decode_state_vector(data)  # raises, naming what is wrong (or accepts what the count check missed)


def encode_state_vector(vector: StateVector) -> bytes:
    """Encode in ascending client order (canonical; pycrdt decodes any order)."""
    out = bytearray()
    write_varuint(out, len(vector))
    for client in sorted(vector):
        write_varuint(out, client)
        write_varuint(out, vector[client])
    return bytes(out)


def covers(have: StateVector, need: StateVector) -> bool:
    """True when every item counted in `need` is also counted in `have`."""
    # A plain loop: this runs per received delta and is faster than all() over a generator.
    for client, clock in need.items():  # noqa: SIM110
        if clock and have.get(client, 0) < clock:
            return False
    return True


def merge_into(target: StateVector, other: StateVector) -> None:
    for client, clock in other.items():
        if target.get(client, 0) < clock:
            target[client] = clock


def _normalized_delete_set(data: bytes, pos: int) -> tuple[list[tuple[int, list[tuple[int, int]]]], int]:
    clients, pos = read_varuint(data, pos)
    if clients > STATE_VECTOR_CLIENTS_MAX:
        raise StateDecodeError(f"delete set claims {clients} clients")
    by_client: dict[int, list[tuple[int, int]]] = {}
    for _ in range(clients):
        client, pos = read_varuint(data, pos)
        ranges_count, pos = read_varuint(data, pos)
        ranges = by_client.setdefault(client, [])
        for _ in range(ranges_count):
            clock, pos = read_varuint(data, pos)
            length, pos = read_varuint(data, pos)
            if length:
                ranges.append((clock, clock + length))
    normalized = []
    for client in sorted(by_client):
        merged = _merged_ranges(by_client[client])
        if merged:
            normalized.append((client, merged))
    return normalized, pos


def state_bytes_of(doc: Doc[Any]) -> bytes:
    """`doc.get_state()`, without pycrdt's Python transaction wrapper (about 3 µs of its 4 on the
    sync path) when no transaction is open on the doc; inside one, through it."""
    if doc._txn is not None:
        return doc.get_state()
    txn = doc._doc.create_transaction()
    try:
        state: bytes = doc._doc.get_state(txn)
    finally:
        # A read changes nothing: the commit fires no observer (pycrdt's own reads commit the same way).
        txn.commit()
        txn.drop()
    return state


def apply_in(transaction: Transaction, doc: Doc[Any], update: bytes) -> bytes:
    """Apply `update` to `doc` in `transaction` (a write transaction open on it) and read the doc's
    encoded state vector after it, in that transaction: pycrdt's `apply_update` and `get_state`
    would each wrap the call in a nested Python transaction (every remote delta comes this way)."""
    raw = transaction._txn
    assert raw is not None, "an open transaction"
    doc._doc.apply_update(raw, update)
    state: bytes = doc._doc.get_state(raw)
    return state


def update_since(doc: Doc[Any], state: bytes = b"\x00") -> bytes:
    """`doc.get_update(state)` (everything the holder of `state` lacks), as `state_bytes_of` reads."""
    if doc._txn is not None:
        return doc.get_update(state)
    txn = doc._doc.create_transaction()
    try:
        update: bytes = doc._doc.get_update(txn, state)
    finally:
        txn.commit()
        txn.drop()
    return update


def canonical_state(doc: Doc[Any]) -> bytes:
    """A byte string equal for two docs iff they hold the same items and the same deletions.

    Built from `Snapshot.from_doc(doc).encode()` (delete set, then state vector), decoded and
    re-encoded with clients sorted and delete ranges merged, because the snapshot's own byte order
    follows hash-map order. The bytes are part of the protocol (digests are compared across nodes and
    kept in stores): `_canonical_from_tokens` is a faster way to the same bytes, not another form.
    """
    data: bytes = _Snapshot.from_doc(doc._doc).encode()
    tokens = _VARINT.findall(data)
    canonical = None
    if sum(map(len, tokens)) == len(data) and not _NOT_MINIMAL.search(data):
        canonical = _canonical_from_tokens(tokens)
    return canonical if canonical is not None else _canonical_from_snapshot(data)


_VARINT = re.compile(rb"[\x80-\xff]{0,9}[\x00-\x7f]")
"""One LEB128 varint (at most 10 bytes, as `read_varuint` allows)."""
_NOT_MINIMAL = re.compile(rb"[\x80-\xff]\x00")
"""A varint ending in a zero byte after a continued one: not the shortest encoding of its value (yrs
never writes one; the general path re-encodes it, so the bytes stay those of the decoded values)."""
_ZERO = b"\x00"
_varint_order = functools.partial(int.from_bytes, byteorder="little")
"""Sorts minimal LEB128 encodings (what yrs writes) in numeric order without decoding them: a longer
one has a non-zero last byte, so is larger read as a little-endian integer, and of two as long, the
one whose most significant (last) 7-bit groups are larger is larger."""


def _token_int(token: bytes) -> int:
    return token[0] if len(token) == 1 else read_varuint(token, 0)[0]


def _canonical_from_tokens(tokens: list[bytes]) -> bytes | None:
    """The canonical state from the snapshot's minimal varints, clients sorted as tokens (not decoded);
    None when the snapshot is not as yrs writes it (a client listed twice, a count that does not
    match), for `_canonical_from_snapshot` to decode or refuse."""
    try:
        if tokens[0] == _ZERO:  # no deletions: the usual case, kept short
            pos, delete_set = 1, _ZERO
        else:
            pos, delete_set = _delete_set_from_tokens(tokens)
        count = _token_int(tokens[pos])
    except (IndexError, StateDecodeError):
        return None
    if pos + 1 + 2 * count != len(tokens):
        return None
    vector = dict(zip(tokens[pos + 1 :: 2], tokens[pos + 2 :: 2], strict=True))
    if len(vector) != count:
        return None
    parts = [delete_set, b""]
    for client in sorted(vector, key=_varint_order) if count > 1 else vector:
        clock = vector[client]
        if clock != _ZERO:
            parts += (client, clock)
    parts[1] = _count_bytes(len(parts) // 2 - 1)
    return b"".join(parts)


def _delete_set_from_tokens(tokens: list[bytes]) -> tuple[int, bytes]:
    """(the position of the state vector, the canonical delete set) from the snapshot's varints.
    Raises IndexError or StateDecodeError when they do not parse or list a client twice."""
    pos = 1
    clients: dict[bytes, bytes] = {}
    for _ in range(_token_int(tokens[0])):
        client, ranges_count = tokens[pos], _token_int(tokens[pos + 1])
        end = pos + 2 + 2 * ranges_count
        if ranges_count == 1 and tokens[pos + 3] != _ZERO:
            ranges = b"".join(tokens[pos + 1 : end])
        elif ranges_count > 1:
            ranges = _normalized_ranges(tokens[pos + 2 : end])
        else:
            ranges = _ZERO
        if ranges != _ZERO:
            if client in clients:
                raise StateDecodeError("a client listed twice in the delete set")
            clients[client] = ranges
        pos = end
    parts = [_count_bytes(len(clients))]
    for client in sorted(clients, key=_varint_order):
        parts += (client, clients[client])
    return pos, b"".join(parts)


def _count_bytes(count: int) -> bytes:
    if count < 0x80:
        return _ONE_BYTE[count]
    out = bytearray()
    write_varuint(out, count)
    return bytes(out)


_ONE_BYTE = [bytes((value,)) for value in range(0x80)]


def _normalized_ranges(tokens: list[bytes]) -> bytes:
    """A client's delete ranges, (clock, length) varints, sorted and merged, encoded with their
    count; `_ZERO` when none is left (every range empty)."""
    bounds = [(_token_int(tokens[i]), _token_int(tokens[i + 1])) for i in range(0, len(tokens), 2)]
    merged = _merged_ranges([(clock, clock + length) for clock, length in bounds if length])
    out = bytearray()
    write_varuint(out, len(merged))
    for start, end in merged:
        write_varuint(out, start)
        write_varuint(out, end - start)
    return bytes(out)


def _merged_ranges(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    merged: list[tuple[int, int]] = []
    for start, end in sorted(ranges):
        if merged and start <= merged[-1][1]:
            if end > merged[-1][1]:
                merged[-1] = (merged[-1][0], end)
        else:
            merged.append((start, end))
    return merged


def decode_snapshot(data: bytes) -> tuple[list[tuple[int, list[tuple[int, int]]]], StateVector]:
    """An encoded pycrdt snapshot (its delete set, then its state vector): the delete set per client
    in client order, each client's ranges (start, end) sorted and merged, empty ones dropped; and the
    state vector as encoded. StateDecodeError for anything else."""
    values = _varuints(data)
    try:
        delete_set, index = _delete_set_at(values, 0)
        count = values[index]
        if count > STATE_VECTOR_CLIENTS_MAX:
            raise StateDecodeError(f"state vector claims {count} clients")
        vector = {values[i]: values[i + 1] for i in range(index + 1, index + 1 + 2 * count, 2)}
    except IndexError:
        raise StateDecodeError("snapshot ends before its state vector does") from None
    if index + 1 + 2 * count != len(values):
        raise StateDecodeError(f"{len(values) - index - 1 - 2 * count} trailing values after the snapshot")
    return delete_set, vector


def decode_delete_set(data: bytes) -> list[tuple[int, list[tuple[int, int]]]]:
    """An encoded pycrdt delete set (a transaction's `delete_set`), as `decode_snapshot` gives it."""
    values = _varuints(data)
    try:
        delete_set, index = _delete_set_at(values, 0)
    except IndexError:
        raise StateDecodeError("delete set ends inside a client's ranges") from None
    if index != len(values):
        raise StateDecodeError(f"{len(values) - index} trailing values after the delete set")
    return delete_set


def _varuints(data: bytes) -> list[int]:
    """Every unsigned LEB128 integer of `data`, in order: a snapshot or a delete set is nothing else.
    One loop over the bytes, not a call per integer: this runs for the causal token of HTTP answers
    (4 µs a small snapshot this way, 17 µs with `read_varuint`)."""
    values: list[int] = []
    value = shift = 0
    for byte in data:
        if byte < 0x80:
            values.append(value | byte << shift)
            value = shift = 0
        else:
            value |= (byte & 0x7F) << shift
            shift += 7
            if shift >= 7 * _VARUINT_BYTES_MAX:
                raise StateDecodeError("overlong varuint")
    if shift:
        raise StateDecodeError("truncated varuint")
    return values


def _delete_set_at(values: list[int], index: int) -> tuple[list[tuple[int, list[tuple[int, int]]]], int]:
    """The delete set whose client count is `values[index]`, normalized as `decode_snapshot` says, and
    the index after it. IndexError when it is cut short."""
    clients = values[index]
    if clients > STATE_VECTOR_CLIENTS_MAX:
        raise StateDecodeError(f"delete set claims {clients} clients")
    index += 1
    by_client: dict[int, list[tuple[int, int]]] = {}
    for _ in range(clients):
        client, count = values[index], values[index + 1]
        index += 2
        ranges = by_client.setdefault(client, [])
        for _ in range(count):
            clock, length = values[index], values[index + 1]
            index += 2
            if length:
                ranges.append((clock, clock + length))
    normalized = [
        (client, merged) for client in sorted(by_client) if (merged := _merged_ranges(by_client[client]))
    ]
    return normalized, index


def _canonical_from_snapshot(data: bytes) -> bytes:
    """The canonical state from an encoded snapshot, decoded in full (the general path)."""
    delete_set, vector = decode_snapshot(data)
    out = bytearray()
    write_varuint(out, len(delete_set))
    for client, ranges in delete_set:
        write_varuint(out, client)
        write_varuint(out, len(ranges))
        for start, end in ranges:
            write_varuint(out, start)
            write_varuint(out, end - start)
    out += encode_state_vector({c: k for c, k in vector.items() if k})
    return bytes(out)


def digest(doc: Doc[Any]) -> bytes:
    """Canonical 16-byte digest of a doc's state (items and deletions)."""
    return hashlib.blake2b(canonical_state(doc), digest_size=DIGEST_BYTES).digest()


def is_pycrdt_failure(error: BaseException) -> bool:
    """Whether `error` is pycrdt refusing an update: an exception, or a Rust panic, which pycrdt
    raises as `PanicException`, a BaseException (anything else, such as KeyboardInterrupt, is not)."""
    return isinstance(error, Exception) or type(error).__name__ == "PanicException"


MERGE_CHUNK = 128


def merge_all(updates: list[bytes]) -> bytes:
    """Merge any number of updates into one. pycrdt's merge_updates grows faster than linearly with
    the number of inputs (measured: 256 merge in 0.4 ms, 4096 in 62 ms, 20,000 in 2.8 s), so merge in
    chunks of MERGE_CHUNK, then merge the results, level by level."""
    if not updates:
        raise ValueError("nothing to merge")
    parts = updates
    while len(parts) > 1:
        parts = [
            merge_updates(*parts[start : start + MERGE_CHUNK]) if len(parts) - start > 1 else parts[start]
            for start in range(0, len(parts), MERGE_CHUNK)
        ]
    return parts[0]


def merge_each(runs: list[list[bytes]]) -> list[bytes | None]:
    """Each run of updates merged into one (`merge_all`), None for a run pycrdt refuses to merge; any
    other error (a bug, an interrupt) is raised."""
    merged: list[bytes | None] = []
    for updates in runs:
        try:
            merged.append(merge_all(updates))
        except BaseException as error:
            if not is_pycrdt_failure(error):
                raise
            merged.append(None)
    return merged
