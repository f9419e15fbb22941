"""Live demo: three crdtsync nodes as separate OS processes, one of them killed with SIGKILL mid-run.

The parent starts three children on 127.0.0.1 (this same file, run with `--child NAME`). Each child
runs a `Node`, keeps writing to three shared docs (a model registry, feature flags, a fleet config)
a few times a second, and answers the parent's `report` requests with one JSON line on stdout:
per-doc canonical digests, doc count, counters and the state of its peers.

The parent draws a live view a few times a second. After about a third of the run it kills node c
with SIGKILL while a and b keep writing; a few seconds later it starts c again on the same address.
Each node keeps its docs in an SQLite store in the demo's temporary directory, so c comes back
with everything it had committed, a new epoch and client id, and catches up on what it missed from
its peers by retransmission and anti-entropy. At the end the parent tells every node to stop writing, waits for
equal digests and equal JSON, stops the children and exits 0 (converged) or 1 (not converged).

    .venv/bin/python examples/live_demo.py               # 20 s of writes, then settle and exit
    .venv/bin/python examples/live_demo.py --seconds 60
    .venv/bin/python examples/live_demo.py --forever     # kill and restart a node every 20 s; Ctrl-C ends

Parent -> child commands, one per line on the child's stdin: `report TICK`, `report-full TICK`
(adds each doc's JSON), `quiet` (stop writing), `stop`. A child also stops when its stdin closes,
so children never outlive the parent.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import logging
import os
import queue
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import IO, Any

from pycrdt import Doc, Map

from crdtsync import Node, NodeConfig
from crdtsync.daemon.demo import pick_free_ports  # the same port picker `crdtsync demo` uses

NODE_NAMES = ("a", "b", "c")
DOC_IDS = ("feature-flags", "fleet-config", "model-registry")
MODELS = ("llama-3-70b", "mistral-7b", "embed-small", "rerank-base", "whisper-large")
STAGES = ("staging", "canary", "production", "rollback")
FLAGS = ("kv-cache-offload", "speculative-decoding", "fp8-matmul", "prefix-caching", "new-router")
CLUSTERS = ("us-east", "eu-west", "ap-south")

FRAME_INTERVAL_S = 0.25
WRITE_INTERVAL_S = (0.15, 0.35)
KILL_DOWNTIME_S = 5.0
FOREVER_CYCLE_S = 20.0
SETTLE_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0
REPORT_LINE_BYTES_MAX = 1 << 20


# ---------------------------------------------------------------------------------------- child


def write_once(name: str, docs: dict[str, Doc[Any]], rng: random.Random, count: int) -> None:
    """One application write, the way a control plane would make it: a plain pycrdt transaction."""
    doc_id = rng.choice(DOC_IDS)
    data = docs[doc_id].get("data", type=Map)
    if doc_id == "model-registry":
        data[rng.choice(MODELS)] = {
            "stage": rng.choice(STAGES),
            "shards": rng.choice((1, 2, 4, 8)),
            "by": f"{name}#{count}",
        }
    elif doc_id == "feature-flags":
        data[rng.choice(FLAGS)] = rng.random() < 0.5
    else:
        with docs[doc_id].transaction():  # two keys changed atomically: one delta
            cluster = rng.choice(CLUSTERS)
            data[f"{cluster}.replicas"] = rng.randint(2, 64)
            data[f"{cluster}.updated_by"] = name


def emit(report: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(report, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def child_report(node: Node, docs: dict[str, Doc[Any]], tick: int, writes: int, full: bool) -> dict[str, Any]:
    status = node.status()
    held = node.doc_ids()
    report: dict[str, Any] = {
        "tick": tick,
        "node": status.node_id,
        "pid": os.getpid(),
        "epoch": status.epoch,
        "docs": status.docs,
        "writes": writes,
        "published": status.published_updates,
        "applied": status.counters.get("deltas_applied", 0) + status.counters.get("sync_updates_applied", 0),
        "pending": status.pending_updates,
        "ae_rounds": status.counters.get("ae_rounds_completed", 0),
        # A peer's node_id is None until the hello exchange with it completes: show its address then.
        "peers": [[peer.node_id or peer.address, peer.state] for peer in status.peers],
        "digests": {doc_id: node.digest(doc_id).hex() for doc_id in held if doc_id in docs},
    }
    if full:
        report["content"] = {doc_id: docs[doc_id].get("data", type=Map).to_py() for doc_id in held}
    return report


async def run_child(name: str, listen: str, peers: list[str], data_dir: str | None) -> int:
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s {name} %(name)s %(message)s")
    loop = asyncio.get_running_loop()
    commands: asyncio.Queue[str | None] = asyncio.Queue()

    def read_stdin() -> None:
        """Forward the parent's commands; end of file (the parent closed the pipe or died) means stop."""
        try:
            for line in sys.stdin:
                loop.call_soon_threadsafe(commands.put_nowait, line.strip())
        finally:
            with contextlib.suppress(RuntimeError):  # the loop is already closed
                loop.call_soon_threadsafe(commands.put_nowait, None)

    threading.Thread(target=read_stdin, name="stdin", daemon=True).start()
    rng = random.Random(f"{name}-{os.getpid()}")
    writes = 0
    writing = True

    config = NodeConfig(node_id=name, listen=listen, peers=peers, data_dir=data_dir)
    async with Node(config) as node:
        docs = {doc_id: await node.open(doc_id) for doc_id in DOC_IDS}

        async def writer() -> None:
            nonlocal writes
            while writing:
                write_once(name, docs, rng, writes)
                writes += 1
                await asyncio.sleep(rng.uniform(*WRITE_INTERVAL_S))

        writer_task = asyncio.create_task(writer())
        try:
            while True:
                command = await commands.get()
                if command is None or command == "stop":
                    break
                verb, _, argument = command.partition(" ")
                if verb in ("report", "report-full"):
                    tick = int(argument) if argument.isdigit() else 0
                    emit(child_report(node, docs, tick, writes, full=verb == "report-full"))
                elif verb == "quiet":
                    writing = False
        except (BrokenPipeError, ConnectionResetError):
            pass  # the parent is gone: stop
        finally:
            writing = False
            writer_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer_task
    return 0


