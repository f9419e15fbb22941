"""The JSON of `GET /v1/status`: a node's status, mapped one section at a time (the node itself,
its peers, the members it knows of, each datacenter and its counters)."""

from __future__ import annotations

from collections.abc import Mapping

from crdtsync.core.placement import ClusterPlacement, DocPlacement
from crdtsync.core.status import DcStatus, MemberStatus, PeerStatus
from crdtsync.node import NodeStatus

Json = dict[str, object]


def status_json(status: NodeStatus, *, uptime_s: float, http_listen: str, merkle_root: bytes) -> Json:
    """The whole answer of `GET /v1/status` (`uptime_s` is rounded to the millisecond)."""
    return {
        "node_id": status.node_id,
        "dc": status.dc,
        "relay": status.relay,
        "epoch": status.epoch,
        "uptime_s": round(uptime_s, 3),
        "listen": status.listen,
        "publish": status.publish_endpoint,
        "http": http_listen,
        "docs": status.docs,
        "published_updates": status.published_updates,
        "pending_updates": status.pending_updates,
        "store": status.store,
        "durability": status.durability,
        "merkle_root": merkle_root.hex(),
        "peers": [peer_json(peer) for peer in status.peers],
        "members": [member_json(member) for member in status.members],
        "datacenters": [datacenter_json(dc) for dc in status.datacenters],
        "counters": status.counters.as_dict(),
    }


def peer_json(peer: PeerStatus) -> Json:
    return {
        "address": peer.address,
        "node_id": peer.node_id,
        "dc": peer.dc,
        "state": peer.state,
        "epoch": peer.epoch,
        "subscribed": peer.subscribed,
        "last_heard_ago_ms": peer.last_heard_ago_ms,
        "behind_updates": peer.behind_updates,
        "lag_ms": peer.lag_ms,
        "anti_entropy": {
            "rounds": peer.ae_rounds,
            "last_round_ago_ms": peer.ae_last_round_ago_ms,
            "docs_repaired": peer.ae_docs_repaired,
            "bytes_repaired": peer.ae_bytes_repaired,
            "divergence": peer.ae_divergence,
            "in_progress": peer.ae_in_progress,
        },
    }


def member_json(member: MemberStatus) -> Json:
    return {
        "node_id": member.node_id,
        "dc": member.dc,
        "address": member.address,
        "incarnation": member.incarnation,
        "state": member.state,
        "state_for_ms": member.state_for_ms,
        "last_seen_ago_ms": member.last_seen_ago_ms,
        "phi": member.phi,
        "relay": member.relay,
        "suspicions": member.suspicions,
        "downs": member.downs,
    }


def datacenter_json(dc: DcStatus) -> Json:
    return {
        "dc": dc.dc,
        "members": dc.members,
        "alive": dc.alive,
        "relays": list(dc.relays),
        "behind_updates": dc.behind_updates,
        "lag_ms": dc.lag_ms,
        "frames_in": dc.frames_in,
        "bytes_in": dc.bytes_in,
        "frames_out": dc.frames_out,
        "bytes_out": dc.bytes_out,
        "failures": dc.failures,
    }


def placement_json(placement: DocPlacement) -> Json:
    """The answer of `GET /v1/placement/{doc}`."""
    return {
        "doc": placement.doc_id,
        "partition": placement.partition,
        "prefix": placement.prefix,
        "rf": dict(placement.rf) if isinstance(placement.rf, Mapping) else placement.rf,
        "version": placement.version,
        "replicas": {
            dc: [{"node_id": r.node_id, "state": r.state} for r in placed]
            for dc, placed in placement.replicas.items()
        },
        "enforced": False,
    }


def cluster_placement_json(placement: ClusterPlacement) -> Json:
    """The answer of `GET /v1/placement`."""
    return {
        "partitions": placement.partitions,
        "rf": dict(placement.rf) if isinstance(placement.rf, Mapping) else placement.rf,
        "version": placement.version,
        "partitions_per_node": dict(placement.partitions_per_node),
        "imbalance": dict(placement.imbalance_by_dc),
        "enforced": False,
    }
