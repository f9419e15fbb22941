"""The replica state machine: one node's docs, its publisher stream and its view of each peer.

Sans-IO: inputs are method calls (`open_doc`, `receive`, `tick`, plain pycrdt writes captured by an
observer) that carry the current time `now_ms` where it matters; outputs are `Effect`s collected by
`take_effects()`. No clock, socket, thread or global random source is touched here, so the simulator
can replay any run exactly from its seed.

Receive path: per-publisher sequence numbers detect loss (ask the publisher to retransmit from its
ring) and duplicates; the causal buffer holds each delta until the local state vector covers its
`before_state`, because pycrdt 0.14 can get stuck when handed updates out of causal order.
Whatever the ring no longer holds is repaired by a state resynchronisation with that peer
(digest pages, then per-doc state-vector exchange).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from pycrdt import Doc, Subscription, TransactionEvent, merge_updates
from sortedcontainers import SortedDict

from crdtsync.core import wire
from crdtsync.core.effects import Effect, Persist, Publish, Send, Subscribe, Unsubscribe
from crdtsync.core.state import (
    StateDecodeError,
    StateVector,
    covers,
    decode_state_vector,
    digest,
    encode_state_vector,
    merge_into,
)

log = logging.getLogger("crdtsync.replica")

REMOTE_ORIGIN = 0x5EC
"""Transaction origin of every update applied from a peer; the observer never re-publishes those."""

_EMPTY_UPDATE = b"\x00\x00"
_EMPTY_STATE = b"\x00"

PeerState = Literal["connecting", "up", "down"]


@dataclass(frozen=True, slots=True)
class ReplicaConfig:
    """Limits and timings of the replication protocol. Every buffer has a bound here."""

    batch_deltas_max: int = 512
    batch_bytes_max: int = 256 * 1024
    linger_ms: float = 0.0
    """How long a non-full batch may wait for more deltas; 0 sends at the driver's next turn."""
    ring_deltas_max: int = 65536
    ring_bytes_max: int = 64 * 1024 * 1024
    heartbeat_interval_ms: float = 500.0
    hello_interval_ms: float = 500.0
    peer_timeout_ms: float = 3000.0
    retransmit_timeout_ms: float = 200.0
    retransmit_deltas_max: int = 4096
    out_of_order_seqs_max: int = 8192
    """Received sequence numbers held above a gap; beyond this the peer is resynchronised instead."""
    causal_wait_ms: float = 300.0
    """How long a delta may wait for its dependencies before the doc is pulled from its publisher."""
    pending_deltas_per_doc_max: int = 4096
    pending_bytes_max: int = 64 * 1024 * 1024
    resync_page_docs: int = 256
    resync_timeout_ms: float = 2000.0
    resync_interval_ms: float = 30_000.0
    """A full digest resynchronisation with one peer (round robin) this often, 0 to disable. It repairs
    what no sequence gap reveals, e.g. deltas that only reached some peers before their publisher crashed."""
    peers_max: int = 256
    docs_max: int = 1_000_000
    update_bytes_max: int = 4 * 1024 * 1024
    tick_interval_ms: float = 50.0


@dataclass(slots=True)
class _DocEntry:
    doc: Doc[Any]
    subscription: Subscription
    state_bytes: bytes = b"\x00"
    """The doc's encoded state vector after its last transaction; decoded only when needed."""
    decoded: StateVector | None = None
    digest: bytes | None = None
    pending: list[_PendingDelta] = field(default_factory=list)
    next_pull_ms: float = 0.0


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


@dataclass(slots=True)
class _Resync:
    after: str = ""
    deadline_ms: float = 0.0
    docs_repaired: int = 0


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
    resync: _Resync | None = None
    resyncs_completed: int = 0


@dataclass(frozen=True, slots=True)
class PeerStatus:
    address: str
    node_id: str | None
    state: PeerState
    epoch: int | None
    last_heard_ago_ms: float | None
    behind_updates: int
    """Deltas the peer announced that this node has not received yet."""
    resyncing: bool
    resyncs_completed: int


