"""Topology and failure-detection benchmark: datacenter relays against a full mesh, and the phi-accrual
failure detector under crashes, loss and a paused process.

    python -m bench.topology [--quick] [--json OUT] [--seed N] [--skip wan,fd,procs]

Measured in one run (targets from the issue):

(1) WAN traffic and arrival time, 3 datacenters x 3 nodes in the deterministic simulator
    (``crdtsync.sim.SimCluster``, driven here; seeded, the seed is printed). One-way WAN latencies are
    fixed per datacenter pair (``WAN_LATENCY_MS``), links inside a datacenter take 0.15-0.25 ms, both
    FIFO. After a warm-up (membership, relays, first anti-entropy rounds) and an idle window, single
    small writes (one Map set ``data[f"w{i}"] = i`` each, one transaction) arrive at 1,000/s in total,
    each at a random node on one of ``docs`` docs, uniformly over the write window. The same write plan
    runs with one relay per datacenter (the topology), two, and ``relays_per_dc = 3`` (every node a
    relay: the full mesh), and once more with one relay and 1% loss on WAN links (information; not with
    --quick); an idle run where every node has node 0 as its only configured peer shows what gossip costs
    without the static peer lists. Measured:
    - WAN frames and bytes per update, by message kind (every frame between datacenters is decoded by
      kind when sent): deltas against background (membership, anti-entropy, repair), and, as a
      cross-check, all WAN bytes of the write window minus the idle window's rate;
    - the target bound (DCs - 1) x relays per DC x the compressed update size, with the update size taken
      two ways: the one-update DELTAS frame as sent (lz4 when it makes the body smaller), and, stricter,
      the bare Yjs update (lz4-compressed if that is smaller);
    - for each write and each other datacenter, when its first node and when all its nodes hold the write
      (a pycrdt observer on every doc of every node checks the node's state vector against the writer's
      client clock), against the floor: the pair's one-way WAN latency. Target: all nodes, p99 <= floor +
      5 ms;
    - the CPU the replicas spend receiving (``Replica.receive`` and ``tick``, wall clock of this process,
      observer time subtracted) per simulated second: the load of a relay at 1,000 updates/s.
    The simulator models latency and loss but neither CPU time nor bandwidth: arrival times above the
    floor come from the protocol (relay hop, causal waits, retransmissions), not from queueing.
(2) Failure detection in the simulator, the same 3 x 3 cluster with a few writes per second:
    - false suspicions with no node down, per node-hour, with 0%, 5% and 20% loss on every link;
    - a crashed node (a relay, then a non-relay, of dc1), with 0% and 5% loss on every link, over several
      seeds: time until the first and until every other node sees it suspect and down; the detector's own
      prediction (the silence at which phi reaches phi_suspect, from each observer's arrival history at the
      crash); the time until every node has moved dc1's relay role to another node; and the longest time
      a write made after the crash took to reach every live node;
    - with the false-suspicion runs, how long writes take to reach every node under that loss, by the
      receiver's place (the writer's DC or another, relay or not).
(3) A paused process: 3 ``crdtsync serve`` processes on 127.0.0.1 (plaintext, default membership and
    heartbeat settings, memory store). One is stopped with SIGSTOP; the others' ``/v1/status`` is polled
    every 50 ms until they report it suspect and down; then SIGCONT, until it is alive again everywhere.
    Repeated on the same node; then one short pause (``SHORT_PAUSE_S``) that should raise no suspicion.
    Suspicions the paused node raises about the others after it resumes are counted from its counters.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import heapq
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import lz4.block
from pycrdt import Doc, Map, Subscription, TransactionEvent

from bench._common import (
    BenchError,
    Deadline,
    Target,
    fmt,
    machine_info,
    percentile,
    print_table,
    write_json,
)
from crdtsync.core import wire
from crdtsync.core.membership import MembershipConfig, PhiDetector
from crdtsync.core.replica import ReplicaConfig
from crdtsync.core.state import decode_state_vector
from crdtsync.sim.cluster import EventKind, SimCluster, SimConfig
from crdtsync.sim.workload import Write
from crdtsync.testing.cluster import free_ports

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

# Real processes
PROC_NAMES = ("p0", "p1", "p2")
PROC_DC = "dc0"
PROC_START_TIMEOUT_S = 30.0
POLL_S = 0.05
DETECT_TIMEOUT_S = 30.0
ALIVE_TIMEOUT_S = 20.0
SHORT_PAUSE_S = 1.5
SHORT_PAUSE_WATCH_S = 3.0
HTTP_TIMEOUT_S = 2.0
STOP_TIMEOUT_S = 5.0


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


class TopoSim(SimCluster):
    """A `SimCluster` with fixed WAN latencies, a scripted write plan, traffic counted by message kind,
    arrival times of every write on every node, and a watch on one member's liveness."""

    def __init__(
        self, config: SimConfig, plan: Sequence[PlannedWrite], deadline: Deadline, *, track: bool
    ) -> None:
        super().__init__(config, KeyWorkload())
        self.wan_latency_ms = dict(WAN_LATENCY_MS)
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
        self.skipped_writes = 0
        self.watch: str | None = None
        self.watch_dc = ""
        self.first_seen: dict[tuple[int, str], float] = {}
        """(observer index, "suspect" | "down" | "relay moved") -> first simulated time."""
        for position, planned in enumerate(self.plan):
            self._schedule(planned.at_ms, "op", position)

    # ------------------------------------------------------------------ driving

    def start(self) -> None:
        for node in self.nodes:
            self._start_node(node)
            if self.track:
                replica = node.replica
                assert replica is not None
                for k in range(self.config.docs):
                    doc_id = f"doc-{k}"
                    doc = replica.open_doc(doc_id)
                    self._subscriptions.append(doc.observe(partial(self._on_transaction, node.index, doc_id)))

    def advance(self, until_ms: float) -> None:
        """Handle every event up to `until_ms` (bounded by the event budget and the wall deadline)."""
        while self._heap and self._heap[0][0] <= until_ms:
            at, _seq, kind, payload = heapq.heappop(self._heap)
            self.now_ms = at
            self.events += 1
            if self.events > EVENTS_MAX:
                raise BenchError(f"simulation exceeded {EVENTS_MAX} events at {at:.0f} ms")
            if self.events % 20_000 == 0 and self.deadline.expired():
                raise BenchError(f"simulation ran past its {self.deadline.seconds:.0f} s wall deadline")
            self._handle(kind, payload)
        self.now_ms = max(self.now_ms, until_ms)

    def crash(self, index: int) -> None:
        self._handle("crash", index)

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

    # ------------------------------------------------------------------ hooks

    def _handle(self, kind: EventKind, payload: Any) -> None:
        if kind == "deliver":
            index, incarnation, frame = payload
            node = self.nodes[index]
            if node.replica is not None and node.incarnation == incarnation:
                started, observed = time.perf_counter(), self._observer_s[index]
                node.replica.receive(frame, self.now_ms)
                self.busy_s[index] += time.perf_counter() - started - (self._observer_s[index] - observed)
                self._pump(node)
            return
        if kind == "tick":
            index, token = payload
            node = self.nodes[index]
            if node.replica is not None and node.tick_token == token:
                node.tick_at_ms = float("inf")
                started, observed = time.perf_counter(), self._observer_s[index]
                node.replica.tick(self.now_ms)
                self.busy_s[index] += time.perf_counter() - started - (self._observer_s[index] - observed)
                self._pump(node)
                if self.watch is not None:
                    self._check_watch(index)
            return
        super()._handle(kind, payload)

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

    def _client_op(self, op_index: int) -> None:
        planned = self.plan[op_index]
        node = self.nodes[planned.node]
        replica = node.replica
        if replica is None:
            self.skipped_writes += 1
            return
        doc_id = f"doc-{planned.doc}"
        doc = replica.open_doc(doc_id)
        self.workload.write(doc, doc_id, node.index, op_index, self.rng)
        if self.track:
            client_id = replica.client_id
            clock = decode_state_vector(doc.get_state()).get(client_id, 0)
            position = len(self.made)
            self.made.append(MadeWrite(self.now_ms, node.index, doc_id, client_id, clock))
            self.arrived.append({node.index: self.now_ms})
            for other in self.nodes:
                if other is not node and other.replica is not None:
                    queues = self._waiting.setdefault((other.index, doc_id), {})
                    queues.setdefault(client_id, deque()).append((clock, position))
        self._pump(node)

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

    def _transmit(self, source: Any, target: Any, frame: bytes) -> None:
        if self.phase is not None:
            kind = wire.MessageKind(frame[3]).name
            wan = source.dc != target.dc
            counts = self.traffic.setdefault((self.phase, "wan" if wan else "lan", kind), [0, 0])
            counts[0] += 1
            counts[1] += len(frame)
            if wan and kind == "DELTAS" and self.phase == "load":
                message = wire.decode(frame)
                assert isinstance(message, wire.Deltas)
                if len(message.deltas) == 1:
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
        super()._transmit(source, target, frame)


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
            "frames_received": (node.replica.counters.get("frames_received", 0) if node.replica else 0),
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


