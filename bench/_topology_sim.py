"""bench.topology, parts (1) and (2): the simulated 3 x 3 cluster (`TopoSim`, driven through the
simulator's public tracer hook), WAN traffic and arrival times, and failure detection."""

from __future__ import annotations

import dataclasses
import math
import random
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any

import lz4.block
from pycrdt import Doc, Map, Subscription, TransactionEvent

from bench._common import (
    BenchError,
    Deadline,
    percentile,
)
from crdtsync.core import wire
from crdtsync.core.membership import MembershipConfig, PhiDetector
from crdtsync.core.state import decode_state_vector
from crdtsync.sim.cluster import SimCluster, SimConfig
from crdtsync.sim.trace import SimTracer, Step
from crdtsync.sim.workload import Write

SEED = 20261127
NODES = 9
DATACENTERS = 3
WAN_LATENCY_MS: dict[tuple[str, str], float] = {
    ("dc0", "dc1"): 30.0,
    ("dc0", "dc2"): 80.0,
    ("dc1", "dc2"): 60.0,
}
"""One-way latency of each datacenter pair (added to a LAN latency); the triangle inequality holds."""
LAN_LATENCY_MS = (0.15, 0.25)
WRITE_RATE_HZ = 1000.0
ARRIVAL_SLACK_MS = 5.0
"""The issue's target: every datacenter holds a write within one WAN latency plus this, at p99."""
WARMUP_MS = 4_000.0
IDLE_MS = 3_000.0
DRAIN_MS = 1_000.0
STRAGGLERS_MS = 20_000.0
"""After the counted window: how long writes still missing somewhere may take to arrive."""
EVENTS_MAX = 20_000_000
WAN_LOSS_INFO = 0.01
FD_WRITE_RATE_HZ = 5.0
CRASH_WRITE_RATE_HZ = 20.0
CRASH_AFTER_MS = 20_000.0
"""Simulated time before the crash (warm-up included): the detectors have an arrival history."""
CRASH_OBSERVE_MS = 30_000.0
CRASH_DC = "dc1"
FD_LOSSES = (0.0, 0.05, 0.20)
CRASH_LOSSES = (0.0, 0.05)


@dataclass(frozen=True)
class Settings:
    quick: bool
    seed: int
    docs: int
    write_s: float
    loss_write_s: float
    fd_duration_s: float
    fd_seeds: int
    crash_seeds: int
    pause_reps: int
    pause_settle_s: float
    short_pause: bool
    skip: tuple[str, ...]


# ---------------------------------------------------------------------------------------------------------
# The simulated cluster


class KeyWorkload:
    """One Map set per client operation: ``data[f"w{op}"] = op`` (a single small update)."""

    def write(
        self, doc: Doc[Any], doc_id: str, node_index: int, op_index: int, rng: random.Random
    ) -> list[Write]:
        doc.get("data", type=Map)[f"w{op_index}"] = op_index
        return [Write(doc_id, "data", f"w{op_index}", op_index, shared=False)]

    def materialize(self, doc: Doc[Any]) -> Any:
        return doc.get("data", type=Map).to_py()


@dataclass(frozen=True, slots=True)
class PlannedWrite:
    at_ms: float
    node: int
    doc: int


@dataclass(frozen=True, slots=True)
class MadeWrite:
    at_ms: float
    writer: int
    doc_id: str
    client_id: int
    clock: int
    """The writer's clock after the write: a node holds it once its state vector reaches this."""


@dataclass(slots=True)
class DeltaFrameStats:
    frames: int = 0
    frame_bytes: int = 0
    raw_frame_bytes: int = 0
    """The same frames without lz4 (the wire compresses bodies of 200 B and more when that helps)."""
    update_bytes: int = 0
    update_compressed_bytes: int = 0
    state_bytes: int = 0
    doc_id_bytes: int = 0


