"""Who holds which doc, as this node's member table says: the enforcement side of placement.

A node *holds* a doc when placement makes it one of the doc's replicas; a doc placed with
`rf = "all"` is held by every member. Relays are no exception: they hold their share like any node,
forward another datacenter's deltas of the docs they do not hold without keeping them (`inbound`),
and every node compares the docs it holds with their holders in other datacenters
(`antientropy`).

Holding decides what the replica keeps and compares:
- remote content (deltas, sync answers, pushes, handoff offers) for a doc this node neither holds nor
  already has is dropped (counted) after sequence tracking, which stays whole;
- anti-entropy between two nodes compares only the docs both hold (`Filter`), computed the same way
  on both sides from the same member view, so the Merkle roots of two replicas of different shares
  are equal exactly when their common docs are;
- a doc this node has but does not hold (a local write on a non-replica, a partition that moved away)
  is handed to a holder and then dropped (`handoff`).

Placement candidates are every member that has not left (a down replica keeps its partitions), so a
crash moves nothing; only a leave or a join moves docs.
"""

from __future__ import annotations

import dataclasses
import itertools
import zlib

from crdtsync.core.membership import Membership
from crdtsync.core.placement import (
    Candidate,
    ClusterPlacement,
    DcRanking,
    DocPlacement,
    MemberState,
    PlacementPolicy,
    cluster_placement,
    doc_placement,
    partition_of,
)

BucketKey = int
"""(rule index, partition) of a doc, as one int: `rule_index * partitions + partition`."""

HOLDER_SET_KEY_BIT = 1 << 31
"""Set in every holder-set key (`Holding.holder_set_key`) and in no bucket key, so both can name
topics side by side."""

BUCKETS_REMEMBERED_MAX = 65_536
"""Docs whose bucket `Holding.bucket_of` remembers (a few MiB at most)."""


