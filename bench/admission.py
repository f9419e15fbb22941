"""Admission: the CPU a node spends per hostile frame of the network fuzz campaign's flood, with the
attacker's frames in wire version 1 (the sender's id inside the body) against version 2 (in the header).

    python -m bench.admission [--frames N] [--runs R] [--seed S] [--json OUT]

The flood is `fuzz.network`'s own generator (`hostile_frame`: mutated valid frames of every kind with
their checksums mostly repaired, random bytes, sync pushes of garbage updates from the attacker),
drawn from the same seed once from version-1 and once from version-2 frames. Each goes through a
node's receive path (`Replica.receive`: header, admission, body, dispatch) at 10,000 frames a second
of replica time (under the per-sender rate limit, which would otherwise hide the cost), effects taken
after every 64 frames (the driver takes them once per burst). A warm-up
of the same flood comes first and is not measured: in it the replica quarantines the senders whose
updates pycrdt keeps rejecting, as the campaign's nodes do in their first seconds; what is measured is
the steady state for the rest of `quarantine_ms`. Versions alternate run by run; medians are printed.

The floor is one quarantined sender's valid, compressed frame (a sync push of 20 docs) received
over and over: version 1 decompresses and parses it before the sender is known, version 2 reads
the header only. The issue's goal, that such a sender costs a header parse per frame, is checked
against reading the header alone (`wire.read_header`), measured in the same run. Figures move by
10-30% on a loaded machine.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from bench._common import JSON, Target, fmt, machine_info, print_table, write_json
from crdtsync.core import wire
from crdtsync.core.replica import Replica, ReplicaConfig
from fuzz.network import flood_pool, hostile_frame

FRAME_SPACING_MS = 0.1
FRAMES_PER_PUMP = 64
WARMUP_FRAMES = 5000


def _replica() -> Replica:
    return Replica(
        node_id="a", epoch=1, client_id=11, address="a", publish_endpoint="ap", config=ReplicaConfig()
    )


def _flood(seed: int, count: int, version: int) -> list[bytes]:
    rng = random.Random(seed)
    pool = flood_pool(version)
    return [hostile_frame(rng, pool) for _ in range(count)]


def _receive_all(replica: Replica, frames: Sequence[bytes], start_ms: float) -> tuple[float, float]:
    """(CPU seconds, replica time after) of receiving `frames`, effects taken after every
    `FRAMES_PER_PUMP` as a driver does after a burst."""
    now_ms = start_ms
    started = time.process_time()
    for index, frame in enumerate(frames):
        now_ms += FRAME_SPACING_MS
        replica.receive(frame, now_ms)
        if index % FRAMES_PER_PUMP == 0:
            replica.take_effects(now_ms)
    return time.process_time() - started, now_ms


def flood_run(seed: int, count: int, version: int) -> JSON:
    frames = _flood(seed, WARMUP_FRAMES + count, version)
    replica = _replica()
    try:
        _warm_cpu, now_ms = _receive_all(replica, frames[:WARMUP_FRAMES], 0.0)
        before = replica.counters
        quarantined, errors = before.frames_dropped_quarantined, before.wire_errors_total()
        cpu_s, _ = _receive_all(replica, frames[WARMUP_FRAMES:], now_ms)
        after = replica.counters
        return {
            "us_per_frame": cpu_s / count * 1e6,
            "dropped_quarantined": after.frames_dropped_quarantined - quarantined,
            "wire_errors": after.wire_errors_total() - errors,
            "senders_quarantined": after.peers_quarantined,
        }
    finally:
        replica.close()


def _quarantined_push(version: int) -> bytes:
    push = wire.SyncPush("mallory", tuple((f"doc-{i}", b"\x00" * 300) for i in range(20)))
    return wire.encode(push, version)


def header_parse_us(count: int) -> float:
    """CPU µs of reading the version-2 header of the floor's frame, alone."""
    frame = _quarantined_push(2)
    started = time.process_time()
    for _ in range(count):
        wire.read_header(frame)
    return (time.process_time() - started) / count * 1e6


def floor_run(count: int, version: int) -> float:
    """CPU µs per frame of a quarantined sender's valid, compressed frame."""
    replica = _replica()
    try:
        garbage = b"\x01\x01\x05\x00\xff\xff\xff\x0f"
        for seq in range(1, 11):
            delta = wire.Delta(f"doc-{seq}", b"\x00", b"\x01\x05\x01", garbage)
            replica.receive(wire.encode(wire.Deltas("mallory", 1, seq, (delta,)), version), float(seq))
        assert replica.counters.peers_quarantined == 1
        frame = _quarantined_push(version)
        cpu_s, _ = _receive_all(replica, [frame] * count, 100.0)
        assert replica.counters.frames_dropped_quarantined == count
        return cpu_s / count * 1e6
    finally:
        replica.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.admission", description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=40_000, help="measured flood frames per run (40,000)")
    parser.add_argument("--runs", type=int, default=3, help="runs per version, alternated (3)")
    parser.add_argument("--seed", type=int, default=1, help="the attacker's seed (1)")
    parser.add_argument("--json", type=Path, help="also write every figure as JSON to OUT", metavar="OUT")
    args = parser.parse_args(argv)
    print("machine")
    for key, value in machine_info().items():
        print(f"  {key:<18} {value}")
    runs: dict[int, list[JSON]] = {1: [], 2: []}
    floors: dict[int, list[float]] = {1: [], 2: []}
    headers: list[float] = []
    for _ in range(args.runs):
        for version in (1, 2):
            runs[version].append(flood_run(args.seed, args.frames, version))
            floors[version].append(floor_run(args.frames // 4, version))
        headers.append(header_parse_us(args.frames // 4))
    header_us = statistics.median(headers)
    flood_us = {v: statistics.median(r["us_per_frame"] for r in runs[v]) for v in (1, 2)}
    floor_us = {v: statistics.median(floors[v]) for v in (1, 2)}
    rows = [
        [
            f"version {v}",
            fmt(flood_us[v], 2),
            " / ".join(fmt(r["us_per_frame"], 2) for r in runs[v]),
            f"{runs[v][-1]['dropped_quarantined']:,}",
            f"{runs[v][-1]['wire_errors']:,}",
            fmt(floor_us[v], 2),
        ]
        for v in (1, 2)
    ]
    print_table(
        f"CPU per hostile frame, fuzz.network's flood (seed {args.seed}, {args.frames:,} frames after a "
        f"{WARMUP_FRAMES:,}-frame warm-up)",
        ["attacker's wire", "µs/frame (median)", "runs", "quarantined", "malformed", "floor µs/frame"],
        rows,
    )
    targets = [
        Target(
            "quarantined_vs_header",
            "a quarantined sender's version-2 frame / reading its header alone",
            floor_us[2] / header_us,
            2.0,
        ),
        Target("flood", "flood CPU per frame, version 2 / version 1", flood_us[2] / flood_us[1], None),
        Target("floor", "quarantined sender's frame, version 2 / version 1", floor_us[2] / floor_us[1], None),
    ]
    print(f"\n  reading a version-2 header alone: {header_us:.2f} µs (median of {len(headers)})")
    print_table("Targets", ["figure", "value", "target", "verdict"], [
        [t.text, fmt(t.value, 3), fmt(t.limit, 2), t.verdict] for t in targets
    ])  # fmt: skip
    if args.json:
        summary: JSON = {
            "machine": machine_info(),
            "runs": {str(v): runs[v] for v in (1, 2)},
            "floor_us": {str(v): floors[v] for v in (1, 2)},
            "header_parse_us": headers,
            "targets": [t.as_json() for t in targets],
        }
        write_json(args.json, summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
