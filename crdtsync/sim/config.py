"""What a simulation is given and what it finds: `SimConfig` (the seed, the cluster, the faults and
their rates) and `SimResult` (the verdict, the problems, the traffic and the final state)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from crdtsync.core.membership import MembershipConfig
from crdtsync.core.placement import PlacementPolicy, PlacementRule
from crdtsync.core.replica import ReplicaConfig

FAULTS = ("loss", "dup", "reorder", "delay", "partition", "crash", "churn")


@dataclass(frozen=True, slots=True)
class SimConfig:
    seed: int
    nodes: int = 5
    docs: int = 4
    ops: int = 300
    faults: frozenset[str] = frozenset()
    write_window_ms: float = 5_000.0
    """Client operations are spread uniformly over this much simulated time."""
    loss_rate: float = 0.10
    dup_rate: float = 0.05
    latency_ms: tuple[float, float] = (0.1, 1.0)
    reorder_jitter_ms: float = 20.0
    delay_rate: float = 0.05
    delay_ms: tuple[float, float] = (50.0, 500.0)
    partitions: int = 2
    partition_ms: tuple[float, float] = (300.0, 2_000.0)
    partition_groups: int = 0
    """Groups a partition splits the nodes into; 0 picks 2 or 3 at random."""
    crashes: int = 2
    churns: int = 2
    """With the `churn` fault: graceful leaves (each followed by a rejoin after `downtime_ms`)."""
    late_nodes: int = 0
    """The last `late_nodes` nodes are down for the whole write phase and start empty at healing."""
    downtime_ms: tuple[float, float] = (100.0, 2_000.0)
    settle_ms_max: float = 60_000.0
    """After healing, how long the cluster may take to converge before the run fails."""
    check_interval_ms: float = 250.0
    replica: ReplicaConfig = field(default_factory=ReplicaConfig)
    durable: bool = False
    """Give each node a durable store with group commit that survives its crashes (see the module doc
    of `crdtsync.sim.cluster`)."""
    commit_ms: tuple[float, float] = (0.5, 5.0)
    """Simulated time one group commit of the durable store takes."""
    load_ms: tuple[float, float] = (0.1, 2.0)
    """Simulated time the durable store takes to answer a `LoadDoc`."""
    datacenters: int = 1
    """Nodes are split into this many datacenters (`dc0`, `dc1`, ...) in contiguous blocks; links
    between datacenters have `wan_latency_ms` and `wan_loss_rate`."""
    wan_latency_ms: tuple[float, float] = (30.0, 150.0)
    """One-way latency of each pair of datacenters, drawn once per run from this range (added to
    `latency_ms`)."""
    wan_loss_rate: float = 0.0
    """Loss on links between datacenters until healing, on top of the `loss` fault."""
    seed_only: bool = False
    """Configure every node with node 0 as its only peer: the rest is learned by gossip."""
    wire_pinned_until_restart: frozenset[int] = frozenset()
    """Nodes whose first incarnation speaks wire versions up to `wire_pinned_version` only (as older
    releases do): their first restart upgrades them, as a rolling upgrade does."""
    wire_pinned_version: int = 1
    """The `wire_version_max` of the nodes of `wire_pinned_until_restart` until their restart."""
    follows: int = 0
    """Follow sessions (under placement): at random times of the write window a random node opens a
    doc it does not hold, as `Node.open` does (pinned, fetched, followed while open), for `follow_ms`;
    one in three stays open to the end, where it must equal the doc on its holders."""
    follow_ms: tuple[float, float] = (500.0, 4_000.0)
    membership: MembershipConfig = field(default_factory=MembershipConfig)
    placement: PlacementPolicy = field(default_factory=lambda: PlacementPolicy((PlacementRule("all"),)))
    """Which nodes hold which doc; the simulator's default ("all", not the cluster default of 3 per
    datacenter) gives every node every doc, so that the replication protocol alone is under test
    unless a campaign asks for placement (`--rf`). With a narrower
    rule the invariants follow it: every holder of a doc has it, equal, and no node keeps a doc it
    does not hold (once handed off; keep `replica.handoff_grace_ms` well under `settle_ms_max`)."""

    def __post_init__(self) -> None:
        unknown = set(self.faults) - set(FAULTS)
        if unknown:
            raise ValueError(f"unknown faults {sorted(unknown)}; choose from {', '.join(FAULTS)}")
        if self.nodes < 1 or self.docs < 1 or self.ops < 0:
            raise ValueError("nodes and docs must be >= 1 and ops >= 0")
        if not 0 <= self.late_nodes < self.nodes:
            raise ValueError("late_nodes must leave at least one node up")
        if not 0.0 <= self.commit_ms[0] <= self.commit_ms[1]:
            raise ValueError("commit_ms must be a range (low, high) with 0 <= low <= high")
        if not 1 <= self.datacenters <= self.nodes:
            raise ValueError("datacenters must be between 1 and the number of nodes")

    def replay_command(self) -> str:
        faults = ",".join(sorted(self.faults)) or "none"
        return (
            f"python -m crdtsync.sim --seed {self.seed} --nodes {self.nodes} --docs {self.docs} "
            f"--ops {self.ops} --faults {faults} --loss-rate {self.loss_rate} --window-ms {self.write_window_ms:g}"
            + (" --durable" if self.durable else "")
            + (
                f" --datacenters {self.datacenters} --wan-loss-rate {self.wan_loss_rate}"
                if self.datacenters > 1
                else ""
            )
            + (f" --linger-ms {self.replica.linger_ms:g}" if self.replica.linger_ms else "")
            + (" --seed-only" if self.seed_only else "")
            + (f" --rf {self.placement.default.rf}" if isinstance(self.placement.default.rf, int) else "")
            + (f" --follows {self.follows}" if self.follows else "")
            + (
                f" --wire-pinned {self.wire_pinned_version}"
                if self.wire_pinned_until_restart == odd_nodes(self.nodes)
                else ""
            )
        )


def odd_nodes(nodes: int) -> frozenset[int]:
    """The nodes `--wire-pinned` pins: every other one, so that each datacenter mixes versions."""
    return frozenset(range(1, nodes, 2))


@dataclass(slots=True)
class SimResult:
    config: SimConfig
    ok: bool
    problems: list[str]
    converged_after_ms: float | None
    """Simulated time from healing to the first check that found all replicas equal."""
    ae_rounds_after_heal_max: int
    """The most anti-entropy rounds any node completed between healing and convergence."""
    messages_sent: int
    messages_dropped: int
    messages_duplicated: int
    wan_messages: int
    wan_bytes: int
    writes: int
    writes_lost_to_crashes: int
    """Unique writes absent at the end whose writer crashed before replicating them (and, with a
    durable store, before a commit acknowledged them)."""
    writes_acknowledged: int
    """Writes whose update a completed durable-store commit held (0 unless `config.durable`)."""
    crashes: int
    partitions: int
    events: int
    final_state: dict[str, Any]
    follow_sessions: int = 0
    """Follow sessions opened (`SimConfig.follows`; some are skipped: no live node, nothing unheld)."""
    follows_open_at_end: int = 0
    """Of them, those still open at the final check (each compared with the doc's holders)."""

    def verdict(self) -> str:
        head = f"seed {self.config.seed}: {'OK' if self.ok else 'FAIL'}"
        stats = (
            f"nodes={self.config.nodes} docs={self.config.docs} ops={self.config.ops} "
            f"faults={','.join(sorted(self.config.faults)) or 'none'} messages={self.messages_sent} "
            f"dropped={self.messages_dropped} duplicated={self.messages_duplicated} crashes={self.crashes} "
            f"partitions={self.partitions} writes_lost_to_crashes={self.writes_lost_to_crashes} "
            + (f"acked={self.writes_acknowledged} " if self.config.durable else "")
            + (
                f"follows={self.follow_sessions} open_at_end={self.follows_open_at_end} "
                if self.config.follows
                else ""
            )
            + f"ae_rounds_after_heal_max={self.ae_rounds_after_heal_max}"
        )
        if self.ok:
            return f"{head} converged {self.converged_after_ms:.0f} ms after healing; {stats}"
        return f"{head} {'; '.join(self.problems[:3])}; {stats}; replay: {self.config.replay_command()}"
