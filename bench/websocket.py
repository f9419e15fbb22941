"""Yjs clients on the y-websocket endpoint (issue 16): fan-out latency, server CPU per update and memory
per idle connection, against the npm y-websocket server and pycrdt-websocket in the same run.

    python -m bench.websocket [--quick] [--json OUT]

Clients are npm `y-websocket` providers (`bench/js/load.mjs`, all in one Node.js process, so that a
sender's and its receivers' clocks are one clock), installed with `npm ci` into bench/js/node_modules
on the first run. Servers, each alone on the machine while it is measured:

- crdtsync, 3 nodes: `crdtsync serve` daemons (SQLite store, durability fsync by default) in a full
  mesh; each doc's clients spread over the three;
- crdtsync, 1 node: the same clients on one daemon;
- crdtsync, 3 nodes with durability "process" (a client's update is relayed once written, not once
  fsynced): what the fsync costs in latency;
- npm: `@y/websocket-server` (the y-websocket server of `y-websocket` 3's README; in memory, no
  persistence), one Node.js process;
- pycrdt-websocket: its `WebsocketServer` behind `ASGIServer` on hypercorn (`bench._ws`; in memory).

Fan-out: CLIENTS clients edit DOCS docs (client i edits doc i % DOCS), each a Map set at RATE per
second with jitter, for SECONDS; the latency is from the set at the sender to the change event at
every other client of the doc. Server CPU per update: user+sys CPU of the server processes (all
nodes) from the first edit until every client of each doc holds the same state, over the updates.
Idle: IDLE providers held open on one server (one doc per 5 connections; each provider renews its
awareness every 15 s, as y-websocket does), the server's RSS before and after, over the connections.
Large: a doc of LARGE_MB values of 1 MB (written through the HTTP API on crdtsync, whose frame bound
refuses it as one client update; by a provider on the npm server), then the time a fresh provider
takes to sync it, and the messages it came in.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import httpx

from bench._common import (
    JSON,
    REPO_ROOT,
    BenchError,
    Child,
    Deadline,
    Target,
    fmt,
    machine_info,
    print_table,
    proc_cpu_s,
    ratio,
    write_json,
)
from crdtsync.testing.cluster import LocalCluster, free_ports

JS_DIR = REPO_ROOT / "bench" / "js"
NPM_TIMEOUT_S = 300.0
START_TIMEOUT_S = 30.0
JS_STEP_TIMEOUT_MS = 60_000
SETTLE_S = 5.0
"""Wait after the idle connections are open before reading RSS: the servers' answers and awareness
relays to settle."""
IDLE_CPU_WINDOW_S = 10.0
CONNECTIONS_PER_IDLE_DOC = 5
PYCRDT_WEBSOCKET_IDLE_MAX = 300
"""pycrdt-websocket on hypercorn opens 3 to 15 connections a second here (5,000 did not finish in 20
minutes): it is measured with at most this many."""
IDLE_CONNECT_S_PER_CONNECTION = 0.5
"""The deadline for opening the idle connections: 60 s and this much per connection."""
IDLE_BATCH = 250
RSS_GOAL_BYTES = 1 << 30
"""Issue 16: 5,000 idle connections on one node in at most 1 GB."""
FANOUT_P99_RATIO_MAX = 2.0
"""Issue 16: fan-out p99 at most twice the npm server's at equal load."""


@dataclass
class Servers:
    """The processes serving one system: their pids and the provider base URL of each."""

    name: str
    pids: list[int]
    urls: list[str]

    def cpu_s(self) -> float:
        total = 0.0
        for pid in self.pids:
            value = proc_cpu_s(pid)
            if value is None:
                raise BenchError(f"{self.name}: server process {pid} is gone")
            total += value
        return total

    def rss_bytes(self) -> int:
        total = 0
        for pid in self.pids:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        return total


@dataclass
class Options:
    clients: int
    docs: int
    rate_hz: float
    seconds: float
    idle: int
    durability: str
    large_mb: int
    burst: int
    log_dir: Path
    results: JSON = field(default_factory=dict)


