"""Replication benchmark: crdtsync against pycrdt-websocket and against the bare pycrdt + ZeroMQ limit.

    python -m bench.replication [--quick] [--json OUT] [--systems apply,mesh,websocket,crdtsync]

Every system runs as separate OS processes on 127.0.0.1: one writer and two receivers (pycrdt-websocket
adds a fourth process, its hub server). The writer sets ``m[f"k{i % 1000}"] = i`` on a pycrdt Map, one
transaction per write. Measured, per system, in the same run:

(a) burst throughput: N writes as fast as possible until both receivers hold the writer's final value and
    all three replicas have equal content (updates/s, from the first write to the last arrival);
(b) paced latency at 200/s and 2000/s: write -> applied-at-receiver, p50/p99/max over both receivers
    (CLOCK_MONOTONIC is system-wide, so timestamps of different processes compare directly);
(c) CPU microseconds per update: user+sys of every process of the system over the measured window, as each
    process reports it from getrusage (all threads);
(d) bytes per update: application bytes sent by every process of the system (ZeroMQ frame payloads;
    websocket message payloads of the server and the clients; crdtsync's own ``bytes_out`` counter), the
    same counting a copy of every PUB frame for each of its subscribers (``bytes_published`` is counted
    once per frame), and, as a cross-check across systems, TCP payload bytes sent by their sockets
    (``ss -ti``, includes ZMTP and websocket framing, excludes IP/TCP headers).

Plus the apply-rate limit of pycrdt itself (one process, a Python observer attached).
"""

from __future__ import annotations

import argparse
import math
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pycrdt import Doc, Map, TransactionEvent

from bench._child import Recorder
from bench._common import (
    KEYS,
    BenchError,
    BenchTimeoutError,
    Child,
    Deadline,
    TcpSent,
    close_all,
    fmt,
    machine_info,
    percentile,
    print_table,
    proc_cpu_s,
    ratio,
    tcp_sent,
    write_json,
)
from crdtsync.testing.cluster import free_port, free_ports

SYSTEMS = ("apply", "mesh", "websocket", "crdtsync")
LABELS = {
    "apply": "pycrdt apply limit (1 proc)",
    "mesh": "bare pycrdt+ZeroMQ mesh",
    "websocket": "pycrdt-websocket",
    "crdtsync": "crdtsync",
}
RATES_HZ = (200, 2000)
IMPORT_CHECK_TIMEOUT_S = 60.0

# Figures quoted by the issue for this machine, printed under the matching table for orientation.
ISSUE_REFERENCE = {
    "throughput": "issue, same machine: pycrdt-websocket ~2,200 updates/s; bare mesh 42-66k updates/s",
    "cpu": "issue, same machine: pycrdt-websocket ~870 us per update",
    "bytes": "issue, same machine: pycrdt-websocket ~593 B per update (compare with the ip column)",
}

# (metric, target, comparison) for the ratios the issue asks for.
TARGETS: tuple[tuple[str, str, float, str], ...] = (
    ("throughput_vs_websocket", "crdtsync / pycrdt-websocket throughput", 10.0, ">="),
    ("throughput_vs_mesh", "crdtsync / bare mesh throughput", 0.5, ">="),
    ("p99_ms_200", "crdtsync p99 latency at 200/s (ms)", 1.5, "<="),
    ("p99_ms_2000", "crdtsync p99 latency at 2000/s (ms)", 5.0, "<="),
    ("p50_200_vs_mesh", "crdtsync / bare mesh p50 latency at 200/s (issue 17)", 1.3, "<="),
    ("p99_200_vs_mesh", "crdtsync / bare mesh p99 latency at 200/s (issue 17)", 1.3, "<="),
    ("cpu_vs_websocket", "crdtsync / pycrdt-websocket CPU per update", 1 / 8, "<="),
    ("bytes_vs_websocket", "crdtsync / pycrdt-websocket app bytes, every copy (issue 17)", 1 / 10, "<="),
    ("tcp_bytes_vs_websocket", "crdtsync / pycrdt-websocket TCP bytes, burst (issue 17)", 1 / 10, "<="),
    ("paced_tcp_bytes_vs_mesh", "crdtsync / bare mesh TCP bytes at 200/s (issue 17)", 1.3, "<="),
)
# Ratios printed for information, no verdict of their own: (key, label, the target they follow).
INFO_RATIOS: tuple[tuple[str, str, str], ...] = (
    ("app_bytes_vs_websocket", "  same, app bytes, a PUB frame once (info)", "bytes_vs_websocket"),
    ("ip_bytes_vs_websocket", "  same, IP packet bytes (info)", "tcp_bytes_vs_websocket"),
)
SUBSCRIBERS_PER_PUB = 2
"""Each process's PUB frames reach both other processes: the copies that `bytes_published` counts once."""


