"""A short run of the chaos campaign (fuzz.chaos): six real daemons in two datacenters over CurveZMQ
links, SIGKILL, SIGSTOP and SIGTERM faults for 50 s, then every acknowledged write on every node. It
prints its seed and its summary; on a failure the daemons' logs stay in the test's tmp dir."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from fuzz import chaos

pytestmark = pytest.mark.integration

FAULTS_S = 50.0
"""Long enough for a dozen faults, short enough that the whole test stays under two minutes on two cores."""


def test_real_daemons_keep_every_acknowledged_write_through_kills_pauses_and_restarts(tmp_path: Path) -> None:
    seed = 20261201
    print(f"chaos seed {seed}")
    ok, summary = asyncio.run(chaos.campaign(FAULTS_S, seed, work_dir=str(tmp_path / "chaos"), curve=True))
    print(summary)
    assert ok, summary
    missing = [kind for kind in chaos.FAULT_KINDS if summary.faults[kind] == 0]
    assert not missing, f"no {', '.join(missing)} fault happened:\n{summary}"
    assert summary.writes_acked > 0, summary
    assert summary.burst_writes > 0, f"no write was in flight at a kill or term:\n{summary}"
    assert summary.converged_after_s is not None, summary
