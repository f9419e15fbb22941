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
)

BucketKey = int
"""(rule index, partition) of a doc, as one int: `rule_index * partitions + partition`."""

HOLDER_SET_KEY_BIT = 1 << 31
"""Set in every holder-set key (`Holding.holder_set_key`) and in no bucket key, so both can name
topics side by side."""


class Holding:
    """Holders of each (rule, partition), recomputed when the member view changes."""

    def __init__(self, node_id: str, dc: str, membership: Membership, policy: PlacementPolicy) -> None:
        self.node_id = node_id
        self._dc = dc
        self._membership = membership
        self.policy = policy
        self._rules = (*(rule for rule in policy.rules if rule.prefix is not None), policy.default)
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
        self._holders: dict[BucketKey, frozenset[str]] = {}
        self._ordered: dict[tuple[int, str, int | None], list[str]] = {}
        """(partition, datacenter, replica count) -> its replicas there in preference order: what
        the held buckets, the holders and the holder sets are made of, each ranked once per view."""
        self._holder_set_keys: dict[BucketKey, int] = {}
        self._dc_of: dict[str, str] = {}
        self._partitioned = False
        self._held: tuple[int, frozenset[BucketKey]] | None = None
        """(view version, the buckets this node holds), computed when first asked in a view."""
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
        self._holders.clear()
        self._ordered.clear()
        self._holder_set_keys.clear()
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
        if self._held is None or self._held[0] != self.version:
            held: set[BucketKey] = set()
            partitions = self.policy.partitions
            by_count: dict[int, list[int]] = {}
            """Replica count -> the partitions held with it: rules of equal counts rank alike."""
            for rule_index, rule in enumerate(self._rules):
                count = rule.replicas_in(self._dc)
                base = rule_index * partitions
                if count is None:
                    held.update(range(base, base + partitions))
                elif count > 0:
                    if count not in by_count:
                        by_count[count] = [
                            partition
                            for partition in range(partitions)
                            if self.node_id in self._ranked(partition, self._dc, count)
                        ]
                    held.update(base + partition for partition in by_count[count])
            self._held = (self.version, frozenset(held))
        return self._held[1]

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
        policy = self.policy
        partition = policy.partition_of(doc_id)
        for index, rule in enumerate(self._rules[:-1]):
            if rule.prefix is not None and doc_id.startswith(rule.prefix):
                return index * policy.partitions + partition
        return (len(self._rules) - 1) * policy.partitions + partition

    def holders(self, bucket: BucketKey) -> frozenset[str]:
        """Every node holding the docs of `bucket` (all members for an "all" rule)."""
        self.refresh()
        cached = self._holders.get(bucket)
        if cached is None:
            rule_index, partition = divmod(bucket, self.policy.partitions)
            rule = self._rules[rule_index]
            chosen: set[str] = set()
            for dc in self._by_dc:
                chosen.update(self._ranked(partition, dc, rule.replicas_in(dc)))
            cached = self._holders[bucket] = frozenset(chosen)
        return cached

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
        self.refresh()
        key = self._holder_set_keys.get(bucket)
        if key is None:
            nodes = sorted(self.replicas_in_order(bucket, self._dc))
            key = self._holder_set_keys[bucket] = HOLDER_SET_KEY_BIT | (
                zlib.crc32("\x00".join(nodes).encode()) & (HOLDER_SET_KEY_BIT - 1)
            )
        return key

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


class Filter:
    """The buckets both this node and one peer hold, answered once per bucket."""

    def __init__(self, holding: Holding, peer: str) -> None:
        self._holding = holding
        self._node_id = holding.node_id
        self.peer = peer
        self.view = holding.version
        """The member view its answers are of: a round that outlives a view change keeps using it."""
        self._answers: dict[BucketKey, bool] = {}

    def __call__(self, bucket: BucketKey) -> bool:
        answer = self._answers.get(bucket)
        if answer is None:
            holders = self._holding.holders(bucket) if self._holding.enforced else None
            answer = holders is None or (self._node_id in holders and self.peer in holders)
            self._answers[bucket] = answer
        return answer