@dataclass(frozen=True)
class Settings:
    quick: bool
    burst_n: int
    warmup_n: int
    paced_s: float
    apply_n: int
    system_timeout_s: float
    rates_hz: tuple[int, ...] = RATES_HZ


@dataclass
class Costs:
    """CPU and bytes over one measured window, per update."""

    cpu_us_per_update: float
    cpu_s_by_process: dict[str, float]
    proc_cpu_us_per_update: float | None  # the same from /proc/<pid>/stat (10 ms ticks), a cross-check
    bytes_per_update: float | None  # None when a process has no bytes_out counter
    copies_bytes_per_update: float | None  # the same with a copy of every PUB frame per subscriber
    bytes_by_process: dict[str, int | None]
    tcp_bytes_per_update: float | None  # TCP payload, framing included (ss -ti)
    ip_bytes_per_update: float | None  # TCP payload + IPv4/TCP headers of every segment (ss -ti)
    counters_by_process: dict[str, dict[str, int]] = field(
        default_factory=dict
    )  # deltas; bench_* flags as is


@dataclass
class BurstResult:
    n: int
    seconds: float
    updates_per_s: float
    writer_updates_per_s: float
    converged: bool
    costs: Costs | None


@dataclass
class PacedResult:
    rate_hz: int
    n: int
    sent_per_s: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    received: int
    expected: int
    converged: bool
    costs: Costs


@dataclass
class SystemResult:
    key: str
    label: str
    processes: str
    status: str = "ok"
    burst: BurstResult | None = None
    paced: dict[int, PacedResult] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status == "ok"


# ---------------------------------------------------------------------------------------------------------
# The apply limit (single process)


def measure_apply(n: int) -> SystemResult:
    """Time apply_update of n single-write deltas into a fresh Doc carrying the receivers' Map observer."""
    result = SystemResult("apply", LABELS["apply"], "1 process (this one)")
    src: Doc[Map[Any]] = Doc()
    src_map = src.get("data", type=Map)
    updates: list[bytes] = []

    def capture(event: TransactionEvent) -> None:
        updates.append(event.update)

    subscription = src.observe(capture)
    for i in range(n):
        src_map[f"k{i % KEYS}"] = i
    src.unobserve(subscription)

    dst: Doc[Map[Any]] = Doc()
    dst_map = dst.get("data", type=Map)
    recorder = Recorder(dst_map)
    cpu0 = time.process_time()
    t0 = time.perf_counter()
    for update in updates:
        dst.apply_update(update)
    seconds = time.perf_counter() - t0
    cpu_s = time.process_time() - cpu0
    converged = dst_map.to_py() == src_map.to_py() and len(recorder.recs) == 2 * n
    update_bytes = sum(len(u) for u in updates)
    costs = Costs(
        cpu_us_per_update=cpu_s / n * 1e6,
        cpu_s_by_process={"apply": cpu_s},
        proc_cpu_us_per_update=None,
        bytes_per_update=update_bytes / n,
        copies_bytes_per_update=None,
        bytes_by_process={},
        tcp_bytes_per_update=None,
        ip_bytes_per_update=None,
    )
    result.burst = BurstResult(n, seconds, n / seconds, n / seconds, converged, costs)
    result.notes.append("apply limit: bytes/update is the mean delta size (nothing is sent)")
    return result


# ---------------------------------------------------------------------------------------------------------
# Clusters of child processes


