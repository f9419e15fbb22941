"""Placement on real processes: cost per write against full replication, capacity, and a rebalance.

    python -m bench.placement_cost [--quick] [--json OUT] [--writes N] [--rate HZ] [--capacity-docs N]
        [--docs N] [--skip cost,capacity,rebalance] [--cost-modes rf_2,rf_all,rf_2_holders,rf_2_forwarded]
        [--profile DIR]

Every node is a library ``crdtsync.Node`` in its own OS process (``bench._placement_node``) on
127.0.0.1, with a SQLite store (durability ``fsync``) and the default settings. In one run:

1. Cost per write. 6 nodes in 2 datacenters (3 + 3), the same workload twice: once with
   ``[[placement]] rf = 2`` (2 replicas per datacenter), once with ``rf = "all"``. Every node writes
   its share of ``--writes`` single-key writes, each to a doc of its own (``data["v"] = i`` on doc
   ``w/i``, write ``i`` through node ``i % 6``, the doc opened only to write as the daemon opens it
   for an HTTP write: not counted as a read), paced at ``--rate`` writes/s over the cluster, a
   flush after every few writes (a write is acknowledged once durable on the node that took it).
   The window runs from the first write until every holder has every doc and, with rf 2, every
   non-holder has handed its docs off and dropped them (``handoff_grace_ms``, 30 s, after the first
   covered answer). Measured: CPU of all 6 processes per acknowledged write (gross, and net of
   the idle cluster's CPU over the same time, measured just before), and ``bytes_received`` per
   node per write. The issue's targets: rf 2 <= 0.6x full replication for both. A third run repeats
   rf 2 with every write sent to one of the doc's replicas (what forwarding to a replica would
   give), and a fourth forwards each write of a non-holder to the doc's nearest holder;
   ``--cost-modes`` picks some of the four. Each run also reports, per write, the frames received,
   published and sent by message kind, the CPU of each kind of thread and the store commits.
   ``--profile DIR`` profiles every node of the runs over the measured window.
2. Capacity. 6 nodes in one datacenter, rf 2: ``--capacity-docs`` docs written through every
   node, then docs held per node once handoffs settled, against docs x 2/6. (The issue's
   "docs x 2/3" is rf 2 over 3 nodes per datacenter, its 2-datacenter setting; relays hold their
   share there like any node.)
3. Rebalance. The same 6-node cluster shape, started on stores holding ``--docs`` docs of ~1 KB
   (each node the docs placement gives it), then a 7th node joins: time until it has its share
   (anti-entropy from the holders, handoff from the old ones) and until the old holders have
   dropped what moved (handoff grace included), and the bytes received, against the ideal (the
   newcomer's share x the doc's update size), at the default throttle.
"""

from __future__ import annotations

import argparse
import base64
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pycrdt import Doc, Map

from bench._common import (
    JSON,
    BenchError,
    Child,
    Deadline,
    Target,
    close_all,
    fmt,
    machine_info,
    print_table,
    write_json,
)
from bench._placement_node import PROFILE_ENV
from crdtsync.core.config import ReplicaConfig
from crdtsync.core.effects import Persist
from crdtsync.core.placement import PLACEMENT_VERSION, Candidate, PlacementPolicy, PlacementRule, replicas
from crdtsync.core.state import digest as canonical_digest
from crdtsync.store.sqlite import SqliteStore
from crdtsync.testing.cluster import free_port

CHILD = "bench._placement_node"
TWO_DCS = [("a1", "dc1"), ("a2", "dc1"), ("a3", "dc1"), ("b1", "dc2"), ("b2", "dc2"), ("b3", "dc2")]
ONE_DC = [(f"n{i}", "dc1") for i in range(1, 7)]
JOINER = ("n7", "dc1")
IDLE_S = 10.0
MEMBERSHIP_SETTLE_S = 3.0
POLL_S = 1.0
READY_TIMEOUT_S = 180.0
REQUEST_TIMEOUT_S = 300.0
SETTLE_TIMEOUT_S = 180.0
BATCH = 8
"""Writes between flushes on each node."""
DOC_VALUE_BYTES = 768
"""Random bytes per rebalance doc; base64 makes them a 1,024-character string."""
TEMPLATE_CLIENT_ID = 1
BUILD_CHUNK_DOCS = 10_000
TARGET_RATIO = 0.6
TARGET_CAPACITY_ERROR = 0.10
DEFAULTS = ReplicaConfig()


@dataclass(frozen=True)
class Settings:
    writes: int
    rate_hz: float
    capacity_docs: int
    docs: int
    skip: frozenset[str]
    profile_dir: Path | None = None
    cost_modes: tuple[str, ...] = ()
    """The cost part's runs (`COST_MODES` keys); empty: all of them."""


def _policy(rf: str) -> PlacementPolicy:
    return PlacementPolicy((PlacementRule("all") if rf == "all" else PlacementRule(int(rf)),))


