"""Placement enforcement's pure parts: the Merkle tree filtered by bucket, and who holds what."""

from __future__ import annotations

import zlib
from unittest.mock import patch

from hypothesis import given, settings
from hypothesis import strategies as st

from crdtsync.core import merkle, wire
from crdtsync.core.holding import HOLDER_SET_KEY_BIT, Holding
from crdtsync.core.membership import Membership, MembershipConfig
from crdtsync.core.merkle import MerkleTree
from crdtsync.core.placement import Candidate, PlacementPolicy, PlacementRule, replicas_in_dc

doc_ids = st.text(st.characters(exclude_categories=["Cs"]), min_size=1, max_size=24)
digests = st.binary(min_size=16, max_size=16)


def _bucket(doc_id: str) -> int:
    return len(doc_id) % 5


@settings(max_examples=200)
@given(st.dictionaries(doc_ids, digests, max_size=40), st.sets(st.integers(0, 4)))
def test_a_filtered_tree_equals_the_tree_of_the_accepted_docs(
    docs: dict[str, bytes], accepted: set[int]
) -> None:
    full = MerkleTree(wire.TREE_SEGMENTS, wire.TREE_BRANCHES, _bucket)
    subset = MerkleTree(wire.TREE_SEGMENTS, wire.TREE_BRANCHES)
    for doc_id, digest in docs.items():
        full.set(doc_id, digest)
        if _bucket(doc_id) in accepted:
            subset.set(doc_id, digest)
    for doc_id in list(docs)[::3]:  # removals keep the per-bucket hashes right
        full.remove(doc_id)
        subset.remove(doc_id)

    def accept(bucket: int) -> bool:
        return bucket in accepted

    assert full.filtered_root(accept) == subset.root_bytes()
    assert full.filtered_branch_hashes(accept) == subset.branch_hashes()
    for segment in {full.segment_of(doc_id) for doc_id in docs}:
        branch = segment // full.segments_per_branch
        assert full.filtered_segment_hashes(branch, accept) == subset.segment_hashes(branch)
        assert full.filtered_segment_entries(segment, accept) == subset.segment_entries(segment)


@settings(max_examples=200)
@given(
    st.lists(st.tuples(doc_ids, st.one_of(st.none(), digests)), max_size=60),
    st.lists(st.integers(-1, 2), min_size=5, max_size=5),
    st.integers(0, 60),
    st.integers(1, 40),
)
def test_grouped_branch_values_caught_up_by_changes_equal_a_fresh_walk_and_filter_by_groups(
    changes: list[tuple[str, bytes | None]], group_of_bucket: list[int], split: int, kept_max: int
) -> None:
    """Branch hashes grouped by bucket, computed at some version and brought up to date by the
    changes after it (None: a removal), equal those computed afresh, also when the tree forgot the
    oldest changes; and the XOR of any groups' is the branch hashes filtered to their buckets."""
    tree = MerkleTree(wire.TREE_SEGMENTS, wire.TREE_BRANCHES, _bucket)

    def apply(part: list[tuple[str, bytes | None]]) -> None:
        for doc_id, digest in part:
            if digest is None:
                tree.remove(doc_id)
            else:
                tree.set(doc_id, digest)

    def without_zeros(groups: dict[int, dict[int, int]]) -> dict[int, dict[int, int]]:
        kept = {group: {b: v for b, v in values.items() if v} for group, values in groups.items()}
        return {group: values for group, values in kept.items() if values}

    with patch.object(merkle, "CHANGES_KEPT_MAX", kept_max):
        apply(changes[:split])
        earlier = tree.grouped_branch_values(group_of_bucket.__getitem__)
        apply(changes[split:])
        caught_up = tree.grouped_branch_values(group_of_bucket.__getitem__, earlier)
    fresh = tree.grouped_branch_values(group_of_bucket.__getitem__)
    assert caught_up[0] == fresh[0] == tree.version
    assert without_zeros(caught_up[1]) == without_zeros(fresh[1])
    for wanted in ({0}, {1, 2}, {0, 1, 2}):
        values = [0] * tree.branches
        for group in wanted:
            for branch, value in fresh[1].get(group, {}).items():
                values[branch] ^= value

        def accept(bucket: int, wanted: set[int] = wanted) -> bool:
            return group_of_bucket[bucket] in wanted

        assert [v.to_bytes(16, "big") for v in values] == tree.filtered_branch_hashes(accept)


