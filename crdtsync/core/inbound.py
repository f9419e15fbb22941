"""Peers' publisher streams as this node receives them: per-publisher sequence tracking, retransmit
requests for gaps, the relay's republishing of another datacenter's deltas, and the hand-over of
every fresh delta to the causal buffer.

A publisher whose deltas go out on their holder sets' or buckets' topics (see `outbound`) tells the
bucket of the numbers that went out on other topics, in each frame (`Deltas.skipped`) and in
`SEQ_INDEX` messages: those of buckets this node does not subscribe to count as received.

A gap is asked for from the publisher's ring (`RETRANSMIT_REQUEST`, retried every
`retransmit_timeout_ms`); when the ring no longer has it (`RETRANSMIT_GONE`) or too many sequence
numbers wait above it (`out_of_order_seqs_max`), the gap is given up and an anti-entropy round
against the publisher repairs by state instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from crdtsync.core import wire
from crdtsync.core.antientropy import AntiEntropy
from crdtsync.core.causal import UNPARSED, CausalBuffer, decode_states
from crdtsync.core.context import Context
from crdtsync.core.holding import Holding
from crdtsync.core.links import Links
from crdtsync.core.membership import Membership
from crdtsync.core.outbound import Outbound
from crdtsync.core.seqacks import SeqAcks
from crdtsync.core.state import StateVector


@dataclass(slots=True)
class PublisherTrack:
    """What we have received of one publisher incarnation's sequence."""

    epoch: int
    contiguous: int
    above: set[int] = field(default_factory=set)
    last_seq_seen: int = 0
    retransmit_deadline_ms: float = 0.0
    behind_since_ms: float | None = None
    """When this node last went from holding every announced delta to missing some (lag start)."""
    held_from: int = 1
    """The first number this node acknowledges (`crdtsync.core.seqacks`): earlier ones came by other
    paths, if at all (before the track began, in a gap given up, dropped by the causal buffer)."""
    deltas_unacked: bool = False
    """Deltas came in since the last acknowledgement."""
    skipped_through: int = 0
    """The highest number counted as received without being held (a doc or bucket this node does not
    hold): a change of the member view moves `held_from` past it."""

    @property
    def behind_updates(self) -> int:
        """Deltas the publisher announced that this node has not received yet."""
        return max(
            0,
            self.last_seq_seen - self.contiguous - sum(1 for seq in self.above if seq <= self.last_seq_seen),
        )


