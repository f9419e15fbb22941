"""Fuzz throughput: execs/s and coverage of each in-process fuzz target under libFuzzer, against
the same target run bare on the same inputs.

    python -m bench.fuzz [--seconds S] [--quick] [--targets wire_decoder,...] [--json OUT]

For each target (wire_decoder, update_apply, config_loader, http_api), in the same run:

(a) fuzzing: `fuzz._runner.run` for S seconds (60; 10 with --quick) from the built-in seeds and an
    empty corpus, seed 1: execs/s from libFuzzer's INITED to its DONE, coverage (libFuzzer's `cov`,
    branch points of the instrumented crdtsync/tomllib code reached, and `ft`, features), the corpus
    it ended with and the findings;
(b) bare: the same target function without libFuzzer, looping over the corpus that (a) ended with
    (seeds included) for BARE_S seconds in a child process, once uninstrumented and once with
    atheris' instrumentation of crdtsync: what the target and the instrumentation cost by
    themselves. The corpus holds the inputs that reached new code, which run deeper (slower) than
    the average mutated input, so (a) can exceed (b).

Plus the bare wire decoder, `wire.decode` alone over the seed frames, the floor of any wire
fuzzing: uninstrumented and instrumented.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.metadata
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench._common import REPO_ROOT, fmt, machine_info, print_table, ratio
from fuzz._runner import INSTRUMENTED, Fuzzable, Result, run

TARGETS = ("wire_decoder", "update_apply", "config_loader", "http_api")
SEED = 1
BARE_S = 5.0
CHILD_TIMEOUT_S = 120.0


def _bare_loop(one: Callable[[bytes], None], inputs: list[bytes], seconds: float) -> dict[str, float]:
    """Run `one` over `inputs` round-robin for `seconds`; every exception counts (it would be a
    finding under the fuzzer), none stops the loop."""
    execs = errors = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        for data in inputs:
            try:
                one(data)
            except Exception:
                errors += 1
            execs += 1
        if not inputs:
            break
    elapsed = time.perf_counter() - started
    return {"execs": execs, "seconds": elapsed, "execs_per_s": execs / elapsed, "errors": errors}


def bare(target: str, corpus: Path, seconds: float, instrumented: bool) -> dict[str, float]:
    """The child side of (b): `target` is a fuzz target name, or `wire.decode`."""
    if instrumented:
        from atheris.import_hook import instrument_imports

        with instrument_imports(include=list(INSTRUMENTED)):
            return bare(target, corpus, seconds, instrumented=False)
    if target == "wire.decode":
        from crdtsync.core import wire
        from fuzz.wire_decoder import seed_frames

        def decode(data: bytes) -> None:
            with contextlib.suppress(wire.WireError):
                wire.decode(data)

        return _bare_loop(decode, seed_frames(), seconds)
    module = importlib.import_module(f"fuzz.{target}")
    inputs = [path.read_bytes() for path in sorted(corpus.iterdir()) if path.is_file()]
    with tempfile.TemporaryDirectory() as scratch:
        one: Fuzzable = module.TARGET.make(Path(scratch), frozenset())
        return _bare_loop(one, inputs, seconds)


def _bare_in_child(target: str, corpus: Path, instrumented: bool) -> dict[str, float]:
    command = [sys.executable, "-m", "bench.fuzz", "--bare", target, "--corpus", str(corpus)]
    done = subprocess.run(
        command + (["--instrumented"] if instrumented else []),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT_S,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"bare {target} failed ({done.returncode}): {done.stderr[-2000:]}")
    figures: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fuzz", description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, help="fuzzing time per target (default 60, --quick 10)")
    parser.add_argument("--quick", action="store_true", help="10 s per target")
    parser.add_argument("--targets", default=",".join(TARGETS), help="comma-separated subset of the targets")
    parser.add_argument("--json", metavar="OUT", type=Path, help="also write every figure as JSON to OUT")
    parser.add_argument("--bare", help=argparse.SUPPRESS)
    parser.add_argument("--corpus", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--instrumented", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.bare is not None:
        print(json.dumps(bare(args.bare, args.corpus, BARE_S, args.instrumented)), flush=True)
        # The http_api target leaves its node and server running: nothing to wait for at exit.
        os._exit(0)
    seconds = args.seconds or (10.0 if args.quick else 60.0)
    targets = [name for name in args.targets.split(",") if name]
    unknown = set(targets) - set(TARGETS)
    if unknown:
        parser.error(f"unknown targets: {', '.join(sorted(unknown))}")

    info = machine_info()
    for dist in ("atheris", "aiohttp"):
        try:
            info[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            info[dist] = "not installed"
    print("Fuzz throughput")
    for key, value in info.items():
        print(f"  {key:<18} {value}")
    print(f"\n{seconds:.0f} s of fuzzing per target (seed {SEED}, empty corpus), then {BARE_S:.0f} s bare")

    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-fuzz-") as scratch:
        for name in targets:
            corpus = Path(scratch) / name / "corpus"
            fuzzed: Result = run(name, seconds, SEED, corpus, Path(scratch) / name / "findings", quiet=True)
            # The corpus directory holds only what the run added: the bare loop also gets the seeds.
            seeds_dir = corpus.parent / "seeds"
            seeds_dir.mkdir()
            for index, data in enumerate(importlib.import_module(f"fuzz.{name}").TARGET.seeds()):
                (seeds_dir / f"seed-{index:03d}").write_bytes(data)
            for path in corpus.iterdir():
                (seeds_dir / path.name).write_bytes(path.read_bytes())
            plain = _bare_in_child(name, seeds_dir, instrumented=False)
            instrumented = _bare_in_child(name, seeds_dir, instrumented=True)
            results[name] = {
                "fuzz": {
                    "execs": fuzzed.execs,
                    "seconds": round(fuzzed.seconds, 2),
                    "execs_per_s": round(fuzzed.execs_per_s),
                    "coverage": fuzzed.coverage,
                    "features": fuzzed.features,
                    "corpus": fuzzed.corpus,
                    "findings": [str(path) for path in fuzzed.findings],
                },
                "bare": plain,
                "instrumented": instrumented,
            }
            print(f"  {fuzzed.summary()}", flush=True)
        decode = _bare_in_child("wire.decode", Path(scratch), instrumented=False)
        decode_instrumented = _bare_in_child("wire.decode", Path(scratch), instrumented=True)

    rows = []
    for name, figures in results.items():
        bare_rate, instrumented_rate = figures["bare"]["execs_per_s"], figures["instrumented"]["execs_per_s"]
        rows.append(
            [
                name,
                fmt(figures["fuzz"]["execs_per_s"]),
                f"{figures['fuzz']['coverage']} / {figures['fuzz']['features']}",
                fmt(figures["fuzz"]["corpus"]),
                fmt(len(figures["fuzz"]["findings"])),
                fmt(int(bare_rate)),
                fmt(int(instrumented_rate)),
                fmt(ratio(bare_rate, instrumented_rate), 1),
            ]
        )
    print_table(
        "Per target",
        [
            "target",
            "fuzz execs/s",
            "cov / ft",
            "corpus",
            "findings",
            "bare /s",
            "instrumented /s",
            "instr. cost",
        ],
        rows,
        [
            "bare, instrumented: the target without libFuzzer over the corpus the fuzz run ended with",
            f"wire.decode alone over the seed frames: {fmt(int(decode['execs_per_s']))} execs/s bare, "
            f"{fmt(int(decode_instrumented['execs_per_s']))} instrumented",
        ],
    )
    if args.json is not None:
        summary = {
            "machine": info,
            "seconds": seconds,
            "targets": results,
            "wire_decode": {"bare": decode, "instrumented": decode_instrumented},
        }
        args.json.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    return 1 if any(figures["fuzz"]["findings"] for figures in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
