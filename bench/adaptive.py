"""Adaptive replication against static placement, in the simulator (issue 14's benchmark).

    python -m bench.adaptive [--quick] [--docs N] [--minutes M] [--seed S] [--rf RF] [--json OUT]

Three datacenters of `--nodes-per-dc` nodes (WAN one-way latencies drawn in 30-80 ms per pair of
datacenters), `rf` 1 in every datacenter (`--rf dc0=1,dc1=1` names the datacenters that hold
replicas), Zipf(1.1) reads over `--docs` docs on every node (each
datacenter has its own ranking of the docs, and the hot set moves to other docs every
`--shift-minutes`), writes on the hottest docs throughout. The same seed runs twice in one process:
static (no read followers, no shedding) and adaptive (the defaults, or the short timers of
`--quick`). Each run is the real core (`crdtsync.sim`): membership, placement, the load gossip,
the follower and shedding decisions, the handoff and every replication message on the simulated
network.

What is modelled, not run through the core, and why:
- **Reads.** A client read is counted where it enters (`LoadBoard`'s rate table, as `Node.open`
  does), and served where the core says: locally when the node holds the doc or follows it,
  otherwise where the core forwards it (`Replica.forward_target`: a replica of this datacenter,
  then a follower of this datacenter, then any other holder), which counts it as a forwarded read
  (`fetch`) when it is a holder. A read's latency is the
  service time plus, when forwarded, a round trip on the simulated network to that holder (the
  simulator's own latency ranges). Running each read as a real fetch through the core would cost
  about a thousand times more simulated events, and the core's per-read path is one sync request
  and answer either way.
- **CPU.** The simulator has no CPU, so each node's load is a cost model fed to its `LoadBoard`
  (what shedding reads): `READ_CPU_MS` per client read, `FETCH_CPU_MS` per forwarded read
  answered, `APPLY_CPU_MS` per delta applied.

WAN bytes are every byte the simulated network carried between datacenters (replication, gossip,
load summaries, anti-entropy, a follower's fetches), plus the modelled forwarded reads that crossed
it (`FETCH_OVERHEAD_BYTES` and the doc's content), per read. With `rf` 1 in every datacenter every read has a holder in
its own datacenter; `--rf dc0=1` leaves the other datacenters without one, and their reads of docs
they do not follow cross the WAN.
"""

from __future__ import annotations

import argparse
import bisect
import dataclasses
import itertools
import math
import random
import sys
import time
import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench._common import JSON, Target, fmt, machine_info, print_table, write_json
from crdtsync.core.placement import PlacementPolicy, PlacementRule
from crdtsync.core.replica import Replica, ReplicaConfig
from crdtsync.sim import SimCluster, SimConfig

READ_CPU_MS = 1.0
"""A client read served by a node (an HTTP GET through aiohttp costs about this on the project
machine), whether it serves it from its copy or forwards it."""
FETCH_CPU_MS = 0.5
"""A forwarded read answered by a holder (a sync request: the doc's update against an empty state)."""
APPLY_CPU_MS = 0.2
"""A delta applied (decode, causal check, pycrdt apply with an observer)."""
SERVICE_MS = 0.2
"""What a read costs its client besides the network: the same on every node."""
STEP_MS = 500.0
"""Reads are drawn and counted per node in steps this long."""
WAN_LATENCY_MS = (30.0, 80.0)
FETCH_OVERHEAD_BYTES = 128
"""A forwarded read's request and answer besides the doc's content: two envelopes, the doc id twice,
two state vectors of a few clients (modelled, as the reads are)."""
DOC_SIZE_TTL_MS = 30_000.0
"""How long a doc's measured size (its update from an empty state) is reused for the bytes of the
forwarded reads that carry it."""
PARTITIONS = PlacementPolicy().partitions


@dataclass(frozen=True, slots=True)
class Workload:
    seed: int = 1
    docs: int = 100_000
    dcs: int = 3
    nodes_per_dc: int = 4
    reads_per_s_per_node: float = 400.0
    writes_per_s: float = 4.0
    """Across the cluster, on the datacenters' hot docs (Zipf over the first 1,000 ranks)."""
    zipf_exponent: float = 1.1
    shift_ms: float = 300_000.0
    duration_ms: float = 1_800_000.0
    warmup_ms: float = 60_000.0
    """Not measured: members meet, the first summaries spread."""
    replica: ReplicaConfig = dataclasses.field(default_factory=ReplicaConfig)
    """The adaptive run's configuration (the static run turns followers and shedding off)."""
    rf: int | tuple[tuple[str, int], ...] = 1
    """Replicas in every datacenter, or (datacenter, replicas) of those that hold any."""

    @property
    def nodes(self) -> int:
        return self.dcs * self.nodes_per_dc


