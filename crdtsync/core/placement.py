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

import functools
import hashlib
import math
import zlib
from array import array
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

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

Rank = tuple[int, float]
"""How a weight ranks: (1 saturated, ranked before every other / 0, the weight to score with)."""


def _ranks(candidates: Sequence[Candidate], count: int) -> Mapping[float, Rank] | None:
    """Weight -> rank for picking `count` of `candidates`; None: rank by the weights themselves
    (rf 1, everyone picked, or equal weights: nothing to correct)."""
    if count <= 1 or count >= len(candidates):
        return None
    first = candidates[0].weight
    if all(c.weight == first for c in candidates):
        return None
    return _corrections(tuple(sorted(c.weight for c in candidates)), count)


def corrected_weights(weights: Sequence[float], count: int) -> list[Rank]:
    """For candidates of `weights` of which `count` replicas are picked: how each ranks, in the
    same order (see the module docstring). Cached per (weights, count)."""
    if count <= 1 or count >= len(weights) or len(set(weights)) <= 1:
        return [(0, w) for w in weights]
    ranks = _corrections(tuple(sorted(weights)), count)
    return [ranks[w] for w in weights]


def target_shares(weights: Sequence[float], count: int) -> list[float]:
    """The probability that each candidate of `weights` holds a partition when `count` of them are
    picked: `count * w / W`, at most 1, the rest shared among the others (water-filling)."""
    positive = [w if w > 0 else 0.0 for w in weights]
    saturated = [False] * len(positive)
    while True:
        left = count - sum(saturated)
        total = sum(w for w, s in zip(positive, saturated, strict=True) if not s)
        if left <= 0 or total <= 0:
            return [1.0 if s else 0.0 for s in saturated]
        shares = [1.0 if s else min(1.0, left * w / total) for w, s in zip(positive, saturated, strict=True)]
        grown = [s or share >= 1.0 - 1e-12 for s, share in zip(saturated, shares, strict=True)]
        if grown == saturated:
            return shares
        saturated = grown


_SOLVE_TOLERANCE = 1e-6
"""Error of the logit of every share at which the correction stops (about the relative error of a
small share): far below the sampling noise."""
_SOLVE_STEPS_MAX = 100
_NEWTON_CLASSES_MAX = 8
"""Up to this many weight classes the correction takes full Newton steps (one evaluation of the race
per class per step); beyond, per-class steps (one evaluation per step), which the coupling between
few classes can throw into a cycle."""


@functools.lru_cache(maxsize=256)
def _corrections(weights: tuple[float, ...], count: int) -> Mapping[float, Rank]:
    classes = sorted(Counter(weights).items())
    values = [w for w, _ in classes]
    sizes = [m for _, m in classes]
    per_node = target_shares(weights, count)  # weights are sorted: each class is one run
    targets = [per_node[weights.index(w)] for w in values]
    ranks: dict[float, Rank] = {}
    rest: list[int] = []
    saturated = 0
    for c, (w, target) in enumerate(zip(values, targets, strict=True)):
        if w <= 0 or target <= 0:  # never picked but to fill a zone: ranked by the weight itself
            ranks[w] = (0, w)
        elif target >= 1.0 - 1e-12:
            ranks[w] = (1, w)
            saturated += sizes[c]
        else:
            rest.append(c)
    left = count - saturated
    if len(rest) == 1 or left <= 1:
        for c in rest:  # one weight left, or one replica left: the plain race is proportional
            ranks[values[c]] = (0, values[c])
        return ranks
    solved = _solve([values[c] for c in rest], [sizes[c] for c in rest], [targets[c] for c in rest], left)
    for c, x in zip(rest, solved, strict=True):
        ranks[values[c]] = (0, x)
    return ranks


def _logit(p: float) -> float:
    p = min(max(p, 1e-300), 1.0 - 1e-15)
    return math.log(p) - math.log1p(-p)


