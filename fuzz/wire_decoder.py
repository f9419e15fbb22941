"""Mutation fuzzing of the wire decoder and the replica's receive path.

Starts from valid frames of every message kind (and from the files in --corpus, if given), applies
random mutations (bit flips, byte overwrites, truncation, duplication, splicing, recomputed checksums
so mutations reach the body decoder) and feeds each input to `wire.decode` and to a live `Replica`.
A finding is any exception other than `WireError` from the decoder, or any exception at all from
`Replica.receive`. Findings are written to --findings and make the exit status 1.

    python -m fuzz.wire_decoder --minutes 5 --seed 1 --corpus fuzz/corpus/wire
"""

from __future__ import annotations

import argparse
import random
import sys
import time
import traceback
import zlib
from pathlib import Path
from typing import Any

from pycrdt import Doc, Map

from crdtsync.core import wire
from crdtsync.core.replica import Replica, ReplicaConfig

INPUT_BYTES_MAX = 64 * 1024


def seed_frames() -> list[bytes]:
    doc: Doc[Any] = Doc(client_id=7)
    updates: list[tuple[bytes, bytes, bytes]] = []
    doc.observe(lambda e: updates.append((e.before_state, e.after_state, e.update)))
    data = doc.get("data", type=Map)
    for index in range(20):
        data[f"k{index % 5}"] = index
    deltas = tuple(wire.Delta("doc", b, a, u) for b, a, u in updates)
    messages: list[wire.Message] = [
        wire.Hello("n1", 1, "tcp://127.0.0.1:1", "tcp://127.0.0.1:2", 5),
        wire.HelloAck("n1", 1, "tcp://127.0.0.1:1", "tcp://127.0.0.1:2", 5),
        wire.Deltas("n1", 1, 1, deltas[:1]),
        wire.Deltas("n1", 1, 1, deltas),
        wire.Heartbeat("n1", 1, 20),
        wire.RetransmitRequest("n1", 1, 1, 10),
        wire.RetransmitGone("n1", 1, 3),
        wire.SyncRequest("n1", (("doc", doc.get_state()), ("other", b"\x00"))),
        wire.SyncResponse("n1", (("doc", doc.get_update(), doc.get_state()),)),
        wire.SyncPush("n1", (("doc", doc.get_update()), ("doc", deltas[0].update))),
        wire.TreeRoot("n1", 1, b"\x01" * 16),
        wire.TreeBranches("n1", 1, False, tuple(bytes([i]) * 16 for i in range(wire.TREE_BRANCHES))),
        wire.TreeBranches("n1", 1, True, ()),
        wire.TreeSegmentsRequest("n1", 1, (0, 5)),
        wire.TreeSegments("n1", 1, (3,), (b"\x02" * 16,) * (wire.TREE_SEGMENTS // wire.TREE_BRANCHES)),
        wire.TreeEntriesRequest("n1", 1, (7, 9)),
        wire.TreeEntries("n1", 1, (7,), ((7, "doc", b"\x03" * 16),)),
    ]
    return [wire.encode(message) for message in messages]


def mutate(data: bytes, rng: random.Random, pool: list[bytes]) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        choice = rng.randrange(7)
        if choice == 0 and out:
            position = rng.randrange(len(out))
            out[position] ^= 1 << rng.randrange(8)
        elif choice == 1 and out:
            out[rng.randrange(len(out))] = rng.randrange(256)
        elif choice == 2 and out:
            del out[rng.randrange(len(out)) :]
        elif choice == 3:
            position = rng.randint(0, len(out))
            out[position:position] = rng.randbytes(rng.randint(1, 16))
        elif choice == 4 and out:
            start = rng.randrange(len(out))
            out[start:start] = out[start : start + rng.randint(1, 32)]
        elif choice == 5:
            other = rng.choice(pool)
            cut = rng.randint(0, len(other))
            out = out[: rng.randint(0, len(out))] + bytearray(other[cut:])
        elif choice == 6 and out:
            interesting = (0, 1, 0x7F, 0x80, 0xFF)
            out[rng.randrange(len(out))] = rng.choice(interesting)
    if len(out) >= wire.HEADER_BYTES and rng.random() < 0.7:
        # Repair length and checksum so that the mutation reaches the body decoder.
        body = bytes(out[wire.HEADER_BYTES :])
        header = bytearray(out[: wire.HEADER_BYTES])
        header[5:9] = len(body).to_bytes(4, "big")
        header[9:13] = zlib.crc32(body).to_bytes(4, "big")
        out = header + bytearray(body)
    return bytes(out[:INPUT_BYTES_MAX])


def run(
    seconds: float, seed: int, corpus: Path | None, findings_dir: Path | None, quiet: bool = False
) -> int:
    rng = random.Random(seed)
    pool = seed_frames()
    if corpus is not None and corpus.is_dir():
        pool += [path.read_bytes()[:INPUT_BYTES_MAX] for path in sorted(corpus.iterdir()) if path.is_file()]
    # No quarantine and no rate limit: the fuzzer is one sender that must keep reaching the apply path.
    unlimited = ReplicaConfig(quarantine_after_rejects=1 << 62, peer_frames_per_second_max=1e12)
    replica = Replica(
        node_id="fuzz-target",
        epoch=1,
        client_id=99,
        address="fuzz://a",
        publish_endpoint="fuzz://p",
        config=unlimited,
    )
    replica.open_doc("doc").get("data", type=Map)["seed"] = 1
    findings = 0
    execs = 0
    kinds_reached: set[str] = set()
    started = time.monotonic()
    next_report = started + 5.0
    while time.monotonic() - started < seconds:
        data = (
            mutate(rng.choice(pool), rng, pool) if rng.random() < 0.95 else rng.randbytes(rng.randint(0, 64))
        )
        execs += 1
        try:
            message = wire.decode(data)
            kinds_reached.add(type(message).__name__)
        except wire.WireError as exc:
            kinds_reached.add(f"error:{exc.reason}")
        except BaseException:  # anything else is a finding
            findings += 1
            _record(findings_dir, data, traceback.format_exc(), quiet)
            continue
        try:
            replica.receive(data, float(execs))
            replica.take_effects(float(execs))
        except BaseException:
            findings += 1
            _record(findings_dir, data, traceback.format_exc(), quiet)
        if not quiet and time.monotonic() >= next_report:
            next_report += 5.0
            elapsed = time.monotonic() - started
            print(
                f"{elapsed:6.0f} s  execs={execs}  execs/s={execs / elapsed:.0f}  outcomes={len(kinds_reached)}  findings={findings}"
            )
    elapsed = time.monotonic() - started
    print(
        f"wire_decoder seed={seed}: {execs} execs in {elapsed:.1f} s ({execs / max(elapsed, 1e-9):.0f}/s), "
        f"{len(kinds_reached)} distinct outcomes, {findings} findings"
    )
    return 1 if findings else 0


def _record(findings_dir: Path | None, data: bytes, trace: str, quiet: bool) -> None:
    if not quiet:
        print(f"FINDING ({len(data)} bytes): {data.hex()}\n{trace}", file=sys.stderr)
    if findings_dir is not None:
        findings_dir.mkdir(parents=True, exist_ok=True)
        name = f"crash-{zlib.crc32(data):08x}"
        (findings_dir / name).write_bytes(data)
        (findings_dir / f"{name}.txt").write_text(trace)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fuzz.wire_decoder", description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=1.0, help="how long to run (default 1)")
    parser.add_argument(
        "--seed", type=int, default=1, help="random seed; the same seed replays the same inputs"
    )
    parser.add_argument("--corpus", type=Path, help="directory of extra starting inputs")
    parser.add_argument(
        "--findings", type=Path, default=Path("fuzz/findings"), help="where crashing inputs go"
    )
    args = parser.parse_args(argv)
    if args.minutes <= 0:
        parser.error("--minutes must be positive")
    return run(args.minutes * 60.0, args.seed, args.corpus, args.findings)


if __name__ == "__main__":
    sys.exit(main())