# ---------------------------------------------------------------------------------------------------------
# (3) A paused process


@dataclass
class Proc:
    name: str
    listen: str
    http_port: int
    workdir: Path
    proc: subprocess.Popen[bytes] | None = None
    client: httpx.Client | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def serve_args(self, peers: list[str]) -> list[str]:
        """`crdtsync serve` with flags only (memory store, plaintext links, kv logs at info)."""
        args = ["serve", "--node-id", self.name, "--dc", PROC_DC, "--listen", self.listen]
        for peer in peers:
            args += ["--peer", peer]
        return [*args, "--http", f"127.0.0.1:{self.http_port}", "--plaintext", "--log-level", "info"]

    def start(self, peers: list[str]) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        with open(self.workdir / "daemon.log", "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "crdtsync", *self.serve_args(peers)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
            )
        self.client = httpx.Client(base_url=self.url, timeout=HTTP_TIMEOUT_S, trust_env=False)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def status(self) -> dict[str, Any] | None:
        """/v1/status, or None when it does not answer in time (a paused process)."""
        assert self.client is not None
        if self.proc is None or self.proc.poll() is not None:
            raise BenchError(f"{self.name} exited (rc {None if self.proc is None else self.proc.returncode})")
        try:
            response = self.client.get("/v1/status")
        except httpx.HTTPError:
            return None
        if response.status_code != 200:
            return None
        body: dict[str, Any] = response.json()
        return body

    def states(self) -> dict[str, str] | None:
        """node id -> alive / suspect / down (from `members` when the API has them, else `peers`)."""
        status = self.status()
        if status is None:
            return None
        return states_of(status)

    def stop(self) -> None:
        """SIGCONT (in case it is paused), SIGTERM, and SIGKILL if it has not exited in time."""
        if self.client is not None:
            self.client.close()
            self.client = None
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGCONT)
            proc.terminate()
        try:
            proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=STOP_TIMEOUT_S)


