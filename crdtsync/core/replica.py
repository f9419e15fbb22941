"""The replica: one node's docs, its publisher stream and its view of each peer, behind one facade.

Sans-IO: inputs are method calls that carry the current time `now_ms` (`receive`, `tick`,
`take_effects`, `doc_loaded`, `restore_update`, `add_peer`, `leave`, `status`); outputs are `Effect`s
collected by `take_effects()`, timers are data (`next_deadline_ms`), and a doc the core needs while it
is evicted is an effect (`LoadDoc`) answered by an input (`doc_loaded`), so the core never waits on a
store. Plain pycrdt writes are recorded by the doc's observer and captured (numbered, batched, stamped
with the time) in the replica's next step. The time-free calls (`open_doc`, `release_doc`, the doc
queries, `register_docs`, `checkpoint`) change nothing that depends on time. No clock, socket, thread
or global random source is touched here, so the simulator can replay any run exactly from its seed.

One notification goes out: `on_capture` (given to the constructor) is called when the application's
first write since the last step is recorded (pycrdt calls the observer inside the application's
transaction, and nothing else tells the driver that there is work).

The facade owns no protocol state: it sets the time, admits frames and dispatches them to the parts,
each in a file of its name, that own their state and write effects into the shared `Context`:

- `docs`: the doc table (lazy load, LRU eviction, capture of local writes) and the Merkle tree;
- `guard`: admission (rate limit, identity binding, update checks, quarantine);
- `links`: peer links, subscriptions and the way out for every frame;
- `outbound`: this node's numbered deltas, batching and the retransmit ring;
- `inbound`: peers' streams (sequence tracking, retransmit requests, relay republishing);
- `causal`: the causal buffer; `sync`: state-vector sync; `antientropy`: Merkle rounds; `seqacks`: acks;
  `gossip`: hellos, membership, leaves, liveness and relays; `status`: the views; `ephemeral`:
  messages never stored (WebSocket clients' awareness across nodes).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any

from pycrdt import Doc

from crdtsync.core import wire
from crdtsync.core.adaptive import Followers, FollowOrder
from crdtsync.core.antientropy import AntiEntropy
from crdtsync.core.balance import Balancer
from crdtsync.core.causal import CausalBuffer
from crdtsync.core.chunks import ChunkMessage, ChunkReply, ChunkRequest
from crdtsync.core.config import ReplicaConfig
from crdtsync.core.context import Context, check_identity
from crdtsync.core.counters import Counters
from crdtsync.core.docs import EMPTY_STATE, DocEntry, DocNotLoadedError, DocTable
from crdtsync.core.effects import Effect, Persist
from crdtsync.core.ephemeral import EphemeralChannel
from crdtsync.core.forward import ForwardMessage, ForwardReply, ForwardRequest
from crdtsync.core.gossip import Gossip
from crdtsync.core.guard import Guard
from crdtsync.core.handoff import Handoff
from crdtsync.core.holding import Holding
from crdtsync.core.inbound import Inbound
from crdtsync.core.links import Links
from crdtsync.core.load_board import LoadBoard
from crdtsync.core.load_wire import LoadSummaries
from crdtsync.core.membership import Membership, MembershipConfig
from crdtsync.core.outbound import MergeEach, Outbound
from crdtsync.core.placement import ClusterPlacement, DocPlacement, PlacementPolicy
from crdtsync.core.seqacks import SeqAcks
from crdtsync.core.state import StateDecodeError, merge_each
from crdtsync.core.status import ReplicaStatus, dc_statuses, member_statuses, peer_statuses
from crdtsync.core.sync import StateSync

__all__ = ["DocNotLoadedError", "Replica", "ReplicaConfig"]

log = logging.getLogger("crdtsync.replica")

_CONTENT_MESSAGES = (wire.Deltas, wire.Relayed, wire.SyncResponse, wire.SyncPush, wire.HandoffOffer)
"""Messages that carry doc content to apply (and then persist)."""


class Replica:
    """One node's replication state machine. Not thread-safe: drive it from one thread."""

    def __init__(
        self,
        *,
        node_id: str,
        epoch: int,
        client_id: int,
        address: str,
        publish_endpoint: str,
        config: ReplicaConfig | None = None,
        lazy_docs: bool = False,
        dc: str = "default",
        membership: MembershipConfig | None = None,
        on_capture: Callable[[], None] | None = None,
        placement: PlacementPolicy | None = None,
        zone: str = "",
        weight: float = 1.0,
        merge_each: MergeEach = merge_each,
    ) -> None:
        """`lazy_docs`: the driver answers `LoadDoc` from a store, so docs beyond the cache limits
        (`docs_cached_max`, `docs_cached_bytes_max`) are evicted; otherwise every doc stays loaded.
        `zone` and `weight`: this node's placement zone and capacity, gossiped with its record.
        `merge_each`: how a batch's runs of a doc's updates are merged (a driver may run it elsewhere)."""
        check_identity(node_id, client_id, dc, zone, weight)
        placement = placement or PlacementPolicy()
        self.config = config = config or ReplicaConfig()
        membership_config = membership or MembershipConfig()
        self._ctx = ctx = Context(
            node_id=node_id,
            epoch=epoch,
            client_id=client_id,
            address=address,
            publish_endpoint=publish_endpoint,
            dc=dc,
            config=config,
            datacenters_max=membership_config.members_max,
            zone=zone,
            weight=weight,
            partitions=placement.partitions,
        )
        self.membership = Membership(
            wire.MemberEntry(node_id, dc, address, publish_endpoint, epoch, 0, False, zone, weight),
            membership_config,
            config.heartbeat_interval_ms,
        )
        self.placement = placement
        self._holding = holding = Holding(node_id, dc, self.membership, placement)
        self.load = ctx.load = LoadBoard(ctx, self.membership, holding)  # rates, load, members' summaries
        self._followers = Followers(ctx, self.load, holding.holds_doc, FollowOrder(self.membership, holding))
        self._balancer = Balancer(ctx, self.membership, self.load)  # loaded nodes shed partitions
        self._guard = Guard(ctx)
        self._links = Links(ctx, self.membership, holding)
        self._outbound = Outbound(ctx, self._links, holding, merge_each)
        self._docs = DocTable(
            ctx,
            self._guard,
            lazy=lazy_docs,
            holds=holding.holds_doc if holding.enforced else None,
            bucket_of=holding.bucket_of if holding.enforced else None,
        )
        self._docs.on_capture = on_capture
        self._causal = CausalBuffer(ctx, self._docs, self._guard, self._links, holding)
        self._sync = StateSync(ctx, self._docs, self._guard, self._links, self._causal)
        self._antientropy = AntiEntropy(ctx, self._docs, self._links, self._sync, holding)
        self._handoff = Handoff(ctx, self._docs, self._guard, self._links, holding, self._sync, self._causal)
        self.on_chunk_message: Callable[[ChunkMessage], None] | None = None  # crdtsync.artifacts.transfer
        self.on_forward_message: Callable[[ForwardMessage], None] | None = None  # crdtsync.forwarding
        self.seq_acks = SeqAcks(ctx, self._links, self._outbound, holding)  # what peers hold of our deltas
        parts = (self._links, self._outbound, self._causal, self._antientropy, holding, self.seq_acks)
        self._inbound = Inbound(ctx, self.membership, *parts)
        gossip_parts = (self._guard, self._links, self._outbound, self._inbound, self._antientropy)
        self._gossip = Gossip(ctx, self.membership, *gossip_parts)
        self._ephemeral = EphemeralChannel(ctx, self._links, self.membership)
        self._last_tick_ms = 0.0
        self.store_failing = False
        """Set by the driver while its store cannot commit: content from peers is refused (counted in
        `frames_dropped_store_failing`), so that nothing waits in memory without a bound."""

    @property
    def node_id(self) -> str:
        return self._ctx.node_id

    @property
    def client_id(self) -> int:
        return self._ctx.client_id

    @property
    def epoch(self) -> int:
        return self._ctx.epoch

    @property
    def dc(self) -> str:
        return self._ctx.dc

    @property
    def address(self) -> str:
        return self._ctx.address

    @property
    def publish_endpoint(self) -> str:
        return self._ctx.publish_endpoint

    @property
    def counters(self) -> Counters:
        """The live counters (the driver fills its own fields into copies, never into these)."""
        return self._ctx.counters

    # ------------------------------------------------------------------ driver interface

    def _step(self, now_ms: float) -> None:
        """Every timed input starts here: the time, then the local writes recorded since the last step."""
        self._ctx.now_ms = now_ms
        captured = self._docs.captured
        if captured:
            self._docs.captured = []
            self._outbound.capture(captured)
            # Counted once per doc and step (all at `now_ms`): an editor's burst is one doc's.
            writes: dict[str, int] = {}
            update_bytes: dict[str, int] = {}
            for doc_id, _before, _after, update in captured:
                writes[doc_id] = writes.get(doc_id, 0) + 1
                update_bytes[doc_id] = update_bytes.get(doc_id, 0) + len(update)
            for doc_id, count in writes.items():
                self.load.wrote(doc_id, now_ms, count)
                self._handoff.wrote(doc_id, update_bytes[doc_id])

    def stop_notifying(self) -> None:
        """No more `on_capture` calls (the driver is closing)."""
        self._docs.on_capture = None

    def add_peer(self, address: str, now_ms: float) -> None:
        """Configure a peer by its advertised address; the hello exchange does the rest."""
        self._step(now_ms)
        if address != self._ctx.address:
            self._links.link_for(address, configured=True)

    def take_effects(self, now_ms: float, *, force: bool = False) -> list[Effect]:
        """Flush due batches and hand over everything the driver must do."""
        self._step(now_ms)
        self._outbound.flush_due(force=force)
        self.seq_acks.send_due(self._inbound.tracks, self._causal.bytes_by_sender)
        docs = self._docs
        docs.evict_if_needed()
        updates = self._outbound.for_store(docs.persist)  # and the local writes, merged as they left
        if updates or docs.doc_states or docs.drops:
            self._ctx.effects.append(Persist(updates, tuple(docs.doc_states), tuple(docs.drops)))
            docs.persist, docs.doc_states, docs.drops = [], [], {}
        effects, self._ctx.effects = self._ctx.effects, []
        return effects

    def next_deadline_ms(self) -> float:
        """When the driver must call `tick` next at the latest."""
        ctx = self._ctx
        deadline = min(
            self._outbound.next_heartbeat_ms,
            self._gossip.next_gossip_ms,
            self.membership.next_change_ms(),
            self._antientropy.next_deadline_ms(),
            self._links.next_hello_ms(),
            self._outbound.next_flush_ms(),
            self._handoff.next_deadline_ms(),
            self.seq_acks.next_deadline_ms(),
        )
        if self._causal.total or self._antientropy.busy or self._inbound.chasing_gaps:
            deadline = min(deadline, ctx.now_ms + ctx.config.tick_interval_ms)
        return deadline

    def tick(self, now_ms: float) -> None:
        """Run timers: heartbeats, hellos, peer liveness, retransmit and resync retries, causal pulls."""
        ctx = self._ctx
        if (
            now_ms - self._last_tick_ms
            > ctx.config.heartbeat_interval_ms + self.membership.config.acceptable_pause_ms
        ):
            # Nothing ran here for longer than any timer allows: this node was stopped or stalled,
            # and its peers' silence in that time is its own.
            ctx.counters.own_pauses += 1
            self.membership.forgive_silence(now_ms)
        self._last_tick_ms = now_ms
        self._step(now_ms)
        self._outbound.heartbeat_if_due()
        self._gossip.evaluate_liveness()
        self._gossip.gossip_if_due()
        self._links.send_hellos(self._outbound.last_seq)
        self._antientropy.tick()
        self._inbound.chase_gaps()
        self._causal.pull_stale()
        self._handoff.tick()
        self._followers.tick(self, now_ms)
        if self._balancer.tick(now_ms, len(self._handoff.pending)):
            self._gossip.announce()  # the new weight: every node places with it
        for doc_id in self._links.sync_subscriptions_if_changed():
            self._handoff.fetch(doc_id)  # subscribed from now on: fetch what it missed before

    def drain(self, now_ms: float) -> None:
        """Before a leave under placement: hold nothing from now on, and hand every doc to the nodes
        that hold it without this one; `drained` tells when all are handed over. Then `leave`."""
        self._step(now_ms)
        self._handoff.drain()

    def drained(self) -> bool:
        return self._handoff.drained()

    def leave(self, now_ms: float) -> None:
        """Announce a graceful leave to every peer this node is in contact with (call before closing)."""
        self._step(now_ms)
        self._gossip.leave()

    def doc_loaded(self, doc_id: str, content: bytes | None, now_ms: float) -> None:
        """The answer to `LoadDoc(doc_id)`: the doc's stored content (None: nothing stored, or the
        store failed to read it; the doc then starts empty and anti-entropy refills it)."""
        self._step(now_ms)
        entry = self._docs.answer_load(doc_id, content)
        if entry is not None:
            self._causal.drain(doc_id, entry)

    def loads_requested(self) -> list[str]:
        """Docs whose `LoadDoc` is not answered yet (after `register_docs`: those whose digest the
        store did not record, which a driver answers before it serves)."""
        return self._docs.loads_requested()

    def needs_load(self, doc_id: str) -> bool:
        """Whether `doc_id` is held but evicted: answer its `LoadDoc` before `open_doc(doc_id)`."""
        return self._docs.needs_load(doc_id)

    # ------------------------------------------------------------------ receiving

    def receive(self, frame: bytes, now_ms: float, *, sender_key: str | None = None) -> None:
        """Handle one frame from the SUB or the request socket. Malformed frames are counted and dropped.

        `sender_key` is the authenticated identity of the connection the frame came in on (the
        CurveZMQ public key of the sending node), when the transport knows it: the first node id
        seen with a key stays bound to it, so that no other key can speak for that node id, and
        that key cannot speak for another one."""
        ctx = self._ctx
        self._step(now_ms)
        ctx.counters.frames_received += 1
        ctx.counters.bytes_received += len(frame)
        try:
            header = wire.read_header(frame, ctx.config.wire_version_max)
            # A version-2 header names the sender: admitted before the body is decompressed or parsed.
            if header.sender and not self._guard.admit_frame(header.sender, sender_key):
                return
            message, raw_size = wire.decode_body(frame, header)
        except wire.WireError as exc:
            ctx.counters.wire_error(exc.reason)
            ctx.warn(exc.reason, "dropped a malformed frame of %d bytes: %s", len(frame), exc)
            return
        ctx.counters.bytes_received_raw += raw_size
        if not header.sender and not self._guard.admit_frame(message.node_id, sender_key):
            return
        # A delta is applied before its frame's news of the sender is recorded (a hello needs it first).
        deltas = type(message) is wire.Deltas
        if not deltas:
            self._gossip.heard_frame(message.node_id, header.version, len(frame))
        try:
            if self.store_failing and isinstance(message, _CONTENT_MESSAGES):
                # Applied content waits in memory for a commit that cannot happen: refuse it, and
                # let retransmission and anti-entropy bring it again once the store commits.
                ctx.counters.frames_dropped_store_failing += 1
            else:
                self._dispatch(message)
        except StateDecodeError as exc:
            ctx.counters.wire_error("bad_state")
            log.warning(
                "dropped %s from %s: bad state vector: %s", type(message).__name__, message.node_id, exc
            )
        finally:
            if deltas:
                self._gossip.heard_frame(message.node_id, header.version, len(frame))

    def _dispatch(self, message: wire.Message) -> None:
        match message:
            case wire.Deltas():
                self._inbound.on_deltas(message)
            case wire.Heartbeat():
                self._inbound.on_heartbeat(message)
            case wire.SeqIndex():
                self._inbound.on_seq_index(message)
            case wire.SeqAck():
                self.seq_acks.on_ack(message)
            case wire.Hello() | wire.HelloAck():
                self._gossip.on_hello(message)
            case wire.RetransmitRequest():
                self._outbound.on_retransmit_request(message)
            case wire.RetransmitGone():
                self._inbound.on_retransmit_gone(message)
            case wire.SyncRequest():
                self._sync.on_request(message)
            case wire.SyncResponse():
                self._sync.on_response(message)
                self._handoff.on_sync_response(message)
            case wire.SyncPush():
                for doc_id, update in message.entries:
                    self._sync.on_update(doc_id, update, message.node_id)
            case wire.TreeRoot():
                self._antientropy.on_tree_root(message)
            case wire.TreeBranches():
                self._antientropy.on_tree_branches(message)
            case wire.TreeSegmentsRequest():
                self._antientropy.on_tree_segments_request(message)
            case wire.TreeSegments() | wire.TreeCells():
                self._antientropy.on_tree_segments(message)
            case wire.TreeEntriesRequest() | wire.TreeLeavesRequest():
                self._antientropy.on_tree_entries_request(message)
            case wire.TreeEntries() | wire.TreeLeaves():
                self._antientropy.on_tree_entries(message)
            case wire.Members():
                self._gossip.on_members(message)
            case wire.Relayed():
                self._inbound.on_relayed(message)
            case wire.HandoffOffer():
                self._handoff.on_offer(message)
                self.seq_acks.on_offer(message)
            case wire.HandoffAck():
                self._handoff.on_ack(message)
            case ChunkRequest() | ChunkReply():
                if self.on_chunk_message is not None:
                    self.on_chunk_message(message)
            case ForwardRequest() | ForwardReply():
                if self.on_forward_message is not None:
                    self.on_forward_message(message)
            case wire.Ephemeral():
                self._ephemeral.on_message(message)
            case LoadSummaries():
                self.load.on_message(message, self._ctx.now_ms)

    # ------------------------------------------------------------------ ephemeral messages

    def publish_ephemeral(self, doc_id: str, payload: bytes, now_ms: float) -> bool:
        """Send `payload` (an awareness update of this node's clients) about `doc_id` to every node
        of every datacenter, never stored; nodes that listen to the doc get a `DeliverEphemeral`.
        False when over its size or rate bound (counted). See `crdtsync.core.ephemeral`."""
        self._step(now_ms)
        return self._ephemeral.publish(doc_id, payload)

    def listen_ephemeral(self, doc_id: str, listening: bool) -> bool:
        """Start (or stop) handing ephemeral messages about `doc_id` to the driver; False when too
        many docs are listened to already (counted)."""
        return self._ephemeral.listen(doc_id, listening)

    # ------------------------------------------------------------------ documents

    def open_doc(self, doc_id: str, *, pin: bool = False) -> Doc[Any]:
        """The live pycrdt Doc for `doc_id`, created empty if this node has never seen it. A pinned doc
        stays loaded (and its writes replicated) until as many `release_doc` calls. Raises
        `DocNotLoadedError` for an evicted doc (see `needs_load`)."""
        known = doc_id in self._docs
        entry = self._docs.get_or_create(doc_id)
        doc = self._docs.doc(entry)
        if pin:
            self._docs.pin(entry)
            if entry.pins == 1:  # a doc open many times is followed once
                self._links.follow(doc_id, True)
        if not known:
            self._handoff.consider(doc_id)
        return doc

    def release_doc(self, doc_id: str) -> None:
        if self._docs.release(doc_id):
            self._links.follow(doc_id, False)

    def register_docs(self, records: Iterable[tuple[str, bytes | None, bytes | None]]) -> None:
        """Make stored docs known without loading them (start-up from a store): (doc id, recorded
        state vector, recorded digest). A doc without a recorded state and digest (written after
        they were last recorded, e.g. before a crash) is loaded once to compute them."""
        self._docs.register(records)

    def checkpoint(self) -> None:
        """Record the state and digest of every doc changed since it was last recorded, so that the
        next start needs to load none of them (called at clean shutdown)."""
        self._docs.checkpoint()

    def loaded_docs(self) -> int:
        return self._docs.loaded

    def loaded_bytes(self) -> int:
        """The estimate `docs_cached_bytes_max` is compared with."""
        return self._docs.loaded_bytes

    def has_doc(self, doc_id: str) -> bool:
        return doc_id in self._docs

    def doc_ids(self, after: str = "", limit: int | None = None, prefix: str = "") -> list[str]:
        """Doc ids in sorted order: those starting with `prefix`, after `after`, at most `limit`."""
        return self._docs.ids(after, limit, prefix)

    def doc_is_empty(self, doc_id: str) -> bool:
        """True for a doc that was opened but never received or made a change (peers don't know it)."""
        entry = self._docs.get(doc_id)
        if entry is None:
            raise KeyError(doc_id)
        return entry.state_bytes == EMPTY_STATE

    def doc_digest(self, doc_id: str) -> bytes:
        """The doc's canonical digest; KeyError for a doc not held, DocNotLoadedError for one whose
        digest is not known until its load is answered (see `loads_requested`)."""
        entry = self._docs.get(doc_id)
        if entry is None:
            raise KeyError(doc_id)
        return self._docs.digest_of(entry)

    def load_update(self, doc_id: str, update: bytes) -> None:
        """Apply a stored, causally complete update (e.g. at start-up): not published, not persisted."""
        self._docs.load_update(doc_id, update)

    def restore_update(self, doc_id: str, update: bytes, now_ms: float) -> bool:
        """Merge a doc's whole content from a backup (once the doc is loaded): persisted, not
        published (anti-entropy spreads it, since the merge changes the doc's digest wherever it added
        something). False for an update refused before the merge (counted and logged)."""
        self._step(now_ms)
        if not self._guard.well_formed(doc_id, "restore", update, None):
            return False
        entry = self._docs.get_or_create(doc_id)
        self._handoff.consider(doc_id)
        self._docs.when_loaded(entry, lambda e: self._restore(e, update), len(update))
        return True

    def _restore(self, entry: DocEntry, update: bytes) -> None:
        self._docs.apply(entry, update, "restore")

    def merkle_root(self) -> bytes:
        """The root of the Merkle tree over every non-empty doc's canonical digest."""
        return self._docs.merkle_root()

    def close(self) -> None:
        """Unsubscribe every doc observer (observed docs are never freed otherwise)."""
        self._docs.close()

    # ------------------------------------------------------------------ placement

    @property
    def placement_enforced(self) -> bool:
        """Whether any placement rule is narrower than "all" (otherwise every node holds every doc)."""
        return self._holding.enforced

    @property
    def leave_hands_off(self) -> bool:
        """Whether a leave must first hand this node's docs over (`drain`): some member holds only
        part of the docs. Otherwise every other node holds every doc already (no more nodes in any
        datacenter than its replicas), as with rf "all", and a leave goes at once."""
        return self._holding.partitioned

    def holds(self, doc_id: str) -> bool:
        """Whether this node holds `doc_id` by placement (a replica, or a relay of a cluster that
        spans datacenters), as its member table says now."""
        return self._holding.holds_doc(doc_id)

    def refuse_write(self, doc_id: str, now_ms: float) -> bool:
        """Whether a write to `doc_id` must be refused before it is applied: this node does not hold
        it and its unconfirmed hints reached `hint_bytes_max` (counted). A held doc asks no step."""
        self._ctx.now_ms = now_ms
        if not self._handoff.may_refuse(doc_id):
            return False
        self._step(now_ms)  # the hints' bytes count every write before this one
        refused = self._handoff.hints_full(doc_id)
        self._ctx.counters.writes_refused_hints_full += refused
        return refused

    def fetch_doc(self, doc_id: str, now_ms: float) -> bool:
        """Ask the nearest alive holder for what this node lacks of `doc_id`, a doc it has open but
        does not hold (a follower); `fetch_pending` tells when the answer came. False when no holder
        is reachable (the doc then shows what this node has)."""
        self._step(now_ms)
        return self._handoff.fetch(doc_id)

    def forward_target(self, doc_id: str, *, read: bool = False) -> tuple[str, str] | None:
        """Where a request about `doc_id` is forwarded (`Handoff.forward_target`); a read may go to a
        follower of this datacenter. (node id, address), or None: the request is served here."""
        followers = self.load.followers_here(doc_id, self._ctx.now_ms) if read else ()
        return self._handoff.forward_target(doc_id, followers)

    def member_address(self, node_id: str) -> str | None:
        """The address of `node_id` while this node has an alive or suspect link to it."""
        link = self._links.of_node(node_id)
        return link.address if link is not None and link.state in ("alive", "suspect") else None

    def fetch_pending(self, doc_id: str) -> bool:
        return doc_id in self._handoff.fetches

    def confirm(self, doc_id: str, node_id: str, against: bytes | None, now_ms: float) -> bool:
        """Ask `node_id` whether it durably holds all this node has of `doc_id` (`Handoff.confirm`)."""
        self._step(now_ms)
        return self._handoff.confirm(doc_id, node_id, against)

    def confirmation(self, doc_id: str, node_id: str) -> tuple[int, bytes] | None:
        """(status, the node's state vector) of its last answer to `confirm` (`wire.HANDOFF_*`
        statuses), None while none came; forgotten once read."""
        return self._handoff.take_confirmation(doc_id, node_id)

    def doc_placement(self, doc_id: str) -> DocPlacement:
        """The doc's partition and replicas in each datacenter, as this node's member table says."""
        return self._holding.doc_placement(doc_id)

    def cluster_placement(self) -> ClusterPlacement:
        """Partitions per member under the default rule (computed once per membership)."""
        return self._holding.cluster_placement()

    # ------------------------------------------------------------------ status

    def status(self, now_ms: float) -> ReplicaStatus:
        ctx = self._ctx
        self._step(now_ms)
        round_address = self._antientropy.round.address if self._antientropy.round is not None else None
        peers = peer_statuses(now_ms, self._links, self._inbound.tracks, round_address)
        members = member_statuses(now_ms, self.membership)
        return ReplicaStatus(
            node_id=ctx.node_id,
            epoch=ctx.epoch,
            address=ctx.address,
            dc=ctx.dc,
            relay=self._links.is_relay,
            docs=len(self._docs),
            published_updates=ctx.counters.deltas_published,
            pending_updates=self._causal.total,
            peers=tuple(peers),
            members=tuple(members),
            datacenters=tuple(dc_statuses(ctx, self.membership, members, peers)),
            counters=ctx.counters.copy(),
            hinted_docs=len(self._handoff.pending),
            hinted_bytes=self._handoff.hinted_bytes,
            hints_overdue=self._handoff.overdue,
            weight=self.membership.own.weight,
            weight_configured=self._balancer.base_weight,
        )