QUICK_REPLICA = ReplicaConfig(
    load_half_life_ms=10_000.0,
    follow_cool_down_ms=20_000.0,
    shed_cool_down_ms=30_000.0,
    handoff_grace_ms=5_000.0,
)
"""`--quick`: timers scaled down with the run (the defaults: a 5 min half-life, 10 min cool-downs)."""


@dataclass(slots=True)
class Tally:
    """What one run measured after the warm-up."""

    latencies: Counter[float] = dataclasses.field(default_factory=Counter)
    """Read latency (ms, rounded to 0.01) -> reads."""
    reads: int = 0
    forwarded: int = 0
    forwarded_wan: int = 0
    forwarded_wan_followed_here: int = 0
    """Reads forwarded across the WAN of a doc that another node of the reader's datacenter
    follows: what asking the datacenter's follower instead of a holder would keep off the WAN (a
    follower serves its own clients only today)."""
    wan_read_bytes: int = 0
    """Bytes of the forwarded reads that crossed the WAN (modelled; the rest of `wan_bytes` is the
    simulated network's)."""
    cpu_ms: dict[str, float] = dataclasses.field(default_factory=dict)
    wan_bytes: int = 0
    partition_moves: int = 0
    weight_changes: int = 0
    follower_changes: int = 0
    followers_max: int = 0
    measured_ms: float = 0.0
    relays: list[str] = dataclasses.field(default_factory=list)
    cpu_s: float = 0.0

    def percentile(self, pct: float) -> float:
        wanted = math.ceil(pct / 100.0 * self.reads)
        seen = 0
        for latency in sorted(self.latencies):
            seen += self.latencies[latency]
            if seen >= wanted:
                return latency
        return math.nan

    def load_max_over_mean(self, *, without_relays: bool = False) -> float:
        loads = [ms for node, ms in self.cpu_ms.items() if not (without_relays and node in self.relays)]
        mean = sum(loads) / len(loads) if loads else 0.0
        return max(loads) / mean if mean else math.nan

    def per_hour(self, count: int) -> float:
        return count * 3_600_000.0 / self.measured_ms if self.measured_ms else math.nan


