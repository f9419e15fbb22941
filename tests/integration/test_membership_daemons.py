"""Membership over real `crdtsync serve` processes: seeds, failure detection, datacenter relays.

Three daemons (a, b, c) where only a is a seed learn each other by gossip and replicate between
nodes that were never configured with each other; a SIGKILLed one is reported down within the
time the detector's settings give and comes back alive (and caught up) after a restart. Four
daemons in two datacenters (east, west) elect one relay per datacenter, carry writes between
non-relays through them, and fail over when a relay is killed.

Every daemon runs with the short timers of `daemon_support` (FAST_REPLICATION, FAST_MEMBERSHIP).
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from click.testing import CliRunner
from daemon_support import (
    CONVERGE_TIMEOUT_S,
    FAST_MEMBERSHIP,
    FAST_REPLICATION,
    Daemon,
    DaemonPool,
    start_all,
    wait_until,
)
from prometheus_client.parser import text_string_to_metric_families

from crdtsync.cli import main
from crdtsync.core.membership import MembershipConfig, PhiDetector
from crdtsync.core.replica import ReplicaConfig

pytestmark = pytest.mark.integration

MEMBERSHIP = MembershipConfig(**FAST_MEMBERSHIP)
HEARTBEAT_MS = float(FAST_REPLICATION.get("heartbeat_interval_ms", ReplicaConfig().heartbeat_interval_ms))
SLACK = 3.0
"""Detection may take this many times the computed time (a loaded 2-core CI machine)."""


def silence_to_suspect_ms(config: MembershipConfig, heartbeat_ms: float) -> float:
    """The silence after which the detector makes a member suspect when it was heard at every
    heartbeat: its own formula, searched for the first silence whose phi reaches `phi_suspect`."""
    detector = PhiDetector(config.samples_max, heartbeat_ms, 0.0, heartbeat_ms + config.acceptable_pause_ms)
    now = 0.0
    for _ in range(50):  # a steady stream of heartbeats
        now += heartbeat_ms
        detector.heard(now)
    low, high = 0.0, 600_000.0
    while high - low > 1.0:
        middle = (low + high) / 2
        if detector.phi(now + middle, config) >= config.phi_suspect:
            high = middle
        else:
            low = middle
    return high


DOWN_AFTER_MS = silence_to_suspect_ms(MEMBERSHIP, HEARTBEAT_MS) + MEMBERSHIP.down_after_suspect_ms
"""From the last heartbeat of a killed member to `down` on the others, by the configured settings."""


# ------------------------------------------------------------------------------------------ helpers


def members(daemon: Daemon) -> dict[str, dict[str, Any]]:
    return {member["node_id"]: member for member in daemon.status()["members"]}


def peer_states(daemon: Daemon) -> dict[str, str]:
    return {peer["node_id"]: peer["state"] for peer in daemon.status()["peers"] if peer["node_id"]}


def sees_alive(daemon: Daemon, others: list[Daemon], *, peers: bool = True) -> bool:
    """Whether `daemon` lists every one of `others` as an alive member (and, with `peers`, as a
    peer that is up)."""
    status = daemon.status()
    known = {member["node_id"]: member["state"] for member in status["members"]}
    linked = {peer["node_id"]: peer["state"] for peer in status["peers"] if peer["node_id"]}
    return all(
        known.get(other.name) == "alive" and (not peers or linked.get(other.name) == "alive")
        for other in others
    )


def views(daemons: list[Daemon]) -> str:
    """Every running daemon's members and peers, for a failure message."""
    lines = []
    for daemon in daemons:
        if not daemon.running:
            lines.append(f"{daemon.name}: not running")
            continue
        status = daemon.status()
        lines.append(
            f"{daemon.name} (dc {status['dc']}, relay {status['relay']}): members "
            + json.dumps({m["node_id"]: [m["state"], m["relay"]] for m in status["members"]})
            + " peers "
            + json.dumps(
                {p["node_id"] or p["address"]: [p["state"], p["subscribed"]] for p in status["peers"]}
            )
        )
    return "\n".join(lines)