_PEER_STATES = {"up": "alive", "suspect": "suspect", "down": "down", "connecting": "connecting"}


def states_of(status: dict[str, Any]) -> dict[str, str]:
    members = status.get("members")
    if isinstance(members, list):
        return {str(m["node_id"]): str(m["state"]) for m in members}
    return {
        str(p["node_id"]): _PEER_STATES.get(str(p["state"]), str(p["state"]))
        for p in status.get("peers", [])
        if p.get("node_id")
    }


def _counter(status: dict[str, Any] | None, name: str) -> int:
    if status is None:
        return 0
    return int(status.get("counters", {}).get(name, 0))


def _wait(predicate: Callable[[], bool], timeout_s: float, what: str) -> float:
    started = time.monotonic()
    for _ in range(int(timeout_s / POLL_S) + 1):
        if predicate():
            return time.monotonic() - started
        if time.monotonic() - started > timeout_s:
            break
        time.sleep(POLL_S)
    raise BenchError(f"timed out after {timeout_s:.0f} s waiting until {what}")


def _everyone_alive(procs: list[Proc]) -> bool:
    for proc in procs:
        states = proc.states()
        others = {p.name for p in procs} - {proc.name}
        if states is None or any(states.get(name) != "alive" for name in others):
            return False
    return True


def pause_runs(settings: Settings, log_dir: Path) -> dict[str, Any]:
    ports = free_ports(2 * len(PROC_NAMES))
    procs = [
        Proc(name, f"tcp://127.0.0.1:{ports[2 * i]}", ports[2 * i + 1], log_dir / name)
        for i, name in enumerate(PROC_NAMES)
    ]
    try:
        for proc in procs:
            proc.start([other.listen for other in procs if other is not proc])
        _wait(lambda: _everyone_alive(procs), PROC_START_TIMEOUT_S, "every process sees every other alive")
        time.sleep(settings.pause_settle_s)
        victim, observers = procs[-1], procs[:-1]
        reps: list[dict[str, Any]] = []
        short: dict[str, Any] | None = None
        for rep in range(settings.pause_reps):
            reps.append(_pause_once(victim, observers, rep))
            if rep + 1 < settings.pause_reps or settings.short_pause:
                time.sleep(settings.pause_settle_s)
        if settings.short_pause:
            short = _short_pause(victim, observers)
        return {"victim": victim.name, "observers": [o.name for o in observers], "reps": reps, "short": short}
    except BenchError as exc:
        tails = []
        for proc in procs:
            with contextlib.suppress(OSError):
                lines = (proc.workdir / "daemon.log").read_text(errors="replace").splitlines()[-8:]
                tails.append(f"{proc.name}:\n    " + "\n    ".join(lines))
        raise BenchError(f"{exc}\n" + "\n".join(tails)) from exc
    finally:
        for proc in procs:
            try:
                proc.stop()
            except Exception as exc:  # never leave a process behind because another one misbehaved
                print(f"warning: stopping {proc.name}: {exc}", file=sys.stderr)
                if proc.proc is not None and proc.proc.poll() is None:
                    proc.proc.kill()


def _pause_once(victim: Proc, observers: list[Proc], rep: int) -> dict[str, Any]:
    before = {o.name: o.status() for o in observers}
    victim_before = victim.status()
    first: dict[tuple[str, str], float] = {}
    stopped = time.monotonic()
    os.kill(victim.pid, signal.SIGSTOP)
    try:
        for _ in range(int(DETECT_TIMEOUT_S / POLL_S) + 1):
            for observer in observers:
                state = (observer.states() or {}).get(victim.name)
                now = time.monotonic() - stopped  # when the answer came: an upper bound
                if state in ("suspect", "down"):
                    first.setdefault((observer.name, "suspect"), now)
                if state == "down":
                    first.setdefault((observer.name, "down"), now)
            if (
                all((o.name, "down") in first for o in observers)
                or time.monotonic() - stopped > DETECT_TIMEOUT_S
            ):
                break
            time.sleep(POLL_S)
    finally:
        paused_s = time.monotonic() - stopped
        os.kill(victim.pid, signal.SIGCONT)
    resumed = time.monotonic()
    alive_after: dict[str, float] = {}
    for _ in range(int(ALIVE_TIMEOUT_S / POLL_S) + 1):
        for observer in observers:
            if (observer.states() or {}).get(victim.name) == "alive":
                alive_after.setdefault(observer.name, time.monotonic() - resumed)
        if len(alive_after) == len(observers) or time.monotonic() - resumed > ALIVE_TIMEOUT_S:
            break
        time.sleep(POLL_S)
    # Let the paused node's own detector run a few liveness checks, then read what it concluded.
    time.sleep(1.0)
    after = {o.name: o.status() for o in observers}
    victim_after = victim.status()
    victim_states = victim.states() or {}
    return {
        "rep": rep + 1,
        "paused_s": paused_s,
        "suspect_s": {o.name: first.get((o.name, "suspect")) for o in observers},
        "down_s": {o.name: first.get((o.name, "down")) for o in observers},
        "alive_after_cont_s": {o.name: alive_after.get(o.name) for o in observers},
        "observer_suspicions": {
            o.name: _counter(after[o.name], "member_suspect") - _counter(before[o.name], "member_suspect")
            for o in observers
        },
        "victim_suspicions_of_others": _counter(victim_after, "member_suspect")
        - _counter(victim_before, "member_suspect"),
        "victim_downs_of_others": _counter(victim_after, "member_down")
        - _counter(victim_before, "member_down"),
        "victim_view_after": victim_states,
    }


