"""Helpers of the placement simulator tests: the configuration they share (rf 2, every fault, a
short handoff grace), a seed range CRDTSYNC_SIM_SEEDS=A..B can replace, and the verdict check."""

from __future__ import annotations

import os

from crdtsync.core.placement import PlacementPolicy, PlacementRule
from crdtsync.core.replica import ReplicaConfig
from crdtsync.sim import FAULTS, SimConfig, SimResult

RF2 = PlacementPolicy((PlacementRule(2),))
SHORT_GRACE = ReplicaConfig(handoff_grace_ms=2_000.0)


def seeds(first: int, last: int) -> range:
    text = os.environ.get("CRDTSYNC_SIM_SEEDS")
    if text:
        first, last = (int(part) for part in text.split(".."))
    return range(first, last + 1)


def sim_config(seed: int, **overrides: object) -> SimConfig:
    values: dict[str, object] = {
        "seed": seed,
        "nodes": 5,
        "docs": 30,
        "ops": 300,
        "faults": frozenset(FAULTS),
        "placement": RF2,
        "replica": SHORT_GRACE,
    }
    values.update(overrides)
    return SimConfig(**values)  # type: ignore[arg-type]


def check(result: SimResult) -> None:
    """Print the verdict; a failure also says how to replay it with this test's configuration (the
    verdict's own command line has the CLI's defaults, not the overrides of `sim_config`)."""
    print(result.verdict())
    test = os.environ.get("PYTEST_CURRENT_TEST", "").split(" ")[0]
    seed = result.config.seed
    assert result.ok, f"{result.verdict()}\nreplay here: CRDTSYNC_SIM_SEEDS={seed}..{seed} pytest '{test}'"
