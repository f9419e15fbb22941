"""Deterministic cluster simulation of the sans-IO core (also a fuzz harness for user doc schemas)."""

from crdtsync.sim.cluster import SimCluster, run_campaign, run_simulation
from crdtsync.sim.config import FAULTS, SimConfig, SimResult
from crdtsync.sim.trace import SimTracer
from crdtsync.sim.workload import MapTextWorkload, Workload, Write

__all__ = [
    "FAULTS",
    "MapTextWorkload",
    "SimCluster",
    "SimConfig",
    "SimResult",
    "SimTracer",
    "Workload",
    "Write",
    "run_campaign",
    "run_simulation",
]
