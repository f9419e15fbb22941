"""Seeded cluster simulations with faults. Each run prints its verdict line, which names the seed and
the command that replays it. Set CRDTSYNC_SIM_SEEDS=A..B to run another seed range."""

from __future__ import annotations

import os
from typing import Any

import pytest
from pycrdt import Doc, Map

from crdtsync.core.replica import ReplicaConfig
from crdtsync.sim import FAULTS, SimCluster, SimConfig, SimResult, Write, run_simulation
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
        assert late is not None and late.counters.deltas_published == 0
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


# ---------------------------------------------------------------------------------------------- durable store


def _acked_then_crashed(cluster: SimCluster) -> list[int]:
    """Indexes of unique writes a commit acknowledged whose writer incarnation crashed afterwards."""
    return [
        position
        for position in cluster.acknowledged
        if not cluster.writes[position][0].shared
        and cluster.writes[position][1:] in cluster.ever_crashed_incarnations
    ]


def test_durable_clusters_never_lose_an_acknowledged_write_under_every_fault() -> None:
    """Every fault with more crashes: writes committed before their writer crashed must survive on every
    replica; only writes still pending or mid-commit at the crash may be lost."""
    exercised = 0
    failures = []
    for seed in _seeds(600, 629):
        cluster = SimCluster(SimConfig(seed=seed, nodes=5, faults=ALL_FAULTS, crashes=4, durable=True))
        result = cluster.run()
        print(result.verdict())
        if not result.ok:
            failures.append(result.verdict())
            continue
        assert result.writes_acknowledged == len(cluster.acknowledged) > 0
        survivors = _acked_then_crashed(cluster)
        for position in survivors:
            write = cluster.writes[position][0]
            for node in cluster.nodes:
                state = cluster.materialized(node.index)
                assert state[write.doc_id][write.root][write.key] == write.value, (result.verdict(), write)
        exercised += len(survivors)
    assert not failures, "\n".join(failures)
    assert exercised > 0, "no acknowledged write had its writer crash: the property was not exercised"


class _OnlyNodeOneWrites:
    """Unique keys, written by node 1 only (operations that land on node 0 write nothing)."""

    def write(self, doc: Doc[Any], doc_id: str, node_index: int, op_index: int, rng: Any) -> list[Write]:
        if node_index != 1:
            return []
        key = f"k-{op_index}"
        doc.get("data", type=Map)[key] = op_index
        return [Write(doc_id, "data", key, op_index, shared=False)]

    def materialize(self, doc: Doc[Any]) -> Any:
        return {"data": doc.get("data", type=Map).to_py()}


def _isolated_writer_crashes(durable: bool) -> tuple[SimCluster, SimResult]:
    """Two nodes, cut apart from the first event on; node 1 writes alone, crashes at 2 s, restarts at
    2.4 s, and the partition heals at 2.6 s. Nothing node 1 wrote before the crash could reach node 0
    over the network."""
    config = SimConfig(seed=8, nodes=2, docs=2, ops=80, write_window_ms=3_000.0, durable=durable)
    cluster = SimCluster(config, _OnlyNodeOneWrites())
    cluster.schedule(0.0, "partition", {0: 0, 1: 1})
    cluster.schedule(2_000.0, "crash", 1)
    cluster.schedule(2_400.0, "restart", 1)
    cluster.schedule(2_600.0, "heal")
    result = cluster.run()
    print(result.verdict())
    return cluster, result


def test_a_durable_node_isolated_until_it_crashes_comes_back_with_its_acknowledged_writes() -> None:
    cluster, result = _isolated_writer_crashes(durable=True)
    assert result.ok, result.verdict()
    assert result.crashes == 1 and cluster.nodes[1].incarnation == 3
    first_incarnation = [
        position for position, (_write, writer, incarnation) in enumerate(cluster.writes) if incarnation == 1
    ]
    acked = [position for position in first_incarnation if position in cluster.acknowledged]
    assert acked and all(cluster.acknowledged[position] <= 2_000.0 for position in acked)
    for node in cluster.nodes:
        state = cluster.materialized(node.index)
        for position in acked:
            write = cluster.writes[position][0]
            assert state[write.doc_id]["data"][write.key] == write.value
    # Only writes whose commit had not completed at the crash may be missing.
    assert result.writes_lost_to_crashes <= len(first_incarnation) - len(acked)

    # The same run with a memory store: the crash takes every one of those writes with it.
    memory_cluster, memory_result = _isolated_writer_crashes(durable=False)
    assert memory_result.ok, memory_result.verdict()
    assert memory_result.writes_acknowledged == 0
    lost = sum(1 for _write, _writer, incarnation in memory_cluster.writes if incarnation == 1)
    assert lost > 0 and memory_result.writes_lost_to_crashes == lost


def test_same_seed_replays_exactly_with_a_durable_store() -> None:
    config = SimConfig(seed=78, nodes=5, faults=ALL_FAULTS, crashes=4, durable=True)
    first, second = SimCluster(config), SimCluster(config)
    one, two = first.run(), second.run()
    print(one.verdict())
    assert one.ok and "acked=" in one.verdict()
    assert one.verdict() == two.verdict()
    assert (one.events, one.messages_sent, one.writes_acknowledged) == (
        two.events,
        two.messages_sent,
        two.writes_acknowledged,
    )
    assert first.acknowledged == second.acknowledged
    assert one.final_state == two.final_state


def test_checker_reports_a_lost_acknowledged_write_of_a_crashed_writer() -> None:
    cluster = SimCluster(SimConfig(seed=4, nodes=3, durable=True))
    assert cluster.run().ok
    cluster.ever_crashed_incarnations.add((0, 1))
    cluster.writes.append((Write("doc-0", "data", "never-written", 1, shared=False), 0, 1))
    assert not cluster.check(), "an unacknowledged write of a crashed incarnation may be lost"
    cluster.acknowledged[len(cluster.writes) - 1] = 1.0
    assert any("lost acknowledged write" in problem for problem in cluster.check())


def test_cli_durable_flag_reports_acks_and_replays_with_the_flag(capsys: pytest.CaptureFixture[str]) -> None:
    assert sim_main(["--seed", "9", "--faults", "all", "--durable"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("seed 9: OK") and " acked=" in out
    assert sim_main(["--seed", "9", "--faults", "all"]) == 0
    assert "acked=" not in capsys.readouterr().out
    assert SimConfig(seed=9, durable=True).replay_command().endswith(" --durable")
    assert "--durable" not in SimConfig(seed=9).replay_command()


def test_durable_nodes_with_a_tiny_doc_cache_evict_reload_and_still_converge() -> None:
    """The real node's lazy path under faults: register_docs at restart, loads of evicted docs from
    committed and in-flight updates, eviction with state records."""
    evicted = loaded = 0
    for seed in _seeds(700, 714):
        config = SimConfig(
            seed=seed,
            nodes=4,
            docs=8,
            ops=300,
            faults=ALL_FAULTS,
            durable=True,
            replica=ReplicaConfig(docs_cached_max=2),
        )
        cluster = SimCluster(config)
        result = cluster.run()
        print(result.verdict())
        assert result.ok, result.verdict()
        for node in cluster.nodes:
            assert node.replica is not None
            evicted += node.replica.counters.docs_evicted
            loaded += node.replica.counters.doc_loads
    assert evicted > 0 and loaded > 0, (evicted, loaded)
