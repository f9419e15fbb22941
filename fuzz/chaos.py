"""Chaos campaign: real `crdtsync serve` daemons keep every acknowledged write through kills, pauses
and restarts.

N daemons (default 6) run as OS processes on 127.0.0.1 in K datacenters (default 2, contiguous blocks
named dc0, dc1, ...), each with its own SQLite data dir (durability fsync), plaintext replication links
(CurveZMQ with --curve: a key pair per node, every member's key configured) and short timers. Every node is given two seeds only, the first node of dc0 and the first of dc1 (with
one datacenter, its first two nodes): gossip membership must find the rest.

For --minutes, writers PUT JSON values over HTTP to the running nodes, a few per second per node:
unique keys (docs chaos/log-*, key NODE-SEQ) whose acknowledgements are recorded, and contended keys
of the doc chaos/shared that every node writes. Meanwhile faults hit random nodes: SIGKILL then a
restart on the same data dir after a random downtime, SIGSTOP for 0.5-5 s then SIGCONT, SIGTERM then
a restart; never more than (N-1)//2 nodes at once. Every random choice derives from --seed: the same
seed replays the same schedule of faults and writes (the daemons' own timing still varies).

--faults adds network faults (fuzz.chaos_network: a fault proxy on every link) and disk faults
(fuzz.chaos_disk: data dirs on small tmpfs that fill up, I/O errors, kill -9 during backups and
restores). Then everything heals (SIGCONT, restarts, disks freed) and, within 90 s, every node must
hold the same Merkle root, every acknowledged unique write with its value and the same contended
doc, and list every other node as an alive member. No daemon may exit unless the campaign killed or stopped it, and each daemon's
resident memory must stay under --rss-mb at every progress tick. Exit status 1 otherwise; the work dir
(data dirs and daemon logs) is kept then.

    python -m fuzz.chaos --minutes 2 --seed 7
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import httpx

from crdtsync.testing._processes import STACK_DUMP_TIMEOUT_S
from crdtsync.testing.cluster import LocalCluster, LocalDaemon, ignore_signals, log_tail, plan_daemons
from fuzz._runner import rss_mb_of
from fuzz.chaos_disk import DiskFaults, DiskSummary
from fuzz.chaos_network import NetworkFaults, NetworkSummary
from fuzz.chaos_report import MISSING_MATPLOTLIB, Timeline, write_png

FAST_REPLICATION: dict[str, int] = {
    "hello_interval_ms": 100,
    "tick_interval_ms": 20,
    "ae_interval_ms": 500,
    "heartbeat_interval_ms": 300,
    "leave_drain_ms": 3000,
}
"""Short replication timers (the integration tests' daemons use them too). A SIGTERM'd node hands
its docs over for at most leave_drain_ms (placement narrower than "all", the default since rf 3):
at the end every node stops at once, none is left to take them, and each would wait the default
30 s, past STOP_TIMEOUT_S."""
FAST_MEMBERSHIP: dict[str, int] = {
    "gossip_interval_ms": 300,
    "acceptable_pause_ms": 300,
    "down_after_suspect_ms": 500,
}
FAULT_KINDS = ("kill", "stop", "term")
FAULT_SETS = ("process", "network", "wan", "disk")
"""--faults: process (SIGKILL, SIGSTOP, SIGTERM), network (every replication byte through a fault
proxy: WAN latency and caps between datacenters, partitions of every shape, resets, degraded links),
wan (the proxy with the WAN's latency and caps only), disk (data dirs on small tmpfs: full disks,
I/O errors, kill -9 during a backup and during a restore)."""
WARMUP_S = 3.0
"""Seconds of writes before the first fault."""
FAULT_GAP_S = (1.0, 5.0)
"""Between the planned starts of two faults."""
PAUSE_S = (0.5, 5.0)
"""How long SIGSTOP lasts."""
DOWNTIME_S = (0.5, 5.0)
"""From SIGKILL, or from the exit after SIGTERM, to the restart."""
RESTART_ALLOWANCE_S = 5.0
"""What the plan reserves for a restarted daemon to answer /health before its node may be hit again."""
FAULT_SLOT_WAIT_S = 30.0
"""How long a fault that is due waits for its node to be up and for the faulty-node bound; then it is
skipped (a restart that took longer than planned)."""
FAULTS_MAX = 10_000
WRITES_PER_S_PER_NODE = 3.0
UNIQUE_SHARE = 0.7
"""Of the writes, those to unique keys (checked by value); the rest go to the contended keys."""
CONTENDED_KEYS = 8
SHARED_DOC = "chaos/shared"
LOG_KEYS_PER_DOC = 500
"""Unique keys per log doc (chaos/log-0, chaos/log-1, ...), so that no doc grows without bound."""
BURST_WRITES = (4, 16)
"""Writes sent at once to the victim of a kill or a term, just before the signal: some are answered
before it lands, and every one answered 200 must survive."""
BURST_LEAD_S = (0.0, 0.03)
"""From the start of that burst to the signal."""
BURST_DOC_PREFIX = "chaos/burst-"
IN_FLIGHT_PER_NODE = 4
"""Writes awaiting an answer, per node of the cluster; the writer waits for a slot beyond."""
REQUEST_TIMEOUT_S = 5.0
STATUS_TIMEOUT_S = 2.0
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0
MESH_TIMEOUT_S = 60.0
"""At start: until every node lists every other as an alive member."""
CONVERGE_TIMEOUT_S = 90.0
POLL_S = 0.1
CHECK_INTERVAL_S = 0.5
PROGRESS_INTERVAL_S = 5.0
EXIT_CHECK_INTERVAL_S = 0.2
RUN_SLACK_S = 600.0
"""More than the start, the heal and the convergence wait can take together, all bounded."""
LOG_TAIL_LINES = 30
PROBLEMS_SHOWN_MAX = 20

LIVE_STATES = frozenset({"starting", "running", "stopped"})
"""States in which the process must not exit on its own."""


class ChaosError(Exception):
    """The campaign cannot go on (a daemon that never came up, gossip that never completed)."""


@dataclass(frozen=True, slots=True)
class Fault:
    at_s: float
    """Planned start, in seconds after the faults phase started."""
    kind: str
    node: int
    duration_s: float
    """The pause (stop) or the downtime before the restart (kill, term)."""


@dataclass(frozen=True, slots=True)
class Write:
    seq: int
    doc: str
    key: str
    value: dict[str, Any]
    unique: bool


@dataclass(kw_only=True)
class Daemon(LocalDaemon):
    state: str = "new"
    """new, starting, running, stopped (SIGSTOP), killed (SIGKILL), terminating (SIGTERM sent), down
    (exited after SIGTERM), crashed (exited on its own), ended (stopped at the end)."""
    faulty: bool = False
    """A fault holds it: from the signal until it answers /health again."""
    disturbed: int = 0
    """Faults and crashes so far: a write answered other than 200 is a finding only if this did not change."""
    rss_mb_max: float = 0.0

    @property
    def available(self) -> bool:
        return self.state == "running" and not self.faulty


@dataclass
class Summary:
    seed: int
    seconds: float
    nodes: int
    datacenters: int
    rss_limit_mb: float
    curve: bool = False
    work_dir: str = ""
    fault_sets: tuple[str, ...] = ("process",)
    network: NetworkSummary | None = None
    disk: DiskSummary | None = None
    timeline: Timeline | None = None
    writes_acked: int = 0
    writes_failed: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    """Failed writes by reason: refused, timeout, dropped, HTTP status."""
    burst_writes: int = 0
    """Writes sent to the victim of a kill or term just before the signal (counted in the above too)."""
    burst_acked: int = 0
    writes_unsent: int = 0
    """Writes due while no node was up to take them."""
    faults: Counter[str] = field(default_factory=Counter)
    faults_skipped: int = 0
    converged_after_s: float | None = None
    """From the end of the heal (every daemon answering /health) to the first check that held."""
    rss_mb_max: float = 0.0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def minutes(self) -> str:
        """--minutes as typed, or exactly enough digits to give the same seconds back."""
        short = f"{self.seconds / 60.0:g}"
        return short if float(short) * 60.0 == self.seconds else repr(self.seconds / 60.0)

    def replay_command(self) -> str:
        return (
            f"python -m fuzz.chaos --minutes {self.minutes} --seed {self.seed} "
            f"--nodes {self.nodes} --datacenters {self.datacenters} --rss-mb {self.rss_limit_mb:g}"
            + (" --curve" if self.curve else "")
            + (f" --faults {','.join(self.fault_sets)}" if self.fault_sets != ("process",) else "")
        )

    def __str__(self) -> str:
        reasons = ", ".join(f"{count} {reason}" for reason, count in sorted(self.failures.items()))
        kinds = ", ".join(f"{kind} {self.faults[kind]}" for kind in FAULT_KINDS)
        converged = (
            f"converged {self.converged_after_s:.1f} s after the heal"
            if self.converged_after_s is not None
            else "did NOT converge"
        )
        lines = [
            f"chaos seed={self.seed}: {self.seconds / 60.0:.3g} min of faults, {self.nodes} nodes in "
            f"{self.datacenters} datacenter{'s' if self.datacenters > 1 else ''}"
            + (", CurveZMQ links" if self.curve else ", plaintext links"),
            f"  writes: {self.writes_acked} acknowledged, {self.writes_failed} failed"
            + (f" ({reasons})" if reasons else "")
            + (f", {self.writes_unsent} not sent (no node up)" if self.writes_unsent else "")
            + f"; {self.burst_writes} sent to a victim just before its kill or term, {self.burst_acked} of those"
            " acknowledged",
            f"  faults: {sum(self.faults.values())} ({kinds})"
            + (f", {self.faults_skipped} skipped" if self.faults_skipped else ""),
            *(self.network.lines() if self.network is not None else []),
            *(self.disk.lines() if self.disk is not None else []),
            f"  {converged}",
            f"  max RSS {self.rss_mb_max:.0f} MB (limit {self.rss_limit_mb:.0f} MB)",
        ]
        if self.ok:
            lines.append("  verdict: OK")
        else:
            shown = self.problems[:PROBLEMS_SHOWN_MAX]
            more = len(self.problems) - len(shown)
            lines.append(f"  verdict: FAIL, {len(self.problems)} problems:")
            lines += [f"    {problem}" for problem in shown]
            if more:
                lines.append(f"    ... and {more} more")
            lines.append(f"  replay: {self.replay_command()}")
            lines.append(f"  data dirs and daemon logs: {self.work_dir}")
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- plan


def plan_faults(rng: random.Random, seconds: float, nodes: int, faulty_max: int) -> list[Fault]:
    """The faults of a run, in order of start. Kinds come in shuffled rounds of all three, so that a
    run with three faults or more has every kind. At no planned moment are more than `faulty_max`
    nodes under a fault (a kill or term counts until its restart is allowed to answer /health)."""
    if faulty_max < 1:
        return []
    faults: list[Fault] = []
    busy_until = [0.0] * nodes
    kinds: list[str] = []
    at_s = WARMUP_S
    for _ in range(FAULTS_MAX):
        at_s += rng.uniform(*FAULT_GAP_S)
        busy = sorted(until for until in busy_until if until > at_s)
        if len(busy) >= faulty_max:
            at_s = busy[len(busy) - faulty_max]  # when enough of them are back
        if at_s >= seconds - 1.0:
            break
        if not kinds:
            kinds = rng.sample(FAULT_KINDS, len(FAULT_KINDS))
        kind = kinds.pop()
        node = rng.choice([index for index in range(nodes) if busy_until[index] <= at_s])
        duration_s = rng.uniform(*(PAUSE_S if kind == "stop" else DOWNTIME_S))
        busy_until[node] = at_s + duration_s + (0.0 if kind == "stop" else RESTART_ALLOWANCE_S)
        faults.append(Fault(at_s, kind, node, duration_s))
    return faults


def datacenter_of(index: int, nodes: int, datacenters: int) -> int:
    """Contiguous blocks, like crdtsync.sim: with 6 nodes in 2 datacenters, n0-n2 in dc0, n3-n5 in dc1."""
    return index * datacenters // nodes


def seed_indexes(nodes: int, datacenters: int) -> list[int]:
    """The first node of dc0 and the first of dc1; with one datacenter, its first two nodes."""
    if datacenters < 2:
        return [0, 1]
    return [0, next(i for i in range(nodes) if datacenter_of(i, nodes, datacenters) == 1)]


# ---------------------------------------------------------------------------------------------- campaign


class Campaign:
    def __init__(
        self,
        seconds: float,
        seed: int,
        nodes: int,
        datacenters: int,
        rss_limit_mb: float,
        root: str,
        *,
        curve: bool = False,
        fault_sets: tuple[str, ...] = ("process",),
    ) -> None:
        self.seconds = seconds
        self.root = root
        self.rss_limit_mb = rss_limit_mb
        rng = random.Random(seed)
        # Two streams, so that the writes drawn do not depend on how many faults were planned.
        self.faults = plan_faults(random.Random(rng.getrandbits(64)), seconds, nodes, (nodes - 1) // 2)
        self.write_rng = random.Random(rng.getrandbits(64))
        burst_rng = random.Random(rng.getrandbits(64))
        self.bursts = [
            (burst_rng.randint(*BURST_WRITES), burst_rng.uniform(*BURST_LEAD_S)) for _fault in self.faults
        ]
        """(writes, lead) of the burst before each fault of the plan (used by kills and terms)."""
        # Drawn after the others, so that a process-only seed replays as it did before networks,
        # and a network seed as it did before disks.
        network_rng = random.Random(rng.getrandbits(64))
        disk_rng = random.Random(rng.getrandbits(64))
        if "process" not in fault_sets:
            self.faults = []
        self.faulty_max = (nodes - 1) // 2
        self.summary = Summary(
            seed, seconds, nodes, datacenters, rss_limit_mb, curve=curve, work_dir=root, fault_sets=fault_sets
        )
        names = [f"n{index}" for index in range(nodes)]
        daemons = plan_daemons(
            Daemon,
            root,
            names,
            dcs={name: f"dc{datacenter_of(index, nodes, datacenters)}" for index, name in enumerate(names)},
            seeds=[names[index] for index in seed_indexes(nodes, datacenters)],
        )
        self.cluster = LocalCluster(
            root,
            daemons,
            curve=curve,
            extra_args=["--log-level", "info"],
            settings={"replication": FAST_REPLICATION, "membership": FAST_MEMBERSHIP},
            note="fuzz.chaos",
        )
        self.daemons = daemons
        self.timeline = Timeline(names)
        self.summary.timeline = self.timeline
        self.network: NetworkFaults | None = None
        """The fault proxy every replication byte crosses (--faults network or wan)."""
        if "network" in fault_sets or "wan" in fault_sets:
            self.network = NetworkFaults(self, network_rng, seed, partitions="network" in fault_sets)
            self.summary.network = self.network.summary
        self.disk: DiskFaults | None = None
        """Data dirs on small disks and the disk schedule (--faults disk)."""
        if "disk" in fault_sets:
            self.disk = DiskFaults(self, disk_rng)
            self.summary.disk = self.disk.summary
        self.started = time.monotonic()
        self.phase = "starting"
        self.acked: list[Write] = []
        self.contended: dict[int, Write] = {}
        """Every contended write sent, by seq: a value at the end must be one of them."""
        self.log_docs: set[str] = set()
        self.problems = self.summary.problems
        self.heal = asyncio.Event()
        self.client = httpx.AsyncClient(
            trust_env=False,
            timeout=REQUEST_TIMEOUT_S,
            # A new connection per request: a kept-alive one to a killed daemon would fail the next write.
            limits=httpx.Limits(
                max_connections=IN_FLIGHT_PER_NODE * nodes + 4 * nodes, max_keepalive_connections=0
            ),
        )

    # ------------------------------------------------------------------ output

    def say(self, text: str) -> None:
        elapsed_s = time.monotonic() - self.started
        print(f"{time.strftime('%H:%M:%S')} {elapsed_s:7.1f}s  {text}", flush=True)

    def problem(self, text: str, detail: str = "") -> None:
        self.problems.append(text)
        self.say(f"PROBLEM: {text}" + (f"\n{detail}" if detail else ""))

    # ------------------------------------------------------------------ processes (synchronous)

    def spawn(self, daemon: Daemon) -> None:
        daemon.spawn(
            self.cluster.serve_args(daemon), f"fuzz.chaos: start {daemon.starts + 1} of {daemon.name}"
        )
        daemon.state = "starting"

    def signal_daemon(self, daemon: Daemon, signum: signal.Signals, state: str) -> None:
        """Send `signum` and record the state it leads to, with no await in between: the exit watcher
        must never see a process the campaign killed as still expected to live."""
        assert daemon.process is not None
        daemon.state = state
        daemon.disturbed += 1
        with contextlib.suppress(ProcessLookupError):
            os.kill(daemon.process.pid, signum)

    def check_exit(self, daemon: Daemon) -> bool:
        """Whether the daemon exited on its own (reported once, as a finding, with its log's end)."""
        if daemon.state not in LIVE_STATES or daemon.process is None:
            return False
        code = daemon.process.poll()
        if code is None:
            return False
        daemon.state = "crashed"
        daemon.disturbed += 1
        self.problem(
            f"{daemon.name} (pid {daemon.process.pid}) exited with status {code} while the campaign did "
            f"not kill or stop it; log {daemon.log_path}",
            log_tail(daemon.log_path, LOG_TAIL_LINES),
        )
        return True

    def stop_all(self) -> None:
        """SIGCONT and SIGTERM every daemon still running, SIGKILL those not gone within STOP_TIMEOUT_S."""
        by_name = {daemon.name: daemon for daemon in self.daemons}
        for name, status in self.cluster.stop_all(STOP_TIMEOUT_S):
            daemon = by_name[name]
            if status is None:
                self.problem(f"{name} did not stop within {STOP_TIMEOUT_S:.0f} s of SIGTERM at the end")
            elif status != 0 and daemon.state == "running":
                self.problem(
                    f"{name} exited with status {status} on SIGTERM at the end",
                    log_tail(daemon.log_path, LOG_TAIL_LINES),
                )
            daemon.state = "ended"

    # ------------------------------------------------------------------ HTTP

    async def get_json(self, daemon: Daemon, path: str) -> Any:
        """The JSON answer, {} for a 404 (a doc the node does not hold), None when there is none."""
        try:
            response = await self.client.get(daemon.url + path, timeout=STATUS_TIMEOUT_S)
            if response.status_code == 404:
                return {}
            if response.status_code != 200:
                return None
            return response.json()
        except (httpx.HTTPError, ValueError):
            return None

    async def healthy(self, daemon: Daemon) -> bool:
        try:
            return daemon.healthy(await self.client.get(daemon.url + "/health", timeout=1.0))
        except httpx.HTTPError:
            return False

    async def wait_healthy(self, daemon: Daemon) -> bool:
        """Until the started daemon answers /health: then it is running. False if it exited or did not
        answer within START_TIMEOUT_S (both findings)."""
        started = time.monotonic()
        for _ in range(int(START_TIMEOUT_S / POLL_S) + 1):
            if self.check_exit(daemon):
                return False
            if daemon.state != "starting":
                return False  # the heal took it over, or it ended
            if await self.healthy(daemon):
                daemon.state = "running"
                return True
            if time.monotonic() - started > START_TIMEOUT_S:
                break
            await asyncio.sleep(POLL_S)
        self.problem(
            f"{daemon.name} (pid {daemon.pid}) did not answer /health within {START_TIMEOUT_S:.0f} s of its start",
            log_tail(daemon.log_path, LOG_TAIL_LINES),
        )
        return False

    async def wait_exit(self, daemon: Daemon, timeout_s: float) -> int | None:
        assert daemon.process is not None
        deadline = time.monotonic() + timeout_s
        for _ in range(int(timeout_s / POLL_S) + 2):
            code = daemon.process.poll()
            if code is not None or time.monotonic() > deadline:
                return code
            await asyncio.sleep(POLL_S)
        return daemon.process.poll()

    # ------------------------------------------------------------------ writes

    def next_write(self, seq: int) -> tuple[int, Write]:
        """The node slot and the write of number `seq`; the key names the node later, when it is known."""
        rng = self.write_rng
        slot = rng.randrange(len(self.daemons))
        token = rng.getrandbits(40)
        if rng.random() < UNIQUE_SHARE:
            doc = f"chaos/log-{seq // LOG_KEYS_PER_DOC}"
            return slot, Write(seq, doc, "", {"seq": seq, "n": token}, unique=True)
        key = f"k{rng.randrange(CONTENDED_KEYS)}"
        return slot, Write(seq, SHARED_DOC, key, {"seq": seq, "n": token}, unique=False)

    def target(self, slot: int) -> Daemon | None:
        """The drawn node if it is up, else the next one up after it (in index order)."""
        count = len(self.daemons)
        for offset in range(count):
            daemon = self.daemons[(slot + offset) % count]
            if daemon.available:
                return daemon
        return None

    async def send(self, daemon: Daemon, write: Write) -> str:
        """PUT the write; what the client saw: "200" (acknowledged), or the reason it failed."""
        disturbed = daemon.disturbed
        try:
            response = await self.client.put(
                f"{daemon.url}/v1/docs/{write.doc}/keys/{write.key}", json=write.value
            )
        except httpx.TimeoutException:
            return self.fail_write("timeout")
        except httpx.ConnectError:
            return self.fail_write("refused")
        except httpx.HTTPError:
            return self.fail_write("dropped")
        if response.status_code == 200:
            self.summary.writes_acked += 1
            self.timeline.write(True)
            if write.doc.startswith(BURST_DOC_PREFIX):
                self.summary.burst_acked += 1
            if write.unique:
                self.acked.append(write)
            return "200"
        reason = self.fail_write(f"HTTP {response.status_code}")
        if daemon.disturbed == disturbed and daemon.available:
            self.problem(
                f"{daemon.name} answered {response.status_code} to PUT {write.doc}/{write.key} while no "
                f"fault touched it: {response.text[:200]}"
            )
        return reason

    def fail_write(self, reason: str) -> str:
        self.summary.writes_failed += 1
        self.summary.failures[reason] += 1
        self.timeline.write(False)
        return reason

    async def writer(self, stop_at: float) -> None:
        """Writes at WRITES_PER_S_PER_NODE per node on average (exponential gaps), to the drawn node or
        the next one up; at most IN_FLIGHT_PER_NODE per node awaiting an answer."""
        rate_hz = WRITES_PER_S_PER_NODE * len(self.daemons)
        slots = asyncio.Semaphore(IN_FLIGHT_PER_NODE * len(self.daemons))
        in_flight: set[asyncio.Task[None]] = set()
        errors: list[BaseException] = []

        async def send_and_release(daemon: Daemon, write: Write) -> None:
            try:
                await self.send(daemon, write)
            except Exception as exc:  # a bug here must fail the run, not vanish with its task
                errors.append(exc)
            finally:
                slots.release()

        due = time.monotonic()
        try:
            for seq in range(int(self.seconds * rate_hz * 4) + 100):
                due += self.write_rng.expovariate(rate_hz)
                slot, write = self.next_write(seq)
                if due >= stop_at:
                    break
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                await slots.acquire()
                daemon = self.target(slot)
                if daemon is None:
                    slots.release()
                    self.summary.writes_unsent += 1
                    continue
                if write.unique:
                    write = Write(write.seq, write.doc, f"{daemon.name}-{write.seq:06d}", write.value, True)
                    self.log_docs.add(write.doc)
                else:
                    write = Write(write.seq, write.doc, write.key, {**write.value, "by": daemon.name}, False)
                    self.contended[write.seq] = write
                task = asyncio.create_task(send_and_release(daemon, write))
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
            # The answers still count (a paused node answers once the heal resumes it): wait for them
            # within the request timeout.
            if in_flight:
                await asyncio.wait(list(in_flight), timeout=REQUEST_TIMEOUT_S + STOP_TIMEOUT_S)
            if errors:
                raise errors[0]
        finally:
            late = list(in_flight)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)

    # ------------------------------------------------------------------ faults

    async def wait_for_heal(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.heal.wait(), seconds)

    async def burst(self, daemon: Daemon, fault_index: int) -> list[asyncio.Task[str]]:
        """Send the burst planned for this fault to its victim; return once its lead has passed, with
        the requests still in flight."""
        count, lead_s = self.bursts[fault_index]
        doc = f"{BURST_DOC_PREFIX}{fault_index // LOG_KEYS_PER_DOC}"
        self.log_docs.add(doc)
        writes = [
            Write(i, doc, f"{daemon.name}-f{fault_index}-{i}", {"fault": fault_index, "i": i}, unique=True)
            for i in range(count)
        ]
        self.summary.burst_writes += count
        tasks = [asyncio.create_task(self.send(daemon, write)) for write in writes]
        await asyncio.sleep(lead_s)
        return tasks

    async def take_slot(self, daemon: Daemon, wait_s: float) -> bool:
        """Wait up to `wait_s` until `daemon` is up and the faulty-node bound allows one more, then
        mark it faulty (the caller clears that). False when the time ran out or the heal began."""
        for _ in range(int(wait_s / POLL_S) + 1):
            if self.heal.is_set():
                return False
            faulty_now = sum(1 for d in self.daemons if not d.available)
            if daemon.available and faulty_now < self.faulty_max:
                daemon.faulty = True  # no await since the check: the bound holds
                return True
            await asyncio.sleep(POLL_S)
        return False

    async def run_fault(self, fault: Fault, fault_index: int) -> None:
        daemon = self.daemons[fault.node]
        if not await self.take_slot(daemon, FAULT_SLOT_WAIT_S):
            if not self.heal.is_set():
                self.summary.faults_skipped += 1
                self.say(
                    f"skip the {fault.kind} of {daemon.name}: it is not up, or too many nodes are faulty"
                )
            return
        self.summary.faults[fault.kind] += 1
        spans = self.timeline.begin(daemon.name, fault.kind)
        pid = daemon.pid
        try:
            if fault.kind == "stop":
                self.signal_daemon(daemon, signal.SIGSTOP, "stopped")
                self.say(f"SIGSTOP {daemon.name} (pid {pid}) for {fault.duration_s:.1f} s")
                await self.wait_for_heal(fault.duration_s)
                if daemon.state == "stopped":
                    self.signal_daemon(daemon, signal.SIGCONT, "running")
                    self.say(f"SIGCONT {daemon.name} (pid {pid})")
                return
            in_flight = await self.burst(daemon, fault_index)
            if fault.kind == "kill":
                self.signal_daemon(daemon, signal.SIGKILL, "killed")
                assert daemon.process is not None
                daemon.process.wait(timeout=STOP_TIMEOUT_S)  # at once: SIGKILL cannot be caught
                self.say(f"kill -9 {daemon.name} (pid {pid}); restart in {fault.duration_s:.1f} s")
            else:
                self.signal_daemon(daemon, signal.SIGTERM, "terminating")
                sent = time.monotonic()
                code = await self.wait_exit(daemon, STOP_TIMEOUT_S)
                if code is None:
                    self.signal_daemon(daemon, signal.SIGABRT, "terminating")  # its stacks to its log
                    await self.wait_exit(daemon, STACK_DUMP_TIMEOUT_S)
                    self.problem(
                        f"{daemon.name} (pid {pid}) did not exit within {STOP_TIMEOUT_S:.0f} s of SIGTERM",
                        log_tail(daemon.log_path, LOG_TAIL_LINES),
                    )
                    self.signal_daemon(daemon, signal.SIGKILL, "terminating")
                    assert daemon.process is not None
                    daemon.process.wait(timeout=STOP_TIMEOUT_S)
                elif code != 0:
                    self.problem(
                        f"{daemon.name} (pid {pid}) exited with status {code} on SIGTERM",
                        log_tail(daemon.log_path, LOG_TAIL_LINES),
                    )
                daemon.state = "down"
                self.say(
                    f"SIGTERM {daemon.name} (pid {pid}): exited with status {code} after "
                    f"{time.monotonic() - sent:.1f} s; restart in {fault.duration_s:.1f} s"
                )
            # Answered or failed by now (the process is gone): their answers count before the restart.
            await asyncio.wait(in_flight, timeout=REQUEST_TIMEOUT_S)
            await self.wait_for_heal(fault.duration_s)
            self.spawn(daemon)
            restarted = time.monotonic()
            self.say(f"restart {daemon.name} (pid {daemon.pid}) on its data dir")
            if await self.wait_healthy(daemon):
                self.say(
                    f"{daemon.name} answers /health {time.monotonic() - restarted:.1f} s after its restart"
                )
        finally:
            self.timeline.end(spans)
            daemon.faulty = False

    async def fault_schedule(self, started: float) -> None:
        tasks: list[asyncio.Task[None]] = []
        try:
            for fault_index, fault in enumerate(self.faults):
                await self.wait_for_heal(max(0.0, started + fault.at_s - time.monotonic()))
                if self.heal.is_set():
                    break
                _raise_failure(task for task in tasks if task.done())
                tasks = [task for task in tasks if not task.done()]
                tasks.append(asyncio.create_task(self.run_fault(fault, fault_index)))
            await self.heal.wait()
            # Each fault ends itself at once when the heal starts: resumes or restarts its node.
            if tasks:
                done, _ = await asyncio.wait(tasks, timeout=STOP_TIMEOUT_S + START_TIMEOUT_S + 5.0)
                _raise_failure(done)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    # ------------------------------------------------------------------ monitor

    def progress_line(self) -> str:
        by_state: dict[str, list[str]] = {}
        for daemon in self.daemons:
            by_state.setdefault("up" if daemon.state == "running" else daemon.state, []).append(daemon.name)
        nodes = "; ".join(f"{state} {' '.join(names)}" for state, names in by_state.items())
        kinds = ", ".join(f"{kind} {self.summary.faults[kind]}" for kind in FAULT_KINDS)
        return (
            f"[{self.phase}] writes {self.summary.writes_acked} acked, {self.summary.writes_failed} failed | "
            f"faults {kinds} | {nodes} | max RSS {self.summary.rss_mb_max:.0f} MB"
        )

    def sample_rss(self) -> None:
        for daemon in self.daemons:
            if daemon.process is None or daemon.state not in (LIVE_STATES | {"terminating"}):
                continue
            rss_mb = rss_mb_of(daemon.process.pid)
            if rss_mb is None:
                continue
            self.summary.rss_mb_max = max(self.summary.rss_mb_max, rss_mb)
            if rss_mb > self.rss_limit_mb and daemon.rss_mb_max <= self.rss_limit_mb:
                self.problem(
                    f"{daemon.name} (pid {daemon.process.pid}) holds {rss_mb:.0f} MB resident, over "
                    f"{self.rss_limit_mb:.0f} MB"
                )
            daemon.rss_mb_max = max(daemon.rss_mb_max, rss_mb)

    async def monitor(self) -> None:
        """Watches for daemons that exit on their own; every PROGRESS_INTERVAL_S, samples resident
        memory and prints a progress line. Runs until cancelled, or for as long as a run can last."""
        next_progress = time.monotonic()
        for _ in range(int((self.seconds + RUN_SLACK_S) / EXIT_CHECK_INTERVAL_S)):
            for daemon in self.daemons:
                self.check_exit(daemon)
            if time.monotonic() >= next_progress:
                next_progress += PROGRESS_INTERVAL_S
                self.sample_rss()
                self.say(self.progress_line())
            await asyncio.sleep(EXIT_CHECK_INTERVAL_S)

    # ------------------------------------------------------------------ checks

    def membership_gaps(self, statuses: list[Any]) -> list[str]:
        """Nodes that do not list every other node as an alive member."""
        gaps = []
        for daemon, status in zip(self.daemons, statuses, strict=True):
            if not isinstance(status, dict):
                gaps.append(f"{daemon.name} does not answer /v1/status")
                continue
            states = {
                member.get("node_id"): member.get("state")
                for member in status.get("members", [])
                if isinstance(member, dict)
            }
            wrong = [
                f"{other.name} {states.get(other.name, 'unknown')}"
                for other in self.daemons
                if other is not daemon and states.get(other.name) != "alive"
            ]
            if wrong:
                gaps.append(f"{daemon.name} sees {', '.join(wrong)}")
        return gaps

    async def statuses(self) -> list[Any]:
        return list(await asyncio.gather(*(self.get_json(d, "/v1/status") for d in self.daemons)))

    async def divergences(
        self, full: bool, roots_seen: list[tuple[float, dict[str, str]]] | None = None
    ) -> list[str]:
        """What keeps the cluster from having converged; empty when it has. Unless `full`, the docs are
        read only once the Merkle roots and the membership agree (the cheap check comes first).
        Each node's root is appended to `roots_seen` with the time."""
        statuses = await self.statuses()
        problems = self.membership_gaps(statuses)
        roots: dict[str, list[str]] = {}
        for daemon, status in zip(self.daemons, statuses, strict=True):
            if isinstance(status, dict):
                roots.setdefault(str(status.get("merkle_root")), []).append(daemon.name)
        if roots_seen is not None:
            at_s = self.timeline.now_s()
            roots_seen.append((at_s, {name: root for root, names in roots.items() for name in names}))
        if len(roots) > 1:
            problems.append(
                "merkle roots differ: "
                + "; ".join(f"{root[:12]} on {' '.join(n)}" for root, n in roots.items())
            )
        if problems and not full:
            return problems
        docs = [*sorted(self.log_docs), SHARED_DOC]
        answers = await asyncio.gather(
            *(self.get_json(daemon, f"/v1/docs/{doc}") for daemon in self.daemons for doc in docs)
        )
        shared: dict[str, str] = {}
        for position, daemon in enumerate(self.daemons):
            data: dict[str, dict[str, Any]] = {}
            unreadable = []
            for offset, doc in enumerate(docs):
                answer = answers[position * len(docs) + offset]
                if not isinstance(answer, dict):
                    unreadable.append(doc)
                content = answer.get("data", {}) if isinstance(answer, dict) else {}
                data[doc] = content if isinstance(content, dict) else {}
            if unreadable:
                problems.append(f"{daemon.name}: cannot read {', '.join(unreadable)}")
                continue
            lost = [w for w in self.acked if data[w.doc].get(w.key) != w.value]
            if lost:
                example = lost[0]
                problems.append(
                    f"{daemon.name} lacks {len(lost)} of {len(self.acked)} acknowledged writes, e.g. "
                    f"{example.doc}/{example.key}={json.dumps(example.value)} "
                    f"(it holds {json.dumps(data[example.doc].get(example.key))})"
                )
            shared[daemon.name] = json.dumps(data[SHARED_DOC], sort_keys=True)
            for key, value in data[SHARED_DOC].items():
                written = self.contended.get(int(value.get("seq", -1))) if isinstance(value, dict) else None
                if written is None or written.key != key or written.value != value:
                    problems.append(
                        f"{daemon.name}: {SHARED_DOC}/{key} holds {json.dumps(value)}, which nobody wrote"
                    )
        if len(set(shared.values())) > 1:
            groups: dict[str, list[str]] = {}
            for name, content in shared.items():
                groups.setdefault(content, []).append(name)
            problems.append(
                f"{SHARED_DOC} differs: "
                + "; ".join(f"{' '.join(names)} hold {content[:160]}" for content, names in groups.items())
            )
        return problems

    async def wait_mesh(self) -> None:
        """Until every node lists every other as an alive member (gossip found them from two seeds)."""
        started = time.monotonic()
        gaps: list[str] = []
        for _ in range(int(MESH_TIMEOUT_S / CHECK_INTERVAL_S) + 1):
            gaps = self.membership_gaps(await self.statuses())
            if not gaps:
                self.say(
                    f"every node lists the {len(self.daemons) - 1} others as alive members "
                    f"({time.monotonic() - started:.1f} s)"
                )
                return
            if time.monotonic() - started > MESH_TIMEOUT_S:
                break
            await asyncio.sleep(CHECK_INTERVAL_S)
        raise ChaosError(
            f"gossip did not make every member alive everywhere within {MESH_TIMEOUT_S:.0f} s: "
            + "; ".join(gaps)
        )

    async def heal_all(self) -> None:
        """Resume or restart whatever no fault task brought back (a crashed daemon, a fault task that
        did not finish), then wait until every daemon answers /health."""
        for daemon in self.daemons:
            if daemon.state == "stopped":
                self.signal_daemon(daemon, signal.SIGCONT, "running")
                self.say(f"SIGCONT {daemon.name} (pid {daemon.pid})")
            elif daemon.state == "terminating":
                if await self.wait_exit(daemon, STOP_TIMEOUT_S) is None:
                    self.signal_daemon(daemon, signal.SIGKILL, "terminating")
                    assert daemon.process is not None
                    daemon.process.wait(timeout=STOP_TIMEOUT_S)
                daemon.state = "down"
            if daemon.state in ("killed", "down", "crashed"):
                self.spawn(daemon)
                self.say(f"restart {daemon.name} (pid {daemon.pid}) on its data dir")
        waiting = [d for d in self.daemons if d.state == "starting"]
        healthy = await asyncio.gather(*(self.wait_healthy(d) for d in waiting))
        if not all(healthy):
            raise ChaosError("a daemon did not come back at the heal")

    async def wait_converged(self) -> None:
        healed = time.monotonic()
        self.say(
            f"waiting up to {CONVERGE_TIMEOUT_S:.0f} s for equal merkle roots, {len(self.acked)} acknowledged "
            f"unique writes on every node, one {SHARED_DOC} and every member alive everywhere"
        )
        roots_seen: list[tuple[float, dict[str, str]]] = []
        """(when, node -> its Merkle root) of every check: when each node reached the final root."""
        for _ in range(int(CONVERGE_TIMEOUT_S / CHECK_INTERVAL_S) + 1):
            if not await self.divergences(full=False, roots_seen=roots_seen):
                self.summary.converged_after_s = time.monotonic() - healed
                self.say(f"converged {self.summary.converged_after_s:.1f} s after the heal")
                self.timeline.converged_s = _reached_final_root(roots_seen)
                return
            if time.monotonic() - healed > CONVERGE_TIMEOUT_S:
                break
            await asyncio.sleep(CHECK_INTERVAL_S)
        for divergence in await self.divergences(full=True):
            self.problem(f"after {CONVERGE_TIMEOUT_S:.0f} s: {divergence}")
        if not self.problems:
            self.problem(f"not converged after {CONVERGE_TIMEOUT_S:.0f} s, then converged at the last look")

    # ------------------------------------------------------------------ the run

    async def run(self) -> None:
        nodes, summary = len(self.daemons), self.summary
        self.say(
            f"chaos seed={summary.seed}: {nodes} daemons in {summary.datacenters} datacenters for "
            f"{self.seconds:.0f} s of faults ({', '.join(summary.fault_sets)}); {len(self.faults)} process "
            f"faults planned; data and logs in {self.root}"
        )
        network = self.network
        if network is not None:
            await network.start()
            wan = ", ".join(
                f"{a}->{b} {f.latency_ms:.0f} ms" for (a, b), f in sorted(network.plan.base.items()) if a < b
            )
            self.say(
                f"fault proxy: every replication byte crosses it; WAN links {wan or 'none'}; "
                f"{len(network.plan.faults) if network.partitions else 0} network faults planned"
            )
        if self.disk is not None:
            self.disk.start()
            self.say(
                f"small disks: every data dir on a tmpfs of {self.disk.disks['n0'].size_bytes >> 20} MB; "
                f"{len(self.disk.plan)} disk faults planned"
            )
        for daemon in self.daemons:
            self.spawn(daemon)
            self.say(
                f"  {daemon.name} ({daemon.dc}): pid {daemon.pid}, replication {daemon.listen}, HTTP "
                f"{daemon.url}, seeds {' '.join(daemon.peers)}, log {daemon.log_path}"
            )
        monitor = asyncio.create_task(self.monitor())
        try:
            if not all(await asyncio.gather(*(self.wait_healthy(d) for d in self.daemons))):
                raise ChaosError("a daemon did not start")
            await self.wait_mesh()
            self.phase = "faults"
            started = time.monotonic()
            self.timeline.started = started
            stop_at = started + self.seconds
            writer = asyncio.create_task(self.writer(stop_at))
            faults = asyncio.create_task(self.fault_schedule(started))
            tasks = [writer, faults]
            if network is not None:
                tasks.append(asyncio.create_task(network.schedule(started, self.heal)))
                tasks.append(asyncio.create_task(network.arrivals(stop_at, self.heal)))
            if self.disk is not None:
                tasks.append(asyncio.create_task(self.disk.schedule(started, self.heal)))
            try:
                await self.wait_for_heal(max(0.0, stop_at - time.monotonic()))
                self.phase = "heal"
                self.say("the time is up: stop writing, heal the network, resume and restart every node")
                self.timeline.heal_s = self.timeline.now_s()
                self.heal.set()
                await faults
                # Each ends itself at the heal: partitions lifted, disks freed, killed nodes restarted.
                await asyncio.gather(*tasks[2:])
                if network is not None:
                    network.heal()
                await self.heal_all()
                await writer  # its last answers, within the request timeout
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
            self.phase = "converging"
            await self.wait_converged()
            self.timeline.end_s = self.timeline.now_s()
            self.sample_rss()
            if network is not None:
                network.collect()
                if network.summary.unknown_clients:
                    self.problem(
                        f"{network.summary.unknown_clients} connections reached the proxy from no node's "
                        "source address: some replication bytes did not cross their link"
                    )
            _raise_failure([monitor])
        except ChaosError as exc:
            self.problem(str(exc))
        finally:
            monitor.cancel()
            await asyncio.gather(monitor, return_exceptions=True)
            await self.client.aclose()
            if network is not None:
                await network.aclose()


async def campaign(
    seconds: float,
    seed: int,
    *,
    nodes: int = 6,
    datacenters: int = 2,
    rss_limit_mb: float = 400.0,
    work_dir: str | None = None,
    curve: bool = False,
    faults: Iterable[str] = ("process",),
    report_dir: str | None = None,
) -> tuple[bool, Summary]:
    """Run the campaign for `seconds` of faults of the sets `faults` (see FAULT_SETS); (whether
    everything held, the summary). The daemons are stopped on every way out (also on cancellation,
    e.g. Ctrl-C); the work dir is removed unless `work_dir` was given or the run failed (with `disk`
    faults the data dirs are on tmpfs and go with the run). With `report_dir`, the summary and figures
    go to REPORT_DIR/chaos-SEED.json and the timeline picture to REPORT_DIR/chaos-SEED.png."""
    fault_sets = tuple(name for name in FAULT_SETS if name in set(faults))
    unknown = set(faults) - set(FAULT_SETS)
    if unknown or not fault_sets:
        raise ValueError(f"faults must be some of {', '.join(FAULT_SETS)}, not {', '.join(sorted(unknown))}")
    if nodes < 3:
        raise ValueError("nodes must be at least 3: with fewer, (nodes-1)//2 allows no faulty node")
    if not 1 <= datacenters <= nodes:
        raise ValueError("datacenters must be in 1..nodes")
    root = _make_root(work_dir)
    run: Campaign | None = None
    finished = False
    try:
        run = Campaign(
            seconds, seed, nodes, datacenters, rss_limit_mb, root, curve=curve, fault_sets=fault_sets
        )
        await run.run()
        finished = True
    finally:
        restore = ignore_signals()
        try:
            if run is not None:
                run.stop_all()
                if run.disk is not None:
                    run.disk.close()
            ok = finished and run is not None and run.summary.ok
            if ok and work_dir is None:
                shutil.rmtree(root, ignore_errors=True)
            else:
                print(f"data dirs and daemon logs kept in {root}", flush=True)
        finally:
            restore()
    assert run is not None
    if report_dir is not None:
        path = write_report(run.summary, report_dir)
        print(f"report: {path}", flush=True)
    return run.summary.ok, run.summary


def write_report(summary: Summary, report_dir: str) -> str:
    """The summary's figures as JSON, REPORT_DIR/chaos-SEED.json, and the timeline picture beside it,
    REPORT_DIR/chaos-SEED.png (without matplotlib, a message says how to get it); the JSON's path."""
    os.makedirs(report_dir, exist_ok=True)
    path = os.path.join(report_dir, f"chaos-{summary.seed}.json")
    figures: dict[str, Any] = {
        "seed": summary.seed,
        "replay": summary.replay_command(),
        "ok": summary.ok,
        "seconds": summary.seconds,
        "nodes": summary.nodes,
        "datacenters": summary.datacenters,
        "faults": summary.fault_sets,
        "writes_acked": summary.writes_acked,
        "writes_failed": summary.writes_failed,
        "failures": dict(summary.failures),
        "process_faults": dict(summary.faults),
        "converged_after_heal_s": summary.converged_after_s,
        "rss_mb_max": summary.rss_mb_max,
        "network": summary.network.figures() if summary.network is not None else None,
        "disk": summary.disk.figures() if summary.disk is not None else None,
        "timeline": summary.timeline.figures() if summary.timeline is not None else None,
        "problems": summary.problems,
    }
    with open(path, "w") as handle:
        json.dump(figures, handle, indent=2)
    if summary.timeline is not None:
        picture = os.path.join(report_dir, f"chaos-{summary.seed}.png")
        title = f"{summary.replay_command()}: {'OK' if summary.ok else 'FAIL'}"
        try:
            write_png(summary.timeline, title, picture)
        except ImportError:
            print(MISSING_MATPLOTLIB, file=sys.stderr, flush=True)
    return path


def _reached_final_root(roots_seen: list[tuple[float, dict[str, str]]]) -> dict[str, float]:
    """Node -> the time of the first check from which on it held the root all ended with."""
    if not roots_seen:
        return {}
    final = roots_seen[-1][1]
    reached: dict[str, float] = {}
    for node, root in final.items():
        at_s = roots_seen[-1][0]
        for seen_s, roots in reversed(roots_seen):
            if roots.get(node) != root:
                break
            at_s = seen_s
        reached[node] = at_s
    return reached


def _raise_failure(tasks: Iterable[asyncio.Task[None]]) -> None:
    """Raise the exception a finished task ended with: a bug in the campaign must not pass for a run
    that held."""
    for task in tasks:
        if task.done() and not task.cancelled() and (error := task.exception()) is not None:
            raise error


def _make_root(work_dir: str | None) -> str:
    if work_dir is None:
        return tempfile.mkdtemp(prefix="crdtsync-chaos-")
    root = os.path.abspath(work_dir)
    os.makedirs(root, exist_ok=True)
    return root


def _fault_sets(text: str) -> tuple[str, ...]:
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = [name for name in names if name not in FAULT_SETS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"choose among {', '.join(FAULT_SETS)} (comma-separated)")
    return names


def _positive(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be positive")
    return value


async def _until_sigterm(args: argparse.Namespace) -> tuple[bool, Summary]:
    """The campaign of the command line; SIGTERM cancels it like Ctrl-C, so the daemons are stopped."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        return await campaign(
            args.minutes * 60.0,
            args.seed,
            nodes=args.nodes,
            datacenters=args.datacenters,
            rss_limit_mb=args.rss_mb,
            work_dir=args.work_dir,
            curve=args.curve,
            faults=args.faults,
            report_dir=args.report,
        )
    finally:
        loop.remove_signal_handler(signal.SIGTERM)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fuzz.chaos", description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=_positive, default=1.0, help="how long the faults last (default 1)")
    parser.add_argument(
        "--seed", type=int, default=1, help="random seed of the faults and writes (default 1)"
    )
    parser.add_argument("--nodes", type=int, default=6, help="daemons, at least 3 (default 6)")
    parser.add_argument("--datacenters", type=int, default=2, help="datacenters, 1..nodes (default 2)")
    parser.add_argument(
        "--rss-mb", type=_positive, default=400.0, help="resident memory bound per daemon (default 400)"
    )
    parser.add_argument(
        "--curve",
        action="store_true",
        help="CurveZMQ links (a key pair per node, every member's key configured) instead of plaintext",
    )
    parser.add_argument(
        "--faults",
        type=_fault_sets,
        default=("process",),
        help="comma-separated: process (SIGKILL, SIGSTOP, SIGTERM), network (a fault proxy on every link: "
        "WAN latency 30-150 ms and 5 MB/s between datacenters, partitions of every shape, resets, degraded "
        "links, slow closes), wan (the proxy with the WAN latency and caps only), disk (data dirs on small "
        "tmpfs: full disks, I/O errors, kill -9 during backups and restores); default process",
    )
    parser.add_argument(
        "--report",
        metavar="DIR",
        help="write the summary and figures as DIR/chaos-SEED.json and the timeline as DIR/chaos-SEED.png "
        "(needs matplotlib: pip install 'crdtsync[report]')",
    )
    parser.add_argument(
        "--work-dir",
        help="where the data dirs and logs go, kept afterwards (default: a temp dir, removed if OK)",
    )
    args = parser.parse_args(argv)
    if args.nodes < 3:
        parser.error("--nodes must be at least 3")
    if not 1 <= args.datacenters <= args.nodes:
        parser.error("--datacenters must be in 1..nodes")
    print(f"chaos seed {args.seed}", flush=True)
    try:
        ok, summary = asyncio.run(_until_sigterm(args))
    except KeyboardInterrupt:
        print("interrupted: every daemon stopped", file=sys.stderr, flush=True)
        return 128 + signal.SIGINT
    except asyncio.CancelledError:
        print("terminated: every daemon stopped", file=sys.stderr, flush=True)
        return 128 + signal.SIGTERM
    print(summary, flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
