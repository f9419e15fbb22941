"""Hundreds of simulator seeds in the suite (issue 13): campaigns of 50 short runs of small clusters
(4 to 6 nodes, 10 docs, 60 writes, every fault) in four configurations, two per file so that the
suite's two workers share them (a file runs whole in one worker). Longer campaigns are
`python -m crdtsync.sim`'s. CRDTSYNC_SIM_SEEDS=A..B runs another range."""

from __future__ import annotations

from typing import Any

import pytest
from placement_support import check, seeds, sim_config

from crdtsync.core.placement import PlacementPolicy, PlacementRule
from crdtsync.sim import run_simulation

RF1 = PlacementPolicy((PlacementRule(1),))
CAMPAIGN_SEEDS = 50
CAMPAIGNS: dict[str, tuple[int, dict[str, Any]]] = {
    "rf1-two-dcs": (4000, {"datacenters": 2, "placement": RF1}),
    "rf2-six-nodes-two-dcs-follows": (5000, {"nodes": 6, "datacenters": 2, "follows": 4}),
}


@pytest.mark.parametrize("campaign", sorted(CAMPAIGNS))
def test_campaigns_of_small_clusters_hold_every_invariant(campaign: str) -> None:
    first, overrides = CAMPAIGNS[campaign]
    small: dict[str, Any] = {"nodes": 4, "docs": 10, "ops": 60, **overrides}
    for seed in seeds(first, first + CAMPAIGN_SEEDS - 1):
        check(run_simulation(sim_config(seed, **small)))