def plan_writes(
    seed: int, start_ms: float, duration_ms: float, rate_hz: float, docs: int
) -> list[PlannedWrite]:
    """A write plan independent of the simulator's random stream, so every configuration runs the same."""
    rng = random.Random(seed * 7919 + 17)
    count = round(duration_ms / 1000.0 * rate_hz)
    times = sorted(rng.uniform(start_ms, start_ms + duration_ms) for _ in range(count))
    return [PlannedWrite(at, rng.randrange(NODES), rng.randrange(docs)) for at in times]


def phase_of(kind: str) -> str:
    if kind in ("DELTAS", "RELAYED"):
        return "deltas"
    if kind in ("HEARTBEAT", "MEMBERS", "HELLO", "HELLO_ACK"):
        return "membership"
    if kind.startswith("TREE_"):
        return "anti-entropy"
    return "repair"  # SYNC_*, RETRANSMIT_*


class TopoSim(SimTracer):
    """A `SimCluster` with fixed WAN latencies and a scripted write plan, observed through its tracer:
    traffic counted by message kind, arrival times of every write on every node, the CPU the replicas
    spend, and a watch on one member's liveness."""

    def __init__(
        self, config: SimConfig, plan: Sequence[PlannedWrite], deadline: Deadline, *, track: bool
    ) -> None:
        self.cluster = SimCluster(config, KeyWorkload(), tracer=self)
        self.cluster.network.wan_latency_ms = dict(WAN_LATENCY_MS)
        self.config = config
        self.nodes = self.cluster.nodes
        self.plan = list(plan)
        self.deadline = deadline
        self.track = track
        self.phase: str | None = None
        self.traffic: dict[tuple[str, str, str], list[int]] = {}
        """(phase, "wan" | "lan", message kind) -> [frames, bytes]."""
        self.delta_stats = DeltaFrameStats()
        self.made: list[MadeWrite] = []
        self.arrived: list[dict[int, float]] = []
        """Per made write: node index -> simulated time it first held the write."""
        self._waiting: dict[tuple[int, str], dict[int, deque[tuple[int, int]]]] = {}
        self._subscriptions: list[Subscription] = []
        self.busy_s = [0.0] * config.nodes
        self._observer_s = [0.0] * config.nodes
        self._step_started = (0.0, 0.0)
        """(perf_counter, observer seconds of the node) when the current replica step started."""
        self.skipped_writes = 0
        self.watch: str | None = None
        self.watch_dc = ""
        self.first_seen: dict[tuple[int, str], float] = {}
        """(observer index, "suspect" | "down" | "relay moved") -> first simulated time."""
        for position, planned in enumerate(self.plan):
            self.cluster.schedule_op(planned.at_ms, position, planned.node, planned.doc)

    # ------------------------------------------------------------------ driving

    @property
    def now_ms(self) -> float:
        return self.cluster.now_ms

    @property
    def events(self) -> int:
        return self.cluster.events

    @property
    def messages_sent(self) -> int:
        return self.cluster.network.messages_sent

    @property
    def messages_dropped(self) -> int:
        return self.cluster.network.messages_dropped

    def start(self) -> None:
        self.cluster.start_nodes()
        if not self.track:
            return
        for node in self.nodes:
            replica = node.replica
            assert replica is not None
            for k in range(self.config.docs):
                doc_id = f"doc-{k}"
                doc = replica.open_doc(doc_id)
                self._subscriptions.append(doc.observe(partial(self._on_transaction, node.index, doc_id)))

    def _budget(self, events: int) -> None:
        if events > EVENTS_MAX:
            raise BenchError(f"simulation exceeded {EVENTS_MAX} events at {self.cluster.now_ms:.0f} ms")
        if events % 20_000 == 0 and self.deadline.expired():
            raise BenchError(f"simulation ran past its {self.deadline.seconds:.0f} s wall deadline")

    def advance(self, until_ms: float) -> None:
        """Handle every event up to `until_ms` (bounded by the event budget and the wall deadline)."""
        self.cluster.advance(until_ms, self._budget)

    def crash(self, index: int) -> None:
        self.cluster.crash(index)

    def alive(self) -> list[int]:
        return [node.index for node in self.nodes if node.replica is not None]

    def relay_view(self) -> dict[str, list[str]]:
        """Relays of every datacenter as node 0 (or the first live node) computes them; asserts that
        every live node agrees."""
        views = []
        for node in self.nodes:
            if node.replica is not None:
                membership = node.replica.membership
                views.append({dc: membership.relays(dc) for dc in self.dcs()})
        for view in views[1:]:
            if view != views[0]:
                raise BenchError(f"nodes disagree on the relays: {views}")
        return views[0]

    def dcs(self) -> list[str]:
        return sorted({node.dc for node in self.nodes})

    # ------------------------------------------------------------------ the tracer's callbacks

    def before_step(self, node: int, step: Step) -> None:
        self._step_started = (time.perf_counter(), self._observer_s[node])

    def after_step(self, node: int, step: Step) -> None:
        started, observed = self._step_started
        self.busy_s[node] += time.perf_counter() - started - (self._observer_s[node] - observed)
        if step == "tick" and self.watch is not None:
            self._check_watch(node)

    def _check_watch(self, index: int) -> None:
        replica = self.nodes[index].replica
        if replica is None or self.watch is None:
            return
        member = replica.membership.members.get(self.watch)
        if member is not None and member.liveness in ("suspect", "down"):
            self.first_seen.setdefault((index, member.liveness), self.now_ms)
            if member.liveness == "down":
                self.first_seen.setdefault((index, "suspect"), self.now_ms)
        if self.watch not in replica.membership.relays(self.watch_dc):
            self.first_seen.setdefault((index, "relay moved"), self.now_ms)

    def on_client_op(self, node: int, doc_id: str, op_index: int, writes: Sequence[Write] | None) -> None:
        replica = self.nodes[node].replica
        if writes is None or replica is None:
            self.skipped_writes += 1
            return
        if not self.track:
            return
        client_id = replica.client_id
        clock = decode_state_vector(replica.open_doc(doc_id).get_state()).get(client_id, 0)
        position = len(self.made)
        self.made.append(MadeWrite(self.now_ms, node, doc_id, client_id, clock))
        self.arrived.append({node: self.now_ms})
        for other in self.nodes:
            if other.index != node and other.replica is not None:
                queues = self._waiting.setdefault((other.index, doc_id), {})
                queues.setdefault(client_id, deque()).append((clock, position))

    def _on_transaction(self, index: int, doc_id: str, event: TransactionEvent) -> None:
        waiting = self._waiting.get((index, doc_id))
        if not waiting:
            return
        started = time.perf_counter()
        after: bytes = event.after_state  # type: ignore[attr-defined]
        state = decode_state_vector(after)
        for client_id, queue in waiting.items():
            have = state.get(client_id, 0)
            while queue and queue[0][0] <= have:
                _clock, position = queue.popleft()
                self.arrived[position].setdefault(index, self.now_ms)
        self._observer_s[index] += time.perf_counter() - started

    def on_frame(self, source: int, target: int, frame: bytes, wan: bool) -> None:
        if self.phase is None:
            return
        kind = wire.MessageKind(frame[3]).name
        counts = self.traffic.setdefault((self.phase, "wan" if wan else "lan", kind), [0, 0])
        counts[0] += 1
        counts[1] += len(frame)
        if wan and kind == "DELTAS" and self.phase == "load":
            self._count_delta_frame(frame)

    def _count_delta_frame(self, frame: bytes) -> None:
        message = wire.decode(frame)
        assert isinstance(message, wire.Deltas)
        if len(message.deltas) != 1:
            return
        [delta] = message.deltas
        stats = self.delta_stats
        stats.frames += 1
        stats.frame_bytes += len(frame)
        stats.raw_frame_bytes += wire.encode_counted(message)[1]
        stats.update_bytes += len(delta.update)
        packed = lz4.block.compress(delta.update, store_size=True)
        stats.update_compressed_bytes += min(len(packed), len(delta.update))
        stats.state_bytes += len(delta.before_state) + len(delta.after_state)
        stats.doc_id_bytes += len(delta.doc_id.encode())


