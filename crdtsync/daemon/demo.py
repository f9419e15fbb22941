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
import base64
import contextlib
import os
import random
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from crdtsync.core.state import StateDecodeError, covers, decode_state_vector
from crdtsync.daemon.processes import LocalDaemon, curve_args, ignore_signals, launch, terminate
from crdtsync.transport.curve import read_key_file, write_key_file

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
LOG_TAIL_LINES = 15
SILENCE_SHOWN_MS = 2000.0


class DemoError(Exception):
    """Ends the demo with this message (and exit status 1)."""


# ---------------------------------------------------------------------------------------------- model


@dataclass(frozen=True, slots=True)
class Write:
    seq: int
    """Per node, across restarts: the order the demo sent the node's writes in (one at a time)."""
    doc: str
    key: str
    value: Any
    owned: bool
    """Only this node writes this key, so its last acknowledged value must be the value there."""
    incarnation: int


@dataclass(frozen=True, slots=True)
class Ack:
    write: Write
    state_vector: str
    """The doc's state vector the node answered with (base64url)."""


@dataclass(kw_only=True)
class Daemon(LocalDaemon):
    peers: list[str]
    state: str = "new"
    """new, starting, running, killed, exited (unexpectedly), stopped."""
    incarnation: int = 0
    status: dict[str, Any] | None = None
    acked: int = 0
    failed: int = 0
    last_error: str = ""
    seq: int = 0
    acks: list[Ack] = field(default_factory=list)
    failures: list[Write] = field(default_factory=list)
    """Writes sent but not acknowledged (connection errors, timeouts, HTTP errors)."""


def next_write(daemon: Daemon, rng: random.Random) -> Write:
    """One application write, the way a control plane would make it."""
    daemon.seq += 1
    seq, name, roll = daemon.seq, daemon.name, rng.random()
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
    return Write(seq, doc, key, value, owned, daemon.incarnation)


def _state_vector(response: httpx.Response) -> str | None:
    """The `state_vector` of a write's answer; None for an answer that is not one."""
    try:
        state_vector = response.json()["state_vector"]
    except (ValueError, KeyError, TypeError):
        return None
    return state_vector if isinstance(state_vector, str) else None


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


# ---------------------------------------------------------------------------------------------- ports


