"""Fault schedules for `crdtsync.testing.faultproxy`: partitions of every shape as sets of blocked
directed links (`isolate`, `split`, `one_way`, `bridge`), and `plan_network`, which draws a whole
schedule of partitions, resets and degraded links from a seed (the same seed gives the same plan)."""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from crdtsync.testing.faultproxy import Link, LinkFaults

__all__ = [
    "PARTITION_SHAPES",
    "NetworkFault",
    "NetworkPlan",
    "bridge",
    "isolate",
    "one_way",
    "plan_network",
    "split",
]


# ---------------------------------------------------------------------------------------------- partitions


def isolate(nodes: Iterable[str], group: Iterable[str]) -> frozenset[Link]:
    """`group` cut off from the other nodes, both ways (a node, or a datacenter)."""
    inside = set(group)
    return split([sorted(inside), sorted(set(nodes) - inside)])


def split(groups: Sequence[Sequence[str]]) -> frozenset[Link]:
    """Nodes talk only inside their group (two halves, or one group per datacenter)."""
    return frozenset(
        (a, b)
        for i, left in enumerate(groups)
        for j, right in enumerate(groups)
        if i != j
        for a in left
        for b in right
    )


def one_way(sources: Iterable[str], targets: Iterable[str]) -> frozenset[Link]:
    """An asymmetric partition: bytes from `sources` to `targets` are held; the reverse flows."""
    return frozenset((a, b) for a in sources for b in targets if a != b)


def bridge(left: Sequence[str], middle: str, right: Sequence[str]) -> frozenset[Link]:
    """`left` and `right` cannot talk to each other; `middle` talks to both (Jepsen's bridge)."""
    return split([left, right])


# ---------------------------------------------------------------------------------------------- plans

WAN_LATENCY_MS = (30.0, 150.0)
WAN_JITTER_SHARE = 0.1
"""Jitter as a share of each WAN link's latency."""
WAN_BANDWIDTH_BYTES_PER_S = 5_000_000.0
PARTITION_SHAPES = ("node", "datacenter", "one-way", "bridge", "halves")
NETWORK_FAULT_GAP_S = (1.0, 4.0)
PARTITION_S = (1.0, 6.0)
WARMUP_S = 3.0
FAULTS_MAX = 10_000


@dataclass(frozen=True, slots=True)
class NetworkFault:
    at_s: float
    """Planned start, in seconds after the faults phase started."""
    kind: str
    """`partition` (with its `shape`), `reset` (RST on every connection of `links`), or `degrade` (the
    `links` get `faults` for `duration_s`, then their base faults back)."""
    duration_s: float
    links: frozenset[Link]
    """Blocked (partition), reset, or degraded links."""
    shape: str = ""
    faults: LinkFaults | None = None

    def describe(self) -> str:
        pairs = sorted(self.links)
        shown = " ".join(f"{a}->{b}" for a, b in pairs[:8]) + (" ..." if len(pairs) > 8 else "")
        what = f"{self.kind} {self.shape}".strip()
        return f"{what} for {self.duration_s:.1f} s: {shown}" if self.duration_s else f"{what}: {shown}"


@dataclass(frozen=True, slots=True)
class NetworkPlan:
    base: dict[Link, LinkFaults] = field(default_factory=dict)
    """Each directed link's standing faults (the WAN's latency and cap between datacenters)."""
    faults: list[NetworkFault] = field(default_factory=list)


def plan_network(
    rng: random.Random,
    seconds: float,
    dcs: Mapping[str, str],
    *,
    wan_latency_ms: tuple[float, float] = WAN_LATENCY_MS,
    wan_bandwidth_bytes_per_s: float | None = WAN_BANDWIDTH_BYTES_PER_S,
) -> NetworkPlan:
    """A seeded network schedule for nodes in datacenters (`dcs`: node -> dc, in a stable order):
    each pair of datacenters gets a latency drawn in `wan_latency_ms` (the same both ways, with 10%
    jitter), every link between their nodes that latency and the bandwidth cap; then, one at a time after WARMUP_S, partitions of every shape
    in shuffled rounds (a node, a datacenter or two halves when there is one datacenter, one-way,
    bridge) each held for PARTITION_S, with resets of a random pair's connections and degraded links
    (a node's links slowed to 200-500 ms and 64 KB/s) between them."""
    names = list(dcs)
    # One distance per pair of datacenters, shared by every link between their nodes (a write
    # crossing through relays meets the same latency as one sent straight).
    dc_names = sorted(set(dcs.values()))
    wans: dict[tuple[str, str], LinkFaults] = {}
    for i, left in enumerate(dc_names):
        for right in dc_names[i + 1 :]:
            latency_ms = rng.uniform(*wan_latency_ms)
            wans[(left, right)] = wans[(right, left)] = LinkFaults(
                latency_ms=latency_ms,
                jitter_ms=latency_ms * WAN_JITTER_SHARE,
                bandwidth_bytes_per_s=wan_bandwidth_bytes_per_s,
            )
    base = {(a, b): wans[(dcs[a], dcs[b])] for a in names for b in names if dcs[a] != dcs[b]}
    by_dc: dict[str, list[str]] = {}
    for name in names:
        by_dc.setdefault(dcs[name], []).append(name)
    faults: list[NetworkFault] = []
    shapes: list[str] = []
    at_s = WARMUP_S
    for _ in range(FAULTS_MAX):
        at_s += rng.uniform(*NETWORK_FAULT_GAP_S)
        if at_s >= seconds - 1.0:
            break
        roll = rng.random()
        if roll < 0.2:
            a, b = rng.sample(names, 2)
            faults.append(NetworkFault(at_s, "reset", 0.0, frozenset({(a, b)})))
            continue
        if roll < 0.35:
            victim = rng.choice(names)
            links = frozenset(
                {(victim, o) for o in names if o != victim} | {(o, victim) for o in names if o != victim}
            )
            slow = LinkFaults(
                latency_ms=rng.uniform(200.0, 500.0), jitter_ms=20.0, bandwidth_bytes_per_s=64_000.0
            )
            duration_s = rng.uniform(*PARTITION_S)
            faults.append(NetworkFault(at_s, "degrade", duration_s, links, "node", slow))
            at_s += duration_s
            continue
        if not shapes:
            shapes = rng.sample(PARTITION_SHAPES, len(PARTITION_SHAPES))
        shape = shapes.pop()
        duration_s = rng.uniform(*PARTITION_S)
        faults.append(
            NetworkFault(at_s, "partition", duration_s, _partition(rng, shape, names, by_dc), shape)
        )
        at_s += duration_s
    return NetworkPlan(base, faults)


def _partition(
    rng: random.Random, shape: str, names: list[str], by_dc: dict[str, list[str]]
) -> frozenset[Link]:
    if shape == "node":
        return isolate(names, [rng.choice(names)])
    if shape == "datacenter" and len(by_dc) > 1:
        return isolate(names, by_dc[rng.choice(sorted(by_dc))])
    shuffled = rng.sample(names, len(names))
    if shape == "one-way":
        cut = rng.randint(1, len(names) - 1)
        return one_way(shuffled[:cut], shuffled[cut:])
    if shape == "bridge" and len(names) >= 3:
        middle, rest = shuffled[0], shuffled[1:]
        cut = len(rest) // 2
        return bridge(rest[:cut], middle, rest[cut:])
    cut = len(names) // 2  # halves (and a datacenter partition with one datacenter)
    return split([shuffled[:cut], shuffled[cut:]])
