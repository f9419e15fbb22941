"""Placement: which nodes replicate a doc. A pure, versioned function of the doc id, the placement
rules and the members; every node computes the same answer from the same view.

- doc id -> partition: CRC-32 of the UTF-8 id modulo the partition count. With the default 4096
  partitions a partition *is* a segment of the anti-entropy Merkle tree (`merkle.MerkleTree.
  segment_of`), so the replicas of a partition compare exactly the segments they share.
- partition -> replicas, in each datacenter separately: weighted rendezvous (highest random weight)
  hashing over the candidate members of that datacenter. Each candidate scores
  `-weight / ln(u)` with `u` uniform in (0, 1) from a hash of (partition, node id); the highest
  scores win. A member that joins or leaves moves only the partitions whose top `rf` it enters or
  leaves (minimal movement).
- weights, corrected for rf > 1 (version 2). `-w / ln(u)` ranks like an exponential race in which
  node i arrives at rate w_i: the top 1 is node i with probability w_i / W, exactly proportional,
  but the top k is a draw *without replacement*, which gives light nodes more than their share and
  heavy ones less (weights 1, 1, 2, 4 with rf 2: 23.5% off). So for rf > 1 every lookup ranks with
  *corrected* weights, solved so that each node's probability of being in the top k is its share:
  - the share: k * w_i / W per partition, but a node holds a partition at most once, so a node whose
    share reaches 1 is *saturated*: it holds every partition (it ranks before the others) and the
    other k - s replicas are shared among the rest by the same rule (water-filling);
  - the rest rank with weights x solving P_i(x) = target_i, where P_i is the exact probability of
    the race: integral over t of x_i e^(-x_i t) * Pr[fewer than k - s others arrived by t] (a
    Poisson-binomial over the weight classes), by Gauss-Legendre quadrature on doubling intervals;
    Newton steps on ln x toward logit(target) reach 1e-6: full steps up to 8 weight classes (the
    Jacobian by differences, halved until the worst error falls), per-class steps beyond (each
    class's slope from its previous step), which alone cycled with few, strongly coupled classes
    (0.831, 1.63, 2.043 with rf 2 gave a node a tenth of its share). Both agree to the tolerance.
  The corrections depend only on the multiset of weights and the count, not on node ids or the
  partition count, so they are computed once per (weights, count) and cached; a lookup stays one
  hash per candidate and a sort. Their cost grows with the distinct weights of a datacenter, not its
  members: about 10 ms of CPU for 256 members of three weights, half a second for 256 distinct
  weights (`bench.placement`). With equal weights, with rf 1 and when every candidate is a replica
  there is nothing to correct and ranking is by the weights themselves. The shares are proportional
  in expectation; the partitions of a cluster are draws, off by their sampling noise (a share p of
  P partitions: a relative standard deviation of sqrt((1 - p) / (p P)), 4% for 1/8 of 4096).
  A join or leave in a weighted datacenter changes every member's corrected weight, so besides the
  newcomer's or the leaver's share a few partitions move between the others: 2-7% above the ideal in
  the cases `bench.placement` measures, 15% for a leave when rf is half the datacenter and the weights
  spread from 1 to 6. With equal weights movement stays exactly minimal.
  Alternatives considered: fitting the weights to the partitions held (w_i <- w_i * target_i /
  held_i) would remove the sampling noise, but needs the partition count, scores every (partition,
  candidate) pair per step, and moves partitions among existing nodes at every join. Virtual nodes
  or a ring give up the minimal movement of rendezvous hashing.
- zones: within a datacenter, replicas spread over zones first. Candidates are taken in rank order,
  skipping a zone already used until every zone with candidates has one replica, then again. Zones
  come before weights: the corrections assume no zone constraint, so a zone with few or light nodes
  can keep a node off its share.

Changing any of this changes which node holds what: it is `PLACEMENT_VERSION`, pinned by tests.
Version 2 changed only the ranking of weighted candidates with rf > 1: the hash keeps version 1's
salt (`_HASH_SALT`), so a cluster of equal weights places every partition as version 1 did.
Determinism rests on IEEE doubles and the platform's `exp`/`log`, as the score always has: a
difference of an ulp flips a partition only where two scores tie to an ulp.
"""

from __future__ import annotations

import hashlib
import math
import zlib
from array import array
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

from crdtsync.core.placement_weights import Rank, corrections

PLACEMENT_VERSION = 2
_HASH_SALT = 1
"""Part of the score's hash key: still version 1's, so equal-weight answers did not change."""
PARTITIONS_DEFAULT = 4096
PARTITIONS_MAX = 65536
"""Partition ids travel as 2 bytes."""
ReplicationFactor = int | Literal["all"] | Mapping[str, int]
"""Replicas of each doc: the same number in every datacenter, every node of every datacenter, or a
number per datacenter (datacenters not named hold none)."""
RF_DEFAULT: ReplicationFactor = 3
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


