"""Followers decided on a datacenter's reads (issue 14: "when a doc's read rate from a datacenter
exceeds a per-replica budget, a node of that datacenter becomes a follower"), in the simulator: one
datacenter of 6 nodes, rf 1, a budget of 10 reads/s. Three nodes that do not hold a doc read it at
8, 3 and 3 reads/s: none over the budget alone, 14 together. The one reading most follows it, and
only it (the other two forward 6 reads/s, under the budget); it stops a cool-down after the reads
stop (and after the others' summaries say they stopped: up to a few gossip rounds, 5 s each in
one datacenter). Short timers; the seed is printed and replays."""

from __future__ import annotations

import os
import random

from crdtsync.core.placement import PlacementPolicy, PlacementRule
from crdtsync.core.replica import Replica, ReplicaConfig
from crdtsync.sim import SimCluster, SimConfig

SHORT = ReplicaConfig(load_half_life_ms=1_000.0, follow_reads_per_s=10.0, follow_cool_down_ms=5_000.0)
DOC_ID = "doc-0"


def _replicas(cluster: SimCluster) -> list[Replica]:
    return [node.replica for node in cluster.nodes if node.replica is not None]


def _followers(cluster: SimCluster) -> list[str]:
    return [replica.node_id for replica in _replicas(cluster) if DOC_ID in replica.load.following]


def test_readers_each_under_the_budget_but_over_it_together_make_one_follower_the_one_reading_most() -> None:
    seed = int(os.environ.get("CRDTSYNC_SIM_SEED", random.randrange(1 << 30)))
    print(f"seed {seed} (replay: CRDTSYNC_SIM_SEED={seed})")
    config = SimConfig(
        seed=seed, nodes=6, docs=8, ops=0, faults=frozenset(), placement=PlacementPolicy((PlacementRule(1),)),
        replica=SHORT,
    )  # fmt: skip
    cluster = SimCluster(config)
    cluster.start_nodes()
    cluster.advance(3_000.0)
    readers = [r for r in _replicas(cluster) if not r.holds(DOC_ID)][:3]
    rates = dict(zip((r.node_id for r in readers), (8.0, 3.0, 3.0), strict=True))
    most, now_ms = 0, 3_000.0
    while now_ms < 43_000.0:
        now_ms += 50.0
        cluster.advance(now_ms)
        for replica in readers:
            replica.load.table.count("read", DOC_ID, replica.dc, now_ms, rates[replica.node_id] / 20.0)
        most = max(most, len(_followers(cluster)))
    print(f"reads/s {rates}: followers {_followers(cluster)}, at most {most} at once")
    assert _followers(cluster) == [readers[0].node_id], f"seed {seed}: {_followers(cluster)}"
    assert most == 1, f"seed {seed}: {most} followers at once"
    assert sum(r.counters.follows_stopped for r in _replicas(cluster)) == 0, f"seed {seed}"

    # The reads stop: the datacenter's rate falls under half the budget, then the cool-down.
    cluster.advance(now_ms + 3_000.0)
    assert _followers(cluster) == [readers[0].node_id], f"seed {seed}: dropped before the cool-down"
    cluster.advance(now_ms + 30_000.0)
    assert _followers(cluster) == [], f"seed {seed}: still followed after the cool-down"