class Cluster:
    """Child processes each holding one Node, all with the same placement rule."""

    def __init__(
        self, root: Path, rf: str, members: Sequence[tuple[str, str]], profile_dir: Path | None = None
    ) -> None:
        self.root = root
        self.profile_dir = profile_dir
        """Where each node writes its cProfile (``<node id>.prof``) when it quits; None: no profiling."""
        self.rf = rf
        self.members = list(members)
        self.listens = {name: f"tcp://127.0.0.1:{free_port()}" for name, _ in members}
        self.children: dict[str, Child] = {}
        self.slowest_status: dict[str, float] = {}
        """The longest a node took to answer a status request (an event loop busy for that long)."""
        self.log_dir = root / "logs"
        self.log_dir.mkdir(parents=True, exist_ok=True)

    def data_dir(self, name: str) -> Path:
        return self.root / "data" / name

    def spawn(self, name: str, dc: str, *, wait_peers: int | None = None) -> Child:
        listen = self.listens.setdefault(name, f"tcp://127.0.0.1:{free_port()}")
        peers = [address for other, address in self.listens.items() if other != name]
        self.data_dir(name).mkdir(parents=True, exist_ok=True)
        args = [
            "--node-id", name, "--dc", dc, "--listen", listen, "--peers", ",".join(peers),
            "--rf", self.rf, "--data-dir", str(self.data_dir(name)),
        ]  # fmt: skip
        if wait_peers is not None:
            args += ["--wait-peers", str(wait_peers)]
        if self.profile_dir is not None:
            self.profile_dir.mkdir(parents=True, exist_ok=True)
            os.environ[PROFILE_ENV] = str(self.profile_dir)  # the child's environment is a copy of ours
        try:
            child = Child(name, CHILD, args, self.log_dir)
        finally:
            os.environ.pop(PROFILE_ENV, None)
        self.children[name] = child
        if (name, dc) not in self.members:
            self.members.append((name, dc))
        return child

    def start(self) -> None:
        for name, dc in self.members:
            self.spawn(name, dc)
        deadline = Deadline(READY_TIMEOUT_S)
        for child in self.children.values():
            child.wait("ready", deadline)

    def status(self) -> dict[str, JSON]:
        deadline = Deadline(REQUEST_TIMEOUT_S)
        sent = time.monotonic()
        for child in self.children.values():
            child.send("status")
        answers: dict[str, JSON] = {}
        for name, child in self.children.items():
            answers[name] = child.wait("status", deadline)
            waited = float(answers[name]["at"]) - sent
            if waited > self.slowest_status.get(name, 0.0):
                self.slowest_status[name] = waited
        return answers

    def request_all(
        self, cmd: str, reply: str, per_node: dict[str, JSON], timeout_s: float
    ) -> dict[str, JSON]:
        deadline = Deadline(timeout_s)
        for name, fields in per_node.items():
            self.children[name].send(cmd, **fields)
        return {name: self.children[name].wait(reply, deadline, f"(after {cmd!r})") for name in per_node}

    def profile(self, *, on: bool) -> None:
        """Start or stop every node's profiler (the measured window only), when profiling."""
        if self.profile_dir is not None:
            self.request_all(
                "profile", "profiled", {name: {"on": on} for name in self.children}, REQUEST_TIMEOUT_S
            )

    def close(self) -> None:
        close_all(list(self.children.values()))


def _frame_kinds(after: dict[str, JSON], before: dict[str, JSON], way: str, writes: int) -> dict[str, float]:
    """Frames of each kind (``way``: received, published or sent) between two statuses, per node
    per write, largest first."""
    totals: dict[str, int] = {}
    for name, status in after.items():
        then = before[name]["frame_kinds"][way]
        for kind, count in status["frame_kinds"][way].items():
            totals[kind] = totals.get(kind, 0) + count - int(then.get(kind, 0))
    per = len(after) * writes
    return {kind: count / per for kind, count in sorted(totals.items(), key=lambda kv: -kv[1]) if count}


def _thread_cpu(after: dict[str, JSON], before: dict[str, JSON], writes: int) -> dict[str, float]:
    """CPU of each kind of thread (by name, summed over the nodes) between two statuses, per write,
    in microseconds (clock-tick resolution: 10 ms per thread and status)."""
    totals: dict[str, float] = {}
    for name, status in after.items():
        then = before[name]["thread_cpu_s"]
        for thread, cpu_s in status["thread_cpu_s"].items():
            totals[thread] = totals.get(thread, 0.0) + cpu_s - float(then.get(thread, 0.0))
    return {thread: cpu_s / writes * 1e6 for thread, cpu_s in sorted(totals.items(), key=lambda kv: -kv[1])}


def _cpu(statuses: dict[str, JSON]) -> float:
    return sum(float(s["cpu_s"]) for s in statuses.values())


def _counter(statuses: dict[str, JSON], name: str, key: str) -> int:
    return int(statuses[name]["counters"].get(key, 0))


def _delta(after: dict[str, JSON], before: dict[str, JSON], key: str) -> dict[str, int]:
    return {name: _counter(after, name, key) - _counter(before, name, key) for name in before}


def _expected_held(ids: Sequence[str], rf: str, members: Sequence[tuple[str, str]]) -> dict[str, int]:
    """Docs of `ids` each member holds: its placement share (relays included: docs/placement.md,
    Enforcement)."""
    if rf == "all":
        return {name: len(ids) for name, _ in members}
    policy = _policy(rf)
    candidates = [Candidate(name, dc) for name, dc in members]
    held = {name: 0 for name, _ in members}
    for doc_id in ids:
        holders = {node for nodes in replicas(doc_id, policy, candidates).values() for node in nodes}
        for name in holders:
            held[name] += 1
    return held


def _wait_settled(
    cluster: Cluster, expected: dict[str, int], timeout_s: float, what: str
) -> tuple[dict[str, JSON], float]:
    """Poll until every node has exactly its expected docs and hints nothing; (statuses, time)."""
    deadline = Deadline(timeout_s)
    while True:
        statuses = cluster.status()
        now = time.monotonic()
        if all(statuses[n]["docs"] == expected[n] and statuses[n]["hinted"] == 0 for n in expected):
            return statuses, now
        if deadline.expired():
            state = ", ".join(
                f"{n}: {s['docs']}/{expected[n]} docs, {s['hinted']} hinted" for n, s in statuses.items()
            )
            raise BenchError(f"{what}: not settled after {timeout_s:.0f} s ({state})")
        time.sleep(POLL_S)