class Inbound:
    def __init__(
        self,
        ctx: Context,
        membership: Membership,
        links: Links,
        outbound: Outbound,
        causal: CausalBuffer,
        antientropy: AntiEntropy,
        holding: Holding,
        seq_acks: SeqAcks,
    ) -> None:
        self._ctx = ctx
        self._holding = holding
        self._seq_acks = seq_acks
        self._membership = membership
        self._links = links
        self._outbound = outbound
        self._causal = causal
        self._antientropy = antientropy
        self.tracks: dict[str, PublisherTrack] = {}

    @property
    def chasing_gaps(self) -> bool:
        return any(track.above for track in self.tracks.values())

    def start_track(self, node_id: str, epoch: int, last_seq: int) -> None:
        """A hello from a publisher incarnation newer than the one tracked: the anti-entropy round
        the hello starts covers everything up to `last_seq`; the stream continues after it."""
        track = self.tracks.get(node_id)
        if track is None or track.epoch < epoch:
            self.tracks[node_id] = PublisherTrack(
                epoch, last_seq, last_seq_seen=last_seq, held_from=last_seq + 1
            )

    def _say_hello(self, node_id: str) -> None:
        address = self._links.address_of.get(node_id)
        if address is not None:
            self._links.send(address, self._links.hello(wire.Hello, self._outbound.last_seq))

    def on_heartbeat(self, message: wire.Heartbeat) -> None:
        track = self.tracks.get(message.node_id)
        if track is None or message.epoch > track.epoch:
            self._say_hello(message.node_id)  # a publisher incarnation we have not greeted yet
            return
        if message.epoch == track.epoch and message.last_seq > track.last_seq_seen:
            track.last_seq_seen = message.last_seq
            self._request_retransmit(message.node_id, track)
            self._track_lag(track)

    def _track_of(self, publisher: str, epoch: int, first_seq: int) -> PublisherTrack:
        track = self.tracks.get(publisher)
        if track is None or epoch > track.epoch:
            track = PublisherTrack(epoch, first_seq - 1, held_from=first_seq)
            self.tracks[publisher] = track
            self._say_hello(publisher)
        return track

    def on_seq_index(self, message: wire.SeqIndex) -> None:
        """Count the sequence numbers of buckets this node does not subscribe to as received. Nothing
        is asked for here: the deltas of the other buckets follow the index on the same subscription."""
        self._skip(message.node_id, message.epoch, message.first_seq, message.buckets)

    def _skip(self, publisher: str, epoch: int, first_seq: int, buckets: tuple[int, ...]) -> None:
        """Numbers from `first_seq` went out on the topics of `buckets`: those this node does not
        subscribe to count as received (the others came, or come, on its subscription)."""
        link = self._links.of_node(publisher)
        subscribed = None if link is None else link.subscribed_buckets
        if subscribed is None:
            return  # every bucket comes: the deltas themselves are the record
        track = self._track_of(publisher, epoch, first_seq)
        if epoch != track.epoch:
            return
        held = self._holding.buckets_held()
        for index, bucket in enumerate(buckets):
            if bucket not in subscribed and self._receive(track, first_seq + index):
                self._ctx.counters.seqs_not_subscribed += 1
                track.skipped_through = max(track.skipped_through, first_seq + index)
                if held is None or bucket in held:  # held, not subscribed yet: not to acknowledge
                    track.held_from = max(track.held_from, first_seq + index + 1)

    def on_deltas(self, message: wire.Deltas) -> None:
        publisher = message.node_id
        states = decode_states(message.deltas)  # a bad batch is rejected before it is tracked
        if message.skipped:  # before the deltas: a gap they leave is then a loss
            self._skip(publisher, message.epoch, message.first_seq - len(message.skipped), message.skipped)
        track = self._track_of(publisher, message.epoch, message.first_seq)
        fresh: list[tuple[wire.Delta, StateVector, StateVector]]
        seqs: list[int] = []
        if message.epoch < track.epoch:
            # A late frame of an earlier incarnation: no sequence tracking, but its content is valid.
            self._ctx.counters.deltas_stale_epoch += len(message.deltas)
            fresh = _with_states(message.deltas, states)
        else:
            fresh = self._sequence(message, track, states, seqs)
        if fresh and self._links.is_relay:
            publisher_dc = self._membership.dc_of(publisher)
            if publisher_dc is not None and publisher_dc != self._ctx.dc:
                # Not an update that does not parse: the buffer refuses it, and a link of an older
                # version could not be given its states (nor acknowledge the frame's numbers).
                parsed = [delta for delta, _before, after in fresh if after is not UNPARSED[1]]
                if parsed:
                    self._relay(parsed, publisher, message.epoch, seqs if len(parsed) == len(fresh) else [])
        dropped, not_held = self._causal.add(fresh, publisher)
        if message.epoch == track.epoch and (dropped or not_held):
            last = message.first_seq + len(message.deltas) - 1
            if dropped:
                track.held_from = max(track.held_from, last + 1)
            if not_held:
                track.skipped_through = max(track.skipped_through, last)
        track.deltas_unacked = track.deltas_unacked or bool(fresh)

    def _relay(self, deltas: list[wire.Delta], publisher: str, epoch: int, seqs: list[int]) -> None:
        """Republish another datacenter's deltas into this one (dc_only: the relayed copy must not
        cross the WAN again), by holder set (`outbound`) when not every node holds everything. A
        frame whose deltas have consecutive numbers (`seqs`, empty when not tracked) names them
        while the publisher's writes wait (it asked this node a write-ack question), so that its
        receivers can acknowledge them to the publisher (`Relayed`); no frame is split for that."""
        ctx = self._ctx
        ctx.counters.deltas_relayed_out += len(deltas)
        if not self._seq_acks.wanted(publisher):
            seqs = []  # its writes do not wait: nothing would acknowledge them, and 0s are shorter
        relayed = _relayed(ctx.node_id, publisher, deltas, epoch, seqs)
        holding = self._holding
        if not holding.partitioned:
            self._links.publish(relayed, dc_only=True)
            return
        self._links.publish(relayed, dc_only=True, audience="whole")
        keys = self._links.topic_keys([holding.bucket_of(delta.doc_id) for delta in deltas])
        by_key: dict[int, list[int]] = {}
        for index, key in enumerate(keys):
            by_key.setdefault(key, []).append(index)
        for key, run in by_key.items():
            part_seqs = [seqs[index] for index in run] if seqs else []
            part = _relayed(ctx.node_id, publisher, [deltas[index] for index in run], epoch, part_seqs)
            self._links.publish(part, dc_only=True, topic_key=key, audience="partial")

    def _sequence(
        self,
        message: wire.Deltas,
        track: PublisherTrack,
        states: list[tuple[StateVector, StateVector] | None],
        seqs: list[int],
    ) -> list[tuple[wire.Delta, StateVector, StateVector]]:
        """Record the batch's sequence numbers; return its deltas not received before (their
        numbers appended to `seqs`)."""
        fresh: list[tuple[wire.Delta, StateVector, StateVector]] = []
        for index, delta in enumerate(message.deltas):
            if self._receive(track, message.first_seq + index):
                fresh.append((delta, *(states[index] or UNPARSED)))
                seqs.append(message.first_seq + index)
            else:
                self._ctx.counters.deltas_duplicate += 1
        last = message.first_seq + len(message.deltas) - 1
        track.last_seq_seen = max(track.last_seq_seen, last)
        if len(track.above) > self._ctx.config.out_of_order_seqs_max:
            self._ctx.counters.gap_too_large += 1
            self._give_up_gap(message.node_id, track)
        elif track.contiguous < track.last_seq_seen:
            self._request_retransmit(message.node_id, track)
        self._track_lag(track)
        return fresh

    @staticmethod
    def _receive(track: PublisherTrack, seq: int) -> bool:
        """Record `seq` as received; False if it was already."""
        if seq <= track.contiguous or seq in track.above:
            return False
        if seq == track.contiguous + 1:
            track.contiguous = seq
            while track.contiguous + 1 in track.above:
                track.contiguous += 1
                track.above.discard(track.contiguous)
        else:
            track.above.add(seq)
        return True

    def on_relayed(self, message: wire.Relayed) -> None:
        """Deltas of another datacenter's publisher, republished by a relay of this one. No sequence
        tracking (two relays may both forward them, a relay may fail over): the causal buffer drops
        what the state already covers, and pulls of missing dependencies go to the relay or, when
        it does not hold the doc, to the origin (`CausalBuffer._pull_source`). Numbers the frame
        names are kept for acknowledgements only (`SeqAcks.on_relayed`)."""
        if message.origin == self._ctx.node_id:
            return
        self._ctx.counters.deltas_relayed_in += len(message.deltas)
        dropped, not_held = self._causal.add(
            _with_states(message.deltas, decode_states(message.deltas)),
            message.node_id,
            message.origin,
        )
        if message.origin_first_seq:
            self._seq_acks.on_relayed(message, dropped, not_held)

    def _track_lag(self, track: PublisherTrack) -> None:
        behind = track.last_seq_seen > track.contiguous or bool(track.above)
        if not behind:
            track.behind_since_ms = None
        elif track.behind_since_ms is None:
            track.behind_since_ms = self._ctx.now_ms

    # ------------------------------------------------------------------ retransmission

    def chase_gaps(self) -> None:
        """Timer duty: ask again for every gap whose last request went unanswered."""
        for node_id, track in self.tracks.items():
            if track.above or track.last_seq_seen > track.contiguous:
                self._request_retransmit(node_id, track)

    def _request_retransmit(self, node_id: str, track: PublisherTrack) -> None:
        ctx = self._ctx
        if not ctx.config.retransmit_enabled:
            if track.above or track.last_seq_seen > track.contiguous:
                track.held_from = max(track.last_seq_seen, max(track.above, default=0)) + 1
            track.contiguous = max(track.contiguous, track.last_seq_seen, max(track.above, default=0))
            track.above.clear()
            return
        if ctx.now_ms < track.retransmit_deadline_ms:
            return
        lo = track.contiguous + 1
        # Not beyond the last sequence number seen in a delta or heartbeat: numbers above it that
        # an index marked (other buckets) do not mean that their predecessors are lost.
        hi = track.last_seq_seen
        if hi < lo:
            return
        hi = min(hi, lo + ctx.config.retransmit_deltas_max - 1)
        track.retransmit_deadline_ms = ctx.now_ms + ctx.config.retransmit_timeout_ms
        ctx.counters.retransmit_requests += 1
        self._links.send_to_node(node_id, wire.RetransmitRequest(ctx.node_id, track.epoch, lo, hi))

    def on_retransmit_gone(self, message: wire.RetransmitGone) -> None:
        track = self.tracks.get(message.node_id)
        if track is None or track.epoch != message.epoch:
            return
        self._ctx.counters.retransmits_gone_received += 1
        self._give_up_gap(message.node_id, track)

    def _give_up_gap(self, node_id: str, track: PublisherTrack) -> None:
        """Stop chasing missing sequence numbers and repair by state instead."""
        track.contiguous = max(track.last_seq_seen, max(track.above, default=0), track.contiguous)
        track.above.clear()
        track.held_from = track.contiguous + 1
        self._track_lag(track)
        link = self._links.of_node(node_id)
        if link is not None:
            self._antientropy.want_round(link)


def _with_states(
    deltas: tuple[wire.Delta, ...], states: list[tuple[StateVector, StateVector] | None]
) -> list[tuple[wire.Delta, StateVector, StateVector]]:
    return [(delta, *(state or UNPARSED)) for delta, state in zip(deltas, states, strict=True)]


def _relayed(
    node_id: str, origin: str, deltas: list[wire.Delta], epoch: int, seqs: list[int]
) -> wire.Relayed:
    """A relayed frame, naming its deltas' numbers when they are consecutive."""
    if not seqs or seqs[-1] - seqs[0] != len(seqs) - 1:
        return wire.Relayed(node_id, origin, tuple(deltas))
    return wire.Relayed(node_id, origin, tuple(deltas), epoch, seqs[0])