def _short_pause(victim: Proc, observers: list[Proc]) -> dict[str, Any]:
    before = {o.name: o.status() for o in observers}
    victim_before = victim.status()
    os.kill(victim.pid, signal.SIGSTOP)
    try:
        time.sleep(SHORT_PAUSE_S)
    finally:
        os.kill(victim.pid, signal.SIGCONT)
    seen: set[str] = set()
    started = time.monotonic()
    for _ in range(int(SHORT_PAUSE_WATCH_S / POLL_S) + 1):
        for observer in observers:
            state = (observer.states() or {}).get(victim.name)
            if state is not None and state != "alive":
                seen.add(f"{observer.name}:{state}")
        if time.monotonic() - started > SHORT_PAUSE_WATCH_S:
            break
        time.sleep(POLL_S)
    after = {o.name: o.status() for o in observers}
    victim_after = victim.status()
    return {
        "pause_s": SHORT_PAUSE_S,
        "states_seen": sorted(seen),
        "observer_suspicions": sum(
            _counter(after[o.name], "member_suspect") - _counter(before[o.name], "member_suspect")
            for o in observers
        ),
        "victim_suspicions_of_others": _counter(victim_after, "member_suspect")
        - _counter(victim_before, "member_suspect"),
    }


def liveness_check_ms(replica: ReplicaConfig) -> float:
    """The detector's evaluation period, where the replica polls it (0: evaluated exactly when due)."""
    return float(getattr(replica, "liveness_check_interval_ms", 0.0))


