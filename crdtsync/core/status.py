"""Point-in-time views of a replica: its peers, the members it knows and each datacenter."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from crdtsync.core.context import Context, DcTraffic
from crdtsync.core.counters import Counters
from crdtsync.core.inbound import PublisherTrack
from crdtsync.core.links import Links, PeerState
from crdtsync.core.membership import Membership


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
    wire_version: int | None = None
    """The wire version of frames to the peer: the highest both speak (None: no hello from it yet)."""


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
    weight: float = 1.0
    """Its placement weight as its member record says: its configured weight, lowered by shedding."""


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
    published_updates: int
    """Local transactions this replica has published in this epoch."""
    pending_updates: int
    """Remote updates received but waiting for their causal dependencies."""
    peers: tuple[PeerStatus, ...]
    members: tuple[MemberStatus, ...]
    datacenters: tuple[DcStatus, ...]
    counters: Counters
    hinted_docs: int = 0
    """Docs this node has but does not hold (placement), waiting to be handed to a holder."""
    hinted_bytes: int = 0
    """Bytes of local writes to hinted docs no holder has confirmed yet (`hint_bytes_max`)."""
    hints_overdue: int = 0
    """Hinted docs no holder confirmed within `hint_window_ms` (kept)."""
    weight: float = 1.0
    """This node's placement weight now: `weight_configured`, lowered by shedding (docs/placement.md)."""
    weight_configured: float = 1.0


def peer_statuses(
    now_ms: float, links: Links, tracks: dict[str, PublisherTrack], round_address: str | None
) -> list[PeerStatus]:
    peers = []
    for link in links.by_address.values():
        track = tracks.get(link.node_id) if link.node_id else None
        behind = track.behind_updates if track is not None else 0
        lag_ms = 0.0
        if track is not None and track.behind_since_ms is not None:
            lag_ms = now_ms - track.behind_since_ms
        peers.append(
            PeerStatus(
                address=link.address,
                node_id=link.node_id,
                dc=links.dc(link),
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
                ae_in_progress=round_address == link.address,
                subscribed=link.subscribed,
                wire_version=link.wire_version,
            )
        )
    return peers


def member_statuses(now_ms: float, membership: Membership) -> list[MemberStatus]:
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
                weight=record.weight,
            )
        )
    members.sort(key=lambda m: (m.dc, m.node_id))
    return members


def dc_statuses(
    ctx: Context, membership: Membership, members: Sequence[MemberStatus], peers: Sequence[PeerStatus]
) -> list[DcStatus]:
    datacenters = []
    for dc in sorted({ctx.dc, *(m.dc for m in members), *ctx.dc_traffic}):
        own = dc == ctx.dc
        in_dc = [m for m in members if m.dc == dc]
        dc_peers = [p for p in peers if p.dc == dc]
        traffic = ctx.dc_traffic.get(dc, DcTraffic())
        datacenters.append(
            DcStatus(
                dc=dc,
                members=len(in_dc) + own,
                alive=sum(1 for m in in_dc if m.state in ("alive", "suspect")) + own,
                relays=tuple(membership.relays(dc)),
                behind_updates=sum(p.behind_updates for p in dc_peers),
                lag_ms=max((p.lag_ms for p in dc_peers), default=0.0),
                frames_in=traffic.frames_in,
                bytes_in=traffic.bytes_in,
                frames_out=traffic.frames_out,
                bytes_out=traffic.bytes_out,
                failures=traffic.failures,
            )
        )
    return datacenters
