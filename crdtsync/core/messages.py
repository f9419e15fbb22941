"""The messages replicas exchange, as the core builds and reads them. `crdtsync.core.wire` encodes
each as the body of one envelope and decodes and validates it back (and re-exports these classes:
`wire.Hello` is `messages.Hello`); the limits the wire enforces (TREE_BRANCHES, ENTRIES_PER_MESSAGE_MAX,
...) are defined there."""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from crdtsync.core.chunks import ChunkReply, ChunkRequest
from crdtsync.core.forward import ForwardReply, ForwardRequest
from crdtsync.core.load_wire import LoadSummaries
from crdtsync.core.placement import PARTITIONS_DEFAULT, PLACEMENT_VERSION


class Delta(NamedTuple):
    """One local transaction of one doc, as its publisher captured it.

    `before_state` is the publisher's encoded state vector of the doc when the transaction began (the
    causal dependency); `after_state` the one when it committed. A receiver applies `update` only
    once its own state vector covers `before_state`. Both are empty in a delta received in wire
    version 3, which does not carry them: the receiver derives them from the update
    (`crdtsync.core.causal.decode_states`).

    A named tuple, unlike the other messages: one is built for every local transaction and every
    delta received, and a frozen dataclass took 0.7 µs to build against 0.35 µs.
    """

    doc_id: str
    before_state: bytes
    after_state: bytes
    update: bytes


@dataclass(frozen=True, slots=True)
class Hello:
    """Sent to a peer's request socket; answered by `HelloAck` with the same fields. `partitions` and
    `placement_version` must match the receiver's (fixed for the life of a cluster): a peer whose
    differ is refused, since the two would place docs differently."""

    node_id: str
    epoch: int
    address: str
    publish_endpoint: str
    last_seq: int
    dc: str
    zone: str = ""
    weight: float = 1.0
    partitions: int = PARTITIONS_DEFAULT
    placement_version: int = PLACEMENT_VERSION
    wire_version_min: int = 1
    wire_version_max: int = 1
    """The wire versions the sender speaks; a version-1 hello cannot carry them (read as 1..1).
    Each link speaks the highest both ends speak (see `crdtsync.core.links`)."""


@dataclass(frozen=True, slots=True)
class HelloAck:
    node_id: str
    epoch: int
    address: str
    publish_endpoint: str
    last_seq: int
    dc: str
    zone: str = ""
    weight: float = 1.0
    partitions: int = PARTITIONS_DEFAULT
    placement_version: int = PLACEMENT_VERSION
    wire_version_min: int = 1
    wire_version_max: int = 1


@dataclass(frozen=True, slots=True)
class Deltas:
    """A batch of deltas from one publisher; delta i has sequence number `first_seq + i`."""

    node_id: str
    epoch: int
    first_seq: int
    deltas: tuple[Delta, ...]
    skipped: tuple[int, ...] = ()
    """Wire version 2, on a holder set's topic (`outbound`): the bucket of each sequence number from
    `first_seq - len(skipped)` to `first_seq - 1`, deltas that went out on other topics since this
    topic's previous frame; a subscriber counts those of buckets it does not take as received."""


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """Published when idle so subscribers notice a lost tail of deltas and a live publisher."""

    node_id: str
    epoch: int
    last_seq: int


@dataclass(frozen=True, slots=True)
class SeqIndex:
    """Published on the common topic before a batch whose deltas went out on their buckets' topics
    (placement that not every node holds everything): the bucket of each sequence number from
    `first_seq`, so that a subscriber counts those of buckets it does not subscribe to as received
    instead of asking for them again."""

    node_id: str
    epoch: int
    first_seq: int
    buckets: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class RetransmitRequest:
    node_id: str
    epoch: int
    """The publisher epoch the missing sequence numbers belong to."""
    from_seq: int
    to_seq: int


@dataclass(frozen=True, slots=True)
class RetransmitGone:
    """The publisher's ring no longer holds `from_seq`; the requester must resynchronise by state."""

    node_id: str
    epoch: int
    oldest_seq: int


