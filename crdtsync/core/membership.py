"""Cluster membership: who is in the cluster, where, and whether they look alive. Sans-IO.

Every node keeps a table of members (node id, datacenter, advertised addresses, incarnation,
heartbeat counter, left flag). A node bumps its own heartbeat counter on a timer and spreads the
whole table by push-pull gossip to one peer at a time, so a node started with a single seed learns
everybody and everybody learns it. A record with a higher (incarnation, left, heartbeat) replaces a
lower one: a restart comes back with a higher incarnation (the node's epoch), a graceful leave wins
over the same incarnation's heartbeats, and a newer heartbeat is evidence that the member lives.

Failure detection is phi-accrual (Hayashibara et al., as in Akka and Cassandra): every piece of
evidence of life (any frame from the member, or a higher heartbeat counter in gossip, which is how
members without a direct link are observed) is an arrival; phi grows with the silence since the
last one, relative to the distribution of past inter-arrival times. Phi at or above
`phi_suspect` makes a member suspect; suspect for `down_after_suspect_ms` makes it down; any new
evidence makes it alive again.

Relays are chosen without an election: the members of a datacenter with the highest rendezvous hash
among those not down, down to the `relays_per_dc`-th alive one (a suspect relay has a stand-in).
Every node computes the same set from the same view.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import heapq
import math
from collections import deque
from dataclasses import dataclass, field
from typing import Literal

from crdtsync.core.wire import MemberEntry

Liveness = Literal["alive", "suspect", "down", "left"]


@dataclass(frozen=True, slots=True)
class MembershipConfig:
    gossip_interval_ms: float = 1000.0
    """Mean time between gossip exchanges with one peer (jittered by +-25%)."""
    phi_suspect: float = 8.0
    """Phi at which a member becomes suspect (8: about one false suspicion in 10^8 heartbeats if
    arrivals were normally distributed as observed)."""
    down_after_suspect_ms: float = 2000.0
    """How long a member stays suspect, without evidence of life, before it is down."""
    acceptable_pause_ms: float = 1500.0
    """Added to the mean inter-arrival time: a silence this much longer than usual is not yet
    suspicious (covers the switch from dense traffic to idle heartbeats)."""
    min_std_deviation_ms: float = 200.0
    """Floor of the inter-arrival standard deviation, so very regular arrivals do not make phi
    explode at the first small delay."""
    samples_max: int = 200
    """Inter-arrival samples kept per member."""
    members_max: int = 1024
    relays_per_dc: int = 1
    """Nodes of each datacenter that subscribe across the WAN and republish into their datacenter
    (while one of them is suspect, the member that would replace it stands in beside it)."""
    forget_left_ms: float = 600_000.0
    """How long a member that left is remembered (so gossip does not bring it back) before it is forgotten."""


class PhiDetector:
    """Phi-accrual failure detector over one member's arrival times (bounded sample window)."""

    __slots__ = ("_sample_ms_max", "_samples", "_sum", "_sum_squares", "last_ms")

    def __init__(
        self, samples_max: int, first_interval_ms: float, now_ms: float, sample_ms_max: float
    ) -> None:
        # Seeded with two samples around the expected interval so that phi is defined from the start.
        self._samples: deque[float] = deque(maxlen=samples_max)
        self._sum = 0.0
        self._sum_squares = 0.0
        self._sample_ms_max = sample_ms_max
        self.last_ms = now_ms
        for sample in (first_interval_ms * 0.75, first_interval_ms * 1.25):
            self._add(sample)

    def _add(self, interval_ms: float) -> None:
        if len(self._samples) == self._samples.maxlen:
            old = self._samples[0]
            self._sum -= old
            self._sum_squares -= old * old
        self._samples.append(interval_ms)
        self._sum += interval_ms
        self._sum_squares += interval_ms * interval_ms

    def heard(self, now_ms: float) -> None:
        interval = now_ms - self.last_ms
        if interval <= 0:
            return
        self.last_ms = now_ms
        # A pause (a stopped process, a partition) is not the member's rhythm: learned in full it
        # would slow detection for as long as it stays among the samples. The cap follows the
        # rhythm, so that members seen only through gossip (seconds apart, irregular) keep theirs.
        self._add(min(interval, max(self._sample_ms_max, 4.0 * self._sum / len(self._samples))))

    def _mean_std(self, config: MembershipConfig) -> tuple[float, float]:
        count = len(self._samples)
        mean = self._sum / count
        variance = max(0.0, self._sum_squares / count - mean * mean)
        return mean, max(math.sqrt(variance), config.min_std_deviation_ms)

    def suspect_at_ms(self, config: MembershipConfig) -> float:
        """When phi will reach `config.phi_suspect` if nothing is heard before: the exact moment to
        look again, so that an idle node does not poll its detectors."""
        mean, std = self._mean_std(config)
        return self.last_ms + mean + config.acceptable_pause_ms + _threshold_y(config.phi_suspect) * std

    def phi(self, now_ms: float, config: MembershipConfig) -> float:
        mean, std = self._mean_std(config)
        elapsed = now_ms - self.last_ms
        # Logistic approximation of the normal CDF (the one Akka uses); stays finite for large y.
        y = (elapsed - (mean + config.acceptable_pause_ms)) / std
        if y < -10:  # far below the mean: phi is 0, and exp would overflow
            return 0.0
        e = math.exp(-y * (_LOGISTIC_A + _LOGISTIC_B * y * y))
        tail = e / (1.0 + e) if y > 0 else 1.0 - 1.0 / (1.0 + e)
        return -math.log10(max(tail, 1e-300))