@dataclass
class Cluster:
    writer: Child
    readers: list[Child]
    others: list[Child] = field(default_factory=list)

    @property
    def replicas(self) -> list[Child]:
        return [self.writer, *self.readers]

    @property
    def everyone(self) -> list[Child]:
        return [self.writer, *self.readers, *self.others]


def _wait_all(children: Sequence[Child], ev: str, deadline: Deadline, what: str) -> list[dict[str, Any]]:
    return [child.wait(ev, deadline, what) for child in children]


def start_mesh(log_dir: Path, deadline: Deadline, started: list[Child]) -> Cluster:
    roles = ("writer", "reader", "reader")
    names = ("mesh-writer", "mesh-reader1", "mesh-reader2")
    for name, role in zip(names, roles, strict=True):
        started.append(Child(name, "bench._mesh", [role], log_dir))
    cluster = Cluster(started[0], started[1:3])
    endpoints = [str(e["endpoint"]) for e in _wait_all(cluster.replicas, "ready", deadline, "(startup)")]
    for k, child in enumerate(cluster.replicas):
        child.send("connect", endpoints=[e for j, e in enumerate(endpoints) if j != k])
    _wait_all(cluster.replicas, "connected", deadline, "(connect)")
    cluster.writer.send("ping_start")
    _wait_all(cluster.readers, "synced", deadline, "(subscription sync)")
    cluster.writer.request("ping_stop", "ping_stopped", deadline)
    return cluster


def start_websocket(log_dir: Path, deadline: Deadline, started: list[Child]) -> Cluster:
    port = free_port()
    server = Child("ws-server", "bench._ws", ["server", "--port", str(port)], log_dir)
    started.append(server)
    server.wait("ready", deadline, "(server startup)")
    url = f"http://127.0.0.1:{port}/bench"
    # The writer connects (and so creates the room) before the receivers: with pycrdt-websocket 0.16.5 two
    # clients connecting at once to a room that does not exist yet can leave one of them never synced.
    writer = Child("ws-writer", "bench._ws", ["client", "--role", "writer", "--url", url], log_dir)
    started.append(writer)
    writer.wait("ready", deadline, "(writer sync)")
    for name in ("ws-reader1", "ws-reader2"):
        started.append(Child(name, "bench._ws", ["client", "--role", "reader", "--url", url], log_dir))
    cluster = Cluster(writer, started[2:4], [server])
    _wait_all(cluster.readers, "ready", deadline, "(receiver sync)")
    return cluster


def start_crdtsync(log_dir: Path, deadline: Deadline, started: list[Child]) -> Cluster:
    ports = free_ports(3)
    addresses = [f"tcp://127.0.0.1:{p}" for p in ports]
    roles = ("writer", "reader", "reader")
    names = ("crdtsync-writer", "crdtsync-reader1", "crdtsync-reader2")
    for k, (name, role) in enumerate(zip(names, roles, strict=True)):
        peers = ",".join(a for j, a in enumerate(addresses) if j != k)
        args = [role, "--node-id", f"n{k + 1}", "--listen", addresses[k], "--peers", peers]
        started.append(Child(name, "bench._crdtsync", args, log_dir))
    cluster = Cluster(started[0], started[1:3])
    _wait_all(cluster.replicas, "ready", deadline, "(peers up)")
    return cluster


def crdtsync_unavailable_reason() -> str | None:
    """None if ``crdtsync.Node`` and ``crdtsync.NodeConfig`` import in a fresh interpreter."""
    probe = "import crdtsync; crdtsync.Node; crdtsync.NodeConfig"
    try:
        proc = subprocess.run(
            [sys.executable, "-c", probe], capture_output=True, text=True, timeout=IMPORT_CHECK_TIMEOUT_S
        )
    except subprocess.TimeoutExpired:
        return f"import crdtsync took more than {IMPORT_CHECK_TIMEOUT_S:.0f} s"
    if proc.returncode == 0:
        return None
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else f"import failed (rc={proc.returncode})"


# ---------------------------------------------------------------------------------------------------------
# Measured phases


