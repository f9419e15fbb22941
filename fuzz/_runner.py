"""The loop shared by the fuzz targets: seeded mutation of a corpus, findings saved, progress printed."""

from __future__ import annotations

import argparse
import random
import sys
import time
import traceback
import zlib
from collections.abc import Callable
from pathlib import Path

from crdtsync.core.replica import Replica, ReplicaConfig

INPUT_BYTES_MAX = 64 * 1024


def open_replica(client_id: int) -> Replica:
    """A replica to fuzz, with no quarantine and no rate limit: the fuzzer is one sender that must
    keep reaching the apply path."""
    unlimited = ReplicaConfig(quarantine_after_rejects=1 << 62, peer_frames_per_second_max=1e12)
    return Replica(
        node_id="fuzz-target",
        epoch=1,
        client_id=client_id,
        address="fuzz://a",
        publish_endpoint="fuzz://p",
        config=unlimited,
    )


def mutate(data: bytes, rng: random.Random, pool: list[bytes]) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        choice = rng.randrange(6)
        if choice == 0 and out:
            out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
        elif choice == 1 and out:
            out[rng.randrange(len(out))] = rng.choice((0, 1, 0x7F, 0x80, 0xFF, rng.randrange(256)))
        elif choice == 2 and out:
            del out[rng.randrange(len(out)) :]
        elif choice == 3:
            position = rng.randint(0, len(out))
            out[position:position] = rng.randbytes(rng.randint(1, 16))
        elif choice == 4 and out:
            start = rng.randrange(len(out))
            out[start:start] = out[start : start + rng.randint(1, 32)]
        else:
            other = rng.choice(pool)
            out = out[: rng.randint(0, len(out))] + bytearray(other[rng.randint(0, len(other)) :])
    return bytes(out[:INPUT_BYTES_MAX])


def run(
    name: str,
    seeds: list[bytes],
    target: Callable[[bytes], str],
    seconds: float,
    seed: int,
    corpus: Path | None,
    findings_dir: Path | None,
    quiet: bool = False,
    fix: Callable[[bytes, random.Random], bytes] | None = None,
) -> int:
    """Feed mutated inputs to `target` for `seconds`. `target` returns a label for the outcome
    (used to count distinct outcomes) and raises only on a finding. `fix` may repair a mutated input
    (e.g. a checksum) so that mutations reach deeper than the first check."""
    rng = random.Random(seed)
    pool = list(seeds)
    if corpus is not None and corpus.is_dir():
        pool += [path.read_bytes()[:INPUT_BYTES_MAX] for path in sorted(corpus.iterdir()) if path.is_file()]
    outcomes: set[str] = set()
    findings = execs = 0
    started = time.monotonic()
    next_report = started + 5.0
    while time.monotonic() - started < seconds:
        data = (
            mutate(rng.choice(pool), rng, pool) if rng.random() < 0.95 else rng.randbytes(rng.randint(0, 64))
        )
        if fix is not None:
            data = fix(data, rng)
        execs += 1
        try:
            outcomes.add(target(data))
        except BaseException:  # anything raised is a finding
            findings += 1
            trace = traceback.format_exc()
            if not quiet:
                print(f"FINDING ({len(data)} bytes): {data!r}\n{trace}", file=sys.stderr)
            if findings_dir is not None:
                findings_dir.mkdir(parents=True, exist_ok=True)
                stem = f"{name}-{zlib.crc32(data):08x}"
                (findings_dir / stem).write_bytes(data)
                (findings_dir / f"{stem}.txt").write_text(trace)
        if not quiet and time.monotonic() >= next_report:
            next_report += 5.0
            elapsed = time.monotonic() - started
            print(
                f"{elapsed:6.0f} s  execs={execs}  execs/s={execs / elapsed:.0f}  outcomes={len(outcomes)}  findings={findings}"
            )
    elapsed = time.monotonic() - started
    print(
        f"{name} seed={seed}: {execs} execs in {elapsed:.1f} s ({execs / max(elapsed, 1e-9):.0f}/s), "
        f"{len(outcomes)} distinct outcomes, {findings} findings"
    )
    return 1 if findings else 0


def cli(name: str, description: str, argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=f"python -m fuzz.{name}", description=description)
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
    return args
