"""The engine of the in-process fuzz targets: libFuzzer (through atheris), guided by the coverage of
crdtsync's own Python code.

`python -m fuzz.TARGET` runs `run()` here, which starts a child process (`python -m fuzz._runner`)
that imports crdtsync under atheris' instrumentation and hands the target to libFuzzer. A separate
process because libFuzzer ends its process with `exit()` when the time is up or an input crashes
it, and because a crash inside pycrdt (a bus error) must not take the caller down: the parent reads
libFuzzer's output, saves each finding with its traceback, and prints the summary.

CLI flags map onto libFuzzer's: --minutes to -max_total_time, --seed to -seed (the same seed, corpus
and code replay the same inputs), --corpus to the corpus directory (new coverage is written there),
--findings to -artifact_prefix, and every target caps its input size with -max_len.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import math
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from crdtsync.core.replica import Replica

REPO_ROOT = Path(__file__).resolve().parents[1]
INSTRUMENTED = ("crdtsync", "tomllib")
"""Packages whose code feeds libFuzzer's coverage: ours, and the pure-Python TOML parser that the
config loader sits on. pycrdt's and msgpack's native code is not instrumented."""
INPUT_TIMEOUT_S = 10
"""An input that runs longer is a finding (libFuzzer's -timeout)."""
STARTUP_SLACK_S = 120.0
"""On top of the fuzzing time, how long the child may take to instrument, start and stop before it
is killed (and that counts as a finding)."""
OUTPUT_TAIL_LINES = 200

Fuzzable = Callable[[bytes], None]
"""Runs one input; returns on every acceptable outcome and raises on a finding."""


@dataclass(frozen=True)
class Target:
    """What a fuzz target module exposes as `TARGET`."""

    name: str
    description: str
    seeds: Callable[[], list[bytes]]
    """Valid inputs to start from; libFuzzer reads them with the corpus directory."""
    make: Callable[[Path, frozenset[str]], Fuzzable]
    """Builds the function that runs one input, once per process, given a scratch directory that
    the parent removes afterwards and the target options that were set."""
    max_len: int = 4096
    mutator: Callable[[bytes, int, int], bytes] | None = None
    """A libFuzzer custom mutator (data, max_size, seed): for fixing checksums after mutating."""
    options: dict[str, str] = field(default_factory=dict)
    """Target-specific switches (`--read`) and their help."""


def open_replica(client_id: int) -> Replica:
    """A replica to fuzz, with no quarantine and no rate limit: the fuzzer is one sender that must
    keep reaching the apply path."""
    # Imported here, not at the top: the child must import crdtsync only once atheris instruments it.
    from crdtsync.core.replica import Replica, ReplicaConfig

    unlimited = ReplicaConfig(quarantine_after_rejects=1 << 62, peer_frames_per_second_max=1e12)
    return Replica(
        node_id="fuzz-target",
        epoch=1,
        client_id=client_id,
        address="fuzz://a",
        publish_endpoint="fuzz://p",
        config=unlimited,
    )


def mutate_then(fix: Callable[[bytes, int], bytes]) -> Callable[[bytes, int, int], bytes]:
    """A custom mutator: libFuzzer's own mutation, then `fix(data, seed)` on the result."""

    def mutator(data: bytes, max_size: int, seed: int) -> bytes:
        import atheris

        return fix(atheris.Mutate(data, max_size), seed)[:max_size]

    return mutator


# ---------------------------------------------------------------------------------------------------------
# Parent: run the child, read libFuzzer's output


_STATS_RE = re.compile(r"^#(\d+)\s+(\w+)\s+(?:cov: (\d+) ft: (\d+) )?corp: (\d+)/")
_FINAL_RE = re.compile(r"^stat::(\w+):\s+(\d+)")
_ARTIFACT_RE = re.compile(r"Test unit written to (\S+)")


@dataclass
class Result:
    name: str
    seed: int
    exit_code: int = 0
    execs: int = 0
    seconds: float = 0.0
    """Fuzzing time, from libFuzzer's INITED (the starting corpus has run) to the end."""
    coverage: int = 0
    """libFuzzer's `cov`: instrumented branch points of crdtsync (and tomllib) reached."""
    features: int = 0
    """libFuzzer's `ft`: coverage features (edges with hit counts, comparisons)."""
    corpus: int = 0
    new_inputs: int = 0
    findings: list[Path] = field(default_factory=list)
    output: deque[str] = field(default_factory=lambda: deque(maxlen=OUTPUT_TAIL_LINES))

    @property
    def execs_per_s(self) -> float:
        return self.execs / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        found = "".join(f"\n  finding: {path}" for path in self.findings)
        return (
            f"{self.name} seed={self.seed}: {self.execs} execs in {self.seconds:.1f} s "
            f"({self.execs_per_s:.0f}/s), coverage {self.coverage} branch points / {self.features} "
            f"features, corpus {self.corpus} inputs ({self.new_inputs} new), {len(self.findings)} findings"
            + found
        )


class _Reader:
    """Echoes the child's output and picks libFuzzer's figures out of it."""

    def __init__(self, result: Result, quiet: bool) -> None:
        self.result = result
        self.quiet = quiet
        self.inited_at: float | None = None
        self.inited_execs = 0
        self.done_at: float | None = None

    def pump(self, child: subprocess.Popen[str]) -> None:
        assert child.stdout is not None
        for text in child.stdout:
            self.line(text.rstrip("\n"))

    def line(self, text: str) -> None:
        self.result.output.append(text)
        if not self.quiet:
            print(text, file=sys.stderr, flush=True)
        if match := _STATS_RE.match(text):
            execs, event, cov, ft, corpus = match.groups()
            if event == "INITED":
                self.inited_at, self.inited_execs = time.monotonic(), int(execs)
            elif event == "DONE":
                self.done_at = time.monotonic()
            if cov is not None:
                self.result.coverage, self.result.features = int(cov), int(ft)
            self.result.corpus = int(corpus)
            self.result.execs = int(execs)
        elif match := _FINAL_RE.match(text):
            key, value = match.group(1), int(match.group(2))
            if key == "number_of_executed_units":
                self.result.execs = value
            elif key == "new_units_added":
                self.result.new_inputs = value
        elif match := _ARTIFACT_RE.search(text):
            self.result.findings.append(Path(match.group(1)))


def _save_traceback(result: Result, findings_dir: Path) -> None:
    """Write the end of the child's output (the traceback, or libFuzzer's report of a signal) next to
    each finding, or as a finding of its own if the child died without saving an input."""
    tail = "\n".join(result.output) + "\n"
    if result.exit_code != 0 and not result.findings:
        findings_dir.mkdir(parents=True, exist_ok=True)
        path = findings_dir / f"{result.name}-died-{result.seed}-{int(time.time())}"
        path.write_bytes(b"")
        result.findings.append(path)
    for path in result.findings:
        with contextlib.suppress(OSError):
            path.with_name(path.name + ".txt").write_text(tail)


def run(
    target: str,
    seconds: float,
    seed: int,
    corpus: Path | None,
    findings: Path,
    options: Sequence[str] = (),
    quiet: bool = False,
    replay: Sequence[Path] = (),
) -> Result:
    """Fuzz the target of module `target` (`fuzz.wire_decoder` or just `wire_decoder`) for
    `seconds`, or, with `replay`, run each of those inputs once. Never raises on a finding: they are
    in the result, saved under `findings` with a `.txt` of the traceback beside each."""
    module = target if "." in target else f"fuzz.{target}"
    name = module.rsplit(".", 1)[-1]
    result = Result(name=name, seed=seed)
    findings = findings.resolve()
    findings.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f"fuzz-{name}-") as scratch_dir:
        scratch = Path(scratch_dir)
        seeds_dir = scratch / "seeds"
        libfuzzer = [f"-seed={seed}", f"-timeout={INPUT_TIMEOUT_S}", "-print_final_stats=1"]
        if replay:
            # Replays leave no artifact behind: the input is already saved.
            libfuzzer += [f"-artifact_prefix={scratch}/", *(str(path.resolve()) for path in replay)]
        else:
            libfuzzer += [
                f"-max_total_time={max(1, math.ceil(seconds))}",
                f"-artifact_prefix={findings}/{name}-",
            ]
            if corpus is not None:
                corpus.mkdir(parents=True, exist_ok=True)
                libfuzzer.append(str(corpus.resolve()))  # the first directory: new inputs go there
            libfuzzer.append(str(seeds_dir))
        command = [sys.executable, "-m", "fuzz._runner", module, str(scratch), *options, "--", *libfuzzer]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, (str(REPO_ROOT), env.get("PYTHONPATH"))))
        # Hash randomization changes set and dict orders, so coverage: tie it to the seed for replays.
        env.setdefault("PYTHONHASHSEED", str(seed % (1 << 32)))
        # pycrdt panics on much garbage and crdtsync catches that; a backtrace for each would cost
        # more than the rest of the input.
        env["RUST_BACKTRACE"] = "0"
        started = time.monotonic()
        child = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True, errors="replace"
        )
        reader = _Reader(result, quiet)
        pump = threading.Thread(target=reader.pump, args=(child,), daemon=True)
        pump.start()
        try:
            result.exit_code = child.wait(timeout=seconds + STARTUP_SLACK_S)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
            reader.line(f"fuzz: the child did not stop within {seconds + STARTUP_SLACK_S:.0f} s; killed")
            result.exit_code = -9
        pump.join()
        result.seconds = (reader.done_at or time.monotonic()) - (reader.inited_at or started)
        result.execs = max(0, result.execs - reader.inited_execs)
    if replay:
        result.findings.clear()  # the inputs are saved already; their artifacts went to the scratch dir
    else:
        _save_traceback(result, findings)
    return result


