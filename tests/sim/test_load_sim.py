"""Load summaries in the simulator (adaptive replication): a node's hot docs and load reach every
member of both datacenters with the membership gossip (relays carry them across), and only current
members' summaries are kept."""

from __future__ import annotations

from crdtsync.core.replica import Replica
from crdtsync.sim import SimCluster, SimConfig

SEED = 21


def _replicas(cluster: SimCluster) -> list[Replica]:
    return [node.replica for node in cluster.nodes if node.replica is not None]


def test_every_member_learns_every_nodes_hot_docs_and_load() -> None:
    print(f"seed {SEED}")
    cluster = SimCluster(SimConfig(seed=SEED, nodes=6, datacenters=2, docs=4, ops=0, faults=frozenset()))
    cluster.start_nodes()
    cluster.advance(3_000.0)
    replicas = _replicas(cluster)
    reader = replicas[0]
    for step in range(200):  # 20 reads a second of one doc for 10 s, and a little CPU
        now_ms = 3_000.0 + step * 50.0
        cluster.advance(now_ms)
        reader.load.read("models/hot", now_ms)
        reader.load.busy(0.01, now_ms)
    cluster.advance(30_000.0)
    for replica in replicas[1:]:
        known = replica.load.received.get(reader.node_id)
        assert known is not None, f"{replica.node_id} ({replica.dc}) never heard of {reader.node_id}'s load"
        summary = known[0]
        assert summary.docs and summary.docs[0].doc_id == "models/hot"
        assert summary.docs[0].of("read")[reader.dc] > 0
        assert summary.load_cores > 0
    assert {r.dc for r in replicas} == {"dc0", "dc1"}
    views = [replica.load.view(cluster.now_ms) for replica in replicas]
    assert all(len(view) == len(replicas) for view in views), [len(view) for view in views]
