"""The member table, the phi-accrual detector and relay choice, without a network."""

from __future__ import annotations

import math
import random

import pytest

from crdtsync.core.membership import (
    LivenessChange,
    Membership,
    MembershipConfig,
    PhiDetector,
    rendezvous_score,
)
from crdtsync.core.wire import MemberEntry

CONFIG = MembershipConfig()


def _record(
    node_id: str, *, dc: str = "dc1", incarnation: int = 1, heartbeat: int = 0, left: bool = False
) -> MemberEntry:
    return MemberEntry(node_id, dc, f"tcp://{node_id}:1", f"tcp://{node_id}:2", incarnation, heartbeat, left)


def _table(config: MembershipConfig = CONFIG) -> Membership:
    return Membership(_record("self"), config, expected_interval_ms=1000.0)


def test_phi_grows_with_silence_and_stays_low_for_the_usual_interval() -> None:
    detector = PhiDetector(100, 1000.0, 0.0, 2_500.0)
    for beat in range(1, 30):
        detector.heard(beat * 1000.0)
    last = 29 * 1000.0
    values = [detector.phi(last + silence, CONFIG) for silence in (500.0, 1000.0, 2500.0, 3500.0, 5000.0)]
    assert values == sorted(values)
    assert values[1] < 1.0, "one usual interval of silence is not suspicious"
    assert values[-1] > CONFIG.phi_suspect, "five intervals of silence are"


def test_phi_after_dense_traffic_tolerates_the_acceptable_pause() -> None:
    detector = PhiDetector(100, 1000.0, 0.0, 2_500.0)
    for arrival in range(1, 100):
        detector.heard(arrival * 2.0)  # a busy peer: a frame every 2 ms
    assert detector.phi(198.0 + CONFIG.acceptable_pause_ms, CONFIG) < 1.0
    assert detector.phi(198.0 + CONFIG.acceptable_pause_ms + 2_000.0, CONFIG) > CONFIG.phi_suspect


def test_phi_is_finite_far_from_the_mean() -> None:
    detector = PhiDetector(10, 1000.0, 0.0, 2_500.0)
    assert detector.phi(0.0, CONFIG) == 0.0
    assert 0 < detector.phi(1e9, CONFIG) <= 300.0


def test_silent_member_goes_suspect_then_down_and_evidence_brings_it_back() -> None:
    table = _table()
    table.merge(_record("a"), 0.0)
    assert table.evaluate(1_000.0) == []
    changes: list[LivenessChange] = []
    now = 0.0
    while not changes:
        now += 100.0
        changes = table.evaluate(now)
        assert now < 20_000.0
    assert [(c.node_id, c.before, c.after) for c in changes] == [("a", "alive", "suspect")]
    assert table.evaluate(now + CONFIG.down_after_suspect_ms - 100.0) == []
    (down,) = table.evaluate(now + CONFIG.down_after_suspect_ms)
    assert (down.before, down.after) == ("suspect", "down")
    back = table.heard("a", now + 10_000.0)
    assert back is not None and (back.before, back.after) == ("down", "alive")
    member = table.members["a"]
    assert (member.suspicions, member.downs) == (1, 1)


def test_records_merge_by_incarnation_then_leave_then_heartbeat() -> None:
    table = _table()
    assert table.merge(_record("a", heartbeat=5), 0.0) == (True, True)
    assert table.merge(_record("a", heartbeat=4), 1.0) == (False, False), "older heartbeat ignored"
    assert table.merge(_record("a", heartbeat=6), 2.0) == (True, True), "newer heartbeat is evidence"
    assert table.merge(_record("a", heartbeat=7, left=True), 3.0) == (True, False)
    assert table.members["a"].liveness == "left"
    assert table.merge(_record("a", heartbeat=99), 4.0) == (False, False), "a leave beats its incarnation"
    assert table.merge(_record("a", incarnation=2), 5.0) == (True, True), "a restart rejoins"
    rejoined: str = table.members["a"].liveness
    assert rejoined == "alive"


def test_nobody_else_speaks_for_this_node() -> None:
    table = _table()
    assert table.merge(_record("self", incarnation=99, left=True), 0.0) == (False, False)
    assert "self" not in table.members and not table.own.left