@dataclass
class Snapshot:
    cpu_s: dict[str, float]
    proc_cpu_s: dict[str, float | None]
    bytes_out: dict[str, int | None]
    counters: dict[str, dict[str, int]]
    tcp: TcpSent | None


def snapshot(cluster: Cluster, deadline: Deadline) -> Snapshot:
    children = cluster.everyone
    for child in children:
        child.send("stats")
    stats = _wait_all(children, "stats", deadline, "(stats)")
    return Snapshot(
        cpu_s={c.name: float(s["user_s"]) + float(s["sys_s"]) for c, s in zip(children, stats, strict=True)},
        proc_cpu_s={c.name: proc_cpu_s(c.pid) for c in children},
        bytes_out={
            c.name: None if s["counters"].get("bytes_out") is None else int(s["counters"]["bytes_out"])
            for c, s in zip(children, stats, strict=True)
        },
        tcp=tcp_sent(c.pid for c in children),
        counters={
            c.name: {str(k): int(v) for k, v in s["counters"].items()}
            for c, s in zip(children, stats, strict=True)
        },
    )


def costs_between(s0: Snapshot, s1: Snapshot, n: int) -> Costs:
    cpu = {name: s1.cpu_s[name] - s0.cpu_s[name] for name in s0.cpu_s}
    sent: dict[str, int | None] = {}
    for name, before in s0.bytes_out.items():
        after = s1.bytes_out.get(name)
        sent[name] = None if before is None or after is None else after - before
    known = [v for v in sent.values() if v is not None]
    # A PUB frame is handed to ZeroMQ once and sent to each subscriber: count the extra copies.
    extra_copies = sum(
        (s1.counters[name].get("bytes_published", 0) - s0.counters.get(name, {}).get("bytes_published", 0))
        * (SUBSCRIBERS_PER_PUB - 1)
        for name in s1.counters
    )
    proc_values = [
        (s1.proc_cpu_s[name], s0.proc_cpu_s[name]) for name in s0.proc_cpu_s if name in s1.proc_cpu_s
    ]
    proc_total: float | None = None
    if proc_values and all(a is not None and b is not None for a, b in proc_values):
        proc_total = sum((a or 0.0) - (b or 0.0) for a, b in proc_values)
    tcp0, tcp1 = s0.tcp, s1.tcp
    return Costs(
        cpu_us_per_update=sum(cpu.values()) / n * 1e6,
        cpu_s_by_process={k: round(v, 6) for k, v in cpu.items()},
        proc_cpu_us_per_update=None if proc_total is None else proc_total / n * 1e6,
        bytes_per_update=sum(known) / n if len(known) == len(sent) else None,
        copies_bytes_per_update=(sum(known) + extra_copies) / n if len(known) == len(sent) else None,
        bytes_by_process=sent,
        tcp_bytes_per_update=None if tcp0 is None or tcp1 is None else (tcp1.payload - tcp0.payload) / n,
        ip_bytes_per_update=None if tcp0 is None or tcp1 is None else (tcp1.ip - tcp0.ip) / n,
        counters_by_process={
            name: {
                k: v if k.startswith("bench_") else v - s0.counters.get(name, {}).get(k, 0)
                for k, v in after.items()
            }
            for name, after in s1.counters.items()
        },
    )


def converged(cluster: Cluster, deadline: Deadline) -> bool:
    for child in cluster.replicas:
        child.send("digest")
    digests = _wait_all(cluster.replicas, "digest", deadline, "(digest)")
    return len({(d["sha"], d["keys"]) for d in digests}) == 1


def arm_receivers(cluster: Cluster, last: int, deadline: Deadline) -> None:
    for reader in cluster.readers:
        reader.send("expect", last=last)
    _wait_all(cluster.readers, "expecting", deadline, "(expect)")


