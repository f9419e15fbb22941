"""The replica state machine: one node's docs, its publisher stream and its view of each peer.

Sans-IO: inputs are method calls (`open_doc`, `receive`, `tick`, plain pycrdt writes captured by an
observer) that carry the current time `now_ms` where it matters; outputs are `Effect`s collected by
`take_effects()`. No clock, socket, thread or global random source is touched here, so the simulator
can replay any run exactly from its seed.

Receive path: per-publisher sequence numbers detect loss (ask the publisher to retransmit from its
ring) and duplicates; the causal buffer holds each delta until the local state vector covers its
`before_state`, because pycrdt 0.14 can get stuck when handed updates out of causal order.
Anti-entropy is the guarantee behind all of that: rounds against one peer at a time (periodic with
jitter, at once on connect and when a ring no longer holds a gap) compare Tictac Merkle trees of
canonical doc digests top-down and exchange state vectors and `get_update(remote_sv)` only for the
docs that differ, so a round costs in proportion to the divergence, not to the number of docs.
"""

from __future__ import annotations

import itertools
import logging
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from pycrdt import Doc, Subscription, TransactionEvent
from sortedcontainers import SortedDict

from crdtsync.core import wire
from crdtsync.core.effects import Effect, Persist, Publish, Send, Subscribe, Unsubscribe
from crdtsync.core.membership import LivenessChange, Membership, MembershipConfig
from crdtsync.core.merkle import MerkleTree
from crdtsync.core.state import (
    StateDecodeError,
    StateVector,
    covers,
    decode_state_vector,
    digest,
    encode_state_vector,
    merge_all,
    merge_into,
)
from crdtsync.core.update_check import UpdateError, check_update

log = logging.getLogger("crdtsync.replica")

REMOTE_ORIGIN = 0x5EC
"""Transaction origin of every update applied from a peer; the observer never re-publishes those."""

_SINGLE_DC_GOSSIP_SLOWDOWN = 5.0
"""How much rarer periodic gossip is while every known member is in this node's datacenter."""

_EMPTY_UPDATE = b"\x00\x00"
_EMPTY_STATE = b"\x00"

PeerState = Literal["connecting", "up", "suspect", "down"]


@dataclass(frozen=True, slots=True)
class ReplicaConfig:
    """Limits and timings of the replication protocol. Every buffer has a bound here."""

    batch_deltas_max: int = 512
    batch_bytes_max: int = 256 * 1024
    linger_ms: float = 0.0
    """How long a non-full batch may wait for more deltas; 0 sends at the driver's next turn."""
    ring_deltas_max: int = 65536
    ring_bytes_max: int = 64 * 1024 * 1024
    heartbeat_interval_ms: float = 1500.0
    hello_interval_ms: float = 500.0
    retransmit_enabled: bool = True
    """False leaves every lost delta to anti-entropy (used to test that anti-entropy alone converges)."""
    retransmit_timeout_ms: float = 200.0
    retransmit_deltas_max: int = 4096
    out_of_order_seqs_max: int = 8192
    """Received sequence numbers held above a gap; beyond this the peer is resynchronised instead."""
    causal_wait_ms: float = 300.0
    """How long a delta may wait for its dependencies before the doc is pulled from its publisher."""
    pending_deltas_per_doc_max: int = 4096
    pending_bytes_max: int = 64 * 1024 * 1024
    pending_bytes_per_peer_max: int = 16 * 1024 * 1024
    """Update bytes one sender may hold in the causal buffer: a peer that sends deltas whose
    dependencies never come cannot take the whole buffer from the honest ones."""
    ae_interval_ms: float = 5000.0
    """Mean time between periodic anti-entropy rounds (each against one peer, round robin, jittered
    by +-25%); 0 disables the periodic rounds (rounds on connect and on lost gaps still run)."""
    ae_wan_interval_ms: float = 30_000.0
    """Mean time between periodic rounds a relay runs against a node of another datacenter (also
    jittered); rounds inside the datacenter follow `ae_interval_ms`. 0 disables them."""
    ae_round_timeout_ms: float = 1000.0
    """How long each step of a round may wait for the peer's answer before the round is abandoned
    and queued again (a peer that restarted may not know this node yet and cannot answer)."""
    ae_followup_delay_ms: float = 100.0
    """Pause before a round that continues what a budget-limited round left, so its repairs land."""
    ae_segments_per_round_max: int = 2048
    """Differing tree segments whose entries one round fetches; the rest wait for the next round."""
    ae_docs_per_round_max: int = 2048
    ae_bytes_per_round_max: int = 4 * 1024 * 1024
    """Bytes of full-doc pushes one round may send; requests beyond it wait for the next round."""
    peers_max: int = 256
    docs_max: int = 10_000_000
    docs_cached_max: int = 10_000
    """Loaded docs kept beyond those pinned or waiting on deltas; older ones are evicted (least
    recently used first) when the replica has a doc loader to bring them back."""
    docs_cached_bytes_max: int = 256 * 1024 * 1024
    """The same budget in bytes, estimated from the loaded docs' encoded sizes (a loaded Doc takes
    a few times its encoded size in memory, plus about 5 KB of fixed cost)."""
    update_bytes_max: int = 4 * 1024 * 1024
    tick_interval_ms: float = 50.0
    peer_frames_per_second_max: float = 20_000.0
    """Frames accepted per second from one sender (a token bucket holding one second's worth);
    beyond it frames are dropped and counted, and the protocol repairs what honest peers lose."""
    quarantine_after_rejects: int = 10
    """Updates from one sender, or for one doc, that pycrdt rejects within `quarantine_ms` before
    that sender is ignored, or remote updates for that doc are dropped, for `quarantine_ms`."""
    quarantine_ms: float = 300_000.0


@dataclass(slots=True)
class _DocEntry:
    doc_id: str
    doc: Doc[Any] | None
    """None while the doc is evicted: its content is in the store, its digest in the tree."""
    subscription: Subscription | None
    state_bytes: bytes = b"\x00"
    """The doc's encoded state vector after its last transaction; decoded only when needed."""
    decoded: StateVector | None = None
    digest: bytes | None = None
    pending: list[_PendingDelta] = field(default_factory=list)
    next_pull_ms: float = 0.0
    pins: int = 0
    """Handed to the application by `open_doc(pin=True)`: never evicted while pinned."""
    loaded_bytes: int = 0
    """Estimate of the loaded doc's memory: its content's encoded size plus the updates since."""
    recorded: bool = False
    """The store holds this state and digest already: eviction need not write them again."""


@dataclass(frozen=True, slots=True)
class _PendingDelta:
    delta: wire.Delta
    before: StateVector
    after: StateVector
    publisher: str
    arrived_ms: float


@dataclass(slots=True)
class _PublisherTrack:
    """What we have received of one publisher incarnation's sequence."""

    epoch: int
    contiguous: int
    above: set[int] = field(default_factory=set)
    last_seq_seen: int = 0
    retransmit_deadline_ms: float = 0.0
    last_heard_ms: float = 0.0
    behind_since_ms: float | None = None
    """When this node last went from holding every announced delta to missing some (lag start)."""


@dataclass(slots=True)
class _Round:
    """The one anti-entropy round this node runs as initiator."""

    address: str
    round_id: int
    phase: Literal["branches", "segments", "entries"]
    deadline_ms: float
    more: bool = False
    """Differences were left for a later round (budget or message limits)."""
    segments_requested: int = 0


@dataclass(slots=True)
class _PeerLink:
    address: str
    configured: bool
    node_id: str | None = None
    epoch: int | None = None
    publish_endpoint: str | None = None
    state: PeerState = "connecting"
    last_heard_ms: float | None = None
    next_hello_ms: float = 0.0
    hello_backoff_ms: float = 0.0
    ae_rounds: int = 0
    ae_last_round_ms: float | None = None
    ae_docs_repaired: int = 0
    ae_bytes_repaired: int = 0
    ae_divergence: int | None = None
    subscribed: Literal["dc", "wan"] | None = None
    subscribed_endpoint: str | None = None


@dataclass(slots=True)
class _DcCounters:
    frames_in: int = 0
    bytes_in: int = 0
    frames_out: int = 0
    bytes_out: int = 0
    failures: int = 0


@dataclass(frozen=True, slots=True)
class PeerStatus:
    address: str
    node_id: str | None
    dc: str | None
    state: PeerState
    epoch: int | None
    last_heard_ago_ms: float | None
    behind_updates: int
    """Deltas the peer announced that this node has not received yet."""
    lag_ms: float
    """How long this node has been missing some of the peer's announced deltas (0: caught up)."""
    ae_rounds: int
    """Anti-entropy rounds this node completed against the peer."""
    ae_last_round_ago_ms: float | None
    ae_docs_repaired: int
    ae_bytes_repaired: int
    """Docs and bytes this node requested or pushed, and received, in rounds with the peer."""
    ae_divergence: int | None
    """Differing Merkle tree segments the last round found (0: in sync; None: no round yet)."""
    ae_in_progress: bool
    subscribed: Literal["dc", "wan"] | None
    """How this node receives the peer's stream: inside the datacenter, across the WAN (as a relay),
    or not at all (a node of another datacenter, reached through this datacenter's relays)."""


@dataclass(frozen=True, slots=True)
class MemberStatus:
    node_id: str
    dc: str
    address: str
    incarnation: int
    state: Literal["alive", "suspect", "down", "left"]
    state_for_ms: float
    last_seen_ago_ms: float
    """Since the last evidence of life: a frame from it, or a newer heartbeat counter in gossip."""
    phi: float
    relay: bool
    suspicions: int
    downs: int


