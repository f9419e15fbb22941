"""Seeded cluster simulations with faults. Each run prints its verdict line, which names the seed and
the command that replays it. Set CRDTSYNC_SIM_SEEDS=A..B to run another seed range."""

from __future__ import annotations

import os

import pytest
from pycrdt import Map

from crdtsync.core.replica import ReplicaConfig
from crdtsync.sim import FAULTS, SimCluster, SimConfig, Write, run_simulation
from crdtsync.sim.__main__ import main as sim_main

ALL_FAULTS = frozenset(FAULTS)


def _seeds(default_first: int, default_last: int) -> range:
    text = os.environ.get("CRDTSYNC_SIM_SEEDS")
    if text:
        first, last = (int(part) for part in text.split(".."))
        return range(first, last + 1)
    return range(default_first, default_last + 1)


def _run_all(configs: list[SimConfig]) -> None:
    failures = []
    for config in configs:
        result = run_simulation(config)
        print(result.verdict())
        if not result.ok:
            failures.append(result.verdict())
    assert not failures, "\n".join(failures)


def test_five_nodes_converge_under_every_fault() -> None:
    _run_all([SimConfig(seed=seed, nodes=5, faults=ALL_FAULTS) for seed in _seeds(1, 40)])


def test_seven_nodes_with_heavy_loss_and_contended_keys_converge() -> None:
    _run_all(
        [
            SimConfig(seed=seed, nodes=7, docs=6, ops=800, loss_rate=0.3, faults=ALL_FAULTS)
            for seed in _seeds(1000, 1007)
        ]
    )


@pytest.mark.parametrize("fault", FAULTS)
def test_each_fault_alone_converges(fault: str) -> None:
    _run_all([SimConfig(seed=seed, nodes=5, faults=frozenset({fault})) for seed in _seeds(200, 209)])


def test_runs_actually_exercise_the_faults() -> None:
    result = run_simulation(SimConfig(seed=5, nodes=5, faults=ALL_FAULTS))
    print(result.verdict())
    assert result.ok
    assert result.messages_dropped > 0
    assert result.messages_duplicated > 0
    assert result.crashes > 0
    assert result.partitions > 0


def test_same_seed_replays_exactly() -> None:
    config = SimConfig(seed=77, nodes=5, faults=ALL_FAULTS)
    first, second = run_simulation(config), run_simulation(config)
    print(first.verdict())
    assert first.verdict() == second.verdict()
    assert (first.events, first.messages_sent, first.messages_dropped) == (
        second.events,
        second.messages_sent,
        second.messages_dropped,
    )
    assert first.final_state == second.final_state


def test_different_seeds_give_different_runs() -> None:
    one = run_simulation(SimConfig(seed=1, faults=ALL_FAULTS))
    two = run_simulation(SimConfig(seed=2, faults=ALL_FAULTS))
    assert one.final_state != two.final_state


def test_a_node_that_crashed_comes_back_empty_and_is_refilled() -> None:
    cluster = SimCluster(SimConfig(seed=11, nodes=4, faults=frozenset({"crash"}), crashes=3))
    result = cluster.run()
    print(result.verdict())
    assert result.ok and result.crashes > 0
    restarted = [node for node in cluster.nodes if node.incarnation > 1]
    assert restarted, "no node was restarted"
    reference = cluster.materialized(0)
    for node in restarted:
        assert cluster.materialized(node.index) == reference


def test_checker_reports_a_diverged_replica() -> None:
    cluster = SimCluster(SimConfig(seed=3, nodes=3))
    result = cluster.run()
    assert result.ok
    replica = cluster.nodes[1].replica
    assert replica is not None
    # A write that is never pumped to the network: replica 1 now differs from the others.
    replica.open_doc("doc-0").get("data", type=Map)["diverged"] = True
    problems = cluster.check()
    assert any("digests" in problem for problem in problems), problems


def test_checker_reports_a_lost_write() -> None:
    cluster = SimCluster(SimConfig(seed=4, nodes=3))
    assert cluster.run().ok
    cluster.writes.append((Write("doc-0", "data", "never-written", 1, shared=False), 0, 1))
    assert any("lost write" in problem for problem in cluster.check())


def test_cli_runs_one_seed_and_a_campaign(capsys: pytest.CaptureFixture[str]) -> None:
    assert sim_main(["--seed", "9", "--faults", "loss,dup,reorder", "--nodes", "4"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("seed 9: OK")
    assert sim_main(["--seeds", "1..3", "--faults", "all"]) == 0
    assert "campaign seeds 1..3: 3 passed, 0 failed" in capsys.readouterr().out


def test_cli_rejects_unknown_faults() -> None:
    with pytest.raises(SystemExit) as excinfo:
        sim_main(["--faults", "meteor"])
    assert excinfo.value.code == 2


# ---------------------------------------------------------------------------------------------- anti-entropy alone

NO_RETRANSMIT = ReplicaConfig(retransmit_enabled=False)


def test_anti_entropy_alone_converges_under_heavy_loss_within_bounded_rounds() -> None:
    """Retransmission off and 30% loss: only anti-entropy (and causal pulls) repair. After healing,
    every replica converges within a number of rounds bounded by the cluster size."""
    configs = [
        SimConfig(
            seed=seed,
            nodes=5,
            docs=6,
            ops=400,
            loss_rate=0.3,
            faults=frozenset({"loss"}),
            replica=NO_RETRANSMIT,
        )
        for seed in _seeds(300, 319)
    ]
    for config in configs:
        result = run_simulation(config)
        print(result.verdict())
        assert result.ok, result.verdict()
        assert result.ae_rounds_after_heal_max <= config.nodes + 2, result.verdict()


def test_a_node_down_for_the_whole_run_catches_up_by_anti_entropy() -> None:
    for seed in _seeds(400, 409):
        cluster = SimCluster(
            SimConfig(seed=seed, nodes=4, late_nodes=1, faults=frozenset({"loss"}), replica=NO_RETRANSMIT)
        )
        result = cluster.run()
        print(result.verdict())
        assert result.ok, result.verdict()
        late = cluster.nodes[-1].replica
        assert late is not None and late.counters.get("deltas_published", 0) == 0
        assert cluster.materialized(3) == cluster.materialized(0) != {}


def test_three_way_partition_with_writes_on_all_sides_heals_to_one_state() -> None:
    for seed in _seeds(500, 509):
        config = SimConfig(
            seed=seed,
            nodes=6,
            docs=3,
            ops=300,
            faults=frozenset({"partition"}),
            partitions=1,
            partition_groups=3,
            partition_ms=(5_000.0, 5_000.0),
            replica=NO_RETRANSMIT,
        )
        cluster = SimCluster(config)
        result = cluster.run()
        print(result.verdict())
        assert result.ok, result.verdict()
        writers = {writer for _write, writer, _incarnation in cluster.writes}
        assert len(writers) == config.nodes, "every side of the partition wrote"
        assert result.partitions == 1 and result.messages_dropped > 0, (
            "the partition cut traffic while writes flowed"
        )
