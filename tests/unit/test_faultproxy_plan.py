"""The fault proxy's partitions and seeded network plans (`crdtsync.testing.faultproxy`), without sockets."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest

from crdtsync.testing.cluster import LocalDaemon, plan_daemons
from crdtsync.testing.faultplans import PARTITION_SHAPES, bridge, isolate, one_way, plan_network, split
from crdtsync.testing.faultproxy import FaultProxy, LinkFaults, put_behind_proxy, source_hosts

NODES = ["a", "b", "c", "d", "e"]
DCS = {"a": "dc0", "b": "dc0", "c": "dc1", "d": "dc1", "e": "dc2"}


def test_partition_shapes_block_the_links_they_name() -> None:
    assert isolate(NODES, ["c"]) == {(c, o) for c, o in [("c", x) for x in "abde"]} | {
        (x, "c") for x in "abde"
    }
    assert split([["a", "b"], ["c"]]) == {("a", "c"), ("b", "c"), ("c", "a"), ("c", "b")}
    assert one_way(["a"], ["b", "c"]) == {("a", "b"), ("a", "c")}
    bridged = bridge(["a", "b"], "c", ["d", "e"])
    assert ("a", "d") in bridged and ("e", "b") in bridged
    assert not any("c" in link for link in bridged), "the bridge node talks to both sides"


def test_the_same_seed_plans_the_same_network_and_every_shape_comes() -> None:
    first = plan_network(random.Random(7), 120.0, DCS)
    assert first == plan_network(random.Random(7), 120.0, DCS)
    assert first != plan_network(random.Random(8), 120.0, DCS)
    shapes = {fault.shape for fault in first.faults if fault.kind == "partition"}
    assert shapes == set(PARTITION_SHAPES)
    assert {fault.kind for fault in first.faults} == {"partition", "reset", "degrade"}
    # WAN links only, the same latency both ways, within 30..150 ms and capped at 5 MB/s.
    assert set(first.base) == {(a, b) for a in DCS for b in DCS if DCS[a] != DCS[b]}
    for (a, b), faults in first.base.items():
        assert faults == first.base[(b, a)]
        # One distance per pair of datacenters.
        assert all(
            first.base[link] == faults
            for link in first.base
            if {DCS[link[0]], DCS[link[1]]} == {DCS[a], DCS[b]}
        )
        assert 30.0 <= faults.latency_ms <= 150.0 and faults.bandwidth_bytes_per_s == 5_000_000.0
    starts = [fault.at_s for fault in first.faults]
    assert starts == sorted(starts) and all(3.0 <= at_s < 119.0 for at_s in starts)
    for fault in first.faults:
        assert fault.links and all(a != b and a in DCS and b in DCS for a, b in fault.links)
    datacenter = next(f for f in first.faults if f.shape == "datacenter")
    assert datacenter.links in [isolate(DCS, group) for group in (["a", "b"], ["c", "d"], ["e"])]


def test_daemons_put_behind_the_proxy_advertise_it_and_bind_their_own_source(tmp_path: Path) -> None:
    daemons = plan_daemons(LocalDaemon, str(tmp_path), ["a", "b"])
    listens = [daemon.listen for daemon in daemons]
    routes = put_behind_proxy(daemons)
    a, b = daemons
    assert [route.node for route in routes] == ["a", "a", "b", "b"]
    assert a.advertise == routes[0].address and routes[0].target_port == a.listen_port
    assert (
        a.publish_advertise == routes[1].address and a.publish == f"tcp://127.0.0.1:{routes[1].target_port}"
    )
    assert a.peers == [b.advertise] and listens[1] not in a.peers
    assert (a.source_host, b.source_host) == (source_hosts(["a", "b"])["a"], "127.0.0.3")
    ports = [route.listen_port for route in routes] + [route.target_port for route in routes]
    ports += [daemon.http_port for daemon in daemons]
    assert len(ports) == len(set(ports)) == 10, "no port planned twice"
    args = a.serve_args("dc1", a.peers, [])
    assert args[args.index("--advertise") + 1] == a.advertise
    assert 'source_host="127.0.0.2"' in args
    assert LinkFaults() == LinkFaults(latency_ms=0.0, blackhole=False)


def test_the_chaos_campaign_takes_fault_sets_and_replays_them() -> None:
    from fuzz import chaos

    with pytest.raises(SystemExit):
        chaos.main(["--faults", "process,disks"])
    summary = chaos.Summary(7, 60.0, 6, 3, 400.0, fault_sets=("process", "network"))
    assert summary.replay_command().endswith("--faults process,network")
    assert "--faults" not in chaos.Summary(7, 60.0, 6, 3, 400.0).replay_command()
    with pytest.raises(ValueError, match="faults must be some of"):
        asyncio.run(chaos.campaign(1.0, 7, faults=("floods",)))


def test_the_proxy_numbers_hosts_as_put_behind_proxy_does(tmp_path: Path) -> None:
    names = [f"n{index}" for index in range(12)]
    daemons = plan_daemons(LocalDaemon, str(tmp_path), names)
    proxy = FaultProxy(put_behind_proxy(daemons))
    assert proxy.hosts == {daemon.name: daemon.source_host for daemon in daemons}