def sim_config(
    seed: int, docs: int, *, relays: int = 1, loss: float = 0.0, wan_loss: float = 0.0
) -> SimConfig:
    return SimConfig(
        seed=seed,
        nodes=NODES,
        docs=docs,
        ops=0,
        faults=frozenset({"loss"}) if loss > 0 else frozenset(),
        loss_rate=loss,
        latency_ms=LAN_LATENCY_MS,
        datacenters=DATACENTERS,
        wan_latency_ms=(min(WAN_LATENCY_MS.values()), max(WAN_LATENCY_MS.values())),
        wan_loss_rate=wan_loss,
        membership=MembershipConfig(relays_per_dc=relays),
    )


# ---------------------------------------------------------------------------------------------------------
# (1) WAN traffic and arrival


def _pcts(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "n": float(len(ordered)),
        "p50": percentile(ordered, 50),
        "p99": percentile(ordered, 99),
        "max": ordered[-1] if ordered else math.nan,
    }


def arrival_summary(sim: TopoSim, first_write: int = 0, nodes: list[int] | None = None) -> dict[str, Any]:
    """Per remote datacenter (first node / all nodes) and inside the writer's datacenter, in ms after
    the write; excess = arrival - the pair's one-way WAN latency."""
    live = set(sim.alive() if nodes is None else nodes)
    by_dc: dict[str, list[int]] = {}
    for node in sim.nodes:
        if node.index in live:
            by_dc.setdefault(node.dc, []).append(node.index)
    pairs: dict[str, dict[str, list[float]]] = {}
    excess_first: list[float] = []
    excess_all: list[float] = []
    lan_all: list[float] = []
    missing = 0
    for position in range(first_write, len(sim.made)):
        made = sim.made[position]
        if made.writer not in live:
            continue
        arrived = sim.arrived[position]
        source_dc = sim.nodes[made.writer].dc
        for dc, members in by_dc.items():
            times = [arrived.get(index) for index in members if index != made.writer]
            if any(t is None for t in times):
                missing += 1
                continue
            delays = [float(t) - made.at_ms for t in times if t is not None]
            if not delays:
                continue
            if dc == source_dc:
                lan_all.append(max(delays))
                continue
            floor = WAN_LATENCY_MS[min(dc, source_dc), max(dc, source_dc)]
            entry = pairs.setdefault(f"{source_dc}->{dc}", {"first": [], "all": [], "floor": [floor]})
            entry["first"].append(min(delays))
            entry["all"].append(max(delays))
            excess_first.append(min(delays) - floor)
            excess_all.append(max(delays) - floor)
    return {
        "pairs": {
            name: {"floor_ms": v["floor"][0], "first": _pcts(v["first"]), "all": _pcts(v["all"])}
            for name, v in sorted(pairs.items())
        },
        "excess_first": _pcts(excess_first),
        "excess_all": _pcts(excess_all),
        "lan_all": _pcts(lan_all),
        "missing": missing,
    }


