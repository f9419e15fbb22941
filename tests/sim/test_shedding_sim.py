"""Loaded nodes shed partitions, in the simulator (issue 14): 4 nodes of one datacenter, rf 2; one node
reports three times the others' CPU. It lowers its weight a step at a time, a cool-down apart, and
every node then places with its new weight: it holds fewer partitions, and the docs it no longer
holds leave it through the handoff. While a member is down, nothing changes. At the end every
holder has every write and no node keeps a doc it does not hold. The simulator has no CPU: the
loads are injected. Short timers; the seed is printed."""

from __future__ import annotations

import itertools
import os

from crdtsync.core.membership import MembershipConfig
from crdtsync.core.placement import PlacementPolicy, PlacementRule
from crdtsync.core.replica import Replica, ReplicaConfig
from crdtsync.sim import SimCluster, SimConfig

SEED = int(os.environ.get("CRDTSYNC_SIM_SEED", "3"))
COOL_DOWN_MS = 8_000.0
SHORT = ReplicaConfig(
    load_half_life_ms=4_000.0,
    shed_cool_down_ms=COOL_DOWN_MS,
    handoff_grace_ms=1_000.0,
    follow_reads_per_s=0.0,
)


def _replica(cluster: SimCluster, index: int) -> Replica:
    replica = cluster.nodes[index].replica
    assert replica is not None
    return replica


def _run_loaded(cluster: SimCluster, until_ms: float, busy_cores: list[float]) -> list[tuple[float, float]]:
    """Advance to `until_ms` with node i reporting `busy_cores[i]` cores; (time, weight) of node 0's
    weight changes."""
    changes: list[tuple[float, float]] = []
    now_ms = cluster.now_ms
    while now_ms < until_ms:
        now_ms += 100.0
        cluster.advance(now_ms)
        for index, cores in enumerate(busy_cores):
            node = cluster.nodes[index]
            if node.replica is not None:
                node.replica.load.busy(cores * 0.1, now_ms)
        weight = _replica(cluster, 0).membership.own.weight
        if not changes or changes[-1][1] != weight:
            changes.append((now_ms, weight))
    return changes


def test_a_loaded_node_sheds_partitions_a_step_per_cool_down_and_not_while_degraded() -> None:
    print(f"seed {SEED}")
    config = SimConfig(
        seed=SEED, nodes=4, docs=40, ops=0, faults=frozenset(), placement=PlacementPolicy((PlacementRule(2),)),
        replica=SHORT, membership=MembershipConfig(gossip_interval_ms=200.0),
    )  # fmt: skip
    cluster = SimCluster(config)
    cluster.start_nodes()
    _run_loaded(cluster, 2_000.0, [1.5, 0.5, 0.5, 0.5])
    for op in range(40):
        cluster.schedule_op(2_000.0 + op, op, op % 4, op)
    before = _replica(cluster, 1).cluster_placement().partitions_per_node["n0"]
    held_before = sum(_replica(cluster, 0).holds(f"doc-{i}") for i in range(40))

    changes = _run_loaded(cluster, 40_000.0, [1.5, 0.5, 0.5, 0.5])
    print(f"n0's weight changes: {changes}")
    weights = [weight for _at, weight in changes]
    assert weights[0] == 1.0 and len(weights) >= 2, "n0 never shed"
    assert all(later < earlier for earlier, later in itertools.pairwise(weights)), weights
    times = [at for at, _weight in changes[1:]]
    assert all(b - a >= 0.75 * COOL_DOWN_MS for a, b in itertools.pairwise(times)), times
    seen = {_replica(cluster, i).membership.members["n0"].record.weight for i in (1, 2, 3)}
    assert seen == {weights[-1]}, f"the others place with n0's weight {weights[-1]}: {seen}"
    after = _replica(cluster, 1).cluster_placement().partitions_per_node["n0"]
    print(f"n0's partitions {before} -> {after}")
    assert after < before

    cluster.crash(3)  # degraded: a member down, nothing changes however loaded n0 is
    n0 = _replica(cluster, 0)
    while n0.membership.members["n3"].liveness == "alive":  # until the failure detector tells
        _run_loaded(cluster, cluster.now_ms + 100.0, [3.0, 0.5, 0.5, 0.0])
        assert cluster.now_ms < 100_000.0, "n3's crash never detected"
    frozen = n0.membership.own.weight
    during = _run_loaded(cluster, cluster.now_ms + 3 * COOL_DOWN_MS, [3.0, 0.5, 0.5, 0.0])
    assert {weight for _at, weight in during} == {frozen}, (
        f"a weight changed while a member was down: {during}"
    )

    cluster._handle("restart", 3)
    cluster.advance(cluster.now_ms + 20_000.0)  # quiet: handoffs finish, anti-entropy repairs
    held_after = sum(_replica(cluster, 0).holds(f"doc-{i}") for i in range(40))
    print(f"docs n0 holds: {held_before} -> {held_after}")
    problems = cluster.check()
    assert not problems, f"seed {SEED}: {problems}"


def test_a_loaded_relay_does_not_shed() -> None:
    """Across datacenters the relays carry the WAN besides their share: a loaded relay keeps its
    weight (its load is not its partitions'), and is left out of the mean."""
    print(f"seed {SEED}")
    config = SimConfig(
        seed=SEED, nodes=6, datacenters=2, docs=12, ops=0, faults=frozenset(),
        placement=PlacementPolicy((PlacementRule(2),)), replica=SHORT,
        membership=MembershipConfig(gossip_interval_ms=200.0),
    )  # fmt: skip
    cluster = SimCluster(config)
    cluster.start_nodes()
    _run_loaded(cluster, 2_000.0, [0.5] * 6)
    relay = next(i for i in range(3) if _replica(cluster, i).membership.is_relay())
    loads = [3.0 if i == relay else 0.5 for i in range(6)]
    _run_loaded(cluster, 2_000.0 + 4 * COOL_DOWN_MS, loads)
    assert _replica(cluster, relay).membership.own.weight == 1.0
    assert _replica(cluster, relay).counters.weight_changes == 0
