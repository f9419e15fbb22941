"""Compact causal metadata (issue 17): a one-delta DELTAS frame and its receive cost in wire version 3
(doc id and update only; the receiver derives the dependencies from the update) against version 2
(the publisher's before state vector, the after one as a patch).

    python -m bench.causal_meta [--deltas N] [--rounds R]

One process, no sockets. A writer edits a doc that `writers` nodes wrote before (each Map key set
once by each, every writer caught up with every other), then sets keys of its own, one transaction
each: single-key writes, as `bench.topology` makes them. Measured in the same run, for 1 and 9
writers: the frame's bytes in each version against the bare update (lz4'd when that is smaller),
and the CPU a `Replica` spends receiving and applying the frames (`receive` and `take_effects`,
process time), versions alternated round by round, medians printed. Figures move by 10-30% on a
loaded machine.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Sequence
from typing import Any

import lz4.block
from pycrdt import Doc, Map, TransactionEvent

from bench._common import Target, fmt, machine_info, print_table
from crdtsync.core import wire
from crdtsync.core.placement import PLACEMENT_VERSION
from crdtsync.core.replica import Replica

VERSIONS = (2, 3)


def _history(writers: int, deltas: int) -> tuple[bytes, list[wire.Delta]]:
    """The doc as every receiver holds it before the run, and the writer's next `deltas` deltas."""
    docs: list[Doc[Any]] = [Doc(client_id=(1 << 50) + index) for index in range(writers)]
    for index, doc in enumerate(docs):
        doc.get("data", type=Map)[f"w{index}"] = index
    for doc in docs:
        for other in docs:
            doc.apply_update(other.get_update())
    writer = docs[0]
    start = writer.get_update()
    captured: list[wire.Delta] = []

    def capture(event: TransactionEvent) -> None:
        before: bytes = event.before_state  # type: ignore[attr-defined]
        after: bytes = event.after_state  # type: ignore[attr-defined]
        captured.append(wire.Delta("doc", before, after, event.update))

    writer.observe(capture)
    for index in range(deltas):
        writer.get("data", type=Map)[f"k{index % 50}"] = index
    return start, captured


def _frames(deltas: list[wire.Delta], version: int) -> list[bytes]:
    return [wire.encode(wire.Deltas("w", 1, seq, (delta,)), version) for seq, delta in enumerate(deltas, 1)]


def _receive_us(start: bytes, frames: list[bytes], version: int) -> float:
    """CPU µs per frame of a fresh replica receiving and applying `frames` in order."""
    replica = Replica(node_id="r", epoch=1, client_id=5, address="r", publish_endpoint="rp")
    try:
        hello = wire.Hello(
            "w", 1, "tcp://w:1", "tcp://w:2", 0, "default", placement_version=PLACEMENT_VERSION
        )
        replica.receive(wire.encode(hello, version), 0.0)
        replica.receive(wire.encode(wire.SyncPush("w", (("doc", start),)), version), 0.0)
        replica.take_effects(0.0)
        started = time.process_time()
        for index, frame in enumerate(frames):
            replica.receive(frame, float(index))
            replica.take_effects(float(index))
        spent = time.process_time() - started
        if replica.counters.deltas_applied != len(frames):
            raise RuntimeError(f"applied {replica.counters.deltas_applied} of {len(frames)} deltas")
        return spent / len(frames) * 1e6
    finally:
        replica.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.causal_meta", description=__doc__.split("\n")[0])
    parser.add_argument("--deltas", type=int, default=2000, help="single-key deltas per run (2,000)")
    parser.add_argument("--rounds", type=int, default=3, help="runs per version, alternated (3)")
    args = parser.parse_args(argv)
    print("crdtsync compact causal metadata benchmark")
    print("  machine: " + ", ".join(f"{key} {value}" for key, value in machine_info().items()))
    rows: list[list[str]] = []
    targets: list[Target] = []
    for writers in (1, 9):
        start, deltas = _history(writers, args.deltas)
        frames = {version: _frames(deltas, version) for version in VERSIONS}
        cpu: dict[int, list[float]] = {version: [] for version in VERSIONS}
        for _ in range(args.rounds):
            for version in VERSIONS:
                cpu[version].append(_receive_us(start, frames[version], version))
        bare = statistics.mean(
            min(len(d.update), len(lz4.block.compress(d.update, store_size=True))) for d in deltas
        )
        frame_bytes = {
            version: statistics.mean(len(frame) for frame in frames[version]) for version in VERSIONS
        }
        for version in VERSIONS:
            rows.append(
                [
                    f"{writers} writer{'s' if writers > 1 else ''}, version {version}",
                    fmt(frame_bytes[version], 1),
                    fmt(bare, 1),
                    fmt(frame_bytes[version] / bare, 2),
                    fmt(statistics.median(cpu[version]), 1),
                    " / ".join(fmt(value, 1) for value in cpu[version]),
                ]
            )
        targets.append(
            Target(
                f"frame_vs_bare_{writers}",
                f"{writers} writers: version-3 frame / bare update",
                frame_bytes[3] / bare,
                2.0,
            )
        )
        targets.append(
            Target(
                f"receive_cpu_{writers}",
                f"{writers} writers: receive CPU, version 3 / version 2 (median)",
                statistics.median(cpu[3]) / statistics.median(cpu[2]),
                None,
            )
        )
    print_table(
        f"One-delta DELTAS frames ({args.deltas:,} single-key writes; {args.rounds} alternated rounds)",
        ["doc, wire", "frame B", "bare B", "frame/bare", "receive us", "rounds us"],
        rows,
        ["receive us: CPU per delta of Replica.receive and take_effects (decode, causal buffer, apply)"],
    )
    print_table(
        "Targets (issue 17: WAN bytes per single-key update <= 2x the bare update)",
        ["figure", "value", "target", "verdict"],
        [[t.text, fmt(t.value, 2), fmt(t.limit, 2), t.verdict] for t in targets],
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