def wan_run(
    settings: Settings,
    relays: int,
    wan_loss: float,
    write_s: float,
    deadline: Deadline,
    *,
    seed_only: bool = False,
) -> dict[str, Any]:
    config = dataclasses.replace(
        sim_config(settings.seed, settings.docs, relays=relays, wan_loss=wan_loss), seed_only=seed_only
    )
    write_start = WARMUP_MS + IDLE_MS
    write_ms = write_s * 1000.0
    plan = plan_writes(settings.seed, write_start, write_ms, WRITE_RATE_HZ, settings.docs)
    sim = TopoSim(config, plan, deadline, track=True)
    wall = time.perf_counter()
    sim.start()
    sim.advance(WARMUP_MS)
    relay_view = sim.relay_view()
    sim.phase = "idle"
    sim.advance(write_start)
    busy0 = list(sim.busy_s)
    sim.phase = "load"
    load_end = write_start + write_ms + DRAIN_MS
    sim.advance(load_end)
    busy = [now - before for now, before in zip(sim.busy_s, busy0, strict=True)]
    sim.phase = None
    sim.advance(load_end + STRAGGLERS_MS)
    writes = len(sim.made)
    relay_ids = {node_id for ids in relay_view.values() for node_id in ids}
    traffic: dict[str, dict[str, dict[str, list[int]]]] = {}
    for (phase, link, kind), counts in sim.traffic.items():
        traffic.setdefault(phase, {}).setdefault(link, {})[kind] = counts
    load_s = (load_end - write_start) / 1000.0
    stats = sim.delta_stats
    per_node = [
        {
            "node": f"n{node.index}",
            "dc": node.dc,
            "relay": f"n{node.index}" in relay_ids,
            "busy_ms": busy[node.index] * 1000.0,
            "utilization": busy[node.index] / load_s,
            "frames_received": (node.replica.counters.frames_received if node.replica else 0),
        }
        for node in sim.nodes
    ]
    return {
        "relays_per_dc": relays,
        "wan_loss": wan_loss,
        "writes": writes,
        "skipped_writes": sim.skipped_writes,
        "write_s": write_s,
        "idle_s": IDLE_MS / 1000.0,
        "load_s": load_s,
        "relays": relay_view,
        "traffic": traffic,
        "delta_frames": asdict(stats),
        "arrival": arrival_summary(sim),
        "per_node": per_node,
        "events": sim.events,
        "wall_s": time.perf_counter() - wall,
    }