def cli_main(target: Target, argv: list[str] | None) -> int:
    """`python -m fuzz.TARGET`: the flags every target takes, plus the target's own."""
    parser = argparse.ArgumentParser(prog=f"python -m fuzz.{target.name}", description=target.description)
    parser.add_argument("--minutes", type=float, default=1.0, help="how long to fuzz (default 1)")
    parser.add_argument(
        "--seed",
        type=int,
        default=1,
        help="libFuzzer's random seed, 1..2^32-1 (default 1): the same seed and corpus replay the same inputs",
    )
    parser.add_argument(
        "--corpus",
        type=Path,
        default=Path("fuzz/corpus") / target.name,
        help="corpus directory: read at start, inputs that reach new coverage are added (default fuzz/corpus/TARGET)",
    )
    parser.add_argument(
        "--findings",
        type=Path,
        default=Path("fuzz/findings"),
        help="where crashing inputs go, each with a .txt of its traceback (default fuzz/findings)",
    )
    parser.add_argument(
        "--replay", type=Path, nargs="+", metavar="FILE", help="run these inputs once each instead of fuzzing"
    )
    for option, help_text in target.options.items():
        parser.add_argument(option, action="store_true", help=help_text)
    args = parser.parse_args(argv)
    if args.minutes <= 0:
        parser.error("--minutes must be positive")
    if not 1 <= args.seed < 1 << 32:
        parser.error("--seed must be in 1..2^32-1 (libFuzzer takes 0 as 'pick one')")
    options = [option for option in target.options if getattr(args, option.lstrip("-").replace("-", "_"))]
    result = run(
        target.name,
        args.minutes * 60.0,
        args.seed,
        args.corpus,
        args.findings,
        options=options,
        replay=args.replay or (),
    )
    if args.replay:
        verdict = "no finding" if result.exit_code == 0 else f"FINDING (exit status {result.exit_code})"
        print(f"{target.name}: replayed {len(args.replay)} inputs: {verdict}")
        return 0 if result.exit_code == 0 else 1
    print(result.summary())
    return 1 if result.findings else 0