def test_the_table_is_bounded() -> None:
    table = _table(MembershipConfig(members_max=3))
    for index in range(10):
        table.merge(_record(f"m{index}"), 0.0)
    assert len(table.members) == 3
    assert table.rejected_full == 7


def test_members_that_left_are_forgotten_after_a_while() -> None:
    table = _table(MembershipConfig(forget_left_ms=1_000.0))
    table.merge(_record("a", left=True), 0.0)
    table.evaluate(999.0)
    assert "a" in table.members
    table.evaluate(1_000.0)
    assert "a" not in table.members


def test_relays_are_the_top_rendezvous_scores_among_members_not_down() -> None:
    table = _table(MembershipConfig(relays_per_dc=2))
    for name in ("a", "b", "c", "d"):
        table.merge(_record(name, dc="east"), 0.0, direct=True)
    expected = sorted("abcd", key=lambda name: rendezvous_score("east", name), reverse=True)
    assert table.relays("east") == expected[:2]
    table.members[expected[0]].liveness = "down"
    assert table.relays("east") == expected[1:3], "a down relay is replaced by the next one"
    table.members[expected[1]].liveness = "suspect"
    assert table.relays("east") == expected[1:4], (
        "a suspect relay keeps its role, and its successor stands in"
    )
    table.members[expected[3]].liveness = "suspect"
    assert table.relays("east") == expected[1:4], "with nobody alive left to stand in, the suspects stay"
    table.members[expected[1]].liveness = "alive"
    assert table.relays("east") == expected[1:3], "the stand-in steps down when the relay is alive again"
    assert table.relays("nowhere") == []


def test_own_node_counts_for_its_own_datacenter() -> None:
    table = _table()
    assert table.relays("dc1") == ["self"] and table.is_relay()
    table.merge(_record("a"), 0.0, direct=True)
    assert table.is_relay() == (rendezvous_score("dc1", "self") > rendezvous_score("dc1", "a"))
    table.leave()
    assert not table.is_relay() and table.own.left


def test_newer_than_tells_whether_the_peer_needs_an_answer() -> None:
    table = _table()
    table.merge(_record("a", heartbeat=3), 0.0)
    table.merge(_record("far", dc="dc2", heartbeat=3), 0.0)
    theirs = [table.own, _record("a", heartbeat=3), _record("far", dc="dc2", heartbeat=3)]
    assert table.newer_than(theirs, "dc1") is False
    assert table.newer_than(theirs[:2], "dc1") is True, "a member they lack"
    assert table.newer_than([table.own, _record("a", incarnation=0), theirs[2]], "dc1") is True
    # Heartbeats of members in the peer's own datacenter: it hears those itself.
    assert table.newer_than([table.own, _record("a", heartbeat=2), theirs[2]], "dc1") is False
    assert table.newer_than([table.own, _record("a", heartbeat=2), theirs[2]], "dc2") is True
    assert table.newer_than([*theirs[:2], _record("far", dc="dc2", heartbeat=2)], "dc1") is True
    table.beat()
    assert table.newer_than(theirs, "dc1") is False and table.newer_than(theirs, "dc2") is True


def test_only_a_table_with_another_datacenter_spans_datacenters() -> None:
    table = _table()
    table.merge(_record("a"), 0.0)
    assert not table.spans_datacenters()
    table.merge(_record("far", dc="dc2"), 0.0)
    assert table.spans_datacenters()


@pytest.mark.parametrize("relays_per_dc", [1, 2, 3])
def test_every_node_computes_the_same_relays_from_the_same_view(relays_per_dc: int) -> None:
    config = MembershipConfig(relays_per_dc=relays_per_dc)
    names = [f"n{index}" for index in range(5)]
    views = []
    for own in names:
        table = Membership(_record(own), config, expected_interval_ms=1000.0)
        for other in names:
            table.merge(_record(other), 0.0, direct=True)
        views.append(table.relays("dc1"))
    assert all(view == views[0] for view in views) and len(views[0]) == relays_per_dc