def wan_figures(run: dict[str, Any]) -> dict[str, float]:
    """Per-update figures of one WAN run (load window), by traffic category, and the idle-subtracted total."""
    writes = max(1, int(run["writes"]))
    load = run["traffic"].get("load", {})
    idle = run["traffic"].get("idle", {})
    out: dict[str, float] = {}
    for link in ("wan", "lan"):
        kinds = load.get(link, {})
        out[f"{link}_frames"] = sum(c[0] for c in kinds.values()) / writes
        out[f"{link}_bytes"] = sum(c[1] for c in kinds.values()) / writes
        for category in ("deltas", "membership", "anti-entropy", "repair"):
            out[f"{link}_{category}_frames"] = (
                sum(c[0] for k, c in kinds.items() if phase_of(k) == category) / writes
            )
            out[f"{link}_{category}_bytes"] = (
                sum(c[1] for k, c in kinds.items() if phase_of(k) == category) / writes
            )
    idle_bytes = sum(c[1] for c in idle.get("wan", {}).values())
    idle_frames = sum(c[0] for c in idle.get("wan", {}).values())
    out["idle_wan_bytes_per_s"] = idle_bytes / run["idle_s"]
    out["idle_wan_frames_per_s"] = idle_frames / run["idle_s"]
    out["wan_bytes_minus_idle"] = out["wan_bytes"] - out["idle_wan_bytes_per_s"] * run["load_s"] / writes
    out["wan_frames_minus_idle"] = out["wan_frames"] - out["idle_wan_frames_per_s"] * run["load_s"] / writes
    stats = run["delta_frames"]
    frames = max(1, int(stats["frames"]))
    out["delta_frame_bytes"] = stats["frame_bytes"] / frames
    out["delta_frame_raw_bytes"] = stats["raw_frame_bytes"] / frames
    out["update_bytes"] = stats["update_bytes"] / frames
    out["update_compressed_bytes"] = stats["update_compressed_bytes"] / frames
    out["state_bytes"] = stats["state_bytes"] / frames
    out["doc_id_bytes"] = stats["doc_id_bytes"] / frames
    return out