def _solve(values: list[float], sizes: list[int], targets: list[float], count: int) -> list[float]:
    """Weights x (summing to 1 over the nodes) whose race puts each class in the top `count` with
    its target probability: full Newton steps for few classes, per-class steps for many."""
    if len(values) <= _NEWTON_CLASSES_MAX:
        solved = _solve_newton(values, sizes, targets, count)
        if solved is not None:
            return solved
    return _solve_per_class(values, sizes, targets, count)


def _normalized(logs: list[float], sizes: list[int]) -> list[float]:
    xs = [math.exp(lg) for lg in logs]
    norm = sum(x * m for x, m in zip(xs, sizes, strict=True))
    return [x / norm for x in xs]


def _errors(xs: list[float], sizes: list[int], wanted: list[float], count: int) -> list[float]:
    """logit(probability) - logit(target) of each class."""
    return [_logit(p) - t for p, t in zip(_inclusion(xs, sizes, count), wanted, strict=True)]


def _solve_newton(
    values: list[float], sizes: list[int], targets: list[float], count: int
) -> list[float] | None:
    """Newton on the log weights of every class but the last (scaling every weight alike changes
    nothing, so one is pinned; its equation follows from the others, as the shares sum to `count`),
    the Jacobian by forward differences, each step halved until the worst error falls. None if it
    does not converge."""
    wanted = [_logit(t) for t in targets]
    logs = [math.log(v) for v in values]
    free = len(values) - 1
    xs = _normalized(logs, sizes)
    errors = _errors(xs, sizes, wanted, count)
    for _ in range(_SOLVE_STEPS_MAX):
        worst = max(abs(e) for e in errors)
        if worst < _SOLVE_TOLERANCE:
            return xs
        columns = []
        for j in range(free):
            nudged = list(logs)
            nudged[j] += 1e-6
            shifted = _errors(_normalized(nudged, sizes), sizes, wanted, count)
            columns.append([(shifted[i] - errors[i]) / 1e-6 for i in range(free)])
        step = _linear_solve(
            [[columns[j][i] for j in range(free)] for i in range(free)], [-e for e in errors[:free]]
        )
        if step is None:
            return None
        step = [min(max(d, -3.0), 3.0) for d in step]
        for _halving in range(30):
            trial = [lg + d for lg, d in zip(logs, [*step, 0.0], strict=True)]
            trial_xs = _normalized(trial, sizes)
            trial_errors = _errors(trial_xs, sizes, wanted, count)
            if max(abs(e) for e in trial_errors) < worst:
                logs, xs, errors = trial, trial_xs, trial_errors
                break
            step = [d / 2 for d in step]
        else:
            return None
    return None


def _linear_solve(matrix: list[list[float]], rhs: list[float]) -> list[float] | None:
    """Gaussian elimination with partial pivoting; None for a singular matrix."""
    size = len(rhs)
    rows = [[*row, b] for row, b in zip(matrix, rhs, strict=True)]
    for col in range(size):
        pivot = max(range(col, size), key=lambda r: abs(rows[r][col]))
        if abs(rows[pivot][col]) < 1e-300:
            return None
        rows[col], rows[pivot] = rows[pivot], rows[col]
        for r in range(col + 1, size):
            factor = rows[r][col] / rows[col][col]
            rows[r] = [a - factor * b for a, b in zip(rows[r], rows[col], strict=True)]
    solution = [0.0] * size
    for r in reversed(range(size)):
        solution[r] = (rows[r][size] - sum(rows[r][c] * solution[c] for c in range(r + 1, size))) / rows[r][r]
    return solution


