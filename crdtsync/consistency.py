"""Causal tokens and reads that wait for them (issue 20; see docs/consistency.md).

A causal token says "at least this much of these docs": for each doc, a state vector (client id ->
items integrated) and a delete set (client id -> deleted clock ranges). The delete set is needed
because a Yjs transaction that only deletes (`del data[key]`) does not advance the state vector: a
token of state vectors alone would call a replica that never received the delete up to date.

A replica *covers* a token's entry for a doc when its state vector covers the entry's (every clock
at least as high) and its delete set contains every range of the entry's. Coverage is monotonic: a
replica only ever gains items and deletions, so once covered, always covered.

The text form is opaque to clients: base64url (no padding) of a version byte then the body below.
Clients keep the newest token they were given, send it back, and never look inside.

    version 1:   0x01
                 varuint  number of docs (<= TOKEN_DOCS_MAX), then per doc in ascending id order:
                 varuint  length of the doc id, then the id's UTF-8 bytes
                 varuint  clients in the state vector, then per client in ascending order:
                          varuint client id, varuint clock (never 0)
                 varuint  clients in the delete set, then per client in ascending order:
                          varuint ref: the index of the client in the state vector above, or the
                                  number of its clients followed by a varuint client id
                          varuint ranges, then per range in ascending order, disjoint and not adjacent:
                                  varuint gap from the previous range's end (0 for the first: its
                                  start), varuint length (never 0)

Every encoding is canonical (one byte string per token), at most TOKEN_BYTES_MAX bytes before
base64url, and decoding checks every count against those bounds before it allocates.

This module also holds the waiting: `Waiters` wakes the reads that wait for a token when their doc
changes (one pycrdt observer per doc with waiters, coalesced to one check per event-loop turn), with a
bounded number of waiters per node. It never polls.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pycrdt import Doc, Snapshot, Subscription, TransactionEvent

from crdtsync.core.state import (
    StateDecodeError,
    StateVector,
    decode_delete_set,
    decode_snapshot,
    decode_state_vector,
    read_varuint,
    write_varuint,
)

__all__ = [
    "TOKEN_BYTES_MAX",
    "TOKEN_DOCS_MAX",
    "TOKEN_VERSION",
    "WAITERS_MAX",
    "CausalToken",
    "DocState",
    "NotCoveredError",
    "TokenError",
    "TokenTooLargeError",
    "TooManyWaitersError",
    "Waiters",
    "doc_state",
    "snapshot_state",
]

TOKEN_VERSION = 1
TOKEN_DOCS_MAX = 64
"""Docs one token may name: a client session that touches more starts a new token."""
TOKEN_BYTES_MAX = 4096
"""Encoded bytes before base64url (5,462 characters): fits a URL query under common 8 KiB limits."""
WAITERS_MAX = 10_000
"""Reads waiting for a token at once on one node; each holds a future and pins its doc."""
_VARUINT_BYTES_MAX = 8
"""Client ids are below 2**53 and clocks below 2**53: 8 bytes of 7 bits each hold them."""
_VALUE_MAX = 1 << 53

Ranges = tuple[tuple[int, int], ...]
"""Sorted, disjoint, non-adjacent half-open clock ranges [start, end)."""


class TokenError(ValueError):
    """A token that is not one: bad base64url, unknown version, malformed or over a bound."""


class TokenTooLargeError(TokenError):
    """A token (usually a merge) would name more than TOKEN_DOCS_MAX docs or exceed TOKEN_BYTES_MAX."""


class TooManyWaitersError(RuntimeError):
    """WAITERS_MAX reads already wait for tokens on this node."""


def _merge_ranges(ranges: Iterable[tuple[int, int]]) -> Ranges:
    merged: list[tuple[int, int]] = []
    for start, end in sorted(ranges):
        if end <= start:
            continue
        if merged and start <= merged[-1][1]:
            if end > merged[-1][1]:
                merged[-1] = (merged[-1][0], end)
        else:
            merged.append((start, end))
    return tuple(merged)


def _ranges_contain(have: Ranges, need: Ranges) -> bool:
    """Whether every range of `need` lies inside one range of `have` (both sorted and merged, so a
    needed range can only lie inside a single had range)."""
    index = 0
    for start, end in need:
        while index < len(have) and have[index][1] < end:
            index += 1
        if index == len(have) or have[index][0] > start:
            return False
    return True


@dataclass(frozen=True, slots=True)
class DocState:
    """What a replica holds of one doc: its state vector and its delete set. Compare with `covers`."""

    state: Mapping[int, int] = field(default_factory=dict)
    """client id -> clock (the number of that client's items integrated); no zero clocks."""
    deletes: Mapping[int, Ranges] = field(default_factory=dict)
    """client id -> deleted clock ranges, sorted and merged; no empty entries."""

    @staticmethod
    def of(
        state: Mapping[int, int], deletes: Mapping[int, Iterable[tuple[int, int]]] | None = None
    ) -> DocState:
        """A normalized DocState: zero clocks and empty ranges dropped, ranges sorted and merged."""
        normalized = {client: _merge_ranges(ranges) for client, ranges in (deletes or {}).items()}
        return DocState(
            {client: clock for client, clock in state.items() if clock},
            {client: ranges for client, ranges in normalized.items() if ranges},
        )

    def covers(self, need: DocState) -> bool:
        """Whether a replica holding `self` holds everything `need` names."""
        for client, clock in need.state.items():
            if self.state.get(client, 0) < clock:
                return False
        for client, ranges in need.deletes.items():
            if not _ranges_contain(self.deletes.get(client, ()), ranges):
                return False
        return True

    def missing(self, need: DocState) -> DocState:
        """The part of `need` that `self` lacks: the clocks it is behind on, and the needed delete
        ranges it does not hold entirely."""
        state = {c: k for c, k in need.state.items() if self.state.get(c, 0) < k}
        deletes: dict[int, Ranges] = {}
        for client, ranges in need.deletes.items():
            have = self.deletes.get(client, ())
            lacking = tuple(r for r in ranges if not _ranges_contain(have, (r,)))
            if lacking:
                deletes[client] = lacking
        return DocState(state, deletes)

    def merge(self, other: DocState) -> DocState:
        """The least state covering both."""
        state = dict(self.state)
        for client, clock in other.state.items():
            if state.get(client, 0) < clock:
                state[client] = clock
        deletes = dict(self.deletes)
        for client, ranges in other.deletes.items():
            deletes[client] = _merge_ranges((*deletes.get(client, ()), *ranges))
        return DocState(state, deletes)

    def to_json(self) -> dict[str, Any]:
        """For error answers: client ids as decimal strings (JSON object keys)."""
        return {
            "state_vector": {str(c): self.state[c] for c in sorted(self.state)},
            "deletes": {str(c): [list(r) for r in self.deletes[c]] for c in sorted(self.deletes)},
        }


def doc_state(doc: Doc[Any]) -> DocState:
    """The doc's state vector and delete set (from its pycrdt snapshot: delete set, then state vector;
    about 5 µs for a small doc). Call it outside a transaction."""
    return snapshot_state(Snapshot.from_doc(doc).encode())


def snapshot_state(data: bytes) -> DocState:
    """The DocState of an encoded pycrdt snapshot (`Snapshot.from_doc(doc).encode()`), read by the
    digests' own parser (`crdtsync.core.state.decode_snapshot`): ranges sorted and merged, zero clocks
    dropped."""
    delete_set, vector = decode_snapshot(data)
    return DocState({c: k for c, k in vector.items() if k}, {c: tuple(r) for c, r in delete_set})


def delete_set_ranges(data: bytes) -> dict[int, Ranges]:
    """The ranges of an encoded pycrdt delete set (a transaction's `delete_set`), sorted and merged
    per client."""
    return {client: tuple(ranges) for client, ranges in decode_delete_set(data)}


def doc_state_vector(doc: Doc[Any]) -> StateVector:
    """The doc's state vector alone (cheaper than `doc_state`: about 2 µs)."""
    return decode_state_vector(doc.get_state())


# ---------------------------------------------------------------------- the codec


def _read_varuint(data: bytes, pos: int) -> tuple[int, int]:
    """`state.read_varuint`, canonical only: no trailing zero group, nothing beyond 2**53."""
    try:
        result, end = read_varuint(data, pos, _VARUINT_BYTES_MAX)
    except StateDecodeError:
        raise TokenError("truncated or overlong varuint") from None
    if end - pos > 1 and data[end - 1] == 0:  # a trailing zero group: a second spelling of the value
        raise TokenError("overlong varuint")
    if result >= _VALUE_MAX:
        raise TokenError("value beyond 2**53")
    return result, end


_SMALL_VARUINTS = tuple(bytes([value]) for value in range(0x80))
_LARGE_VARUINTS_CACHED_MAX = 4096


@functools.lru_cache(maxsize=_LARGE_VARUINTS_CACHED_MAX)
def _large_varuint(value: int) -> bytes:
    out = bytearray()
    write_varuint(out, value)
    return bytes(out)


def _varuint(value: int) -> bytes:
    """`write_varuint`'s bytes of `value`. Tokens are written for every HTTP answer, and most of
    their integers are counts and clocks below 2**14 (one or two bytes) or a few client ids (eight
    bytes, the same in every answer: cached)."""
    if 0 <= value < 0x80:  # a negative index would read the table from its end
        return _SMALL_VARUINTS[value]
    if value < 0x4000:
        return bytes(((value & 0x7F) | 0x80, value >> 7))
    return _large_varuint(value)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _from_b64url(text: str) -> bytes:
    if len(text) > (TOKEN_BYTES_MAX * 4 + 2) // 3:
        raise TokenTooLargeError(f"token over {TOKEN_BYTES_MAX} bytes")
    if len(text) % 4 == 1:
        raise TokenError("token is not valid base64url")
    try:
        data = base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
    except (ValueError, TypeError):
        raise TokenError("token is not valid base64url") from None
    if _b64url(data) != text:  # non-zero padding bits: a second spelling of the same bytes
        raise TokenError("token is not canonical base64url")
    return data


@dataclass(frozen=True, slots=True)
class CausalToken:
    """At least this much of these docs: {doc id: DocState}. Opaque to clients as text (`encode`).

    Get one from `Node.causal_token(doc_id, ...)` (or a daemon's write and read answers), combine
    a session's tokens with `merge`, and pass it to `Node.wait_for` or a daemon's `min_state`."""

    docs: Mapping[str, DocState] = field(default_factory=dict)
    _encoded: bytes | None = field(default=None, init=False, compare=False, repr=False)
    """`to_bytes()`, kept by `of` from its size check: a write answer encodes its token once."""

    @staticmethod
    def of(docs: Mapping[str, DocState]) -> CausalToken:
        """A token of these docs (those with an empty state dropped); TokenTooLargeError beyond the bounds."""
        token = CausalToken({d: docs[d] for d in sorted(docs) if docs[d].state or docs[d].deletes})
        token._check_size()
        return token

    def get(self, doc_id: str) -> DocState:
        """What the token needs of `doc_id` (empty for a doc it does not name)."""
        return self.docs.get(doc_id) or DocState()

    def merge(self, other: CausalToken) -> CausalToken:
        """The least token covering both (a client session's next token); TokenTooLargeError when it
        would exceed the bounds."""
        docs = dict(self.docs)
        for doc_id, state in other.docs.items():
            docs[doc_id] = docs[doc_id].merge(state) if doc_id in docs else state
        return CausalToken.of(docs)

    def covered_by(self, doc_id: str, have: DocState) -> bool:
        """Whether a replica holding `have` of `doc_id` holds what the token needs of it."""
        return have.covers(self.get(doc_id))

    def _check_size(self) -> None:
        if len(self.docs) > TOKEN_DOCS_MAX:
            raise TokenTooLargeError(f"a token names at most {TOKEN_DOCS_MAX} docs, not {len(self.docs)}")
        encoded = self.to_bytes()
        object.__setattr__(self, "_encoded", encoded)
        size = len(encoded)
        if size > TOKEN_BYTES_MAX:
            raise TokenTooLargeError(f"the token would take {size} bytes, over {TOKEN_BYTES_MAX}")

    def to_bytes(self) -> bytes:
        if self._encoded is not None:
            return self._encoded
        out = bytearray([TOKEN_VERSION])
        out += _varuint(len(self.docs))
        for doc_id in sorted(self.docs):
            state = self.docs[doc_id]
            name = doc_id.encode()
            out += _varuint(len(name))
            out += name
            clients = sorted(state.state)
            out += _varuint(len(clients))
            for client in clients:
                out += _varuint(client)
                out += _varuint(state.state[client])
            index = {client: i for i, client in enumerate(clients)}
            out += _varuint(len(state.deletes))
            for client in sorted(state.deletes):
                if client in index:
                    out += _varuint(index[client])
                else:
                    out += _varuint(len(clients))
                    out += _varuint(client)
                ranges = state.deletes[client]
                out += _varuint(len(ranges))
                previous_end = 0
                for start, end in ranges:
                    out += _varuint(start - previous_end)
                    out += _varuint(end - start)
                    previous_end = end
        return bytes(out)

    def encode(self) -> str:
        """The token's text: opaque, URL- and header-safe (base64url without padding)."""
        return _b64url(self.to_bytes())

    @staticmethod
    def from_bytes(data: bytes) -> CausalToken:
        """Decode; TokenError for anything but a canonical encoding within the bounds."""
        if len(data) > TOKEN_BYTES_MAX:
            raise TokenTooLargeError(f"token over {TOKEN_BYTES_MAX} bytes")
        if not data:
            raise TokenError("empty token")
        if data[0] != TOKEN_VERSION:
            raise TokenError(f"unknown token version {data[0]} (this node reads version {TOKEN_VERSION})")
        docs: dict[str, DocState] = {}
        count, pos = _read_varuint(data, 1)
        if count > TOKEN_DOCS_MAX:
            raise TokenTooLargeError(f"token names {count} docs, over {TOKEN_DOCS_MAX}")
        previous_id: str | None = None
        for _ in range(count):
            length, pos = _read_varuint(data, pos)
            if pos + length > len(data):
                raise TokenError("truncated doc id")
            try:
                doc_id = data[pos : pos + length].decode()
            except UnicodeDecodeError:
                raise TokenError("doc id is not UTF-8") from None
            pos += length
            if not doc_id or (previous_id is not None and doc_id <= previous_id):
                raise TokenError("doc ids are empty or not in ascending order")
            previous_id = doc_id
            state, pos = _decode_doc(data, pos)
            docs[doc_id] = state
        if pos != len(data):
            raise TokenError(f"{len(data) - pos} trailing bytes after the token")
        return CausalToken(docs)

    @staticmethod
    def decode(text: str) -> CausalToken:
        """Decode a token's text; TokenError for anything `encode` cannot have produced."""
        return CausalToken.from_bytes(_from_b64url(text))


def _decode_doc(data: bytes, pos: int) -> tuple[DocState, int]:
    # Every count is checked against the bytes left before anything is allocated for it: each
    # entry takes at least one byte, so a count beyond them is malformed.
    count, pos = _read_varuint(data, pos)
    if count * 2 > len(data) - pos:
        raise TokenError("state vector longer than the token")
    clients: list[int] = []
    state: dict[int, int] = {}
    for _ in range(count):
        client, pos = _read_varuint(data, pos)
        clock, pos = _read_varuint(data, pos)
        if clock == 0 or (clients and client <= clients[-1]):
            raise TokenError("state vector clients not ascending, or a zero clock")
        clients.append(client)
        state[client] = clock
    delete_clients, pos = _read_varuint(data, pos)
    if delete_clients * 2 > len(data) - pos:
        raise TokenError("delete set longer than the token")
    deletes: dict[int, Ranges] = {}
    previous_client = -1
    for _ in range(delete_clients):
        ref, pos = _read_varuint(data, pos)
        if ref < len(clients):
            client = clients[ref]
        elif ref == len(clients):
            client, pos = _read_varuint(data, pos)
            if client in state:
                raise TokenError("a delete set client spelled out though the state vector names it")
        else:
            raise TokenError("delete set client reference out of range")
        if client <= previous_client:
            raise TokenError("delete set clients not ascending")
        previous_client = client
        ranges_count, pos = _read_varuint(data, pos)
        if ranges_count == 0 or ranges_count * 2 > len(data) - pos:
            raise TokenError("empty delete ranges, or more than the token holds")
        ranges: list[tuple[int, int]] = []
        end = 0
        for index in range(ranges_count):
            gap, pos = _read_varuint(data, pos)
            length, pos = _read_varuint(data, pos)
            if length == 0 or (index and gap == 0):
                raise TokenError("empty or adjacent delete ranges")
            start = end + gap
            end = start + length
            if end >= _VALUE_MAX:
                raise TokenError("delete range beyond 2**53")
            ranges.append((start, end))
        deletes[client] = tuple(ranges)
    return DocState(state, deletes), pos


# ---------------------------------------------------------------------- waiting


class NotCoveredError(TimeoutError):
    """The replica did not cover the token within the wait: `missing` is what it still lacks."""

    def __init__(self, doc_id: str, missing: DocState, waited_ms: float) -> None:
        clients = len(missing.state) + len(missing.deletes.keys() - missing.state.keys())
        super().__init__(
            f"doc {doc_id!r} does not yet cover the token after {waited_ms:.0f} ms: "
            f"behind on {clients} client(s)"
        )
        self.doc_id = doc_id
        self.missing = missing
        self.waited_ms = waited_ms


@dataclass(slots=True)
class _DocWaiters:
    doc: Doc[Any]
    subscription: Subscription | None = None
    waiting: list[tuple[DocState, asyncio.Future[None]]] = field(default_factory=list)
    check_scheduled: bool = False


class Waiters:
    """The reads of one node that wait for a token, woken by their doc's changes.

    One pycrdt observer per doc that has waiters (removed with its last waiter, since an observed doc
    is never freed). The observer runs inside the transaction, where the doc cannot be read, so it
    only schedules one check for the next event-loop turn; a burst of transactions costs one check.
    The caller keeps the doc loaded (pinned) while it waits, so the Doc object stays the same."""

    def __init__(self, waiters_max: int = WAITERS_MAX) -> None:
        self.waiters_max = waiters_max
        self.waiting = 0
        self._docs: dict[str, _DocWaiters] = {}

    async def wait(self, doc_id: str, doc: Doc[Any], need: DocState, timeout_ms: float) -> None:
        """Return once `doc` covers `need`; NotCoveredError after `timeout_ms`, TooManyWaitersError
        when `waiters_max` reads wait already."""
        if _covers(doc, need):
            return
        if self.waiting >= self.waiters_max:
            raise TooManyWaitersError(f"{self.waiters_max} reads are waiting for tokens on this node")
        loop = asyncio.get_running_loop()
        entry = self._docs.get(doc_id)
        if entry is None or entry.doc is not doc:
            waiting: list[tuple[DocState, asyncio.Future[None]]] = []
            if entry is not None:
                # Reloaded meanwhile (callers pin the doc, so only if one did not): the waiters move
                # to the live object, whose observer wakes them.
                waiting = entry.waiting
                self._drop(doc_id, entry)
            entry = self._docs[doc_id] = _DocWaiters(doc, waiting=waiting)
            entry.subscription = doc.observe(lambda event: self._changed(loop, entry, event))
        future: asyncio.Future[None] = loop.create_future()
        waiter = (need, future)
        entry.waiting.append(waiter)
        self.waiting += 1
        try:
            if timeout_ms > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(timeout_ms / 1000.0):
                        await future
            # The timeout cancels the future too: coverage decides (it never goes back).
            live = self._docs[doc_id].doc
            if not _covers(live, need):
                raise NotCoveredError(doc_id, doc_state(live).missing(need), timeout_ms)
        finally:
            self.waiting -= 1
            current = self._docs[doc_id]
            current.waiting.remove(waiter)
            if not current.waiting:
                self._drop(doc_id, current)

    def _drop(self, doc_id: str, entry: _DocWaiters) -> None:
        del self._docs[doc_id]
        if entry.subscription is not None:
            entry.doc.unobserve(entry.subscription)
            entry.subscription = None

    def _changed(self, loop: asyncio.AbstractEventLoop, entry: _DocWaiters, event: TransactionEvent) -> None:
        if not entry.check_scheduled:
            entry.check_scheduled = True
            loop.call_soon(self._check, entry)

    def _check(self, entry: _DocWaiters) -> None:
        entry.check_scheduled = False
        if not entry.waiting:
            return
        have = doc_state(entry.doc)
        for need, future in entry.waiting:
            if not future.done() and have.covers(need):
                future.set_result(None)


def _covers(doc: Doc[Any], need: DocState) -> bool:
    """The cheap check first: the state vector alone, unless the token names deletions."""
    if need.deletes:
        return doc_state(doc).covers(need)
    return DocState(doc_state_vector(doc)).covers(need)
