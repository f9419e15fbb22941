"""Placement as a pure function: deterministic, the right number of replicas, minimal movement on join
and leave, zones first, weights honoured, the partition equal to the Merkle segment, and the
version's answers pinned."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crdtsync.core import wire
from crdtsync.core.merkle import MerkleTree
from crdtsync.core.placement import (
    PLACEMENT_VERSION,
    Candidate,
    PlacementError,
    PlacementPolicy,
    PlacementRule,
    imbalance,
    partition_counts,
    partition_of,
    replicas,
    replicas_in_dc,
)

doc_ids = st.text(min_size=1, max_size=40)
node_names = st.lists(
    st.text(alphabet="abcdefgh0123456789-", min_size=1, max_size=8), min_size=1, max_size=9, unique=True
)


def _candidates(names: list[str], dcs: int = 2, zones: int = 1) -> list[Candidate]:
    return [Candidate(name, f"dc{i % dcs}", zone=f"z{i % zones}") for i, name in enumerate(names)]


@settings(max_examples=200)
@given(doc_ids, node_names, st.integers(min_value=1, max_value=4), st.randoms(use_true_random=False))
def test_deterministic_and_independent_of_member_order(
    doc_id: str, names: list[str], rf: int, rng: random.Random
) -> None:
    policy = PlacementPolicy((PlacementRule(rf),))
    candidates = _candidates(names)
    shuffled = list(candidates)
    rng.shuffle(shuffled)
    assert replicas(doc_id, policy, candidates) == replicas(doc_id, policy, shuffled)


@settings(max_examples=200)
@given(doc_ids, node_names, st.integers(min_value=1, max_value=5))
def test_each_datacenter_holds_rf_replicas_or_all_it_has(doc_id: str, names: list[str], rf: int) -> None:
    candidates = _candidates(names)
    for dc, chosen in replicas(doc_id, PlacementPolicy((PlacementRule(rf),)), candidates).items():
        members = [c.node_id for c in candidates if c.dc == dc]
        assert len(chosen) == min(rf, len(members)) and len(set(chosen)) == len(chosen)
        assert set(chosen) <= set(members)
    everywhere = replicas(doc_id, PlacementPolicy((PlacementRule("all"),)), candidates)
    assert {dc: set(ids) for dc, ids in everywhere.items()} == {
        dc: {c.node_id for c in candidates if c.dc == dc} for dc in everywhere
    }


def test_rules_match_by_first_prefix_then_default() -> None:
    candidates = _candidates([f"n{i}" for i in range(6)])
    policy = PlacementPolicy(
        (PlacementRule({"dc0": 2}, "checkpoints/"), PlacementRule("all", "models/"), PlacementRule(1))
    )
    assert [len(ids) for ids in replicas("checkpoints/a", policy, candidates).values()] == [2, 0]
    assert [len(ids) for ids in replicas("models/a", policy, candidates).values()] == [3, 3]
    assert [len(ids) for ids in replicas("flags/a", policy, candidates).values()] == [1, 1]
    assert PlacementPolicy().rule_for("anything").rf == "all"


@pytest.mark.parametrize(
    ("rules", "message"),
    [
        ((PlacementRule(1), PlacementRule(2)), "only one placement rule may have no prefix"),
        ((PlacementRule(1), PlacementRule(2, "a/")), "must come last"),
        ((PlacementRule(0),), "at least 1"),
        ((PlacementRule({"dc1": 0}),), "names no datacenter"),
        ((PlacementRule({"dc1": -1}),), ">= 0"),
        ((PlacementRule(1, ""),), "empty prefix"),
    ],
)
def test_bad_rules_are_refused_with_the_reason(rules: tuple[PlacementRule, ...], message: str) -> None:
    with pytest.raises(PlacementError, match=message):
        PlacementPolicy(rules)


@settings(max_examples=100)
@given(node_names, st.text(alphabet="xyz", min_size=1, max_size=3), st.integers(min_value=1, max_value=3))
def test_a_join_moves_only_what_the_newcomer_takes(names: list[str], newcomer: str, rf: int) -> None:
    before = _candidates(names, dcs=1)
    joined = Candidate(f"new-{newcomer}", "dc0")
    after = [*before, joined]
    for partition in range(64):
        old = replicas_in_dc(partition, before, rf)
        new = replicas_in_dc(partition, after, rf)
        assert set(new) - {joined.node_id} <= set(old), "nobody but the newcomer gains a partition"
        assert len(set(old) - set(new)) <= 1, "at most the one the newcomer displaced leaves"


@settings(max_examples=100)
@given(node_names, st.integers(min_value=1, max_value=3))
def test_a_leave_moves_only_what_the_leaver_held(names: list[str], rf: int) -> None:
    before = _candidates(names, dcs=1)
    leaver, after = before[0], before[1:]
    for partition in range(64):
        old = replicas_in_dc(partition, before, rf)
        new = replicas_in_dc(partition, after, rf)
        if leaver.node_id not in old:
            assert new == old
        else:
            assert set(old) - {leaver.node_id} <= set(new)


@settings(max_examples=100)
@given(node_names, st.integers(min_value=1, max_value=4), st.integers(min_value=1, max_value=4))
def test_replicas_spread_over_zones_first(names: list[str], zones: int, rf: int) -> None:
    candidates = _candidates(names, dcs=1, zones=zones)
    zone_of = {c.node_id: c.zone for c in candidates}
    distinct_zones = len(set(zone_of.values()))
    for partition in range(32):
        chosen = replicas_in_dc(partition, candidates, rf)
        assert len({zone_of[n] for n in chosen}) == min(len(chosen), distinct_zones)


def test_weights_scale_a_nodes_share() -> None:
    candidates = [Candidate("heavy", "dc0", weight=2.0), *(Candidate(f"n{i}", "dc0") for i in range(4))]
    policy = PlacementPolicy((PlacementRule(1),))
    counts = partition_counts(policy, candidates, policy.default)
    share = counts["heavy"] / policy.partitions
    print(f"weight 2 among four of weight 1: share {share:.3f} (ideal {2 / 6:.3f})")
    assert abs(share - 2 / 6) < 0.03


def test_default_partitions_balance_twelve_nodes_in_three_datacenters() -> None:
    candidates = [Candidate(f"n{i}", f"dc{i % 3}") for i in range(12)]
    policy = PlacementPolicy((PlacementRule(3),))
    counts = partition_counts(policy, candidates, policy.default)
    print(f"partitions per node {sorted(counts.values())}, max/mean {imbalance(counts):.3f}")
    assert sum(counts.values()) == policy.partitions * 3 * 3
    assert imbalance(counts) < 1.05


@settings(max_examples=200)
@given(doc_ids)
def test_a_partition_is_the_docs_merkle_segment(doc_id: str) -> None:
    tree = MerkleTree(wire.TREE_SEGMENTS, wire.TREE_BRANCHES)
    assert partition_of(doc_id) == tree.segment_of(doc_id)


def test_version_one_answers_are_pinned() -> None:
    """A change here moves data on every upgraded node: it needs a new PLACEMENT_VERSION."""
    assert PLACEMENT_VERSION == 1
    candidates = [Candidate(f"n{i}", f"dc{i % 2}", zone=f"z{i % 3}") for i in range(6)]
    policy = PlacementPolicy(
        (
            PlacementRule({"dc0": 2, "dc1": 1}, "checkpoints/"),
            PlacementRule("all", "models/"),
            PlacementRule(2),
        )
    )
    assert policy.partition_of("checkpoints/llama-ft") == 3608
    assert replicas("checkpoints/llama-ft", policy, candidates) == {"dc0": ["n0", "n2"], "dc1": ["n3"]}
    assert replicas("models/registry", policy, candidates) == {
        "dc0": ["n2", "n0", "n4"],
        "dc1": ["n5", "n3", "n1"],
    }
    assert replicas("flags/fleet-a", policy, candidates) == {"dc0": ["n4", "n0"], "dc1": ["n3", "n1"]}
