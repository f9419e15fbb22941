"""The per-doc follower cap when several nodes want the same doc at once (issue 14), in the
simulator: one datacenter of 6 nodes, rf 1, a cap of 2. Five nodes start reading a doc at the same
moment, all over the budget: never more than 2 follow it at any moment, and none is started only to
be stopped. Then two other docs read only by the nodes that come last in their order: they still
gain their followers, once the summaries of the nodes ahead say those do not read them (within 40
s: a few gossip rounds of 5 s in one datacenter). Short timers; the seed is printed and replays."""

from __future__ import annotations

import os
import random

from crdtsync.core.adaptive import FollowOrder
from crdtsync.core.placement import PlacementPolicy, PlacementRule
from crdtsync.core.replica import Replica, ReplicaConfig
from crdtsync.sim import SimCluster, SimConfig

CAP = 2
SHORT = ReplicaConfig(
    load_half_life_ms=1_000.0, follow_reads_per_s=10.0, follow_cool_down_ms=3_000.0, followers_per_doc_max=CAP
)


def _replicas(cluster: SimCluster) -> list[Replica]:
    return [node.replica for node in cluster.nodes if node.replica is not None]


def _followers(cluster: SimCluster, doc_id: str) -> list[str]:
    return [replica.node_id for replica in _replicas(cluster) if doc_id in replica.load.following]


def _read(cluster: SimCluster, readers: list[Replica], doc_id: str, start_ms: float, until_ms: float) -> int:
    """Each reader reads `doc_id` 60 times a second from `start_ms` to `until_ms`; the most followers
    seen at once."""
    most, now_ms = 0, start_ms
    while now_ms < until_ms:
        now_ms += 50.0
        cluster.advance(now_ms)
        for replica in readers:
            replica.load.table.count("read", doc_id, replica.dc, now_ms, 3.0)
        most = max(most, len(_followers(cluster, doc_id)))
    return most


def test_nodes_that_want_a_doc_at_once_never_pass_the_cap_and_the_last_in_order_still_follow() -> None:
    seed = int(os.environ.get("CRDTSYNC_SIM_SEED", random.randrange(1 << 30)))
    print(f"seed {seed} (replay: CRDTSYNC_SIM_SEED={seed})")
    config = SimConfig(
        seed=seed, nodes=6, docs=40, ops=0, faults=frozenset(), placement=PlacementPolicy((PlacementRule(1),)),
        replica=SHORT,
    )  # fmt: skip
    cluster = SimCluster(config)
    cluster.start_nodes()
    cluster.advance(3_000.0)
    for op in range(3):
        cluster.schedule_op(3_000.0 + op, op, op, op)
    cluster.advance(4_000.0)

    everyone = [r for r in _replicas(cluster) if not r.holds("doc-0")]
    most = _read(cluster, everyone, "doc-0", 4_000.0, 20_000.0)
    followers = _followers(cluster, "doc-0")
    print(f"doc-0: {len(everyone)} readers, followers {followers}, at most {most} at once")
    assert most <= CAP, f"seed {seed}: {most} followers at once, over the cap of {CAP}"
    assert len(followers) == CAP, f"seed {seed}: {followers}"
    stopped = sum(r.counters.follows_stopped for r in _replicas(cluster))
    assert stopped == 0, f"seed {seed}: {stopped} followers started only to stop"

    # The nodes last in a doc's order: the ones ahead never read it, and their summaries say so.
    for doc_id in ("doc-1", "doc-2"):
        replica = _replicas(cluster)[0]
        order = FollowOrder(replica.membership, replica._holding)(doc_id)
        last = [r for r in _replicas(cluster) if r.node_id in order[-CAP:]]
        most = _read(cluster, last, doc_id, cluster.now_ms, cluster.now_ms + 40_000.0)
        followers = _followers(cluster, doc_id)
        print(f"{doc_id}: order {order}, followers {followers}")
        assert sorted(followers) == sorted(r.node_id for r in last), f"seed {seed}: {doc_id} {followers}"
        assert most <= CAP
