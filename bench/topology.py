"""Topology and failure-detection benchmark: datacenter relays against a full mesh, and the phi-accrual
failure detector under crashes, loss and a paused process.

    python -m bench.topology [--quick] [--json OUT] [--seed N] [--skip wan,fd,procs]

This module is the entry point; the parts live in bench/_topology_sim.py ((1) and (2), measured
through the simulator's public tracer hook, ``crdtsync.sim.SimTracer``), bench/_topology_real.py ((3),
daemons started by ``crdtsync.testing.cluster``) and bench/_topology_report.py (tables and targets).

Measured in one run (targets from the issue):

(1) WAN traffic and arrival time, 3 datacenters x 3 nodes in the deterministic simulator
    (``crdtsync.sim.SimCluster``, driven step by step and traced; seeded, the seed is printed). One-way WAN latencies are
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
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import httpx

from bench._common import (
    BenchError,
    Deadline,
    machine_info,
    write_json,
)
from bench._topology_real import pause_runs
from bench._topology_report import (
    WAN_RUNS,
    Report,
    build_targets,
    git_revision,
    print_header,
    print_targets,
    report_fd,
    report_procs,
    report_wan,
)
from bench._topology_sim import (
    CRASH_LOSSES,
    FD_LOSSES,
    SEED,
    WAN_LATENCY_MS,
    WAN_LOSS_INFO,
    Settings,
    crash_run,
    false_suspicion_run,
    wan_figures,
    wan_run,
)

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