def _solve_per_class(values: list[float], sizes: list[int], targets: list[float], count: int) -> list[float]:
    """Newton-like steps on log x per class (the logit of the probability moves about as much as log
    x for light and nearly saturated nodes alike), each class's slope from its previous step."""
    total = sum(v * m for v, m in zip(values, sizes, strict=True))
    logs = [math.log(v / total) for v in values]
    previous: tuple[list[float], list[float]] | None = None
    wanted = [_logit(t) for t in targets]
    xs = [v / total for v in values]
    for _ in range(_SOLVE_STEPS_MAX):
        xs = _normalized(logs, sizes)
        logs = [math.log(x) for x in xs]
        probs = [_logit(p) for p in _inclusion(xs, sizes, count)]
        if max(abs(p - t) for p, t in zip(probs, wanted, strict=True)) < _SOLVE_TOLERANCE:
            break
        steps = []
        for c, (p, t) in enumerate(zip(probs, wanted, strict=True)):
            slope = 1.0
            if previous is not None:
                moved = logs[c] - previous[0][c]
                if abs(moved) > 1e-12:
                    slope = min(max((p - previous[1][c]) / moved, 0.2), 2.0)
            steps.append(min(max((t - p) / slope, -3.0), 3.0))
        previous = (logs, probs)
        logs = [lg + step for lg, step in zip(logs, steps, strict=True)]
    return xs


def _gauss_legendre(points: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Nodes and weights of Gauss-Legendre quadrature on [-1, 1] (Newton on the Legendre polynomial)."""
    nodes, weights = [], []
    for i in range(1, points + 1):
        x = math.cos(math.pi * (i - 0.25) / (points + 0.5))
        derivative = 1.0
        for _ in range(100):
            p0, p1 = 1.0, x
            for j in range(2, points + 1):
                p0, p1 = p1, ((2 * j - 1) * x * p1 - (j - 1) * p0) / j
            derivative = points * (x * p1 - p0) / (x * x - 1)
            dx = p1 / derivative
            x -= dx
            if abs(dx) < 1e-15:
                break
        nodes.append(x)
        weights.append(2 / ((1 - x * x) * derivative * derivative))
    return tuple(nodes), tuple(weights)


_QUADRATURE = _gauss_legendre(8)


def _binomial_head(size: int, rate: float, t: float, count: int) -> list[float]:
    """Pr[j of `size` nodes of `rate` arrived by t] for j < count."""
    arrived = -math.expm1(-rate * t)
    waiting = math.exp(-rate * t)
    out = []
    coefficient = 1.0
    for j in range(count):
        out.append(coefficient * arrived**j * waiting ** (size - j) if j <= size else 0.0)
        coefficient = coefficient * (size - j) / (j + 1)
    return out


def _convolve(a: list[float], b: list[float]) -> list[float]:
    return [sum(a[i] * b[j - i] for i in range(j + 1)) for j in range(len(a))]


def _inclusion(xs: list[float], sizes: list[int], count: int) -> list[float]:
    """For each class (rate x, `sizes` nodes; the rates sum to 1 over the nodes): the probability that
    one of its nodes is among the first `count` to arrive."""
    classes = len(xs)
    result = [0.0] * classes
    unit = [1.0] + [0.0] * (count - 1)
    low, high = 0.0, 0.5
    nodes, weights = _QUADRATURE
    while True:
        half, middle = (high - low) / 2, (high + low) / 2
        for node, weight in zip(nodes, weights, strict=True):
            t = middle + half * node
            heads = [_binomial_head(m, x, t, count) for x, m in zip(xs, sizes, strict=True)]
            prefix = [unit]
            for head in heads:
                prefix.append(_convolve(prefix[-1], head))
            suffix = unit
            for c in range(classes - 1, -1, -1):
                around = _convolve(prefix[c], suffix)  # every other class
                own = _binomial_head(sizes[c] - 1, xs[c], t, count)  # the other nodes of this class
                cumulative = [sum(own[: count - j]) for j in range(count)]
                fewer = sum(around[j] * cumulative[j] for j in range(count))
                result[c] += weight * half * xs[c] * math.exp(-xs[c] * t) * fewer
                suffix = _convolve(suffix, heads[c])
        if sum(prefix[-1]) < 1e-13:  # fewer than `count` arrivals by `high`: almost never
            return result
        low, high = high, 2 * high


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