def wait_mesh(daemons: list[Daemon], *, peers_within_dc: bool = True) -> None:
    """Until every daemon lists every other as an alive member, with a link that is up to each
    one of its own datacenter."""

    def done() -> bool:
        for daemon in daemons:
            others = [other for other in daemons if other is not daemon]
            same_dc = [other for other in others if other.dc == daemon.dc]
            if not sees_alive(daemon, others, peers=False):
                return False
            if peers_within_dc and not sees_alive(daemon, same_dc):
                return False
        return True

    wait_until(done, CONVERGE_TIMEOUT_S, lambda: "every member is alive everywhere:\n" + views(daemons))


def wait_value(daemon: Daemon, doc_id: str, key: str, value: Any, everyone: list[Daemon]) -> float:
    return wait_until(
        lambda: (daemon.data(doc_id) or {}).get(key) == value,
        CONVERGE_TIMEOUT_S,
        lambda: (
            f"{daemon.name} reads {doc_id} {key} = {value!r} (it has {daemon.data(doc_id)}):\n"
            + views(everyone)
        ),
    )


def metric_samples(daemon: Daemon) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = daemon.client.get("/metrics")
    assert response.status_code == 200
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


# ------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def seeded_nodes(pool: DaemonPool) -> list[Daemon]:
    """a (no peers), b and c (a as their one seed)."""
    a, b, c = (pool.new(name) for name in ("a", "b", "c"))
    b.peers = [a.listen]
    c.peers = [a.listen]
    start_all([a, b, c])
    return [a, b, c]


@pytest.fixture
def seeded(seeded_nodes: list[Daemon]) -> list[Daemon]:
    """The seeded cluster, with any daemon a failed test left down started again, and every member
    alive everywhere."""
    for daemon in seeded_nodes:
        if not daemon.running:
            daemon.start()
            daemon.wait_healthy()
    wait_mesh(seeded_nodes)
    return seeded_nodes


# ------------------------------------------------------------------------------------------ seeds