def test_gossip_cannot_rewrite_what_a_member_said_of_itself() -> None:
    table = _table()
    table.merge(_record("a", heartbeat=1), 0.0, direct=True)
    forged = [
        _record("a", dc="elsewhere", heartbeat=9),
        _record("a", incarnation=99),
        _record("a", heartbeat=9, left=True),
        MemberEntry("a", "dc1", "tcp://evil:1", "tcp://a:2", 1, 9, False),
    ]
    for record in forged:
        assert table.merge(record, 1.0) == (False, False), record
    assert table.rejected_indirect == len(forged)
    assert table.members["a"].record == _record("a", heartbeat=1)
    assert table.merge(_record("a", heartbeat=5), 2.0) == (True, True), "gossip may add heartbeats"
    assert table.merge(_record("a", heartbeat=6, left=True), 3.0, direct=True) == (True, False)
    assert table.members["a"].liveness == "left", "the member itself may leave"


def test_what_a_member_says_of_itself_replaces_older_gossip() -> None:
    table = _table()
    table.merge(_record("a", dc="elsewhere", incarnation=99, left=True), 0.0)
    assert table.members["a"].liveness == "left"
    assert table.merge(_record("a", incarnation=3), 1.0, direct=True) == (True, True)
    member = table.members["a"]
    assert (member.record.dc, member.record.incarnation, member.liveness) == ("dc1", 3, "alive")


def test_a_member_known_only_from_gossip_is_never_relay_of_this_datacenter() -> None:
    table = _table()
    made_up = max((f"ghost{index}" for index in range(50)), key=lambda name: rendezvous_score("dc1", name))
    table.merge(_record(made_up), 0.0)
    assert made_up not in table.relays("dc1") and table.is_relay()


def test_a_pause_of_the_member_does_not_slow_its_detection_afterwards() -> None:
    detector = PhiDetector(200, 1000.0, 0.0, 2_500.0)
    now = 0.0
    for _ in range(50):
        now += 1000.0
        detector.heard(now)
    before = detector.suspect_at_ms(CONFIG) - now
    now += 60_000.0  # stopped for a minute, then heard again
    detector.heard(now)
    for _ in range(5):
        now += 1000.0
        detector.heard(now)
    after = detector.suspect_at_ms(CONFIG) - now
    assert after < before * 1.5, (before, after)


def test_gossip_counts_again_once_a_direct_member_looks_failed() -> None:
    table = _table()
    table.merge(_record("a", heartbeat=1), 0.0, direct=True)
    table.members["a"].liveness = "down"
    assert table.merge(_record("a", heartbeat=2, left=True), 1.0) == (True, False)
    after: str = table.members["a"].liveness
    assert after == "left"


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
def test_the_due_time_heap_names_the_same_moment_as_a_scan_of_every_member(seed: int) -> None:
    """`next_change_ms` keeps a heap instead of scanning the table per pump: after any mix of joins,
    evidence, leaves, restarts, own pauses and evaluations, it must name the moment a full scan does,
    and `evaluate` must change exactly the members a full scan finds due."""
    print(f"seed={seed}")
    rng = random.Random(seed)
    config = MembershipConfig(down_after_suspect_ms=500.0, forget_left_ms=3_000.0)
    table = _table(config)
    now = 0.0
    for _step in range(3_000):
        now += rng.expovariate(1 / 40.0)
        node_id = f"n{rng.randrange(40)}"
        action = rng.random()
        if action < 0.15:
            incarnation = rng.randrange(1, 4)
            table.merge(_record(node_id, incarnation=incarnation, left=rng.random() < 0.2), now, direct=True)
        elif action < 0.75:
            table.heard(node_id, now)
        elif action < 0.77:
            table.forgive_silence(now)
        scanned = min((table._member_due_ms(member) for member in table.members.values()), default=math.inf)
        assert table.next_change_ms() == scanned, f"seed={seed} at {now}"
        if action >= 0.77:
            due = {
                node_id
                for node_id, member in table.members.items()
                if now >= table._member_due_ms(member) and member.liveness != "down"
            }
            changed = {change.node_id for change in table.evaluate(now)}
            forgotten = {node_id for node_id in due if node_id not in table.members}
            assert changed | forgotten == due, f"seed={seed} at {now}"
    assert len(table._due_heap) <= 2 * len(table._due_ms) + 64