def _holding(
    node_id: str,
    dc: str,
    members: list[tuple[str, str]],
    policy: PlacementPolicy,
    zones: dict[str, str] | None = None,
) -> Holding:
    zone_of = zones or {}
    membership = Membership(
        wire.MemberEntry(
            node_id, dc, f"tcp://{node_id}", f"tcp://{node_id}p", 1, 0, False, zone_of.get(node_id, "")
        ),
        MembershipConfig(),
        1000.0,
    )
    for other, other_dc in members:
        if other != node_id:
            entry = wire.MemberEntry(
                other, other_dc, f"tcp://{other}", f"tcp://{other}p", 1, 0, False, zone_of.get(other, "")
            )
            membership.merge(entry, 0.0, direct=True)
    return Holding(node_id, dc, membership, policy)


@settings(max_examples=50)
@given(st.lists(doc_ids, min_size=1, max_size=20))
def test_every_node_agrees_on_the_holders_and_rf_counts_them(docs: list[str]) -> None:
    members = [(f"n{i}", "dc0") for i in range(5)]
    policy = PlacementPolicy((PlacementRule("all", "all/"), PlacementRule(2)))
    views = [_holding(node_id, dc, members, policy) for node_id, dc in members]
    for doc_id in docs:
        holders = [view.node_id for view in views if view.holds_doc(doc_id)]
        assert len(holders) == 2
        assert all(view.holders(view.bucket_of(doc_id)) == frozenset(holders) for view in views)
        assert all(view.holds_doc("all/" + doc_id) for view in views)


def test_relays_hold_only_their_share_across_datacenters() -> None:
    """A relay is a holder like any other: placement alone decides, in each datacenter, and every
    node's view agrees on it. The relay choice does not change holding (it is not in the view)."""
    members = [(f"a{i}", "dc0") for i in range(3)] + [(f"b{i}", "dc1") for i in range(3)]
    policy = PlacementPolicy((PlacementRule(1),))
    views = {node_id: _holding(node_id, dc, members, policy) for node_id, dc in members}
    relays = [views["a0"]._membership.relays(dc) for dc in ("dc0", "dc1")]
    assert all(len(relays_of_dc) == 1 for relays_of_dc in relays)
    docs = [f"doc-{i}" for i in range(90)]
    for doc_id in docs:
        bucket = views["a0"].bucket_of(doc_id)
        holders = views["a0"].holders(bucket)
        assert len(holders) == 2 and {views["a0"].dc_of(node) for node in holders} == {"dc0", "dc1"}
        for node_id, view in views.items():
            assert view.holders(bucket) == holders
            assert view.holds_doc(doc_id) == (node_id in holders)
    for relay in (relays_of_dc[0] for relays_of_dc in relays):
        held = sum(views[relay].holds_doc(doc_id) for doc_id in docs)
        assert 10 <= held <= 50, f"relay {relay} holds {held} of {len(docs)} docs (its share: about 30)"
    assert all(view.partitioned for view in views.values())
    assert views["a0"].filter_with("b0") is not None, "rounds across datacenters compare the shared buckets"
    single = _holding("a0", "dc0", members[:3], PlacementPolicy((PlacementRule(3),)))
    assert not single.partitioned and single.filter_with("a1") is None, "rf >= members: all hold all"