@dataclass(frozen=True, slots=True)
class DcStatus:
    dc: str
    members: int
    alive: int
    relays: tuple[str, ...]
    behind_updates: int
    """Deltas announced by this DC's publishers that this node has not received (publishers it
    tracks directly: its own DC's, and every DC's when it is a relay)."""
    lag_ms: float
    """The largest `PeerStatus.lag_ms` among those publishers."""
    frames_in: int
    bytes_in: int
    frames_out: int
    bytes_out: int
    """WAN traffic: frames and bytes received from and sent directly to this DC's nodes when it is
    another datacenter (0 for this node's own). Published frames are counted by their receivers
    only: sum `bytes_in` over the cluster for the WAN total."""
    failures: int
    """Suspicions, downs and anti-entropy round timeouts of this DC's nodes seen by this node."""


@dataclass(frozen=True, slots=True)
class ReplicaStatus:
    node_id: str
    epoch: int
    address: str
    dc: str
    relay: bool
    docs: int
    last_seq: int
    pending_deltas: int
    peers: tuple[PeerStatus, ...]
    members: tuple[MemberStatus, ...]
    datacenters: tuple[DcStatus, ...]
    counters: dict[str, int]


def _delta_size(delta: wire.Delta) -> int:
    """What a delta adds to a batch, roughly: its update, two state vectors and its doc id."""
    return len(delta.update) + len(delta.after_state) * 2 + len(delta.doc_id)