def run_burst(cluster: Cluster, start: int, n: int, deadline: Deadline, *, measure: bool) -> BurstResult:
    arm_receivers(cluster, start + n - 1, deadline)
    s0 = snapshot(cluster, deadline) if measure else None
    cluster.writer.send("burst", start=start, n=n)
    wrote = cluster.writer.wait("wrote", deadline, f"(burst of {n})")
    dones = _wait_all(cluster.readers, "done", deadline, f"(burst of {n}: final value never arrived)")
    s1 = snapshot(cluster, deadline) if measure else None
    t0 = int(wrote["t0_ns"])
    seconds = (max(int(d["t_ns"]) for d in dones) - t0) / 1e9
    writer_seconds = (int(wrote["t1_ns"]) - t0) / 1e9
    return BurstResult(
        n=n,
        seconds=seconds,
        updates_per_s=n / seconds if seconds > 0 else math.inf,
        writer_updates_per_s=n / writer_seconds if writer_seconds > 0 else math.inf,
        converged=converged(cluster, deadline),
        costs=None if s0 is None or s1 is None else costs_between(s0, s1, n),
    )


def run_paced(cluster: Cluster, start: int, rate_hz: int, seconds: float, deadline: Deadline) -> PacedResult:
    n = max(1, round(rate_hz * seconds))
    arm_receivers(cluster, start + n - 1, deadline)
    s0 = snapshot(cluster, deadline)
    cluster.writer.send("paced", start=start, n=n, rate_hz=rate_hz)
    wrote = cluster.writer.wait("wrote", deadline, f"(paced {rate_hz}/s)")
    _wait_all(cluster.readers, "done", deadline, f"(paced {rate_hz}/s: final value never arrived)")
    s1 = snapshot(cluster, deadline)
    sends: list[int] = [int(t) for t in wrote["send_ns"]]
    latencies_ms: list[float] = []
    received = 0
    for reader in cluster.readers:
        recs: list[int] = reader.request("records", "records", deadline)["recs"]
        first: dict[int, int] = {}
        for k in range(0, len(recs) - 1, 2):
            i, t_ns = int(recs[k]), int(recs[k + 1])
            if start <= i < start + n and i not in first:
                first[i] = t_ns
        received += len(first)
        latencies_ms.extend((t_ns - sends[i - start]) / 1e6 for i, t_ns in first.items())
    latencies_ms.sort()
    span_s = (sends[-1] - sends[0]) / 1e9 if n > 1 else 0.0
    return PacedResult(
        rate_hz=rate_hz,
        n=n,
        sent_per_s=(n - 1) / span_s if span_s > 0 else math.nan,
        p50_ms=percentile(latencies_ms, 50),
        p99_ms=percentile(latencies_ms, 99),
        max_ms=latencies_ms[-1] if latencies_ms else math.nan,
        received=received,
        expected=n * len(cluster.readers),
        converged=converged(cluster, deadline),
        costs=costs_between(s0, s1, n),
    )


StartFn = Callable[[Path, Deadline, list[Child]], Cluster]


def measure_cluster(
    key: str, processes: str, start_fn: StartFn, settings: Settings, log_dir: Path
) -> SystemResult:
    result = SystemResult(key, LABELS[key], processes)
    deadline = Deadline(settings.system_timeout_s)
    started: list[Child] = []
    phase = "startup"
    try:
        cluster = start_fn(log_dir, deadline, started)
        next_i = 0
        phase = "warm-up"
        run_burst(cluster, next_i, settings.warmup_n, deadline, measure=False)
        next_i += settings.warmup_n
        phase = "burst"
        result.burst = run_burst(cluster, next_i, settings.burst_n, deadline, measure=True)
        next_i += settings.burst_n
        for rate_hz in settings.rates_hz:
            phase = f"paced {rate_hz}/s"
            paced = run_paced(cluster, next_i, rate_hz, settings.paced_s, deadline)
            result.paced[rate_hz] = paced
            next_i += paced.n
        if result.burst.costs and any(
            c.get("bench_bytes_out_derived") for c in result.burst.costs.counters_by_process.values()
        ):
            result.notes.append(
                f"{key}: status().counters has no 'bytes_out'; app bytes = bytes_published + bytes_sent"
            )
        if not all([result.burst.converged, *(p.converged for p in result.paced.values())]):
            result.notes.append(f"{key}: replicas DIVERGED after at least one phase")
    except BenchTimeoutError as exc:
        result.status = f"timed out after {settings.system_timeout_s:g} s in {phase}: {exc}"
    except BenchError as exc:
        result.status = f"failed in {phase}: {exc}"
    finally:
        close_all(started)
    return result


