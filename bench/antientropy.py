"""Anti-entropy benchmark: what crdtsync's Merkle-tree repair costs, against pycrdt-websocket's reconnect.

    python -m bench.antientropy [--quick] [--json OUT] [--profile] [--skip zmq,ws,idle,scale]

Measured in the same run (targets from the issue, as ratios):

(1) Resync after 5000 changes spread over 1000 docs. Two replicas start in sync; one makes the changes
    (Map sets on random docs, one transaction each) while cut off; then anti-entropy alone repairs:
    - in one process, two ``crdtsync.core.replica.Replica`` objects joined by an in-memory loop that moves
      their Send frames; every Publish frame (deltas and heartbeats) is dropped, before and after, so only
      anti-entropy repairs. Timers advance from deadline to deadline (``next_deadline_ms``); CPU is
      ``time.process_time`` of the whole loop (both replicas), bytes are all Send frames;
    - over real ZeroMQ, two ``crdtsync.Node``s in this process: the second starts (from a store holding the
      initial docs) after the first made the changes, i.e. a late joiner / reconnect; wall time until every
      digest is equal, bytes from the nodes' counters and from ``ss``;
    - pycrdt-websocket: a client that was offline reconnects its 1000 rooms (one websocket per doc room) to
      the hub server that holds the changes (server + client processes);
    - the same 5000 changes in a single doc (among the same 1000), through the same in-memory loop;
    - the floor: raw pycrdt ``get_update(remote_sv)`` + ``apply_update`` for each changed doc, no observer.
(2) A round between replicas already in sync with 1000 docs: bytes of all its frames, CPU per round.
(3) An idle 3-node cluster holding 1000 docs, 3 OS processes over ZeroMQ: CPU cores and bytes/s.
(4) Repair of 10 changed docs among 1k, 10k and 100k docs (1k/10k/30k with --quick), in-memory loop:
    what grows with the number of docs. Also resident memory per doc (RSS delta, both replicas).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import io
import os
import pstats
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pycrdt import Doc, Map

from bench import _ae_workload as workload
from bench._common import (
    BenchError,
    Child,
    Deadline,
    Target,
    TcpSent,
    close_all,
    fmt,
    machine_info,
    print_table,
    proc_cpu_s,
    proc_status_kb,
    ratio,
    tcp_sent,
    write_json,
)
from crdtsync import MembershipConfig, Node, NodeConfig, ReplicaConfig
from crdtsync.core import wire
from crdtsync.core.effects import Publish, Send
from crdtsync.core.replica import Replica
from crdtsync.testing.cluster import free_port, free_ports

SEED = 7
ISSUE_REFERENCE = (
    "issue, same machine: pycrdt-websocket reconnect 4.3 s and 1.46 MB; raw pycrdt floor ~14 ms CPU, 112 KB"
)
PUMP_FRAMES_MAX = 1_000_000
"""Frames one `Pair.pump` may move before the loop is declared runaway."""
STEPS_MAX = 100_000
CONNECT_STEPS_MAX = 200
ZMQ_POLL_S = 0.002
ZMQ_RESYNC_TIMEOUT_S = 60.0
WS_TIMEOUT_S = 240.0
IDLE_STARTUP_TIMEOUT_S = 60.0
IDLE_SETTLE_S = 3.0
"""Wait after the cluster is in sync before measuring: the rounds on connect are over."""
POLL_S = 0.1

INPROC_CONFIG = ReplicaConfig()
# A replica whose pub/sub path is cut hears no heartbeats: without this its peer would be suspected.
# Gossip is off too: these replicas measure anti-entropy alone.
INPROC_MEMBERSHIP = MembershipConfig(acceptable_pause_ms=1e12, gossip_interval_ms=1e12)


@dataclass(frozen=True)
class Settings:
    quick: bool
    docs: int
    changes: int
    repeats: int
    insync_rounds: int
    idle_s: float
    scale_sizes: tuple[int, ...]
    scale_changed: int
    scale_repeats: int
    profile: bool
    skip: tuple[str, ...]


# ---------------------------------------------------------------------------------------------------------
# Two Replicas and an in-memory loop


class Pair:
    """Replicas ``a`` and ``b`` with the same ``docs`` initial docs, joined by an in-memory request path.

    Send frames are delivered at once, in order; Publish frames (the pub/sub path) are counted and dropped.
    """

    def __init__(self, docs: int, config: ReplicaConfig = INPROC_CONFIG) -> None:
        self.a = self._replica("a", 11, config)
        self.b = self._replica("b", 12, config)
        self._by_address = {self.a.address: self.a, self.b.address: self.b}
        self.now_ms = 0.0
        self.by_kind: dict[str, list[int]] = {}
        self.sent_frames = 0
        self.sent_bytes = 0
        self.dropped_publish_bytes = 0
        for index in range(docs):
            update = workload.init_update(index)
            self.a.load_update(workload.doc_id(index), update)
            self.b.load_update(workload.doc_id(index), update)
        self.a.merkle_root()
        self.b.merkle_root()

    @staticmethod
    def _replica(name: str, client_id: int, config: ReplicaConfig) -> Replica:
        return Replica(
            node_id=name,
            epoch=1,
            client_id=client_id,
            address=f"inproc://{name}",
            publish_endpoint=f"inproc://{name}-pub",
            config=config,
            membership=INPROC_MEMBERSHIP,
        )

    def reset_counts(self) -> None:
        self.by_kind = {}
        self.sent_frames = self.sent_bytes = self.dropped_publish_bytes = 0

    def pump(self) -> None:
        moved = 0
        busy = True
        while busy:
            busy = False
            for replica in (self.a, self.b):
                for effect in replica.take_effects(self.now_ms):
                    if isinstance(effect, Send):
                        moved += 1
                        if moved > PUMP_FRAMES_MAX:
                            raise BenchError(f"in-memory loop moved more than {PUMP_FRAMES_MAX} frames")
                        frame = effect.frame
                        kind = self.by_kind.setdefault(wire.MessageKind(frame[3]).name, [0, 0])
                        kind[0] += 1
                        kind[1] += len(frame)
                        self.sent_frames += 1
                        self.sent_bytes += len(frame)
                        self._by_address[effect.address].receive(frame, self.now_ms)
                        busy = True
                    elif isinstance(effect, Publish):
                        self.dropped_publish_bytes += len(effect.frame)

    def step(self) -> None:
        """Advance the clock to the next timer deadline of either replica, run both timers, move frames."""
        self.now_ms = max(self.now_ms + 1.0, min(self.a.next_deadline_ms(), self.b.next_deadline_ms()))
        self.a.tick(self.now_ms)
        self.b.tick(self.now_ms)
        self.pump()

    def connect(self) -> None:
        self.a.add_peer(self.b.address, self.now_ms)
        self.b.add_peer(self.a.address, self.now_ms)
        for _ in range(CONNECT_STEPS_MAX):
            self.step()
            peers = [*self.a.status(self.now_ms).peers, *self.b.status(self.now_ms).peers]
            if all(p.state == "alive" and p.ae_rounds > 0 and not p.ae_in_progress for p in peers):
                return
        raise BenchError("the in-memory replicas did not connect")

    def converged(self) -> bool:
        return self.a.merkle_root() == self.b.merkle_root()

    def rounds_completed(self) -> int:
        return self.a.counters.ae_rounds_completed + self.b.counters.ae_rounds_completed

    def counter(self, name: str) -> int:
        return self.a.counters.as_dict()[name] + self.b.counters.as_dict()[name]

    def verify(self, doc_ids: Sequence[str]) -> bool:
        """Equal digests and equal content for ``doc_ids`` (outside any timed region)."""
        for doc_id in doc_ids:
            if self.a.doc_digest(doc_id) != self.b.doc_digest(doc_id):
                return False
            ours = self.a.open_doc(doc_id).get(workload.DATA, type=Map).to_py()
            if ours != self.b.open_doc(doc_id).get(workload.DATA, type=Map).to_py():
                return False
        return True

    def close(self) -> None:
        self.a.close()
        self.b.close()


@dataclass
class Repair:
    """One repair by anti-entropy alone, in the in-memory loop."""

    label: str
    docs: int
    changes: int
    changed_docs: int
    cpu_ms: float
    wall_ms: float
    bytes: int
    frames: int
    rounds: int
    syncs_requested: int
    converged: bool
    by_kind: dict[str, list[int]]
    cpu_ms_runs: list[float] = field(default_factory=list)
    bytes_runs: list[int] = field(default_factory=list)
    """Bytes of each run, in the order of `cpu_ms_runs`: the repeats of (4) change different docs."""


def _apply_changes(replica: Replica, changes: Sequence[workload.Change]) -> set[int]:
    for change in changes:
        workload.apply_change(replica.open_doc(workload.doc_id(change[0])), change)
    return {change[0] for change in changes}


def _repair_once(
    pair: Pair,
    label: str,
    changes: Sequence[workload.Change],
    deadline: Deadline,
    profiler: cProfile.Profile | None,
) -> Repair:
    changed = _apply_changes(pair.a, changes)
    pair.a.take_effects(pair.now_ms)  # the deltas never leave: the pub/sub path is cut
    pair.reset_counts()
    rounds0 = pair.rounds_completed()
    syncs0 = pair.counter("syncs_requested")
    steps = 0
    if profiler is not None:
        profiler.enable()
    cpu0 = time.process_time()
    wall0 = time.perf_counter()
    while not pair.converged() and steps < STEPS_MAX and not deadline.expired():
        pair.step()
        steps += 1
    wall_ms = (time.perf_counter() - wall0) * 1e3
    cpu_ms = (time.process_time() - cpu0) * 1e3
    if profiler is not None:
        profiler.disable()
    ok = pair.converged() and pair.verify([workload.doc_id(i) for i in sorted(changed)])
    return Repair(
        label=label,
        docs=len(pair.a.doc_ids()),
        changes=len(changes),
        changed_docs=len(changed),
        cpu_ms=cpu_ms,
        wall_ms=wall_ms,
        bytes=pair.sent_bytes,
        frames=pair.sent_frames,
        rounds=pair.rounds_completed() - rounds0,
        syncs_requested=pair.counter("syncs_requested") - syncs0,
        converged=ok,
        by_kind={k: list(v) for k, v in sorted(pair.by_kind.items())},
    )


def _median_run(runs: list[Repair]) -> Repair:
    runs = sorted(runs, key=lambda r: r.cpu_ms)
    chosen = runs[len(runs) // 2]
    chosen.cpu_ms_runs = [round(r.cpu_ms, 3) for r in runs]
    chosen.bytes_runs = [r.bytes for r in runs]
    chosen.converged = all(r.converged for r in runs)
    return chosen


def repair_fresh(
    label: str, docs: int, changes: Sequence[workload.Change], repeats: int, deadline: Deadline
) -> Repair:
    """Median (by CPU) of ``repeats`` repairs, each on a freshly built and connected pair."""
    runs: list[Repair] = []
    for _ in range(repeats):
        if runs and deadline.expired():
            break
        pair = Pair(docs)
        try:
            pair.connect()
            runs.append(_repair_once(pair, label, changes, deadline, None))
        finally:
            pair.close()
    return _median_run(runs)


def profile_repair(docs: int, changes: Sequence[workload.Change], deadline: Deadline) -> str:
    pair = Pair(docs)
    try:
        pair.connect()
        profiler = cProfile.Profile()
        _repair_once(pair, "profile", changes, deadline, profiler)
    finally:
        pair.close()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("tottime").print_stats(12)
    stats.sort_stats("cumulative").print_stats("crdtsync", 25)
    return out.getvalue()


def pycrdt_floor(docs: int, changes: Sequence[workload.Change]) -> dict[str, float]:
    """Raw pycrdt, no observer: for each changed doc ``get_update(remote_sv)`` then ``apply_update``."""
    ahead: dict[int, Doc[Any]] = {}
    behind: dict[int, Doc[Any]] = {}
    for index in sorted({c[0] for c in changes}):
        update = workload.init_update(index)
        for side in (ahead, behind):
            doc: Doc[Any] = Doc()
            doc.apply_update(update)
            side[index] = doc
    for change in changes:
        workload.apply_change(ahead[change[0]], change)
    total = 0
    cpu0 = time.process_time()
    wall0 = time.perf_counter()
    for index, doc in ahead.items():
        update = doc.get_update(behind[index].get_state())
        total += len(update)
        behind[index].apply_update(update)
    wall_ms = (time.perf_counter() - wall0) * 1e3
    cpu_ms = (time.process_time() - cpu0) * 1e3
    equal = all(
        doc.get(workload.DATA, type=Map).to_py() == behind[i].get(workload.DATA, type=Map).to_py()
        for i, doc in ahead.items()
    )
    return {"cpu_ms": cpu_ms, "wall_ms": wall_ms, "bytes": total, "changed_docs": len(ahead), "equal": equal}


# ---------------------------------------------------------------------------------------------------------
# (2) Rounds between replicas in sync


def insync_rounds(docs: int, rounds: int, deadline: Deadline) -> dict[str, Any]:
    pair = Pair(docs)
    try:
        pair.connect()
        pair.reset_counts()
        rounds0 = pair.rounds_completed()
        in_sync0 = pair.counter("ae_rounds_in_sync")
        sim0 = pair.now_ms
        steps = 0
        cpu0 = time.process_time()
        wall0 = time.perf_counter()
        while pair.rounds_completed() - rounds0 < rounds and steps < rounds * 50 and not deadline.expired():
            pair.step()
            steps += 1
        wall_s = time.perf_counter() - wall0
        cpu_s = time.process_time() - cpu0
        done = pair.rounds_completed() - rounds0
        sim_s = (pair.now_ms - sim0) / 1e3
        return {
            "docs": docs,
            "rounds": done,
            "rounds_in_sync": pair.counter("ae_rounds_in_sync") - in_sync0,
            "timer_steps": steps,
            "bytes_per_round": pair.sent_bytes / done if done else None,
            "frames_per_round": pair.sent_frames / done if done else None,
            "cpu_ms_per_round": cpu_s * 1e3 / done if done else None,
            "wall_ms_per_round": wall_s * 1e3 / done if done else None,
            "by_kind": {k: list(v) for k, v in sorted(pair.by_kind.items())},
            "simulated_s": sim_s,
            "heartbeat_bytes_per_s_per_node": pair.dropped_publish_bytes / sim_s / 2 if sim_s else None,
        }
    finally:
        pair.close()


def profile_insync(docs: int, rounds: int, deadline: Deadline) -> str:
    pair = Pair(docs)
    profiler = cProfile.Profile()
    try:
        pair.connect()
        rounds0 = pair.rounds_completed()
        profiler.enable()
        for _ in range(rounds * 50):
            if pair.rounds_completed() - rounds0 >= rounds or deadline.expired():
                break
            pair.step()
        profiler.disable()
    finally:
        pair.close()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(12)
    return out.getvalue()


# ---------------------------------------------------------------------------------------------------------
# (4) Scale: the same small divergence among more and more docs


def scale(settings: Settings, deadline: Deadline) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for docs in settings.scale_sizes:
        if deadline.expired():
            rows.append({"docs": docs, "skipped": "deadline"})
            continue
        gc.collect()
        rss0 = proc_status_kb("VmRSS")
        build0 = time.perf_counter()
        pair = Pair(docs)
        try:
            build_s = time.perf_counter() - build0
            rss1 = proc_status_kb("VmRSS")
            pair.connect()
            runs = []
            for repeat in range(settings.scale_repeats):
                changes = workload.distinct_docs(settings.scale_changed, docs, SEED + 100 + repeat)
                runs.append(_repair_once(pair, f"{docs} docs", changes, deadline, None))
                if deadline.expired():
                    break
            median = _median_run(runs)
            row = asdict(median)
            row["build_s"] = build_s
            row["rss_bytes_per_doc"] = (rss1 - rss0) * 1024 / (2 * docs) if rss0 and rss1 else None
            rows.append(row)
        finally:
            pair.close()
            del pair
            gc.collect()
    return rows


# ---------------------------------------------------------------------------------------------------------
# (1) over real ZeroMQ: two Nodes in this process, the second a late joiner


def _node_bytes(counters: dict[str, int]) -> int:
    return counters.get("bytes_sent", 0) + counters.get("bytes_published", 0)


async def _zmq_resync(docs: int, changes: Sequence[workload.Change]) -> dict[str, Any]:
    ports = free_ports(2)
    address_a, address_b = (f"tcp://127.0.0.1:{p}" for p in ports)

    node_a = Node(
        NodeConfig(node_id="a", listen=address_a, peers=[address_b]), store=workload.PreloadedStore(docs)
    )
    async with node_a:
        for j, change in enumerate(changes):
            workload.apply_change(await node_a.open(workload.doc_id(change[0])), change)
            if j % 100 == 99:
                await asyncio.sleep(0)
        await node_a.flush()
        await asyncio.sleep(0.1)  # the deltas leave on the PUB socket, to no subscriber
        a0 = node_a.status().counters.as_dict()
        store_b = workload.PreloadedStore(docs)
        cpu0 = time.process_time()
        t0 = time.perf_counter()
        node_b = Node(NodeConfig(node_id="b", listen=address_b, peers=[address_a]), store=store_b)
        async with node_b:
            t_started = time.perf_counter()
            converged_at: float | None = None
            give_up = t_started + ZMQ_RESYNC_TIMEOUT_S
            polls = 0
            while time.perf_counter() < give_up:
                polls += 1
                if node_a.merkle_root() == node_b.merkle_root():
                    converged_at = time.perf_counter()
                    break
                await asyncio.sleep(ZMQ_POLL_S)
            cpu_s = time.process_time() - cpu0
            tcp = tcp_sent([os.getpid()])
            a1 = node_a.status().counters.as_dict()
            b1 = node_b.status().counters.as_dict()
            ids = [workload.doc_id(i) for i in range(docs)]
            equal = converged_at is not None and all(node_a.digest(d) == node_b.digest(d) for d in ids)
            peers = [*node_a.status().peers, *node_b.status().peers]
    sent_a = _node_bytes(a1) - _node_bytes(a0)
    sent_b = _node_bytes(b1)
    return {
        "converged": equal,
        "wall_ms": None if converged_at is None else (converged_at - t_started) * 1e3,
        "wall_ms_incl_start": None if converged_at is None else (converged_at - t0) * 1e3,
        "cpu_ms_incl_start": cpu_s * 1e3,
        "bytes": sent_a + sent_b,
        "bytes_by_node": {"a": sent_a, "b": sent_b},
        "frames": (a1.get("frames_sent", 0) - a0.get("frames_sent", 0)) + b1.get("frames_sent", 0),
        "rounds": (a1.get("ae_rounds_completed", 0) - a0.get("ae_rounds_completed", 0))
        + b1.get("ae_rounds_completed", 0),
        "syncs_requested": (a1.get("syncs_requested", 0) - a0.get("syncs_requested", 0))
        + b1.get("syncs_requested", 0),
        "tcp_payload": None if tcp is None else tcp.payload,
        "ip": None if tcp is None else tcp.ip,
        "polls": polls,
        "peers": [
            {
                "node": p.node_id,
                "ae_rounds": p.ae_rounds,
                "ae_docs_repaired": p.ae_docs_repaired,
                "ae_bytes_repaired": p.ae_bytes_repaired,
                "ae_divergence": p.ae_divergence,
            }
            for p in peers
        ],
    }


def zmq_resync(docs: int, changes: Sequence[workload.Change]) -> dict[str, Any]:
    return asyncio.run(asyncio.wait_for(_zmq_resync(docs, changes), ZMQ_RESYNC_TIMEOUT_S * 2))


# ---------------------------------------------------------------------------------------------------------
# (1) pycrdt-websocket: an offline client reconnects its rooms


def _wait_clock_sum(server: Child, total: int, deadline: Deadline, what: str) -> None:
    seen = -1
    while not deadline.expired():
        seen = int(server.request("clock_sum", "clock_sum", deadline)["total"])
        if seen == total:
            return
        time.sleep(POLL_S)
    raise BenchError(f"websocket server holds {seen} items, expected {total} ({what})")


def ws_reconnect(settings: Settings, log_dir: Path) -> dict[str, Any]:
    deadline = Deadline(WS_TIMEOUT_S)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    children: list[Child] = []
    try:
        server = Child("ws-server", "bench._ws_rooms", ["server", "--port", str(port)], log_dir)
        children.append(server)
        server.wait("ready", deadline, "(server startup)")
        client_args = ["client", "--url", url, "--docs", str(settings.docs)]
        writer = Child("ws-writer", "bench._ws_rooms", client_args, log_dir)
        children.append(writer)
        offline = Child("ws-offline", "bench._ws_rooms", client_args, log_dir)
        children.append(offline)
        writer.wait("ready", deadline, "(startup)")
        offline.wait("ready", deadline, "(startup)")
        # The writer creates the rooms and their initial content; the offline client syncs them, leaves.
        initial = int(writer.request("init", "changed", deadline)["total"])
        writer.request("connect", "connected", deadline)
        _wait_clock_sum(server, initial, deadline, "initial docs")
        first = offline.request("connect", "connected", deadline)
        if int(first["total"]) != initial:
            raise BenchError(f"the offline client synced {first['total']} items, expected {initial}")
        offline.request("disconnect", "disconnected", deadline)
        final = int(
            writer.request("changes", "changed", deadline, count=settings.changes, seed=SEED)["total"]
        )
        _wait_clock_sum(server, final, deadline, "after the changes")
        writer.request("disconnect", "disconnected", deadline)
        # Measured: the offline client reconnects every room.
        s0 = server.request("stats", "stats", deadline)
        c0 = offline.request("stats", "stats", deadline)
        proc0 = [proc_cpu_s(server.pid), proc_cpu_s(offline.pid)]
        tcp0 = tcp_sent([server.pid, offline.pid])
        done = offline.request("connect", "connected", deadline)
        tcp1 = tcp_sent([server.pid, offline.pid])
        s1 = server.request("stats", "stats", deadline)
        c1 = offline.request("stats", "stats", deadline)
        proc1 = [proc_cpu_s(server.pid), proc_cpu_s(offline.pid)]
        after = int(server.request("clock_sum", "clock_sum", deadline)["total"])
    finally:
        close_all(children)

    def cpu(stats: dict[str, Any]) -> float:
        return float(stats["user_s"]) + float(stats["sys_s"])

    def sent(stats: dict[str, Any]) -> int:
        return int(stats["counters"]["bytes_out"])

    proc_cpu: float | None = None
    if all(v is not None for v in [*proc0, *proc1]):
        proc_cpu = sum(float(b or 0.0) - float(a or 0.0) for a, b in zip(proc0, proc1, strict=True))

    def tcp_delta(pick: Callable[[TcpSent], int]) -> int | None:
        if tcp1 is None:
            return None
        return pick(tcp1) - (pick(tcp0) if tcp0 is not None else 0)

    return {
        "converged": int(done["total"]) == final == after,
        "wall_ms": (int(done["t1_ns"]) - int(done["t0_ns"])) / 1e6,
        "cpu_ms": (cpu(s1) - cpu(s0) + cpu(c1) - cpu(c0)) * 1e3,
        "proc_cpu_ms": None if proc_cpu is None else proc_cpu * 1e3,
        "bytes": sent(s1) - sent(s0) + sent(c1) - sent(c0),
        "bytes_by_process": {"server": sent(s1) - sent(s0), "client": sent(c1) - sent(c0)},
        "messages": int(s1["counters"]["msgs_out"])
        - int(s0["counters"]["msgs_out"])
        + int(c1["counters"]["msgs_out"])
        - int(c0["counters"]["msgs_out"]),
        "tcp_payload": tcp_delta(lambda t: t.payload),
        "ip": tcp_delta(lambda t: t.ip),
        "rooms": settings.docs,
        "items": final,
    }


# ---------------------------------------------------------------------------------------------------------
# (3) An idle 3-node cluster


def _stats(children: Sequence[Child], deadline: Deadline) -> list[dict[str, Any]]:
    for child in children:
        child.send("stats")
    return [child.wait("stats", deadline, "(stats)") for child in children]


def _roots(children: Sequence[Child], deadline: Deadline) -> list[dict[str, Any]]:
    for child in children:
        child.send("root")
    return [child.wait("root", deadline, "(root)") for child in children]


def idle_cluster(settings: Settings, log_dir: Path) -> dict[str, Any]:
    nodes = 3
    deadline = Deadline(IDLE_STARTUP_TIMEOUT_S + settings.idle_s + 30.0)
    addresses = [f"tcp://127.0.0.1:{p}" for p in free_ports(nodes)]
    children: list[Child] = []
    try:
        for k in range(nodes):
            peers = ",".join(a for j, a in enumerate(addresses) if j != k)
            args = ["--node-id", f"n{k + 1}", "--listen", addresses[k], "--peers", peers]
            children.append(
                Child(f"ae-node{k + 1}", "bench._ae_node", [*args, "--docs", str(settings.docs)], log_dir)
            )
        startup = Deadline(IDLE_STARTUP_TIMEOUT_S)
        for child in children:
            child.wait("ready", startup, "(peers up)")
        roots = _roots(children, startup)
        while not (len({r["root"] for r in roots}) == 1 and all(int(r["rounds"]) > 0 for r in roots)):
            if startup.expired():
                raise BenchError(f"the idle cluster never got in sync: {roots}")
            time.sleep(POLL_S)
            roots = _roots(children, startup)
        time.sleep(IDLE_SETTLE_S)
        s0 = _stats(children, deadline)
        proc0 = [proc_cpu_s(c.pid) for c in children]
        tcp0 = tcp_sent(c.pid for c in children)
        t0 = time.monotonic()
        end = t0 + settings.idle_s
        for _ in range(int(settings.idle_s * 10) + 10):
            remaining = end - time.monotonic()
            if remaining <= 0:
                break
            time.sleep(min(remaining, 1.0))
            for child in children:
                if child.proc.poll() is not None:
                    raise BenchError(f"{child.name} exited during the idle window")
        tcp1 = tcp_sent(c.pid for c in children)
        proc1 = [proc_cpu_s(c.pid) for c in children]
        s1 = _stats(children, deadline)
        wall_s = time.monotonic() - t0
        roots1 = _roots(children, deadline)
    finally:
        close_all(children)

    def cpu(stats: dict[str, Any]) -> float:
        return float(stats["user_s"]) + float(stats["sys_s"])

    def counter(stats: dict[str, Any], name: str) -> int:
        return int(stats["counters"].get(name, 0))

    per_node: list[dict[str, Any]] = []
    for k in range(nodes):
        published = counter(s1[k], "bytes_published") - counter(s0[k], "bytes_published")
        sent = counter(s1[k], "bytes_sent") - counter(s0[k], "bytes_sent")
        proc = None if proc0[k] is None or proc1[k] is None else float(proc1[k] or 0) - float(proc0[k] or 0)
        per_node.append(
            {
                "node": children[k].name,
                "cpu_s": cpu(s1[k]) - cpu(s0[k]),
                "proc_cpu_s": proc,
                # A PUB frame goes to each of the other nodes' SUB sockets.
                "app_bytes": published * (nodes - 1) + sent,
                "published_bytes": published,
                "sent_bytes": sent,
                "frames": counter(s1[k], "frames_published")
                - counter(s0[k], "frames_published")
                + counter(s1[k], "frames_sent")
                - counter(s0[k], "frames_sent"),
                "rounds": counter(s1[k], "ae_rounds_completed") - counter(s0[k], "ae_rounds_completed"),
                "rss_kb": int(roots1[k]["rss_kb"]),
            }
        )
    procs = [n["proc_cpu_s"] for n in per_node]
    return {
        "nodes": nodes,
        "docs": settings.docs,
        "wall_s": wall_s,
        "in_sync": len({r["root"] for r in roots1}) == 1,
        "cores": sum(n["cpu_s"] for n in per_node) / wall_s,
        "proc_cores": None if any(p is None for p in procs) else sum(float(p or 0) for p in procs) / wall_s,
        "app_bytes_per_s": sum(n["app_bytes"] for n in per_node) / wall_s,
        "tcp_bytes_per_s": None if tcp0 is None or tcp1 is None else (tcp1.payload - tcp0.payload) / wall_s,
        "ip_bytes_per_s": None if tcp0 is None or tcp1 is None else (tcp1.ip - tcp0.ip) / wall_s,
        "rounds_per_s": sum(n["rounds"] for n in per_node) / wall_s,
        "per_node": per_node,
    }


# ---------------------------------------------------------------------------------------------------------
# Report


def _kb(value: float | int | None) -> str:
    return "-" if value is None else f"{value / 1000:,.1f}"


def _ms(value: float | None, digits: int = 1) -> str:
    return fmt(value, digits)


def report(machine: dict[str, str], settings: Settings, results: dict[str, Any]) -> list[Target]:
    print("Machine and versions")
    for key, value in machine.items():
        print(f"  {key:18} {value}")
    print(f"  {'mode':18} {'quick' if settings.quick else 'default'}")

    spread: Repair = results["spread"]
    single: Repair = results["single"]
    zmq = results.get("zmq")
    ws = results.get("ws")
    rows = [
        [
            text,
            fmt(int(floor["changed_docs"])),
            _ms(floor["wall_ms"]),
            _ms(floor["cpu_ms"]),
            _kb(floor["bytes"]),
            "-",
            "-",
            "yes" if floor["equal"] else "NO",
        ]
        for floor, text in (
            (results["floor"], "raw pycrdt floor (get_update+apply, 1 direction)"),
            (results["floor_single"], "raw pycrdt floor, 1 doc changed"),
        )
    ]
    for rep, text in (
        (spread, "crdtsync, 2 Replicas in memory"),
        (single, "crdtsync, in memory, 1 doc changed"),
    ):
        rows.append(
            [
                text,
                fmt(rep.changed_docs),
                _ms(rep.wall_ms),
                _ms(rep.cpu_ms),
                _kb(rep.bytes),
                fmt(rep.frames),
                fmt(rep.rounds),
                "yes" if rep.converged else "NO",
            ]
        )
    if zmq is not None:
        rows.append(
            [
                "crdtsync, 2 Nodes over ZeroMQ (1 process)",
                fmt(spread.changed_docs),
                _ms(zmq["wall_ms"]),
                _ms(zmq["cpu_ms_incl_start"]) + "*",
                _kb(zmq["bytes"]),
                fmt(zmq["frames"]),
                fmt(zmq["rounds"]),
                "yes" if zmq["converged"] else "NO",
            ]
        )
    if ws is not None:
        rows.append(
            [
                "pycrdt-websocket reconnect (server + client)",
                fmt(int(ws["rooms"])),
                _ms(ws["wall_ms"]),
                _ms(ws["cpu_ms"]),
                _kb(ws["bytes"]),
                fmt(int(ws["messages"])),
                "-",
                "yes" if ws["converged"] else "NO",
            ]
        )
    notes = [
        f"crdtsync in memory: median of {len(spread.cpu_ms_runs)} runs, CPU ms of each: {spread.cpu_ms_runs};"
        " single doc: " + str(single.cpu_ms_runs),
        "bytes: crdtsync = every request-path frame (envelopes included); websocket = message payloads of",
        "  server and client; frames: crdtsync frames / websocket messages",
    ]
    if zmq is not None:
        notes.append(
            f"ZeroMQ: wall from start() of the late joiner returning; {_ms(zmq['wall_ms_incl_start'])} ms from"
            " calling it (incl. loading its store); *CPU of this process from calling start()"
        )
        notes.append(
            f"ZeroMQ TCP payload {_kb(zmq['tcp_payload'])} KB, IP {_kb(zmq['ip'])} KB (ss, both nodes);"
            f" syncs requested {zmq['syncs_requested']}"
        )
    if ws is not None:
        notes.append(
            f"websocket TCP payload {_kb(ws['tcp_payload'])} KB, IP {_kb(ws['ip'])} KB (ss, server+client);"
            f" CPU from /proc {_ms(ws['proc_cpu_ms'], 0)} ms; {ws['rooms']} websockets"
        )
    notes.append(ISSUE_REFERENCE)
    print_table(
        f"(1) Resync after {settings.changes} changes over {settings.docs} docs, anti-entropy only",
        ["system", "docs chg", "wall ms", "CPU ms", "KB", "frames", "rounds", "converged"],
        rows,
        notes,
    )

    kinds = sorted(set(spread.by_kind) | set(single.by_kind))
    rows = [
        [
            kind,
            fmt(spread.by_kind.get(kind, [0, 0])[0]),
            _kb(spread.by_kind.get(kind, [0, 0])[1]),
            fmt(single.by_kind.get(kind, [0, 0])[0]),
            _kb(single.by_kind.get(kind, [0, 0])[1]),
        ]
        for kind in kinds
    ]
    print_table(
        "(1) Where the in-memory resync's bytes go, by message kind",
        ["kind", "spread frames", "spread KB", "1-doc frames", "1-doc KB"],
        rows,
        [
            f"syncs requested: spread {spread.syncs_requested} for {spread.changed_docs} changed docs;"
            f" 1 doc {single.syncs_requested}"
        ],
    )

    insync = results["insync"]
    print_table(
        f"(2) Anti-entropy round between replicas in sync ({insync['docs']} docs, in memory)",
        ["rounds", "bytes/round", "frames/round", "CPU ms/round", "wall ms/round", "heartbeat B/s/node"],
        [
            [
                fmt(int(insync["rounds"])),
                fmt(insync["bytes_per_round"], 1),
                fmt(insync["frames_per_round"], 1),
                fmt(insync["cpu_ms_per_round"], 3),
                fmt(insync["wall_ms_per_round"], 3),
                fmt(insync["heartbeat_bytes_per_s_per_node"], 1),
            ]
        ],
        [
            "CPU per round: process time of the whole loop (both replicas, the timer ticks between rounds too)",
            f"frames by kind: {insync['by_kind']}",
        ],
    )

    idle = results.get("idle")
    if idle is not None:
        rows = [
            [
                n["node"],
                fmt(n["cpu_s"] * 1e3, 1),
                fmt(n["proc_cpu_s"] * 1e3 if n["proc_cpu_s"] is not None else None, 0),
                fmt(n["app_bytes"] / idle["wall_s"], 1),
                fmt(n["frames"] / idle["wall_s"], 1),
                fmt(n["rounds"]),
                fmt(n["rss_kb"] / 1024, 1),
            ]
            for n in idle["per_node"]
        ]
        print_table(
            f"(3) Idle cluster: {idle['nodes']} Nodes in {idle['nodes']} OS processes over ZeroMQ,"
            f" {idle['docs']} docs each, {idle['wall_s']:.1f} s",
            ["node", "CPU ms", "/proc ms", "app B/s", "frames/s", "rounds", "RSS MB"],
            rows,
            [
                f"cluster: {idle['cores']:.4f} cores (self-reported getrusage; /proc: {fmt(idle['proc_cores'], 4)}),"
                f" app {fmt(idle['app_bytes_per_s'], 0)} B/s, TCP payload {fmt(idle['tcp_bytes_per_s'], 0)} B/s,"
                f" IP {fmt(idle['ip_bytes_per_s'], 0)} B/s, {idle['rounds_per_s']:.2f} rounds/s;"
                f" in sync: {idle['in_sync']}",
                "app: bytes_published x 2 subscribers + bytes_sent; TCP payload includes ZMTP framing; IP adds",
                "  an IPv4+TCP header per segment, ACKs included",
            ],
        )

    scale_rows = results.get("scale")
    if scale_rows:
        rows = []
        for row in scale_rows:
            if "skipped" in row:
                rows.append([fmt(int(row["docs"])), "skipped", *["-"] * 10])
                continue
            by_kind: dict[str, list[int]] = row["by_kind"]
            tree = sum(v[1] for k, v in by_kind.items() if k.startswith("TREE"))
            segments = sum(by_kind.get(kind, [0, 0])[1] for kind in ("TREE_SEGMENTS", "TREE_CELLS"))
            entries = sum(
                by_kind.get(kind, [0, 0])[1]
                for kind in ("TREE_ENTRIES_REQUEST", "TREE_ENTRIES", "TREE_LEAVES_REQUEST", "TREE_LEAVES")
            )
            sync = sum(v[1] for k, v in by_kind.items() if k.startswith("SYNC"))
            rows.append(
                [
                    fmt(int(row["docs"])),
                    fmt(row["build_s"], 1),
                    fmt(row["rss_bytes_per_doc"], 0),
                    _ms(row["cpu_ms"], 2),
                    _ms(row["wall_ms"], 2),
                    fmt(int(row["bytes"])),
                    fmt(tree),
                    fmt(segments),
                    fmt(entries),
                    fmt(sync),
                    fmt(int(row["frames"])),
                    f"{row['rounds']}/{'yes' if row['converged'] else 'NO'}",
                ]
            )
        print_table(
            f"(4) Repair of {settings.scale_changed} changed docs among N docs (in memory,"
            f" median of {settings.scale_repeats})",
            [
                "docs",
                "build s",
                "RSS B/doc",
                "CPU ms",
                "wall ms",
                "bytes",
                "tree B",
                "segments B",
                "entries B",
                "sync B",
                "frames",
                "rounds/conv",
            ],
            rows,
            [
                "tree B: TREE_* frames (root, branches, segments, entries); sync B: SYNC_* frames;",
                "RSS B/doc: resident memory added by building both replicas (docs + digests + tree) / (2 x docs)",
                "segments B: TREE_CELLS (wire version 4: 16 cells of 4 B per differing branch) or TREE_SEGMENTS",
                "  (64 hashes of 16 B); entries B: TREE_LEAVES_REQUEST (3 B per doc of the differing segments)",
                "  and TREE_LEAVES (the differing docs' entries), or TREE_ENTRIES_REQUEST and TREE_ENTRIES",
                "sync B: 2 frames per doc when the replica that lacks the changes starts the round, 3 otherwise",
                "bytes of each repeat: "
                + "; ".join(
                    f"{fmt(int(row['docs']))}: {row.get('bytes_runs')}"
                    for row in scale_rows
                    if "skipped" not in row
                ),
            ],
        )

    targets = _targets(settings, results)
    rows = [
        [
            t.text,
            fmt(t.value, 4 if t.unit in ("", "cores") else 2),
            "" if t.limit is None else f"<= {t.limit:.4g}",
            t.verdict,
        ]
        for t in targets
    ]
    print_table("Targets (from the issue)", ["target", "measured", "limit", "verdict"], rows)
    return targets


def _targets(settings: Settings, results: dict[str, Any]) -> list[Target]:
    spread: Repair = results["spread"]
    single: Repair = results["single"]
    zmq = results.get("zmq")
    ws = results.get("ws")
    targets: list[Target] = []
    if ws is not None:
        ws_ms, ws_bytes = float(ws["wall_ms"]), float(ws["bytes"])
        if zmq is not None:
            targets.append(
                Target(
                    "time_zmq_vs_ws",
                    "(1) resync time, ZeroMQ Nodes / websocket",
                    ratio(zmq["wall_ms"], ws_ms),
                    1 / 20,
                )
            )
        targets.append(
            Target(
                "time_inproc_vs_ws",
                "(1) resync time, in memory / websocket",
                ratio(spread.wall_ms, ws_ms),
                1 / 20,
            )
        )
        if zmq is not None:
            targets.append(
                Target(
                    "bytes_zmq_vs_ws",
                    "(1) resync bytes, ZeroMQ Nodes / websocket",
                    ratio(zmq["bytes"], ws_bytes),
                    1 / 5,
                )
            )
            targets.append(
                Target(
                    "tcp_bytes_zmq_vs_ws",
                    "    same, TCP payload (ss)",
                    ratio(zmq["tcp_payload"], ws["tcp_payload"]),
                    None,
                )
            )
            targets.append(
                Target("ip_bytes_zmq_vs_ws", "    same, IP packets (ss)", ratio(zmq["ip"], ws["ip"]), None)
            )
        targets.append(
            Target(
                "bytes_inproc_vs_ws",
                "(1) resync bytes, in memory / websocket",
                ratio(spread.bytes, ws_bytes),
                1 / 5,
            )
        )
    targets.append(
        Target(
            "cpu_vs_single", "(1) resync CPU, 1000 docs / 1 doc", ratio(spread.cpu_ms, single.cpu_ms), 10.0
        )
    )
    targets.append(
        Target(
            "bytes_vs_single", "(1) resync bytes, 1000 docs / 1 doc", ratio(spread.bytes, single.bytes), 10.0
        )
    )
    floor, floor_single = results["floor"], results["floor_single"]
    for key, text, value in (
        (
            "floor_cpu_vs_single",
            "    raw pycrdt floor, CPU 1000 docs / 1 doc",
            ratio(floor["cpu_ms"], floor_single["cpu_ms"]),
        ),
        ("bytes_vs_floor", "    crdtsync in memory / raw floor, bytes", ratio(spread.bytes, floor["bytes"])),
    ):
        targets.append(Target(key, text, value, None))
    targets.append(
        Target(
            "cpu_vs_floor",
            "(1) resync CPU in memory / raw floor (issue 17)",
            ratio(spread.cpu_ms, floor["cpu_ms"]),
            2.0,
        )
    )
    insync = results["insync"]
    targets.append(Target("round_bytes", "(2) in-sync round, bytes", insync["bytes_per_round"], 1024.0, "B"))
    targets.append(Target("round_cpu_ms", "(2) in-sync round, CPU ms", insync["cpu_ms_per_round"], 2.0, "ms"))
    idle = results.get("idle")
    if idle is not None:
        targets.append(Target("idle_cores", "(3) idle cluster, cores", idle["cores"], 0.01, "cores"))
        targets.append(
            Target(
                "idle_bytes", "(3) idle cluster, B/s (TCP payload)", idle["tcp_bytes_per_s"], 2048.0, "B/s"
            )
        )
    rows = [r for r in results.get("scale") or [] if "skipped" not in r]
    if len(rows) >= 2:
        small, large = rows[0], rows[-1]
        label = f"{int(large['docs']) // 1000}k/{int(small['docs']) // 1000}k"
        targets.append(
            Target(
                "scale_cpu",
                f"(4) repair CPU {label} (near 1; 2 taken)",
                ratio(large["cpu_ms"], small["cpu_ms"]),
                2.0,
            )
        )
        # Bytes over all repeats, not the CPU-median run's: each repeat changes other docs, and two
        # of them in one branch cost the leaves of two more segments.
        targets.append(
            Target(
                "scale_bytes",
                f"(4) repair bytes {label}, all repeats (issue 17)",
                ratio(sum(large["bytes_runs"]), sum(small["bytes_runs"])),
                1.5,
            )
        )
    return targets


# ---------------------------------------------------------------------------------------------------------
# Main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.antientropy", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--quick", action="store_true", help="fewer repeats, 10 s idle, 1k/10k/30k docs (< 60 s)"
    )
    parser.add_argument("--json", metavar="OUT", type=Path, help="also write every figure as JSON to OUT")
    parser.add_argument(
        "--profile", action="store_true", help="print cProfile tops of a resync and of rounds"
    )
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: zmq, ws, idle, scale")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    skip = tuple(s.strip() for s in str(args.skip).split(",") if s.strip())
    unknown = [s for s in skip if s not in ("zmq", "ws", "idle", "scale")]
    if unknown:
        print(f"unknown part(s) to skip: {', '.join(unknown)}", file=sys.stderr)
        return 2
    quick = bool(args.quick)
    settings = Settings(
        quick=quick,
        docs=1000,
        changes=5000,
        repeats=3 if quick else 7,
        insync_rounds=100,
        idle_s=10.0 if quick else 20.0,
        scale_sizes=(1_000, 10_000, 30_000) if quick else (1_000, 10_000, 100_000),
        scale_changed=10,
        scale_repeats=3 if quick else 5,
        profile=bool(args.profile),
        skip=skip,
    )
    machine = machine_info()
    log_dir = Path(tempfile.mkdtemp(prefix="crdtsync-ae-bench-"))
    results: dict[str, Any] = {}
    failures: list[str] = []
    started = time.monotonic()

    def progress(text: str) -> None:
        print(f"... [{time.monotonic() - started:5.1f} s] {text}", file=sys.stderr, flush=True)

    try:
        deadline = Deadline(120.0 if quick else 300.0)
        spread_changes = workload.changes(settings.changes, settings.docs, SEED)
        single_changes = workload.changes(settings.changes, settings.docs, SEED, single_doc=True)
        progress("raw pycrdt floor")
        results["floor"] = pycrdt_floor(settings.docs, spread_changes)
        results["floor_single"] = pycrdt_floor(settings.docs, single_changes)
        progress("in-memory resync, changes spread over the docs")
        results["spread"] = repair_fresh("spread", settings.docs, spread_changes, settings.repeats, deadline)
        progress("in-memory resync, changes in one doc")
        results["single"] = repair_fresh("single", settings.docs, single_changes, settings.repeats, deadline)
        progress("in-memory rounds in sync")
        results["insync"] = insync_rounds(settings.docs, settings.insync_rounds, deadline)
        if "scale" not in skip:
            progress(f"in-memory repair of {settings.scale_changed} docs among {settings.scale_sizes} docs")
            results["scale"] = scale(settings, Deadline(240.0 if not quick else 60.0))
        if "zmq" not in skip:
            progress("ZeroMQ late joiner")
            try:
                results["zmq"] = zmq_resync(settings.docs, spread_changes)
            except (BenchError, OSError, TimeoutError) as exc:
                failures.append(f"ZeroMQ resync: {exc}")
        if "ws" not in skip:
            progress("pycrdt-websocket reconnect")
            try:
                results["ws"] = ws_reconnect(settings, log_dir)
            except BenchError as exc:
                failures.append(f"pycrdt-websocket reconnect: {exc}")
        if "idle" not in skip:
            progress(f"idle 3-node cluster for {settings.idle_s:.0f} s")
            try:
                results["idle"] = idle_cluster(settings, log_dir)
            except BenchError as exc:
                failures.append(f"idle cluster: {exc}")
        progress("done")
        targets = report(machine, settings, results)
        for failure in failures:
            print(f"note: not measured: {failure}")
        if settings.profile:
            print("\nProfile of one in-memory resync (spread changes), top by own time:")
            print(profile_repair(settings.docs, spread_changes, Deadline(60.0)))
            print("Profile of in-sync rounds, top by own time:")
            print(profile_insync(settings.docs, settings.insync_rounds, Deadline(60.0)))
        if args.json is not None:
            summary = {
                "machine": machine,
                "settings": asdict(settings),
                "results": {k: asdict(v) if isinstance(v, Repair) else v for k, v in results.items()},
                "targets": [t.as_json() for t in targets],
                "failures": failures,
            }
            write_json(args.json, summary)
    finally:
        if failures:
            print(f"\nchild logs kept in {log_dir}", file=sys.stderr)
        else:
            shutil.rmtree(log_dir, ignore_errors=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