def _through_holders(ids: Sequence[str], rf: str, members: Sequence[tuple[str, str]]) -> dict[str, list[str]]:
    """Each doc's write through one of its placement replicas (never a non-holder): the datacenters
    and the replicas of a datacenter in turn."""
    policy = _policy(rf)
    candidates = [Candidate(name, dc) for name, dc in members]
    dcs = sorted({dc for _, dc in members})
    out: dict[str, list[str]] = {name: [] for name, _ in members}
    for index, doc_id in enumerate(ids):
        nodes = replicas(doc_id, policy, candidates)[dcs[index % len(dcs)]]
        out[nodes[(index // len(dcs)) % len(nodes)]].append(doc_id)
    return out


def _write_and_settle(
    cluster: Cluster,
    ids: Sequence[str],
    rate_hz: float,
    what: str,
    *,
    through_holders: bool = False,
    forward: bool = False,
) -> JSON:
    """Idle baseline, then the paced writes (write `i` through node `i % n`, or through one of the
    doc's replicas), then the settle; the figures."""
    names = [name for name, _ in cluster.members]
    time.sleep(MEMBERSHIP_SETTLE_S)  # relays chosen, member records gossiped
    s0 = cluster.status()
    t0 = time.monotonic()
    time.sleep(IDLE_S)
    s1 = cluster.status()
    t1 = time.monotonic()
    cluster.profile(on=True)
    idle_cores = (_cpu(s1) - _cpu(s0)) / (t1 - t0)
    idle_bytes_per_node_s = statistics.mean(_delta(s1, s0, "bytes_received").values()) / (t1 - t0)
    relays = {name for name, s in s1.items() if s["relay"]}
    expected = _expected_held(ids, cluster.rf, cluster.members)
    if through_holders:
        assigned = _through_holders(ids, cluster.rf, cluster.members)
    else:
        assigned = {name: list(ids[index :: len(names)]) for index, name in enumerate(names)}
    per_node = {  # every node at its share of the cluster's rate
        name: {"ids": mine, "rate_hz": rate_hz * len(mine) / len(ids), "batch": BATCH, "forward": forward}
        for name, mine in assigned.items()
        if mine
    }
    wrote = cluster.request_all("write_docs", "wrote", per_node, len(ids) / rate_hz + REQUEST_TIMEOUT_S)
    s2 = cluster.status()
    t2 = time.monotonic()
    s3, t3 = _wait_settled(cluster, expected, DEFAULTS.handoff_grace_ms / 1000 + SETTLE_TIMEOUT_S, what)
    cluster.profile(on=False)
    time.sleep(IDLE_S)  # the settled cluster, now holding the docs: anti-entropy rounds over them
    s4 = cluster.status()
    idle_after_cores = (_cpu(s4) - _cpu(s3)) / (time.monotonic() - t3)
    acked = sum(int(w["acked"]) for w in wrote.values())
    held = cluster.request_all(
        "held", "held", {n: {"ids": list(ids), "verify": True} for n in names}, REQUEST_TIMEOUT_S
    )
    for name, h in held.items():
        if not (h["held"] == h["have"] == h["verified"] == expected[name]):
            raise BenchError(
                f"{what}: {name} holds {h['held']}, has {h['have']}, verified {h['verified']}, expected {expected[name]}"
            )
    received = _delta(s3, s1, "bytes_received")
    received_writes = _delta(s2, s1, "bytes_received")
    cpu_gross = _cpu(s3) - _cpu(s1)
    cpu_net = cpu_gross - idle_cores * (t3 - t1)
    return {
        "rf": cluster.rf,
        "writes_acked": acked,
        "write_s": t2 - t1,
        "settle_s": t3 - t2,
        "idle_cores": idle_cores,
        "idle_after_cores": idle_after_cores,
        "cpu_us_per_write_gross": cpu_gross / acked * 1e6,
        "cpu_us_per_write_net": cpu_net / acked * 1e6,
        "cpu_us_per_write_writes_only": (_cpu(s2) - _cpu(s1) - idle_cores * (t2 - t1)) / acked * 1e6,
        "cpu_main_thread_share": sum(float(s3[n]["cpu_main_s"]) - float(s1[n]["cpu_main_s"]) for n in names)
        / cpu_gross,
        "cpu_s_per_node": {n: float(s3[n]["cpu_s"]) - float(s1[n]["cpu_s"]) for n in names},
        "idle_bytes_per_node_s": idle_bytes_per_node_s,
        "bytes_received_per_node_per_write_gross": statistics.mean(received.values()) / acked,
        "bytes_received_per_node_per_write": (
            statistics.mean(received.values()) - idle_bytes_per_node_s * (t3 - t1)
        )
        / acked,
        "bytes_received_per_write_by_node": {n: v / acked for n, v in received.items()},
        "bytes_received_per_node_per_write_writes_only": (
            statistics.mean(received_writes.values()) - idle_bytes_per_node_s * (t2 - t1)
        )
        / acked,
        "frames_received_per_node_per_write": statistics.mean(_delta(s3, s1, "frames_received").values())
        / acked,
        "frames_by_kind_per_node_per_write": {
            way: _frame_kinds(s3, s1, way, acked) for way in ("received", "published", "sent")
        },
        "thread_cpu_us_per_write": _thread_cpu(s3, s1, acked),
        "store_commits_per_node_per_write": statistics.mean(_delta(s3, s1, "store_commits").values()) / acked,
        "ae_rounds_started": sum(_delta(s3, s1, "ae_rounds_started").values()),
        "relays": sorted(relays),
        "docs_held": {n: int(s3[n]["docs"]) for n in names},
        "updates_not_held": sum(_delta(s3, s1, "updates_not_held").values()),
        "handoff_offers_sent": sum(_delta(s3, s1, "handoff_offers_sent").values()),
        "handoff_docs_dropped": sum(_delta(s3, s1, "handoff_docs_dropped").values()),
        "deltas_applied": sum(_delta(s3, s1, "deltas_applied").values()),
        "deltas_relayed_in": sum(_delta(s3, s1, "deltas_relayed_in").values()),
    }


COST_MODES = {
    "rf_2": ("2", False, False),
    "rf_all": ("all", False, False),
    "rf_2_holders": ("2", True, False),
    "rf_2_forwarded": ("2", False, True),
}
"""Each cost run: (rf, writes sent to replicas only, non-holders forwarding)."""


def cost(settings: Settings, root: Path, progress: Any) -> JSON:
    ids = [f"w/{i:06d}" for i in range(settings.writes)]
    out: JSON = {"writes": settings.writes, "rate_hz": settings.rate_hz, "nodes": TWO_DCS}
    for key, (rf, through_holders, forward) in COST_MODES.items():
        if settings.cost_modes and key not in settings.cost_modes:
            continue
        how = "through the docs' replicas only" if through_holders else "through every node"
        how += ", non-holders forwarding to a holder" if forward else ""
        progress(
            f"cost per write, rf {rf}: {settings.writes:,} writes at {settings.rate_hz:g}/s {how}, 6 nodes in 2 DCs"
        )
        profile = settings.profile_dir / key if settings.profile_dir is not None else None
        cluster = Cluster(root / f"cost-{key}", rf, TWO_DCS, profile)
        try:
            cluster.start()
            out[key] = _write_and_settle(
                cluster,
                ids,
                settings.rate_hz,
                f"cost {key}",
                through_holders=through_holders,
                forward=forward,
            )
        finally:
            cluster.close()
    if "rf_2" not in out or "rf_all" not in out:
        return out
    narrow, full = out["rf_2"], out["rf_all"]
    out["cpu_ratio_net"] = narrow["cpu_us_per_write_net"] / full["cpu_us_per_write_net"]
    out["cpu_ratio_gross"] = narrow["cpu_us_per_write_gross"] / full["cpu_us_per_write_gross"]
    out["bytes_ratio"] = (
        narrow["bytes_received_per_node_per_write"] / full["bytes_received_per_node_per_write"]
    )
    # What holding alone predicts: holders per doc over nodes.
    out["holders_per_doc_rf_2"] = sum(narrow["docs_held"].values()) / settings.writes
    return out


def capacity(settings: Settings, root: Path, progress: Any) -> JSON:
    docs = settings.capacity_docs
    progress(f"capacity: {docs:,} docs written through 6 nodes in one DC, rf 2")
    ids = [f"c/{i:06d}" for i in range(docs)]
    cluster = Cluster(root / "capacity", "2", ONE_DC)
    try:
        cluster.start()
        figures = _write_and_settle(cluster, ids, settings.rate_hz * 2, "capacity")
    finally:
        cluster.close()
    ideal = docs * 2 / len(ONE_DC)
    held = figures["docs_held"]
    return {
        "docs": docs,
        "per_node": held,
        "ideal": ideal,
        "ideal_text": "docs x 2/6 (rf 2 over 6 nodes of one datacenter)",
        "max_relative_error": max(abs(h - ideal) / ideal for h in held.values()),
        "max_over_mean": max(held.values()) / statistics.mean(held.values()),
        "settle_s": figures["settle_s"],
    }


# ---------------------------------------------------------------------------------------------------------
# Rebalance


class Template:
    """Every rebalance doc is one Map set ``data["v"] = <1,024 characters>`` by one fixed client: the
    update is ``prefix + value + suffix`` and all docs share one state vector and one digest."""

    def __init__(self) -> None:
        doc: Doc[Any] = Doc(client_id=TEMPLATE_CLIENT_ID)
        placeholder = "\x01" * len(self.value(0))
        doc.get("data", type=Map)["v"] = placeholder
        self.update = doc.get_update()
        self.state = doc.get_state()
        self.digest = canonical_digest(doc)
        at = self.update.index(placeholder.encode())
        self.prefix = self.update[:at]
        self.suffix = self.update[at + len(placeholder) :]
        check: Doc[Any] = Doc()
        check.apply_update(self.update_for(5))
        if check.get("data", type=Map).to_py() != {"v": self.value(5)}:
            raise BenchError("the spliced update does not decode to its value")

    @staticmethod
    def value(index: int) -> str:
        return base64.b64encode(random.Random(index).randbytes(DOC_VALUE_BYTES)).decode()

    def update_for(self, index: int) -> bytes:
        return self.prefix + self.value(index).encode() + self.suffix


def rebalance_id(index: int) -> str:
    return f"r/{index:06d}"


def build_stores(cluster: Cluster, docs: int, progress: Any) -> JSON:
    template = Template()
    policy = _policy(cluster.rf)
    candidates = [Candidate(name, dc) for name, dc in cluster.members]
    held: dict[str, list[int]] = {name: [] for name, _ in cluster.members}
    for index in range(docs):
        for nodes in replicas(rebalance_id(index), policy, candidates).values():
            for name in nodes:
                held[name].append(index)
    started = time.monotonic()
    for name, indices in held.items():
        store = SqliteStore(cluster.data_dir(name), node_id=name, durability="none")
        try:
            for at in range(0, len(indices), BUILD_CHUNK_DOCS):
                chunk = indices[at : at + BUILD_CHUNK_DOCS]
                store.append(
                    [
                        Persist(
                            tuple((rebalance_id(i), template.update_for(i)) for i in chunk),
                            tuple((rebalance_id(i), template.state, template.digest) for i in chunk),
                        )
                    ]
                )
        finally:
            store.close()
    progress(
        f"  stores built in {time.monotonic() - started:.1f} s ({sum(map(len, held.values())):,} doc replicas)"
    )
    return {"update_bytes": len(template.update), "held": {n: len(v) for n, v in held.items()}}


def rebalance(settings: Settings, root: Path, progress: Any) -> JSON:
    docs = settings.docs
    progress(f"rebalance: a 7th node joins 6 (one DC, rf 2) holding {docs:,} docs of ~1 KB")
    cluster = Cluster(root / "rebalance", "2", ONE_DC)
    for name, _ in ONE_DC:
        cluster.data_dir(name).mkdir(parents=True, exist_ok=True)
    built = build_stores(cluster, docs, progress)
    ids = [rebalance_id(i) for i in range(docs)]
    before = _expected_held(ids, "2", ONE_DC)
    after = _expected_held(ids, "2", [*ONE_DC, JOINER])
    joiner = JOINER[0]
    try:
        cluster.start()
        s0, _ = _wait_settled(cluster, before, SETTLE_TIMEOUT_S, "rebalance, before the join")
        time.sleep(MEMBERSHIP_SETTLE_S)
        s0 = cluster.status()
        t0 = time.monotonic()
        cluster.spawn(*JOINER, wait_peers=len(ONE_DC))
        ready = cluster.children[joiner].wait("ready", Deadline(READY_TIMEOUT_S))
        t_ready = time.monotonic()
        deadline = Deadline(max(600.0, docs / 50))
        t_caught_up: float | None = None
        caught_up: dict[str, JSON] = {}
        samples: list[tuple[float, int, int, int]] = []
        """(seconds since the join, the newcomer's docs, offers sent since the join, docs hinted on the old nodes)"""
        while True:
            statuses = cluster.status()
            now = time.monotonic()
            samples.append(
                (
                    round(now - t0, 1),
                    int(statuses[joiner]["docs"]),
                    sum(
                        _counter(statuses, n, "handoff_offers_sent") - _counter(s0, n, "handoff_offers_sent")
                        for n in s0
                    ),
                    sum(int(statuses[n]["hinted"]) for n in s0),
                )
            )
            if t_caught_up is None and statuses[joiner]["docs"] >= after[joiner]:
                t_caught_up, caught_up = now, statuses
                progress(f"  the newcomer has its {after[joiner]:,} docs after {now - t0:.1f} s")
            if all(statuses[n]["docs"] == after[n] and statuses[n]["hinted"] == 0 for n in after):
                break
            if deadline.expired():
                state = ", ".join(
                    f"{n}: {s['docs']}/{after[n]} docs, {s['hinted']} hinted" for n, s in statuses.items()
                )
                raise BenchError(f"rebalance: not settled after {deadline.seconds:.0f} s ({state})")
            time.sleep(POLL_S)
        t_settled = now
        s_end = statuses
        held = cluster.children[joiner].request(
            "held", "held", Deadline(REQUEST_TIMEOUT_S), ids=ids, verify=False
        )
    finally:
        cluster.close()
    if not (held["held"] == held["have"] == after[joiner]):
        raise BenchError(
            f"rebalance: the newcomer holds {held['held']}, has {held['have']}, expected {after[joiner]}"
        )
    moved = after[joiner]
    update_bytes = int(built["update_bytes"])
    s0[joiner] = {"counters": {}, "cpu_s": 0.0}
    received = _delta(s_end, s0, "bytes_received")
    received_raw = _delta(s_end, s0, "bytes_received_raw")
    joiner_at_caught_up = _counter(caught_up, joiner, "bytes_received")
    return {
        "docs": docs,
        "update_bytes": update_bytes,
        "moved_doc_replicas": moved,
        "ideal_moved": docs * 2 / 7,
        "join_to_ready_s": t_ready - t0,
        "ready_docs": ready.get("docs", 0),
        "join_to_caught_up_s": (t_caught_up or t_settled) - t0,
        "join_to_settled_s": t_settled - t0,
        "joiner_bytes_received_caught_up": joiner_at_caught_up,
        "joiner_bytes_received": received[joiner],
        "cluster_bytes_received": sum(received.values()),
        "cluster_bytes_received_raw": sum(received_raw.values()),
        "ideal_bytes": moved * update_bytes,
        "joiner_over_ideal": received[joiner] / (moved * update_bytes),
        "cluster_over_ideal": sum(received.values()) / (moved * update_bytes),
        "cpu_s": _cpu(s_end) - _cpu(s0),
        "handoff_offers_sent": sum(_delta(s_end, s0, "handoff_offers_sent").values()),
        "handoff_docs_dropped": sum(_delta(s_end, s0, "handoff_docs_dropped").values()),
        "ae_docs_repaired": sum(_delta(s_end, s0, "ae_docs_repaired").values()),
        "sync_updates_applied": sum(_delta(s_end, s0, "sync_updates_applied").values()),
        "docs_before": before,
        "docs_after": {n: int(s_end[n]["docs"]) for n in after},
        "over_time": samples[:: max(1, len(samples) // 200)],
        "over_time_columns": [
            "s since the join",
            "newcomer docs",
            "handoff offers sent",
            "docs hinted on the old nodes",
        ],
        "joiner_counters": {k: v for k, v in s_end[joiner]["counters"].items() if v},
        "old_nodes_counters": {
            key: sum(_delta(s_end, s0, key)[n] for n in before)
            for key in sorted(s_end[joiner]["counters"])
            if sum(_delta(s_end, s0, key)[n] for n in before)
        },
        "slowest_status_s": {n: round(v, 2) for n, v in cluster.slowest_status.items()},
        "joiner_offers_received": _counter(s_end, joiner, "handoff_offers_received"),
        "handoff_acks_received": sum(_delta(s_end, s0, "handoff_acks_received").values()),
        "throttle": {
            "handoff_docs_per_pass_max": DEFAULTS.handoff_docs_per_pass_max,
            "handoff_targets_max": DEFAULTS.handoff_targets_max,
            "handoff_target_bytes_per_s": DEFAULTS.handoff_target_bytes_per_s,
            "handoff_interval_ms": DEFAULTS.handoff_interval_ms,
            "handoff_in_flight_per_target_max": DEFAULTS.handoff_in_flight_per_target_max,
            "handoff_grace_ms": DEFAULTS.handoff_grace_ms,
            "ae_interval_ms": DEFAULTS.ae_interval_ms,
            "ae_docs_per_round_max": DEFAULTS.ae_docs_per_round_max,
            "ae_bytes_per_round_max": DEFAULTS.ae_bytes_per_round_max,
        },
    }


# ---------------------------------------------------------------------------------------------------------
# Report


def _ratio(value: float, base: float) -> float:
    return value / base if base else float("nan")


def _side_table(title: str, column: str, holders: JSON, full: JSON) -> None:
    """Another rf 2 run beside rf all: its cost per write and what it did."""
    print_table(
        title,
        ["", column, "/ rf all"],
        [
            [
                "CPU per acknowledged write, net of idle (us)",
                fmt(holders["cpu_us_per_write_net"], 0),
                fmt(holders["cpu_us_per_write_net"] / full["cpu_us_per_write_net"], 2),
            ],
            [
                "  during the writes only, net (us)",
                fmt(holders["cpu_us_per_write_writes_only"], 0),
                fmt(holders["cpu_us_per_write_writes_only"] / full["cpu_us_per_write_writes_only"], 2),
            ],
            [
                "bytes received per node per write, net of idle",
                fmt(holders["bytes_received_per_node_per_write"], 0),
                fmt(
                    holders["bytes_received_per_node_per_write"] / full["bytes_received_per_node_per_write"],
                    2,
                ),
            ],
            [
                "frames received per node per write (gross)",
                fmt(holders["frames_received_per_node_per_write"], 2),
                fmt(
                    holders["frames_received_per_node_per_write"]
                    / full["frames_received_per_node_per_write"],
                    2,
                ),
            ],
            *(
                [
                    f"  thread {thread} (us per write)",
                    fmt(cpu_us, 0),
                    fmt(_ratio(cpu_us, full["thread_cpu_us_per_write"].get(thread, 0.0)), 2),
                ]
                for thread, cpu_us in holders["thread_cpu_us_per_write"].items()
            ),
            [
                "store commits per node per write",
                fmt(holders["store_commits_per_node_per_write"], 3),
                fmt(
                    holders["store_commits_per_node_per_write"] / full["store_commits_per_node_per_write"], 2
                ),
            ],
            ["anti-entropy rounds started, cluster", fmt(holders["ae_rounds_started"]), ""],
            [
                "write phase / settle (s)",
                f"{holders['write_s']:.1f} / {holders['settle_s']:.1f}",
                "",
            ],
            ["updates dropped as not held", fmt(holders["updates_not_held"]), ""],
        ],
    )


def _frame_kinds_table(c: JSON) -> None:
    modes = [key for key in COST_MODES if key in c]
    ways = ("received", "published", "sent")
    kinds = sorted(
        {
            f"{way} {kind}"
            for key in modes
            for way in ways
            for kind in c[key]["frames_by_kind_per_node_per_write"][way]
        }
    )
    rows = [
        [
            kind,
            *(
                fmt(
                    c[key]["frames_by_kind_per_node_per_write"][kind.split(" ")[0]].get(
                        kind.split(" ")[1], 0.0
                    ),
                    3,
                )
                for key in modes
            ),
        ]
        for kind in kinds
    ]
    print_table("Frames per node per write, by kind (published: by audience)", ["", *modes], rows)


def _report_cost(c: JSON) -> list[Target]:
    _frame_kinds_table(c)
    if "rf_2" not in c or "rf_all" not in c:
        for key in ("rf_2_holders", "rf_2_forwarded"):
            if key in c and "rf_all" in c:
                _side_table(key, key, c[key], c["rf_all"])
        return []
    narrow, full = c["rf_2"], c["rf_all"]

    def compared(label: str, key: str, digits: int = 0, *, ratio: bool = True) -> list[str]:
        shown = [fmt(narrow[key], digits), fmt(full[key], digits)]
        return [label, *shown, fmt(narrow[key] / full[key], 2) if ratio else ""]

    rows = [
        [
            "CPU per acknowledged write, cluster, net of idle (us)",
            fmt(narrow["cpu_us_per_write_net"], 0),
            fmt(full["cpu_us_per_write_net"], 0),
            fmt(c["cpu_ratio_net"], 2),
        ],
        [
            "  gross (idle cluster CPU included)",
            fmt(narrow["cpu_us_per_write_gross"], 0),
            fmt(full["cpu_us_per_write_gross"], 0),
            fmt(c["cpu_ratio_gross"], 2),
        ],
        compared("  during the writes only, net (us)", "cpu_us_per_write_writes_only"),
        compared(
            "  share on the event-loop thread (rest: commits, ZeroMQ I/O)",
            "cpu_main_thread_share",
            2,
            ratio=False,
        ),
        [
            "bytes received per node per write, net of idle",
            fmt(narrow["bytes_received_per_node_per_write"], 0),
            fmt(full["bytes_received_per_node_per_write"], 0),
            fmt(c["bytes_ratio"], 2),
        ],
        compared("  gross (heartbeats and gossip included)", "bytes_received_per_node_per_write_gross"),
        compared("  during the writes only", "bytes_received_per_node_per_write_writes_only"),
        compared("frames received per node per write (gross)", "frames_received_per_node_per_write", 2),
        compared("anti-entropy rounds started, cluster", "ae_rounds_started", ratio=False),
        [
            "holders per doc (of 6 nodes)",
            fmt(c["holders_per_doc_rf_2"], 2),
            "6.00",
            fmt(c["holders_per_doc_rf_2"] / 6, 2),
        ],
        compared("idle cluster before the writes (cores)", "idle_cores", 3, ratio=False),
        compared("idle cluster after, holding the docs (cores)", "idle_after_cores", 3),
        compared("idle bytes received per node (B/s)", "idle_bytes_per_node_s", ratio=False),
        compared("writes acknowledged", "writes_acked", ratio=False),
        [
            "write phase / settle (s)",
            f"{narrow['write_s']:.1f} / {narrow['settle_s']:.1f}",
            f"{full['write_s']:.1f} / {full['settle_s']:.1f}",
            "",
        ],
        compared("updates dropped as not held", "updates_not_held", ratio=False),
        [
            "handoff offers sent / docs dropped",
            f"{narrow['handoff_offers_sent']:,} / {narrow['handoff_docs_dropped']:,}",
            f"{full['handoff_offers_sent']:,} / {full['handoff_docs_dropped']:,}",
            "",
        ],
    ]
    print_table(
        f"Cost per write: 6 nodes in 2 DCs, {c['writes']:,} single-key writes to distinct docs at {c['rate_hz']:g}/s through every node",
        ["", "rf 2 per DC", 'rf "all"', "ratio"],
        rows,
        [
            f"relays (hold their share): rf 2 {', '.join(narrow['relays'])}; docs held per node with rf 2: "
            + ", ".join(f"{n}={v:,}" for n, v in narrow["docs_held"].items()),
            "bytes received per write by node (gross), rf 2: "
            + ", ".join(f"{n}={v:.0f}" for n, v in narrow["bytes_received_per_write_by_node"].items())
            + "; rf all: "
            + ", ".join(f"{n}={v:.0f}" for n, v in full["bytes_received_per_write_by_node"].items()),
            "Why the bytes fall less than the holders: relays take every remote delta to forward it, a",
            "write through a non-holder costs a follower fetch (the bench opens the doc), the writer's",
            "subscription to the doc's bucket while it is open, handoff offers (a probe, then a second",
            "offer a grace later) and a drop; sequence indexes reach every node (about 3 bytes a delta).",
            "Why CPU falls less than rf/n: the same, plus the writer's own cost (write, commit,",
            "publish), which no placement shares, and every node's WAN anti-entropy rounds.",
        ],
    )
    if "rf_2_holders" in c:
        _side_table(
            "The same rf 2 cluster with every write sent to one of the doc's replicas",
            "rf 2, through replicas",
            c["rf_2_holders"],
            full,
        )
    if "rf_2_forwarded" in c:
        _side_table(
            "The same rf 2 cluster with writes through every node, a non-holder forwarding each write to "
            "the doc's nearest holder (node.forwarding, as the daemon forwards an HTTP write)",
            "rf 2, forwarded",
            c["rf_2_forwarded"],
            full,
        )
    return [
        Target(
            "cost_cpu",
            "CPU per acknowledged write, rf 2 / rf all (net of idle)",
            c["cpu_ratio_net"],
            TARGET_RATIO,
        ),
        Target(
            "cost_bytes",
            "bytes received per node per write, rf 2 / rf all (net of idle)",
            c["bytes_ratio"],
            TARGET_RATIO,
        ),
    ]


def report(results: JSON) -> list[Target]:
    targets: list[Target] = []
    if "cost" in results:
        targets += _report_cost(results["cost"])
    if "capacity" in results:
        k = results["capacity"]
        print(
            f"\nCapacity: {k['docs']:,} docs, rf 2, 6 nodes in one DC: held "
            + ", ".join(f"{n}={v:,}" for n, v in k["per_node"].items())
            + f"; ideal {k['ideal']:,.0f} ({k['ideal_text']}); worst {k['max_relative_error']:.1%} off, max/mean {k['max_over_mean']:.3f}"
        )
        targets.append(
            Target(
                "capacity",
                "docs held per node vs docs x 2/6 (rf 2, 6 nodes, 1 DC), worst error",
                k["max_relative_error"],
                TARGET_CAPACITY_ERROR,
            )
        )
    if "rebalance" in results:
        r = results["rebalance"]
        t = r["throttle"]
        print(
            f"\nRebalance: a 7th node joins 6 (one DC, rf 2) holding {r['docs']:,} docs ({r['update_bytes']:,} B update each);"
            f" throttle {t['handoff_docs_per_pass_max']:,} docs per handoff pass every {t['handoff_interval_ms']:g} ms,"
            f" {t['handoff_targets_max']} targets at once, {t['handoff_target_bytes_per_s'] // 1024:,} KiB/s to each,"
            f" at most {t['handoff_in_flight_per_target_max']:,} unanswered per target,"
            f" grace {t['handoff_grace_ms'] / 1000:g} s; anti-entropy every {t['ae_interval_ms'] / 1000:g} s,"
            f" {t['ae_docs_per_round_max']:,} docs / {t['ae_bytes_per_round_max'] // 1024:,} KiB per round"
        )
        rows = [
            [
                "doc replicas moved to the newcomer",
                fmt(r["moved_doc_replicas"]),
                f"ideal docs x 2/7 = {r['ideal_moved']:,.0f}",
            ],
            ["join to ready (process start, links up)", f"{r['join_to_ready_s']:.1f} s", ""],
            [
                "join to the newcomer holding its share",
                f"{r['join_to_caught_up_s']:.1f} s",
                f"{r['moved_doc_replicas'] / max(r['join_to_caught_up_s'], 1e-9):,.0f} docs/s",
            ],
            [
                "join to settled (old holders dropped theirs)",
                f"{r['join_to_settled_s']:.1f} s",
                "includes the handoff grace",
            ],
            [
                "bytes received by the newcomer",
                f"{r['joiner_bytes_received']:,}",
                f"{r['joiner_over_ideal']:.2f}x ideal {r['ideal_bytes']:,} (moved x update)",
            ],
            [
                "bytes received by the whole cluster",
                f"{r['cluster_bytes_received']:,}",
                f"{r['cluster_over_ideal']:.2f}x ideal (raw before lz4 {r['cluster_bytes_received_raw']:,})",
            ],
            ["CPU, whole cluster", f"{r['cpu_s']:.1f} s", ""],
            [
                "handoff offers sent / docs dropped",
                f"{r['handoff_offers_sent']:,} / {r['handoff_docs_dropped']:,}",
                f"anti-entropy docs repaired {r['ae_docs_repaired']:,}",
            ],
        ]
        timeline: list[str] = []
        next_s = 0.0
        for at, docs, offers, hinted in r["over_time"]:
            if at >= next_s:
                timeline.append(f"{at:.0f} s: {docs:,} docs, {offers:,} offers, {hinted:,} hinted")
                next_s = at + 10.0
        print_table(
            "Rebalance",
            ["", "measured", ""],
            rows,
            [
                f"offers received by the newcomer {r['joiner_offers_received']:,}, acks received by the old nodes"
                f" {r['handoff_acks_received']:,}",
                "newcomer over time: " + "; ".join(timeline),
                "longest answer to a status request (an event loop busy for that long): "
                + ", ".join(f"{n} {v:.1f} s" for n, v in r["slowest_status_s"].items()),
            ],
        )
        targets.append(
            Target(
                "rebalance_s",
                "rebalance: join to the newcomer holding its share (s)",
                r["join_to_caught_up_s"],
                None,
                "s",
            )
        )
    rows = [[t.text, fmt(t.value, 3), fmt(t.limit, 2), t.verdict] for t in targets]
    print_table("Targets (from the issue)", ["figure", "value", "target", "verdict"], rows)
    return targets


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.placement_cost", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="small runs: a few minutes in all")
    parser.add_argument("--json", type=Path, help="also write every figure as JSON to OUT", metavar="OUT")
    parser.add_argument("--writes", type=int, help="writes of the cost part (default 12,000; quick 3,000)")
    parser.add_argument("--rate", type=float, default=300.0, help="writes/s over the cluster (default 300)")
    parser.add_argument(
        "--capacity-docs", type=int, help="docs of the capacity part (default 12,000; quick 3,000)"
    )
    parser.add_argument("--docs", type=int, help="docs of the rebalance part (default 100,000; quick 5,000)")
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: cost, capacity, rebalance")
    parser.add_argument(
        "--cost-modes",
        default="",
        help=f"comma-separated runs of the cost part (default all): {', '.join(COST_MODES)}",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        metavar="DIR",
        help="cost part: each node writes DIR/<run>/<node>.prof (cProfile of its main thread's CPU over the measured window)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    settings = Settings(
        writes=args.writes or (3_000 if args.quick else 12_000),
        rate_hz=float(args.rate),
        capacity_docs=args.capacity_docs or (3_000 if args.quick else 12_000),
        docs=args.docs or (5_000 if args.quick else 100_000),
        skip=frozenset(p for p in str(args.skip).split(",") if p),
        profile_dir=args.profile,
        cost_modes=tuple(m for m in str(args.cost_modes).split(",") if m),
    )
    unknown = set(settings.cost_modes) - set(COST_MODES)
    if unknown:
        print(f"unknown cost modes: {', '.join(sorted(unknown))}", file=sys.stderr)
        return 2
    machine = machine_info()
    print("machine")
    for key, value in machine.items():
        print(f"  {key:<18} {value}")
    try:
        with open("/proc/loadavg", encoding="ascii") as loadavg:
            print(f"  {'load average':<18} {' '.join(loadavg.read().split()[:3])}")
    except OSError:
        pass
    print(f"\nplacement version {PLACEMENT_VERSION}; {settings}")

    def progress(text: str) -> None:
        print(text, flush=True)

    results: JSON = {}
    root = Path(tempfile.mkdtemp(prefix="bench-placement-cost-"))
    started = time.monotonic()
    try:
        if "cost" not in settings.skip:
            results["cost"] = cost(settings, root, progress)
        if "capacity" not in settings.skip:
            results["capacity"] = capacity(settings, root, progress)
        if "rebalance" not in settings.skip:
            results["rebalance"] = rebalance(settings, root, progress)
    except BenchError as exc:
        print(f"\nfailed: {exc}\nlogs kept in {root}", file=sys.stderr)
        report(results)
        return 1
    shutil.rmtree(root, ignore_errors=True)
    print(f"\nran {time.monotonic() - started:.0f} s")
    targets = report(results)
    if args.json is not None:
        write_json(
            args.json, {"machine": machine, "results": results, "targets": [t.as_json() for t in targets]}
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
