"""The public surface is small and deliberate: this test pins it, so a change to it is a decision."""

from __future__ import annotations

import dataclasses
import inspect

import crdtsync
from crdtsync import (
    MemoryStore,
    Node,
    NodeConfig,
    NodeStatus,
    PeerStatus,
    Store,
    StoreDescription,
    StoreStats,
)


def test_exports_are_pinned() -> None:
    assert crdtsync.__all__ == [
        "CausalToken",
        "ClusterPlacement",
        "CurveConfig",
        "CurveKeyError",
        "DcStatus",
        "DocPlacement",
        "DocRecord",
        "DocState",
        "HintsFullError",
        "MemberStatus",
        "MembershipConfig",
        "MemoryStore",
        "Node",
        "NodeConfig",
        "NodeStatus",
        "NotCoveredError",
        "PeerStatus",
        "PlacedReplica",
        "PlacementPolicy",
        "PlacementRule",
        "ReplicaConfig",
        "Store",
        "StoreDescription",
        "StoreError",
        "StoreStats",
        "TokenError",
        "TooManyWaitersError",
        "WriteAcks",
        "WriteAcksTimeoutError",
    ]
    for name in crdtsync.__all__:
        assert getattr(crdtsync, name) is not None, name


def test_node_methods_are_pinned() -> None:
    public = {name for name, _ in inspect.getmembers(Node) if not name.startswith("_")}
    assert public == {
        "artifacts",
        "backup",
        "causal_token",
        "close",
        "cluster_placement",
        "placement",
        "digest",
        "doc_ids",
        "flush",
        "follows",
        "forwarding",
        "has_doc",
        "holds",
        "listen_ephemeral",
        "load_summaries",
        "merkle_root",
        "open",
        "publish_ephemeral",
        "release",
        "restore",
        "start",
        "status",
        "store_failure",
        "store_stats",
        "wait_for",
        "write_acks",
    }
    assert list(inspect.signature(Node).parameters) == ["config", "store"]
    assert inspect.signature(Node).parameters["store"].kind is inspect.Parameter.KEYWORD_ONLY
    for name in (
        "open",
        "flush",
        "start",
        "close",
        "backup",
        "restore",
        "causal_token",
        "wait_for",
        "write_acks",
    ):
        assert inspect.iscoroutinefunction(getattr(Node, name)), name
    for name in (
        "status",
        "store_failure",
        "store_stats",
        "doc_ids",
        "digest",
        "merkle_root",
        "release",
        "has_doc",
        "holds",
        "follows",
        "forwarding",
        "placement",
        "cluster_placement",
        "publish_ephemeral",
        "listen_ephemeral",
        "load_summaries",
    ):
        assert not inspect.iscoroutinefunction(getattr(Node, name)), name
    assert list(inspect.signature(Node.open).parameters) == ["self", "doc_id", "read"]
    assert inspect.signature(Node.open).parameters["read"].kind is inspect.Parameter.KEYWORD_ONLY
    assert list(inspect.signature(Node.flush).parameters) == ["self"]
    assert list(inspect.signature(Node.wait_for).parameters) == ["self", "doc_id", "token", "timeout_ms"]
    assert inspect.signature(Node.wait_for).parameters["timeout_ms"].kind is inspect.Parameter.KEYWORD_ONLY


def test_config_and_status_fields_are_pinned() -> None:
    assert [f.name for f in dataclasses.fields(NodeConfig)] == [
        "node_id",
        "listen",
        "peers",
        "publish",
        "data_dir",
        "durability",
        "replication",
        "curve",
        "dc",
        "membership",
        "placement",
        "advertise",
        "publish_advertise",
        "source_host",
        "zone",
        "weight",
        "leave_on_close",
    ]
    assert [f.name for f in dataclasses.fields(NodeStatus)] == [
        "node_id",
        "epoch",
        "listen",
        "publish_endpoint",
        "docs",
        "published_updates",
        "pending_updates",
        "peers",
        "counters",
        "dc",
        "relay",
        "members",
        "datacenters",
        "store",
        "durability",
        "hinted_docs",
        "hinted_bytes",
        "hints_overdue",
        "weight",
        "weight_configured",
    ]
    assert [f.name for f in dataclasses.fields(PeerStatus)] == [
        "address",
        "node_id",
        "dc",
        "state",
        "epoch",
        "last_heard_ago_ms",
        "behind_updates",
        "lag_ms",
        "ae_rounds",
        "ae_last_round_ago_ms",
        "ae_docs_repaired",
        "ae_bytes_repaired",
        "ae_divergence",
        "ae_in_progress",
        "subscribed",
        "wire_version",
    ]


def test_store_contract_and_stats_are_pinned() -> None:
    contract = {name for name in vars(Store) if not name.startswith("_")}
    assert contract == {"new_epoch", "docs", "load_doc", "append", "backup", "describe", "close"}
    for name in contract:
        assert callable(getattr(MemoryStore, name)), name
    assert [f.name for f in dataclasses.fields(StoreDescription)] == ["name", "durable", "lazy_loading"]
    assert [f.name for f in dataclasses.fields(StoreStats)] == [
        "store",
        "commits",
        "commit_failures",
        "commit_latency_counts",
        "commit_latency_sum_ms",
        "pending_effects",
        "load_errors",
        "failing",
    ]
