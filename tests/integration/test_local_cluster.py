"""The local-cluster harness (`crdtsync.testing.cluster`): ports, plans, arguments, signals, restarts
and the check of acknowledged writes."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from crdtsync.testing.cluster import (
    AckedWrite,
    ClusterError,
    LocalCluster,
    LocalDaemon,
    free_ports,
    plan_daemons,
)

pytestmark = pytest.mark.integration


def test_free_ports_are_distinct_and_below_the_ephemeral_range() -> None:
    ports = free_ports(20)
    assert len(set(ports)) == 20
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    assert all(1024 <= port < low for port in ports)


def test_separate_calls_never_hand_out_the_same_port_again() -> None:
    """A daemon's replication and HTTP ports come from two calls; a port free at both probes (the
    first was not bound yet) must still not be handed out twice (a CI run failed on that)."""
    ports = [free_ports(1)[0] for _ in range(500)]
    assert len(set(ports)) == len(ports)


def test_a_plan_gives_ports_dirs_datacenters_and_peers(tmp_path: Path) -> None:
    names = ["a", "b", "c", "d"]
    daemons = plan_daemons(LocalDaemon, str(tmp_path), names, dcs={"c": "dc2", "d": "dc2"}, seeds=["a", "c"])
    by_name = {d.name: d for d in daemons}
    assert [d.dc for d in daemons] == ["dc1", "dc1", "dc2", "dc2"]
    assert by_name["a"].peers == [by_name["c"].listen]
    assert by_name["b"].peers == [by_name["a"].listen, by_name["c"].listen]
    assert by_name["b"].data_dir == str(tmp_path / "b") and by_name["b"].log_path == str(tmp_path / "b.log")
    ports = [d.listen_port for d in daemons] + [d.http_port for d in daemons]
    assert len(set(ports)) == 8
    memory = plan_daemons(LocalDaemon, str(tmp_path), ["m"], ports=[7001, 7002], data_dirs=False)[0]
    assert (memory.listen, memory.url, memory.data_dir) == (
        "tcp://127.0.0.1:7001",
        "http://127.0.0.1:7002",
        "",
    )
    assert "--data-dir" not in memory.serve_args("dc1", [], [])


def test_curve_clusters_configure_every_other_members_key(tmp_path: Path) -> None:
    cluster = LocalCluster.named(
        str(tmp_path), ["a", "b", "c"], curve=True, settings={"replication": {"tick_interval_ms": 20}}
    )
    args = cluster.serve_args(cluster["a"])
    assert 'security.mode="curve"' in args and f'security.key_file="{tmp_path / "a.key"}"' in args
    keys = next(arg for arg in args if arg.startswith("security.peer_keys="))
    assert cluster["b"].listen in keys and cluster["c"].listen in keys and cluster["a"].listen not in keys
    assert cluster.public_keys["b"] in keys
    assert args[-2:] == ["--set", "replication.tick_interval_ms=20"]
    again = LocalCluster.named(str(tmp_path), ["a", "b", "c"], curve=True)
    assert again.public_keys == cluster.public_keys, "existing key files are kept"
    assert "--plaintext" in LocalCluster.named(str(tmp_path), ["a"]).serve_args(cluster["a"])


def test_a_daemon_that_exits_at_start_fails_the_wait_with_its_log(tmp_path: Path) -> None:
    with LocalCluster.named(str(tmp_path), ["a"], extra_args=["--set", "no_such_key=1"]) as cluster:
        cluster.start_all()
        with pytest.raises(ClusterError, match="failed to start"):
            cluster.wait_healthy(timeout_s=30.0)


def test_signals_restarts_and_the_check_of_acknowledged_writes(tmp_path: Path) -> None:
    with LocalCluster.named(str(tmp_path), ["a", "b"]) as cluster:
        cluster.start_all()
        cluster.wait_healthy()
        assert cluster.put("a", "t/doc", "a-key", 1, owned=True)
        assert cluster.put("b", "t/doc", "shared", {"by": "b"})
        cluster.pause("b")
        cluster.resume("b")
        assert cluster.terminate("a") == 0
        assert not cluster["a"].running
        cluster.restart("a")
        assert cluster["a"].starts == 2
        cluster.wait_healthy(["a"])
        assert cluster.put("a", "t/doc", "a-key", 2, owned=True)
        cluster.kill("b")
        assert cluster["b"].process is not None and cluster["b"].process.returncode == -signal.SIGKILL
        cluster.restart("b")
        cluster.wait_healthy(["b"])
        assert cluster.wait_converged(30.0)
        assert cluster.verify_acks() == []
        # A write logged as acknowledged that no node holds is found on every node.
        real = cluster.acks.acks[-1]
        forged = AckedWrite("a", cluster.acks.next_seq("a"), "t/doc", "a-key", 99, True, cluster["a"].starts)
        cluster.acks.acks.append(type(real)(forged, real.state_vector))
        problems = cluster.verify_acks()
        assert len(problems) == 2 and all(
            "t/doc a-key: " in p and p.endswith("acknowledged 99") for p in problems
        ), problems


def test_a_config_file_reaches_every_daemon_and_flags_follow_it(tmp_path: Path) -> None:
    toml = "[cluster]\npartitions = 64\n\n[[placement]]\nrf = 2\n"
    cluster = LocalCluster.named(
        str(tmp_path), ["a", "b"], config_toml=toml, settings={"replication": {"tick_interval_ms": 20}}
    )
    args = cluster.serve_args(cluster["b"])
    assert args[args.index("--config") + 1] == str(tmp_path / "config.toml")
    assert args.index("--config") < args.index("--set"), "flags come after the file: they win over it"
    assert (tmp_path / "config.toml").read_text() == toml
    assert "--config" not in LocalCluster.named(str(tmp_path / "plain"), ["a"]).serve_args(cluster["a"])
