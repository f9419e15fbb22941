"""Handoff: docs this node has but does not hold go to a holder, then leave this node.

A node comes to have a doc it does not hold (`holding`) in three ways: an application writes it on a
non-replica (the write is acknowledged here, durably, like any other: this node is its first copy),
or a membership change moves its partition away. Such docs are *hinted*: every `handoff_interval_ms`
each is offered (`HandoffOffer`) to its nearest alive holder, a placement replica of this datacenter
first, then (on a node linked to other datacenters: `Links.reaches_other_dcs`) a holder elsewhere.
An offer carries the offerer's state vector and `get_update` against the state the holder last
acknowledged (at first, before any answer, against the offerer's own state: a probe with the delete
set and no content, since the writer's published deltas have usually reached the holder already):
the missing structs and the whole delete set, so the holder ends up with everything the offerer has,
deletions included.

The holder applies the update when its state covers the update's dependencies (so pycrdt never
holds part of it pending), and answers per doc (`HandoffAck`): covered, not covered (with its state
vector, to send against), or not a holder in its view. The offerer drops the doc (here and in the
store) only after a second covered answer, to an offer sent `handoff_grace_ms` after the first, with
no local write in between: by then the holder has committed what it acknowledged, so a kill -9 of
either side loses nothing (a restarted offerer finds the doc in its store and offers it again).
A pinned doc (an application holds it open: a follower) is never dropped while pinned.

Hints are bounded where a bound cannot lose a write. The bytes of local writes to docs this node
does not hold that no holder has confirmed yet are capped (`hint_bytes_max`): past it, writes opened
for such docs are refused before they are applied (`hints_full`), never dropped after. A hint not
handed over within `hint_window_ms` is counted overdue (`hints_overdue`) and kept: the node that took
a write may hold its only copy, so only a holder's confirmation ends a hint.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from crdtsync.core import wire
from crdtsync.core.causal import CausalBuffer
from crdtsync.core.context import Context
from crdtsync.core.docs import EMPTY_STATE, EMPTY_UPDATE, DocEntry, DocTable
from crdtsync.core.guard import Guard
from crdtsync.core.holding import Holding
from crdtsync.core.links import Links, PeerLink
from crdtsync.core.messages import HANDOFF_COVERED, HANDOFF_NOT_COVERED, HANDOFF_NOT_HOLDER
from crdtsync.core.state import covers, decode_state_vector
from crdtsync.core.sync import StateSync
from crdtsync.core.update_check import UpdateError, dependencies

CONFIRMATIONS_MAX = 4096
"""(doc, holder) confirmations of writes awaiting an answer; beyond, the oldest is forgotten."""
REFUSERS_MAX = 64
FETCHES_MAX = 4096
"""Follower fetches awaiting an answer: beyond it `fetch` refuses (the doc still syncs by offers)."""


@dataclass(slots=True)
class Handing:
    """One hinted doc on its way to a holder."""

    target: str | None = None
    """The node offered to; a new target starts over."""
    target_state: bytes | None = None
    """The target's state vector as its last answer gave it: the next offer is computed against it.
    None until it answers: the first offer is a probe, computed against this node's own state, so it
    carries the delete set and no content (the writer's deltas usually reached the holder already)."""
    next_offer_ms: float = 0.0
    offered_writes: int = 0
    """The doc's `local_writes` when the last offer was built."""
    confirmed_ms: float | None = None
    """When the first covered answer came (None: none since the target or a local write changed)."""
    confirmed_writes: int = 0
    refused: set[str] = field(default_factory=set)
    """Nodes that answered they do not take the doc, skipped until every candidate has refused."""
    awaiting: str | None = None
    """The node an offer went to that has not answered yet (counted in `Handoff.in_flight`)."""
    hinted_ms: float = 0.0
    """When the doc became hinted here: past `hint_window_ms` it is overdue."""
    written_bytes: int = 0
    """Bytes of local writes to the doc since it was hinted (counted in `Handoff.hinted_bytes`)."""
    overdue: bool = False


class Handoff:
    def __init__(
        self,
        ctx: Context,
        docs: DocTable,
        guard: Guard,
        links: Links,
        holding: Holding,
        sync: StateSync,
        causal: CausalBuffer,
    ) -> None:
        self._ctx = ctx
        self._docs = docs
        self._guard = guard
        self._links = links
        self._holding = holding
        self._sync = sync
        self._causal = causal
        self.pending: dict[str, Handing] = {}
        """Docs this node has and does not hold, in the order they became so."""
        self.in_flight: dict[str, int] = {}
        """Node -> offers sent to it and not answered: at most `handoff_in_flight_per_target_max`,
        so that a newcomer many nodes hand docs to is not flooded (each offer carries a doc)."""
        self._seen_version = -1
        self._next_pass_ms = 0.0
        self.confirmations: dict[tuple[str, str], tuple[int, bytes] | None] = {}
        """(doc id, holder) -> the holder's last answer (status, state), None until it comes."""
        self.fetches: dict[str, tuple[str, float]] = {}
        """Followed docs fetched from a holder and not answered yet: doc id -> (the holder asked,
        when). One unanswered for `follower_fetch_timeout_ms` (lost, or its holder went down) is
        forgotten, and sent again while the doc is open."""
        self.hinted_bytes = 0
        """Bytes of local writes to hinted docs that no holder confirmed yet (`hint_bytes_max`)."""
        self.overdue = 0
        """Hinted docs not handed over within `hint_window_ms`."""

    # ------------------------------------------------------------------ followers

    def fetch(self, doc_id: str) -> bool:
        """Ask the nearest alive holder for what this node lacks of `doc_id` (an application opened a
        doc this node does not hold: a follower). False when no holder is reachable."""
        entry = self._docs.get(doc_id)
        target = self._target(doc_id) if entry is not None else None
        if entry is None or target is None:
            return False
        node_id, address = target
        if len(self.fetches) >= FETCHES_MAX and doc_id not in self.fetches:
            return False
        self.fetches[doc_id] = (node_id, self._ctx.now_ms)
        self._ctx.counters.syncs_requested += 1
        self._links.send(address, wire.SyncRequest(self._ctx.node_id, ((doc_id, entry.state_bytes),)))
        return True

    def on_sync_response(self, message: wire.SyncResponse) -> None:
        """A holder answered: the docs fetched from it are as fresh as its answer."""
        if self.fetches:
            for doc_id, _update, _state in message.entries:
                fetched = self.fetches.get(doc_id)
                if fetched is not None and fetched[0] == message.node_id:
                    del self.fetches[doc_id]

    def _retry_fetches(self) -> None:
        """Forget fetches unanswered for `follower_fetch_timeout_ms`; ask again for docs still open
        here (an open doc whose fetch was lost would otherwise show nothing until its next write)."""
        now_ms = self._ctx.now_ms
        timeout_ms = self._ctx.config.follower_fetch_timeout_ms
        for doc_id, (_node_id, sent_ms) in list(self.fetches.items()):
            if now_ms - sent_ms < timeout_ms:
                continue
            del self.fetches[doc_id]
            entry = self._docs.get(doc_id)
            if entry is not None and entry.pins and not self._holding.holds_doc(doc_id):
                self.fetch(doc_id)

    # ------------------------------------------------------------------ write acknowledgements

    def take_confirmation(self, doc_id: str, node_id: str) -> tuple[int, bytes] | None:
        """The answer to `confirm`, forgotten once taken; None while none came (still awaited)."""
        key = (doc_id, node_id)
        answer = self.confirmations.get(key)
        if answer is not None:
            del self.confirmations[key]
        return answer

    def confirm(self, doc_id: str, node_id: str, against: bytes | None) -> bool:
        """Offer `doc_id` to `node_id` to learn whether it holds all of it durably: with `against`
        None only this node's state vector (the answer gives the holder's), else `get_update` against
        that state of the holder (its missing structs and every deletion). False when the doc is
        not here or the node is not reachable."""
        entry = self._docs.get(doc_id)
        link = self._links.of_node(node_id)
        if entry is None or entry.doc is None or link is None or link.state != "alive":
            return False
        key = (doc_id, node_id)
        if key not in self.confirmations and len(self.confirmations) >= CONFIRMATIONS_MAX:
            del self.confirmations[next(iter(self.confirmations))]
        self.confirmations[key] = None
        update = EMPTY_UPDATE if against is None else self._docs.doc(entry).get_update(against)
        self._ctx.counters.handoff_offers_sent += 1
        self._send_offers(link.address, [(doc_id, entry.state_bytes, update)], wants_acks=True)
        return True

    # ------------------------------------------------------------------ the offering side

    def drain(self) -> None:
        """This node leaves: count itself out and hand every doc to those who hold it without it."""
        self._holding.drain()
        self._next_pass_ms = 0.0

    def drained(self) -> bool:
        """Nothing is left, or nobody is reachable to take it (a leaving node's docs are taken by
        any node it reaches; waiting for a node to come back would not end)."""
        self._rescan()
        return not self.pending or not self._links.alive()

    def consider(self, doc_id: str) -> None:
        """A doc appeared here (a local write, a restore): hint it if this node does not hold it."""
        if self._holding.enforced and not self._holding.holds_doc(doc_id):
            self._hint(doc_id)

    def _hint(self, doc_id: str) -> None:
        if doc_id not in self.pending:
            self.pending[doc_id] = Handing(hinted_ms=self._ctx.now_ms)

    def wrote(self, doc_id: str, update_bytes: int) -> None:
        """A local write of `update_bytes` to `doc_id`: counted against `hint_bytes_max` if hinted."""
        handing = self.pending.get(doc_id)
        if handing is not None:
            handing.written_bytes += update_bytes
            self.hinted_bytes += update_bytes

    def may_refuse(self, doc_id: str) -> bool:
        """Whether `hints_full` can ever be true for `doc_id` in this member view: a doc this node
        does not hold, under placement. Independent of the writes not yet captured."""
        holding = self._holding
        if not holding.enforced:
            return False
        holding.refresh()
        return not holding.holds_doc(doc_id)

    def hints_full(self, doc_id: str) -> bool:
        """Whether a write to `doc_id` must be refused: this node does not hold it and the hints it
        keeps reached `hint_bytes_max` (a write to a doc it holds is never refused here)."""
        holding = self._holding
        if self.hinted_bytes < self._ctx.config.hint_bytes_max or not holding.enforced:
            return False
        holding.refresh()
        return not holding.holds_doc(doc_id)

    def _rescan(self) -> None:
        """After a change of the member view: hint what this node no longer holds, unhint the rest."""
        holding = self._holding
        holding.refresh()
        if not holding.enforced or holding.version == self._seen_version:
            return
        self._seen_version = holding.version
        for doc_id in self._docs.ids():
            if holding.holds_doc(doc_id):
                self._forget(doc_id)
            else:
                self._hint(doc_id)

    def next_deadline_ms(self) -> float:
        return self._next_pass_ms if self.pending else float("inf")

    def tick(self) -> None:
        """Offer the hinted docs that are due, within the pass's budgets."""
        ctx = self._ctx
        self._rescan()
        if not self.pending or ctx.now_ms < self._next_pass_ms:
            return
        config = ctx.config
        self._next_pass_ms = ctx.now_ms + config.handoff_interval_ms
        self._retry_fetches()
        docs_budget = config.handoff_docs_per_pass_max
        target_bytes_max = config.handoff_target_bytes_per_s * config.handoff_interval_ms / 1000.0
        target_bytes: dict[str, int] = {}
        """Target -> update bytes offered to it in this pass."""
        offers: dict[str, list[tuple[Any, ...]]] = {}
        for doc_id in list(self.pending):
            if docs_budget <= 0:
                break
            handing = self.pending[doc_id]
            entry = self._docs.get(doc_id)
            # Whether this node holds it is settled when a doc is hinted and at each view change
            # (`_rescan`, above): asked again here, it cost a lookup per pending doc per pass.
            if entry is None:
                self._forget(doc_id)
                continue
            if ctx.now_ms < handing.next_offer_ms:
                continue
            if entry.state_bytes == EMPTY_STATE:
                # Opened, never written (a read here, a follower still fetching): nothing to hand
                # over; offering it would start the grace before the write it is opened for. Still
                # open: pulled at each check as a follower is (its fetch may have found nothing yet,
                # and what came after may have been lost on the way).
                if entry.pins:
                    if doc_id not in self.fetches:
                        self.fetch(doc_id)
                    handing.next_offer_ms = ctx.now_ms + (config.ae_interval_ms or config.handoff_grace_ms)
                elif self._docs.drop(entry):
                    self._forget(doc_id)
                continue
            self._check_window(handing)
            target = self._target(doc_id, frozenset(handing.refused))
            if target is None:
                handing.refused.clear()  # everyone refused: views may agree by the next pass
                continue  # no holder reachable: the doc stays here, a hint, until one is
            node_id, address = target
            if target_bytes.get(node_id, 0) >= target_bytes_max:
                continue  # this target's share of the pass is offered: a later pass
            if handing.awaiting != node_id:
                # Its earlier target (gone, or refused) waits for it no more: freed first, so that
                # a dead target's handoff does not hold a place among the concurrent ones.
                self._answered(handing)
                if self.in_flight.get(node_id, 0) >= config.handoff_in_flight_per_target_max:
                    continue  # that node has enough to answer: a later pass
                if node_id not in self.in_flight and len(self.in_flight) >= config.handoff_targets_max:
                    continue  # as many handoffs in progress as allowed: once one is answered
                handing.awaiting = node_id
                self.in_flight[node_id] = self.in_flight.get(node_id, 0) + 1
            if node_id != handing.target:
                handing.target, handing.target_state, handing.confirmed_ms = node_id, None, None
            # Not answered within a few passes (lost, or the target is gone): offered again.
            handing.next_offer_ms = ctx.now_ms + 3 * config.handoff_interval_ms
            docs_budget -= 1
            if entry.doc is None:
                self._docs.when_loaded(entry, functools.partial(self._offer_alone, handing=handing))
                continue
            offer = self._offer(entry, handing)
            target_bytes[node_id] = target_bytes.get(node_id, 0) + len(offer[2])
            offers.setdefault(address, []).append(offer)
        for address, entries in offers.items():
            self._send_offers(address, entries)

    def _check_window(self, handing: Handing) -> None:
        """Count a hint no holder confirmed within `hint_window_ms` as overdue (once)."""
        ctx = self._ctx
        if handing.overdue or handing.confirmed_ms is not None:
            return
        if ctx.now_ms - handing.hinted_ms >= ctx.config.hint_window_ms:
            handing.overdue = True
            self.overdue += 1
            ctx.counters.hints_overdue += 1

    def _answered(self, handing: Handing) -> None:
        """The offer `handing` awaited an answer to is answered, or will not be."""
        node_id = handing.awaiting
        if node_id is not None:
            handing.awaiting = None
            left = self.in_flight.get(node_id, 0) - 1
            if left > 0:
                self.in_flight[node_id] = left
            else:
                self.in_flight.pop(node_id, None)

    def _forget(self, doc_id: str) -> None:
        handing = self.pending.pop(doc_id, None)
        if handing is not None:
            self._answered(handing)
            self.hinted_bytes -= handing.written_bytes
            self.overdue -= handing.overdue

    def nearest_alive_holders(self, doc_id: str) -> Iterator[tuple[str, PeerLink]]:
        """The doc's alive holders but this node, nearest first: this datacenter's replicas in
        preference order, then the other datacenters' (when this node links to them)."""
        holding = self._holding
        bucket = holding.bucket_of(doc_id)
        order = holding.replicas_in_order(bucket, self._ctx.dc)
        if self._links.reaches_other_dcs:  # no holder here alive, or none placed here at all
            order += sorted(holding.holders(bucket).difference(order))
        for node_id in order:
            link = self._links.of_node(node_id) if node_id != self._ctx.node_id else None
            if link is not None and link.state == "alive":
                yield node_id, link

    def forward_target(self, doc_id: str, followers_here: Iterable[str] = ()) -> tuple[str, str] | None:
        """Where a request about `doc_id` is forwarded (docs/placement.md#forwarding): the nearest
        alive holder whose link speaks wire version 3 (the release that has forwarded requests),
        except that `followers_here` (a read's: this datacenter's followers of the doc) come before
        a holder in another datacenter. (node id, address), or None: the request is served here."""
        elsewhere: tuple[str, str] | None = None
        for node_id, link in self.nearest_alive_holders(doc_id):
            if (link.wire_version or 0) >= 3:
                if self._links.dc(link) == self._ctx.dc:
                    return node_id, link.address
                elsewhere = node_id, link.address
                break  # this datacenter's holders come first: none of them is alive and linked
        for node_id in followers_here:
            follower = self._links.of_node(node_id)
            if follower is not None and follower.state == "alive" and (follower.wire_version or 0) >= 3:
                return node_id, follower.address
        return elsewhere

    def _target(self, doc_id: str, refused: frozenset[str] = frozenset()) -> tuple[str, str] | None:
        """The nearest alive holder that has not `refused` the doc: (node id, address)."""
        for node_id, link in self.nearest_alive_holders(doc_id):
            if node_id not in refused:
                return node_id, link.address
        if self._holding.draining:  # anyone takes a leaving node's docs (but another leaving node)
            for link in (*self._links.alive(dc="same"), *self._links.alive()):
                if link.node_id is not None and link.node_id not in refused:
                    return link.node_id, link.address
        return None

    def _offer(self, entry: DocEntry, handing: Handing) -> tuple[str, bytes, bytes]:
        handing.offered_writes = entry.local_writes
        against = entry.state_bytes if handing.target_state is None else handing.target_state
        update = self._docs.doc(entry).get_update(against)
        self._ctx.counters.handoff_offers_sent += 1
        return entry.doc_id, entry.state_bytes, update

    def _offer_alone(self, entry: DocEntry, handing: Handing) -> None:
        if self.pending.get(entry.doc_id) is not handing or handing.target is None:
            return
        address = self._links.address_of.get(handing.target)
        if address is not None:
            self._send_offers(address, [self._offer(entry, handing)])

    def _send_offers(self, address: str, entries: list[tuple[Any, ...]], *, wants_acks: bool = False) -> None:
        node_id = self._ctx.node_id
        self._sync.send_entries(
            address,
            lambda chunk: wire.HandoffOffer(node_id, chunk, self._holding.draining, wants_acks),
            entries,
            [len(update) + len(state) for _doc_id, state, update in entries],
        )

    def on_ack(self, message: wire.HandoffAck) -> None:
        ctx = self._ctx
        for doc_id, status, state in message.entries:
            key = (doc_id, message.node_id)
            if key in self.confirmations:
                decode_state_vector(state)  # validated before it is ever handed to pycrdt
                self.confirmations[key] = (status, state)
            handing = self.pending.get(doc_id)
            if handing is None or handing.target != message.node_id:
                continue
            ctx.counters.handoff_acks_received += 1
            self._answered(handing)
            entry = self._docs.get(doc_id)
            if entry is None:
                self._forget(doc_id)
                continue
            if status == HANDOFF_NOT_HOLDER:
                # Our views differ, or it is leaving too: the next pass offers to the next node.
                handing.target, handing.confirmed_ms = None, None
                if len(handing.refused) < REFUSERS_MAX:
                    handing.refused.add(message.node_id)
                handing.next_offer_ms = ctx.now_ms
                continue
            decode_state_vector(state)  # validated before it is ever handed to pycrdt
            handing.target_state = state
            if entry.pins:
                # A follower pulls at each check: what the holder has past its state vector, and its
                # deletions, which no state vector shows (a lost delete-only delta relayed from another
                # datacenter is repaired among the holders by anti-entropy, which followers skip).
                self.fetch(doc_id)
            if status == HANDOFF_NOT_COVERED:
                handing.confirmed_ms = None
                handing.next_offer_ms = ctx.now_ms
            else:
                self._covered(entry, handing)

    def _covered(self, entry: DocEntry, handing: Handing) -> None:
        """The target holds everything the last offer carried, committed. Drop the doc once that is
        so twice, `handoff_grace_ms` apart, with no local write in between (at once when leaving)."""
        ctx = self._ctx
        grace_ms = ctx.config.handoff_grace_ms
        unchanged = handing.offered_writes == entry.local_writes
        if self._holding.draining and unchanged:
            self._give_up(entry, handing)
        elif handing.confirmed_ms is None or handing.offered_writes != handing.confirmed_writes:
            # A holder has what was written so far: no longer a hint at risk (cap and window).
            self.hinted_bytes -= handing.written_bytes
            self.overdue -= handing.overdue
            handing.written_bytes, handing.overdue = 0, False
            handing.confirmed_ms = ctx.now_ms
            handing.confirmed_writes = handing.offered_writes
            handing.next_offer_ms = ctx.now_ms + grace_ms
            if entry.pins:  # a follower checks with its holder as often as anti-entropy runs
                handing.next_offer_ms = ctx.now_ms + min(grace_ms, ctx.config.ae_interval_ms or grace_ms)
        elif ctx.now_ms - handing.confirmed_ms >= grace_ms and entry.local_writes == handing.confirmed_writes:
            self._give_up(entry, handing)
        else:
            handing.next_offer_ms = max(handing.next_offer_ms, handing.confirmed_ms + grace_ms)

    def _give_up(self, entry: DocEntry, handing: Handing) -> None:
        """Drop a handed-over doc here and in the store; later if something still needs it."""
        if not entry.pins:
            self._causal.discard(entry)  # deltas waiting on a doc given up: its holders have them
        if self._docs.drop(entry):
            self._forget(entry.doc_id)
            self._ctx.counters.handoff_docs_dropped += 1
        else:
            handing.next_offer_ms = self._ctx.now_ms + self._ctx.config.handoff_grace_ms  # pinned, busy

    # ------------------------------------------------------------------ the holding side

    def on_offer(self, message: wire.HandoffOffer) -> None:
        ctx = self._ctx
        node_id = message.node_id
        replies: list[tuple[Any, ...]] = []
        for doc_id, state, update in message.entries:
            ctx.counters.handoff_offers_received += 1
            offered = decode_state_vector(state)  # a bad one drops the frame (counted by the replica)
            if self._holding.draining or (not message.leaving and not self._holding.holds_doc(doc_id)):
                replies.append((doc_id, HANDOFF_NOT_HOLDER, EMPTY_STATE))
                continue
            entry: DocEntry | None
            try:
                if message.leaving:
                    # A leaving node's docs are taken by whoever it asks, holder or not: it must
                    # not leave with them, and a node that does not hold one hands it on itself.
                    entry = self._docs.get_or_create(doc_id)
                    self.consider(doc_id)
                else:
                    entry = self._docs.entry_for_remote(doc_id)
            except (ValueError, RuntimeError):
                entry = None
            if entry is None:
                replies.append((doc_id, HANDOFF_NOT_HOLDER, EMPTY_STATE))
                continue
            if update != EMPTY_UPDATE and not self._guard.well_formed(doc_id, "handoff", update, node_id):
                replies.append((doc_id, HANDOFF_NOT_COVERED, entry.state_bytes))
                continue
            take = functools.partial(self._take, offered=offered, update=update, node_id=node_id)
            if entry.doc is not None:
                take(entry, replies=replies)
            else:
                self._docs.when_loaded(entry, take, len(update) + len(state))
        if replies:
            self._send_acks(node_id, replies)

    def _take(
        self,
        entry: DocEntry,
        offered: dict[int, int],
        update: bytes,
        node_id: str,
        replies: list[tuple[Any, ...]] | None = None,
    ) -> None:
        # The update carries the offerer's whole delete set, which no state vector shows: only an
        # applied (or empty) update lets the answer say covered.
        taken = update == EMPTY_UPDATE
        if not taken:
            try:
                ready = covers(entry.state(), dependencies(update))
            except UpdateError:
                ready = False
            # Not ready: our state is behind what the offer was computed against (this node lost
            # what it had acknowledged); the answer gives our state, and the next offer fits it.
            taken = ready and self._docs.apply(entry, update, "handoff", node_id)
            if taken:
                self._causal.drain(entry.doc_id, entry)
        status = HANDOFF_COVERED if taken and covers(entry.state(), offered) else HANDOFF_NOT_COVERED
        reply = (entry.doc_id, status, entry.state_bytes)
        if replies is not None:
            replies.append(reply)
        else:
            self._send_acks(node_id, [reply])

    def _send_acks(self, node_id: str, replies: list[tuple[Any, ...]]) -> None:
        address = self._links.address_of.get(node_id)
        if address is None:
            self._ctx.counters.unknown_peer += 1
            return
        own = self._ctx.node_id
        self._sync.send_entries(
            address,
            lambda chunk: wire.HandoffAck(own, chunk),
            replies,
            [len(doc_id) + len(state) + 1 for doc_id, _status, state in replies],
            after_commit=True,  # "covered" promises what this node has committed
        )