class Holding:
    """Holders of each (rule, partition), recomputed when the member view changes."""

    def __init__(self, node_id: str, dc: str, membership: Membership, policy: PlacementPolicy) -> None:
        self.node_id = node_id
        self._dc = dc
        self._membership = membership
        self.policy = policy
        self._rules = (*(rule for rule in policy.rules if rule.prefix is not None), policy.default)
        self._prefix_bases = tuple(
            (index * policy.partitions, rule.prefix)
            for index, rule in enumerate(self._rules[:-1])
            if rule.prefix is not None
        )
        """(first bucket, prefix) of each rule with a prefix, in order: where `bucket_of` looks."""
        self._default_base = (len(self._rules) - 1) * policy.partitions
        self._buckets: dict[str, BucketKey] = {}
        """Doc id -> its bucket, computed once (up to `BUCKETS_REMEMBERED_MAX` docs)."""
        self.enforced = any(rule.rf != "all" for rule in self._rules)
        """False when every rule is "all": every node holds every doc, and nothing here is needed."""
        self._seen_revision = -1
        self.draining = False
        """This node is leaving: it counts itself out (holds nothing) while the others still count
        it in, so that it hands every doc to the holders it leaves them to (`drain`)."""
        self._view: tuple[Candidate, ...] = ()
        self.candidates: tuple[Candidate, ...] = ()
        """Every member that has not left (a down one keeps its partitions), this node included."""
        self.version = 0
        """Bumped when the member view that decides holding changes (what depends on it rescans)."""
        self.view_digest = zlib.crc32(repr(self._view).encode())
        """The view as a 32-bit digest, equal on two nodes that see the same candidates (and so
        place every doc alike): sequence acknowledgements carry it (`seqacks`)."""
        self._by_dc: dict[str, list[Candidate]] = {}
        self._ordered: dict[tuple[int, str, int | None], list[str]] = {}
        """(partition, datacenter, replica count) -> its replicas there in preference order, for
        `replicas_in_order` (handoff and forwarding targets), filled as asked; cleared with the
        view, so at most one entry per bucket and datacenter."""
        self._dc_of: dict[str, str] = {}
        self._partitioned = False
        self._table: ViewTable | None = None
        """What placement gives every bucket in this view, computed in one pass at its first use."""
        self._cluster_placement: tuple[tuple[Candidate, ...], ClusterPlacement] | None = None
        self._rankings: dict[tuple[str, int | None], DcRanking] = {}
        """How each datacenter's replicas are picked in this view, per replica count."""
        self._filters: tuple[int, dict[str, Filter]] = (-1, {})
        """(view version, candidate peer -> its `Filter` in that view)."""

    # ------------------------------------------------------------------ the view

    def refresh(self) -> None:
        """Recompute the view if the member table changed in a way that matters."""
        membership = self._membership
        if membership.revision == self._seen_revision:
            return
        self._seen_revision = membership.revision
        own = membership.own
        candidates: list[Candidate] = []
        if not own.left and not self.draining:
            candidates.append(Candidate(self.node_id, self._dc, own.zone, own.weight))
        for node_id, member in membership.members.items():
            if member.liveness != "left":
                record = member.record
                candidates.append(Candidate(node_id, record.dc, record.zone, record.weight))
        candidates.sort(key=lambda c: c.node_id)
        view = tuple(candidates)
        if view == self._view:
            return
        self.candidates = view
        self._view = view
        self.view_digest = zlib.crc32(repr(view).encode())
        self.version += 1
        self._ordered.clear()
        self._table = None
        self._rankings.clear()
        self._by_dc = {}
        self._dc_of = {}
        for candidate in candidates:
            self._by_dc.setdefault(candidate.dc, []).append(candidate)
            self._dc_of[candidate.node_id] = candidate.dc
        # Some node holds only part of the docs: a datacenter with more members than a rule's replicas.
        self._partitioned = self.enforced and any(
            (count := rule.replicas_in(dc)) is not None and count < len(members)
            for rule in self._rules
            for dc, members in self._by_dc.items()
        )

    @property
    def partitioned(self) -> bool:
        """Whether some member holds only part of the docs: then deltas go out on their buckets'
        topics (`outbound`), subscribers take only the buckets they hold (`links`), and every node
        compares what it holds with its holders in other datacenters (`antientropy`). Otherwise
        every member holds every doc."""
        self.refresh()
        return self._partitioned

    def buckets_held(self) -> frozenset[BucketKey] | None:
        """The buckets this node holds; None when it holds every doc."""
        self.refresh()
        if not self._partitioned:
            return None
        return self.table().held

    def table(self) -> ViewTable:
        """What placement gives every bucket in the current view (see `ViewTable`)."""
        self.refresh()
        table = self._table
        if table is None:
            table = self._table = ViewTable.build(self)
        return table

    def _ranking(self, dc: str, count: int | None) -> DcRanking:
        ranking = self._rankings.get((dc, count))
        if ranking is None:
            ranking = self._rankings[dc, count] = DcRanking(self._by_dc.get(dc, []), count)
        return ranking

    def all_buckets(self) -> range:
        """Every bucket of every rule."""
        return range(len(self._rules) * self.policy.partitions)

    def drain(self) -> None:
        self.draining = True
        self._seen_revision = -1  # recompute the view without this node

    def bucket_of(self, doc_id: str) -> BucketKey:
        # Asked per doc on every receive, publish, open, handoff pass and follower decision; the
        # policy never changes, so a doc's bucket is remembered (the most recent docs, bounded).
        bucket = self._buckets.get(doc_id)
        if bucket is not None:
            return bucket
        partition = partition_of(doc_id, self.policy.partitions)
        bucket = self._default_base + partition
        for base, prefix in self._prefix_bases:
            if doc_id.startswith(prefix):
                bucket = base + partition
                break
        if len(self._buckets) >= BUCKETS_REMEMBERED_MAX:
            self._buckets.clear()  # cheaper than an LRU's bookkeeping on every hit
        self._buckets[doc_id] = bucket
        return bucket

    def holders(self, bucket: BucketKey) -> frozenset[str]:
        """Every node holding the docs of `bucket` (all members for an "all" rule)."""
        table = self.table()
        return table.holder_sets[table.set_of[bucket]]

    def replicas_in_order(self, bucket: BucketKey, dc: str) -> list[str]:
        """The holders of `bucket` in datacenter `dc`, in preference order."""
        self.refresh()
        rule_index, partition = divmod(bucket, self.policy.partitions)
        return list(self._ranked(partition, dc, self._rules[rule_index].replicas_in(dc)))

    def _ranked(self, partition: int, dc: str, count: int | None) -> list[str]:
        """`count` replicas of `partition` in `dc` (None: all), in preference order; not to be changed."""
        cached = self._ordered.get((partition, dc, count))
        if cached is None:
            cached = self._ranking(dc, count).replicas(partition)
            self._ordered[partition, dc, count] = cached
        return cached

    def holder_set_key(self, bucket: BucketKey) -> int:
        """A key for the nodes of this datacenter that hold `bucket`: deltas go out in one frame per
        such set on its topic (`outbound`), and each node subscribes to the sets it
        is in. A CRC-32 of the sorted node ids: a collision only brings a node deltas that its
        sequence index already counted, dropped as duplicates."""
        return self.table().topic_keys[bucket]

    def holds(self, node_id: str, bucket: BucketKey) -> bool:
        if not self.enforced:
            return True
        return node_id in self.holders(bucket)

    def holds_doc(self, doc_id: str) -> bool:
        """Whether this node holds `doc_id`."""
        if not self.enforced:
            return True
        if self.draining:  # a leaving node holds nothing, even where every other member holds everything
            return False
        held = self.buckets_held()  # one set lookup: asked for every remote update and every open
        return held is None or self.bucket_of(doc_id) in held

    def dc_of(self, node_id: str) -> str | None:
        self.refresh()
        return self._dc_of.get(node_id)

    def filter_with(self, peer: str) -> Filter | None:
        """What anti-entropy with `peer` compares: None for everything (every member holds every doc).
        One per candidate peer and member view, so that its answers serve every round of that view."""
        if not self.partitioned:
            return None
        if self._filters[0] != self.version:
            self._filters = (self.version, {})
        filters = self._filters[1]
        found = filters.get(peer)
        if found is None:
            found = Filter(self, peer)
            if peer in self._dc_of:
                filters[peer] = found  # at most one per member of the view
        return found

    # ------------------------------------------------------------------ the views

    def _states(self) -> dict[str, MemberState]:
        """The state this node sees each candidate in (a member that left counts as alive: it is
        not a candidate any more once the others know)."""
        self.refresh()
        members = self._membership.members
        states: dict[str, MemberState] = {}
        for candidate in self.candidates:
            member = members.get(candidate.node_id)
            liveness = "alive" if member is None else member.liveness
            states[candidate.node_id] = "alive" if liveness == "left" else liveness
        return states

    def doc_placement(self, doc_id: str) -> DocPlacement:
        """The doc's partition and replicas in each datacenter, as this node's member table says."""
        states = self._states()
        placed = doc_placement(doc_id, self.policy, list(self.candidates), states)
        return dataclasses.replace(placed, enforced=placed.rf != "all" and self.enforced)

    def cluster_placement(self) -> ClusterPlacement:
        """Partitions per member under the default rule (computed once per membership)."""
        self.refresh()
        cached = self._cluster_placement
        if cached is None or cached[0] != self.candidates:
            placed = dataclasses.replace(
                cluster_placement(self.policy, self.candidates), enforced=self.enforced
            )
            cached = self._cluster_placement = (self.candidates, placed)
        return cached[1]