def test_nodes_started_with_one_seed_learn_each_other_and_replicate_directly(seeded: list[Daemon]) -> None:
    a, b, c = seeded
    assert b.peers == [a.listen] and c.peers == [a.listen] and not a.peers

    # b and c were never told about each other: they learned it from a, and link directly.
    for daemon in seeded:
        status = daemon.status()
        assert status["dc"] == "test-dc" and status["relay"] in (True, False)
        others = {m["node_id"]: m for m in status["members"]}
        assert set(others) == {d.name for d in seeded} - {daemon.name}
        for member in others.values():
            address = next(d.listen for d in seeded if d.name == member["node_id"])
            assert member["address"] == address and member["dc"] == "test-dc"
            assert member["state"] == "alive" and member["incarnation"] >= 1
            assert member["last_seen_ago_ms"] >= 0 and member["state_for_ms"] >= 0
            assert member["phi"] < MEMBERSHIP.phi_suspect
        peers = {p["node_id"]: p for p in status["peers"]}
        assert {name: p["state"] for name, p in peers.items()} == dict.fromkeys(others, "alive")
        assert all(p["dc"] == "test-dc" and p["subscribed"] == "dc" for p in peers.values())
        assert all(p["lag_ms"] >= 0 for p in peers.values())
        [dc] = status["datacenters"]
        assert dc["dc"] == "test-dc" and dc["members"] == dc["alive"] == 3 and len(dc["relays"]) == 1
    # One relay, the same in every view (its own and the others').
    relays = {d.name for d in seeded if d.status()["relay"]}
    assert len(relays) == 1
    assert all(set(d.status()["datacenters"][0]["relays"]) == relays for d in seeded)

    c.put("seeds/doc", "from-c", 1)
    wait_value(b, "seeds/doc", "from-c", 1, seeded)
    b.put("seeds/doc", "from-b", 2)
    wait_value(c, "seeds/doc", "from-b", 2, seeded)

    # The same view in Prometheus metrics and in `crdtsync status`.
    samples = metric_samples(b)
    for other in ("a", "c"):
        labels = (("dc", "test-dc"), ("member", other))
        assert samples[("crdtsync_member_state", (*labels, ("state", "alive")))] == 1.0
        assert samples[("crdtsync_member_state", (*labels, ("state", "down")))] == 0.0
        assert samples[("crdtsync_member_last_seen_seconds", labels)] >= 0
        assert samples[("crdtsync_member_phi", labels)] < MEMBERSHIP.phi_suspect
        assert samples[("crdtsync_member_suspicions_total", labels)] >= 0
    assert samples[("crdtsync_relay", ())] == (1.0 if "b" in relays else 0.0)
    assert samples[("crdtsync_dc_members", (("dc", "test-dc"),))] == 3
    # Per-datacenter traffic counts the WAN only: nothing for the node's own datacenter.
    assert samples[("crdtsync_dc_bytes_received_total", (("dc", "test-dc"),))] == 0
    assert samples[("crdtsync_dc_lag_seconds", (("dc", "test-dc"),))] >= 0
    assert samples[("crdtsync_gossip_received_total", ())] >= 1
    assert samples[("crdtsync_peer_lag_seconds", (("peer", "c"),))] >= 0

    result = CliRunner().invoke(main, ["status", "--url", b.url], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    role = "relay of dc test-dc" if "b" in relays else "not a relay"
    assert lines[0].startswith("node b (dc test-dc), up ") and lines[0].endswith(role)
    table = lines[lines.index("") + 1 :]
    assert table[0].split() == ["MEMBER", "DC", "STATE", "FOR", "LAST", "SEEN", "RELAY"]
    rows = {row.split()[0]: row.split() for row in table[1:]}
    assert set(rows) == {"a", "c"}
    for name, row in rows.items():
        assert row[1:3] == ["test-dc", "alive"] and row[-1] == ("yes" if name in relays else "no")


# ------------------------------------------------------------------------------------------ failures


def test_sigkilled_node_is_down_within_the_detector_time_and_alive_and_caught_up_after_restart(
    seeded: list[Daemon],
) -> None:
    a, b, c = seeded
    before = members(a)["c"]
    assert before["state"] == "alive"

    killed = time.monotonic()
    c.kill()

    def down_on(node: Daemon) -> bool:
        return members(node)["c"]["state"] == "down" and peer_states(node).get("c") == "down"

    wait_until(
        lambda: down_on(a) and down_on(b),
        CONVERGE_TIMEOUT_S,
        lambda: "a and b see c down:\n" + views([a, b]),
        poll_s=0.05,
    )
    elapsed = time.monotonic() - killed
    bound = SLACK * DOWN_AFTER_MS / 1000.0
    assert MEMBERSHIP.down_after_suspect_ms / 1000.0 <= elapsed <= bound, (
        f"c was reported down {elapsed:.2f} s after SIGKILL; the settings give "
        f"{DOWN_AFTER_MS / 1000.0:.2f} s (bound {bound:.2f} s)"
    )
    seen = members(a)["c"]
    assert seen["suspicions"] == before["suspicions"] + 1 and seen["downs"] == before["downs"] + 1
    samples = metric_samples(a)
    labels = (("dc", "test-dc"), ("member", "c"))
    assert samples[("crdtsync_member_state", (*labels, ("state", "down")))] == 1.0
    assert samples[("crdtsync_member_state", (*labels, ("state", "alive")))] == 0.0
    assert samples[("crdtsync_member_downs_total", labels)] == seen["downs"]
    assert samples[("crdtsync_member_state_changes_total", (("to", "down"),))] >= 1
    assert samples[("crdtsync_dc_failures_total", (("dc", "test-dc"),))] >= 2  # suspect, then down

    # Writes while c is down.
    for i in range(5):
        a.put("failure/doc", f"a{i}", i)
        b.put("failure/doc", f"b{i}", i)

    c.start()
    c.wait_healthy()
    wait_mesh(seeded)
    # Any frame from the restarted c is evidence of life, so a and b may list it alive a moment
    # before c's own record (its hello or gossip) tells them its new incarnation.
    wait_until(
        lambda: all(members(node)["c"]["incarnation"] > before["incarnation"] for node in (a, b)),
        CONVERGE_TIMEOUT_S,
        lambda: "a and b learn c's new incarnation:\n" + views([a, b]),
    )
    expected = {f"{n}{i}": i for n in "ab" for i in range(5)}
    wait_until(
        lambda: c.data("failure/doc") == expected,
        CONVERGE_TIMEOUT_S,
        lambda: f"c catches up: it has {c.data('failure/doc')}\n" + views(seeded),
    )


def test_a_sigterm_is_a_graceful_leave_seen_at_once_and_the_node_rejoins_after_restart(
    seeded: list[Daemon],
) -> None:
    """SIGTERM announces the leave: the others mark the node `left` without suspecting it first,
    far sooner than the failure detector could, and a restart rejoins with a higher incarnation."""
    a, b, c = seeded
    before = {node.name: members(node)["c"] for node in (a, b)}
    assert all(record["state"] == "alive" for record in before.values())

    stopped = time.monotonic()
    assert c.terminate() == 0, c.log_tail()

    def left_on(node: Daemon) -> bool:
        return bool(members(node)["c"]["state"] == "left")

    wait_until(
        lambda: left_on(a) and left_on(b),
        CONVERGE_TIMEOUT_S,
        lambda: "a and b see c leave:\n" + views([a, b]),
        poll_s=0.05,
    )
    elapsed = time.monotonic() - stopped
    assert elapsed < DOWN_AFTER_MS / 1000.0, (
        f"c was marked left {elapsed:.2f} s after SIGTERM, no sooner than the detector's "
        f"{DOWN_AFTER_MS / 1000.0:.2f} s: the leave was not announced"
    )
    for node in (a, b):
        seen = members(node)["c"]
        assert seen["suspicions"] == before[node.name]["suspicions"], f"{node.name} suspected c first"
        assert seen["downs"] == before[node.name]["downs"]

    c.start()
    c.wait_healthy()
    wait_mesh(seeded)
    for node in (a, b):
        rejoined = members(node)["c"]
        assert rejoined["state"] == "alive" and rejoined["incarnation"] > before[node.name]["incarnation"]


def test_with_leave_on_stop_false_a_sigterm_is_a_stop_the_others_see_as_down(seeded: list[Daemon]) -> None:
    """leave_on_stop = false (rolling restarts under placement): SIGTERM stops the daemon without a
    leave; the others mark it down through the failure detector, never left, and it comes back."""
    a, b, c = seeded
    c.top["leave_on_stop"] = False
    try:
        assert c.terminate() == 0, c.log_tail()  # this stop still leaves: the old config
        c.start()
        c.wait_healthy()
        wait_mesh(seeded)
        before = {node.name: members(node)["c"] for node in (a, b)}
        assert c.terminate() == 0, c.log_tail()
        wait_until(
            lambda: all(members(node)["c"]["state"] == "down" for node in (a, b)),
            CONVERGE_TIMEOUT_S,
            lambda: "a and b see c down:\n" + views([a, b]),
            poll_s=0.05,
        )
        for node in (a, b):
            seen = members(node)["c"]
            assert seen["downs"] > before[node.name]["downs"], f"{node.name}: c went down by the detector"
        c.start()
        c.wait_healthy()
        wait_mesh(seeded)
    finally:
        c.top.pop("leave_on_stop", None)


# ------------------------------------------------------------------------------------------ datacenters


def test_two_datacenters_relay_between_non_relays_and_fail_over_when_a_relay_is_killed(
    pool: DaemonPool,
) -> None:
    e1, e2 = (pool.new(name, dc="east") for name in ("e1", "e2"))
    w1, w2 = (pool.new(name, dc="west") for name in ("w1", "w2"))
    nodes = [e1, e2, w1, w2]
    for daemon in (e2, w1, w2):
        daemon.peers = [e1.listen]
    start_all(nodes)
    try:
        wait_mesh(nodes)

        def relays() -> dict[str, list[str]]:
            """Each datacenter's relays by their own status."""
            found: dict[str, list[str]] = {"east": [], "west": []}
            for daemon in nodes:
                if daemon.running and daemon.status()["relay"]:
                    found[daemon.dc].append(daemon.name)
            return found

        wait_until(
            lambda: all(len(names) == 1 for names in relays().values()),
            CONVERGE_TIMEOUT_S,
            lambda: "one relay per datacenter:\n" + views(nodes),
        )
        chosen = relays()
        east_relay, east_other = (e1, e2) if chosen["east"] == ["e1"] else (e2, e1)
        west_relay, west_other = (w1, w2) if chosen["west"] == ["w1"] else (w2, w1)
        # Every node agrees on who the relays are.
        for daemon in nodes:
            by_dc = {dc["dc"]: dc["relays"] for dc in daemon.status()["datacenters"]}
            assert by_dc == {"east": [east_relay.name], "west": [west_relay.name]}, views(nodes)
        # Only the relay subscribes across the WAN; a non-relay gets the other datacenter through it.
        assert any(p["subscribed"] == "wan" for p in west_relay.status()["peers"])
        assert not any(p["subscribed"] == "wan" for p in west_other.status()["peers"])

        # Hellos start an anti-entropy round at once, so under load a first write can reach the east
        # that way before the relay's WAN subscription is connected: write again (a few times at
        # most) until one goes through the relay.
        for attempt in range(1, 6):
            west_other.put("dc/doc", "from-west", attempt)
            wait_value(east_other, "dc/doc", "from-west", attempt, nodes)
            if east_relay.status()["counters"].get("deltas_relayed_out", 0) >= 1:
                break
        east_other.put("dc/doc", "from-east", 2)
        wait_value(west_other, "dc/doc", "from-east", 2, nodes)
        assert east_relay.status()["counters"].get("deltas_relayed_out", 0) >= 1
        assert east_other.status()["counters"].get("deltas_relayed_in", 0) >= 1
        samples = metric_samples(east_relay)
        assert samples[("crdtsync_relay", ())] == 1.0
        assert samples[("crdtsync_dc_bytes_received_total", (("dc", "west"),))] > 0
        assert samples[("crdtsync_dc_members_alive", (("dc", "west"),))] == 2
        assert samples[("crdtsync_dc_behind_updates", (("dc", "west"),))] >= 0
        assert samples[("crdtsync_dc_lag_seconds", (("dc", "west"),))] >= 0
        assert samples[("crdtsync_updates_relayed_total", (("direction", "out"),))] >= 1
        assert samples[("crdtsync_member_relay", (("dc", "west"), ("member", west_relay.name)))] == 1.0
        result = CliRunner().invoke(main, ["status", "--url", east_other.url], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        lines = result.stdout.splitlines()
        assert lines[0].startswith(f"node {east_other.name} (dc east), ") and lines[0].endswith("not a relay")
        dcs = lines[lines.index(next(line for line in lines if line.startswith("DC "))) + 1 :]
        assert [row.split()[:4] for row in dcs] == [
            ["east", "2", "2", east_relay.name],
            ["west", "2", "2", west_relay.name],
        ]

        killed_at = time.monotonic()
        east_relay.kill()
        wait_until(
            lambda: east_other.status()["relay"],
            CONVERGE_TIMEOUT_S,
            lambda: f"{east_other.name} becomes the east relay:\n" + views(nodes),
        )
        print(
            f"relay failover: {east_other.name} relays {time.monotonic() - killed_at:.2f} s after the SIGKILL"
        )
        for i in range(3):
            west_other.put("dc/failover", f"k{i}", i)
            west_relay.put("dc/failover", f"r{i}", i)
        assert any(p["subscribed"] == "wan" for p in east_other.status()["peers"]), views(nodes)
        for i in range(3):
            wait_value(east_other, "dc/failover", f"k{i}", i, nodes)
            wait_value(east_other, "dc/failover", f"r{i}", i, nodes)
    finally:
        for daemon in nodes:
            daemon.kill()
