"""A fuzz target that fails on every input but its seed: the engine's own test (findings saved
with their traceback, replays)."""

from __future__ import annotations

from pathlib import Path

from fuzz._runner import Fuzzable, Target

SEED = b"seed"


def make_target(scratch: Path, options: frozenset[str]) -> Fuzzable:
    def target(data: bytes) -> None:
        if data != SEED:
            raise RuntimeError(f"planted failure on {data!r}")

    return target


TARGET = Target(name="crashing_target", description=__doc__ or "", seeds=lambda: [SEED], make=make_target)