# ---------------------------------------------------------------------------------------------------------
# Child: instrument, import the target, hand it to libFuzzer


def _child(argv: list[str]) -> None:
    split = argv.index("--")
    module_name, scratch, *options = argv[:split]
    import atheris
    from atheris.import_hook import instrument_imports

    # The replica warns about every kind of malformed frame, which is all a fuzzer sends.
    logging.getLogger("crdtsync").setLevel(logging.ERROR)

    # The whole run stays inside the hook so that modules crdtsync imports lazily are instrumented too.
    with instrument_imports(include=list(INSTRUMENTED)):
        target: Target = importlib.import_module(module_name).TARGET
        seeds_dir = Path(scratch) / "seeds"
        seeds_dir.mkdir(exist_ok=True)
        for index, data in enumerate(target.seeds()):
            (seeds_dir / f"seed-{index:03d}").write_bytes(data)
        fuzzable = target.make(Path(scratch), frozenset(options))
        libfuzzer = [f"-max_len={target.max_len}", *argv[split + 1 :]]
        if target.mutator is None:
            atheris.Setup([sys.argv[0], *libfuzzer], fuzzable)
        else:
            atheris.Setup([sys.argv[0], *libfuzzer], fuzzable, custom_mutator=target.mutator)
        atheris.Fuzz()


def rss_mb_of(pid: int) -> float | None:
    """VmRSS of a process in MB; None when it is gone."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        return None
    return None


if __name__ == "__main__":
    _child(sys.argv[1:])
