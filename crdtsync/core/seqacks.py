"""Sequence acknowledgements: each node tells the publishers it subscribes to which of their deltas
it holds, so that a writer learns that its write reached a replica without asking (`write_acks`).

A subscriber holds a publisher's deltas numbered `held_from..contiguous` of its track (see
`inbound.PublisherTrack`): `held_from` is the first number of the stream received since the track
began or since a gap was given up (numbers before it came by other paths, if at all: a hello's
anti-entropy round, a repair), and a delta the causal buffer dropped moves it past its batch. The
numbers of docs the subscriber does not hold (placement) count as held, and each ack carries the
digest of the member view that decided which those are (`Holding.view_digest`): the writer counts an
ack for a doc only from the doc's holders, and only when its own view is the same. So that an ack
never covers a number counted under another view, a change of view moves `held_from` past every
number counted as not held so far, and a number of a bucket the subscriber holds but does not
subscribe to yet moves it too. Once deltas of a publisher that wants acks came in and nothing of
that publisher waits in the causal buffer, a `SEQ_ACK` of that range goes to it, as a send that
leaves only after the store committed what it acknowledges, and at most once per
`seq_ack_interval_ms` per publisher (later ones are due then). A write that waits thus costs one
small frame per subscriber when idle, and a busy publisher one per subscriber and interval, whatever
the number of writes. A lost ack is covered by the next one; the writer asks a replica directly only
when no ack came (`crdtsync.holders`).

A publisher wants acks for `seq_ack_wanted_ms` (60 s) after it asked this node a write-ack question
(a `HANDOFF_OFFER` flagged `wants_acks`; over wire version 1, which cannot flag it, an offer of a doc
the publisher holds, since handoffs come from non-holders): a cluster where no write waits sends
none, and a writer asks each holder once, at its first waiting write, then again only when its last
question to that holder is older than half of that, which renews the acks before they stop
(`crdtsync.holders`). With `seq_ack_wanted_ms` 0 every publisher gets acks.

A node of another datacenter that is not a relay does not receive the publisher's stream but its
relay's republished copies (`Relayed`). In wire version 2 a relayed frame whose deltas have
consecutive numbers names them (the publisher's epoch and the first number) while the publisher's
writes wait, as the relay knows from the questions it gets as a holder itself (a write that waits
for every datacenter asks the relays too): otherwise nothing would acknowledge them, and the frame
keeps the header's two 0 bytes. The node tracks
them per publisher (`RelayedTrack`): its range starts again at the first number after a gap, since
it cannot tell the numbers of docs it does not take (another holder set's frame) from lost ones,
and it counts as waiting while anything of a relay that brought them waits in the causal buffer.
It acknowledges that range to the publisher directly, over the link the publisher's questions
come by (a relay would have to collect and forward acks, and a node that can be asked can be
answered), so that the publisher's later writes need no question to it either.

The writer keeps the last ack of each node for its current incarnation (`acked`), and counts an ack
for a doc when its range holds the number of the writer's latest delta of that doc (that delta
applied means every earlier one of the doc applied: each depends on the one before).

`SEQ_ACK` frames are bounded like every frame (`wire`); `acked` and the relayed tracks hold at most
`peers_max` nodes each, and a relayed track at most RELAYS_PER_TRACK_MAX relays.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from crdtsync.core import wire
from crdtsync.core.context import Context
from crdtsync.core.holding import Holding
from crdtsync.core.links import Links
from crdtsync.core.outbound import Outbound


class _Track(Protocol):
    epoch: int
    contiguous: int
    held_from: int
    deltas_unacked: bool
    skipped_through: int


RELAYS_PER_TRACK_MAX = 8
"""Relays whose causal-buffer backlog a relayed track waits on; a ninth starts its range again."""


@dataclass(slots=True)
class RelayedTrack:
    """The numbers of one publisher incarnation's deltas this node received relayed, named by their
    frames: `held_from..contiguous`, numbers of docs it does not hold included."""

    epoch: int
    held_from: int
    contiguous: int
    deltas_unacked: bool = False
    skipped_through: int = 0
    relays: set[str] = field(default_factory=set)
    """The relays that brought deltas since the last ack: nothing of theirs may wait for it."""


class SeqAcks:
    def __init__(self, ctx: Context, links: Links, outbound: Outbound, holding: Holding) -> None:
        self._ctx = ctx
        self._links = links
        self._outbound = outbound
        self._holding = holding
        self._view_version = -1
        self._sent: dict[str, tuple[int, int, int, int, float]] = {}
        """Publisher -> (epoch, from, through, view, when) of the last ack sent to it."""
        self._next_due_ms = float("inf")
        self._wanted_until: dict[str, float] = {}
        """Publisher -> until when it wants acks (its last write-ack question), oldest first."""
        self.relayed: dict[str, RelayedTrack] = {}
        """Publisher -> what this node received of it relayed (`on_relayed`), oldest first."""
        self.acked: dict[str, tuple[int, int, int, float]] = {}
        """Node -> (from, through, view digest, when received) of its last ack of this node's
        current incarnation, oldest first."""

    def on_offer(self, message: wire.HandoffOffer) -> None:
        """A write-ack question (`wants_acks`; in wire version 1 a `HANDOFF_OFFER` from a holder of
        one of its docs, since a non-holder's hands docs over and a leaving node's drains):
        acknowledge the sender's deltas from now on."""
        holding = self._holding
        if message.wants_acks or (
            not message.leaving
            and any(
                holding.holds(message.node_id, holding.bucket_of(doc_id))
                for doc_id, _state, _update in message.entries
            )
        ):
            self.wanted_by(message.node_id)

    def wanted_by(self, publisher: str) -> None:
        """`publisher` asked a write-ack question: acknowledge its deltas for `seq_ack_wanted_ms`."""
        ctx = self._ctx
        wanted = self._wanted_until
        wanted.pop(publisher, None)
        if len(wanted) >= ctx.config.peers_max:
            del wanted[next(iter(wanted))]
        wanted[publisher] = ctx.now_ms + ctx.config.seq_ack_wanted_ms

    def wanted(self, publisher: str) -> bool:
        """Whether `publisher` gets acks now (its last write-ack question is recent enough)."""
        ctx = self._ctx
        return ctx.config.seq_ack_wanted_ms <= 0 or ctx.now_ms <= self._wanted_until.get(publisher, -1.0)

    @property
    def view_digest(self) -> int:
        """This node's member view (`Holding.view_digest`), to compare an ack's with."""
        self._holding.refresh()
        return self._holding.view_digest

    @property
    def last_seq(self) -> int:
        """The number of this node's latest delta in this incarnation (0: none yet)."""
        return self._outbound.last_seq

    def last_seq_of(self, doc_id: str) -> int:
        """The number of this node's latest delta of `doc_id` in this incarnation (0: none, or too
        old for the retransmit ring)."""
        return self._outbound.last_seq_of(doc_id)

    def on_relayed(self, message: wire.Relayed, dropped: int, not_held: int) -> None:
        """A relayed frame that names its numbers (`Relayed.origin_first_seq`) went to the causal
        buffer, which `dropped` some of its deltas and found `not_held` of docs this node does not hold."""
        tracks = self.relayed
        track = tracks.pop(message.origin, None)
        first, epoch = message.origin_first_seq, message.origin_epoch
        last = first + len(message.deltas) - 1
        if track is None or epoch > track.epoch:
            track = RelayedTrack(epoch, first, first - 1)
        if len(tracks) >= self._ctx.config.peers_max:
            del tracks[next(iter(tracks))]
        tracks[message.origin] = track
        if epoch < track.epoch or last <= track.contiguous:
            return  # an earlier incarnation's, or another relay's copy of what came already
        if first > track.contiguous + 1:
            track.held_from = first  # a gap: other holder sets' numbers, or lost ones
        if len(track.relays) >= RELAYS_PER_TRACK_MAX and message.node_id not in track.relays:
            track.held_from, track.relays = first, set()
        track.relays.add(message.node_id)
        track.contiguous = last
        if dropped:
            track.held_from = last + 1
        if not_held:
            track.skipped_through = last
        track.deltas_unacked = True

    def next_deadline_ms(self) -> float:
        return self._next_due_ms

    def send_due(self, tracks: Mapping[str, _Track], pending_from: Mapping[str, int]) -> None:
        """Acknowledge what each publisher's deltas brought since the last ack, once nothing of that
        publisher waits in the causal buffer (`pending_from`: bytes waiting per sender)."""
        ctx = self._ctx
        interval_ms = ctx.config.seq_ack_interval_ms
        self._next_due_ms = float("inf")
        view = self.view_digest
        if self._holding.version != self._view_version:
            # Numbers counted as not held under the view before are not to be acknowledged under this one.
            self._view_version = self._holding.version
            for track in (*tracks.values(), *self.relayed.values()):
                track.held_from = max(track.held_from, track.skipped_through + 1)
        for publisher, track in self._tracks(tracks).items():
            if not track.deltas_unacked:
                continue
            if isinstance(track, RelayedTrack):
                if any(relay in pending_from for relay in track.relays):
                    continue
            elif publisher in pending_from:
                continue
            if not self.wanted(publisher):
                continue  # it waits for none of its writes: no ack (the first question starts them)
            if track.contiguous < track.held_from:
                track.deltas_unacked = False  # nothing held since a gap: the next deltas tell
                continue
            sent = self._sent.get(publisher)
            if sent is not None and sent[:4] == (track.epoch, track.held_from, track.contiguous, view):
                track.deltas_unacked = False
                continue
            if sent is not None and ctx.now_ms < sent[4] + interval_ms:
                self._next_due_ms = min(self._next_due_ms, sent[4] + interval_ms)
                continue
            address = self._links.address_of.get(publisher)
            if address is None:
                continue
            track.deltas_unacked = False
            if isinstance(track, RelayedTrack):
                track.relays.clear()  # what they brought is applied: nothing of theirs waits
                ctx.counters.seq_acks_relayed_sent += 1
            self._sent[publisher] = (track.epoch, track.held_from, track.contiguous, view, ctx.now_ms)
            ack = wire.SeqAck(ctx.node_id, track.epoch, track.held_from, track.contiguous, view)
            ctx.counters.seq_acks_sent += 1
            self._links.send(address, ack, after_commit=True)

    def _tracks(self, tracks: Mapping[str, _Track]) -> Mapping[str, _Track]:
        """The track to acknowledge each publisher from: the relayed one where it is ahead of the
        stream's own (a node that was a relay and is no longer, or has never been one)."""
        if not self.relayed:
            return tracks  # the usual case: nothing relayed named its numbers
        chosen = dict(tracks)
        for publisher, relayed in self.relayed.items():
            own = chosen.get(publisher)
            if own is None or (relayed.epoch, relayed.contiguous) > (own.epoch, own.contiguous):
                chosen[publisher] = relayed
        return chosen

    def on_ack(self, message: wire.SeqAck) -> None:
        """A subscriber's ack of this node's deltas: kept if it is of this incarnation and names only
        numbers this node has published (counted and dropped otherwise)."""
        ctx = self._ctx
        if message.epoch != ctx.epoch:
            ctx.counters.seq_acks_stale += 1
            return
        last_seq = self._outbound.last_seq
        if message.through_seq > last_seq:
            ctx.counters.seq_acks_refused += 1
            ctx.warn(
                "seq_ack_refused",
                "dropped SEQ_ACK from %s: it names sequence number %d, this node published %d",
                message.node_id,
                message.through_seq,
                last_seq,
            )
            return
        ctx.counters.seq_acks_received += 1
        acked = self.acked
        acked.pop(message.node_id, None)
        if len(acked) >= ctx.config.peers_max:
            del acked[next(iter(acked))]
        acked[message.node_id] = (message.from_seq, message.through_seq, message.view, ctx.now_ms)