_LOGISTIC_A = 1.5976
_LOGISTIC_B = 0.070566


@functools.cache
def _threshold_y(phi: float) -> float:
    """The standardized silence y at which phi (through the logistic approximation used by `phi`)
    equals `phi`: the real root of b*y^3 + a*y + ln(p / (1 - p)) = 0 with p = 10^-phi (Cardano;
    the cubic has one real root because a and b are positive)."""
    tail = 10.0**-phi
    if tail >= 0.5:
        return 0.0
    p_coefficient = _LOGISTIC_A / _LOGISTIC_B
    q_coefficient = math.log(tail / (1.0 - tail)) / _LOGISTIC_B
    root = math.sqrt(q_coefficient * q_coefficient / 4.0 + p_coefficient**3 / 27.0)
    return math.cbrt(-q_coefficient / 2.0 + root) + math.cbrt(-q_coefficient / 2.0 - root)


def _order(record: MemberEntry) -> tuple[int, bool, int]:
    """Records compare by incarnation, then a leave, then the heartbeat counter."""
    return (record.incarnation, record.left, record.heartbeat)


def _identity(record: MemberEntry) -> tuple[object, ...]:
    """What only the member itself may say of itself (gossip may only add heartbeats)."""
    return (
        record.dc,
        record.address,
        record.publish_endpoint,
        record.incarnation,
        record.left,
        record.zone,
        record.weight,
    )


@dataclass(slots=True)
class Member:
    record: MemberEntry
    detector: PhiDetector
    liveness: Liveness = "alive"
    liveness_since_ms: float = 0.0
    suspicions: int = 0
    """Times this member went from alive to suspect (how often it looked failed)."""
    downs: int = 0
    direct: bool = False
    """Its record came from the member itself (a hello, or its own entry in its gossip): from then
    on, while it looks alive, others' gossip can only add heartbeats of that incarnation, never
    change where it is, its datacenter, its incarnation or whether it left. (Once it is suspect or
    down, gossip may again say it left or restarted: its own word may have been lost.)"""


@dataclass(frozen=True, slots=True)
class LivenessChange:
    node_id: str
    dc: str
    before: Liveness
    after: Liveness


def rendezvous_score(dc: str, node_id: str) -> bytes:
    return hashlib.blake2b(f"{dc}\x00{node_id}".encode(), digest_size=8).digest()


