"""Helpers for testing your own document schemas against crdtsync's simulator.

`sim_configs()` is a hypothesis strategy over simulated clusters and faults; `assert_converges`
runs one simulation with your `Workload` and fails with the seed and a replay command. Requires
hypothesis (`pip install crdtsync[dev]`) for `sim_configs`.

`crdtsync.testing.cluster` runs real `crdtsync serve` daemons on 127.0.0.1 instead (`LocalCluster`:
start, kill, pause, resume, terminate, restart, and the check of every acknowledged write).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from crdtsync.sim import FAULTS, SimConfig, SimResult, Workload, run_simulation

if TYPE_CHECKING:
    from hypothesis.strategies import SearchStrategy

__all__ = ["assert_converges", "sim_configs"]


def sim_configs(
    *, nodes_max: int = 7, docs_max: int = 6, ops_max: int = 400, faults: tuple[str, ...] = FAULTS
) -> SearchStrategy[SimConfig]:
    """Simulated clusters of 2..nodes_max nodes with any subset of `faults`."""
    from hypothesis import strategies as st

    return st.builds(
        SimConfig,
        seed=st.integers(0, 2**32 - 1),
        nodes=st.integers(2, nodes_max),
        docs=st.integers(1, docs_max),
        ops=st.integers(0, ops_max),
        faults=st.frozensets(st.sampled_from(faults)),
        loss_rate=st.floats(0.0, 0.4),
    )


def assert_converges(config: SimConfig, workload: Workload | None = None) -> SimResult:
    """Run the simulation; raise AssertionError naming the seed and replay command unless it converged
    with no lost write."""
    result = run_simulation(config, workload)
    if not result.ok:
        raise AssertionError(result.verdict())
    return result