# ------------------------------------------------------------------------------------------ servers


def _wait_listening(port: int, deadline: Deadline, what: str) -> None:
    while True:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return
        if deadline.expired():
            raise BenchError(f"{what} did not listen on port {port} in {deadline.seconds:.0f} s")
        time.sleep(0.05)


@contextlib.contextmanager
def crdtsync_servers(
    options: Options, nodes: int, durability: str | None = None, extra_args: tuple[str, ...] = ()
) -> Iterator[Servers]:
    names = [f"n{index}" for index in range(nodes)]
    root = tempfile.mkdtemp(prefix="crdtsync-bench-ws-", dir=options.log_dir)
    durability = durability or options.durability
    with LocalCluster.named(
        root, names, extra_args=["--durability", durability, "--log-level", "warning", *extra_args]
    ) as cluster:
        cluster.start_all()
        cluster.wait_healthy(timeout_s=START_TIMEOUT_S)
        deadline = Deadline(START_TIMEOUT_S)
        while nodes > 1:
            statuses = [cluster.status(name) for name in names]
            if all(
                status is not None and sum(peer["state"] == "alive" for peer in status["peers"]) == nodes - 1
                for status in statuses
            ):
                break
            if deadline.expired():
                raise BenchError("the crdtsync nodes did not see each other")
            time.sleep(0.1)
        daemons = [cluster[name] for name in names]
        yield Servers(
            f"crdtsync, {nodes} node{'s' if nodes > 1 else ''}"
            + ("" if durability == options.durability else f", durability {durability}"),
            [daemon.pid for daemon in daemons if daemon.pid is not None],
            [f"ws://127.0.0.1:{daemon.http_port}/v1/ws" for daemon in daemons],
        )


