"""The causal buffer: a delta is applied only once the doc's state vector covers its `before_state`
(the publisher's state vector before the transaction, in wire versions 1 and 2; the update's own
dependencies, `update_check.causal_range`, in version 3).

pycrdt 0.14 can leave a replica stuck with content missing when it is handed an update before the
updates it depends on (see DESIGN.md), so every remote delta waits here until it is ready; ready
runs are merged into one apply. A delta that waits longer than `causal_wait_ms` makes the doc be
pulled (`get_update(local_sv)`) from its publisher, which holds all of its dependencies; a delta a
relay forwarded is pulled from the relay when it holds the doc, else from its origin (the writer),
else from another holder of this datacenter (relays hold only their share: `holding`). The buffer
is bounded per doc, in total bytes and in bytes per sender; a delta beyond a bound is dropped and
its doc pulled instead.
"""

from __future__ import annotations

from dataclasses import dataclass

from crdtsync.core import wire
from crdtsync.core.context import Context
from crdtsync.core.docs import DocEntry, DocTable
from crdtsync.core.guard import Guard
from crdtsync.core.holding import Holding
from crdtsync.core.links import Links
from crdtsync.core.state import StateVector, covers, decode_state_vector, merge_all, merge_into
from crdtsync.core.update_check import UpdateError, causal_range


@dataclass(frozen=True, slots=True)
class PendingDelta:
    delta: wire.Delta
    before: StateVector
    after: StateVector
    publisher: str
    arrived_ms: float
    origin: str | None = None
    """The writer of a delta a relay forwarded (`publisher` is then the relay)."""


UNPARSED: tuple[StateVector, StateVector] = ({}, {})
"""The states given a delta whose update does not parse (`decode_states` said None): never read, since
the guard refuses the update when it reaches the buffer, and relays leave it out (by identity)."""


def decode_states(deltas: tuple[wire.Delta, ...]) -> list[tuple[StateVector, StateVector] | None]:
    """Every delta's before and after state (`delta_states`), or raise StateDecodeError for the
    whole batch before anything about it is recorded. None for a delta whose states come from an
    update that does not parse: the guard refuses it (counted) when it reaches the buffer."""
    # A publisher's consecutive deltas of one doc chain: each before_state is the previous
    # after_state, so remembering the last decoded vector halves the decoding work.
    decoded: list[tuple[StateVector, StateVector] | None] = []
    last_bytes: bytes | None = None
    last_vector: StateVector = {}
    for delta in deltas:
        if not delta.before_state:
            try:
                decoded.append(causal_range(delta.update))
            except UpdateError:
                decoded.append(None)
            continue
        before = last_vector if delta.before_state == last_bytes else decode_state_vector(delta.before_state)
        after = decode_state_vector(delta.after_state)
        last_bytes, last_vector = delta.after_state, after
        decoded.append((before, after))
    return decoded