@dataclass(frozen=True, slots=True)
class SyncRequest:
    """Asks, per doc, for `get_update(state)`: everything the sender of `state` is missing."""

    node_id: str
    entries: tuple[tuple[str, bytes], ...]
    """(doc id, the requester's encoded state vector of it)."""


@dataclass(frozen=True, slots=True)
class SyncResponse:
    """Per doc, the update the requester lacked and the responder's state vector, so the requester
    can push back what the responder lacks."""

    node_id: str
    entries: tuple[tuple[str, bytes, bytes], ...]
    """(doc id, update, the responder's encoded state vector)."""


@dataclass(frozen=True, slots=True)
class SyncPush:
    node_id: str
    entries: tuple[tuple[str, bytes], ...]
    """(doc id, update)."""


@dataclass(frozen=True, slots=True)
class TreeRoot:
    """Starts an anti-entropy round: the initiator's Merkle root."""

    node_id: str
    round_id: int
    root: bytes


@dataclass(frozen=True, slots=True)
class TreeBranches:
    """The responder's answer to `TreeRoot`: `equal`, or its TREE_BRANCHES branch hashes."""

    node_id: str
    round_id: int
    equal: bool
    hashes: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class TreeSegmentsRequest:
    node_id: str
    round_id: int
    branches: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class TreeSegments:
    """For each requested branch, its segment hashes (TREE_SEGMENTS / TREE_BRANCHES each), in order."""

    node_id: str
    round_id: int
    branches: tuple[int, ...]
    hashes: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class TreeCells:
    """Wire version 4's answer to `TreeSegmentsRequest` for a few branches: instead of each branch's
    64 segment hashes, its cells (`merkle.branch_cells`), `merkle.CELL_BYTES` bytes each, 16 a branch."""

    node_id: str
    round_id: int
    branches: tuple[int, ...]
    cells: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class TreeLeavesRequest:
    """Wire version 4's request for what differs in `segments`: the sender's leaves of each (3 bytes
    each, `merkle.short_leaves`), instead of asking for the responder's entries (`tree_leaves`)."""

    node_id: str
    round_id: int
    segments: tuple[int, ...]
    leaves: tuple[bytes, ...]


@dataclass(frozen=True, slots=True)
class TreeLeaves:
    """The answer to `TreeLeavesRequest` for the `segments` answered (a prefix of those asked, to stay
    within ENTRIES_PER_MESSAGE_MAX): for each, the positions of the requester's leaves the responder
    does not hold; then the responder's (segment, doc id, digest) entries whose leaf was not sent."""

    node_id: str
    round_id: int
    segments: tuple[int, ...]
    unmatched: tuple[tuple[int, ...], ...]
    entries: tuple[tuple[int, str, bytes], ...]


@dataclass(frozen=True, slots=True)
class TreeEntriesRequest:
    node_id: str
    round_id: int
    segments: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class TreeEntries:
    """The (doc id, digest) entries of whole segments. `segments` lists the segments answered in full;
    a responder may answer fewer than were requested to stay within ENTRIES_PER_MESSAGE_MAX."""

    node_id: str
    round_id: int
    segments: tuple[int, ...]
    entries: tuple[tuple[int, str, bytes], ...]


@dataclass(frozen=True, slots=True)
class MemberEntry:
    """One member as gossip carries it (see `crdtsync.core.membership`)."""

    node_id: str
    dc: str
    address: str
    publish_endpoint: str
    incarnation: int
    heartbeat: int
    left: bool
    zone: str = ""
    """Placement spreads a partition's replicas over zones first (racks, availability zones)."""
    weight: float = 1.0
    """The node's capacity relative to others: placement gives it a share of partitions this size."""


@dataclass(frozen=True, slots=True)
class Members:
    """Push-pull gossip of the member table; `reply` marks the answer, which is not answered again."""

    node_id: str
    reply: bool
    members: tuple[MemberEntry, ...]