def _hash_bits_of(partition: int, node_id: str) -> int:
    key = f"{_HASH_SALT}\x00{partition}\x00{node_id}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big") >> 11


_NODES_REMEMBERED_MAX = 1024
_bits_by_node: dict[str, array[int]] = {}
"""Each node id's hash bits per partition, filled up to the highest partition asked: a member view
change ranks every partition again (holding), and the hashes are most of that. At most 1,024 node
ids (then forgotten all at once) of at most `PARTITIONS_MAX` partitions: 8 bytes each."""


def _hash_bits(partition: int, node_id: str) -> int:
    """53 uniform bits for the pair: the hash every ranking starts from."""
    bits = _bits_by_node.get(node_id)
    if bits is None:
        if len(_bits_by_node) >= _NODES_REMEMBERED_MAX:
            _bits_by_node.clear()
        bits = _bits_by_node[node_id] = array("Q")
    if partition >= len(bits):
        if partition >= PARTITIONS_MAX:
            return _hash_bits_of(partition, node_id)
        bits.extend(_hash_bits_of(index, node_id) for index in range(len(bits), partition + 1))
    return bits[partition]


def _log_uniform(partition: int, node_id: str) -> float:
    """ln(u) for the pair, u uniform in (0, 1) from the hash: finite and negative."""
    return math.log((_hash_bits(partition, node_id) + 0.5) / float(1 << 53))  # u exactly in (0, 1)


def score(partition: int, candidate: Candidate) -> float:
    """Weighted rendezvous score of `candidate` for `partition` with its own weight (higher wins).
    Ranking for more than one replica uses corrected weights (`corrected_weights`)."""
    return -candidate.weight / _log_uniform(partition, candidate.node_id)


class DcRanking:
    """How `count` replicas (None: all) are picked among one datacenter's `candidates`, with what
    depends on the candidates alone worked out once: holding ranks every partition of a member view
    with one of these."""

    __slots__ = ("_candidates", "_equal_weights", "_one_zone", "_ranks", "_wanted")

    def __init__(self, candidates: Sequence[Candidate], count: int | None) -> None:
        self._candidates = tuple(candidates)
        self._wanted = len(candidates) if count is None else min(count, len(candidates))
        self._ranks = _ranks(candidates, self._wanted) if candidates else None
        first = candidates[0] if candidates else None
        self._equal_weights = first is not None and all(c.weight == first.weight for c in candidates)
        self._one_zone = first is None or all(c.zone == first.zone for c in candidates)

    def replicas(self, partition: int) -> list[str]:
        """The node ids holding `partition`, in preference order, spread over zones first."""
        candidates, ranks = self._candidates, self._ranks
        if not candidates:
            return []
        keyed: list[tuple[float, float, str, str]]
        if ranks is None and self._equal_weights:
            # Equal weights rank as u does (the score grows with u), and u as the hash bits (53 bits:
            # a float holds them exactly): the same order without a logarithm per candidate.
            keyed = [(0.0, float(_hash_bits(partition, c.node_id)), c.node_id, c.zone) for c in candidates]
        elif ranks is None:
            keyed = [(0.0, score(partition, c), c.node_id, c.zone) for c in candidates]
        else:
            keyed = [
                (
                    ranks[c.weight][0],
                    -ranks[c.weight][1] / _log_uniform(partition, c.node_id),
                    c.node_id,
                    c.zone,
                )
                for c in candidates
            ]
        keyed.sort(reverse=True)
        if self._one_zone:
            return [node_id for _tier, _score, node_id, _zone in keyed[: self._wanted]]
        return _spread_over_zones(keyed, self._wanted)


def _spread_over_zones(keyed: list[tuple[float, float, str, str]], wanted: int) -> list[str]:
    chosen: list[str] = []
    used_zones: set[str] = set()
    while len(chosen) < wanted:
        pick = next(
            (
                (node, zone)
                for _tier, _score, node, zone in keyed
                if node not in chosen and zone not in used_zones
            ),
            None,
        )
        if pick is None:
            used_zones = set()  # every zone left has a replica this round: start the next round
            continue
        chosen.append(pick[0])
        used_zones.add(pick[1])
    return chosen


def replicas_in_dc(partition: int, candidates: Sequence[Candidate], count: int | None) -> list[str]:
    """The node ids holding `partition` among one datacenter's `candidates`, in preference order:
    `count` of them (None: all), spread over zones first."""
    return DcRanking(candidates, count).replicas(partition)


# ------------------------------------------------------------ weight corrections


def _ranks(candidates: Sequence[Candidate], count: int) -> Mapping[float, Rank] | None:
    """Weight -> rank for picking `count` of `candidates`; None: rank by the weights themselves
    (rf 1, everyone picked, or equal weights: nothing to correct)."""
    if count <= 1 or count >= len(candidates):
        return None
    first = candidates[0].weight
    if all(c.weight == first for c in candidates):
        return None
    return corrections(tuple(sorted(c.weight for c in candidates)), count)


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