class _Ranking:
    """Zipf(s) ranks over the docs: datacenter `dc`'s doc of rank `r` in shift `phase`."""

    def __init__(self, workload: Workload) -> None:
        self._docs = workload.docs
        weights = [1.0 / rank**workload.zipf_exponent for rank in range(1, workload.docs + 1)]
        self.cumulative = list(itertools.accumulate(weights))
        self._stride = max(1, workload.docs // (workload.dcs * 7 + 1))
        """Each (datacenter, phase) starts its ranking this far from the previous: hot sets never
        overlap while the docs allow it."""
        self._dcs = workload.dcs

    def doc(self, rank: int, dc: int, phase: int) -> str:
        return f"doc-{(rank + (phase * self._dcs + dc) * self._stride) % self._docs}"

    def ranks(self, rng: random.Random, count: int) -> list[int]:
        total = self.cumulative[-1]
        return [bisect.bisect_left(self.cumulative, rng.random() * total) for _ in range(count)]


def _config(workload: Workload, adaptive: bool) -> SimConfig:
    replica = workload.replica
    rf = workload.rf if isinstance(workload.rf, int) else dict(workload.rf)
    if not adaptive:
        replica = dataclasses.replace(replica, follow_reads_per_s=0.0, shed_partitions=False)
    return SimConfig(
        seed=workload.seed, nodes=workload.nodes, datacenters=workload.dcs, docs=workload.docs, ops=0,
        wan_latency_ms=WAN_LATENCY_MS, placement=PlacementPolicy((PlacementRule(rf),)), replica=replica,
    )  # fmt: skip


class _Run:
    """One simulated run (static or adaptive) of the workload."""

    def __init__(self, workload: Workload, adaptive: bool) -> None:
        self.workload = workload
        self.cluster = SimCluster(_config(workload, adaptive))
        self.ranking = _Ranking(workload)
        self.reads_rng = random.Random(workload.seed)
        self.latency_rng = random.Random(workload.seed + 1)
        self.tally = Tally()
        self._targets: dict[tuple[int, int], tuple[int | None, bool]] = {}
        """(node, partition) -> (the node a forwarded read goes to, across the WAN), per membership."""
        self._targets_of: tuple[tuple[str, float], ...] = ()
        self._applied = [0] * workload.nodes
        self._fetch_cpu_ms = [0.0] * workload.nodes
        self._followed: dict[str, set[str]] = {}
        """Datacenter -> the docs its nodes follow, as of the current step."""
        self._doc_bytes: dict[str, tuple[float, int]] = {}
        """Doc -> (when measured, its content's bytes at a holder)."""
        """CPU ms of the forwarded reads each node answered in the current step."""

    def replica(self, index: int) -> Replica:
        replica = self.cluster.nodes[index].replica
        assert replica is not None, "no node crashes in this benchmark"
        return replica

    def _weights(self) -> tuple[tuple[str, float], ...]:
        members = self.replica(0).membership.members
        own = self.replica(0).membership.own
        weights = {node_id: member.record.weight for node_id, member in members.items()}
        weights[own.node_id] = own.weight
        return tuple(sorted(weights.items()))

    def _target(self, index: int, doc_id: str) -> tuple[int | None, bool]:
        """The node serving node `index`'s forwarded read of `doc_id`, and whether it is across the
        WAN: the nearest holder, in the handoff's order (a replica here, then any other holder by
        node id)."""
        replica = self.replica(index)
        key = (index, zlib.crc32(doc_id.encode()) % PARTITIONS)
        known = self._targets.get(key)
        if known is not None:
            return known
        placed = replica.doc_placement(doc_id)
        assert placed.partition == key[1], "the partition is crc32(doc id) % partitions"
        dc = replica.dc
        order = [r.node_id for r in placed.replicas.get(dc, ())]
        order += sorted(
            {r.node_id for dc_replicas in placed.replicas.values() for r in dc_replicas} - set(order)
        )
        target = next((int(node_id[1:]) for node_id in order if node_id != replica.node_id), None)
        answer = (target, target is not None and self.cluster.nodes[target].dc != dc)
        self._targets[key] = answer
        return answer

    def _follower_target(self, replica: Replica, doc_id: str, holder: int | None) -> tuple[int | None, bool]:
        """A read of a doc a node of this datacenter follows: where the core forwards it (that
        follower, once its summary says so), else `holder` across the WAN."""
        target = replica.forward_target(doc_id, read=True)
        if target is None:
            return holder, True
        index = int(target[0][1:])
        return index, self.cluster.nodes[index].dc != replica.dc

    def _answer_bytes(self, holder: int, doc_id: str, now_ms: float) -> int:
        """The bytes of one forwarded read of `doc_id` answered by `holder`."""
        known = self._doc_bytes.get(doc_id)
        if known is None or now_ms - known[0] > DOC_SIZE_TTL_MS:
            replica = self.replica(holder)
            size = len(replica.open_doc(doc_id).get_update()) if replica.has_doc(doc_id) else 0
            if len(self._doc_bytes) >= 65_536:
                self._doc_bytes.clear()
            known = self._doc_bytes[doc_id] = (now_ms, size)
        return FETCH_OVERHEAD_BYTES + known[1]

    def _round_trip_ms(self, source: int, target: int) -> float:
        nodes, sim = self.cluster.nodes, self.cluster.config
        delay = self.latency_rng.uniform(*sim.latency_ms) + self.latency_rng.uniform(*sim.latency_ms)
        a, b = nodes[source].dc, nodes[target].dc
        if a != b:
            delay += 2 * self.cluster.network.wan_latency_ms[min(a, b), max(a, b)]
        return delay

    def _reads(self, index: int, now_ms: float, phase: int, measured: bool) -> float:
        """Node `index`'s client reads of one step: counted, served, timed; its CPU ms."""
        workload, replica = self.workload, self.replica(index)
        dc = int(replica.dc[2:])
        count = round(workload.reads_per_s_per_node * STEP_MS / 1000.0)
        drawn = Counter(
            self.ranking.doc(rank, dc, phase) for rank in self.ranking.ranks(self.reads_rng, count)
        )
        table, following = replica.load.table, replica.load.following
        cpu_ms = count * READ_CPU_MS
        for doc_id, reads in drawn.items():
            table.count("read", doc_id, replica.dc, now_ms, reads)
            if replica.holds(doc_id) or doc_id in following:
                latency = SERVICE_MS
            else:
                target, wan = self._target(index, doc_id)
                if wan and doc_id in self._followed.get(replica.dc, ()):
                    target, wan = self._follower_target(replica, doc_id, target)
                if target is None:
                    continue
                self.replica(target).load.table.count("fetch", doc_id, replica.dc, now_ms, reads)
                self._fetch_cpu_ms[target] += reads * FETCH_CPU_MS
                latency = SERVICE_MS + self._round_trip_ms(index, target)
                if measured:
                    self.tally.forwarded += reads
                    if wan:
                        self.tally.forwarded_wan += reads
                        if doc_id in self._followed.get(replica.dc, ()):
                            self.tally.forwarded_wan_followed_here += reads
                        self.tally.wan_read_bytes += reads * self._answer_bytes(target, doc_id, now_ms)
            if measured:
                self.tally.latencies[round(latency, 2)] += reads
                self.tally.reads += reads
        return cpu_ms

    def _writes(self, now_ms: float, phase: int, op: int) -> int:
        workload = self.workload
        writes = workload.writes_per_s * STEP_MS / 1000.0  # expected this step: floor, then a coin
        for _ in range(math.floor(writes) + (1 if self.reads_rng.random() < writes % 1 else 0)):
            node = self.reads_rng.randrange(workload.nodes)
            rank = min(999, self.ranking.ranks(self.reads_rng, 1)[0])
            doc = int(self.ranking.doc(rank, node // workload.nodes_per_dc, phase)[4:])
            op += 1
            self.cluster.schedule_op(now_ms + self.reads_rng.uniform(0.0, STEP_MS), op, node, doc)
        return op

    def _moved(self, before: dict[str, int]) -> tuple[int, dict[str, int]]:
        after = dict(self.replica(0).cluster_placement().partitions_per_node)
        return sum(max(0, count - after.get(node, 0)) for node, count in before.items()), after

    def run(self) -> Tally:
        workload, cluster, tally = self.workload, self.cluster, self.tally
        started_s = time.process_time()
        cluster.start_nodes()
        now_ms, op, nodes = 0.0, 0, workload.nodes
        partitions = dict(self.replica(0).cluster_placement().partitions_per_node)
        wan_at_warmup = 0
        while now_ms < workload.duration_ms:
            now_ms += STEP_MS
            cluster.advance(now_ms)
            measured = now_ms > workload.warmup_ms
            if not measured:
                wan_at_warmup = cluster.network.wan_bytes
            phase = int(now_ms // workload.shift_ms)
            op = self._writes(now_ms, phase, op)
            self._fetch_cpu_ms = [0.0] * nodes
            self._followed = {}
            for index in range(nodes):
                replica = self.replica(index)
                self._followed.setdefault(replica.dc, set()).update(replica.load.following)
            cpu_ms = [self._reads(index, now_ms, phase, measured) for index in range(nodes)]
            for index in range(nodes):
                replica = self.replica(index)
                applied = replica.counters.deltas_applied + replica.counters.sync_updates_applied
                total_ms = (
                    cpu_ms[index]
                    + self._fetch_cpu_ms[index]
                    + (applied - self._applied[index]) * APPLY_CPU_MS
                )
                self._applied[index] = applied
                replica.load.busy(total_ms / 1000.0, now_ms)
                if measured:
                    tally.cpu_ms[replica.node_id] = tally.cpu_ms.get(replica.node_id, 0.0) + total_ms
            weights = self._weights()
            if weights != self._targets_of:
                self._targets_of, self._targets = weights, {}
                moved, partitions = self._moved(partitions)
                tally.partition_moves += moved if measured else 0
            tally.followers_max = max(
                tally.followers_max, sum(len(self.replica(i).load.following) for i in range(nodes))
            )
        tally.measured_ms = workload.duration_ms - workload.warmup_ms
        tally.wan_bytes = cluster.network.wan_bytes - wan_at_warmup + tally.wan_read_bytes
        replicas = [self.replica(index) for index in range(nodes)]
        tally.follower_changes = sum(
            r.counters.follows_started + r.counters.follows_stopped for r in replicas
        )
        tally.weight_changes = sum(r.counters.weight_changes for r in replicas)
        tally.relays = sorted({relay for r in replicas for relay in r.membership.relays(r.dc)})
        tally.cpu_s = time.process_time() - started_s
        return tally


def measure(workload: Workload) -> dict[str, Tally]:
    """Both runs of the workload, static first."""
    return {mode: _Run(workload, mode == "adaptive").run() for mode in ("static", "adaptive")}


def _coverage(workload: Workload) -> JSON:
    """What the read distribution allows: the share of a datacenter's reads that its hottest docs
    take, and how many docs it takes to cover a share (each datacenter ranks the docs alike)."""
    weights = list(
        itertools.accumulate(1.0 / rank**workload.zipf_exponent for rank in range(1, workload.docs + 1))
    )
    total = weights[-1]
    return {
        "reads_share_of_hottest": {
            str(count): weights[min(count, workload.docs) - 1] / total for count in (64, 1024, 4096)
        },
        "docs_for_reads_share": {
            str(share): bisect.bisect_left(weights, share * total) + 1 for share in (0.5, 0.9, 0.97, 0.99)
        },
    }


def summary(workload: Workload, tallies: dict[str, Tally]) -> JSON:
    """Every figure of both runs, and the targets."""
    runs: JSON = {}
    for mode, tally in tallies.items():
        runs[mode] = {
            "reads": tally.reads,
            "read_p50_ms": tally.percentile(50),
            "read_p99_ms": tally.percentile(99),
            "forwarded_share": tally.forwarded / tally.reads if tally.reads else math.nan,
            "forwarded_wan": tally.forwarded_wan,
            "forwarded_wan_followed_here": tally.forwarded_wan_followed_here,
            "load_max_over_mean": tally.load_max_over_mean(),
            "load_max_over_mean_without_relays": tally.load_max_over_mean(without_relays=True),
            "wan_bytes_per_read": tally.wan_bytes / tally.reads if tally.reads else math.nan,
            "partition_moves_per_hour": tally.per_hour(tally.partition_moves),
            "weight_changes_per_hour": tally.per_hour(tally.weight_changes),
            "follower_changes_per_hour": tally.per_hour(tally.follower_changes),
            "followers_max": tally.followers_max,
            "relays": tally.relays,
            "cpu_s": tally.cpu_s,
        }
    static, adaptive = runs["static"], runs["adaptive"]

    def over(key: str) -> float | None:
        return adaptive[key] / static[key] if static[key] else None

    targets = [
        Target("p99", "read p99 adaptive / static", over("read_p99_ms"), 1 / 3),
        Target("balance", "max/mean node load, adaptive", adaptive["load_max_over_mean"], 1.2),
        Target("wan", "WAN bytes per read adaptive / static", over("wan_bytes_per_read"), 0.5),
        Target("p50", "read p50 adaptive / static", over("read_p50_ms"), None),
    ]
    return {
        "workload": dataclasses.asdict(workload) | {"replica": "see adaptive_config"},
        "adaptive_config": {
            key: getattr(workload.replica, key)
            for key in (
                "load_half_life_ms",
                "follow_reads_per_s",
                "follow_cool_down_ms",
                "followers_per_doc_max",
                "followed_docs_max",
                "shed_load_over_mean",
                "shed_cool_down_ms",
                "shed_step",
            )
        },
        "runs": runs,
        "coverage": _coverage(workload),
        "targets": [target.as_json() for target in targets],
    }


def report(result: JSON) -> None:
    runs = result["runs"]
    rows = [
        ("read p50 (ms)", 2, "read_p50_ms"),
        ("read p99 (ms)", 2, "read_p99_ms"),
        ("reads forwarded (share)", 3, "forwarded_share"),
        ("reads forwarded across the WAN", 0, "forwarded_wan"),
        ("  of docs followed in the reader's DC", 0, "forwarded_wan_followed_here"),
        ("max/mean node load", 2, "load_max_over_mean"),
        ("max/mean node load, relays left out", 2, "load_max_over_mean_without_relays"),
        ("WAN bytes per read", 1, "wan_bytes_per_read"),
        ("partition moves per hour", 0, "partition_moves_per_hour"),
        ("weight changes per hour", 1, "weight_changes_per_hour"),
        ("follower changes per hour", 0, "follower_changes_per_hour"),
        ("followers at most (docs x nodes)", 0, "followers_max"),
        ("reads measured", 0, "reads"),
        ("CPU of the run (s)", 1, "cpu_s"),
    ]
    print_table(
        "static placement against adaptive replication (same seed, same reads)",
        ("figure", "static", "adaptive"),
        [
            (text, fmt(float(runs["static"][key]), digits), fmt(float(runs["adaptive"][key]), digits))
            for text, digits, key in rows
        ],
        [f"relays: {', '.join(runs['adaptive']['relays'])}"],
    )
    coverage = result["coverage"]
    shares = ", ".join(
        f"{count} docs {share:.1%}" for count, share in coverage["reads_share_of_hottest"].items()
    )
    needed = ", ".join(
        f"{float(share):.0%}: {docs:,}" for share, docs in coverage["docs_for_reads_share"].items()
    )
    print(
        f"\nreads of a datacenter taken by its hottest docs: {shares}; hottest docs needed for a share of reads: {needed}"
    )
    print("\ntargets")
    for target in result["targets"]:
        value = "-" if target["value"] is None else f"{target['value']:.3f}"
        limit = "" if target["limit"] is None else f" (<= {target['limit']:.3f})"
        print(f"  {target['verdict']:<5} {target['text']}: {value}{limit}")


def _tuned(config: ReplicaConfig, args: argparse.Namespace) -> ReplicaConfig:
    changes = {
        "follow_reads_per_s": args.follow_budget,
        "followed_docs_max": args.followed_max,
        "followers_per_doc_max": args.followers_max,
    }
    return dataclasses.replace(config, **{key: value for key, value in changes.items() if value is not None})


def _rf(text: str) -> int | tuple[tuple[str, int], ...]:
    if text.isdigit():
        return int(text)
    pairs = [item.split("=", 1) for item in text.split(",")]
    if not all(len(pair) == 2 and pair[1].isdigit() for pair in pairs):
        raise SystemExit(f"--rf {text!r}: give N or dc0=N,dc1=M")
    return tuple((dc, int(count)) for dc, count in pairs)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.adaptive", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="10,000 docs, 3 nodes per DC, 4 simulated minutes, short timers"
    )
    parser.add_argument("--docs", type=int, help="docs read (default 100,000; --quick 10,000)")
    parser.add_argument("--minutes", type=float, help="simulated minutes (default 30; --quick 4)")
    parser.add_argument(
        "--shift-minutes", type=float, help="the hot set moves this often (default 5; --quick 1)"
    )
    parser.add_argument("--nodes-per-dc", type=int, help="default 4; --quick 3")
    parser.add_argument("--reads-per-s", type=float, default=400.0, help="client reads per node")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--rf", default="1", help="replicas per datacenter: N, or dc0=N,dc1=M (default 1)")
    parser.add_argument(
        "--follow-budget",
        type=float,
        help="follow_reads_per_s of the adaptive run (default: the library default, 5)",
    )
    parser.add_argument("--followed-max", type=int, help="followed_docs_max of the adaptive run (default 64)")
    parser.add_argument(
        "--followers-max", type=int, help="followers_per_doc_max of the adaptive run (default 3)"
    )
    parser.add_argument("--json", type=Path, help="also write every figure as JSON to OUT", metavar="OUT")
    args = parser.parse_args(argv)
    workload = Workload(
        seed=args.seed,
        rf=_rf(args.rf),
        docs=args.docs or (10_000 if args.quick else 100_000),
        nodes_per_dc=args.nodes_per_dc or (3 if args.quick else 4),
        reads_per_s_per_node=args.reads_per_s,
        shift_ms=60_000.0 * (args.shift_minutes or (1.0 if args.quick else 5.0)),
        duration_ms=60_000.0 * (args.minutes or (4.0 if args.quick else 30.0)),
        warmup_ms=30_000.0 if args.quick else 60_000.0,
        replica=_tuned(QUICK_REPLICA if args.quick else ReplicaConfig(), args),
    )
    print("machine")
    for key, value in machine_info().items():
        print(f"  {key:<18} {value}")
    print(
        f"\nworkload: {workload.docs:,} docs, {workload.dcs} datacenters x {workload.nodes_per_dc} nodes, "
        f"rf {args.rf} per datacenter, Zipf({workload.zipf_exponent}) reads at {workload.reads_per_s_per_node:g}/s per node, "
        f"{workload.writes_per_s:g} writes/s, hot set moved every {workload.shift_ms / 60_000:g} min, "
        f"{workload.duration_ms / 60_000:g} simulated min (the first {workload.warmup_ms / 1000:g} s not measured), "
        f"seed {workload.seed}"
    )
    result = summary(workload, measure(workload))
    print(f"adaptive configuration: {result['adaptive_config']}")
    report(result)
    result["machine"] = machine_info()
    if args.json is not None:
        write_json(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