def git_revision() -> str:
    """The commit measured, and whether crdtsync/ had uncommitted changes."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "crdtsync"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + (" + uncommitted changes in crdtsync/" if dirty else "")


def heartbeat_only_detection_s(membership: MembershipConfig, replica: ReplicaConfig) -> tuple[float, float]:
    """(suspect, down) after the last arrival, by the settings, for a member heard only at every heartbeat."""
    heartbeat = replica.heartbeat_interval_ms
    detector = PhiDetector(membership.samples_max, heartbeat, 0.0, heartbeat + membership.acceptable_pause_ms)
    now = 0.0
    for _ in range(50):
        now += heartbeat
        detector.heard(now)
    silence = silence_to_suspect_ms(detector, membership)
    suspect = silence + liveness_check_ms(replica)
    return suspect / 1000.0, (suspect + membership.down_after_suspect_ms) / 1000.0


# ---------------------------------------------------------------------------------------------------------
# Report


@dataclass
class Report:
    machine: dict[str, str]
    settings: Settings
    results: dict[str, Any] = field(default_factory=dict)
    targets: list[Target] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)


def _f(value: float | None, digits: int = 1) -> str:
    if value is None or math.isnan(value):
        return "-"
    if math.isinf(value):
        return "never"
    return fmt(float(value), digits)


def print_header(report: Report) -> None:
    machine = report.machine
    settings = report.settings
    print("crdtsync topology and failure-detection benchmark" + (" (--quick)" if settings.quick else ""))
    print(f"  machine: {machine['cpu']}, {machine['cores']} cores, {machine['kernel']}, {machine['python']}")
    versions = ", ".join(
        f"{k} {machine[k]}" for k in ("pycrdt", "pyzmq", "libzmq", "lz4", "msgpack", "crdtsync")
    )
    print(f"  versions: {versions}; source {machine.get('revision', 'unknown')}")
    wan = ", ".join(f"{a}-{b} {ms:g} ms" for (a, b), ms in WAN_LATENCY_MS.items())
    print(
        f"  simulation: seed {settings.seed}; {NODES} nodes in {DATACENTERS} DCs; one-way WAN latency {wan};"
        f" LAN {LAN_LATENCY_MS[0]}-{LAN_LATENCY_MS[1]} ms"
    )
    membership = MembershipConfig()
    replica = ReplicaConfig()
    print(
        f"  detector (defaults): phi_suspect {membership.phi_suspect:g}, acceptable_pause"
        f" {membership.acceptable_pause_ms:g} ms, min_std_deviation {membership.min_std_deviation_ms:g} ms,"
        f" down_after_suspect {membership.down_after_suspect_ms:g} ms, gossip {membership.gossip_interval_ms:g} ms,"
        f" heartbeat {replica.heartbeat_interval_ms:g} ms, "
        + (
            f"liveness check every {liveness_check_ms(replica):g} ms"
            if liveness_check_ms(replica)
            else "liveness evaluated at the detector's next deadline"
        )
    )


def report_wan(report: Report) -> None:
    results = report.results
    runs = [(label, results[key]) for key, label in WAN_RUNS if key in results]
    if not runs:
        return
    settings = report.settings
    figures = {label: wan_figures(run) for label, run in runs}
    rows = []
    for label, run in runs:
        f = figures[label]
        rows.append(
            [
                label,
                fmt(int(run["writes"])),
                _f(f["wan_frames"], 2),
                _f(f["wan_bytes"], 1),
                _f(f["wan_deltas_frames"], 2),
                _f(f["wan_deltas_bytes"], 1),
                _f(f["wan_membership_bytes"], 2),
                _f(f["wan_anti-entropy_bytes"], 2),
                _f(f["wan_repair_bytes"], 2),
                _f(f["wan_bytes_minus_idle"], 1),
                _f(f["idle_wan_bytes_per_s"], 0),
                _f(f["lan_frames"], 2),
                _f(f["lan_bytes"], 1),
            ]
        )
    base = figures[runs[0][0]]
    notes = [
        f"{settings.write_s:g} s of writes at {WRITE_RATE_HZ:,.0f}/s over {settings.docs} docs, then {DRAIN_MS / 1000:g} s"
        f" of drain, counted together; idle: the {IDLE_MS / 1000:g} s before the writes",
        "WAN: frames sent between datacenters (lost ones included); deltas = DELTAS (+RELAYED, never on the WAN);"
        " memb = HEARTBEAT, MEMBERS, HELLO*; AE = TREE_*; repair = SYNC_*, RETRANSMIT_*",
        "-idle: all WAN bytes per update minus the idle window's WAN rate over the same time",
        f"a one-update DELTAS frame on the WAN: {base['delta_frame_bytes']:.1f} B as sent, lz4 included"
        f" ({base['delta_frame_raw_bytes']:.1f} B without): 13 B envelope + msgpack of node id, epoch, seq,"
        f" doc id ({base['doc_id_bytes']:.1f} B), before + after state vectors ({base['state_bytes']:.1f} B)"
        f" and the Yjs update ({base['update_bytes']:.1f} B; {base['update_compressed_bytes']:.1f} B at best"
        " with lz4)",
    ]
    idle = runs[0][1]["traffic"].get("idle", {}).get("wan", {})
    idle_s = float(runs[0][1]["idle_s"])
    notes.append(
        f"{runs[0][0]}, idle WAN by kind: "
        + ", ".join(
            f"{kind} {c[0] / idle_s:.1f}/s {c[1] / idle_s:.0f} B/s" for kind, c in sorted(idle.items())
        )
    )
    seed_only = report.results.get("wan_relay1_seed_only_idle")
    if seed_only is not None:
        idle = seed_only["traffic"].get("idle", {}).get("wan", {})
        idle_s = float(seed_only["idle_s"])
        notes.append(
            "same, every node configured with n0 as its only peer (the rest learned by gossip): "
            + ", ".join(
                f"{kind} {c[0] / idle_s:.1f}/s {c[1] / idle_s:.0f} B/s" for kind, c in sorted(idle.items())
            )
        )
    for label, run in runs:
        relay_text = "; ".join(f"{dc}: {','.join(ids)}" for dc, ids in run["relays"].items())
        notes.append(f"{label}: relays {relay_text}; {run['events']:,} events, {run['wall_s']:.1f} s wall")
    print_table(
        "(1) WAN traffic per update, 3 DCs x 3 nodes, simulated",
        [
            "topology",
            "writes",
            "WAN msg",
            "WAN B",
            "delta msg",
            "delta B",
            "memb B",
            "AE B",
            "repair B",
            "B -idle",
            "idle B/s",
            "LAN msg",
            "LAN B",
        ],
        rows,
        notes,
    )

    rows = []
    for label, run in runs:
        arrival = run["arrival"]
        for pair, entry in arrival["pairs"].items():
            rows.append(
                [
                    label,
                    pair,
                    _f(entry["floor_ms"], 0),
                    _f(entry["first"]["p50"], 2),
                    _f(entry["first"]["p99"], 2),
                    _f(entry["all"]["p50"], 2),
                    _f(entry["all"]["p99"], 2),
                    _f(entry["all"]["max"], 2),
                ]
            )
        ex = arrival["excess_all"]
        rows.append(
            [
                label,
                "all pairs: - floor",
                "",
                _f(arrival["excess_first"]["p50"], 2),
                _f(arrival["excess_first"]["p99"], 2),
                _f(ex["p50"], 2),
                _f(ex["p99"], 2),
                _f(ex["max"], 2),
            ]
        )
    lan_notes = [
        f"{label}: inside the writer's DC, all nodes p50 {_f(run['arrival']['lan_all']['p50'], 2)} /"
        f" p99 {_f(run['arrival']['lan_all']['p99'], 2)} / max {_f(run['arrival']['lan_all']['max'], 2)} ms;"
        f" (write, DC) pairs never reached: {run['arrival']['missing']}"
        for label, run in runs
    ]
    print_table(
        "(1) Time from a write to its arrival in another DC (ms, simulated time)",
        ["topology", "DC pair", "floor", "first p50", "first p99", "all p50", "all p99", "all max"],
        rows,
        [
            "floor: the pair's one-way WAN latency; first: the DC's first node holds the write; all: every node",
            *lan_notes,
        ],
    )

    rows = []
    for label, run in runs:
        nodes = run["per_node"]
        relays = [n for n in nodes if n["relay"]]
        others = [n for n in nodes if not n["relay"]]
        busiest = max(nodes, key=lambda n: n["utilization"])
        rows.append(
            [
                label,
                _f(100 * max((n["utilization"] for n in relays), default=math.nan), 1),
                _f(100 * max((n["utilization"] for n in others), default=math.nan), 1),
                f"{busiest['node']} ({'relay' if busiest['relay'] else 'non-relay'})",
                _f(
                    1e3 * sum(n["busy_ms"] for n in nodes) / max(1, sum(n["frames_received"] for n in nodes)),
                    1,
                ),
            ]
        )
    print_table(
        "(1) Replica CPU receiving at 1,000 updates/s (this process, per simulated second)",
        ["topology", "max relay %", "max non-relay %", "busiest", "us/frame"],
        rows,
        ["Replica.receive + tick wall time (observer subtracted) / simulated seconds; one core = 100%"],
    )


WAN_RUNS = (
    ("wan_relay1", "1 relay/DC"),
    ("wan_relay2", "2 relays/DC"),
    ("wan_mesh", "full mesh"),
    ("wan_relay1_loss", f"1 relay/DC, {WAN_LOSS_INFO:.0%} WAN loss"),
)


def report_fd(report: Report) -> None:
    results = report.results
    fp: list[dict[str, Any]] = results.get("false_suspicions", [])
    if fp:
        rows = []
        for loss in sorted({r["loss"] for r in fp}):
            group = [r for r in fp if r["loss"] == loss]
            hours = sum(r["node_hours"] for r in group)
            suspicions = sum(r["suspicions"] for r in group)
            rows.append(
                [
                    f"{loss:.0%}",
                    fmt(len(group)),
                    _f(hours, 2),
                    fmt(suspicions),
                    fmt(sum(r["downs"] for r in group)),
                    _f(suspicions / hours if hours else math.nan, 2),
                    fmt(sum(r["warmup_suspicions"] for r in group)),
                    _f(max(r["write_to_all_ms"]["p50"] for r in group), 1),
                    _f(max(r["write_to_all_ms"]["p99"] for r in group), 1),
                    _f(max(r["write_to_all_ms"]["max"] for r in group), 1),
                    fmt(sum(r["writes_unreached"] for r in group)),
                ]
            )
        print_table(
            "(2) False suspicions, no node down (simulated, loss on every link, 9 nodes)",
            [
                "loss",
                "runs",
                "node-hours",
                "suspicions",
                "downs",
                "per node-hour",
                "in warm-up",
                "write p50",
                "write p99",
                "write max",
                "unreached",
            ],
            rows,
            [
                f"each run: {report.settings.fd_duration_s:g} s after a {WARMUP_MS / 1000:g} s warm-up,"
                f" {FD_WRITE_RATE_HZ:g} writes/s; suspicions: alive -> suspect transitions summed over"
                " every node's view of every other",
                "write p50/p99/max: ms from a write to the moment every node holds it (worst run); unreached:"
                f" writes some node still lacked {STRAGGLERS_MS / 1000:g} s after the run",
                "who suspected whom: "
                + (
                    "; ".join(
                        f"{r['loss']:.0%} loss, seed {r['seed']}: {', '.join(r['suspected'])}"
                        for r in fp
                        if r["suspected"]
                    )
                    or "nobody"
                ),
                "write -> each node p99/max ms, by the receiver's place relative to the writer (first run):",
                *(
                    f"  {r['loss']:.0%}: "
                    + "; ".join(
                        f"{place} {_f(v['p99'], 0)}/{_f(v['max'], 0)}"
                        for place, v in r["write_to_node_ms"].items()
                    )
                    for r in fp
                    if r["seed"] == report.settings.seed
                ),
            ],
        )
    crashes: list[dict[str, Any]] = results.get("crashes", [])
    if crashes:
        rows = []
        late_notes = []
        for role in ("relay", "non-relay"):
            for loss in CRASH_LOSSES:
                group = [r for r in crashes if r["victim_role"] == role and r["loss"] == loss]
                if not group:
                    continue

                def col(key: str, runs: list[dict[str, Any]] = group) -> list[float]:
                    return sorted(float(r[key]) for r in runs if r[key] is not None)

                over = sorted(v for r in group for v in r["suspect_over_expected_ms"])
                expected = sorted(v for r in group for v in r["expected_suspect_ms"])
                rows.append(
                    [
                        f"{role}, {loss:.0%} loss",
                        fmt(len(group)),
                        _p50max(col("first_suspect_ms")),
                        _p50max(col("all_suspect_ms")),
                        _p50max(col("same_dc_down_ms")),
                        _p50max(col("all_down_ms")),
                        f"{percentile(expected, 50) / 1000:.2f}",
                        f"{round(percentile(over, 50))}/{round(over[-1])}",
                        _p50max(col("relay_moved_dc_ms")),
                        _p50max(col("relay_moved_all_ms")),
                        _p50max(col("write_to_all_max_ms")),
                        fmt(sum(int(r["false_suspicions_of_others"]) for r in group)),
                    ]
                )
                by_place: dict[str, list[float]] = {}
                for r in group:
                    for place, late in zip(r["observer_places"], r["suspect_over_expected_ms"], strict=True):
                        by_place.setdefault(place, []).append(late)
                late_notes.append(
                    f"  {role}, {loss:.0%} loss: "
                    + "; ".join(
                        f"{place} {round(percentile(sorted(v), 50))}/{round(max(v))}"
                        for place, v in sorted(by_place.items())
                    )
                )
        print_table(
            f"(2) Crash of a node of {CRASH_DC}: detection by the 8 others (simulated; s, p50/max over seeds)",
            [
                "victim",
                "runs",
                "1st suspect",
                "all suspect",
                "DC down",
                "all down",
                "phi predicts",
                "late ms",
                "relay moved DC",
                "relay moved all",
                "write->all max",
                "false susp.",
            ],
            rows,
            [
                f"crash {CRASH_AFTER_MS / 1000:g} s into the run, {CRASH_WRITE_RATE_HZ:g} writes/s throughout;"
                " DC down: every node of the victim's DC sees it down; all down: every node",
                "phi predicts: median over observers of the silence at which their detector reaches phi_suspect"
                " (from its arrival history at the crash), counted from the crash",
                "late ms: measured suspicion - that prediction, p50/max over observers; evidence that arrives"
                " after the crash (frames in flight, the victim's last heartbeat counter relayed by gossip)"
                " resets the silence. By observer:",
                *late_notes,
                "relay moved: until every node of the victim's DC (DC) / every node (all) names another relay;"
                " write->all max: the longest any write made in the next 15 s took to reach every live node",
                "false susp.: suspicions of nodes other than the victim during the run (all runs)",
            ],
        )


def _p50max(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{_f(percentile(values, 50) / 1000, 2)}/{_f(values[-1] / 1000, 2)}"


def report_procs(report: Report) -> None:
    pause = report.results.get("pause")
    if pause is None:
        return
    suspect_s, down_s = heartbeat_only_detection_s(MembershipConfig(), ReplicaConfig())
    rows = []
    for rep in pause["reps"]:
        rows.append(
            [
                f"SIGSTOP #{rep['rep']}",
                " / ".join(_f(v, 2) for v in rep["suspect_s"].values()),
                " / ".join(_f(v, 2) for v in rep["down_s"].values()),
                _f(rep["paused_s"], 2),
                " / ".join(_f(v, 2) for v in rep["alive_after_cont_s"].values()),
                fmt(sum(rep["observer_suspicions"].values())),
                fmt(rep["victim_suspicions_of_others"]),
            ]
        )
    short = pause["short"]
    if short is not None:
        rows.append(
            [
                f"SIGSTOP {short['pause_s']:g} s",
                ",".join(short["states_seen"]) or "none",
                "-",
                _f(short["pause_s"], 2),
                "-",
                fmt(short["observer_suspicions"]),
                fmt(short["victim_suspicions_of_others"]),
            ]
        )
    print_table(
        f"(3) A paused process: 3 `crdtsync serve` processes, {pause['victim']} stopped, seen by"
        f" {' / '.join(pause['observers'])} (s)",
        ["pause", "suspect", "down", "paused", "alive after CONT", "susp. raised", "victim susp."],
        rows,
        [
            f"by the settings, a member heard only at every heartbeat ({ReplicaConfig().heartbeat_interval_ms:g} ms)"
            f" is suspect {suspect_s:.2f} s and down {down_s:.2f} s after its last arrival (+ up to one heartbeat"
            " interval from the pause to the missed arrival); gossip makes arrivals denser",
            f"times from SIGSTOP (SIGCONT) to the answer of the first poll (every {POLL_S * 1000:.0f} ms) that"
            " showed the state;"
            " susp. raised: the observers' member_suspect counters (1 per observer expected for a long pause);"
            " victim susp.: suspicions the paused node raised about the others after it resumed",
        ],
    )


def build_targets(report: Report) -> list[Target]:
    results = report.results
    targets: list[Target] = []
    for key in ("wan_relay1", "wan_relay2"):
        run = results.get(key)
        if run is None:
            continue
        f = wan_figures(run)
        relays = int(run["relays_per_dc"])
        frame_bound = (DATACENTERS - 1) * relays * f["delta_frame_bytes"]
        targets += [
            Target(
                f"{key}_delta_bytes_vs_frame_bound",
                f"(1) {relays} relay/DC: WAN delta bytes/update <= (DCs-1) x {relays} x one-update frame"
                f" ({frame_bound:.0f} B)",
                f["wan_deltas_bytes"],
                frame_bound,
                "B",
                tolerance=1e-9,
            ),
            Target(
                f"{key}_all_bytes_vs_frame_bound",
                f"(1) {relays} relay/DC: all WAN bytes/update (deltas + membership + anti-entropy), same bound",
                f["wan_bytes"],
                frame_bound,
                "B",
            ),
        ]
        if relays == 1:
            update_bound = (DATACENTERS - 1) * relays * f["update_compressed_bytes"]
            targets.append(
                Target(
                    f"{key}_delta_bytes_vs_update_bound",
                    f"(1) 1 relay/DC: WAN delta bytes/update <= (DCs-1) x 1 x bare compressed Yjs update"
                    f" ({update_bound:.0f} B)",
                    f["wan_deltas_bytes"],
                    update_bound,
                    "B",
                ),
            )
        mesh = results.get("wan_mesh")
        if mesh is not None:
            m = wan_figures(mesh)
            targets.append(
                Target(
                    f"{key}_bytes_vs_mesh",
                    f"(1) {relays} relay/DC: WAN bytes/update / full mesh",
                    f["wan_bytes"] / m["wan_bytes"] if m["wan_bytes"] else None,
                    None,
                )
            )
        targets.append(
            Target(
                f"{key}_arrival_p99_over_floor_ms",
                f"(1) {relays} relay/DC: arrival on every node of every other DC, p99 - WAN latency,"
                f" <= {ARRIVAL_SLACK_MS:g} ms",
                run["arrival"]["excess_all"]["p99"],
                ARRIVAL_SLACK_MS,
                "ms",
            )
        )
        if run["arrival"]["missing"]:
            targets.append(
                Target(
                    f"{key}_arrival_missing",
                    f"(1) {relays} relay/DC: (write, DC) pairs never reached",
                    float(run["arrival"]["missing"]),
                    0.0,
                )
            )
    crashes: list[dict[str, Any]] = results.get("crashes", [])
    if crashes:
        down = sorted(float(r["all_down_ms"]) for r in crashes if r["loss"] == 0.05)
        if down:
            targets.append(
                Target(
                    "crash_down_p50_s_loss5",
                    "(2) crash -> down everywhere, 5% loss, p50 s",
                    percentile(down, 50) / 1000,
                    None,
                    "s",
                )
            )
    fp: list[dict[str, Any]] = results.get("false_suspicions", [])
    group = [r for r in fp if r["loss"] == 0.05]
    if group:
        hours = sum(r["node_hours"] for r in group)
        targets.append(
            Target(
                "false_suspicions_per_node_hour_loss5",
                "(2) false suspicions per node-hour, 5% loss",
                sum(r["suspicions"] for r in group) / hours,
                None,
            )
        )
    pause = results.get("pause")
    if pause is not None:
        downs = sorted(v for rep in pause["reps"] for v in rep["down_s"].values() if v is not None)
        if downs:
            targets.append(
                Target(
                    "sigstop_down_max_s", "(3) SIGSTOP -> down on both observers, max s", downs[-1], None, "s"
                )
            )
    return targets


def print_targets(targets: list[Target]) -> None:
    rows = [
        [
            t.text,
            _f(t.value, 4 if not t.unit else 2),
            "" if t.limit is None else f"<= {t.limit:.4g}",
            t.verdict,
        ]
        for t in targets
    ]
    print_table("Targets (from the issue)", ["target", "measured", "limit", "verdict"], rows)


# ---------------------------------------------------------------------------------------------------------
# Main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.topology", description=(__doc__ or "").split("\n\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="shorter runs, fewer seeds (about 30 s)")
    parser.add_argument("--json", metavar="OUT", type=Path, help="also write every figure as JSON to OUT")
    parser.add_argument("--seed", type=int, default=SEED, help=f"simulation seed (default {SEED})")
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: wan, fd, procs")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    skip = tuple(s.strip() for s in str(args.skip).split(",") if s.strip())
    unknown = [s for s in skip if s not in ("wan", "fd", "procs")]
    if unknown:
        print(f"unknown part(s) to skip: {', '.join(unknown)}", file=sys.stderr)
        return 2
    quick = bool(args.quick)
    settings = Settings(
        quick=quick,
        seed=int(args.seed),
        docs=16,
        write_s=1.0 if quick else 4.0,
        loss_write_s=0.0 if quick else 4.0,
        fd_duration_s=60.0 if quick else 600.0,
        fd_seeds=1 if quick else 3,
        crash_seeds=1 if quick else 6,
        pause_reps=1 if quick else 3,
        pause_settle_s=2.0 if quick else 6.0,
        short_pause=not quick,
        skip=skip,
    )
    report = Report(machine_info() | {"revision": git_revision()}, settings)
    log_dir = Path(tempfile.mkdtemp(prefix="crdtsync-topology-bench-"))
    started = time.monotonic()

    def progress(text: str) -> None:
        print(f"... [{time.monotonic() - started:5.1f} s] {text}", file=sys.stderr, flush=True)

    results = report.results
    try:
        deadline = Deadline(60.0 if quick else 240.0)
        if "wan" not in skip:
            progress("WAN: 1 relay per DC")
            results["wan_relay1"] = wan_run(settings, 1, 0.0, settings.write_s, deadline)
            progress("WAN: 2 relays per DC")
            results["wan_relay2"] = wan_run(settings, 2, 0.0, settings.write_s, deadline)
            progress("WAN: full mesh")
            results["wan_mesh"] = wan_run(settings, 3, 0.0, settings.write_s, deadline)
            if settings.loss_write_s > 0:
                progress(f"WAN: 1 relay per DC, {WAN_LOSS_INFO:.0%} WAN loss")
                results["wan_relay1_loss"] = wan_run(
                    settings, 1, WAN_LOSS_INFO, settings.loss_write_s, deadline
                )
            progress("WAN: 1 relay per DC, idle, seed-only configuration")
            results["wan_relay1_seed_only_idle"] = wan_run(settings, 1, 0.0, 0.0, deadline, seed_only=True)
        if "fd" not in skip:
            fp = []
            for loss in FD_LOSSES:
                seeds = settings.fd_seeds if loss == 0.05 else 1
                for k in range(seeds):
                    progress(f"false suspicions, {loss:.0%} loss, seed {settings.seed + k}")
                    fp.append(false_suspicion_run(settings, loss, settings.seed + k, deadline))
            results["false_suspicions"] = fp
            crashes = []
            for role in ("relay", "non-relay"):
                for loss in CRASH_LOSSES:
                    progress(f"crash of a {role}, {loss:.0%} loss, {settings.crash_seeds} seeds")
                    for k in range(settings.crash_seeds):
                        crashes.append(crash_run(settings, settings.seed + k, loss, role, deadline))
            results["crashes"] = crashes
        if "procs" not in skip:
            progress("3 OS processes, SIGSTOP")
            try:
                results["pause"] = pause_runs(settings, log_dir)
            except (BenchError, OSError, httpx.HTTPError) as exc:
                report.failures.append(f"paused process: {exc}")
        progress("done")
        print_header(report)
        report_wan(report)
        report_fd(report)
        report_procs(report)
        report.targets = build_targets(report)
        print_targets(report.targets)
        for failure in report.failures:
            print(f"note: not measured: {failure}")
        if args.json is not None:
            summary = {
                "machine": report.machine,
                "settings": asdict(settings),
                "wan_latency_ms": {f"{a}-{b}": ms for (a, b), ms in WAN_LATENCY_MS.items()},
                "figures": {key: wan_figures(results[key]) for key, _label in WAN_RUNS if key in results},
                "results": results,
                "targets": [t.as_json() for t in report.targets],
                "failures": report.failures,
            }
            write_json(args.json, summary)
    finally:
        if report.failures:
            print(f"\nprocess logs kept in {log_dir}", file=sys.stderr)
        else:
            shutil.rmtree(log_dir, ignore_errors=True)
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.exit(main())