# ---------------------------------------------------------------------------------------- parent


@dataclass
class Child:
    name: str
    listen: str
    peers: list[str]
    process: subprocess.Popen[str] | None = None
    incarnation: int = 0
    report: dict[str, Any] | None = None
    state: str = "starting"
    """starting, running, killed, exited."""
    restarted_at: float | None = None
    log: IO[str] | None = None
    exit_codes: list[int] = field(default_factory=list)


class Demo:
    def __init__(self, seconds: float, forever: bool, log_dir: str) -> None:
        self.seconds = seconds
        self.forever = forever
        self.log_dir = log_dir
        self.reports: queue.Queue[tuple[str, int, dict[str, Any]]] = queue.Queue()
        ports = pick_free_ports(len(NODE_NAMES))
        addresses = {name: f"tcp://127.0.0.1:{port}" for name, port in zip(NODE_NAMES, ports, strict=True)}
        self.children = {
            name: Child(name, address, [a for n, a in addresses.items() if n != name])
            for name, address in addresses.items()
        }
        self.tty = sys.stdout.isatty()
        self.drawn_lines = 0
        self.tick = 0
        self.started = time.monotonic()
        self.last_converged: float | None = None
        self.frames = 0

    # -------------------------------------------------------------- processes

    def spawn(self, child: Child) -> None:
        child.incarnation += 1
        if child.log is None:
            child.log = open(os.path.join(self.log_dir, f"{child.name}.log"), "a")  # noqa: SIM115
        command = [sys.executable, os.path.abspath(__file__), "--child", child.name, "--listen", child.listen]
        command += ["--data-dir", os.path.join(self.log_dir, f"{child.name}-data")]
        for peer in child.peers:
            command += ["--peer", peer]
        child.process = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=child.log,
            text=True,
            bufsize=1,
            start_new_session=True,  # Ctrl-C reaches the parent only; it then stops the children cleanly
        )
        child.state = "starting"
        child.report = None
        stdout = child.process.stdout
        assert stdout is not None
        threading.Thread(
            target=self._read_reports, args=(child.name, child.incarnation, stdout), daemon=True
        ).start()

    def _read_reports(self, name: str, incarnation: int, stream: IO[str]) -> None:
        """Runs until the child's stdout closes (it exited or was killed)."""
        with contextlib.suppress(OSError, ValueError):
            while line := stream.readline(REPORT_LINE_BYTES_MAX):
                with contextlib.suppress(json.JSONDecodeError):
                    self.reports.put((name, incarnation, json.loads(line)))

    def send(self, child: Child, command: str) -> None:
        process = child.process
        if process is None or process.poll() is not None or process.stdin is None:
            return
        with contextlib.suppress(BrokenPipeError, OSError, ValueError):
            process.stdin.write(command + "\n")
            process.stdin.flush()

    def kill9(self, child: Child) -> None:
        process = child.process
        if process is None:
            return
        self.event(f"kill -9 {child.name} (pid {process.pid}); the other nodes keep writing")
        with contextlib.suppress(ProcessLookupError):  # it exited on its own a moment ago
            os.kill(process.pid, signal.SIGKILL)
        process.wait()
        child.state = "killed"
        child.report = None

    def restart(self, child: Child) -> None:
        self.spawn(child)
        child.restarted_at = time.monotonic()
        assert child.process is not None
        self.event(
            f"restart {child.name} (pid {child.process.pid}) on {child.listen}: reopens its SQLite store, "
            "new epoch; it catches up from its peers"
        )

    def stop_all(self) -> None:
        """Ask every child to stop, then SIGKILL whatever has not exited in time."""
        for child in self.children.values():
            self.send(child, "stop")
            if child.process is not None and child.process.stdin is not None:
                with contextlib.suppress(OSError):
                    child.process.stdin.close()
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for child in self.children.values():
            process = child.process
            if process is None:
                continue
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
            if process.poll() is None:
                process.kill()
                process.wait()
            if child.state != "killed":
                child.exit_codes.append(process.returncode)
            child.state = "exited"

    def kill_leftovers(self) -> None:
        for child in self.children.values():
            if child.process is not None and child.process.poll() is None:
                child.process.kill()
                child.process.wait()
            if child.log is not None:
                child.log.close()

    # -------------------------------------------------------------- reports and convergence

    def drain_reports(self) -> None:
        while True:
            try:
                name, incarnation, report = self.reports.get_nowait()
            except queue.Empty:
                break
            child = self.children[name]
            if incarnation == child.incarnation and child.state in ("starting", "running"):
                child.report = report
                if child.state == "starting":
                    child.state = "running"
        for child in self.children.values():
            process = child.process
            if child.state in ("starting", "running") and process is not None and process.poll() is not None:
                child.state = "exited"
                child.exit_codes.append(process.returncode)
                self.event(f"{child.name} exited unexpectedly with status {process.returncode}; see its log")

    def request_reports(self, full: bool = False) -> int:
        self.tick += 1
        for child in self.children.values():
            if child.state in ("starting", "running"):
                self.send(child, f"{'report-full' if full else 'report'} {self.tick}")
        return self.tick

    def verdict(self) -> tuple[bool, str]:
        """(converged, explanation) from the latest reports, which must all answer the same tick."""
        reports = [child.report for child in self.children.values()]
        down = [child.name for child in self.children.values() if child.state != "running"]
        if down:
            return False, f"{', '.join(down)} not running"
        present = [report for report in reports if report is not None]
        if len(present) != len(reports) or len({report["tick"] for report in present}) != 1:
            return False, "waiting for reports"
        doc_sets = {tuple(sorted(report["digests"])) for report in present}
        if len(doc_sets) != 1:
            return False, f"doc counts differ: {', '.join(str(len(r['digests'])) for r in present)}"
        differing = [doc_id for doc_id in doc_sets.pop() if len({r["digests"][doc_id] for r in present}) != 1]
        if differing:
            return False, f"digests differ on {', '.join(differing)}"
        return True, f"equal digests on all {len(present[0]['digests'])} docs"

    # -------------------------------------------------------------- view

    def event(self, text: str) -> None:
        self._clear()
        print(f"[{time.monotonic() - self.started:6.1f} s] {text}", flush=True)
        self.drawn_lines = 0

    def _clear(self) -> None:
        if self.tty and self.drawn_lines:
            sys.stdout.write(f"\033[{self.drawn_lines}F\033[J")

    def render(self, phase: str) -> None:
        converged, why = self.verdict()
        now = time.monotonic()
        if converged:
            self.last_converged = now
        label = "converged" if converged else "catching up"
        elapsed = now - self.started
        total = "forever" if self.forever else f"{self.seconds:.0f} s"
        if not self.tty:
            self.frames += 1
            if self.frames % 4 == 0:  # one line a second when the output is a file or a pipe
                nodes = " ".join(self._short(child) for child in self.children.values())
                print(f"[{elapsed:6.1f} s] {phase}: {label} ({why}) | {nodes}", flush=True)
            return
        lines = [
            f"crdtsync live demo: 3 node processes on 127.0.0.1, {elapsed:5.1f} s of {total} ({phase})",
            f"cluster: {label.upper()} ({why})",
            f"{'node':<5}{'pid':>8} {'state':<9}{'docs':>5}{'writes':>8}{'published':>10}{'applied':>9}"
            f"{'pending':>8}{'ae rnds':>9}  {'digest':<8}  peers",
        ]
        for child in self.children.values():
            report = child.report
            pid = child.process.pid if child.process is not None and child.state != "killed" else "-"
            if report is None:
                lines.append(f"{child.name:<5}{pid:>8} {child.state:<9}")
                continue
            peers = self._peers(report, " ")
            lines.append(
                f"{child.name:<5}{pid:>8} {child.state:<9}{report['docs']:>5}{report['writes']:>8}"
                f"{report['published']:>10}{report['applied']:>9}{report['pending']:>8}{report['ae_rounds']:>9}"
                f"  {self._digest(report)}  {peers}"
            )
        lines.append("(published resets when a node restarts: sequence numbers belong to one epoch)")
        self._clear()
        sys.stdout.write("\n".join(lines) + "\n")
        sys.stdout.flush()
        self.drawn_lines = len(lines)

    def _peers(self, report: dict[str, Any], separator: str) -> str:
        """Each peer's state as the node sees it; a peer not yet greeted is known by its address only."""
        names = {child.listen: child.name for child in self.children.values()}
        return separator.join(f"{names.get(peer, peer)}={state}" for peer, state in sorted(report["peers"]))

    @staticmethod
    def _digest(report: dict[str, Any]) -> str:
        """Short fingerprint of all of a node's doc digests: equal fingerprints, equal replicas."""
        combined = hashlib.blake2b(digest_size=4)
        for doc_id in sorted(report["digests"]):
            combined.update(doc_id.encode() + bytes.fromhex(report["digests"][doc_id]))
        return combined.hexdigest()

    def _short(self, child: Child) -> str:
        report = child.report
        if report is None:
            return f"{child.name}:{child.state}"
        peers = self._peers(report, ",")
        return f"{child.name}[docs={report['docs']} writes={report['writes']} {peers} {self._digest(report)}]"

    # -------------------------------------------------------------- the run

    def run(self) -> int:
        for child in self.children.values():
            self.spawn(child)
        self.event(
            "started a, b, c; each writes to feature-flags, fleet-config and model-registry "
            f"every {WRITE_INTERVAL_S[0]}-{WRITE_INTERVAL_S[1]} s"
        )
        try:
            self._write_phase()
        except KeyboardInterrupt:
            self.event("interrupted: stopping the writers")
        return self._finish()

    def _fault_plan(self, cycle: int) -> list[tuple[float, str, str]]:
        """(seconds since start, "kill" or "restart", node), in time order.

        A bounded run kills c after about a third of its time (if it lasts 6 s or more); --forever
        kills c, b, a, c, ... 7 s into every 20 s cycle. The victim stays down long enough for its
        peers to notice (their failure detector suspects a silent peer after about 4 s).
        """
        if self.forever:
            at = cycle * FOREVER_CYCLE_S + 7.0
            victim = NODE_NAMES[::-1][cycle % len(NODE_NAMES)]
            return [(at, "kill", victim), (at + KILL_DOWNTIME_S, "restart", victim)]
        if cycle > 0 or self.seconds < 6:
            return []
        at = 0.35 * self.seconds
        return [(at, "kill", "c"), (at + min(KILL_DOWNTIME_S, 0.25 * self.seconds), "restart", "c")]

    def _write_phase(self) -> None:
        cycle = 0
        plan = self._fault_plan(cycle)
        while self.forever or time.monotonic() - self.started < self.seconds:
            frame_started = time.monotonic()
            elapsed = frame_started - self.started
            while plan and plan[0][0] <= elapsed:
                _at, action, name = plan.pop(0)
                child = self.children[name]
                if action == "kill" and child.state in ("starting", "running"):
                    self.kill9(child)
                elif action == "restart" and child.state == "killed":
                    self.restart(child)
            if not plan and self.forever:
                cycle += 1
                plan = self._fault_plan(cycle)
            self.drain_reports()
            self._note_catch_up()
            self.render("writing")
            self.request_reports()
            time.sleep(max(0.0, FRAME_INTERVAL_S - (time.monotonic() - frame_started)))

    def _note_catch_up(self) -> None:
        converged, _why = self.verdict()
        for child in self.children.values():
            if child.restarted_at is not None and converged:
                self.event(
                    f"{child.name} caught up: equal digests with its peers "
                    f"{time.monotonic() - child.restarted_at:.1f} s after its restart (seen at frame resolution)"
                )
                child.restarted_at = None

    def _finish(self) -> int:
        for child in self.children.values():
            if child.state == "killed":  # interrupted while a node was down: bring it back first
                self.restart(child)
            self.send(child, "quiet")
        self.event(f"stopped writing; waiting up to {SETTLE_TIMEOUT_S:.0f} s for equal digests")
        deadline = time.monotonic() + SETTLE_TIMEOUT_S
        converged, why = False, "no reports"
        while time.monotonic() < deadline:
            tick = self.request_reports(full=True)
            time.sleep(0.1)
            self.drain_reports()
            converged, why = self.verdict()
            if converged and all(
                c.report is not None and c.report["tick"] == tick for c in self.children.values()
            ):
                break
        self.render("settled" if converged else "not settled")
        contents = [
            child.report.get("content") for child in self.children.values() if child.report is not None
        ]
        json_equal = len(contents) == len(self.children) and all(c == contents[0] for c in contents)
        self.stop_all()
        self.drawn_lines = 0
        if converged and json_equal and contents[0] is not None:
            print(f"\nconverged: {why}, equal JSON on every node. model-registry on every node:")
            print(json.dumps(contents[0].get("model-registry", {}), indent=2, sort_keys=True))
        else:
            print(f"\nNOT converged: {why}; equal JSON: {json_equal}", file=sys.stderr)
        for child in self.children.values():
            report = child.report or {}
            print(
                f"{child.name}: incarnations={child.incarnation} docs={report.get('docs')} "
                f"writes_this_incarnation={report.get('writes')} applied={report.get('applied')} "
                f"ae_rounds={report.get('ae_rounds')} exit_codes={child.exit_codes}"
            )
        clean_exits = all(code == 0 for child in self.children.values() for code in child.exit_codes)
        return 0 if converged and json_equal and clean_exits else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=20.0, help="how long the nodes write (default 20)")
    parser.add_argument("--forever", action="store_true", help="run until Ctrl-C, killing a node every 20 s")
    parser.add_argument("--child", metavar="NAME", help=argparse.SUPPRESS)
    parser.add_argument("--listen", help=argparse.SUPPRESS)
    parser.add_argument("--peer", action="append", default=[], help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return asyncio.run(run_child(args.child, args.listen, args.peer, args.data_dir))
    if args.seconds <= 0:
        parser.error("--seconds must be positive")
    log_dir = tempfile.mkdtemp(prefix="crdtsync-live-demo-")
    demo = Demo(args.seconds, args.forever, log_dir)
    status = 1
    try:
        status = demo.run()
    finally:
        demo.kill_leftovers()
        if status == 0:
            shutil.rmtree(log_dir, ignore_errors=True)
        else:
            print(f"child logs kept in {log_dir}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
