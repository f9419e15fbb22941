"""Simulated clusters whose batches linger, so that a node's transactions of one doc leave merged
into one delta (`crdtsync.core.outbound.merge_runs`), under every fault: they converge, lose no
acknowledged write, and do merge. Each run prints its verdict line, which names the seed and the
command that replays it. Set CRDTSYNC_SIM_SEEDS=A..B to run another seed range."""

from __future__ import annotations

import dataclasses

import pytest
from placement_support import RF2, seeds

from crdtsync.core.replica import ReplicaConfig
from crdtsync.sim import FAULTS, SimCluster, SimConfig
from crdtsync.sim.config import odd_nodes

LINGER = ReplicaConfig(linger_ms=40.0, handoff_grace_ms=2_000.0)
"""About three of a node's operations a batch at 600 operations over 3 s on 5 nodes."""

CONFIGS: dict[str, dict[str, object]] = {
    "every fault": {},
    "durable": {"durable": True, "crashes": 4},
    "rf 2": {"placement": RF2, "docs": 12, "follows": 4},
    "wire version 1 until upgraded": {"wire_pinned_until_restart": odd_nodes(5), "wire_pinned_version": 1},
    "wire version 2 until upgraded": {"wire_pinned_until_restart": odd_nodes(5), "wire_pinned_version": 2},
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_lingering_batches_merge_and_converge_under_every_fault(name: str) -> None:
    merged = 0
    failures = []
    for seed in seeds(1, 4):
        values: dict[str, object] = {
            "seed": seed,
            "nodes": 5,
            "docs": 3,
            "ops": 600,
            "write_window_ms": 3_000.0,
            "faults": frozenset(FAULTS),
            "replica": LINGER,
            **CONFIGS[name],
        }
        config = SimConfig(**values)  # type: ignore[arg-type]
        cluster = SimCluster(config)
        result = cluster.run()
        print(result.verdict())
        if not result.ok:
            failures.append(result.verdict())
        merged += sum(
            node.replica.counters.deltas_merged for node in cluster.nodes if node.replica is not None
        )
    assert not failures, "\n".join(failures)
    assert merged > 0, "no batch held two transactions of a doc: the runs did not exercise merging"


def test_the_replay_command_names_the_linger() -> None:
    config = SimConfig(seed=3, replica=ReplicaConfig(linger_ms=40.0))
    assert " --linger-ms 40" in config.replay_command()
    assert "--linger-ms" not in dataclasses.replace(config, replica=ReplicaConfig()).replay_command()
