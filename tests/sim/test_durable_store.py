"""The simulator's durable store is the node's: a `MemoryStore` of completed commits behind the same
`CommitQueue` as `StoreWriter`. Updates in flight are visible to doc loads and lost with a crash;
committed ones survive it, and what nothing waits on lingers before its group starts, as in
`StoreWriter`."""

from __future__ import annotations

import heapq
from typing import Any

from pycrdt import Doc, Map

from crdtsync.core.replica import ReplicaConfig
from crdtsync.sim import SimCluster, SimConfig
from crdtsync.sim.node import SimNode
from crdtsync.store.writer import COMMIT_LINGER_MS

SLOW_COMMITS = SimConfig(
    seed=5,
    nodes=2,
    docs=1,
    ops=0,
    durable=True,
    commit_ms=(1_000.0, 1_000.0),
    replica=ReplicaConfig(docs_cached_max=1),
)


def _started() -> tuple[SimCluster, SimNode]:
    cluster = SimCluster(SLOW_COMMITS)
    for node in cluster.nodes:
        cluster.schedule(0.0, "restart", node.index)  # starts a node that is down
    _advance(cluster, 0.0)
    node = cluster.nodes[0]
    assert node.replica is not None
    return cluster, node


def _advance(cluster: SimCluster, until_ms: float) -> None:
    """Run events up to `until_ms`, frames between the nodes dropped (nothing is repaired by peers)."""
    while cluster._heap and cluster._heap[0][0] <= until_ms:
        at, _seq, kind, payload = heapq.heappop(cluster._heap)
        cluster.now_ms = at
        if kind != "deliver":
            cluster._handle(kind, payload)


def _write(cluster: SimCluster, node: SimNode, doc_id: str, key: str) -> None:
    assert node.replica is not None
    cluster.open_doc(node.index, doc_id).get("data", type=Map)[key] = 1
    cluster._pump(node)


def _keys(update: bytes | None) -> set[str]:
    if update is None:
        return set()
    doc: Doc[Any] = Doc()
    doc.apply_update(update)
    return set(doc.get("data", type=Map).to_py() or {})


def test_a_load_sees_updates_still_on_their_way_to_the_store() -> None:
    cluster, node = _started()
    _write(cluster, node, "doc-0", "first")
    assert node.commits.pending_effects and node.store.load_doc("doc-0") is None
    # The doc cache holds one doc: opening another evicts doc-0 before its commit completed.
    _write(cluster, node, "doc-1", "other")
    assert node.replica is not None
    cluster._pump(node)
    assert node.replica.loaded_docs() == 1
    assert _keys(cluster.stores.load_doc(node, "doc-0")) == {"first"}
    loads = node.replica.counters.doc_loads
    doc = cluster.open_doc(node.index, "doc-0")
    assert node.replica.counters.doc_loads == loads + 1
    assert set(doc.get("data", type=Map).to_py() or {}) == {"first"}


def test_a_crash_loses_what_was_in_flight_and_keeps_what_was_committed() -> None:
    cluster, node = _started()
    _write(cluster, node, "doc-0", "committed")
    _advance(cluster, 1_500.0)  # the first commit starts after the linger and completes 1000 ms later
    assert _keys(node.store.load_doc("doc-0")) == {"committed"}
    _write(cluster, node, "doc-0", "in-flight")
    assert node.commits.pending_effects > 0
    assert _keys(cluster.stores.load_doc(node, "doc-0")) == {"committed", "in-flight"}

    cluster._handle("crash", node.index)
    assert node.commits.pending_effects == 0 and node.commits.group_id is None
    _advance(cluster, 3_000.0)  # the lost commit's event fires and is ignored
    assert _keys(node.store.load_doc("doc-0")) == {"committed"}
    cluster._handle("restart", node.index)
    assert node.replica is not None and node.replica.has_doc("doc-0")
    content = cluster.open_doc(node.index, "doc-0").get("data", type=Map).to_py() or {}
    assert set(content) == {"committed"}


def test_a_client_write_starts_its_group_at_once_and_what_nothing_waits_on_lingers() -> None:
    cluster, node = _started()
    cluster.schedule_op(cluster.now_ms, 0, node.index, 0)  # a client write: acknowledged on commit
    _advance(cluster, cluster.now_ms)
    assert node.waiting and node.commits.group_id is not None  # started at once, with no linger
    _advance(cluster, 1_500.0)
    assert node.commits.pending_effects == 0 and cluster.acknowledged

    _write(cluster, node, "doc-0", "unwaited")  # pumped with nothing waiting on it
    assert node.commits.pending_effects == 1 and node.commits.group_id is None
    started_ms = cluster.now_ms
    _advance(cluster, started_ms + COMMIT_LINGER_MS / 2)
    assert node.commits.group_id is None  # still lingering
    _advance(cluster, started_ms + COMMIT_LINGER_MS)
    assert node.commits.group_id is not None  # the linger ended: the group started