# ---------------------------------------------------------------------------------------------------------
# Report


def _target_ratios(results: dict[str, SystemResult]) -> dict[str, float | None]:
    def burst(key: str) -> BurstResult | None:
        res = results.get(key)
        return res.burst if res is not None and res.ok else None

    def paced(key: str, rate: int) -> PacedResult | None:
        res = results.get(key)
        return res.paced.get(rate) if res is not None and res.ok else None

    cs, ws, mesh = burst("crdtsync"), burst("websocket"), burst("mesh")
    p200, p2000 = paced("crdtsync", 200), paced("crdtsync", 2000)
    mesh200 = paced("mesh", 200)
    cs_costs = cs.costs if cs else None
    ws_costs = ws.costs if ws else None
    return {
        "throughput_vs_websocket": ratio(cs.updates_per_s if cs else None, ws.updates_per_s if ws else None),
        "throughput_vs_mesh": ratio(cs.updates_per_s if cs else None, mesh.updates_per_s if mesh else None),
        "p99_ms_200": p200.p99_ms if p200 else None,
        "p99_ms_2000": p2000.p99_ms if p2000 else None,
        "p50_200_vs_mesh": ratio(p200.p50_ms if p200 else None, mesh200.p50_ms if mesh200 else None),
        "p99_200_vs_mesh": ratio(p200.p99_ms if p200 else None, mesh200.p99_ms if mesh200 else None),
        "paced_tcp_bytes_vs_mesh": ratio(
            p200.costs.tcp_bytes_per_update if p200 else None,
            mesh200.costs.tcp_bytes_per_update if mesh200 else None,
        ),
        "cpu_vs_websocket": ratio(
            cs_costs.cpu_us_per_update if cs_costs else None, ws_costs.cpu_us_per_update if ws_costs else None
        ),
        "bytes_vs_websocket": ratio(
            cs_costs.copies_bytes_per_update if cs_costs else None,
            ws_costs.copies_bytes_per_update if ws_costs else None,
        ),
        "app_bytes_vs_websocket": ratio(
            cs_costs.bytes_per_update if cs_costs else None, ws_costs.bytes_per_update if ws_costs else None
        ),
        "tcp_bytes_vs_websocket": ratio(
            cs_costs.tcp_bytes_per_update if cs_costs else None,
            ws_costs.tcp_bytes_per_update if ws_costs else None,
        ),
        "ip_bytes_vs_websocket": ratio(
            cs_costs.ip_bytes_per_update if cs_costs else None,
            ws_costs.ip_bytes_per_update if ws_costs else None,
        ),
    }


def _verdict(value: float | None, target: float, op: str) -> str:
    if value is None or math.isnan(value):
        return "n/a"
    ok = value >= target if op == ">=" else value <= target
    return "PASS" if ok else "MISS"


