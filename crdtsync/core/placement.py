"""Placement: which nodes replicate a doc. A pure, versioned function of the doc id, the placement
rules and the members; every node computes the same answer from the same view.

- doc id -> partition: CRC-32 of the UTF-8 id modulo the partition count. With the default 4096
  partitions a partition *is* a segment of the anti-entropy Merkle tree (`merkle.MerkleTree.
  segment_of`), so the replicas of a partition compare exactly the segments they share.
- partition -> replicas, in each datacenter separately: weighted rendezvous (highest random weight)
  hashing over the candidate members of that datacenter. Each candidate scores
  `-weight / ln(u)` with `u` uniform in (0, 1) from a hash of (version, partition, node id); the
  highest scores win. A member that joins or leaves moves only the partitions whose top `rf` it
  enters or leaves (minimal movement), and a weight scales a node's expected share.
- zones: within a datacenter, replicas spread over zones first. Candidates are taken in score order,
  skipping a zone already used until every zone with candidates has one replica, then again.

Changing any of this changes which node holds what: it is `PLACEMENT_VERSION`, pinned by tests.
"""

from __future__ import annotations

import hashlib
import math
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

PLACEMENT_VERSION = 1
PARTITIONS_DEFAULT = 4096
PARTITIONS_MAX = 65536
"""Partition ids travel as 2 bytes."""
ReplicationFactor = int | Literal["all"] | Mapping[str, int]
"""Replicas of each doc: the same number in every datacenter, every node of every datacenter, or a
number per datacenter (datacenters not named hold none)."""
RF_DEFAULT: ReplicationFactor = "all"
"""Every node holds every doc unless a rule says otherwise: a node that is not a replica cannot yet
forward reads to one, so narrower defaults are opt-in (see docs/placement.md)."""


class PlacementError(ValueError):
    """Placement rules that cannot work; the message names the rule and what is wrong."""


@dataclass(frozen=True, slots=True)
class PlacementRule:
    """Docs whose id starts with `prefix` (None: every doc) get `rf` replicas."""

    rf: ReplicationFactor
    prefix: str | None = None

    def replicas_in(self, dc: str) -> int | None:
        """How many replicas datacenter `dc` holds; None for all of its nodes."""
        if self.rf == "all":
            return None
        if isinstance(self.rf, int):
            return self.rf
        return self.rf.get(dc, 0)


@dataclass(frozen=True, slots=True)
class PlacementPolicy:
    """The cluster's placement: the partition count and the rules, the first matching prefix first.

    The last rule without a prefix is the default; without one, `RF_DEFAULT` ("all": every node holds
    every doc)."""

    rules: tuple[PlacementRule, ...] = ()
    partitions: int = PARTITIONS_DEFAULT
    default: PlacementRule = field(init=False)

    def __post_init__(self) -> None:
        if not 1 <= self.partitions <= PARTITIONS_MAX:
            raise PlacementError(f"partitions must be in 1..{PARTITIONS_MAX}, got {self.partitions}")
        defaults = [rule for rule in self.rules if rule.prefix is None]
        if len(defaults) > 1:
            raise PlacementError("only one placement rule may have no prefix (the default)")
        if defaults and self.rules[-1].prefix is not None:
            raise PlacementError("the placement rule without a prefix (the default) must come last")
        for index, rule in enumerate(self.rules):
            _check_rule(index, rule)
        object.__setattr__(self, "default", defaults[0] if defaults else PlacementRule(RF_DEFAULT))

    def rule_for(self, doc_id: str) -> PlacementRule:
        for rule in self.rules:
            if rule.prefix is not None and doc_id.startswith(rule.prefix):
                return rule
        return self.default

    def partition_of(self, doc_id: str) -> int:
        return partition_of(doc_id, self.partitions)


def _check_rule(index: int, rule: PlacementRule) -> None:
    where = f"placement rule {index + 1}" + (f" (prefix {rule.prefix!r})" if rule.prefix else "")
    if rule.prefix == "":
        raise PlacementError(f"{where}: an empty prefix matches every doc; leave the prefix out instead")
    rf = rule.rf
    if rf == "all":
        return
    if isinstance(rf, bool) or not isinstance(rf, int | Mapping):
        raise PlacementError(f'{where}: rf must be a number, "all" or a table of datacenter = number')
    counts = [rf] if isinstance(rf, int) else list(rf.values())
    for count in counts:
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise PlacementError(f"{where}: a replica count must be a whole number >= 0, got {count!r}")
    if isinstance(rf, int) and rf < 1:
        raise PlacementError(f"{where}: rf must be at least 1")
    if isinstance(rf, Mapping) and not any(counts):
        raise PlacementError(f"{where}: rf names no datacenter with a replica")


@dataclass(frozen=True, slots=True)
class Candidate:
    """A member that can hold replicas: alive or suspect (down and departed members cannot)."""

    node_id: str
    dc: str
    zone: str = ""
    weight: float = 1.0


def partition_of(doc_id: str, partitions: int = PARTITIONS_DEFAULT) -> int:
    """The partition of a doc: part of the protocol (the same as the Merkle segment at 4096)."""
    return zlib.crc32(doc_id.encode()) % partitions


def score(partition: int, candidate: Candidate) -> float:
    """Weighted rendezvous score of `candidate` for `partition` (higher wins)."""
    key = f"{PLACEMENT_VERSION}\x00{partition}\x00{candidate.node_id}".encode()
    bits = int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big") >> 11  # 53 bits
    uniform = (bits + 0.5) / float(1 << 53)  # exactly in (0, 1): the log is finite and negative
    return -candidate.weight / math.log(uniform)