class ViewTable:
    """What placement gives every bucket in one member view, worked out in one pass when the view is
    first used: a tight loop over rules x partitions x datacenters (rules of equal replica counts
    share it), about 20 ms for 4,096 partitions over 2 datacenters of 3 nodes. Each bucket's
    holders, holder-set topic key, whether this node holds it, and every anti-entropy `Filter`
    answer are then lookups in lists. (Worked out one bucket at a time at first use, the same work
    cost several times more and landed on the write and receive path of a cluster that had just
    started or changed.) Its size is fixed by the buckets (rules x partitions): one int per bucket
    in each list, and at most one holder set per bucket. A view change replaces it."""

    __slots__ = ("held", "held_mask", "held_sets", "holder_sets", "set_of", "topic_keys")

    def __init__(
        self,
        set_of: list[int],
        holder_sets: tuple[frozenset[str], ...],
        topic_keys: list[int],
        held: frozenset[BucketKey],
        held_sets: tuple[int, ...],
    ) -> None:
        self.set_of = set_of
        """Bucket -> the index of its holders in `holder_sets`."""
        self.holder_sets = holder_sets
        """The distinct holder sets of the view's buckets."""
        self.topic_keys = topic_keys
        """Bucket -> `Holding.holder_set_key`."""
        self.held = held
        """The buckets this node holds."""
        self.held_sets = held_sets
        """The indices of the holder sets of the buckets held here, in the order of their first bucket."""
        mask = bytearray(len(holder_sets))
        for index in held_sets:
            mask[index] = 1
        self.held_mask = bytes(mask)
        """Holder-set index -> 1 for the sets of `held_sets`."""

    @classmethod
    def build(cls, holding: Holding) -> ViewTable:
        partitions = holding.policy.partitions
        dcs = sorted(holding._by_dc.keys() | {holding._dc})
        interned: tuple[dict[frozenset[str], int], dict[tuple[str, ...], int]] = ({}, {})
        """(holder set -> its index, this datacenter's replicas, sorted -> their topic key)."""
        by_counts: dict[tuple[int | None, ...], tuple[list[int], list[int], list[int]]] = {}
        """Replica count in each datacenter -> (set index, topic key, partitions held here) per
        partition: rules of equal counts place alike."""
        set_of: list[int] = []
        topic_keys: list[int] = []
        held: list[BucketKey] = []
        for rule_index, rule in enumerate(holding._rules):
            counts = tuple(rule.replicas_in(dc) for dc in dcs)
            placed = by_counts.get(counts)
            if placed is None:
                placed = by_counts[counts] = cls._place(holding, dcs, counts, interned)
            base = rule_index * partitions
            set_of.extend(placed[0])
            topic_keys.extend(placed[1])
            held.extend(base + partition for partition in placed[2])
        held_sets = dict.fromkeys(set_of[bucket] for bucket in held)
        return cls(set_of, tuple(interned[0]), topic_keys, frozenset(held), tuple(held_sets))

    @staticmethod
    def _place(
        holding: Holding,
        dcs: list[str],
        counts: tuple[int | None, ...],
        interned: tuple[dict[frozenset[str], int], dict[tuple[str, ...], int]],
    ) -> tuple[list[int], list[int], list[int]]:
        """(holder set index, topic key, whether held here) of every partition under `counts`. A
        datacenter whose every member holds (an "all" rule, or no more members than replicas) is
        not ranked: its replicas are the same for every partition."""
        set_index, key_of = interned
        own = dcs.index(holding._dc)
        fixed: list[list[str]] = []
        rankings: list[DcRanking | None] = []
        for dc, count in zip(dcs, counts, strict=True):
            members = holding._by_dc.get(dc, [])
            every = count is None or count >= len(members)
            fixed.append(sorted(m.node_id for m in members) if every and count != 0 else [])
            rankings.append(None if every or count == 0 else holding._ranking(dc, count))
        sets: list[int] = []
        keys: list[int] = []
        held: list[int] = []
        node_id = holding.node_id
        for partition in range(holding.policy.partitions if any(rankings) else 1):
            ranked = [
                replicas if ranking is None else ranking.replicas(partition)
                for replicas, ranking in zip(fixed, rankings, strict=True)
            ]
            holders = frozenset(itertools.chain.from_iterable(ranked))
            index = set_index.get(holders)
            if index is None:
                index = set_index[holders] = len(set_index)
            sets.append(index)
            own_replicas = tuple(sorted(ranked[own]))
            key = key_of.get(own_replicas)
            if key is None:
                key = key_of[own_replicas] = HOLDER_SET_KEY_BIT | (
                    zlib.crc32("\x00".join(own_replicas).encode()) & (HOLDER_SET_KEY_BIT - 1)
                )
            keys.append(key)
            if counts[own] is None or node_id in own_replicas:
                held.append(partition)
        if not any(rankings):  # every partition placed alike: the first stands for all
            partitions = holding.policy.partitions
            return sets * partitions, keys * partitions, list(range(partitions)) if held else []
        return sets, keys, held


class Filter:
    """The buckets both this node and one peer hold, in one member view: an answer is two list
    lookups (`ViewTable`)."""

    __slots__ = ("_accepted", "_set_of", "peer", "set_indices", "table", "view")

    def __init__(self, holding: Holding, peer: str) -> None:
        self.table = table = holding.table()
        self.view = holding.version
        """The member view its answers are of: a round that outlives a view change keeps using it."""
        self.peer = peer
        node_id = holding.node_id
        self.set_indices = tuple(
            index for index, nodes in enumerate(table.holder_sets) if node_id in nodes and peer in nodes
        )
        """The holder sets (`ViewTable.holder_sets`) of the buckets accepted."""
        accepted = bytearray(len(table.holder_sets))
        for index in self.set_indices:
            accepted[index] = 1
        self._accepted = bytes(accepted)
        self._set_of = table.set_of

    def __call__(self, bucket: BucketKey) -> bool:
        return self._accepted[self._set_of[bucket]] == 1
