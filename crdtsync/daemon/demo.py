"""`crdtsync demo`: three real daemons on 127.0.0.1, live writes over HTTP, kill -9 and catch-up.

The demo starts three `crdtsync serve` processes (a, b, c), each with an SQLite store, and writes
to all three of them over the HTTP API a few times a second: a model registry and feature flags
that every node writes (concurrent writes to the same keys), a fleet config whose keys each node
owns (its region), and a deploy log with one new key per write. Once a second it shows what each
daemon reports on `GET /v1/status`: docs, updates published and applied, peers, lag and whether
all three hold the same Merkle root.

After about 8 s it kills c with SIGKILL, keeps writing to a and b, and restarts c on the same data
dir about 4 s later. It then checks, on c, every write c acknowledged before the kill (GET of each
key, and the doc's state vector against the one each acknowledgement returned), and shows how long
c took to hold the same Merkle root as its peers again. The daemons then stay up, with their URLs
printed, until Ctrl-C or `--seconds`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import httpx

from crdtsync.daemon.demo_view import Daemon, DemoView, choose_view
from crdtsync.testing.cluster import (
    AckedWrite,
    ClusterError,
    LocalCluster,
    free_ports,
    ignore_signals,
    log_tail,
    plan_daemons,
    port_free,
)

NODE_NAMES = ("a", "b", "c")
VICTIM = "c"
REGIONS = {"a": "us-east", "b": "eu-west", "c": "ap-south"}
DATACENTERS = {"a": "dc1", "b": "dc1", "c": "dc2"}
"""a and b share a datacenter (a full mesh, one of them its relay); c is alone in the other."""
DOC_IDS = ("models/registry", "flags/features", "fleet/config", "deploys/log")
MODELS = ("llama-3-8b", "llama-3-70b", "mistral-7b", "embed-small", "whisper-large")
STAGES = ("staging", "canary", "production", "rollback")
FLAGS = ("kv-cache-offload", "speculative-decoding", "fp8-matmul", "prefix-caching", "new-router")

KILL_AT_S = 8.0
"""Seconds of writing before the kill."""
DOWNTIME_S = 4.0
AFTER_RESTART_MIN_S = 4.0
"""Writing goes on at least this long after the restart (and until the restarted node caught up)."""
CATCH_UP_TIMEOUT_S = 30.0
SETTLE_TIMEOUT_S = 10.0
START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 5.0
WRITE_INTERVAL_S = (0.2, 0.45)
POLL_INTERVAL_S = 0.25
RENDER_INTERVAL_S = 1.0
REQUEST_TIMEOUT_S = 2.0


class DemoError(Exception):
    """Ends the demo with this message (and exit status 1)."""


def next_write(daemon: Daemon, seq: int, rng: random.Random) -> AckedWrite:
    """One application write, the way a control plane would make it."""
    name, roll = daemon.name, rng.random()
    doc: str
    key: str
    value: Any
    owned = False
    if roll < 0.35:
        doc, key = "models/registry", rng.choice(MODELS)
        value = {
            "stage": rng.choice(STAGES),
            "version": rng.randint(1, 40),
            "shards": rng.choice((1, 2, 4, 8)),
            "by": name,
        }
    elif roll < 0.55:
        doc, key = "flags/features", rng.choice(FLAGS)
        value = {"enabled": rng.random() < 0.5, "rollout_pct": rng.choice((0, 5, 25, 50, 100)), "by": name}
    elif roll < 0.75:
        region = REGIONS[name]
        doc, owned = "fleet/config", True
        if rng.random() < 0.5:
            key, value = f"{region}.replicas", rng.randint(2, 64)
        else:
            key, value = f"{region}.image", f"registry.local/serve:1.{rng.randint(0, 40)}"
    else:
        doc, key, owned = "deploys/log", f"{name}-{seq:05d}", True
        value = {
            "model": rng.choice(MODELS),
            "stage": rng.choice(STAGES),
            "by": name,
            "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
    return AckedWrite(name, seq, doc, key, value, owned, daemon.starts)


# ---------------------------------------------------------------------------------------------- ports


def choose_ports(base_port: int) -> list[int]:
    """The replication ports of a, b, c then their HTTP ports: base_port .. base_port+5, or free
    ports for 0."""
    count = 2 * len(NODE_NAMES)
    if base_port == 0:
        try:
            return free_ports(count)
        except ClusterError as exc:
            raise DemoError(str(exc)) from None
    if not 1 <= base_port <= 65535 - count + 1:
        raise DemoError(f"--base-port must be in 1..{65535 - count + 1} (it uses {count} ports), or 0")
    ports = list(range(base_port, base_port + count))
    roles = [f"replication of {n}" for n in NODE_NAMES] + [f"HTTP of {n}" for n in NODE_NAMES]
    busy = [f"{port} ({role})" for port, role in zip(ports, roles, strict=True) if not port_free(port)]
    if busy:
        raise DemoError(
            f"port busy on 127.0.0.1: {', '.join(busy)}. The demo uses ports {ports[0]}..{ports[-1]}; "
            "choose another --base-port, or omit it to use free ports"
        )
    return ports


def make_cluster(root: str, base_port: int) -> LocalCluster[Daemon]:
    """a, b, c under `root`; their links use CurveZMQ like a real deployment: a key pair per node,
    and every node told the public keys of the others."""
    daemons = plan_daemons(Daemon, root, NODE_NAMES, ports=choose_ports(base_port), dcs=DATACENTERS)
    return LocalCluster(root, daemons, curve=True, note="crdtsync demo")


# ---------------------------------------------------------------------------------------------- demo


class Demo(DemoView):
    def __init__(
        self, cluster: LocalCluster[Daemon], seconds: float | None, work_dir: str | None, view: str = "plain"
    ) -> None:
        super().__init__(cluster.daemons, seconds, view)
        self.cluster = cluster
        self.work_dir = work_dir
        self.verdict_at = 0.0
        """When the poll that gave `verdict` started (monotonic)."""
        self.checks_ok = True
        self.catch_up_s: float | None = None
        self.interrupted: int | None = None
        self.write_enabled = {name: asyncio.Event() for name in NODE_NAMES}
        self.tasks: list[asyncio.Task[None]] = []
        self.client = httpx.AsyncClient(timeout=REQUEST_TIMEOUT_S, trust_env=False)

    def spawn(self, daemon: Daemon) -> None:
        self.cluster.start(daemon.name)
        daemon.state = "starting"
        daemon.status = None

    def kill9(self, daemon: Daemon) -> None:
        self.cluster.kill(daemon.name)
        daemon.state = "killed"
        daemon.status = None

    # ------------------------------------------------------------------ polling

    async def _get_status(self, daemon: Daemon) -> None:
        try:
            response = await self.client.get(f"{daemon.url}/v1/status")
            daemon.status = response.json() if response.status_code == 200 else None
        except (httpx.HTTPError, ValueError):
            daemon.status = None

    def _check_processes(self) -> None:
        for daemon in self.daemons.values():
            process = daemon.process
            if daemon.state in ("starting", "running") and process is not None and process.poll() is not None:
                daemon.state = "exited"
                daemon.status = None
                self.checks_ok = False
                self.event(
                    f"{daemon.name} exited unexpectedly with status {process.returncode}; "
                    f"the end of {daemon.log_path}:\n{log_tail(daemon.log_path)}"
                )

    async def poll(self) -> None:
        started = time.monotonic()
        self._check_processes()
        running = [d for d in self.daemons.values() if d.state == "running"]
        await asyncio.gather(*(self._get_status(d) for d in running))
        self.verdict = self._converged()
        self.verdict_at = started

    def _converged(self) -> tuple[bool, str]:
        down = [d.name for d in self.daemons.values() if d.state != "running"]
        if down:
            return False, f"{' and '.join(down)} {'is' if len(down) == 1 else 'are'} not running"
        silent = [d.name for d in self.daemons.values() if d.status is None]
        if silent:
            return False, f"no status from {', '.join(silent)}"
        statuses = [d.status for d in self.daemons.values() if d.status is not None]
        roots = {status["merkle_root"] for status in statuses}
        if len(roots) == 1:
            return True, f"equal merkle roots {next(iter(roots))[:8]} over {statuses[0]['docs']} docs"
        return False, "merkle roots differ: writes in flight or a node still syncing"

    async def monitor(self) -> None:
        reported = ""
        while True:
            try:
                await self.poll()
                if time.monotonic() - self.last_render >= RENDER_INTERVAL_S:
                    self.render()
            except (KeyError, TypeError, ValueError) as exc:  # a status answer of another shape
                self.verdict = (False, f"cannot read a status answer: {exc!r}")
                if repr(exc) != reported:
                    reported = repr(exc)
                    self.event(f"cannot read a status answer: {exc!r}")
            await asyncio.sleep(POLL_INTERVAL_S)

    async def wait_converged(self, timeout_s: float, since: float) -> bool:
        """Wait for a verdict of convergence from a poll started after `since`."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.verdict[0] and self.verdict_at >= since:
                return True
            await asyncio.sleep(0.05)
        return False

    async def writer(self, daemon: Daemon) -> None:
        rng = random.Random(f"{daemon.name}-{os.getpid()}")
        acks = self.cluster.acks
        while True:
            await self.write_enabled[daemon.name].wait()
            write = next_write(daemon, acks.next_seq(daemon.name), rng)
            try:
                response = await self.client.put(
                    f"{daemon.url}/v1/docs/{write.doc}/keys/{write.key}", json=write.value
                )
            except asyncio.CancelledError:
                # Writing stopped with this request on its way: the node may apply it all the same.
                acks.record(write, None)
                raise
            except httpx.HTTPError as exc:
                acks.record(write, None)
                daemon.failed += 1
                daemon.last_error = f"{type(exc).__name__}: {exc}"
            else:
                if acks.record(write, response):
                    daemon.acked += 1
                else:
                    daemon.failed += 1
                    daemon.last_error = f"HTTP {response.status_code}: {response.text[:200]}"
            await asyncio.sleep(rng.uniform(*WRITE_INTERVAL_S))

    async def verify_acknowledged(self, daemon: Daemon, incarnation: int) -> bool:
        """Every write `daemon` acknowledged in `incarnation` is on it now: by value for the keys only it
        writes, by presence for the shared keys, and by state vector for every doc it wrote."""
        acks = self.cluster.acks.selected(daemon.name, incarnation)
        problems, owned = await self.cluster.acks.verify(self.client, daemon.url, acks)
        keys = len({(ack.write.doc, ack.write.key) for ack in acks})
        docs = len({ack.write.doc for ack in acks})
        if problems:
            self.event(
                f"LOST WRITES on {daemon.name}: {len(problems)} of the checks failed:\n"
                + "\n".join(f"    {p}" for p in problems[:20])
            )
            return False
        failures = self.cluster.acks.failures
        in_flight = sum(1 for f in failures if f.node == daemon.name and f.incarnation == incarnation)
        self.event(
            f"{daemon.name} kept every write it acknowledged before the kill: {len(acks)} writes, "
            f"checked on {daemon.name} right after its restart ({owned} keys by value, {keys - owned} "
            f"shared keys present, state vectors of {docs} docs cover the acknowledgements)"
            + (f"; {in_flight} write(s) in flight at the kill were not acknowledged" if in_flight else "")
        )
        return True

    async def verify_everywhere(self) -> bool:
        """After convergence: every acknowledged write of every node is on every node."""
        problems: list[str] = []
        for daemon in self.daemons.values():
            found, _owned = await self.cluster.acks.verify(self.client, daemon.url, self.cluster.acks.acks)
            problems += [f"{daemon.name}: {problem}" for problem in found]
        if problems:
            self.event(
                f"LOST WRITES after convergence: {len(problems)} of the checks failed:\n"
                + "\n".join(f"    {p}" for p in problems[:20])
            )
        return not problems

    async def wait_healthy(self, daemons: Sequence[Daemon]) -> None:
        try:
            await self.cluster.wait_healthy_async(self.client, daemons, START_TIMEOUT_S)
        except ClusterError as exc:
            for daemon in daemons:
                if not daemon.running:
                    daemon.state = "exited"
            raise DemoError(str(exc)) from None
        for daemon in daemons:
            daemon.state = "running"

    # ------------------------------------------------------------------ the run

    def schedule(self, startup_s: float) -> tuple[float, float, float] | None:
        """(kill at, restart at, write at least until), in seconds of writing; None: no kill."""
        plan = (KILL_AT_S, KILL_AT_S + DOWNTIME_S, KILL_AT_S + DOWNTIME_S + AFTER_RESTART_MIN_S)
        if self.seconds is None:
            return plan
        available = self.seconds - startup_s - 2.0
        if available >= plan[2]:
            return plan
        if available < 6.0:
            return None
        scale = available / plan[2]
        return plan[0] * scale, plan[1] * scale, plan[2] * scale

    async def sleep_until(self, writes_started: float, at_s: float) -> None:
        await asyncio.sleep(max(0.0, writes_started + at_s - time.monotonic()))

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None

        def interrupt(signum: int) -> None:
            if self.interrupted is None:
                self.interrupted = signum
                task.cancel()

        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, interrupt, signum)
        try:
            return await self._run()
        except asyncio.CancelledError:
            if self.interrupted is None:
                raise
            task.uncancel()
            name = signal.Signals(self.interrupted).name
            self.event(f"{name}: stopping the daemons")
            if self.idle:
                return 0 if self.checks_ok else 1
            return 128 + self.interrupted
        finally:
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(signum)
            self.close_view()
            await self._cancel_tasks()
            await self.client.aclose()

    async def _cancel_tasks(self) -> None:
        for background in self.tasks:
            background.cancel()
        for background in self.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await background
        self.tasks = []

    async def _run(self) -> int:
        where = self.work_dir or f"{self.cluster.root} (temporary, removed at exit)"
        self.event(f"starting daemons a, b, c: data and logs in {where}")
        for daemon in self.daemons.values():
            self.spawn(daemon)
            self.say(
                f"         {daemon.name}: pid {daemon.pid}, replication {daemon.listen}, HTTP {daemon.url}, "
                f"dashboard {daemon.dashboard}, log {daemon.log_path}"
            )
        await self.wait_healthy(list(self.daemons.values()))
        startup_s = self.now()
        self.event(f"all 3 daemons answer /health ({startup_s:.1f} s after start)")
        plan = self.schedule(startup_s)
        self.event(
            "writing to a, b and c over HTTP, a few writes per second each: "
            f"{', '.join(DOC_IDS)}"
            + (
                f"; kill -9 {VICTIM} at {startup_s + plan[0]:.0f} s, restart at {startup_s + plan[1]:.0f} s"
                if plan
                else " (too short a run for the kill)"
            )
        )
        self.phase = "writing"
        for name in NODE_NAMES:
            self.write_enabled[name].set()
        self.tasks.append(asyncio.create_task(self.monitor()))
        self.tasks += [asyncio.create_task(self.writer(d)) for d in self.daemons.values()]
        writes_started = time.monotonic()

        if plan is not None:
            await self._kill_and_restart(writes_started, plan)
        elif self.seconds is not None:
            await asyncio.sleep(max(1.0, self.seconds - self.now() - 1.0))

        for name in NODE_NAMES:
            self.write_enabled[name].clear()
        for background in self.tasks[1:]:
            background.cancel()
        stopped_writing = time.monotonic()
        self.phase = "settling"
        self.event(f"stopped writing; waiting up to {SETTLE_TIMEOUT_S:.0f} s for equal merkle roots")
        converged = await self.wait_converged(SETTLE_TIMEOUT_S, stopped_writing)
        if converged and not await self.verify_everywhere():
            self.checks_ok = False
        self.phase = "settled" if converged else "NOT settled"
        self.render()
        acked = sum(d.acked for d in self.daemons.values())
        failed = sum(d.failed for d in self.daemons.values())
        if converged:
            not_acked = f", {failed} sent but not acknowledged (in flight at the kill)" if failed else ""
            self.say(f"\nconverged: {self.verdict[1]}; {acked} writes acknowledged{not_acked}")
        else:
            self.checks_ok = False
            self.say(f"\nNOT converged within {SETTLE_TIMEOUT_S:.0f} s: {self.verdict[1]}")
        self.print_help()
        return await self._idle()

    async def _kill_and_restart(self, writes_started: float, plan: tuple[float, float, float]) -> None:
        victim = self.daemons[VICTIM]
        kill_at, restart_at, write_until = plan
        await self.sleep_until(writes_started, kill_at)
        self.wait_not_exited(victim)
        pid = victim.pid
        incarnation = victim.starts
        self.kill9(victim)
        self.write_enabled[VICTIM].clear()
        others = [n for n in NODE_NAMES if n != VICTIM]
        self.phase = f"{VICTIM} killed, writing to {' and '.join(others)}"
        self.event(
            f"kill -9 {VICTIM} (pid {pid}) after {victim.acked} acknowledged writes; "
            f"writes go on to {' and '.join(others)}"
        )
        self.render()
        await self.sleep_until(writes_started, restart_at)
        self.spawn(victim)
        restarted = time.monotonic()
        self.phase = f"{VICTIM} restarting"
        self.event(f"restart {VICTIM} (pid {victim.pid}) on the same data dir {victim.data_dir}")
        await self.wait_healthy([victim])
        healthy_s = time.monotonic() - restarted
        self.event(
            f"{VICTIM} answers /health {healthy_s:.1f} s after its restart; checking its acknowledged writes"
        )
        if not await self.verify_acknowledged(victim, incarnation):
            self.checks_ok = False
        self.write_enabled[VICTIM].set()
        self.phase = f"{VICTIM} back, catching up; writing to a, b and c"
        if await self.wait_converged(CATCH_UP_TIMEOUT_S, restarted):
            self.catch_up_s = self.verdict_at - restarted
            self.event(
                f"{VICTIM} caught up: equal merkle roots on a, b and c {self.catch_up_s:.1f} s after its "
                f"restart ({max(0.0, self.catch_up_s - healthy_s):.1f} s after it answered /health), "
                "while writes go on"
            )
        else:
            self.checks_ok = False
            self.event(f"{VICTIM} did NOT catch up within {CATCH_UP_TIMEOUT_S:.0f} s of its restart")
        self.phase = "writing to a, b and c"
        await self.sleep_until(writes_started, write_until)

    def wait_not_exited(self, daemon: Daemon) -> None:
        if daemon.state != "running":
            raise DemoError(f"{daemon.name} is {daemon.state}, not running: see {daemon.log_path}")

    async def _idle(self) -> int:
        self.idle = True
        self.phase = "idle"
        self.tasks = [t for t in self.tasks if not t.done()]
        if self.seconds is None:
            await asyncio.Event().wait()  # until Ctrl-C or SIGTERM cancels the run
            return 0
        await asyncio.sleep(max(0.0, self.seconds - self.now()))
        # Someone may be writing from another terminal: give replication a moment.
        converged = await self.wait_converged(5.0, time.monotonic())
        if converged:
            self.event(f"{self.seconds:.0f} s elapsed: converged ({self.verdict[1]}); stopping the daemons")
        else:
            self.event(
                f"{self.seconds:.0f} s elapsed: NOT converged ({self.verdict[1]}); stopping the daemons"
            )
        return 0 if converged and self.checks_ok else 1


