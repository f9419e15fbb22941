"""The JSON of `GET /v1/status`: a node's status, mapped one section at a time (the node itself,
its peers, the members it knows of, each datacenter and its counters)."""

from __future__ import annotations

from collections.abc import Mapping

from crdtsync.core.placement import ClusterPlacement, DocPlacement, ReplicationFactor
from crdtsync.core.status import DcStatus, MemberStatus, PeerStatus
from crdtsync.daemon.config import DaemonConfig, is_loopback, parse_http_listen
from crdtsync.node import NodeStatus

Json = dict[str, object]


def status_json(
    status: NodeStatus,
    *,
    uptime_s: float,
    http_listen: str,
    merkle_root: bytes,
    warnings: list[Json] | None = None,
) -> Json:
    """The whole answer of `GET /v1/status` (`uptime_s` is rounded to the millisecond; `warnings`
    from `config_warnings`)."""
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
        "hinted_docs": status.hinted_docs,
        "hinted_bytes": status.hinted_bytes,
        "hints_overdue": status.hints_overdue,
        "weight": status.weight,
        "weight_configured": status.weight_configured,
        "store": status.store,
        "durability": status.durability,
        "merkle_root": merkle_root.hex(),
        "peers": [peer_json(peer) for peer in status.peers],
        "members": [member_json(member) for member in status.members],
        "datacenters": [datacenter_json(dc) for dc in status.datacenters],
        "counters": status.counters.as_dict(),
        "warnings": list(warnings or []),
    }


def config_warnings(config: DaemonConfig) -> list[Json]:
    """What the daemon's configuration leaves open or fragile, as `{"code", "message"}` objects (the
    `warnings` of `GET /v1/status`; the daemon logs the same at start)."""
    warnings: list[Json] = []

    def warn(code: str, message: str) -> None:
        warnings.append({"code": code, "message": message})

    if config.node.curve is None:
        warn(
            "plaintext_links",
            "replication links are in plaintext (security.mode = plaintext): anyone who can reach the "
            "replication ports can read and write every doc",
        )
    host, _ = parse_http_listen(config.http.listen)
    if not config.tokens:
        warn(
            "no_tokens",
            f"the HTTP API has no tokens (http.tokens_file is not set): anyone who can reach "
            f"{config.http.listen} can read and write every doc",
        )
    elif not config.http.tls_cert and not is_loopback(host):
        warn(
            "http_without_tls",
            f"the HTTP API listens on {config.http.listen} without TLS (http.tls_cert): bearer tokens "
            "and data cross the network in clear",
        )
    if config.node.data_dir is None:
        warn("memory_store", "the store is in memory (no data_dir): every doc is lost when the process exits")
    elif config.node.durability == "none":
        warn(
            "durability_none", "durability is none: acknowledged writes may be lost if the process is killed"
        )
    return warnings


def peer_json(peer: PeerStatus) -> Json:
    return {
        "address": peer.address,
        "node_id": peer.node_id,
        "dc": peer.dc,
        "state": peer.state,
        "epoch": peer.epoch,
        "subscribed": peer.subscribed,
        "wire_version": peer.wire_version,
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
        "weight": member.weight,
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


def _rf_json(rf: ReplicationFactor) -> object:
    """A replication factor as JSON: a number, "all", or an object of datacenter -> number."""
    return dict(rf) if isinstance(rf, Mapping) else rf


def placement_json(placement: DocPlacement) -> Json:
    """The answer of `GET /v1/placement/{doc}`."""
    return {
        "doc": placement.doc_id,
        "partition": placement.partition,
        "prefix": placement.prefix,
        "rf": _rf_json(placement.rf),
        "version": placement.version,
        "replicas": {
            dc: [{"node_id": r.node_id, "state": r.state} for r in placed]
            for dc, placed in placement.replicas.items()
        },
        "enforced": placement.enforced,
    }


def cluster_placement_json(placement: ClusterPlacement, status: NodeStatus) -> Json:
    """The answer of `GET /v1/placement`, with this node's hints (docs waiting for a holder)."""
    return {
        "partitions": placement.partitions,
        "rf": _rf_json(placement.rf),
        "version": placement.version,
        "partitions_per_node": dict(placement.partitions_per_node),
        "imbalance": dict(placement.imbalance_by_dc),
        "enforced": placement.enforced,
        "hinted_docs": status.hinted_docs,
        "hinted_bytes": status.hinted_bytes,
        "hints_overdue": status.hints_overdue,
    }
