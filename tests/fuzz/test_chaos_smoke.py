"""Short runs of the chaos campaign (fuzz.chaos): six real daemons in two datacenters over CurveZMQ
links, SIGKILL, SIGSTOP and SIGTERM faults for 50 s, then every acknowledged write on every node; and
four daemons behind the fault proxy through partitions for 12 s. Each prints its seed and its summary;
on a failure the daemons' logs stay in the test's tmp dir."""

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


NETWORK_FAULTS_S = 12.0
"""Two partitions and a kill with this seed: seconds, not minutes (the suite's budget)."""


def test_real_daemons_behind_the_fault_proxy_converge_after_partitions(tmp_path: Path) -> None:
    """Four daemons in two datacenters, every replication byte through the fault proxy (WAN latency
    and caps between the datacenters): a datacenter and a bridge partition, each healed and its probe
    writes awaited, and a kill; then every acknowledged write on every node and every member alive."""
    seed = 20263257
    print(f"chaos seed {seed}")
    ok, summary = asyncio.run(
        chaos.campaign(
            NETWORK_FAULTS_S, seed, nodes=4, work_dir=str(tmp_path / "chaos"), faults=("process", "network")
        )
    )
    print(summary)
    assert ok, summary
    network = summary.network
    assert network is not None
    assert network.faults["partition datacenter"] == 1 and network.faults["partition bridge"] == 1, summary
    # The first heal is measured; the second may still be awaited when the time is up (not counted).
    assert sum(len(times) for times in network.heal_converge_s.values()) >= 1, summary
    assert network.heal_unconverged == 0, summary
    assert network.proxy_bytes > 0 and network.unknown_clients == 0, summary
    cross_dc_ms = [s * 1000.0 for same_dc, _latency, s in network.arrivals if not same_dc]
    assert cross_dc_ms, f"no write arrival measured across datacenters:\n{summary}"
    # Every write that crossed the WAN took at least a WAN link's latency: 30 ms less 10% jitter.
    assert min(cross_dc_ms) >= 27.0, summary
    assert summary.faults["kill"] == 1 and summary.writes_acked > 0, summary


DISK_FAULTS_S = 14.0
"""A full disk, then I/O errors cut short by the heal, with this seed: seconds, not minutes."""
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_real_daemons_on_small_disks_refuse_what_they_cannot_commit_and_recover(tmp_path: Path) -> None:
    """Four daemons, each data dir on a small tmpfs: one's disk fills up (its probe writes end in a
    507), another's writes fail with I/O errors (503); each reports ready again by itself once the
    fault is gone, and every acknowledged write is on every node. The report has the JSON figures
    and the timeline picture."""
    seed = 20261346
    print(f"chaos seed {seed}")
    report = tmp_path / "report"
    ok, summary = asyncio.run(
        chaos.campaign(
            DISK_FAULTS_S,
            seed,
            nodes=4,
            work_dir=str(tmp_path / "chaos"),
            faults=("disk",),
            report_dir=str(report),
        )
    )
    print(summary)
    assert ok, summary
    disk = summary.disk
    assert disk is not None
    assert disk.faults["full"] == 1 and disk.faults["ioerror"] == 1, summary
    assert disk.answers["full"]["HTTP 507"] == 1, summary
    assert disk.answers["ioerror"]["HTTP 503"] >= 1, summary
    assert disk.unrecovered == 0 and len(disk.recover_s["full"]) == 1, summary
    assert summary.converged_after_s is not None and summary.writes_acked > 0, summary
    picture = (report / f"chaos-{seed}.png").read_bytes()
    assert picture.startswith(PNG_SIGNATURE), "the report's picture is not a PNG"
    width, height = int.from_bytes(picture[16:20], "big"), int.from_bytes(picture[20:24], "big")
    assert width >= 800 and height >= 400 and len(picture) > 10_000, (width, height, len(picture))
    assert (report / f"chaos-{seed}.json").exists()