def stop_notes(cluster: LocalCluster[Daemon], timeout_s: float = STOP_TIMEOUT_S) -> list[str]:
    """SIGTERM every daemon still running, SIGKILL those not gone after `timeout_s`. Returns notes."""
    notes: list[str] = []
    for name, status in cluster.stop_all(timeout_s):
        if status is None:
            notes.append(f"{name} did not stop within {timeout_s:.0f} s of SIGTERM: killed")
        elif status != 0:
            notes.append(f"{name} exited with status {status}")
        cluster.daemons[name].state = "stopped"
    return notes


def run_demo(work_dir: str | None, base_port: int, seconds: float | None, view: str = "auto") -> int:
    """Run the demo; returns the exit status (0: converged and no acknowledged write lost). `view`: one
    of `VIEWS` (auto: the live table on a terminal, lines for a file or a pipe)."""
    if seconds is not None and seconds <= 0:
        print("error: --seconds must be positive", file=sys.stderr)
        return 2
    if work_dir is not None:
        root = os.path.abspath(work_dir)
        try:
            os.makedirs(root, exist_ok=True)
        except OSError as exc:
            print(f"error: cannot create --dir {work_dir}: {exc}", file=sys.stderr)
            return 1
    else:
        root = tempfile.mkdtemp(prefix="crdtsync-demo-")
    cluster: LocalCluster[Daemon] | None = None
    status = 1
    try:
        cluster = make_cluster(root, base_port)
        demo = Demo(cluster, seconds, work_dir, choose_view(view, sys.stdout))
        status = asyncio.run(demo.run())
    except DemoError as exc:
        print(f"\nerror: {exc}", file=sys.stderr, flush=True)
        status = 1
    except KeyboardInterrupt:  # before or after the event loop's own handlers
        status = 130
    finally:
        restore = ignore_signals()
        try:
            if cluster is not None:
                running = [
                    d for d in cluster.daemons.values() if d.process is not None and d.process.poll() is None
                ]
                if running:
                    print(
                        f"stopping {', '.join(d.name for d in running)} (SIGTERM, SIGKILL after "
                        f"{STOP_TIMEOUT_S:.0f} s)",
                        flush=True,
                    )
                for note in stop_notes(cluster):
                    print(f"  {note}", file=sys.stderr, flush=True)
            if work_dir is None:
                shutil.rmtree(root, ignore_errors=True)
            else:
                print(f"data and logs kept in {root}", flush=True)
        finally:
            restore()
    return status
