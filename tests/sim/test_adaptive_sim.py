"""Adaptive replication in the simulator, the issue's workload in small (issue 14): 3 datacenters
of 2 nodes, rf 1 per datacenter, Zipf(1.1) reads over 60 docs on every node with the hot set shifted
half way, and writes throughout. Followers appear on the non-holders of the hot docs (never more
than the per-doc cap once summaries crossed), the old hot docs lose theirs after the shift, every
follower goes once the reads stop, and then the placement invariants hold (every holder has every
write, no node keeps a doc it does not hold). Short timers; the seed is printed and replays."""

from __future__ import annotations

import os
import random

from crdtsync.core.placement import PlacementPolicy, PlacementRule
from crdtsync.core.replica import Replica, ReplicaConfig
from crdtsync.sim import SimCluster, SimConfig

DOCS = 60
NODES = 6
READS_PER_S = 80
"""Per node: the hottest doc gets about a fifth of them (16/s), over the budget of 10."""
PHASE_MS = 12_000.0
CAP = 2
SHORT = ReplicaConfig(
    load_half_life_ms=2_000.0,
    follow_reads_per_s=10.0,
    follow_cool_down_ms=4_000.0,
    followers_per_doc_max=CAP,
    handoff_grace_ms=2_000.0,
)


def _zipf_weights(count: int, exponent: float = 1.1) -> list[float]:
    return [1.0 / (rank**exponent) for rank in range(1, count + 1)]


def _replicas(cluster: SimCluster) -> list[Replica]:
    return [node.replica for node in cluster.nodes if node.replica is not None]


def _followers(cluster: SimCluster) -> dict[str, list[str]]:
    followed: dict[str, list[str]] = {}
    for replica in _replicas(cluster):
        for doc_id in replica.load.following:
            assert not replica.holds(doc_id), f"{replica.node_id} follows {doc_id}, which it holds"
            followed.setdefault(doc_id, []).append(replica.node_id)
    return followed


def _read_phase(cluster: SimCluster, rng: random.Random, ranking: list[str], start_ms: float) -> float:
    weights = _zipf_weights(len(ranking))
    now_ms = start_ms
    op = 1000 + int(start_ms)
    while now_ms < start_ms + PHASE_MS:
        now_ms += 50.0
        cluster.advance(now_ms)
        for replica in _replicas(cluster):
            for doc_id in rng.choices(ranking, weights, k=READS_PER_S // 20):
                replica.load.read(doc_id, now_ms)
        if rng.random() < 0.2:  # a write every 250 ms or so, on any node, to any doc
            op += 1
            cluster.schedule_op(now_ms + 1.0, op, rng.randrange(NODES), rng.randrange(DOCS))
    return now_ms


def test_zipf_reads_from_three_datacenters_with_a_shifting_hot_set() -> None:
    seed = int(os.environ.get("CRDTSYNC_SIM_SEED", random.randrange(1 << 30)))
    print(f"seed {seed} (replay: CRDTSYNC_SIM_SEED={seed})")
    rng = random.Random(seed)
    config = SimConfig(
        seed=seed, nodes=NODES, datacenters=3, docs=DOCS, ops=0, faults=frozenset(),
        placement=PlacementPolicy((PlacementRule(1),)), replica=SHORT,
    )  # fmt: skip
    cluster = SimCluster(config)
    cluster.start_nodes()
    cluster.advance(3_000.0)
    for op in range(DOCS):  # every doc has content before the reads start
        cluster.schedule_op(3_000.0 + op, op, op % NODES, op)
    cluster.advance(4_000.0)
    first = [f"doc-{i}" for i in range(DOCS)]
    second = list(reversed(first))  # the hot set shifts: the coldest docs become the hottest

    now_ms = _read_phase(cluster, rng, first, 4_000.0)
    during_first = _followers(cluster)
    print(f"followers after phase 1: {during_first}")
    assert "doc-0" in during_first, f"seed {seed}: the hottest doc gained no follower"
    assert all(len(nodes) <= CAP for nodes in during_first.values()), f"seed {seed}: {during_first}"

    now_ms = _read_phase(cluster, rng, second, now_ms)
    during_second = _followers(cluster)
    print(f"followers after phase 2: {during_second}")
    assert f"doc-{DOCS - 1}" in during_second, f"seed {seed}: the new hottest doc gained no follower"
    assert "doc-0" not in during_second, f"seed {seed}: the old hottest doc kept its followers"
    assert all(len(nodes) <= CAP for nodes in during_second.values()), f"seed {seed}: {during_second}"

    cluster.advance(now_ms + 30_000.0)  # no reads: rates decay, cool-downs pass, copies are handed off
    assert _followers(cluster) == {}, f"seed {seed}"
    problems = cluster.check()
    assert not problems, f"seed {seed}: {problems}"
    added = sum(replica.counters.follows_started for replica in _replicas(cluster))
    dropped = sum(replica.counters.follows_stopped for replica in _replicas(cluster))
    print(f"follower changes: {added} added, {dropped} dropped")
    assert added == dropped > 0