def report(machine: dict[str, str], settings: Settings, results: dict[str, SystemResult]) -> dict[str, Any]:
    print("crdtsync replication benchmark" + (" (--quick)" if settings.quick else ""))
    print(f"  machine: {machine['cpu']}, {machine['cores']} cores, {machine['kernel']}, {machine['python']}")
    versions = ", ".join(
        f"{k} {machine[k]}"
        for k in ("pycrdt", "pyzmq", "libzmq", "lz4", "pycrdt-websocket", "hypercorn", "httpx-ws", "crdtsync")
    )
    print(f"  versions: {versions}")
    print(
        f"  workload: m[f'k{{i % {KEYS}}}'] = i, one transaction per write; warm-up {settings.warmup_n:,} writes,"
        f" burst {settings.burst_n:,} writes, paced {settings.paced_s:g} s at "
        + " and ".join(f"{r}/s" for r in settings.rates_hz)
    )
    for res in results.values():
        print(f"  {res.label}: {res.processes}" + ("" if res.ok else f"  -> {res.status}"))

    ok = [r for r in results.values() if r.ok and r.burst is not None]

    rows = []
    for res in ok:
        b = res.burst
        assert b is not None
        rows.append(
            [
                res.label,
                fmt(b.n),
                fmt(b.seconds, 3),
                fmt(b.updates_per_s),
                fmt(b.writer_updates_per_s),
                "yes" if b.converged else "NO",
            ]
        )
    print_table(
        "(a) Burst throughput: first write -> both receivers hold the final state",
        ["system", "updates", "seconds", "updates/s", "writer loop/s", "converged"],
        rows,
        [ISSUE_REFERENCE["throughput"]],
    )

    rows = []
    for res in ok:
        for rate, p in res.paced.items():
            rows.append(
                [
                    f"{res.label} @ {rate}/s",
                    fmt(p.sent_per_s),
                    fmt(p.p50_ms, 3),
                    fmt(p.p99_ms, 3),
                    fmt(p.max_ms, 3),
                    f"{p.received:,}/{p.expected:,}",
                ]
            )
    print_table(
        "(b) Paced latency: write -> applied at each receiver (ms, both receivers pooled)",
        ["system", "sent/s", "p50", "p99", "max", "arrived"],
        rows,
    )

    def cpu(c: Costs | None) -> str:
        return fmt(c.cpu_us_per_update, 1) if c else "-"

    rows = []
    for res in ok:
        b = res.burst
        assert b is not None
        by_proc = ""
        if b.costs and len(b.costs.cpu_s_by_process) > 1:
            by_proc = " ".join(
                f"{name.split('-')[-1]}={v / b.n * 1e6:.0f}" for name, v in b.costs.cpu_s_by_process.items()
            )
        check = b.costs.proc_cpu_us_per_update if b.costs else None
        rows.append(
            [
                res.label,
                cpu(b.costs),
                fmt(check, 0),
                *(cpu(res.paced[r].costs) if r in res.paced else "-" for r in settings.rates_hz),
                by_proc,
            ]
        )
    print_table(
        "(c) CPU per update (us, user+sys summed over all processes of the system)",
        ["system", "burst", "burst /proc", *(f"{r}/s" for r in settings.rates_hz), "burst by process (us)"],
        rows,
        [
            "burst /proc: the same window read from /proc/<pid>/stat (10 ms ticks), a cross-check",
            ISSUE_REFERENCE["cpu"],
        ],
    )

    rows = []
    for res in ok:
        phases: list[tuple[str, Costs | None]] = [("burst", res.burst.costs if res.burst else None)]
        phases += [(f"{r}/s", res.paced[r].costs) for r in settings.rates_hz if r in res.paced]
        for phase, c in phases:
            if c is None:
                continue
            rows.append(
                [
                    f"{res.label} ({phase})",
                    fmt(c.bytes_per_update, 1),
                    fmt(c.copies_bytes_per_update, 1),
                    fmt(c.tcp_bytes_per_update, 1),
                    fmt(c.ip_bytes_per_update, 1),
                ]
            )
    print_table(
        "(d) Bytes on the wire per update (sum over all processes of the system)",
        ["system (phase)", "app", "app, copies", "tcp", "ip"],
        rows,
        [
            "app: what the application handed to its transport: ZeroMQ frame payloads (a PUB message counts",
            "     once although ZeroMQ sends a copy to each of the 2 subscribers), websocket message payloads",
            "     of server and clients, crdtsync's own bytes_out counter (ZeroMQ frames)",
            f"app, copies: the same with a copy of each PUB frame for each of its {SUBSCRIBERS_PER_PUB} subscribers",
            "tcp: TCP payload bytes sent by the processes' sockets (ss -ti): every copy, protocol framing included",
            "ip:  tcp plus an IPv4+TCP header for every segment sent, pure ACKs included (loopback packets)",
            "the targets use app bytes with every copy and tcp bytes; the ratios of the others are printed",
            ISSUE_REFERENCE["bytes"],
        ],
    )

    ratios = _target_ratios(results)
    rows = []
    for key, label, target, op in TARGETS:
        value = ratios[key]
        rows.append([label, fmt(value, 3), f"{op} {target:.3g}", _verdict(value, target, op)])
        rows += [
            [info_label, fmt(ratios[info_key], 3), "", ""]
            for info_key, info_label, follows in INFO_RATIOS
            if follows == key
        ]
    print_table("Targets (from the issue)", ["ratio", "value", "target", "verdict"], rows)

    notes = [n for r in results.values() for n in r.notes]
    failures = [f"{r.label}: {r.status}" for r in results.values() if not r.ok]
    if notes or failures:
        print()
        for line in [*failures, *notes]:
            print(f"note: {line}")

    return {
        "machine": machine,
        "settings": asdict(settings),
        "systems": {k: {**asdict(v), "ok": v.ok} for k, v in results.items()},
        "ratios": {
            key: {"label": label, "value": ratios[key], "target": target, "op": op}
            | {"verdict": _verdict(ratios[key], target, op)}
            for key, label, target, op in TARGETS
        }
        | {key: {"label": label.strip(), "value": ratios[key]} for key, label, _follows in INFO_RATIOS},
    }