def test_the_holders_spread_over_the_zones_the_members_gossip() -> None:
    members = [(f"n{i}", "dc0") for i in range(6)]
    zones = {f"n{i}": f"zone-{i % 3}" for i in range(6)}
    policy = PlacementPolicy((PlacementRule(3),))
    views = [_holding(node_id, dc, members, policy, zones) for node_id, dc in members]
    for doc_id in (f"doc-{i}" for i in range(100)):
        holders = {view.node_id for view in views if view.holds_doc(doc_id)}
        assert len(holders) == 3 and {zones[node] for node in holders} == {"zone-0", "zone-1", "zone-2"}


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 2), st.integers(0, 2), st.sampled_from([1.0, 2.0])), min_size=1, max_size=9
    ),
    st.integers(1, 3),
    st.integers(0, 2),
)
def test_the_view_table_answers_as_placement_does_bucket_by_bucket(
    shape: list[tuple[int, int, float]], rf: int, dc1_rf: int
) -> None:
    """Every node's per-view table (holders, holder-set topic key, held buckets, anti-entropy
    filters) equals placement's answer worked out for each bucket on its own, with zones, weights
    and rules of several kinds (per-datacenter counts, "all", a default)."""
    members = [(f"n{i}", f"dc{dc}", f"z{zone}", weight) for i, (dc, zone, weight) in enumerate(shape)]
    policy = PlacementPolicy(
        (PlacementRule({"dc0": 1, "dc1": dc1_rf}, "m/"), PlacementRule("all", "a/"), PlacementRule(rf)),
        partitions=64,
    )
    candidates = [Candidate(node_id, dc, zone, weight) for node_id, dc, zone, weight in members]
    rules = (*policy.rules[:-1], policy.default)
    for node_id, dc, zone, weight in members:
        membership = Membership(
            wire.MemberEntry(node_id, dc, f"tcp://{node_id}", f"tcp://{node_id}p", 1, 0, False, zone, weight),
            MembershipConfig(),
            1000.0,
        )
        for other, other_dc, other_zone, other_weight in members:
            if other != node_id:
                entry = wire.MemberEntry(
                    other,
                    other_dc,
                    f"tcp://{other}",
                    f"tcp://{other}p",
                    1,
                    0,
                    False,
                    other_zone,
                    other_weight,
                )
                membership.merge(entry, 0.0, direct=True)
        view = Holding(node_id, dc, membership, policy)
        for doc_id in ("m/x", "a/y", "z", "m", "a/m/q"):
            rule_index = rules.index(policy.rule_for(doc_id))
            assert view.bucket_of(doc_id) == rule_index * policy.partitions + policy.partition_of(doc_id)
        held = view.buckets_held()
        filters = {peer: view.filter_with(peer) for peer, *_rest in members if peer != node_id}
        for bucket in view.all_buckets():
            rule_index, partition = divmod(bucket, policy.partitions)
            rule = rules[rule_index]
            placed = {
                other_dc: replicas_in_dc(
                    partition, [c for c in candidates if c.dc == other_dc], rule.replicas_in(other_dc)
                )
                for other_dc in {c.dc for c in candidates}
            }
            holders = frozenset(n for nodes in placed.values() for n in nodes)
            assert view.holders(bucket) == holders
            own = sorted(placed[dc])
            assert view.holder_set_key(bucket) == HOLDER_SET_KEY_BIT | (
                zlib.crc32("\x00".join(own).encode()) & (HOLDER_SET_KEY_BIT - 1)
            )
            if held is not None:
                assert (bucket in held) == (rule.replicas_in(dc) is None or node_id in own)
            for peer, accept in filters.items():
                if accept is not None:
                    assert accept(bucket) == (node_id in holders and peer in holders)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(doc_ids, digests), max_size=60), st.sampled_from(["a1", "a2", "b0", "b2"]))
def test_a_peers_filtered_branch_hashes_are_the_xor_of_the_holder_sets_both_are_in(
    docs: list[tuple[str, bytes]], peer: str
) -> None:
    """What anti-entropy compares with a peer (`AntiEntropy._filtered_branches`): the tree's branch
    hashes grouped by the holder sets of the buckets held here, XORed over the sets the peer's
    `Filter` names, equal the tree filtered bucket by bucket with that `Filter`."""
    members = [(f"a{i}", "dc0") for i in range(3)] + [(f"b{i}", "dc1") for i in range(3)]
    view = _holding("a0", "dc0", members, PlacementPolicy((PlacementRule(1, "one/"), PlacementRule(2))))
    tree = MerkleTree(wire.TREE_SEGMENTS, wire.TREE_BRANCHES, view.bucket_of)
    for index, (doc_id, digest) in enumerate(docs):
        tree.set(("one/" if index % 3 == 0 else "") + doc_id, digest)
    table = view.table()
    accept = view.filter_with(peer)
    assert accept is not None

    def group_of(bucket: int) -> int:
        index = table.set_of[bucket]
        return index if table.held_mask[index] else -1

    grouped = tree.grouped_branch_values(group_of)[1]
    values = [0] * tree.branches
    for index in accept.set_indices:
        for branch, value in grouped.get(index, {}).items():
            values[branch] ^= value
    assert [v.to_bytes(16, "big") for v in values] == tree.filtered_branch_hashes(accept)


def test_remembered_buckets_stay_within_their_bound_and_answer_as_placement_does() -> None:
    """`bucket_of` remembers at most `BUCKETS_REMEMBERED_MAX` docs (here 4), and a doc's bucket is the
    same remembered, forgotten and worked out again."""
    policy = PlacementPolicy((PlacementRule(2, "m/"), PlacementRule(1)), partitions=64)
    membership = Membership(
        wire.MemberEntry("n0", "dc0", "tcp://n0", "tcp://n0p", 1, 0, False, "", 1.0), MembershipConfig(), 0.0
    )
    view = Holding("n0", "dc0", membership, policy)
    rules = (*policy.rules[:-1], policy.default)
    with patch("crdtsync.core.holding.BUCKETS_REMEMBERED_MAX", 4):
        for round_index in range(3):
            for doc_id in [f"m/{i}" for i in range(5)] + [f"d{i}" for i in range(5)]:
                rule_index = rules.index(policy.rule_for(doc_id))
                expected = rule_index * policy.partitions + policy.partition_of(doc_id)
                assert view.bucket_of(doc_id) == expected, (round_index, doc_id)
                assert len(view._buckets) <= 4