@dataclass(frozen=True, slots=True)
class Relayed:
    """Deltas of publisher `origin` (in another datacenter) republished by relay `node_id` into its own
    datacenter. Receivers order them by state vector alone: they do not track `origin`'s sequence.

    In wire version 2 a frame whose deltas have consecutive numbers in `origin`'s stream names them
    (in the header's epoch and sequence fields, which the body of this kind does not carry), so that
    a receiver can acknowledge them to `origin` (`crdtsync.core.seqacks`); 0: not named (version 1,
    or numbers that are not consecutive)."""

    node_id: str
    origin: str
    deltas: tuple[Delta, ...]
    origin_epoch: int = 0
    origin_first_seq: int = 0
    """The number of the first delta in `origin`'s incarnation `origin_epoch` (0: not named)."""


@dataclass(frozen=True, slots=True)
class Ephemeral:
    """Bytes about a doc that are never stored (a y-protocols awareness update), published by node
    `origin` for its clients and republished by relay `node_id` into its own datacenter (`node_id` is
    `origin` on the first hop). See `crdtsync.core.ephemeral`."""

    node_id: str
    origin: str
    doc_id: str
    payload: bytes


@dataclass(frozen=True, slots=True)
class HandoffOffer:
    """A node that has docs it does not hold hands them to a holder: per doc, the offerer's state
    vector and `get_update` against the state the holder last acknowledged (the whole doc at first),
    which carries every deletion too."""

    node_id: str
    entries: tuple[tuple[str, bytes, bytes], ...]
    """(doc id, the offerer's encoded state vector, update)."""
    leaving: bool = False
    """The offerer is draining before it leaves: the receiver takes the docs whether it holds them
    or not (then it hands them on itself)."""
    wants_acks: bool = False
    """A write-ack question (`crdtsync.holders`): the receiver acknowledges the offerer's deltas for
    a while (`crdtsync.core.seqacks`). Wire version 2 only (the header's sequence field, 1); in
    version 1 an offer from a holder of the doc counts as one."""


HANDOFF_NOT_COVERED = 0
HANDOFF_COVERED = 1
HANDOFF_NOT_HOLDER = 2


@dataclass(frozen=True, slots=True)
class HandoffAck:
    """The holder's answer per offered doc: `HANDOFF_COVERED` (its state now covers the offer's),
    `HANDOFF_NOT_COVERED` (send again against the state given here) or `HANDOFF_NOT_HOLDER` (this node
    does not hold that doc in its view: offer it elsewhere)."""

    node_id: str
    entries: tuple[tuple[str, int, bytes], ...]
    """(doc id, status, the holder's encoded state vector)."""


@dataclass(frozen=True, slots=True)
class SeqAck:
    """Sent by a subscriber to a publisher once its store has committed (see `crdtsync.core.seqacks`):
    it holds, applied and stored, every delta of the publisher's incarnation `epoch` numbered
    `from_seq..through_seq` of the docs it holds in the member view `view` (the numbers of other docs
    count in). What a writer's `write_acks` waits for: no question per write."""

    node_id: str
    epoch: int
    from_seq: int
    through_seq: int
    view: int
    """A 32-bit digest of the member view that decides holding (`Holding.view_digest`): the writer
    trusts the ack for a doc only when its own view is the same, so that both agree on its holders."""


Message = (
    Hello
    | HelloAck
    | Deltas
    | Heartbeat
    | RetransmitRequest
    | RetransmitGone
    | SyncRequest
    | SyncResponse
    | SyncPush
    | TreeRoot
    | TreeBranches
    | TreeSegmentsRequest
    | TreeSegments
    | TreeCells
    | TreeLeavesRequest
    | TreeLeaves
    | TreeEntriesRequest
    | TreeEntries
    | Members
    | Relayed
    | Ephemeral
    | HandoffOffer
    | HandoffAck
    | ChunkRequest
    | ChunkReply
    | ForwardRequest
    | ForwardReply
    | LoadSummaries
    | SeqIndex
    | SeqAck
)