@dataclass(frozen=True, slots=True)
class ReplicaStatus:
    node_id: str
    epoch: int
    address: str
    docs: int
    last_seq: int
    pending_deltas: int
    peers: tuple[PeerStatus, ...]
    counters: dict[str, int]


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
    ) -> None:
        if not node_id or len(node_id.encode()) > wire.NODE_ID_BYTES_MAX:
            raise ValueError(f"node_id must be 1..{wire.NODE_ID_BYTES_MAX} bytes, got {node_id!r}")
        if not 0 < client_id < 1 << 53:
            raise ValueError("client_id must be in 1..2**53-1 (a Yjs client id)")
        self.node_id = node_id
        self.epoch = epoch
        self.client_id = client_id
        self.address = address
        self.publish_endpoint = publish_endpoint
        self.config = config or ReplicaConfig()
        self.counters: dict[str, int] = {}
        self._docs: SortedDict[str, _DocEntry] = SortedDict()
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
        # A dict, not a set: iteration order must not depend on string hashing, or simulations would not replay.
        self._pending_docs: dict[str, None] = {}
        self._now_ms = 0.0
        self._next_heartbeat_ms = 0.0
        self._next_periodic_resync_ms = self.config.resync_interval_ms
        self._periodic_resync_turn = 0
        self._wakeup: Callable[[], None] | None = None
        self._wakeup_armed = False
        self._warned_ms: dict[str, float] = {}

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
        if self._persist:
            self._effects.append(Persist(tuple(self._persist)))
            self._persist = []
        effects, self._effects = self._effects, []
        return effects

    def next_deadline_ms(self) -> float:
        """When the driver must call `tick` next at the latest."""
        deadline = self._next_heartbeat_ms
        if self.config.resync_interval_ms > 0:
            deadline = min(deadline, self._next_periodic_resync_ms)
        busy = (
            self._pending_total
            or any(link.state != "up" or link.resync is not None for link in self._links.values())
            or any(track.above for track in self._tracks.values())
        )
        if busy:
            deadline = min(deadline, self._now_ms + self.config.tick_interval_ms)
        if self._outbox and self._outbox_since_ms is not None:
            deadline = min(deadline, self._outbox_since_ms + self.config.linger_ms)
        return deadline

    def tick(self, now_ms: float) -> None:
        """Run timers: heartbeats, hellos, peer liveness, retransmit and resync retries, causal pulls."""
        self._now_ms = now_ms
        config = self.config
        if now_ms >= self._next_heartbeat_ms:
            self._next_heartbeat_ms = now_ms + config.heartbeat_interval_ms
            self._publish(wire.Heartbeat(self.node_id, self.epoch, self._last_seq))
        for link in self._links.values():
            if link.state == "up" and (
                link.last_heard_ms is None or now_ms - link.last_heard_ms > config.peer_timeout_ms
            ):
                link.state = "down"
                link.hello_backoff_ms = 0.0
                self._count("peer_down")
                log.info(
                    "peer %s (%s) is down: silent for %.0f ms",
                    link.node_id,
                    link.address,
                    config.peer_timeout_ms,
                )
            if link.state != "up" and now_ms >= link.next_hello_ms:
                # Back off from a quick first retry (peers often start together) to the interval.
                link.hello_backoff_ms = min(
                    config.hello_interval_ms, max(config.tick_interval_ms, link.hello_backoff_ms * 2)
                )
                link.next_hello_ms = now_ms + link.hello_backoff_ms
                self._send(link.address, self._hello(wire.Hello))
            if link.resync is not None and now_ms >= link.resync.deadline_ms:
                self._count("resync_retries")
                self._request_digests(link)
        if config.resync_interval_ms > 0 and now_ms >= self._next_periodic_resync_ms:
            self._next_periodic_resync_ms = now_ms + config.resync_interval_ms
            up = [link for link in self._links.values() if link.state == "up" and link.resync is None]
            if up:
                self._periodic_resync_turn += 1
                self._count("resyncs_periodic")
                self._start_resync(up[self._periodic_resync_turn % len(up)])
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

    def open_doc(self, doc_id: str) -> Doc[Any]:
        """The live pycrdt Doc for `doc_id`, created empty if this node has never seen it."""
        return self._entry(doc_id, create=True).doc

    def has_doc(self, doc_id: str) -> bool:
        return doc_id in self._docs

    def doc_ids(self, after: str = "", limit: int | None = None) -> list[str]:
        keys: Iterator[str] = (
            self._docs.irange(minimum=after, inclusive=(False, False)) if after else iter(self._docs)
        )
        out: list[str] = []
        for key in keys:
            if limit is not None and len(out) >= limit:
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
            entry.digest = digest(entry.doc)
        return entry.digest

    def load_update(self, doc_id: str, update: bytes) -> None:
        """Apply a stored, causally complete update (e.g. at start-up) without publishing it."""
        entry = self._entry(doc_id, create=True)
        already_persisted = len(self._persist)
        self._apply(entry, update, "load")
        del self._persist[already_persisted:]

    def close(self) -> None:
        """Unsubscribe every doc observer (observed docs are never freed otherwise)."""
        for entry in self._docs.values():
            entry.doc.unobserve(entry.subscription)
        self._docs.clear()

    def _entry(self, doc_id: str, *, create: bool) -> _DocEntry:
        entry: _DocEntry | None = self._docs.get(doc_id)
        if entry is not None:
            return entry
        if not create:
            raise KeyError(doc_id)
        if not doc_id or len(doc_id.encode()) > wire.DOC_ID_BYTES_MAX:
            raise ValueError(f"doc id must be 1..{wire.DOC_ID_BYTES_MAX} bytes")
        if len(self._docs) >= self.config.docs_max:
            raise RuntimeError(f"docs_max ({self.config.docs_max}) reached")
        doc: Doc[Any] = Doc(client_id=self.client_id)
        placeholder = _DocEntry(doc=doc, subscription=None)  # type: ignore[arg-type]
        placeholder.subscription = doc.observe(lambda event: self._on_transaction(doc_id, placeholder, event))
        self._docs[doc_id] = placeholder
        return placeholder

    def _on_transaction(self, doc_id: str, entry: _DocEntry, event: TransactionEvent) -> None:
        # pycrdt's stubs omit these attributes of TransactionEvent; they exist at run time.
        update: bytes = event.update
        after: bytes = event.after_state  # type: ignore[attr-defined]
        if update == _EMPTY_UPDATE:
            return
        entry.state_bytes = after
        entry.decoded = None
        entry.digest = None
        self._persist.append((doc_id, update))
        if event.transaction.origin() == REMOTE_ORIGIN:  # type: ignore[attr-defined]
            return
        delta = wire.Delta(doc_id, event.before_state, after, update)  # type: ignore[attr-defined]
        self._last_seq += 1
        size = len(update) + len(after) * 2 + len(doc_id)
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

    def _apply(self, entry: _DocEntry, update: bytes, reason: str) -> bool:
        if len(update) > self.config.update_bytes_max:
            self._count("updates_dropped_too_large")
            return False
        try:
            with entry.doc.transaction(origin=REMOTE_ORIGIN):
                entry.doc.apply_update(update)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # pycrdt raises PanicException, a BaseException, on some bad input
            self._count("updates_rejected")
            self._warn("update_rejected", "rejected a %s update of %d bytes: %s", reason, len(update), exc)
            return False
        return True

    # ------------------------------------------------------------------ publishing

    def _flush_outbox(self) -> None:
        chunk: list[wire.Delta] = []
        chunk_bytes = 0
        first_seq = self._last_seq - len(self._outbox) + 1
        for delta in self._outbox:
            size = len(delta.update) + len(delta.after_state) * 2 + len(delta.doc_id)
            if chunk and (
                len(chunk) >= self.config.batch_deltas_max or chunk_bytes + size > self.config.batch_bytes_max
            ):
                self._publish(wire.Deltas(self.node_id, self.epoch, first_seq, tuple(chunk)))
                first_seq += len(chunk)
                chunk, chunk_bytes = [], 0
            chunk.append(delta)
            chunk_bytes += size
        self._publish(wire.Deltas(self.node_id, self.epoch, first_seq, tuple(chunk)))
        self._outbox = []
        self._outbox_bytes = 0
        self._outbox_since_ms = None
        self._next_heartbeat_ms = self._now_ms + self.config.heartbeat_interval_ms

    def _publish(self, message: wire.Message) -> None:
        try:
            frame = wire.encode(message)
        except wire.WireError as exc:
            # Only a single transaction larger than a frame gets here (batches split well below).
            # Peers cannot receive it as a delta; it stays in the doc and in the store.
            self._count("publish_too_large")
            self._warn("publish_too_large", "not publishing %s: %s", type(message).__name__, exc)
            return
        self._count("frames_published")
        self._count("bytes_published", len(frame))
        if isinstance(message, wire.Deltas):
            self._count("batches_published")
        self._effects.append(Publish(frame))

    def _send(self, address: str, message: wire.Message) -> None:
        try:
            frame = wire.encode(message)
        except wire.WireError as exc:
            self._count("send_too_large")
            self._warn("send_too_large", "not sending %s to %s: %s", type(message).__name__, address, exc)
            return
        self._count("frames_sent")
        self._count("bytes_sent", len(frame))
        self._effects.append(Send(address, frame))

    def _send_to_node(self, node_id: str, message: wire.Message) -> None:
        address = self._address_of.get(node_id)
        if address is None:
            self._count("unknown_peer")
            return
        self._send(address, message)

    # ------------------------------------------------------------------ receiving

    def receive(self, frame: bytes, now_ms: float) -> None:
        """Handle one frame from the SUB or the request socket. Malformed frames are counted and dropped."""
        self._now_ms = now_ms
        self._count("frames_received")
        self._count("bytes_received", len(frame))
        try:
            message = wire.decode(frame)
        except wire.WireError as exc:
            self._count(f"wire_errors_{exc.reason}")
            self._warn(exc.reason, "dropped a malformed frame of %d bytes: %s", len(frame), exc)
            return
        if message.node_id == self.node_id:
            self._count("own_frames_dropped")
            return
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
                self._on_sync_update(message.doc_id, message.update, message.node_id)
                self._push_back(message)
            case wire.SyncPush():
                self._on_sync_update(message.doc_id, message.update, message.node_id)
            case wire.DigestsRequest():
                self._on_digests_request(message)
            case wire.DigestsPage():
                self._on_digests_page(message)

    def _heard(self, node_id: str) -> None:
        address = self._address_of.get(node_id)
        if address is None:
            return
        link = self._links[address]
        link.last_heard_ms = self._now_ms
        if link.state == "down" and link.epoch is not None:
            link.state = "up"
            self._count("peer_up")

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
        if link.publish_endpoint != message.publish_endpoint:
            if link.publish_endpoint is not None:
                self._effects.append(Unsubscribe(link.publish_endpoint))
            link.publish_endpoint = message.publish_endpoint
            self._effects.append(Subscribe(message.publish_endpoint))
        if isinstance(message, wire.Hello):
            # Answer first: the resync below makes the peer reply to us, which it can only do once
            # our HelloAck has told it who we are.
            self._send(message.address, self._hello(wire.HelloAck))
        if link.epoch is None or message.epoch > link.epoch:
            link.epoch = message.epoch
            track = self._tracks.get(message.node_id)
            if track is None or track.epoch < message.epoch:
                # The resync below covers everything up to last_seq; the stream continues after it.
                self._tracks[message.node_id] = _PublisherTrack(
                    message.epoch, message.last_seq, last_seq_seen=message.last_seq
                )
            self._start_resync(link)
        if link.state != "up":
            log.info("peer %s at %s is up (epoch %d)", message.node_id, message.address, message.epoch)
            self._count("peer_up")
        link.state = "up"

    def _hello(self, cls: type[wire.Hello] | type[wire.HelloAck]) -> wire.Hello | wire.HelloAck:
        return cls(self.node_id, self.epoch, self.address, self.publish_endpoint, self._last_seq)

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
        if link.publish_endpoint is not None:
            self._effects.append(Unsubscribe(link.publish_endpoint))
        del self._links[link.address]

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
        self._buffer_deltas(fresh, publisher)

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
            entry = touched.get(delta.doc_id)
            if entry is None:
                try:
                    entry = self._entry(delta.doc_id, create=True)
                except (ValueError, RuntimeError) as exc:
                    self._count("deltas_dropped_doc")
                    self._warn("bad_doc", "dropped a delta for doc %r: %s", delta.doc_id, exc)
                    continue
                touched[delta.doc_id] = entry
            if (
                len(entry.pending) >= self.config.pending_deltas_per_doc_max
                or self._pending_bytes + len(delta.update) > self.config.pending_bytes_max
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
        for doc_id, entry in touched.items():
            self._drain(doc_id, entry)

    def _drain(self, doc_id: str, entry: _DocEntry) -> None:
        """Apply every pending delta whose dependencies are covered, merging runs into one apply."""
        while entry.pending:
            virtual = dict(_state(entry))
            ready: list[bytes] = []
            waiting: list[_PendingDelta] = []
            for pending in entry.pending:
                if covers(virtual, pending.after) and pending.after != pending.before:
                    self._count("deltas_duplicate_state")
                elif covers(virtual, pending.before):
                    ready.append(pending.delta.update)
                    merge_into(virtual, pending.after)
                else:
                    waiting.append(pending)
            done = len(entry.pending) - len(waiting)
            self._pending_total -= done
            self._pending_bytes -= sum(len(p.delta.update) for p in entry.pending) - sum(
                len(p.delta.update) for p in waiting
            )
            entry.pending = waiting
            if ready:
                self._apply_run(entry, ready)
            if not ready or not waiting:
                break
        if entry.pending:
            self._pending_docs[doc_id] = None
        else:
            self._pending_docs.pop(doc_id, None)

    def _apply_run(self, entry: _DocEntry, updates: list[bytes]) -> None:
        """Apply causally ready updates, merged into one apply (several times faster) when they merge."""
        if len(updates) > 1:
            try:
                merged = merge_updates(*updates)
            except (KeyboardInterrupt, SystemExit):
                raise
            except BaseException:  # one of them is malformed: apply them one by one, each isolated
                self._count("merge_failures")
            else:
                if self._apply(entry, merged, "delta"):
                    self._count("deltas_applied", len(updates))
                    return
        for update in updates:
            if self._apply(entry, update, "delta"):
                self._count("deltas_applied")

    def _pull(self, node_id: str, doc_id: str, entry: _DocEntry) -> None:
        self._count("syncs_requested")
        self._send_to_node(node_id, wire.SyncRequest(self.node_id, doc_id, entry.state_bytes))

    # ------------------------------------------------------------------ retransmission

    def _request_retransmit(self, node_id: str, track: _PublisherTrack) -> None:
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
        chunk: list[wire.Delta] = []
        chunk_bytes = 0
        first = message.from_seq
        for index in range(start, start + hi - message.from_seq + 1):
            _seq, doc_id, before, after, update, size = self._ring[index]
            delta = wire.Delta(doc_id, before, after, update)
            if chunk and (
                len(chunk) >= self.config.batch_deltas_max or chunk_bytes + size > self.config.batch_bytes_max
            ):
                self._send_to_node(
                    message.node_id, wire.Deltas(self.node_id, self.epoch, first, tuple(chunk))
                )
                first += len(chunk)
                chunk, chunk_bytes = [], 0
            chunk.append(delta)
            chunk_bytes += size
        if chunk:
            self._count("retransmits_served")
            self._send_to_node(message.node_id, wire.Deltas(self.node_id, self.epoch, first, tuple(chunk)))

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
        address = self._address_of.get(node_id)
        if address is not None:
            self._start_resync(self._links[address])

    # ------------------------------------------------------------------ state sync

    def _on_sync_request(self, message: wire.SyncRequest) -> None:
        self._count("syncs_served")
        entry = self._docs.get(message.doc_id)
        if entry is None:
            reply = wire.SyncResponse(self.node_id, message.doc_id, _EMPTY_UPDATE, _EMPTY_STATE)
        else:
            decode_state_vector(message.state)  # validate before pycrdt sees it
            try:
                update = entry.doc.get_update(message.state)
            except (KeyboardInterrupt, SystemExit):
                raise
            except BaseException as exc:
                self._count("syncs_rejected")
                self._warn(
                    "sync_rejected",
                    "sync request for %r from %s rejected: %s",
                    message.doc_id,
                    message.node_id,
                    exc,
                )
                return
            reply = wire.SyncResponse(self.node_id, message.doc_id, update, entry.state_bytes)
        self._send_to_node(message.node_id, reply)

    def _on_sync_update(self, doc_id: str, update: bytes, node_id: str) -> None:
        if update == _EMPTY_UPDATE:
            return
        try:
            entry = self._entry(doc_id, create=True)
        except (ValueError, RuntimeError) as exc:
            self._count("syncs_dropped_doc")
            self._warn("bad_doc", "dropped a sync update for doc %r from %s: %s", doc_id, node_id, exc)
            return
        # Safe to apply at once: it was computed against a state vector this node already covers.
        if self._apply(entry, update, "sync"):
            self._count("sync_updates_applied")
            for link in self._links.values():
                if link.node_id == node_id and link.resync is not None:
                    link.resync.docs_repaired += 1
        self._drain(doc_id, entry)

    def _push_back(self, message: wire.SyncResponse) -> None:
        entry = self._docs.get(message.doc_id)
        if entry is None:
            return
        remote = decode_state_vector(message.state)
        update = entry.doc.get_update(encode_state_vector(remote))
        if update != _EMPTY_UPDATE:
            self._count("sync_pushes")
            self._send_to_node(message.node_id, wire.SyncPush(self.node_id, message.doc_id, update))

    def _start_resync(self, link: _PeerLink) -> None:
        if link.resync is not None:
            link.resync.after = ""
        else:
            link.resync = _Resync()
            self._count("resyncs_started")
        self._request_digests(link)

    def _request_digests(self, link: _PeerLink) -> None:
        assert link.resync is not None
        link.resync.deadline_ms = self._now_ms + self.config.resync_timeout_ms
        self._send(
            link.address, wire.DigestsRequest(self.node_id, link.resync.after, self.config.resync_page_docs)
        )

    def _on_digests_request(self, message: wire.DigestsRequest) -> None:
        limit = max(1, min(message.limit, self.config.resync_page_docs))
        ids = self.doc_ids(after=message.after, limit=limit + 1)
        complete = len(ids) <= limit
        entries = tuple((doc_id, self.doc_digest(doc_id)) for doc_id in ids[:limit])
        self._send_to_node(message.node_id, wire.DigestsPage(self.node_id, message.after, entries, complete))

    def _on_digests_page(self, message: wire.DigestsPage) -> None:
        address = self._address_of.get(message.node_id)
        link = self._links.get(address) if address is not None else None
        if link is None or link.resync is None or link.resync.after != message.after:
            self._count("digest_pages_stale")
            return
        remote = dict(message.entries)
        upper = message.entries[-1][0] if message.entries and not message.complete else None
        local_ids = self._docs.irange(minimum=message.after or None, maximum=upper, inclusive=(False, True))
        for doc_id in list(local_ids):
            if doc_id not in remote:
                self._count("sync_pushes")
                entry = self._docs[doc_id]
                self._send(link.address, wire.SyncPush(self.node_id, doc_id, entry.doc.get_update()))
        for doc_id, remote_digest in message.entries:
            if doc_id <= message.after:
                continue
            entry = self._docs.get(doc_id)
            if entry is not None and self.doc_digest(doc_id) == remote_digest:
                continue
            state = entry.state_bytes if entry is not None else _EMPTY_STATE
            self._count("syncs_requested")
            self._send(link.address, wire.SyncRequest(self.node_id, doc_id, state))
        if message.complete or not message.entries:
            link.resync = None
            link.resyncs_completed += 1
            self._count("resyncs_completed")
        else:
            link.resync.after = message.entries[-1][0]
            self._request_digests(link)

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
            if track is not None:
                behind = max(0, track.last_seq_seen - track.contiguous - len(track.above))
            peers.append(
                PeerStatus(
                    address=link.address,
                    node_id=link.node_id,
                    state=link.state,
                    epoch=link.epoch,
                    last_heard_ago_ms=None if link.last_heard_ms is None else now_ms - link.last_heard_ms,
                    behind_updates=behind,
                    resyncing=link.resync is not None,
                    resyncs_completed=link.resyncs_completed,
                )
            )
        return ReplicaStatus(
            node_id=self.node_id,
            epoch=self.epoch,
            address=self.address,
            docs=len(self._docs),
            last_seq=self._last_seq,
            pending_deltas=self._pending_total,
            peers=tuple(peers),
            counters=dict(self.counters),
        )