def replicas_in_dc(partition: int, candidates: Sequence[Candidate], count: int | None) -> list[str]:
    """The node ids holding `partition` among one datacenter's `candidates`, in preference order:
    `count` of them (None: all), spread over zones first."""
    ranked = sorted(candidates, key=lambda c: (score(partition, c), c.node_id), reverse=True)
    wanted = len(ranked) if count is None else min(count, len(ranked))
    chosen: list[str] = []
    used_zones: set[str] = set()
    while len(chosen) < wanted:
        pick = next((c for c in ranked if c.node_id not in chosen and c.zone not in used_zones), None)
        if pick is None:
            used_zones = set()  # every zone left has a replica this round: start the next round
            continue
        chosen.append(pick.node_id)
        used_zones.add(pick.zone)
    return chosen


def replicas(doc_id: str, policy: PlacementPolicy, candidates: Iterable[Candidate]) -> dict[str, list[str]]:
    """Datacenter -> the node ids replicating `doc_id` there, in preference order. Every datacenter
    with candidates is listed (an empty list: it holds no replica by the rule)."""
    by_dc: dict[str, list[Candidate]] = {}
    for candidate in candidates:
        by_dc.setdefault(candidate.dc, []).append(candidate)
    rule = policy.rule_for(doc_id)
    partition = policy.partition_of(doc_id)
    return {
        dc: replicas_in_dc(partition, members, rule.replicas_in(dc)) for dc, members in sorted(by_dc.items())
    }


def partition_counts(
    policy: PlacementPolicy, candidates: Sequence[Candidate], rule: PlacementRule
) -> dict[str, int]:
    """Node id -> partitions it replicates under `rule` (every node listed, 0 included)."""
    by_dc: dict[str, list[Candidate]] = {}
    for candidate in candidates:
        by_dc.setdefault(candidate.dc, []).append(candidate)
    counts = {candidate.node_id: 0 for candidate in candidates}
    for dc, members in by_dc.items():
        count = rule.replicas_in(dc)
        for partition in range(policy.partitions):
            for node_id in replicas_in_dc(partition, members, count):
                counts[node_id] += 1
    return counts


def imbalance(counts: Mapping[str, int]) -> float:
    """Max over mean of the partitions per node (1.0: perfectly even); 0 with nothing placed."""
    if not counts or not sum(counts.values()):
        return 0.0
    mean = sum(counts.values()) / len(counts)
    return max(counts.values()) / mean


# ---------------------------------------------------------------------- views

MemberState = Literal["alive", "suspect", "down"]


@dataclass(frozen=True, slots=True)
class PlacedReplica:
    node_id: str
    state: MemberState
    """As this node's failure detector sees it: a down replica keeps its partitions (only a member
    that leaves gives them up), so a crash moves nothing."""


@dataclass(frozen=True, slots=True)
class DocPlacement:
    """Where one doc lives: its partition and its replicas in each datacenter, in preference order."""

    doc_id: str
    partition: int
    prefix: str | None
    """The prefix of the rule that placed it (None: the default rule)."""
    rf: ReplicationFactor
    replicas: Mapping[str, tuple[PlacedReplica, ...]]
    version: int = PLACEMENT_VERSION
    enforced: bool = False
    """Only the doc's holders keep it: its rule is narrower than "all"."""
    relays: tuple[str, ...] = ()
    """Nodes that hold every doc besides its replicas: the relays, in a cluster that spans
    datacenters (anti-entropy between datacenters runs between them)."""


@dataclass(frozen=True, slots=True)
class ClusterPlacement:
    """How the default rule spreads the partitions over the members."""

    partitions: int
    rf: ReplicationFactor
    partitions_per_node: Mapping[str, int]
    imbalance_by_dc: Mapping[str, float]
    """Max over mean partitions per node within each datacenter (1.0: perfectly even)."""
    version: int = PLACEMENT_VERSION
    enforced: bool = False
    """Some rule is narrower than "all": nodes hold only their share of those docs."""


def doc_placement(
    doc_id: str, policy: PlacementPolicy, candidates: Sequence[Candidate], states: Mapping[str, MemberState]
) -> DocPlacement:
    rule = policy.rule_for(doc_id)
    placed = replicas(doc_id, policy, candidates)
    return DocPlacement(
        doc_id=doc_id,
        partition=policy.partition_of(doc_id),
        prefix=rule.prefix,
        rf=rule.rf,
        replicas={
            dc: tuple(PlacedReplica(node_id, states.get(node_id, "alive")) for node_id in ids)
            for dc, ids in placed.items()
        },
    )


def cluster_placement(policy: PlacementPolicy, candidates: Sequence[Candidate]) -> ClusterPlacement:
    counts = partition_counts(policy, candidates, policy.default)
    dc_of = {candidate.node_id: candidate.dc for candidate in candidates}
    by_dc: dict[str, dict[str, int]] = {}
    for node_id, count in counts.items():
        by_dc.setdefault(dc_of[node_id], {})[node_id] = count
    return ClusterPlacement(
        partitions=policy.partitions,
        rf=policy.default.rf,
        partitions_per_node=dict(sorted(counts.items())),
        imbalance_by_dc={dc: imbalance(dc_counts) for dc, dc_counts in sorted(by_dc.items())},
    )