@contextlib.contextmanager
def npm_server(options: Options) -> Iterator[Servers]:
    (port,) = free_ports(1)
    log: IO[str]
    with open(options.log_dir / "npm-server.log", "w", encoding="utf-8") as log:
        process = subprocess.Popen(
            ["node", str(JS_DIR / "node_modules/@y/websocket-server/src/server.js")],
            cwd=JS_DIR,
            env={**os.environ, "HOST": "127.0.0.1", "PORT": str(port)},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            _wait_listening(port, Deadline(START_TIMEOUT_S), "the npm y-websocket server")
            yield Servers("npm @y/websocket-server", [process.pid], [f"ws://127.0.0.1:{port}"])
        finally:
            process.kill()
            process.wait()


@contextlib.contextmanager
def pycrdt_server(options: Options) -> Iterator[Servers]:
    (port,) = free_ports(1)
    child = Child("pycrdt-websocket-server", "bench._ws", ["server", "--port", str(port)], options.log_dir)
    try:
        child.wait("ready", Deadline(START_TIMEOUT_S))
        yield Servers("pycrdt-websocket", [child.pid], [f"ws://127.0.0.1:{port}"])
    finally:
        child.close()


SYSTEMS = {
    "crdtsync-3": lambda options: crdtsync_servers(options, 3),
    "crdtsync-1": lambda options: crdtsync_servers(options, 1),
    "crdtsync-3-process": lambda options: crdtsync_servers(options, 3, "process"),
    "npm": npm_server,
    "pycrdt-websocket": pycrdt_server,
}


IDLE_SYSTEMS = ("crdtsync-1", "npm", "pycrdt-websocket")
"""Those measured with idle connections too (one server each)."""


# ------------------------------------------------------------------------------------------ clients


class Clients:
    """`node load.mjs MODE SPEC`: its JSON events, read by a thread; stderr to a log file."""

    def __init__(self, mode: str, spec: JSON, log_path: Path) -> None:
        self._log = log_path.open("w", encoding="utf-8")
        self.process = subprocess.Popen(
            ["node", "load.mjs", mode, json.dumps(spec)],
            cwd=JS_DIR,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            bufsize=1,
        )
        self._events: list[JSON] = []
        self._ready = threading.Condition()
        self._done = False
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with contextlib.suppress(ValueError), self._ready:
                self._events.append(json.loads(line))
                self._ready.notify_all()
        with self._ready:
            self._done = True
            self._ready.notify_all()

    def wait(self, ev: str, deadline: Deadline) -> JSON:
        with self._ready:
            while True:
                for event in self._events:
                    if event.get("ev") == "error":
                        raise BenchError(f"the Node.js clients: {event.get('msg')}")
                    if event.get("ev") == ev:
                        self._events.remove(event)
                        return event
                if self._done:
                    raise BenchError(f"the Node.js clients exited before {ev!r} (log {self._log.name})")
                if deadline.expired():
                    raise BenchError(f"the Node.js clients: no {ev!r} in {deadline.seconds:.0f} s")
                self._ready.wait(min(1.0, deadline.remaining_s()))

    def send(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()
        self._log.close()


def fanout(options: Options, servers: Servers) -> JSON:
    spec = {
        "urls": servers.urls,
        "docs": options.docs,
        "clients": options.clients,
        "rate_hz": options.rate_hz,
        "seconds": options.seconds,
        "timeout_ms": JS_STEP_TIMEOUT_MS,
        "burst": options.burst,
    }
    clients = Clients("fanout", spec, options.log_dir / "fanout-clients.log")
    try:
        deadline = Deadline(options.seconds + 3 * JS_STEP_TIMEOUT_MS / 1000)
        synced = clients.wait("synced", deadline)
        clients.wait("editing", deadline)
        cpu_before = servers.cpu_s()
        result = clients.wait("result", deadline)
        cpu = servers.cpu_s() - cpu_before
        burst: JSON = {}
        if options.burst > 0:
            clients.wait("bursting", deadline)
            cpu_before = servers.cpu_s()
            done = clients.wait("burst", Deadline(3 * JS_STEP_TIMEOUT_MS / 1000))
            burst_cpu = servers.cpu_s() - cpu_before
            burst = {
                "burst_updates": done["updates"],
                "burst_updates_per_s": done["updates"] / (done["ms"] / 1000),
                "burst_cpu_per_update_us": burst_cpu / done["updates"] * 1e6,
                "burst_disconnected": done["disconnected"],
            }
    finally:
        clients.close()
    updates = int(result["updates"])
    return {
        **burst,
        **result,
        "connect_ms": synced["ms"],
        "server_cpu_s": cpu,
        "server_cpu_per_update_us": cpu / updates * 1e6 if updates else None,
        "delivered": result["count"] / result["deliveries_expected"]
        if result["deliveries_expected"]
        else None,
    }


def idle(options: Options, servers: Servers, connections: int) -> JSON:
    spec = {
        "url": servers.urls[0],
        "docs": max(1, connections // CONNECTIONS_PER_IDLE_DOC),
        "connections": connections,
        "batch": IDLE_BATCH,
        "timeout_ms": JS_STEP_TIMEOUT_MS,
    }
    time.sleep(1.0)  # let the server finish starting before its baseline
    rss_before = servers.rss_bytes()
    clients = Clients("idle", spec, options.log_dir / "idle-clients.log")
    try:
        connected = clients.wait("connected", Deadline(60 + connections * IDLE_CONNECT_S_PER_CONNECTION))
        time.sleep(SETTLE_S)
        cpu_before = servers.cpu_s()
        time.sleep(IDLE_CPU_WINDOW_S)
        cores = (servers.cpu_s() - cpu_before) / IDLE_CPU_WINDOW_S
        rss_after = servers.rss_bytes()
        clients.send("count")
        count = clients.wait("count", Deadline(30))
        clients.send("quit")
        clients.wait("closed", Deadline(60))
    finally:
        clients.close()
    return {
        "connections": connections,
        "connect_s": connected["ms"] / 1000,
        "still_connected": count["connected"],
        "rss_before_bytes": rss_before,
        "rss_after_bytes": rss_after,
        "rss_per_connection_bytes": (rss_after - rss_before) / connections,
        "idle_cores": cores,
    }


def large(options: Options, servers: Servers, through_http: str | None) -> JSON:
    """A doc of `options.large_mb` values of 1 MB, written through the HTTP API at `through_http`
    (crdtsync: a client cannot send one update over the frame bound) or by a provider, then synced
    by a fresh provider."""
    doc_id = "bench/large"
    deadline = Deadline(300)
    written_s = None
    if through_http is not None:
        body = json.dumps({f"k{index}": "y" * 1_000_000 for index in range(options.large_mb)})
        started = time.monotonic()
        response = httpx.patch(
            f"{through_http}/v1/docs/{doc_id}",
            content=body,
            headers={"Content-Type": "application/json"},
            timeout=deadline.remaining_s(),
        )
        if not response.is_success:
            raise BenchError(
                f"{servers.name}: writing the large doc: {response.status_code} {response.text[:200]}"
            )
        written_s = time.monotonic() - started
    spec = {
        "url": servers.urls[0],
        "doc": doc_id,
        "write_mb": 0 if through_http is not None else options.large_mb,
        "timeout_ms": 240_000,
    }
    clients = Clients("large", spec, options.log_dir / "large-clients.log")
    try:
        if through_http is None:
            clients.wait("written", deadline)
            clients.send("fetch")
        fetched = clients.wait("fetched", deadline)
    finally:
        clients.close()
    if fetched["value_bytes"] != options.large_mb * 1_000_000:
        raise BenchError(f"{servers.name}: the fresh client got {fetched['value_bytes']} bytes of values")
    return {
        "megabytes": options.large_mb,
        "written_s": written_s,
        "sync_s": fetched["ms"] / 1000,
        "messages": fetched["messages"],
        "largest_message_bytes": fetched["largest"],
    }


LARGE_SYSTEMS = {
    "crdtsync-1": lambda options: crdtsync_servers(
        options, 1, extra_args=("--set", f"http.body_bytes_max={(options.large_mb + 8) << 20}")
    ),
    "npm": npm_server,
}
"""pycrdt-websocket is left out: hypercorn refuses WebSocket messages over 16 MiB by default."""


# ------------------------------------------------------------------------------------------ report


def npm_install() -> None:
    if shutil.which("node") is None or shutil.which("npm") is None:
        raise BenchError(
            "the clients and the npm server need node and npm on the PATH (apt install nodejs npm)"
        )
    if (JS_DIR / "node_modules" / "@y" / "websocket-server").exists():
        return
    print("installing bench/js (npm ci) ...", flush=True)
    subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=JS_DIR, check=True, timeout=NPM_TIMEOUT_S)


def js_versions() -> dict[str, str]:
    versions = {"node": subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip()}
    for package in ("yjs", "y-websocket", "ws", "@y/websocket-server"):
        path = JS_DIR / "node_modules" / package / "package.json"
        versions[package] = json.loads(path.read_text())["version"] if path.exists() else "not installed"
    return versions


def report(options: Options) -> list[Target]:
    results = options.results
    fan = results.get("fanout", {})
    rows = []
    errors: list[str] = []
    for value in fan.values():
        if "error" in value:
            rows.append([value["name"], *["-"] * 8, "failed (below)"])
            errors.append(f"{value['name']}: {value['error']}")
            continue
        rows.append(
            [
                value["name"],
                fmt(value["p50_ms"], 2),
                fmt(value["p99_ms"], 2),
                fmt(value["max_ms"], 1),
                fmt(value["delivered"], 3),
                fmt(value["drain_ms"], 1),
                fmt(value["server_cpu_per_update_us"], 0),
                fmt(value.get("burst_updates_per_s"), 0),
                fmt(value.get("burst_cpu_per_update_us"), 0),
                fmt(value.get("burst_disconnected")),
            ]
        )
    print_table(
        f"Fan-out: {options.clients} clients, {options.docs} docs, {options.rate_hz:g} updates/s per client "
        f"for {options.seconds:g} s",
        [
            "server",
            "p50 ms",
            "p99 ms",
            "max ms",
            "delivered",
            "drain ms",
            "CPU us/update",
            "burst updates/s",
            "burst CPU us/update",
            "closed",
        ],
        rows,
        [
            "latency: from a client's Map set to the change event at each other client of the doc",
            "delivered: change events seen / (updates x other clients of the doc); an event that",
            "  carries two sets of one key counts once",
            "drain: from the last set until every client of each doc holds the same state",
            "CPU: user+sys of every server process (all nodes) over the edits, per update made",
            f"burst: then every client makes {options.burst} sets at once: updates made / time until all",
            "  clients of each doc are equal, and CPU per update; closed: providers disconnected then",
            *errors,
        ],
    )
    rows = []
    errors = []
    for value in results.get("idle", {}).values():
        if "error" in value:
            rows.append([value["name"], "-", "-", "-", "-", "-", "-", "failed (below)"])
            errors.append(f"{value['name']}: {value['error']}")
            continue
        rows.append(
            [
                value["name"],
                fmt(value["connections"]),
                fmt(value["still_connected"]),
                fmt(value["rss_before_bytes"] / 2**20, 0),
                fmt(value["rss_after_bytes"] / 2**20, 0),
                fmt(value["rss_per_connection_bytes"] / 1024, 1),
                fmt(value["idle_cores"], 3),
                fmt(value["connect_s"], 1),
            ]
        )
    print_table(
        f"Idle: y-websocket providers on one server, {CONNECTIONS_PER_IDLE_DOC} per doc",
        [
            "server",
            "connections",
            "connected",
            "RSS before MiB",
            "RSS after MiB",
            "KiB/connection",
            "cores",
            "connect s",
        ],
        rows,
        [
            "connected: providers still connected at the end (one that hears nothing for 30 s reconnects)",
            "cores: server CPU over 10 s once connected (awareness renewals every 15 s per provider)",
            *errors,
        ],
    )
    rows = []
    errors = []
    for value in results.get("large", {}).values():
        if "error" in value:
            rows.append([value["name"], "-", "-", "-", "failed (below)"])
            errors.append(f"{value['name']}: {value['error']}")
            continue
        rows.append(
            [
                value["name"],
                fmt(value["sync_s"], 2),
                fmt(value["messages"]),
                fmt(value["largest_message_bytes"] / 2**20, 2),
                "by HTTP" if value["written_s"] is not None else "by a provider",
            ]
        )
    print_table(
        f"A fresh provider syncs a {options.large_mb} MB doc ({options.large_mb} Map values of 1 MB)",
        ["server", "sync s", "messages", "largest MiB", "written"],
        rows,
        ["sync: from the provider's creation until it is synced; messages: all it received", *errors],
    )
    targets: list[Target] = []
    ours, npm = fan.get("crdtsync-3", {}), fan.get("npm", {})
    targets.append(
        Target(
            "fanout_p99_vs_npm",
            "fan-out p99, crdtsync 3 nodes / npm server",
            ratio(ours.get("p99_ms"), npm.get("p99_ms")),
            FANOUT_P99_RATIO_MAX,
        )
    )
    idle_ours = results.get("idle", {}).get("crdtsync-1", {})
    projected = None
    if "rss_per_connection_bytes" in idle_ours:
        projected = idle_ours["rss_before_bytes"] + 5000 * idle_ours["rss_per_connection_bytes"]
    targets.append(
        Target(
            "idle_5000_rss",
            f"RSS of one node with 5,000 idle connections (measured at {options.idle})",
            None if projected is None else projected / 2**20,
            RSS_GOAL_BYTES / 2**20,
            " MiB",
        )
    )
    print("\nTargets")
    for target in targets:
        value = "-" if target.value is None else f"{target.value:,.2f}{target.unit}"
        print(f"  {target.text}: {value} (goal <= {target.limit:,.0f}{target.unit}) {target.verdict}")
    return targets


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.websocket", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="30 clients for 6 s, 500 idle connections")
    parser.add_argument("--clients", type=int)
    parser.add_argument("--docs", type=int, default=10)
    parser.add_argument("--rate", type=float, default=1.0, help="updates per second per client")
    parser.add_argument("--seconds", type=float)
    parser.add_argument("--idle", type=int, help="idle connections (default 5000, 500 with --quick)")
    parser.add_argument("--large-mb", type=int, help="size of the large doc, MB (default 50, 5 with --quick)")
    parser.add_argument(
        "--burst", type=int, help="sets per client at once after the paced edits (default 50)"
    )
    parser.add_argument("--durability", default="fsync", choices=("fsync", "process", "none"))
    parser.add_argument("--only", action="append", choices=list(SYSTEMS), help="measure only these servers")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    npm_install()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-websocket-") as scratch:
        options = Options(
            clients=args.clients or (30 if args.quick else 100),
            docs=args.docs,
            rate_hz=args.rate,
            seconds=args.seconds or (6.0 if args.quick else 20.0),
            idle=args.idle or (500 if args.quick else 5000),
            durability=args.durability,
            large_mb=args.large_mb or (5 if args.quick else 50),
            burst=args.burst if args.burst is not None else (20 if args.quick else 50),
            log_dir=Path(scratch),
        )
        info = {
            **machine_info(),
            **js_versions(),
            "load average": " ".join(f"{v:.2f}" for v in os.getloadavg()),
        }
        for key, value in info.items():
            print(f"  {key:<20} {value}")
        systems = args.only or list(SYSTEMS)
        options.results = {"fanout": {}, "idle": {}, "large": {}}
        for key in systems:
            print(f"fan-out on {key} ...", flush=True)
            try:
                with SYSTEMS[key](options) as servers:
                    options.results["fanout"][key] = {"name": servers.name, **fanout(options, servers)}
            except BenchError as exc:
                options.results["fanout"][key] = {"name": key, "error": str(exc)}
                print(f"  {key}: {exc}", file=sys.stderr)
        for key in (k for k in systems if k in IDLE_SYSTEMS):
            print(f"{options.idle} idle connections on {key} ...", flush=True)
            try:
                with SYSTEMS[key](options) as servers:
                    connections = options.idle
                    if key == "pycrdt-websocket":
                        connections = min(connections, PYCRDT_WEBSOCKET_IDLE_MAX)
                    options.results["idle"][key] = {
                        "name": servers.name,
                        **idle(options, servers, connections),
                    }
            except BenchError as exc:
                options.results["idle"][key] = {"name": key, "error": str(exc)}
                print(f"  {key}: {exc}", file=sys.stderr)
        for key in (k for k in systems if k in LARGE_SYSTEMS):
            print(f"a {options.large_mb} MB doc to a fresh client on {key} ...", flush=True)
            try:
                with LARGE_SYSTEMS[key](options) as servers:
                    http_url = servers.urls[0].replace("ws://", "http://").removesuffix("/v1/ws")
                    through_http = http_url if key.startswith("crdtsync") else None
                    options.results["large"][key] = {
                        "name": servers.name,
                        **large(options, servers, through_http),
                    }
            except BenchError as exc:
                options.results["large"][key] = {"name": key, "error": str(exc)}
                print(f"  {key}: {exc}", file=sys.stderr)
        targets = report(options)
        load_end = " ".join(f"{v:.2f}" for v in os.getloadavg())
        print(f"\n{time.monotonic() - started:.0f} s in all; load average at the end {load_end}")
        if args.json is not None:
            write_json(
                args.json,
                {
                    "machine": {**info, "load average at the end": load_end},
                    "options": {k: v for k, v in vars(options).items() if k not in ("results", "log_dir")},
                    "results": options.results,
                    "targets": [target.as_json() for target in targets],
                },
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