def _state(entry: _DocEntry) -> StateVector:
    if entry.decoded is None:
        entry.decoded = decode_state_vector(entry.state_bytes)
    return entry.decoded


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
        doc_loader: Callable[[str], bytes | None] | None = None,
        dc: str = "default",
        membership: MembershipConfig | None = None,
    ) -> None:
        if not node_id or len(node_id.encode()) > wire.NODE_ID_BYTES_MAX:
            raise ValueError(f"node_id must be 1..{wire.NODE_ID_BYTES_MAX} bytes, got {node_id!r}")
        if not 0 < client_id < 1 << 53:
            raise ValueError("client_id must be in 1..2**53-1 (a Yjs client id)")
        if not dc or len(dc.encode()) > wire.DC_BYTES_MAX:
            raise ValueError(f"dc must be 1..{wire.DC_BYTES_MAX} bytes, got {dc!r}")
        self.node_id = node_id
        self.epoch = epoch
        self.client_id = client_id
        self.address = address
        self.publish_endpoint = publish_endpoint
        self.config = config or ReplicaConfig()
        self.dc = dc
        self.membership = Membership(
            wire.MemberEntry(node_id, dc, address, publish_endpoint, epoch, 0, False),
            membership or MembershipConfig(),
            self.config.heartbeat_interval_ms,
        )
        self._is_relay = True
        self._dc_counters: dict[str, _DcCounters] = {}
        self.counters: dict[str, int] = {}
        self._docs: SortedDict[str, _DocEntry] = SortedDict()
        self._doc_loader = doc_loader
        # Loaded, unpinned docs in least-recently-used order; only kept when docs can be reloaded.
        self._lru: OrderedDict[str, None] = OrderedDict()
        self._doc_states: list[tuple[str, bytes, bytes | None]] = []
        self._loaded = 0
        self._loaded_bytes = 0
        self._links: dict[str, _PeerLink] = {}
        self._address_of: dict[str, str] = {}
        self._tracks: dict[str, _PublisherTrack] = {}
        self._last_seq = 0
        # Plain tuples of str/bytes/int: CPython stops tracking those in the cyclic GC, so a full ring
        # adds nothing to collection pauses (dataclass instances would, measurably, under load).
        self._ring: deque[tuple[int, str, bytes, bytes, bytes, int]] = deque()
        self._ring_bytes = 0
        self._outbox: list[wire.Delta] = []
        self._outbox_bytes = 0
        self._outbox_since_ms: float | None = None
        self._effects: list[Effect] = []
        self._persist: list[tuple[str, bytes]] = []
        self._pending_total = 0
        self._pending_bytes = 0
        self._pending_bytes_by: dict[str, int] = {}
        """Update bytes in the causal buffer per sender (the publisher, or the relay that forwarded)."""
        # A dict, not a set: iteration order must not depend on string hashing, or simulations would not replay.
        self._pending_docs: dict[str, None] = {}
        self._now_ms = 0.0
        self._last_tick_ms = 0.0
        self._next_heartbeat_ms = 0.0
        self._tree = MerkleTree(wire.TREE_SEGMENTS, wire.TREE_BRANCHES)
        self._dirty: dict[str, None] = {}
        """Docs changed since their digest last went into the tree."""
        self._round: _Round | None = None
        self._round_counter = 0
        self._ae_wanted: dict[str, None] = {}
        """Addresses of peers owed a round as soon as none is running (connect, lost gap, leftovers)."""
        self._ae_turn = 0
        self._ae_not_before_ms = 0.0
        self._jitter_state = client_id
        self._next_ae_ms = self.config.ae_interval_ms * (0.75 + 0.5 * self._jitter())
        self._next_ae_wan_ms = self.config.ae_wan_interval_ms * (0.75 + 0.5 * self._jitter())
        self._next_gossip_ms = self.membership.config.gossip_interval_ms * (0.75 + 0.5 * self._jitter())
        self._gossip_turn = 0
        self._wakeup: Callable[[], None] | None = None
        self._wakeup_armed = False
        self._warned_ms: dict[str, float] = {}
        self._strikes: dict[str, tuple[int, float]] = {}
        self._quarantined: dict[str, float] = {}
        self._doc_strikes: dict[str, tuple[int, float]] = {}
        self._key_of: dict[str, str] = {}
        """Node id -> the authenticated key it first spoke with (see `receive`)."""
        self._node_of_key: dict[str, str] = {}
        self._docs_quarantined: dict[str, float] = {}
        self._buckets: dict[str, tuple[float, float]] = {}

    # ------------------------------------------------------------------ driver interface

    def set_wakeup(self, callback: Callable[[], None] | None) -> None:
        """`callback` runs (at most once until the next `take_effects`) when a local write
        produced work, so the driver can come back and collect the effects."""
        self._wakeup = callback

    def add_peer(self, address: str, now_ms: float) -> None:
        """Configure a peer by its advertised address; the hello exchange does the rest."""
        self._now_ms = now_ms
        if address == self.address:
            return
        self._link_for(address, configured=True)

    def take_effects(self, now_ms: float, *, force: bool = False) -> list[Effect]:
        """Flush due batches and hand over everything the driver must do."""
        self._now_ms = now_ms
        self._wakeup_armed = False
        if self._outbox and (
            force
            or self.config.linger_ms <= 0
            or self._outbox_bytes >= self.config.batch_bytes_max
            or len(self._outbox) >= self.config.batch_deltas_max
            or (self._outbox_since_ms is not None and now_ms - self._outbox_since_ms >= self.config.linger_ms)
        ):
            self._flush_outbox()
        self._evict_if_needed()
        if self._persist or self._doc_states:
            self._effects.append(Persist(tuple(self._persist), tuple(self._doc_states)))
            self._persist = []
            self._doc_states = []
        effects, self._effects = self._effects, []
        return effects

    def next_deadline_ms(self) -> float:
        """When the driver must call `tick` next at the latest."""
        deadline = min(self._next_heartbeat_ms, self._next_gossip_ms, self.membership.next_change_ms())
        if self.config.ae_interval_ms > 0:
            deadline = min(deadline, self._next_ae_ms)
        if self.config.ae_wan_interval_ms > 0 and self._is_relay:
            deadline = min(deadline, self._next_ae_wan_ms)
        for link in self._links.values():
            if link.state not in ("up", "suspect") and self._link_wanted(link):
                deadline = min(deadline, link.next_hello_ms)
        busy = (
            self._pending_total
            or self._round is not None
            or self._ae_wanted
            or any(track.above for track in self._tracks.values())
        )
        if busy:
            deadline = min(deadline, self._now_ms + self.config.tick_interval_ms)
        if self._outbox and self._outbox_since_ms is not None:
            deadline = min(deadline, self._outbox_since_ms + self.config.linger_ms)
        return deadline

    def tick(self, now_ms: float) -> None:
        """Run timers: heartbeats, hellos, peer liveness, retransmit and resync retries, causal pulls."""
        config = self.config
        if (
            now_ms - self._last_tick_ms
            > config.heartbeat_interval_ms + self.membership.config.acceptable_pause_ms
        ):
            # Nothing ran here for longer than any timer allows: this node was stopped or stalled,
            # and its peers' silence in that time is its own.
            self._count("own_pauses")
            self.membership.forgive_silence(now_ms)
        self._last_tick_ms = now_ms
        self._now_ms = now_ms
        if now_ms >= self._next_heartbeat_ms:
            self._next_heartbeat_ms = now_ms + config.heartbeat_interval_ms
            self._publish(wire.Heartbeat(self.node_id, self.epoch, self._last_seq))
        if now_ms >= self.membership.next_change_ms():
            changes = self.membership.evaluate(now_ms)
            for change in changes:
                self._on_liveness(change)
            if changes:
                self._retopologize()
        if now_ms >= self._next_gossip_ms:
            # In a single datacenter every member hears every other directly: membership changes
            # travel in hellos, first-contact gossip and leave messages, and the periodic push only
            # repairs a missed one, so it can be rare. Across datacenters it carries liveness.
            interval = self.membership.config.gossip_interval_ms
            if not self.membership.spans_datacenters():
                interval *= _SINGLE_DC_GOSSIP_SLOWDOWN
            self._next_gossip_ms = now_ms + interval * (0.75 + 0.5 * self._jitter())
            self.membership.beat()
            # Across the WAN only relays gossip: the rest learn other datacenters through them.
            up = [
                link
                for link in self._links.values()
                if link.state == "up" and (self._is_relay or self._link_dc(link) == self.dc)
            ]
            if up:
                self._gossip_turn += 1
                self._gossip_to(up[self._gossip_turn % len(up)], reply=False)
        for link in self._links.values():
            if (
                link.state not in ("up", "suspect")
                and now_ms >= link.next_hello_ms
                and self._link_wanted(link)
            ):
                # Back off from a quick first retry (peers often start together) to the interval.
                link.hello_backoff_ms = min(
                    config.hello_interval_ms, max(config.tick_interval_ms, link.hello_backoff_ms * 2)
                )
                link.next_hello_ms = now_ms + link.hello_backoff_ms
                self._send(link.address, self._hello(wire.Hello))
        if self._round is not None and now_ms >= self._round.deadline_ms:
            self._count("ae_round_timeouts")
            timed_out = self._links.get(self._round.address)
            dc = self._link_dc(timed_out) if timed_out is not None else None
            if dc is not None:
                self._dc_counters_for(dc).failures += 1
            self._ae_wanted[self._round.address] = None
            self._round = None
        if config.ae_interval_ms > 0 and now_ms >= self._next_ae_ms:
            self._next_ae_ms = now_ms + config.ae_interval_ms * (0.75 + 0.5 * self._jitter())
            local = [
                link for link in self._links.values() if link.state == "up" and self._link_dc(link) == self.dc
            ]
            if local:
                self._ae_turn += 1
                self._ae_wanted.setdefault(local[self._ae_turn % len(local)].address, None)
        if config.ae_wan_interval_ms > 0 and now_ms >= self._next_ae_wan_ms:
            self._next_ae_wan_ms = now_ms + config.ae_wan_interval_ms * (0.75 + 0.5 * self._jitter())
            remote = [
                link
                for link in self._links.values()
                if link.state == "up" and self._link_dc(link) not in (None, self.dc)
            ]
            if remote and self._is_relay:
                self._ae_turn += 1
                self._ae_wanted.setdefault(remote[self._ae_turn % len(remote)].address, None)
        self._run_wanted_round()
        for node_id, track in self._tracks.items():
            if track.above or track.last_seq_seen > track.contiguous:
                self._request_retransmit(node_id, track)
        for doc_id in list(self._pending_docs):
            entry = self._docs[doc_id]
            if entry.pending and now_ms >= entry.next_pull_ms:
                oldest = entry.pending[0]
                if now_ms - oldest.arrived_ms >= config.causal_wait_ms:
                    entry.next_pull_ms = now_ms + config.causal_wait_ms
                    self._count("causal_pulls")
                    self._pull(oldest.publisher, doc_id, entry)

    # ------------------------------------------------------------------ documents

    def open_doc(self, doc_id: str, *, pin: bool = False) -> Doc[Any]:
        """The live pycrdt Doc for `doc_id`, created empty if this node has never seen it. A pinned doc
        stays loaded (and its writes replicated) until as many `release_doc` calls."""
        entry = self._entry(doc_id, create=True)
        doc = self._doc(entry)
        if pin:
            entry.pins += 1
            self._lru.pop(doc_id, None)
        return doc

    def release_doc(self, doc_id: str) -> None:
        entry = self._docs.get(doc_id)
        if entry is not None and entry.pins > 0:
            entry.pins -= 1
            if entry.pins == 0 and entry.doc is not None and self._doc_loader is not None:
                self._lru[doc_id] = None

    def register_docs(self, records: Iterable[tuple[str, bytes | None, bytes | None]]) -> None:
        """Make stored docs known without loading them (start-up from a store): (doc id, recorded
        state vector, recorded digest). A doc without a recorded state and digest (written after
        they were last recorded, e.g. before a crash) is loaded once to compute them."""
        if self._docs:
            raise RuntimeError("register_docs runs once, before any doc is opened")
        entries: dict[str, _DocEntry] = {}
        unknown: list[_DocEntry] = []
        for doc_id, state, doc_digest in records:
            entry = _DocEntry(doc_id=doc_id, doc=None, subscription=None)
            entries[doc_id] = entry
            if state is None or doc_digest is None:
                unknown.append(entry)
                continue
            entry.state_bytes = state
            entry.digest = doc_digest
            entry.recorded = True
            if state != _EMPTY_STATE:
                self._tree.set(doc_id, doc_digest)
        if len(entries) > self.config.docs_max:
            raise RuntimeError(
                f"the store holds {len(entries)} docs, more than docs_max ({self.config.docs_max})"
            )
        self._docs.update(entries)  # one bulk insert into the sorted index
        for entry in unknown:
            self._doc(entry)
            self._dirty[entry.doc_id] = None

    def checkpoint(self) -> None:
        """Record the state and digest of every doc changed since it was last recorded, so that the
        next start needs to load none of them (called at clean shutdown)."""
        self._refresh_tree()
        for entry in self._docs.values():
            if entry.doc is not None and entry.digest is not None and not entry.recorded:
                self._doc_states.append((entry.doc_id, entry.state_bytes, entry.digest))
                entry.recorded = True

    def loaded_docs(self) -> int:
        return self._loaded

    def loaded_bytes(self) -> int:
        """The estimate `docs_cached_bytes_max` is compared with."""
        return self._loaded_bytes

    def has_doc(self, doc_id: str) -> bool:
        return doc_id in self._docs

    def doc_ids(self, after: str = "", limit: int | None = None, prefix: str = "") -> list[str]:
        """Doc ids in sorted order: those starting with `prefix`, after `after`, at most `limit`."""
        keys: Iterator[str]
        if after and after >= prefix:
            keys = self._docs.irange(minimum=after, inclusive=(False, False))
        else:
            keys = self._docs.irange(minimum=prefix or None, inclusive=(True, False))
        out: list[str] = []
        for key in keys:
            if (limit is not None and len(out) >= limit) or not key.startswith(prefix):
                break
            out.append(key)
        return out

    def doc_is_empty(self, doc_id: str) -> bool:
        """True for a doc that was opened but never received or made a change (peers don't know it)."""
        entry: _DocEntry = self._docs[doc_id]
        return entry.state_bytes == _EMPTY_STATE

    def doc_digest(self, doc_id: str) -> bytes:
        entry: _DocEntry = self._docs[doc_id]
        if entry.digest is None:
            entry.digest = digest(self._doc(entry))
        return entry.digest

    def load_update(self, doc_id: str, update: bytes) -> None:
        """Apply a stored, causally complete update (e.g. at start-up): not published, not persisted."""
        entry = self._entry(doc_id, create=True)
        already_persisted = len(self._persist)
        self._apply(entry, update, "load")
        del self._persist[already_persisted:]

    def restore_update(self, doc_id: str, update: bytes) -> bool:
        """Merge a doc's whole content from a backup: persisted, not published (anti-entropy spreads
        it, since the merge changes the doc's digest wherever it added something)."""
        if not self._well_formed(doc_id, "restore", update, None):
            return False
        entry = self._entry(doc_id, create=True)
        return self._apply(entry, update, "restore")

    def close(self) -> None:
        """Unsubscribe every doc observer (observed docs are never freed otherwise)."""
        for entry in self._docs.values():
            if entry.doc is not None and entry.subscription is not None:
                entry.doc.unobserve(entry.subscription)
        self._docs.clear()
        self._lru.clear()
        self._loaded = 0
        self._loaded_bytes = 0

    def _entry(self, doc_id: str, *, create: bool, load: bool = True) -> _DocEntry:
        """The doc's entry, loaded (unless `load=False`); a new, empty one when `create`."""
        entry: _DocEntry | None = self._docs.get(doc_id)
        if entry is not None:
            if load:
                self._doc(entry)
            return entry
        if not create:
            raise KeyError(doc_id)
        if not doc_id or len(doc_id.encode()) > wire.DOC_ID_BYTES_MAX:
            raise ValueError(f"doc id must be 1..{wire.DOC_ID_BYTES_MAX} bytes")
        if len(self._docs) >= self.config.docs_max:
            raise RuntimeError(f"docs_max ({self.config.docs_max}) reached")
        entry = _DocEntry(doc_id=doc_id, doc=None, subscription=None)
        self._docs[doc_id] = entry
        if load:
            self._attach(entry, None)
        return entry

    def _doc(self, entry: _DocEntry) -> Doc[Any]:
        """The entry's Doc, loaded from the store if it was evicted; marks it recently used."""
        if entry.doc is None:
            content = self._doc_loader(entry.doc_id) if self._doc_loader is not None else None
            self._attach(entry, content)
            self._count("doc_loads")
        elif entry.doc_id in self._lru:
            self._lru.move_to_end(entry.doc_id)
        assert entry.doc is not None
        return entry.doc

    def _attach(self, entry: _DocEntry, content: bytes | None) -> None:
        doc: Doc[Any] = Doc(client_id=self.client_id)
        entry.doc = doc
        self._loaded += 1
        entry.subscription = doc.observe(lambda event: self._on_transaction(entry.doc_id, entry, event))
        if content is not None:
            known = (entry.state_bytes, entry.digest, entry.doc_id in self._dirty, entry.recorded)
            persisted = len(self._persist)
            self._apply(entry, content, "load")
            del self._persist[persisted:]  # it came from the store
            self._loaded_bytes += len(content) - entry.loaded_bytes
            entry.loaded_bytes = len(content)
            if known[1] is not None and entry.state_bytes == known[0]:
                # Loading changed nothing that was recorded: keep the digest, skip the recompute.
                entry.digest = known[1]
                entry.recorded = known[3]
                if not known[2]:
                    self._dirty.pop(entry.doc_id, None)
        if self._doc_loader is not None and entry.pins == 0:
            self._lru[entry.doc_id] = None

    def _evict_if_needed(self) -> None:
        if self._doc_loader is None:
            return
        for _ in range(len(self._lru)):
            if (
                len(self._lru) <= self.config.docs_cached_max
                and self._loaded_bytes <= self.config.docs_cached_bytes_max
            ):
                return
            doc_id, _unused = self._lru.popitem(last=False)
            entry = self._docs[doc_id]
            if entry.pending or entry.pins or entry.doc is None:
                if entry.pending and not entry.pins:
                    self._lru[doc_id] = None  # waits for deltas: keep it loaded, look again later
                continue
            if doc_id in self._dirty:
                self._tree_update(doc_id, entry)
                del self._dirty[doc_id]
            if not entry.recorded:
                self._doc_states.append((doc_id, entry.state_bytes, entry.digest))
                entry.recorded = True
            if entry.subscription is not None:
                entry.doc.unobserve(entry.subscription)
            entry.doc = None
            entry.subscription = None
            entry.decoded = None
            self._loaded -= 1
            self._loaded_bytes -= entry.loaded_bytes
            entry.loaded_bytes = 0
            self._count("docs_evicted")

    def _on_transaction(self, doc_id: str, entry: _DocEntry, event: TransactionEvent) -> None:
        # pycrdt's stubs omit these attributes of TransactionEvent; they exist at run time.
        update: bytes = event.update
        after: bytes = event.after_state  # type: ignore[attr-defined]
        if update == _EMPTY_UPDATE:
            return
        entry.state_bytes = after
        entry.decoded = None
        entry.digest = None
        entry.recorded = False
        entry.loaded_bytes += len(update)
        self._loaded_bytes += len(update)
        self._dirty[doc_id] = None
        entry.digest = None
        self._persist.append((doc_id, update))
        if event.transaction.origin() == REMOTE_ORIGIN:  # type: ignore[attr-defined]
            return
        delta = wire.Delta(doc_id, event.before_state, after, update)  # type: ignore[attr-defined]
        self._last_seq += 1
        size = _delta_size(delta)
        self._ring.append((self._last_seq, doc_id, delta.before_state, after, update, size))
        self._ring_bytes += size
        while self._ring and (
            len(self._ring) > self.config.ring_deltas_max or self._ring_bytes > self.config.ring_bytes_max
        ):
            self._ring_bytes -= self._ring.popleft()[5]
        if not self._outbox:
            self._outbox_since_ms = self._now_ms
        self._outbox.append(delta)
        self._outbox_bytes += size
        self._count("deltas_published")
        if self._wakeup is not None and not self._wakeup_armed:
            self._wakeup_armed = True
            self._wakeup()

    def _apply(self, entry: _DocEntry, update: bytes, reason: str, sender: str | None = None) -> bool:
        # The size cap protects against peers; the node's own store and backups are not capped,
        # or a doc that grew large could never be loaded again.
        remote = reason not in ("load", "restore")
        if remote and len(update) > self.config.update_bytes_max:
            self._count("updates_dropped_too_large")
            return False
        doc = self._doc(entry)
        try:
            with doc.transaction(origin=REMOTE_ORIGIN):
                doc.apply_update(update)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # pycrdt raises PanicException, a BaseException, on some bad input
            self._reject(entry.doc_id, reason, update, exc, sender, remote=remote)
            return False
        return True

    def _well_formed(self, doc_id: str, reason: str, update: bytes, sender: str | None) -> bool:
        """Refuse an update from a peer (`sender`) or a backup (None) that pycrdt would accept into a
        doc it later crashes on reading, and, while the doc is quarantined, every update from a
        sender with rejections on record (honest peers keep repairing it, so replicas still converge)."""
        if sender is not None and sender in self._strikes and self._doc_quarantined(doc_id):
            self._count("updates_dropped_doc_quarantined")
            return False
        try:
            check_update(update)
        except UpdateError as exc:
            self._reject(doc_id, reason, update, exc, sender, remote=sender is not None)
            return False
        return True

    def _reject(
        self, doc_id: str, reason: str, update: bytes, exc: BaseException, sender: str | None, *, remote: bool
    ) -> None:
        self._count("updates_rejected")
        self._warn(
            "update_rejected", "rejected a %s update of %d bytes for %r: %s", reason, len(update), doc_id, exc
        )
        if sender is not None:
            self._strike(sender)
        if remote and self._strike_in(self._doc_strikes, doc_id, 4 * self.config.peers_max):
            self._docs_quarantined[doc_id] = self._now_ms + self.config.quarantine_ms
            if len(self._docs_quarantined) > self.config.peers_max:  # bounded: the oldest goes
                del self._docs_quarantined[next(iter(self._docs_quarantined))]
            self._count("docs_quarantined")
            log.warning(
                "quarantined doc %r for %.0f s: %d updates for it were rejected",
                doc_id,
                self.config.quarantine_ms / 1000.0,
                self.config.quarantine_after_rejects,
            )

    def _strike_in(self, strikes: dict[str, tuple[int, float]], key: str, keys_max: int) -> bool:
        """Count one rejection against `key` in `strikes`; True when that makes it quarantined."""
        count, since = strikes.get(key, (0, self._now_ms))
        if self._now_ms - since > self.config.quarantine_ms:
            count, since = 0, self._now_ms
        count += 1
        strikes[key] = (count, since)
        if len(strikes) > keys_max:
            del strikes[next(iter(strikes))]  # bounded: forget the oldest
        if count < self.config.quarantine_after_rejects:
            return False
        strikes.pop(key, None)
        return True

    def _doc_quarantined(self, doc_id: str) -> bool:
        until = self._docs_quarantined.get(doc_id)
        if until is None:
            return False
        if self._now_ms < until:
            return True
        del self._docs_quarantined[doc_id]
        return False

    def _strike(self, sender: str) -> None:
        """Count a rejected update against its sender; too many and the sender is quarantined."""
        if self._strike_in(self._strikes, sender, 4 * self.config.peers_max):
            self._quarantined[sender] = self._now_ms + self.config.quarantine_ms
            self._count("peers_quarantined")
            log.warning(
                "quarantined %s for %.0f s: %d of its updates were rejected",
                sender,
                self.config.quarantine_ms / 1000.0,
                self.config.quarantine_after_rejects,
            )

    def _identity_matches(self, node_id: str, key: str) -> bool:
        bound = self._key_of.get(node_id)
        owner = self._node_of_key.get(key)
        if bound is None and owner is None:
            if len(self._key_of) >= 4 * self.config.peers_max:  # bounded: the oldest binding goes
                oldest = next(iter(self._key_of))
                self._node_of_key.pop(self._key_of.pop(oldest), None)
            self._key_of[node_id] = key
            self._node_of_key[key] = node_id
            return True
        if bound == key and owner == node_id:
            return True
        self._count("frames_dropped_identity")
        self._warn(
            "identity",
            "dropped a frame claiming to be %s from key %s (bound to %s)",
            node_id,
            key,
            owner if bound is None else f"key {bound}",
        )
        return False

    def _admit(self, sender: str) -> bool:
        """Quarantine and per-sender rate limit, checked before a frame is handled."""
        until = self._quarantined.get(sender)
        if until is not None:
            if self._now_ms < until:
                self._count("frames_dropped_quarantined")
                return False
            del self._quarantined[sender]
        rate = self.config.peer_frames_per_second_max
        tokens, last = self._buckets.get(sender, (rate, self._now_ms))
        tokens = min(rate, tokens + (self._now_ms - last) * rate / 1000.0)
        if tokens < 1.0:
            self._buckets[sender] = (tokens, self._now_ms)
            self._count("frames_dropped_rate")
            self._warn("rate", "dropping frames from %s: over %.0f frames/s", sender, rate)
            return False
        self._buckets[sender] = (tokens - 1.0, self._now_ms)
        if len(self._buckets) > 4 * self.config.peers_max:
            del self._buckets[next(iter(self._buckets))]
        return True

    # ------------------------------------------------------------------ publishing

    def _batches(self, first_seq: int, deltas: Iterable[wire.Delta]) -> Iterator[wire.Deltas]:
        """`DELTAS` messages of consecutive sequence numbers, within the batch limits."""
        chunk: list[wire.Delta] = []
        chunk_bytes = 0
        for delta in deltas:
            size = _delta_size(delta)
            if chunk and (
                len(chunk) >= self.config.batch_deltas_max or chunk_bytes + size > self.config.batch_bytes_max
            ):
                yield wire.Deltas(self.node_id, self.epoch, first_seq, tuple(chunk))
                first_seq += len(chunk)
                chunk, chunk_bytes = [], 0
            chunk.append(delta)
            chunk_bytes += size
        if chunk:
            yield wire.Deltas(self.node_id, self.epoch, first_seq, tuple(chunk))

    def _flush_outbox(self) -> None:
        for batch in self._batches(self._last_seq - len(self._outbox) + 1, self._outbox):
            self._publish(batch)
        self._outbox = []
        self._outbox_bytes = 0
        self._outbox_since_ms = None
        self._next_heartbeat_ms = self._now_ms + self.config.heartbeat_interval_ms

    def _encode(self, message: wire.Message, way: Literal["published", "sent"]) -> bytes | None:
        try:
            frame, raw_size = wire.encode_counted(message)
        except wire.WireError as exc:
            # Only a single transaction larger than a frame gets here (batches split well below).
            # Peers cannot receive it as a delta; it stays in the doc and in the store.
            self._count(f"{way}_too_large")
            self._warn(f"{way}_too_large", "not %s %s: %s", way, type(message).__name__, exc)
            return None
        self._count(f"frames_{way}")
        self._count(f"bytes_{way}", len(frame))
        self._count(f"bytes_{way}_raw", raw_size)
        return frame

    def _publish(self, message: wire.Message, *, dc_only: bool = False) -> None:
        frame = self._encode(message, "published")
        if frame is not None:
            if isinstance(message, wire.Deltas):
                self._count("batches_published")
            self._effects.append(Publish(frame, dc_only))

    def _send(self, address: str, message: wire.Message) -> None:
        frame = self._encode(message, "sent")
        if frame is not None:
            link = self._links.get(address)
            dc = self._link_dc(link) if link is not None else None
            if dc is not None and dc != self.dc:
                counters = self._dc_counters_for(dc)
                counters.frames_out += 1
                counters.bytes_out += len(frame)
            self._effects.append(Send(address, frame))

    def _send_to_node(self, node_id: str, message: wire.Message) -> None:
        address = self._address_of.get(node_id)
        if address is None:
            self._count("unknown_peer")
            return
        self._send(address, message)

    # ------------------------------------------------------------------ receiving

    def receive(self, frame: bytes, now_ms: float, *, sender_key: str | None = None) -> None:
        """Handle one frame from the SUB or the request socket. Malformed frames are counted and dropped.

        `sender_key` is the authenticated identity of the connection the frame came in on (the
        CurveZMQ public key of the sending node), when the transport knows it: the first node id
        seen with a key stays bound to it, so that no other key can speak for that node id, and
        that key cannot speak for another one."""
        self._now_ms = now_ms
        self._count("frames_received")
        self._count("bytes_received", len(frame))
        try:
            message, raw_size = wire.decode_counted(frame)
        except wire.WireError as exc:
            self._count(f"wire_errors_{exc.reason}")
            self._warn(exc.reason, "dropped a malformed frame of %d bytes: %s", len(frame), exc)
            return
        self._count("bytes_received_raw", raw_size)
        if message.node_id == self.node_id:
            self._count("own_frames_dropped")
            return
        if not self._admit(message.node_id):
            return
        if sender_key is not None and not self._identity_matches(message.node_id, sender_key):
            return
        sender_dc = self.membership.dc_of(message.node_id)
        if sender_dc is not None and sender_dc != self.dc:
            counters = self._dc_counters_for(sender_dc)
            counters.frames_in += 1
            counters.bytes_in += len(frame)
        try:
            self._dispatch(message)
        except StateDecodeError as exc:
            self._count("wire_errors_bad_state")
            log.warning(
                "dropped %s from %s: bad state vector: %s", type(message).__name__, message.node_id, exc
            )

    def _dispatch(self, message: wire.Message) -> None:
        self._heard(message.node_id)
        match message:
            case wire.Deltas():
                self._on_deltas(message)
            case wire.Heartbeat():
                self._on_heartbeat(message)
            case wire.Hello() | wire.HelloAck():
                self._on_hello(message)
            case wire.RetransmitRequest():
                self._on_retransmit_request(message)
            case wire.RetransmitGone():
                self._on_retransmit_gone(message)
            case wire.SyncRequest():
                self._on_sync_request(message)
            case wire.SyncResponse():
                self._on_sync_response(message)
            case wire.SyncPush():
                for doc_id, update in message.entries:
                    self._on_sync_update(doc_id, update, message.node_id)
            case wire.TreeRoot():
                self._on_tree_root(message)
            case wire.TreeBranches():
                self._on_tree_branches(message)
            case wire.TreeSegmentsRequest():
                self._on_tree_segments_request(message)
            case wire.TreeSegments():
                self._on_tree_segments(message)
            case wire.TreeEntriesRequest():
                self._on_tree_entries_request(message)
            case wire.TreeEntries():
                self._on_tree_entries(message)
            case wire.Members():
                self._on_members(message)
            case wire.Relayed():
                self._on_relayed(message)

    def _heard(self, node_id: str) -> None:
        change = self.membership.heard(node_id, self._now_ms)
        address = self._address_of.get(node_id)
        if address is not None:
            self._links[address].last_heard_ms = self._now_ms
        if change is not None:
            self._on_liveness(change)
            self._retopologize()

    def _on_hello(self, message: wire.Hello | wire.HelloAck) -> None:
        if not message.address or message.address == self.address:
            return
        link = self._link_for(message.address, configured=False)
        if link is None:
            return
        if link.node_id is not None and link.node_id != message.node_id:
            # Another node now answers at this address: forget what we knew of the old one.
            self._address_of.pop(link.node_id, None)
            self._tracks.pop(link.node_id, None)
            link.epoch = None
        previous = self._address_of.get(message.node_id)
        if previous is not None and previous != message.address and previous in self._links:
            self._drop_link(self._links[previous])
        link.node_id = message.node_id
        self._address_of[message.node_id] = message.address
        link.last_heard_ms = self._now_ms
        link.publish_endpoint = message.publish_endpoint
        record = wire.MemberEntry(
            message.node_id, message.dc, message.address, message.publish_endpoint, message.epoch, 0, False
        )
        changed, _alive = self.membership.merge(record, self._now_ms, direct=True)
        if isinstance(message, wire.Hello):
            # Answer first: the resync below makes the peer reply to us, which it can only do once
            # our HelloAck has told it who we are.
            self._send(message.address, self._hello(wire.HelloAck))
        first_contact = link.epoch is None
        if link.epoch is None or message.epoch > link.epoch:
            round_now = self._starts_round_with(message.node_id, message.dc, first_contact=first_contact)
            link.epoch = message.epoch
            track = self._tracks.get(message.node_id)
            if track is None or track.epoch < message.epoch:
                # The round below covers everything up to last_seq; the stream continues after it.
                self._tracks[message.node_id] = _PublisherTrack(
                    message.epoch, message.last_seq, last_seq_seen=message.last_seq
                )
        else:
            round_now = False
        was_up = link.state in ("up", "suspect")
        if not was_up:
            log.info(
                "peer %s at %s (dc %s) is up (epoch %d)",
                message.node_id,
                message.address,
                message.dc,
                message.epoch,
            )
            self._count("peer_up")
        link.state = "up"
        if changed:
            self._retopologize()
        else:
            self._sync_subscription(link)
        if first_contact:
            # A newcomer started from one seed learns the whole cluster from its first contacts.
            self._gossip_to(link, reply=False)
        if round_now:
            self._want_round(link)

    def _starts_round_with(self, node_id: str, dc: str, *, first_contact: bool) -> bool:
        """Whether this node runs the round on (re)contact with `node_id`. Rounds repair both ways,
        so one per pair is enough: at first contact the lower node id starts it, and a peer seen
        again with a new epoch (a restart) gets one at once. Across datacenters only relays run
        rounds (the WAN carries the few, slower ones)."""
        if dc != self.dc:
            if not self._is_relay:
                return False
            if not first_contact:
                return True
            return node_id not in self.membership.relays(dc) or self.node_id < node_id
        return not first_contact or self.node_id < node_id

    def _hello(self, cls: type[wire.Hello] | type[wire.HelloAck]) -> wire.Hello | wire.HelloAck:
        return cls(self.node_id, self.epoch, self.address, self.publish_endpoint, self._last_seq, self.dc)

    def _link_for(self, address: str, *, configured: bool) -> _PeerLink | None:
        link = self._links.get(address)
        if link is None:
            if len(self._links) >= self.config.peers_max:
                self._count("peers_max_reached")
                return None
            link = _PeerLink(address, configured, next_hello_ms=self._now_ms)
            self._links[address] = link
        link.configured = link.configured or configured
        return link

    def _drop_link(self, link: _PeerLink) -> None:
        if link.subscribed_endpoint is not None:
            self._effects.append(Unsubscribe(link.subscribed_endpoint))
        self._ae_wanted.pop(link.address, None)
        if link.node_id is not None and self._address_of.get(link.node_id) == link.address:
            del self._address_of[link.node_id]
        del self._links[link.address]

    def _link_dc(self, link: _PeerLink) -> str | None:
        return None if link.node_id is None else self.membership.dc_of(link.node_id)

    def _link_wanted(self, link: _PeerLink) -> bool:
        """Whether this node keeps saying hello to the peer: configured seeds, peers not identified
        yet, its own datacenter, and (as a relay) every other datacenter's nodes."""
        dc = self._link_dc(link)
        return link.configured or dc is None or dc == self.dc or self._is_relay

    def _sync_subscription(self, link: _PeerLink) -> None:
        """Subscribe to the peer's stream as the topology says: every node of this datacenter in
        full; across datacenters only as a relay, and only to the publishers' own streams (ZeroMQ
        filters at the publisher, so relayed frames never cross the WAN twice)."""
        dc = self._link_dc(link)
        wanted: Literal["dc", "wan"] | None = None
        # Kept while the peer is down: ZeroMQ reconnects by itself, and its first frames are the evidence.
        if link.publish_endpoint is not None and dc is not None and link.epoch is not None:
            if dc == self.dc:
                wanted = "dc"
            elif self._is_relay:
                wanted = "wan"
        if link.subscribed == wanted and link.subscribed_endpoint == link.publish_endpoint:
            return
        if link.subscribed_endpoint is not None:
            self._effects.append(Unsubscribe(link.subscribed_endpoint))
        link.subscribed, link.subscribed_endpoint = None, None
        if wanted is not None and link.publish_endpoint is not None:
            self._effects.append(Subscribe(link.publish_endpoint, link.address, wan=wanted == "wan"))
            link.subscribed, link.subscribed_endpoint = wanted, link.publish_endpoint

    # ------------------------------------------------------------------ membership

    def _gossip_to(self, link: _PeerLink, *, reply: bool) -> None:
        records = self.membership.records()
        if len(records) > wire.MEMBERS_PER_MESSAGE_MAX:
            # Own record first, then a rotating window of the rest: every record gets its turn.
            rest = records[1:]
            start = (self._gossip_turn * (wire.MEMBERS_PER_MESSAGE_MAX - 1)) % len(rest)
            window = (rest + rest)[start : start + wire.MEMBERS_PER_MESSAGE_MAX - 1]
            records = [records[0], *window]
        self._count("gossip_sent")
        self._send(
            link.address,
            wire.Members(self.node_id, reply, tuple(records)),
        )

    def _on_members(self, message: wire.Members) -> None:
        self._count("gossip_received")
        records = list(message.members)
        changed = False
        for record in records:
            if record.node_id != message.node_id and record.address == self.address:
                continue  # nobody else may claim this node's address
            was_changed, alive = self.membership.merge(
                record, self._now_ms, direct=record.node_id == message.node_id
            )
            changed = changed or was_changed
            if alive:
                change = self.membership.heard(record.node_id, self._now_ms)
                if change is not None:
                    self._on_liveness(change)
                    changed = True
            if was_changed and record.left:
                self._on_left(record)
        if changed:
            self._retopologize()
        sender_dc = self.membership.dc_of(message.node_id)
        if not message.reply and sender_dc is not None and self.membership.newer_than(records, sender_dc):
            address = self._address_of.get(message.node_id)
            if address is not None:
                self._gossip_to(self._links[address], reply=True)

    def _on_left(self, record: wire.MemberEntry) -> None:
        log.info("member %s (dc %s) left the cluster", record.node_id, record.dc)
        self._count("members_left")
        link = self._links.get(self._address_of.get(record.node_id, record.address))
        if link is not None and link.node_id == record.node_id:
            if link.configured:
                link.state = "down"  # a seed: keep asking, it may come back
                self._sync_subscription(link)
            else:
                self._drop_link(link)
        self._tracks.pop(record.node_id, None)
        key = self._key_of.pop(record.node_id, None)
        if key is not None:
            self._node_of_key.pop(key, None)

    def _on_liveness(self, change: LivenessChange) -> None:
        self._count(f"member_{change.after}")
        if change.after in ("suspect", "down"):
            self._dc_counters_for(change.dc).failures += 1
        log.info("member %s (dc %s): %s -> %s", change.node_id, change.dc, change.before, change.after)
        address = self._address_of.get(change.node_id)
        link = self._links.get(address) if address is not None else None
        if link is None or link.epoch is None:
            return
        if change.after == "down":
            link.state = "down"
            link.hello_backoff_ms = 0.0
            self._count("peer_down")
        elif change.after == "suspect":
            link.state = "suspect"
        elif change.after == "alive" and link.state != "up":
            link.state = "up"
            self._count("peer_up")

    def _retopologize(self) -> None:
        """Bring links and subscriptions in line with the member table: links to every member of this
        datacenter (and, as a relay, of every other one), subscriptions as `_sync_subscription` says."""
        relay = self.membership.is_relay()
        if relay != self._is_relay:
            self._is_relay = relay
            self._count("relay_changes")
            log.info("this node is %s a relay of dc %s", "now" if relay else "no longer", self.dc)
        for member in self.membership.members.values():
            record = member.record
            if member.liveness == "left" or record.address in self._links:
                continue
            if (record.dc == self.dc or relay) and record.address and record.address != self.address:
                self._link_for(record.address, configured=False)
        for link in self._links.values():
            self._sync_subscription(link)

    def leave(self) -> None:
        """Announce a graceful leave to every peer this node is in contact with (call before closing)."""
        self.membership.leave()
        for link in self._links.values():
            if link.state in ("up", "suspect"):
                self._gossip_to(link, reply=True)

    def _dc_counters_for(self, dc: str) -> _DcCounters:
        counters = self._dc_counters.get(dc)
        if counters is None:
            if len(self._dc_counters) >= self.membership.config.members_max:
                return _DcCounters()  # not kept: a bounded table even under forged datacenter names
            counters = self._dc_counters[dc] = _DcCounters()
        return counters

    def _on_heartbeat(self, message: wire.Heartbeat) -> None:
        track = self._tracks.get(message.node_id)
        if track is None or message.epoch > track.epoch:
            # A publisher incarnation we have not said hello to: say it now.
            address = self._address_of.get(message.node_id)
            if address is not None:
                self._send(address, self._hello(wire.Hello))
            return
        if message.epoch == track.epoch and message.last_seq > track.last_seq_seen:
            track.last_seq_seen = message.last_seq
            self._request_retransmit(message.node_id, track)
            self._track_lag(track)

    def _on_deltas(self, message: wire.Deltas) -> None:
        publisher = message.node_id
        states = self._decode_states(message.deltas)  # a bad batch is rejected before it is tracked
        track = self._tracks.get(publisher)
        fresh: list[tuple[wire.Delta, StateVector, StateVector]]
        if track is None or message.epoch > track.epoch:
            track = _PublisherTrack(message.epoch, message.first_seq - 1)
            self._tracks[publisher] = track
            address = self._address_of.get(publisher)
            if address is not None:
                self._send(address, self._hello(wire.Hello))
        if message.epoch < track.epoch:
            # A late frame of an earlier incarnation: no sequence tracking, but its content is valid.
            self._count("deltas_stale_epoch", len(message.deltas))
            fresh = [(delta, *state) for delta, state in zip(message.deltas, states, strict=True)]
        else:
            fresh = []
            for index, delta in enumerate(message.deltas):
                seq = message.first_seq + index
                if seq <= track.contiguous or seq in track.above:
                    self._count("deltas_duplicate")
                    continue
                fresh.append((delta, *states[index]))
                if seq == track.contiguous + 1:
                    track.contiguous = seq
                    while track.contiguous + 1 in track.above:
                        track.contiguous += 1
                        track.above.discard(track.contiguous)
                else:
                    track.above.add(seq)
            last = message.first_seq + len(message.deltas) - 1
            track.last_seq_seen = max(track.last_seq_seen, last)
            if len(track.above) > self.config.out_of_order_seqs_max:
                self._count("gap_too_large")
                self._give_up_gap(publisher, track)
            elif track.above:
                self._request_retransmit(publisher, track)
            self._track_lag(track)
        if fresh and self._is_relay:
            publisher_dc = self.membership.dc_of(publisher)
            if publisher_dc is not None and publisher_dc != self.dc:
                # Into this datacenter only (dc_only): the relayed copy must not cross the WAN again.
                self._count("deltas_relayed_out", len(fresh))
                self._publish(
                    wire.Relayed(self.node_id, publisher, tuple(d for d, _b, _a in fresh)), dc_only=True
                )
        self._buffer_deltas(fresh, publisher)

    def _on_relayed(self, message: wire.Relayed) -> None:
        """Deltas of another datacenter's publisher, republished by a relay of this one. No sequence
        tracking (two relays may both forward them, a relay may fail over): the causal buffer drops
        what the state already covers, and pulls of missing dependencies go to the relay."""
        if message.origin == self.node_id:
            return
        self._count("deltas_relayed_in", len(message.deltas))
        self._buffer_deltas(
            [
                (delta, *states)
                for delta, states in zip(message.deltas, self._decode_states(message.deltas), strict=True)
            ],
            message.node_id,
        )

    def _track_lag(self, track: _PublisherTrack) -> None:
        behind = track.last_seq_seen > track.contiguous or bool(track.above)
        if not behind:
            track.behind_since_ms = None
        elif track.behind_since_ms is None:
            track.behind_since_ms = self._now_ms

    @staticmethod
    def _decode_states(deltas: tuple[wire.Delta, ...]) -> list[tuple[StateVector, StateVector]]:
        """Decode every delta's before and after state, or raise StateDecodeError for the whole batch
        before anything about it is recorded."""
        # A publisher's consecutive deltas of one doc chain: each before_state is the previous
        # after_state, so remembering the last decoded vector halves the decoding work.
        decoded: list[tuple[StateVector, StateVector]] = []
        last_bytes: bytes | None = None
        last_vector: StateVector = {}
        for delta in deltas:
            before = (
                last_vector if delta.before_state == last_bytes else decode_state_vector(delta.before_state)
            )
            after = decode_state_vector(delta.after_state)
            last_bytes, last_vector = delta.after_state, after
            decoded.append((before, after))
        return decoded

    def _buffer_deltas(
        self, deltas: list[tuple[wire.Delta, StateVector, StateVector]], publisher: str
    ) -> None:
        touched: dict[str, _DocEntry] = {}
        for delta, before, after in deltas:
            if len(delta.update) > self.config.update_bytes_max:
                self._count("updates_dropped_too_large")
                continue
            if not self._well_formed(delta.doc_id, "delta", delta.update, publisher):
                continue
            entry = touched.get(delta.doc_id)
            if entry is None:
                try:
                    entry = self._entry(delta.doc_id, create=True)
                except (ValueError, RuntimeError) as exc:
                    self._count("deltas_dropped_doc")
                    self._warn("bad_doc", "dropped a delta for doc %r: %s", delta.doc_id, exc)
                    continue
                touched[delta.doc_id] = entry
            held = self._pending_bytes_by.get(publisher, 0)
            if (
                len(entry.pending) >= self.config.pending_deltas_per_doc_max
                or self._pending_bytes + len(delta.update) > self.config.pending_bytes_max
                or held + len(delta.update) > self.config.pending_bytes_per_peer_max
            ):
                # Dropping is safe: the pull below fetches everything this delta carried.
                self._count("deltas_dropped_buffer_full")
                if self._now_ms >= entry.next_pull_ms:
                    entry.next_pull_ms = self._now_ms + self.config.causal_wait_ms
                    self._pull(publisher, delta.doc_id, entry)
                continue
            entry.pending.append(_PendingDelta(delta, before, after, publisher, self._now_ms))
            self._pending_total += 1
            self._pending_bytes += len(delta.update)
            self._pending_bytes_by[publisher] = held + len(delta.update)
        for doc_id, entry in touched.items():
            self._drain(doc_id, entry)

    def _drain(self, doc_id: str, entry: _DocEntry) -> None:
        """Apply every pending delta whose dependencies are covered, merging runs into one apply."""
        while entry.pending:
            virtual = dict(_state(entry))
            ready: list[tuple[bytes, str]] = []
            waiting: list[_PendingDelta] = []
            for pending in entry.pending:
                if covers(virtual, pending.after) and pending.after != pending.before:
                    self._count("deltas_duplicate_state")
                elif covers(virtual, pending.before):
                    ready.append((pending.delta.update, pending.publisher))
                    merge_into(virtual, pending.after)
                else:
                    waiting.append(pending)
            done = len(entry.pending) - len(waiting)
            if done:
                self._pending_total -= done
                still = set(map(id, waiting))
                for pending in entry.pending:
                    if id(pending) not in still:
                        size = len(pending.delta.update)
                        self._pending_bytes -= size
                        left = self._pending_bytes_by[pending.publisher] - size
                        if left:
                            self._pending_bytes_by[pending.publisher] = left
                        else:
                            del self._pending_bytes_by[pending.publisher]
            entry.pending = waiting
            if ready:
                self._apply_run(entry, ready)
            if not ready or not waiting:
                break
        if entry.pending:
            self._pending_docs[doc_id] = None
        else:
            self._pending_docs.pop(doc_id, None)

    def _apply_run(self, entry: _DocEntry, ready: list[tuple[bytes, str]]) -> None:
        """Apply causally ready updates, merged into one apply (several times faster) when they merge."""
        updates = [update for update, _sender in ready]
        if len(updates) > 1:
            try:
                merged = merge_all(updates)
            except (KeyboardInterrupt, SystemExit):
                raise
            except BaseException:  # one of them is malformed: apply them one by one, each isolated
                self._count("merge_failures")
            else:
                if self._apply(entry, merged, "delta"):
                    self._count("deltas_applied", len(updates))
                    return
        for update, sender in ready:
            if self._apply(entry, update, "delta", sender):
                self._count("deltas_applied")

    def _pull(self, node_id: str, doc_id: str, entry: _DocEntry) -> None:
        self._count("syncs_requested")
        self._send_to_node(node_id, wire.SyncRequest(self.node_id, ((doc_id, entry.state_bytes),)))

    # ------------------------------------------------------------------ retransmission

    def _request_retransmit(self, node_id: str, track: _PublisherTrack) -> None:
        if not self.config.retransmit_enabled:
            track.contiguous = max(track.contiguous, track.last_seq_seen, max(track.above, default=0))
            track.above.clear()
            return
        if self._now_ms < track.retransmit_deadline_ms:
            return
        lo = track.contiguous + 1
        hi = max(track.last_seq_seen, max(track.above, default=lo))
        if hi < lo:
            return
        hi = min(hi, lo + self.config.retransmit_deltas_max - 1)
        track.retransmit_deadline_ms = self._now_ms + self.config.retransmit_timeout_ms
        self._count("retransmit_requests")
        self._send_to_node(node_id, wire.RetransmitRequest(self.node_id, track.epoch, lo, hi))

    def _on_retransmit_request(self, message: wire.RetransmitRequest) -> None:
        oldest = self._ring[0][0] if self._ring else self._last_seq + 1
        if message.epoch != self.epoch or message.from_seq < oldest:
            self._count("retransmits_gone")
            self._send_to_node(message.node_id, wire.RetransmitGone(self.node_id, self.epoch, oldest))
            return
        # Capped here too: a request is remote input and must not make us send the whole ring.
        hi = min(message.to_seq, self._last_seq, message.from_seq + self.config.retransmit_deltas_max - 1)
        start = message.from_seq - oldest
        wanted = itertools.islice(self._ring, start, start + hi - message.from_seq + 1)
        deltas = (
            wire.Delta(doc_id, before, after, update) for _seq, doc_id, before, after, update, _size in wanted
        )
        for batch in self._batches(message.from_seq, deltas):
            self._count("retransmits_served")
            self._send_to_node(message.node_id, batch)

    def _on_retransmit_gone(self, message: wire.RetransmitGone) -> None:
        track = self._tracks.get(message.node_id)
        if track is None or track.epoch != message.epoch:
            return
        self._count("retransmits_gone_received")
        self._give_up_gap(message.node_id, track)

    def _give_up_gap(self, node_id: str, track: _PublisherTrack) -> None:
        """Stop chasing missing sequence numbers and repair by state instead."""
        track.contiguous = max(track.last_seq_seen, max(track.above, default=0), track.contiguous)
        track.above.clear()
        self._track_lag(track)
        address = self._address_of.get(node_id)
        if address is not None:
            self._want_round(self._links[address])

    # ------------------------------------------------------------------ state sync

    def _send_entries(
        self,
        address: str,
        build: Callable[[tuple[Any, ...]], wire.Message],
        entries: list[tuple[Any, ...]],
        sizes: list[int],
    ) -> None:
        """Send `entries` as few messages as the per-message doc and byte limits allow."""
        chunk: list[tuple[Any, ...]] = []
        chunk_bytes = 0
        for entry, size in zip(entries, sizes, strict=True):
            if chunk and (
                len(chunk) >= wire.SYNC_DOCS_PER_MESSAGE_MAX
                or chunk_bytes + size > self.config.batch_bytes_max
            ):
                self._send(address, build(tuple(chunk)))
                chunk, chunk_bytes = [], 0
            chunk.append(entry)
            chunk_bytes += size
        if chunk:
            self._send(address, build(tuple(chunk)))

    def _on_sync_request(self, message: wire.SyncRequest) -> None:
        address = self._address_of.get(message.node_id)
        if address is None:
            self._count("unknown_peer")
            return
        replies: list[tuple[Any, ...]] = []
        for doc_id, state in message.entries:
            self._count("syncs_served")
            entry = self._docs.get(doc_id)
            if entry is None:
                replies.append((doc_id, _EMPTY_UPDATE, _EMPTY_STATE))
                continue
            decode_state_vector(state)  # validate before pycrdt sees it
            try:
                update = self._doc(entry).get_update(state)
            except (KeyboardInterrupt, SystemExit):
                raise
            except BaseException as exc:
                self._count("syncs_rejected")
                self._warn("sync_rejected", "sync of %r for %s rejected: %s", doc_id, message.node_id, exc)
                continue
            replies.append((doc_id, update, entry.state_bytes))
        self._send_entries(
            address,
            lambda chunk: wire.SyncResponse(self.node_id, chunk),
            replies,
            [len(update) + len(state) for _doc_id, update, state in replies],
        )

    def _on_sync_response(self, message: wire.SyncResponse) -> None:
        pushes: list[tuple[Any, ...]] = []
        for doc_id, update, state in message.entries:
            self._on_sync_update(doc_id, update, message.node_id)
            entry = self._docs.get(doc_id)
            if entry is None:
                continue
            # Push back what the responder lacks: its state vector came with its answer.
            back = self._doc(entry).get_update(encode_state_vector(decode_state_vector(state)))
            if back != _EMPTY_UPDATE:
                pushes.append((doc_id, back))
        address = self._address_of.get(message.node_id)
        if pushes and address is not None:
            self._count("sync_pushes", len(pushes))
            self._send_entries(
                address,
                lambda chunk: wire.SyncPush(self.node_id, chunk),
                pushes,
                [len(update) for _doc_id, update in pushes],
            )

    def _on_sync_update(self, doc_id: str, update: bytes, node_id: str) -> None:
        if update == _EMPTY_UPDATE or not self._well_formed(doc_id, "sync", update, node_id):
            return
        try:
            entry = self._entry(doc_id, create=True)
        except (ValueError, RuntimeError) as exc:
            self._count("syncs_dropped_doc")
            self._warn("bad_doc", "dropped a sync update for doc %r from %s: %s", doc_id, node_id, exc)
            return
        # Safe to apply at once: it was computed against a state vector this node already covers.
        if self._apply(entry, update, "sync", node_id):
            self._count("sync_updates_applied")
            address = self._address_of.get(node_id)
            if address is not None:
                link = self._links[address]
                link.ae_docs_repaired += 1
                link.ae_bytes_repaired += len(update)
        self._drain(doc_id, entry)

    # ------------------------------------------------------------------ anti-entropy

    def _jitter(self) -> float:
        """A deterministic value in [0, 1) (splitmix64 seeded by the client id): no global randomness."""
        mask = (1 << 64) - 1
        self._jitter_state = (self._jitter_state + 0x9E3779B97F4A7C15) & mask
        z = self._jitter_state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
        return (z ^ (z >> 31)) / float(1 << 64)

    def _refresh_tree(self) -> None:
        """Bring the tree up to date with the docs changed since the last refresh; O(changed docs)."""
        for doc_id in self._dirty:
            entry = self._docs.get(doc_id)
            if entry is None:
                self._tree.remove(doc_id)
            else:
                self._tree_update(doc_id, entry)
        self._dirty.clear()

    def _tree_update(self, doc_id: str, entry: _DocEntry) -> None:
        if entry.state_bytes == _EMPTY_STATE:
            self._tree.remove(doc_id)  # empty docs are local until written
        else:
            self._tree.set(doc_id, self.doc_digest(doc_id))

    def merkle_root(self) -> bytes:
        """The root of the Merkle tree over every non-empty doc's canonical digest."""
        self._refresh_tree()
        return self._tree.root_bytes()

    def _want_round(self, link: _PeerLink) -> None:
        self._ae_wanted[link.address] = None
        self._run_wanted_round()

    def _run_wanted_round(self) -> None:
        if self._round is not None or self._now_ms < self._ae_not_before_ms:
            return
        for address in list(self._ae_wanted):
            link = self._links.get(address)
            if link is None:
                del self._ae_wanted[address]
            elif link.state == "up":
                del self._ae_wanted[address]
                self._start_round(link)
                return

    def _start_round(self, link: _PeerLink) -> None:
        self._round_counter += 1
        self._round = _Round(
            link.address, self._round_counter, "branches", self._now_ms + self.config.ae_round_timeout_ms
        )
        self._count("ae_rounds_started")
        self._send(link.address, wire.TreeRoot(self.node_id, self._round_counter, self.merkle_root()))

    def _round_for(self, node_id: str, round_id: int, phase: str) -> tuple[_Round, _PeerLink] | None:
        """The running round this answer belongs to, or None (late or foreign answers are counted)."""
        self._refresh_tree()  # repairs may have landed since the round began
        current = self._round
        address = self._address_of.get(node_id)
        if (
            current is None
            or address != current.address
            or current.round_id != round_id
            or current.phase != phase
        ):
            self._count("ae_answers_stale")
            return None
        return current, self._links[address]

    def _finish_round(self, current: _Round, link: _PeerLink, divergence: int) -> None:
        self._round = None
        link.ae_rounds += 1
        link.ae_last_round_ms = self._now_ms
        link.ae_divergence = divergence
        self._count("ae_rounds_completed")
        if divergence == 0:
            self._count("ae_rounds_in_sync")
        if current.more:
            # Not at once: the repairs this round started must land first, or the next round would
            # find the same differences again.
            self._ae_wanted[link.address] = None
            self._ae_not_before_ms = self._now_ms + self.config.ae_followup_delay_ms
            log.info(
                "anti-entropy with %s: %d segments differ, continuing next round", link.node_id, divergence
            )
        self._run_wanted_round()

    def _on_tree_root(self, message: wire.TreeRoot) -> None:
        root = self.merkle_root()
        if message.root == root:
            reply = wire.TreeBranches(self.node_id, message.round_id, True, ())
        else:
            reply = wire.TreeBranches(
                self.node_id, message.round_id, False, tuple(self._tree.branch_hashes())
            )
        self._send_to_node(message.node_id, reply)

    def _on_tree_branches(self, message: wire.TreeBranches) -> None:
        found = self._round_for(message.node_id, message.round_id, "branches")
        if found is None:
            return
        current, link = found
        branches = [] if message.equal else self._tree.differing_branches(list(message.hashes))
        if not branches:
            self._finish_round(current, link, 0)
            return
        current.phase = "segments"
        current.deadline_ms = self._now_ms + self.config.ae_round_timeout_ms
        self._send(link.address, wire.TreeSegmentsRequest(self.node_id, current.round_id, tuple(branches)))

    def _on_tree_segments_request(self, message: wire.TreeSegmentsRequest) -> None:
        self._refresh_tree()  # repairs may have landed since the round began
        hashes: list[bytes] = []
        for branch in message.branches:
            hashes.extend(self._tree.segment_hashes(branch))
        self._send_to_node(
            message.node_id,
            wire.TreeSegments(self.node_id, message.round_id, message.branches, tuple(hashes)),
        )

    def _on_tree_segments(self, message: wire.TreeSegments) -> None:
        found = self._round_for(message.node_id, message.round_id, "segments")
        if found is None:
            return
        current, link = found
        per_branch = self._tree.segments_per_branch
        differing: list[int] = []
        for index, branch in enumerate(message.branches):
            remote = list(message.hashes[index * per_branch : (index + 1) * per_branch])
            differing.extend(self._tree.differing_segments(branch, remote))
        if not differing:
            self._finish_round(current, link, 0)
            return
        link.ae_divergence = len(differing)
        limit = self.config.ae_segments_per_round_max
        current.more = len(differing) > limit
        current.phase = "entries"
        current.deadline_ms = self._now_ms + self.config.ae_round_timeout_ms
        current.segments_requested = min(limit, len(differing))
        self._send(
            link.address, wire.TreeEntriesRequest(self.node_id, current.round_id, tuple(differing[:limit]))
        )

    def _on_tree_entries_request(self, message: wire.TreeEntriesRequest) -> None:
        self._refresh_tree()  # repairs may have landed since the round began
        answered: list[int] = []
        entries: list[tuple[int, str, bytes]] = []
        for segment in message.segments:
            segment_entries = self._tree.segment_entries(segment)
            if answered and len(entries) + len(segment_entries) > wire.ENTRIES_PER_MESSAGE_MAX:
                break
            answered.append(segment)
            entries.extend((segment, doc_id, doc_digest) for doc_id, doc_digest in segment_entries)
        reply = wire.TreeEntries(
            self.node_id, message.round_id, tuple(answered), tuple(entries[: wire.ENTRIES_PER_MESSAGE_MAX])
        )
        self._send_to_node(message.node_id, reply)

    def _on_tree_entries(self, message: wire.TreeEntries) -> None:
        found = self._round_for(message.node_id, message.round_id, "entries")
        if found is None:
            return
        current, link = found
        remote: dict[int, dict[str, bytes]] = {segment: {} for segment in message.segments}
        for segment, doc_id, remote_digest in message.entries:
            remote[segment][doc_id] = remote_digest
        docs_budget = self.config.ae_docs_per_round_max
        bytes_budget = self.config.ae_bytes_per_round_max
        repaired = 0
        requests: list[tuple[Any, ...]] = []
        pushes: list[tuple[Any, ...]] = []
        for segment, theirs in remote.items():
            ours = dict(self._tree.segment_entries(segment))
            for doc_id in sorted(ours.keys() | theirs.keys()):
                if ours.get(doc_id) == theirs.get(doc_id):
                    continue
                if repaired >= docs_budget or bytes_budget <= 0:
                    current.more = True
                    break
                repaired += 1
                entry = self._docs.get(doc_id)
                if doc_id not in theirs and entry is not None:
                    update = self._doc(entry).get_update()
                    bytes_budget -= len(update)
                    link.ae_bytes_repaired += len(update)
                    pushes.append((doc_id, update))
                else:
                    # The response carries what we lack; our push-back carries what the peer lacks.
                    requests.append((doc_id, entry.state_bytes if entry is not None else _EMPTY_STATE))
        self._count("sync_pushes", len(pushes))
        self._count("syncs_requested", len(requests))
        self._send_entries(
            link.address,
            lambda chunk: wire.SyncPush(self.node_id, chunk),
            pushes,
            [len(update) for _doc_id, update in pushes],
        )
        self._send_entries(
            link.address,
            lambda chunk: wire.SyncRequest(self.node_id, chunk),
            requests,
            [len(state) + len(doc_id) for doc_id, state in requests],
        )
        link.ae_docs_repaired += repaired
        self._count("ae_docs_repaired", repaired)
        if len(message.segments) < current.segments_requested:
            current.more = True  # the answer was cut to fit a message
        self._finish_round(current, link, link.ae_divergence or 0)

    # ------------------------------------------------------------------ status

    def _warn(self, reason: str, message: str, *args: object) -> None:
        """Log at most one warning per reason per second: hostile input must not flood the log."""
        last = self._warned_ms.get(reason)
        if last is not None and self._now_ms - last < 1000.0:
            self._count("warnings_suppressed")
            return
        self._warned_ms[reason] = self._now_ms
        log.warning(message, *args)

    def _count(self, name: str, amount: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + amount

    def status(self, now_ms: float) -> ReplicaStatus:
        peers = []
        for link in self._links.values():
            track = self._tracks.get(link.node_id) if link.node_id else None
            behind = 0
            lag_ms = 0.0
            if track is not None:
                behind = max(0, track.last_seq_seen - track.contiguous - len(track.above))
                if track.behind_since_ms is not None:
                    lag_ms = now_ms - track.behind_since_ms
            peers.append(
                PeerStatus(
                    address=link.address,
                    node_id=link.node_id,
                    dc=self._link_dc(link),
                    state=link.state,
                    epoch=link.epoch,
                    last_heard_ago_ms=None if link.last_heard_ms is None else now_ms - link.last_heard_ms,
                    behind_updates=behind,
                    lag_ms=lag_ms,
                    ae_rounds=link.ae_rounds,
                    ae_last_round_ago_ms=None
                    if link.ae_last_round_ms is None
                    else now_ms - link.ae_last_round_ms,
                    ae_docs_repaired=link.ae_docs_repaired,
                    ae_bytes_repaired=link.ae_bytes_repaired,
                    ae_divergence=link.ae_divergence,
                    ae_in_progress=self._round is not None and self._round.address == link.address,
                    subscribed=link.subscribed,
                )
            )
        membership = self.membership
        relays_by_dc: dict[str, list[str]] = {}
        members = []
        for member in membership.members.values():
            record = member.record
            relays = relays_by_dc.get(record.dc)
            if relays is None:
                relays = relays_by_dc[record.dc] = membership.relays(record.dc)
            members.append(
                MemberStatus(
                    node_id=record.node_id,
                    dc=record.dc,
                    address=record.address,
                    incarnation=record.incarnation,
                    state=member.liveness,
                    state_for_ms=now_ms - member.liveness_since_ms,
                    last_seen_ago_ms=now_ms - member.detector.last_ms,
                    phi=member.detector.phi(now_ms, membership.config),
                    relay=record.node_id in relays,
                    suspicions=member.suspicions,
                    downs=member.downs,
                )
            )
        members.sort(key=lambda m: (m.dc, m.node_id))
        relays_by_dc.setdefault(self.dc, membership.relays(self.dc))
        datacenters = []
        for dc in sorted({self.dc, *(m.dc for m in members), *self._dc_counters}):
            in_dc = [m for m in members if m.dc == dc]
            dc_peers = [p for p in peers if p.dc == dc]
            counters = self._dc_counters.get(dc, _DcCounters())
            datacenters.append(
                DcStatus(
                    dc=dc,
                    members=len(in_dc) + (dc == self.dc),
                    alive=sum(1 for m in in_dc if m.state in ("alive", "suspect")) + (dc == self.dc),
                    relays=tuple(relays_by_dc.get(dc) or membership.relays(dc)),
                    behind_updates=sum(p.behind_updates for p in dc_peers),
                    lag_ms=max((p.lag_ms for p in dc_peers), default=0.0),
                    frames_in=counters.frames_in,
                    bytes_in=counters.bytes_in,
                    frames_out=counters.frames_out,
                    bytes_out=counters.bytes_out,
                    failures=counters.failures,
                )
            )
        return ReplicaStatus(
            node_id=self.node_id,
            epoch=self.epoch,
            address=self.address,
            dc=self.dc,
            relay=self._is_relay,
            docs=len(self._docs),
            last_seq=self._last_seq,
            pending_deltas=self._pending_total,
            peers=tuple(peers),
            members=tuple(members),
            datacenters=tuple(datacenters),
            counters=dict(self.counters),
        )