@dataclass(slots=True)
class Membership:
    """The member table of one node (`own` is this node's own record, kept current by its owner)."""

    own: MemberEntry
    config: MembershipConfig
    expected_interval_ms: float
    """The heartbeat interval: the detector's prior for a member not heard from yet."""
    members: dict[str, Member] = field(default_factory=dict)
    rejected_full: int = 0
    rejected_indirect: int = 0
    """Gossiped records that contradicted what a member said of itself (ignored)."""
    _due_ms: dict[str, float] = field(default_factory=dict)
    """When `evaluate` must look at each member next (`_member_due_ms`). The driver asks for the
    earliest after every pump; a scan of the table there would cost O(members) per frame."""
    _due_heap: list[tuple[float, str]] = field(default_factory=list)
    """The same times as a heap; entries that no longer match `_due_ms` are dropped lazily."""
    revision: int = 0
    """Bumped by every change of the table (a record, a liveness, a leave): what depends on the
    members (placement) recomputes only when it moved."""

    # ------------------------------------------------------------------ own record

    def beat(self) -> None:
        self.own = dataclasses.replace(self.own, heartbeat=self.own.heartbeat + 1)

    def leave(self) -> None:
        self.revision += 1
        self.own = dataclasses.replace(self.own, heartbeat=self.own.heartbeat + 1, left=True)

    def records(self) -> list[MemberEntry]:
        """Every record this node would gossip, its own first."""
        return [self.own, *(member.record for member in self.members.values())]

    # ------------------------------------------------------------------ learning

    def merge(self, record: MemberEntry, now_ms: float, *, direct: bool = False) -> tuple[bool, bool]:
        """Take a record, announced by the member itself (`direct`) or gossiped by another node.
        Returns (changed, evidence of life)."""
        if record.node_id == self.own.node_id:
            return False, False  # only the node itself speaks for itself
        member = self.members.get(record.node_id)
        if member is not None and member.direct and member.liveness == "alive" and not direct:
            current = member.record
            if _identity(record) != _identity(current):
                self.rejected_indirect += 1
                return False, False
        if member is None:
            if len(self.members) >= self.config.members_max:
                self.rejected_full += 1
                return False, False
            member = Member(
                record,
                self._detector(now_ms),
                "left" if record.left else "alive",
                now_ms,
                direct=direct,
            )
            self.members[record.node_id] = member
            self._schedule(member)
            self.revision += 1
            return True, not record.left
        # What a member says of itself replaces whatever gossip said before, newer or not.
        first_direct = direct and not member.direct
        member.direct = member.direct or direct
        if first_direct:
            self.revision += 1
        if _order(record) <= _order(member.record) and not first_direct:
            return False, False
        self.revision += 1
        newer_incarnation = record.incarnation != member.record.incarnation
        member.record = record
        if record.left:
            member.liveness = "left"
            member.liveness_since_ms = now_ms
            self._schedule(member)
            return True, False
        if newer_incarnation:
            member.detector = self._detector(now_ms)
        if (newer_incarnation or first_direct) and member.liveness == "left":
            member.liveness = "alive"  # it rejoined, or only gossip had said it left
            member.liveness_since_ms = now_ms
        self._schedule(member)
        return True, True

    def heard(self, node_id: str, now_ms: float) -> LivenessChange | None:
        """Direct or gossiped evidence that `node_id` lives."""
        member = self.members.get(node_id)
        if member is None or member.liveness == "left":
            return None
        member.detector.heard(now_ms)
        change = self._set(member, "alive", now_ms) if member.liveness != "alive" else None
        self._schedule(member)
        return change

    def next_change_ms(self) -> float:
        """The earliest moment `evaluate` can find something to change (inf: never, as things stand)."""
        heap, due = self._due_heap, self._due_ms
        while heap and due.get(heap[0][1]) != heap[0][0]:
            heapq.heappop(heap)
        return heap[0][0] if heap else math.inf

    def evaluate(self, now_ms: float) -> list[LivenessChange]:
        """Advance alive -> suspect -> down for members whose silence has grown; forget old leavers.
        Looks only at members whose time has come, in time order."""
        changes: list[LivenessChange] = []
        while self.next_change_ms() <= now_ms:
            _due, node_id = heapq.heappop(self._due_heap)
            del self._due_ms[node_id]
            member = self.members[node_id]
            # Recomputed, not trusted: the member may have changed without being rescheduled.
            if now_ms >= self._member_due_ms(member):
                if member.liveness == "left":
                    del self.members[node_id]
                    self.revision += 1
                    continue
                if member.liveness == "alive":
                    member.suspicions += 1
                    changes.append(self._set(member, "suspect", now_ms))
                elif member.liveness == "suspect":
                    member.downs += 1
                    changes.append(self._set(member, "down", now_ms))
            self._schedule(member)
        return changes

    def forgive_silence(self, now_ms: float) -> None:
        """This node itself was not running (a stopped process, a stalled loop): the silence of its
        peers over that time says nothing about them. Restart every detector's clock, learning nothing."""
        for member in self.members.values():
            member.detector.last_ms = max(member.detector.last_ms, now_ms)
            self._schedule(member)

    def _member_due_ms(self, member: Member) -> float:
        # `evaluate` acts at exactly this moment: one expression for both, or rounding between two
        # would make the driver wake at a time when nothing changes, and spin.
        if member.liveness == "alive":
            return member.detector.suspect_at_ms(self.config)
        if member.liveness == "suspect":
            return member.liveness_since_ms + self.config.down_after_suspect_ms
        if member.liveness == "left":
            return member.liveness_since_ms + self.config.forget_left_ms
        return math.inf  # down: only new evidence changes it

    def _schedule(self, member: Member) -> None:
        node_id = member.record.node_id
        due = self._member_due_ms(member)
        if self._due_ms.get(node_id) == due:
            return
        if due == math.inf:
            self._due_ms.pop(node_id, None)
            return
        self._due_ms[node_id] = due
        heapq.heappush(self._due_heap, (due, node_id))
        if len(self._due_heap) > 2 * len(self._due_ms) + 64:
            # Every frame from a member pushes a new time: rebuild before stale entries pile up.
            self._due_heap = [(at, key) for key, at in self._due_ms.items()]
            heapq.heapify(self._due_heap)

    def _detector(self, now_ms: float) -> PhiDetector:
        return PhiDetector(
            self.config.samples_max,
            self.expected_interval_ms,
            now_ms,
            self.expected_interval_ms + self.config.acceptable_pause_ms,
        )

    def _set(self, member: Member, liveness: Liveness, now_ms: float) -> LivenessChange:
        self.revision += 1
        change = LivenessChange(member.record.node_id, member.record.dc, member.liveness, liveness)
        member.liveness = liveness
        member.liveness_since_ms = now_ms
        return change

    # ------------------------------------------------------------------ topology

    def relays(self, dc: str) -> list[str]:
        """The relays of datacenter `dc`, by rendezvous hash among members that are neither down nor
        gone (this node counts as alive in its own view): the highest-scoring members down to the
        `relays_per_dc`-th alive one. A suspect relay keeps its role until it is down, and the member
        that would replace it stands in beside it meanwhile, so a datacenter is cut off from the
        others for the time to suspect a failed relay, not that time plus `down_after_suspect_ms`;
        a false suspicion costs a second relay for a while, no gap. In this node's own datacenter only
        members it has heard from themselves count: every real one is linked directly (a full mesh),
        and a member known only from gossip may be made up."""
        own_dc = self.own.dc == dc
        candidates = [self.own.node_id] if own_dc and not self.own.left else []
        candidates += [
            node_id
            for node_id, member in self.members.items()
            if member.record.dc == dc
            and member.liveness in ("alive", "suspect")
            and (member.direct or not own_dc)
        ]
        candidates.sort(key=lambda node_id: rendezvous_score(dc, node_id), reverse=True)
        chosen: list[str] = []
        alive = 0
        for node_id in candidates:
            if alive == self.config.relays_per_dc:
                break
            chosen.append(node_id)
            member = self.members.get(node_id)
            if member is None or member.liveness == "alive":  # None: this node itself
                alive += 1
        return chosen

    def is_relay(self) -> bool:
        return self.own.node_id in self.relays(self.own.dc)

    def dc_of(self, node_id: str) -> str | None:
        if node_id == self.own.node_id:
            return self.own.dc
        member = self.members.get(node_id)
        return None if member is None else member.record.dc

    def newer_than(self, records: list[MemberEntry], peer_dc: str) -> bool:
        """True when this table knows something `records` (the table of a peer in `peer_dc`) lacks
        or has older. Newer heartbeat counters of members in the peer's own datacenter do not count:
        it has a direct link to each of them (a full mesh) and hears them itself."""
        theirs = {record.node_id: record for record in records}
        for record in self.records():
            known = theirs.get(record.node_id)
            if known is None or (known.incarnation, known.left) < (record.incarnation, record.left):
                return True
            if record.dc != peer_dc and known.heartbeat < record.heartbeat:
                return True
        return False

    def spans_datacenters(self) -> bool:
        """Whether any known member is in another datacenter than this node."""
        return any(member.record.dc != self.own.dc for member in self.members.values())
