"""A rolling upgrade in the simulator: nodes that start speaking wire version 1 only (a release before
negotiation) or up to 2 (before compact causal metadata) are restarted one at a time into the current
version while every node writes, under loss, duplication, reordering and delay. The cluster
converges, and at the end every link speaks the current version.
Each run prints its verdict line (seed and replay command); CRDTSYNC_SIM_SEEDS=A..B runs another range."""

from __future__ import annotations

import os

import pytest

from crdtsync.core.envelope import WIRE_VERSION
from crdtsync.sim import SimCluster, SimConfig

NETWORK_FAULTS = frozenset({"loss", "dup", "reorder", "delay"})


def _seeds(first: int, last: int) -> range:
    text = os.environ.get("CRDTSYNC_SIM_SEEDS")
    if text:
        first, last = (int(part) for part in text.split(".."))
    return range(first, last + 1)


@pytest.mark.parametrize("pinned", [1, 2])
def test_nodes_upgraded_one_by_one_from_an_older_version_converge_and_end_on_the_current_one(
    pinned: int,
) -> None:
    for seed in _seeds(1, 3):
        config = SimConfig(
            seed=seed,
            nodes=4,
            docs=20,
            ops=300,
            faults=NETWORK_FAULTS,
            durable=True,
            wire_pinned_until_restart=frozenset({1, 2, 3}),
            wire_pinned_version=pinned,
        )
        cluster = SimCluster(config)
        for turn, index in enumerate((1, 2, 3)):  # one at a time, while the writes go on
            cluster.schedule(1_000.0 + 1_200.0 * turn, "crash", index)
            cluster.schedule(1_300.0 + 1_200.0 * turn, "restart", index)
        result = cluster.run()
        print(result.verdict())
        assert result.ok, result.verdict()
        replicas = [node.replica for node in cluster.nodes if node.replica is not None]
        assert len(replicas) == 4
        for replica in replicas:
            versions = {peer.node_id: peer.wire_version for peer in replica.status(cluster.now_ms).peers}
            assert set(versions.values()) == {WIRE_VERSION}, (
                f"seed {seed}: {replica.node_id} speaks {versions}"
            )
        # The upgraded nodes' greetings reached the pinned nodes in the current version as well, and
        # were refused by version (counted), before the upgrade reached them.
        assert all(replica.counters.wire_errors.keys() <= {"bad_version"} for replica in replicas)