# ---------------------------------------------------------------------------------------------------------
# Main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.replication", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small N, 1 s of paced writes (< 60 s in all)")
    parser.add_argument("--json", metavar="OUT", type=Path, help="also write every figure as JSON to OUT")
    parser.add_argument(
        "--systems",
        default=",".join(SYSTEMS),
        help=f"comma-separated subset of {','.join(SYSTEMS)} (default: all)",
    )
    parser.add_argument("--burst-n", type=int, help="burst writes (default 20000, --quick 5000)")
    parser.add_argument(
        "--paced-s", type=float, help="seconds of paced writes per rate (default 5, --quick 1)"
    )
    parser.add_argument("--timeout-s", type=float, help="deadline per system (default 120, --quick 40)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    systems = [s.strip() for s in str(args.systems).split(",") if s.strip()]
    unknown = [s for s in systems if s not in SYSTEMS]
    if unknown:
        print(f"unknown system(s): {', '.join(unknown)}; choose from {', '.join(SYSTEMS)}", file=sys.stderr)
        return 2
    quick = bool(args.quick)
    settings = Settings(
        quick=quick,
        burst_n=args.burst_n or (5000 if quick else 20_000),
        warmup_n=KEYS,
        paced_s=args.paced_s or (1.0 if quick else 5.0),
        apply_n=20_000 if quick else 100_000,
        system_timeout_s=args.timeout_s or (40.0 if quick else 120.0),
    )
    machine = machine_info()
    log_dir = Path(tempfile.mkdtemp(prefix="crdtsync-bench-"))
    results: dict[str, SystemResult] = {}
    try:
        for key in SYSTEMS:
            if key not in systems:
                continue
            print(f"... measuring {LABELS[key]}", file=sys.stderr, flush=True)
            if key == "apply":
                results[key] = measure_apply(settings.apply_n)
            elif key == "mesh":
                results[key] = measure_cluster(
                    key, "3 processes: writer + 2 receivers, PUB/SUB full mesh", start_mesh, settings, log_dir
                )
            elif key == "websocket":
                results[key] = measure_cluster(
                    key,
                    "4 processes: hub server (hypercorn + WebsocketServer) + 3 Provider clients"
                    " (writer + 2 receivers); CPU and bytes include the server",
                    start_websocket,
                    settings,
                    log_dir,
                )
            else:
                processes = "3 processes: crdtsync.Node each (writer + 2 receivers)"
                reason = crdtsync_unavailable_reason()
                if reason is not None:
                    results[key] = SystemResult(key, LABELS[key], processes, status=f"unavailable: {reason}")
                else:
                    results[key] = measure_cluster(key, processes, start_crdtsync, settings, log_dir)
        summary = report(machine, settings, results)
        if args.json is not None:
            write_json(args.json, summary)
    finally:
        failed = [r for r in results.values() if not r.ok and not r.status.startswith("unavailable")]
        if failed:
            print(f"\nchild logs kept in {log_dir}", file=sys.stderr)
        else:
            shutil.rmtree(log_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