class CausalBuffer:
    def __init__(self, ctx: Context, docs: DocTable, guard: Guard, links: Links, holding: Holding) -> None:
        self._ctx = ctx
        self._holding = holding
        self._docs = docs
        self._guard = guard
        self._links = links
        self._pending: dict[str, list[PendingDelta]] = {}
        """Doc id -> its waiting deltas in arrival order. A dict, not a set, everywhere here:
        iteration order must not depend on string hashing, or simulations would not replay."""
        self.total = 0
        self._bytes = 0
        self._bytes_by: dict[str, int] = {}
        """Update bytes in the buffer per sender (the publisher, or the relay that forwarded)."""

    @property
    def bytes_by_sender(self) -> dict[str, int]:
        """Update bytes waiting per sender; a sender is a key while anything of it waits."""
        return self._bytes_by

    def add(
        self,
        deltas: list[tuple[wire.Delta, StateVector, StateVector]],
        publisher: str,
        origin: str | None = None,
    ) -> tuple[int, int]:
        """Buffer deltas received from `publisher` (or the relay that forwarded them, with their
        `origin`), then apply whatever became ready. Returns how many were dropped (content this
        node does not hold now: not to be acknowledged) and how many were of docs this node does
        not hold (placement)."""
        config = self._ctx.config
        touched: dict[str, DocEntry] = {}
        dropped = not_held = 0
        for delta, before, after in deltas:
            if len(delta.update) > config.update_bytes_max:
                self._ctx.counters.updates_dropped_too_large += 1
                dropped += 1
                continue
            # A delta whose states were derived from its update (version 3) had its structure walked
            # then: the guard need not walk it again.
            walked = not delta.before_state and after is not UNPARSED[1]
            if not self._guard.well_formed(delta.doc_id, "delta", delta.update, publisher, walked=walked):
                dropped += 1
                continue
            entry = touched.get(delta.doc_id)
            if entry is None:
                try:
                    found = self._docs.entry_for_remote(delta.doc_id)
                except (ValueError, RuntimeError) as exc:
                    self._ctx.counters.deltas_dropped_doc += 1
                    self._ctx.warn("bad_doc", "dropped a delta for doc %r: %s", delta.doc_id, exc)
                    dropped += 1
                    continue
                if found is None:
                    not_held += 1  # not held here (placement): counted, and sequence tracking stays whole
                    continue
                entry = touched[delta.doc_id] = found
                if self._apply_ready(entry, delta, before, after, publisher):
                    continue
            pending = PendingDelta(delta, before, after, publisher, self._ctx.now_ms, origin)
            if not self._hold(entry, pending):
                dropped += 1
        for doc_id, entry in touched.items():
            self.drain(doc_id, entry)
        return dropped, not_held

    def _apply_ready(
        self, entry: DocEntry, delta: wire.Delta, before: StateVector, after: StateVector, sender: str
    ) -> bool:
        """The common case, without buffering: the first delta of a frame for a loaded doc with
        nothing waiting, whose dependencies the doc covers and that brings something new, is
        applied at once (what `drain` would do with it). False: it goes the buffered way."""
        if entry.doc is None or entry.doc_id in self._pending:
            return False
        state = entry.state()
        if not covers(state, before) or (after != before and covers(state, after)):
            return False
        if self._docs.apply(entry, delta.update, "delta", sender):
            self._ctx.counters.deltas_applied += 1
        return True

    def _hold(self, entry: DocEntry, pending: PendingDelta) -> bool:
        config = self._ctx.config
        size = len(pending.delta.update)
        waiting = self._pending.setdefault(entry.doc_id, [])
        held = self._bytes_by.get(pending.publisher, 0)
        if (
            len(waiting) >= config.pending_deltas_per_doc_max
            or self._bytes + size > config.pending_bytes_max
            or held + size > config.pending_bytes_per_peer_max
        ):
            # Dropping is safe: the pull below fetches everything this delta carried.
            self._ctx.counters.deltas_dropped_buffer_full += 1
            if not waiting:
                del self._pending[entry.doc_id]
            if self._ctx.now_ms >= entry.next_pull_ms:
                entry.next_pull_ms = self._ctx.now_ms + config.causal_wait_ms
                self._pull(pending, entry)
            return False
        waiting.append(pending)
        self.total += 1
        self._bytes += size
        self._bytes_by[pending.publisher] = held + size
        return True

    def drain(self, doc_id: str, entry: DocEntry) -> None:
        """Apply every pending delta whose dependencies are covered, merging runs into one apply;
        an evicted doc is loaded first (its deltas wait here meanwhile)."""
        waiting = self._pending.get(doc_id, [])
        if waiting and entry.doc is None:
            entry.waiting = True
            self._docs.request_load(entry)
            return
        while waiting:
            virtual = dict(entry.state())
            ready: list[tuple[bytes, str]] = []
            still: list[PendingDelta] = []
            done: list[PendingDelta] = []
            for pending in waiting:
                if covers(virtual, pending.after) and pending.after != pending.before:
                    self._ctx.counters.deltas_duplicate_state += 1
                    done.append(pending)
                elif covers(virtual, pending.before):
                    ready.append((pending.delta.update, pending.publisher))
                    merge_into(virtual, pending.after)
                    done.append(pending)
                else:
                    still.append(pending)
            self._release(done)
            waiting = still
            if ready:
                self._apply_run(entry, ready)
            if not ready or not waiting:
                break
        if waiting:
            self._pending[doc_id] = waiting
            entry.waiting = True
        else:
            self._pending.pop(doc_id, None)
            entry.waiting = False

    def discard(self, entry: DocEntry) -> None:
        """Forget the deltas waiting for a doc this node gives up (its holders get them anyway)."""
        self._release(self._pending.pop(entry.doc_id, []))
        entry.waiting = False

    def _release(self, done: list[PendingDelta]) -> None:
        self.total -= len(done)
        for pending in done:
            size = len(pending.delta.update)
            self._bytes -= size
            left = self._bytes_by[pending.publisher] - size
            if left:
                self._bytes_by[pending.publisher] = left
            else:
                del self._bytes_by[pending.publisher]

    def _apply_run(self, entry: DocEntry, ready: list[tuple[bytes, str]]) -> None:
        """Apply causally ready updates, merged into one apply (several times faster) when they merge."""
        updates = [update for update, _sender in ready]
        if len(updates) > 1:
            try:
                merged = merge_all(updates)
            except (KeyboardInterrupt, SystemExit):
                raise
            except BaseException:  # one of them is malformed: apply them one by one, each isolated
                self._ctx.counters.merge_failures += 1
            else:
                if self._docs.apply(entry, merged, "delta"):
                    self._ctx.counters.deltas_applied += len(updates)
                    return
        for update, sender in ready:
            if self._docs.apply(entry, update, "delta", sender):
                self._ctx.counters.deltas_applied += 1

    def _pull(self, pending: PendingDelta, entry: DocEntry) -> None:
        self._ctx.counters.syncs_requested += 1
        self._links.send_to_node(
            self._pull_source(pending, entry.doc_id),
            wire.SyncRequest(self._ctx.node_id, ((entry.doc_id, entry.state_bytes),)),
        )

    def _pull_source(self, pending: PendingDelta, doc_id: str) -> str:
        """Who has the dependencies of `pending`: its sender when it holds the doc (a publisher
        has what it wrote), else the writer of a forwarded delta, else a holder of this datacenter
        (it may lack them too; anti-entropy with the other datacenters is the guarantee)."""
        holding = self._holding
        if pending.origin is None or not holding.enforced:
            return pending.publisher
        bucket = holding.bucket_of(doc_id)
        if holding.holds(pending.publisher, bucket):
            return pending.publisher
        origin = self._links.of_node(pending.origin)
        if origin is not None and origin.reachable:
            return pending.origin
        for node_id in holding.replicas_in_order(bucket, self._ctx.dc):
            link = self._links.of_node(node_id)
            if node_id != self._ctx.node_id and link is not None and link.reachable:
                return node_id
        return pending.origin

    def pull_stale(self) -> None:
        """Pull every doc whose oldest waiting delta has waited `causal_wait_ms`."""
        now_ms = self._ctx.now_ms
        wait_ms = self._ctx.config.causal_wait_ms
        for doc_id, waiting in list(self._pending.items()):
            entry = self._docs.get(doc_id)
            if entry is None or now_ms < entry.next_pull_ms:
                continue
            oldest = waiting[0]
            if now_ms - oldest.arrived_ms >= wait_ms:
                entry.next_pull_ms = now_ms + wait_ms
                self._ctx.counters.causal_pulls += 1
                self._pull(oldest, entry)