# ---------------------------------------------------------------------------------------------------------
# (2) Failure detection in the simulator


def _suspicions(sim: TopoSim) -> tuple[int, int]:
    suspicions = downs = 0
    for node in sim.nodes:
        if node.replica is not None:
            for member in node.replica.membership.members.values():
                suspicions += member.suspicions
                downs += member.downs
    return suspicions, downs


def false_suspicion_run(settings: Settings, loss: float, seed: int, deadline: Deadline) -> dict[str, Any]:
    duration_ms = settings.fd_duration_s * 1000.0
    plan = plan_writes(seed, WARMUP_MS, duration_ms, FD_WRITE_RATE_HZ, settings.docs)
    sim = TopoSim(sim_config(seed, settings.docs, loss=loss), plan, deadline, track=True)
    sim.start()
    sim.advance(WARMUP_MS)
    suspicions0, downs0 = _suspicions(sim)
    sim.advance(WARMUP_MS + duration_ms)
    suspicions, downs = _suspicions(sim)
    relays = {
        f"n{node.index}"
        for node in sim.nodes
        if node.replica is not None and node.replica.membership.is_relay()
    }
    suspected: list[str] = []
    for node in sim.nodes:
        if node.replica is None:
            continue
        for node_id, member in node.replica.membership.members.items():
            if member.suspicions:
                observer = f"n{node.index}"
                suspected.append(
                    f"{observer} ({node.dc}{', relay' if observer in relays else ''}) suspected {node_id}"
                    f" ({member.record.dc}{', relay' if node_id in relays else ''}) {member.suspicions}x"
                )
    sim.advance(WARMUP_MS + duration_ms + STRAGGLERS_MS)
    delays = sorted(
        max(arrived.values()) - made.at_ms
        for made, arrived in zip(sim.made, sim.arrived, strict=True)
        if len(arrived) == NODES
    )
    return {
        "write_to_all_ms": _pcts(delays),
        "write_to_node_ms": delays_by_receiver(sim),
        "writes_unreached": sum(1 for arrived in sim.arrived if len(arrived) < NODES),
        "loss": loss,
        "seed": seed,
        "duration_s": settings.fd_duration_s,
        "node_hours": NODES * settings.fd_duration_s / 3600.0,
        "suspicions": suspicions - suspicions0,
        "downs": downs - downs0,
        "warmup_suspicions": suspicions0,
        "suspected": suspected,
        "messages_dropped": sim.messages_dropped,
        "messages_sent": sim.messages_sent,
    }


def delays_by_receiver(sim: TopoSim) -> dict[str, dict[str, float]]:
    """Write -> arrival (ms) by the receiver's place: the writer's DC or another, relay or not
    (never arrived: infinite)."""
    relays = {
        node.index for node in sim.nodes if node.replica is not None and node.replica.membership.is_relay()
    }
    out: dict[str, list[float]] = {}
    for made, arrived in zip(sim.made, sim.arrived, strict=True):
        writer_dc = sim.nodes[made.writer].dc
        for node in sim.nodes:
            if node.index == made.writer or node.replica is None:
                continue
            place = ("same DC" if node.dc == writer_dc else "other DC") + (
                " relay" if node.index in relays else " non-relay"
            )
            at = arrived.get(node.index)
            out.setdefault(place, []).append(math.inf if at is None else at - made.at_ms)
    return {place: _pcts(values) for place, values in sorted(out.items())}


def silence_to_suspect_ms(detector: PhiDetector, config: MembershipConfig) -> float:
    """The silence after the detector's last arrival at which phi first reaches phi_suspect."""
    low, high = 0.0, 600_000.0
    for _ in range(40):
        middle = (low + high) / 2
        if detector.phi(detector.last_ms + middle, config) >= config.phi_suspect:
            high = middle
        else:
            low = middle
    return high