def _port_free(port: int) -> bool:
    """Whether nothing listens on 127.0.0.1:port (SO_REUSEADDR, as the daemons bind: TIME_WAIT is fine)."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        probe.close()


def pick_free_ports(count: int) -> list[int]:
    """Distinct free ports on 127.0.0.1 below the kernel's ephemeral range.

    A killed daemon's ports stay free until its restart: ports the kernel hands out itself (outgoing
    connections, each daemon's PUB socket on port 0) come from the ephemeral range, so a port below
    it cannot be taken meanwhile. The probes stay bound until all are chosen, so the ports differ.
    """
    ephemeral_low = 32768
    with (
        contextlib.suppress(OSError, ValueError, IndexError),
        open("/proc/sys/net/ipv4/ip_local_port_range") as handle,
    ):
        ephemeral_low = int(handle.read().split()[0])
    candidates = list(range(max(1024, ephemeral_low - 10_000), ephemeral_low))
    random.shuffle(candidates)
    probes: list[socket.socket] = []
    ports: list[int] = []
    try:
        for candidate in candidates:
            if len(ports) == count:
                break
            probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                probe.bind(("127.0.0.1", candidate))
            except OSError:
                probe.close()
                continue
            probes.append(probe)
            ports.append(candidate)
    finally:
        for probe in probes:
            probe.close()
    if len(ports) < count:
        raise DemoError(f"found only {len(ports)} free ports on 127.0.0.1 below {ephemeral_low}")
    return ports


def choose_ports(base_port: int) -> tuple[list[int], list[int]]:
    """(replication ports, HTTP ports) of a, b, c: base_port .. base_port+5, or free ports for 0."""
    count = 2 * len(NODE_NAMES)
    if base_port == 0:
        ports = pick_free_ports(count)
    else:
        if not 1 <= base_port <= 65535 - count + 1:
            raise DemoError(f"--base-port must be in 1..{65535 - count + 1} (it uses {count} ports), or 0")
        ports = list(range(base_port, base_port + count))
        roles = [f"replication of {n}" for n in NODE_NAMES] + [f"HTTP of {n}" for n in NODE_NAMES]
        busy = [f"{port} ({role})" for port, role in zip(ports, roles, strict=True) if not _port_free(port)]
        if busy:
            raise DemoError(
                f"port busy on 127.0.0.1: {', '.join(busy)}. The demo uses ports {ports[0]}..{ports[-1]}; "
                "choose another --base-port, or omit it to use free ports"
            )
    return ports[: len(NODE_NAMES)], ports[len(NODE_NAMES) :]


# ---------------------------------------------------------------------------------------------- processes


def log_tail(path: str, lines: int = LOG_TAIL_LINES) -> str:
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 16384))
            text = handle.read().decode(errors="replace")
    except OSError as exc:
        return f"    (cannot read {path}: {exc})"
    tail = text.splitlines()[-lines:]
    return "\n".join(f"    {line}" for line in tail) if tail else "    (the log is empty)"


class Cluster:
    """The daemon processes. Synchronous, so that stopping them works from any state."""

    def __init__(self, root: str, base_port: int) -> None:
        self.root = root
        listen_ports, http_ports = choose_ports(base_port)
        addresses = {
            name: f"tcp://127.0.0.1:{port}" for name, port in zip(NODE_NAMES, listen_ports, strict=True)
        }
        self.daemons = {
            name: Daemon(
                name=name,
                listen_port=listen_port,
                http_port=http_port,
                data_dir=os.path.join(root, name),
                log_path=os.path.join(root, f"{name}.log"),
                peers=[address for other, address in addresses.items() if other != name],
            )
            for name, listen_port, http_port in zip(NODE_NAMES, listen_ports, http_ports, strict=True)
        }
        # The demo's links use CurveZMQ like a real deployment: a key pair per node, and every node
        # told the public keys of the others.
        self.key_files = {name: os.path.join(root, f"{name}.key") for name in NODE_NAMES}
        self.public_keys = {}
        for name, key_file in self.key_files.items():
            if not os.path.exists(key_file):
                write_key_file(key_file, name)
            self.public_keys[name] = read_key_file(key_file)[0].decode()
        self.addresses = addresses

    def serve_args(self, daemon: Daemon) -> list[str]:
        peer_keys = {
            address: self.public_keys[other]
            for other, address in self.addresses.items()
            if other != daemon.name
        }
        return daemon.serve_args(
            DATACENTERS[daemon.name], daemon.peers, curve_args(self.key_files[daemon.name], peer_keys)
        )

    def spawn(self, daemon: Daemon) -> None:
        daemon.incarnation += 1
        daemon.process = launch(
            self.serve_args(daemon),
            daemon.log_path,
            f"crdtsync demo: starting {daemon.name}, incarnation {daemon.incarnation}",
        )
        daemon.state = "starting"
        daemon.status = None

    def kill9(self, daemon: Daemon) -> None:
        process = daemon.process
        if process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGKILL)
            process.wait()
        daemon.state = "killed"
        daemon.status = None

    def stop_all(self, timeout_s: float = STOP_TIMEOUT_S) -> list[str]:
        """SIGTERM every daemon still running, SIGKILL those not gone after `timeout_s`. Returns notes."""
        notes: list[str] = []
        processes = [(d.name, d.process) for d in self.daemons.values() if d.process is not None]
        for name, status in terminate(processes, timeout_s):
            if status is None:
                notes.append(f"{name} did not stop within {timeout_s:.0f} s of SIGTERM: killed")
            elif status != 0:
                notes.append(f"{name} exited with status {status}")
            self.daemons[name].state = "stopped"
        return notes


# ---------------------------------------------------------------------------------------------- demo


class Demo:
    def __init__(self, cluster: Cluster, seconds: float | None, work_dir: str | None) -> None:
        self.cluster = cluster
        self.daemons = cluster.daemons
        self.seconds = seconds
        self.work_dir = work_dir
        self.started = time.monotonic()
        self.tty = sys.stdout.isatty()
        self.drawn_lines = 0
        self.phase = "starting"
        self.idle = False
        self.verdict: tuple[bool, str] = (False, "no status yet")
        self.verdict_at = 0.0
        """When the poll that gave `verdict` started (monotonic)."""
        self.last_render = 0.0
        self.last_idle_line = ""
        self.checks_ok = True
        self.catch_up_s: float | None = None
        self.interrupted: int | None = None
        self.write_enabled = {name: asyncio.Event() for name in NODE_NAMES}
        self.tasks: list[asyncio.Task[None]] = []
        self.client = httpx.AsyncClient(timeout=REQUEST_TIMEOUT_S, trust_env=False)

    # ------------------------------------------------------------------ output

    def now(self) -> float:
        return time.monotonic() - self.started

    def _clear(self) -> None:
        if self.tty and self.drawn_lines:
            sys.stdout.write(f"\033[{self.drawn_lines}F\033[J")
        self.drawn_lines = 0

    def event(self, text: str) -> None:
        self._clear()
        print(f"[{self.now():5.1f} s] {text}", flush=True)

    def say(self, text: str = "") -> None:
        self._clear()
        print(text, flush=True)

    def _peers_text(self, daemon: Daemon, separator: str) -> str:
        if daemon.status is None:
            return ""
        names = {d.listen: d.name for d in self.daemons.values()}
        parts = []
        for peer in sorted(daemon.status["peers"], key=lambda p: str(p["node_id"] or p["address"])):
            name = peer["node_id"] or names.get(peer["address"], peer["address"])
            text = f"{name}:{peer['state']}"
            heard = peer["last_heard_ago_ms"]
            if heard is not None and heard >= SILENCE_SHOWN_MS:
                text += f"({heard / 1000:.0f}s)"
            parts.append(text)
        return separator.join(parts)

    @staticmethod
    def _dc_text(daemon: Daemon) -> str:
        """The node's datacenter, starred while it is that datacenter's relay."""
        relay = daemon.status is not None and daemon.state == "running" and daemon.status.get("relay")
        return DATACENTERS[daemon.name] + ("*" if relay else "")

    @staticmethod
    def _numbers(daemon: Daemon) -> dict[str, Any]:
        status = daemon.status
        assert status is not None
        counters = status["counters"]
        return {
            "docs": status["docs"],
            "published": status["published_updates"],
            "applied": counters.get("deltas_applied", 0) + counters.get("sync_updates_applied", 0),
            "behind": max((peer["behind_updates"] for peer in status["peers"]), default=0),
            "root": status["merkle_root"][:8],
        }

    def table(self) -> list[str]:
        """The live view; fits in 80 columns while every peer is heard."""
        converged, why = self.verdict
        label = "CONVERGED" if converged else "CATCHING UP"
        until = "Ctrl-C" if self.seconds is None else f"{self.seconds:.0f} s"
        lines = [
            f"crdtsync demo {self.now():5.1f} s (until {until}): {self.phase}",
            f"cluster: {label} ({why})",
            f"{'node':<4}{'dc':<5}{'pid':>7} {'state':<8}{'docs':>5}{'acked':>6}{'err':>4}{'pub':>6}{'applied':>8}"
            f"{'behind':>7}  {'root':<8}  peers",
        ]
        for daemon in self.daemons.values():
            running = daemon.state in ("starting", "running")
            pid = str(daemon.pid) if daemon.pid is not None and running else "-"
            head = f"{daemon.name:<4}{self._dc_text(daemon):<5}{pid:>7} {daemon.state:<8}"
            if daemon.status is None or daemon.state != "running":
                lines.append(f"{head}{'':>5}{daemon.acked:>6}{daemon.failed:>4}")
                continue
            n = self._numbers(daemon)
            lines.append(
                f"{head}{n['docs']:>5}{daemon.acked:>6}{daemon.failed:>4}{n['published']:>6}{n['applied']:>8}"
                f"{n['behind']:>7}  {n['root']:<8}  {self._peers_text(daemon, ' ')}"
            )
        lines += [
            "acked/err: the demo's writes to the node; pub: updates it published this epoch",
            "applied: updates from peers; behind: lag; peers: state (silent for N s); dc: * relay",
        ]
        return lines

    def render(self) -> None:
        self.last_render = time.monotonic()
        if self.idle:
            self._render_idle()
            return
        if self.tty:
            self._clear()
            lines = self.table()
            sys.stdout.write("\n".join(_fit(line) for line in lines) + "\n")
            sys.stdout.flush()
            self.drawn_lines = len(lines)
            return
        converged = self.verdict[0]
        parts = []
        for daemon in self.daemons.values():
            if daemon.status is None or daemon.state != "running":
                parts.append(f"{daemon.name}: {daemon.state}")
                continue
            n = self._numbers(daemon)
            parts.append(
                f"{daemon.name}: dc={self._dc_text(daemon)} docs={n['docs']} acked={daemon.acked} pub={n['published']} "
                f"applied={n['applied']} behind={n['behind']} root={n['root']} "
                f"peers={self._peers_text(daemon, ',')}"
            )
        label = "converged" if converged else "catching up"
        print(f"[{self.now():5.1f} s] {self.phase}: {label} | " + " | ".join(parts), flush=True)

    def _render_idle(self) -> None:
        converged, why = self.verdict
        states = " ".join(f"{d.name}:{d.state}" for d in self.daemons.values())
        line = f"cluster {'CONVERGED' if converged else 'CATCHING UP'} ({why}); {states}"
        if self.tty:
            self._clear()
            sys.stdout.write(_fit(f"[{self.now():5.1f} s] {line}   (Ctrl-C stops the daemons)") + "\n")
            sys.stdout.flush()
            self.drawn_lines = 1
        elif line != self.last_idle_line:  # a file or a pipe: only changes
            print(f"[{self.now():5.1f} s] {line}", flush=True)
        self.last_idle_line = line

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

    # ------------------------------------------------------------------ daemons

    async def wait_healthy(self, daemons: Sequence[Daemon]) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        waiting = list(daemons)
        while waiting:
            for daemon in list(waiting):
                process = daemon.process
                assert process is not None
                if process.poll() is not None:
                    daemon.state = "exited"
                    raise DemoError(
                        f"daemon {daemon.name} failed to start (exit status {process.returncode}); "
                        f"the end of {daemon.log_path}:\n{log_tail(daemon.log_path)}"
                    )
                with contextlib.suppress(httpx.HTTPError, ValueError):
                    response = await self.client.get(f"{daemon.url}/health", timeout=0.5)
                    if response.status_code == 200 and response.json().get("node_id") == daemon.name:
                        daemon.state = "running"
                        waiting.remove(daemon)
            if waiting and time.monotonic() > deadline:
                names = ", ".join(d.name for d in waiting)
                tails = "\n".join(f"  {d.log_path}:\n{log_tail(d.log_path)}" for d in waiting)
                raise DemoError(f"{names} did not answer /health within {START_TIMEOUT_S:.0f} s\n{tails}")
            if waiting:
                await asyncio.sleep(0.1)

    async def writer(self, daemon: Daemon) -> None:
        rng = random.Random(f"{daemon.name}-{os.getpid()}")
        while True:
            await self.write_enabled[daemon.name].wait()
            write = next_write(daemon, rng)
            try:
                response = await self.client.put(
                    f"{daemon.url}/v1/docs/{write.doc}/keys/{write.key}", json=write.value
                )
            except httpx.HTTPError as exc:
                daemon.failed += 1
                daemon.failures.append(write)
                daemon.last_error = f"{type(exc).__name__}: {exc}"
            else:
                state_vector = _state_vector(response) if response.status_code == 200 else None
                if state_vector is not None:
                    daemon.acked += 1
                    daemon.acks.append(Ack(write, state_vector))
                else:
                    daemon.failed += 1
                    daemon.failures.append(write)
                    daemon.last_error = f"HTTP {response.status_code}: {response.text[:200]}"
            await asyncio.sleep(rng.uniform(*WRITE_INTERVAL_S))

    async def verify_acknowledged(self, daemon: Daemon, incarnation: int) -> bool:
        """Every write `daemon` acknowledged in `incarnation` is on it now: by value for the keys only it
        writes, by presence for the shared keys, and by state vector for every doc it wrote."""
        acks = [ack for ack in daemon.acks if ack.write.incarnation == incarnation]
        last: dict[tuple[str, str], Ack] = {}
        last_per_doc: dict[str, Ack] = {}
        for ack in acks:
            last[(ack.write.doc, ack.write.key)] = ack
            last_per_doc[ack.write.doc] = ack
        problems: list[str] = []

        async def check_key(ack: Ack) -> None:
            write = ack.write
            try:
                response = await self.client.get(f"{daemon.url}/v1/docs/{write.doc}/keys/{write.key}")
            except httpx.HTTPError as exc:
                problems.append(f"{write.doc} {write.key}: {exc}")
                return
            if response.status_code != 200:
                problems.append(f"{write.doc} {write.key}: HTTP {response.status_code} {response.text[:120]}")
                return
            if not write.owned:
                return  # a peer may have written a newer value since: presence is what counts
            # A write sent after it but never acknowledged (in flight at the kill) may have landed too.
            allowed = [write.value] + [
                f.value
                for f in daemon.failures
                if (f.doc, f.key) == (write.doc, write.key) and f.seq > write.seq
            ]
            value = response.json()["value"]
            if value not in allowed:
                problems.append(f"{write.doc} {write.key}: {value!r}, acknowledged {write.value!r}")

        async def check_doc(doc: str, ack: Ack) -> None:
            try:
                response = await self.client.get(f"{daemon.url}/v1/docs/{doc}")
                have = decode_state_vector(_b64url_decode(response.json()["state_vector"]))
                need = decode_state_vector(_b64url_decode(ack.state_vector))
            except (httpx.HTTPError, ValueError, KeyError, StateDecodeError) as exc:
                problems.append(f"{doc}: cannot compare state vectors: {exc}")
                return
            if not covers(have, need):
                problems.append(f"{doc}: the state vector does not cover the last acknowledged write")

        await asyncio.gather(
            *(check_key(ack) for ack in last.values()),
            *(check_doc(doc, ack) for doc, ack in last_per_doc.items()),
        )
        owned = sum(1 for ack in last.values() if ack.write.owned)
        if problems:
            self.event(
                f"LOST WRITES on {daemon.name}: {len(problems)} of the checks failed:\n"
                + "\n".join(f"    {p}" for p in problems[:20])
            )
            return False
        in_flight = sum(1 for f in daemon.failures if f.incarnation == incarnation)
        self.event(
            f"{daemon.name} kept every write it acknowledged before the kill: {len(acks)} writes, "
            f"checked on {daemon.name} right after its restart ({owned} keys by value, {len(last) - owned} "
            f"shared keys present, state vectors of {len(last_per_doc)} docs cover the acknowledgements)"
            + (f"; {in_flight} write(s) in flight at the kill were not acknowledged" if in_flight else "")
        )
        return True

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
            self.cluster.spawn(daemon)
            self.say(
                f"         {daemon.name}: pid {daemon.pid}, replication {daemon.listen}, HTTP {daemon.url}, "
                f"log {daemon.log_path}"
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
        self.phase = "settled" if converged else "NOT settled"
        self.render()
        self.drawn_lines = 0  # keep the final table on screen
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
        incarnation = victim.incarnation
        self.cluster.kill9(victim)
        self.write_enabled[VICTIM].clear()
        others = [n for n in NODE_NAMES if n != VICTIM]
        self.phase = f"{VICTIM} killed, writing to {' and '.join(others)}"
        self.event(
            f"kill -9 {VICTIM} (pid {pid}) after {victim.acked} acknowledged writes; "
            f"writes go on to {' and '.join(others)}"
        )
        self.render()
        await self.sleep_until(writes_started, restart_at)
        self.cluster.spawn(victim)
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

    def print_help(self) -> None:
        cli = _cli_command()
        a, b, c = (self.daemons[name] for name in NODE_NAMES)
        lines = ["", "The daemons keep running:"]
        for daemon in self.daemons.values():
            lines.append(
                f"  {daemon.name}: HTTP API {daemon.url}   metrics {daemon.url}/metrics   log {daemon.log_path}"
            )
        lines += [
            "",
            "Try, in another terminal:",
            f"  {cli} status --url {a.url}",
            f"  {cli} docs --url {b.url}",
            f"  {cli} get --url {b.url} models/registry",
            f"  {cli} watch --url {c.url} flags/features",
            f"  {cli} put --url {a.url} flags/features new-router '{{\"enabled\": true}}'",
            f"  curl -s {a.url}/metrics | grep ^crdtsync_peer",
            "",
            "Ctrl-C stops the daemons"
            + (f" (or they stop {self.seconds:.0f} s after the start)." if self.seconds is not None else "."),
        ]
        self.say("\n".join(lines))

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


def _fit(line: str) -> str:
    """Cut a line that is redrawn in place to the terminal's width: a wrapped line would take two rows
    and break the redraw."""
    width = shutil.get_terminal_size().columns
    return line if len(line) < width else line[: max(1, width - 2)] + "~"


def _cli_command() -> str:
    """How to call the `crdtsync` command of this installation from the current directory."""
    script = os.path.join(os.path.dirname(sys.executable), "crdtsync")
    on_path = shutil.which("crdtsync")
    if on_path is not None and os.path.realpath(on_path) == os.path.realpath(script):
        return "crdtsync"
    if os.path.exists(script):
        relative = os.path.relpath(script)
        return relative if not relative.startswith("..") else script
    return f"{sys.executable} -m crdtsync"


def run_demo(work_dir: str | None, base_port: int, seconds: float | None) -> int:
    """Run the demo; returns the exit status (0: converged and no acknowledged write lost)."""
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
    cluster: Cluster | None = None
    status = 1
    try:
        cluster = Cluster(root, base_port)
        demo = Demo(cluster, seconds, work_dir)
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
                for note in cluster.stop_all():
                    print(f"  {note}", file=sys.stderr, flush=True)
            if work_dir is None:
                shutil.rmtree(root, ignore_errors=True)
            else:
                print(f"data and logs kept in {root}", flush=True)
        finally:
            restore()
    return status