def crash_run(
    settings: Settings, seed: int, loss: float, victim_role: str, deadline: Deadline
) -> dict[str, Any]:
    end_ms = CRASH_AFTER_MS + CRASH_OBSERVE_MS
    plan = plan_writes(seed, WARMUP_MS, end_ms - WARMUP_MS, CRASH_WRITE_RATE_HZ, settings.docs)
    config = sim_config(seed, settings.docs, loss=loss)
    sim = TopoSim(config, plan, deadline, track=True)
    sim.start()
    sim.advance(CRASH_AFTER_MS)
    relays = sim.relay_view()
    in_dc = [node for node in sim.nodes if node.dc == CRASH_DC]
    if victim_role == "relay":
        victim = next(node for node in in_dc if f"n{node.index}" in relays[CRASH_DC])
    else:
        victim = next(node for node in in_dc if f"n{node.index}" not in relays[CRASH_DC])
    victim_id = f"n{victim.index}"
    relay_ids = {node_id for ids in relays.values() for node_id in ids}
    expected: dict[int, float] = {}
    for node in sim.nodes:
        if node is victim or node.replica is None:
            continue
        member = node.replica.membership.members[victim_id]
        silence = silence_to_suspect_ms(member.detector, config.membership)
        expected[node.index] = member.detector.last_ms + silence - CRASH_AFTER_MS
    first_after = len(sim.made)
    sim.watch = victim_id
    sim.watch_dc = CRASH_DC
    sim.crash(victim.index)
    sim.advance(end_ms)
    observers = sorted(expected)

    def times(what: str) -> list[float]:
        return [sim.first_seen.get((index, what), math.inf) - CRASH_AFTER_MS for index in observers]

    suspect, down = times("suspect"), times("down")
    moved = times("relay moved") if victim_role == "relay" else []
    # The longest a write made after the crash took to reach every live node (writes of the last
    # seconds may still be on their way when the run ends: only those made in the first half count).
    delays: list[float] = []
    unreached = 0
    for position in range(first_after, len(sim.made)):
        made = sim.made[position]
        if made.at_ms > CRASH_AFTER_MS + CRASH_OBSERVE_MS / 2:
            break
        arrived = sim.arrived[position]
        reached = [arrived.get(index) for index in observers]
        if any(t is None for t in reached):
            unreached += 1
            continue
        delays.append(max(float(t) for t in reached if t is not None) - made.at_ms)
    same_dc = [i for i, index in enumerate(observers) if sim.nodes[index].dc == CRASH_DC]
    other_dc = [i for i in range(len(observers)) if i not in same_dc]
    return {
        "seed": seed,
        "loss": loss,
        "victim": victim_id,
        "victim_role": victim_role,
        "first_suspect_ms": min(suspect),
        "all_suspect_ms": max(suspect),
        "all_down_ms": max(down),
        "same_dc_down_ms": max(down[i] for i in same_dc),
        "other_dc_down_ms": max(down[i] for i in other_dc),
        "expected_suspect_ms": [expected[index] for index in observers],
        "suspect_over_expected_ms": [
            s - expected[index] for s, index in zip(suspect, observers, strict=True)
        ],
        "observer_places": [
            "same DC"
            if sim.nodes[index].dc == CRASH_DC
            else ("other DC relay" if f"n{index}" in relay_ids else "other DC non-relay")
            for index in observers
        ],
        "relay_moved_all_ms": max(moved) if moved else None,
        "relay_moved_dc_ms": max(moved[i] for i in same_dc) if moved else None,
        "write_to_all_max_ms": max(delays) if delays else math.nan,
        "write_to_all_p50_ms": percentile(sorted(delays), 50),
        "writes_unreached": unreached,
        "false_suspicions_of_others": _false_suspicions(sim, victim_id),
    }


def _false_suspicions(sim: TopoSim, victim_id: str) -> int:
    count = 0
    for node in sim.nodes:
        if node.replica is not None:
            for node_id, member in node.replica.membership.members.items():
                if node_id != victim_id:
                    count += member.suspicions
    return count
