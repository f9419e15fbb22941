"""Placement enforced in the simulator: only holders keep a doc, writes on any node reach the holders
(handoff), and joins, leaves and crashes move docs without losing an acknowledged or surviving write.
Each run prints its verdict line (seed and replay command). CRDTSYNC_SIM_SEEDS=A..B runs another range."""

from __future__ import annotations

from typing import Any

from placement_support import check as _check
from placement_support import seeds as _seeds
from placement_support import sim_config as _config
from pycrdt import Doc, Map

from crdtsync.core import wire
from crdtsync.core.effects import Send
from crdtsync.core.placement import PlacementPolicy, PlacementRule
from crdtsync.core.replica import ReplicaConfig
from crdtsync.sim import FAULTS, SimCluster, SimConfig, run_simulation


def test_rf2_on_five_nodes_converges_under_every_fault() -> None:
    for seed in _seeds(1, 8):
        _check(run_simulation(_config(seed)))


def test_rf2_with_a_durable_store_keeps_every_acknowledged_write() -> None:
    for seed in _seeds(100, 103):
        _check(run_simulation(_config(seed, durable=True)))


def test_rf_per_datacenter_converges_across_two_datacenters() -> None:
    policy = PlacementPolicy((PlacementRule({"dc0": 2, "dc1": 1}, "pinned/"), PlacementRule(2)))
    for seed in _seeds(300, 302):
        _check(run_simulation(_config(seed, nodes=6, datacenters=2, placement=policy)))


def test_an_update_pycrdt_leaves_pending_is_repaired_by_anti_entropy() -> None:
    """Seed 3057: a sync answer applied on a restarted node left part of it pending in pycrdt while the
    transaction's after-state counted it; anti-entropy kept comparing against that claimed state and
    never sent the missing structs. The recorded state is now the doc's own, and the run converges."""
    result = run_simulation(_config(3057, nodes=6, datacenters=2, faults=frozenset(FAULTS)))
    _check(result)


def test_only_holders_keep_docs_and_non_replica_writes_are_handed_off() -> None:
    cluster = SimCluster(_config(7, faults=frozenset()))
    result = cluster.run()
    _check(result)
    held_per_node = []
    for node in cluster.nodes:
        replica = node.replica
        assert replica is not None
        ids = [doc_id for doc_id in replica.doc_ids() if not replica.doc_is_empty(doc_id)]
        assert all(replica.holds(doc_id) for doc_id in ids), f"n{node.index} keeps a doc it does not hold"
        held_per_node.append(len(ids))
    print(f"docs per node {held_per_node} of 30 written, rf 2 on 5 nodes")
    # rf 2 of 5: each node holds about 2/5 of the docs, and every doc is on exactly 2 nodes.
    assert sum(held_per_node) == 2 * 30
    assert max(held_per_node) < 30
    counters = [node.replica.counters for node in cluster.nodes if node.replica is not None]
    assert sum(c.handoff_docs_dropped for c in counters) > 0, "writes on non-replicas were handed off"
    # Without faults a non-holder gets content of a doc it does not hold only by chance of timing
    # (seed 7 did, until the hello's second copy of issue 17 moved the run): push it one.
    replica = cluster.nodes[0].replica
    assert replica is not None
    not_held = next(f"doc-{i}" for i in range(1000) if not replica.holds(f"doc-{i}"))
    writer: Doc[Any] = Doc()
    writer.get("data", type=Map)["k"] = 1
    sender = cluster.nodes[1].replica
    assert sender is not None
    push = wire.SyncPush(sender.node_id, ((not_held, writer.get_update()),))
    before = replica.counters.updates_not_held
    replica.receive(wire.encode(push), cluster.now_ms + 1.0)
    assert replica.counters.updates_not_held == before + 1, "a non-holder drops the content it gets"
    assert not replica.has_doc(not_held)


def test_docs_held_open_on_non_holders_follow_their_holders_under_every_fault() -> None:
    """Follow sessions (`Node.open` of a doc the node does not hold: pinned, fetched, followed while
    open) under every fault: a session still open at the end holds exactly what the doc's holders
    hold, and a released one is gone from its node like any doc it does not hold."""
    still_open = 0
    for seed in _seeds(31, 33):
        result = run_simulation(_config(seed, follows=12))
        _check(result)
        assert result.follow_sessions > 0
        still_open += result.follows_open_at_end
    assert still_open > 0, "some sessions were compared with their holders at the end"


def test_deltas_reach_only_the_subscribers_of_their_holder_sets() -> None:
    """rf 2 of 5: publishers send each delta on its holder set's topic, each frame listing the
    numbers that went to other sets since its previous one, so a node receives the deltas of the
    docs it holds, counts the others as received from those lists and the index before a heartbeat
    (no retransmission is asked for without loss), and receives fewer bytes than when every node
    holds every doc, on the same workload. The deltas themselves fall with the holders (about 2/5 of
    them reach a node); the bytes fall less: a write taken by a node that does not hold the doc costs
    a handoff probe and its answer, and each number of another set about 3 bytes. Measured on this
    run: 0.69x in wire version 2, 0.92x in version 3, whose deltas carry no state vectors (81 KB
    received in all with every node holding every doc, against 122 KB in version 2): what placement
    saves on deltas is then small beside what it costs in probes and listed numbers."""
    config = _config(11, faults=frozenset())
    partitioned = SimCluster(config)
    _check(partitioned.run())
    everywhere = SimCluster(
        _config(11, faults=frozenset(), placement=PlacementPolicy((PlacementRule("all"),)))
    )
    _check(everywhere.run())
    replicas = [r for r in (node.replica for node in partitioned.nodes) if r is not None]
    replicas_all = [r for r in (node.replica for node in everywhere.nodes) if r is not None]
    assert all(r.counters.seqs_not_subscribed > 0 for r in replicas)
    assert all(r.counters.retransmit_requests == 0 for r in replicas)
    applied = sum(r.counters.deltas_applied for r in replicas)
    applied_all = sum(r.counters.deltas_applied for r in replicas_all)
    received = [r.counters.bytes_received for r in replicas]
    received_all = [r.counters.bytes_received for r in replicas_all]
    print(
        f"deltas applied, rf 2 of 5: {applied}, every node holding every doc: {applied_all}; bytes received"
        f" per node: {received} and {received_all}"
    )
    assert applied < 0.6 * applied_all
    assert sum(received) < 0.95 * sum(received_all)


def test_relays_republish_by_bucket_into_their_datacenter() -> None:
    """Two datacenters of 3, rf 2: the nodes of each datacenter take only their buckets, of their
    datacenter's publishers and of what the relay republishes."""
    cluster = SimCluster(_config(7, faults=frozenset(), nodes=6, datacenters=2))
    _check(cluster.run())
    replicas = [node.replica for node in cluster.nodes if node.replica is not None]
    relays = {r.dc: r for r in replicas if r.membership.is_relay()}
    assert set(relays) == {"dc0", "dc1"}
    for replica in replicas:
        if replica is relays[replica.dc]:
            continue
        counters = replica.counters
        print(
            f"{replica.node_id}: relayed in {counters.deltas_relayed_in} of {relays[replica.dc].counters.deltas_relayed_out}"
        )
        assert counters.seqs_not_subscribed > 0
        assert counters.deltas_relayed_in < relays[replica.dc].counters.deltas_relayed_out


def test_relays_hold_only_their_share() -> None:
    """Two datacenters of 3, rf 2: a relay holds about 2/3 of the docs like any node, and forwards
    the other datacenter's deltas of the docs it does not hold without keeping them."""
    cluster = SimCluster(_config(7, faults=frozenset(), nodes=6, datacenters=2))
    _check(cluster.run())
    replicas = [node.replica for node in cluster.nodes if node.replica is not None]
    for relay in (r for r in replicas if r.membership.is_relay()):
        written = [doc_id for doc_id in relay.doc_ids() if not relay.doc_is_empty(doc_id)]
        held = [f"doc-{i}" for i in range(30) if relay.holds(f"doc-{i}")]
        print(f"relay {relay.node_id}: holds {len(held)} of 30 docs, has {len(written)}")
        assert 12 <= len(held) <= 27, "about its share (2/3), not every doc"
        assert sorted(written) == sorted(held)
        assert relay.counters.deltas_relayed_out > 0
        assert relay.counters.updates_not_held > 0, "deltas of docs it does not hold were forwarded only"


def _rounds_across(cluster: SimCluster) -> dict[tuple[str, str], int]:
    """(node, remote node) -> anti-entropy rounds the node completed against it, for every node."""
    rounds: dict[tuple[str, str], int] = {}
    for node in cluster.nodes:
        replica = node.replica
        assert replica is not None
        for peer in replica.status(cluster.now_ms).peers:
            if peer.node_id is not None and peer.dc not in (None, replica.dc):
                rounds[replica.node_id, peer.node_id] = peer.ae_rounds
    return rounds


def test_under_partial_placement_every_node_compares_with_every_remote_node() -> None:
    """rf 2 of 3 per datacenter: every node links to the other datacenter's nodes (no WAN
    subscription but the relay's) and, in turn, runs rounds against each of them, so every pair
    across the WAN compares the buckets both hold within a few `ae_wan_interval_ms`."""
    cluster = SimCluster(_config(9, faults=frozenset(), nodes=6, datacenters=2, ops=0))
    cluster.start_nodes()
    cluster.advance(4 * ReplicaConfig().ae_wan_interval_ms)
    rounds = _rounds_across(cluster)
    names = {f"n{i}": ("dc0" if i < 3 else "dc1") for i in range(6)}
    pairs = [(a, b) for a in names for b in names if names[a] == "dc0" and names[b] == "dc1"]
    print(f"rounds across the WAN by (node, remote node): {rounds}")
    assert all(rounds.get((a, b), 0) + rounds.get((b, a), 0) > 0 for a, b in pairs), rounds
    assert all(sum(n for (a, _b), n in rounds.items() if a == name) > 0 for name in names), (
        "every node runs them"
    )
    for node in cluster.nodes:
        assert node.replica is not None
        status = node.replica.status(cluster.now_ms)
        subscribed = {p.node_id for p in status.peers if p.subscribed == "wan"}
        assert bool(subscribed) == status.relay, "only the relay subscribes across the WAN"


def test_one_wan_interval_compares_every_held_bucket_with_each_remote_datacenter() -> None:
    """rf 2 of 3 per datacenter: no single remote node holds every bucket a node holds, so one
    interval's rounds go to at least 2 of the other datacenter's 3 nodes (the greedy cover). The
    dc1 nodes have higher ids, so they started no round at first contact: all theirs are periodic."""
    cluster = SimCluster(_config(9, faults=frozenset(), nodes=6, datacenters=2, ops=0))
    cluster.start_nodes()
    cluster.advance(1.3 * ReplicaConfig().ae_wan_interval_ms)  # one interval, its jitter included
    rounds = _rounds_across(cluster)
    for name in ("n3", "n4", "n5"):
        peers = {peer for (node, peer), count in rounds.items() if node == name and count > 0}
        assert len(peers) >= 2, f"{name} compared with {sorted(peers)} only: {rounds}"


def test_when_every_node_holds_every_doc_only_relays_run_rounds_across() -> None:
    """rf 2 with 2 nodes per datacenter: nothing is partitioned, so the topology is as without
    placement: non-relays neither link to the other datacenter nor run rounds there."""
    cluster = SimCluster(_config(9, faults=frozenset(), nodes=4, datacenters=2, ops=0))
    cluster.start_nodes()
    cluster.advance(4 * ReplicaConfig().ae_wan_interval_ms)
    rounds = _rounds_across(cluster)
    relays = {
        n.replica.node_id for n in cluster.nodes if n.replica is not None and n.replica.membership.is_relay()
    }
    assert relays and all(count == 0 for (node, _peer), count in rounds.items() if node not in relays), rounds
    assert any(count > 0 for (node, _peer), count in rounds.items() if node in relays), rounds


def _dc1_relay_and_a_doc_it_does_not_hold(config: SimConfig) -> tuple[int, int, int]:
    """(the dc1 relay's index, a doc index it does not hold, a dc0 node that does not hold it
    either) once the membership of a run of `config` has formed; a run of the same config with
    more events scripted picks the same, since relays and holders follow from the node ids."""
    probe = SimCluster(config)
    probe.start_nodes()
    probe.advance(3_000.0)
    replicas = [node.replica for node in probe.nodes if node.replica is not None]
    relay = next(i for i, r in enumerate(replicas) if r.dc == "dc1" and r.membership.is_relay())
    doc = next(d for d in range(1000) if not replicas[relay].holds(f"doc-{d}"))
    writer = next(i for i, r in enumerate(replicas) if r.dc == "dc0" and not r.holds(f"doc-{doc}"))
    return relay, doc, writer


def test_a_forwarded_delta_waiting_for_its_dependencies_is_pulled_from_its_writer() -> None:
    """The dc1 relay does not hold the doc, so it cannot answer for it: a dc1 holder that received
    the relay's copy of a delta whose dependency it lacks pulls the doc from the writer (dc0)."""
    config = _config(13, faults=frozenset(), nodes=6, datacenters=2, ops=0)
    relay, doc, writer = _dc1_relay_and_a_doc_it_does_not_hold(config)
    cluster = SimCluster(config)
    cluster.start_nodes()
    cluster.advance(3_000.0)
    doc_id = f"doc-{doc}"
    holder = next(
        n.replica
        for n in cluster.nodes
        if n.replica is not None and n.dc == "dc1" and n.index != relay and n.replica.holds(doc_id)
    )
    source: Doc[Any] = Doc()
    data = source.get("data", type=Map)
    data["a"] = 1
    before = source.get_state()
    data["b"] = 2
    delta = wire.Delta(doc_id, before, source.get_state(), source.get_update(before))
    relayed = wire.Relayed(f"n{relay}", f"n{writer}", (delta,))
    now_ms = cluster.now_ms + 1.0
    holder.take_effects(now_ms, force=True)
    holder.receive(wire.encode(relayed), now_ms)
    now_ms += holder.config.causal_wait_ms + 1.0
    holder.tick(now_ms)
    pulls = [
        effect.address
        for effect in holder.take_effects(now_ms, force=True)
        if isinstance(effect, Send) and isinstance(wire.decode(effect.frame), wire.SyncRequest)
    ]
    writer_replica = cluster.nodes[writer].replica
    assert writer_replica is not None
    assert pulls == [writer_replica.address], (
        f"pulled from {pulls}, the writer is at {writer_replica.address}"
    )


def test_a_doc_the_relay_does_not_hold_converges_across_lossy_wan() -> None:
    """A doc written in dc0 (by a node that does not hold it, which hands it over) whose dc1 holders
    do not include the dc1 relay: under 30% WAN loss and 10% loss everywhere, its writes reach both
    dc1 holders (forwarded by the relay, repaired by pulls from the writer and by rounds between
    each holder and the dc0 holders), and the relay never keeps it."""
    for seed in _seeds(500, 502):
        config = _config(seed, nodes=6, datacenters=2, ops=0, faults=frozenset({"loss"}), wan_loss_rate=0.3)
        relay, doc, writer = _dc1_relay_and_a_doc_it_does_not_hold(config)
        cluster = SimCluster(config)
        for op in range(40):
            cluster.schedule_op(3_000.0 + op * 50.0, op, writer, doc)
        result = cluster.run()
        _check(result)
        doc_id = f"doc-{doc}"
        holders = [n.replica for n in cluster.nodes if n.replica is not None and n.replica.holds(doc_id)]
        assert {r.dc for r in holders} == {"dc0", "dc1"} and len(holders) == 4
        relay_replica = cluster.nodes[relay].replica
        assert relay_replica is not None and not relay_replica.has_doc(doc_id)
        assert relay_replica.counters.deltas_relayed_out > 0
        assert len(cluster.writes) >= 20, "the ops wrote (some are deletes)"


def test_a_join_and_a_leave_move_docs_to_their_new_holders() -> None:
    for seed in _seeds(41, 43):
        cluster = SimCluster(_config(seed, faults=frozenset({"loss", "reorder"})))
        cluster.schedule(0.0, "crash", 4)  # n4 joins empty at 4 s
        cluster.schedule(4_000.0, "restart", 4)
        cluster.schedule(3_000.0, "leave", 1)  # n1 leaves for good: its docs move
        _check(cluster.run())
        joined = cluster.nodes[4].replica
        assert joined is not None and any(joined.holds(d) and joined.has_doc(d) for d in joined.doc_ids())


def test_a_node_leaving_hands_over_what_it_took_when_every_other_member_holds_everything() -> None:
    """Seed 3001 (durable, 4 nodes, rf 2): with one node gone and another draining before its leave,
    the two members left were few enough to hold every doc, and the draining node counted itself as
    holding everything too: it stopped handing over a write it took while draining and left with it.
    A draining node holds nothing, whatever the others hold."""
    _check(run_simulation(_config(3001, nodes=4, docs=10, ops=60, durable=True)))


def test_a_round_begun_before_a_view_change_leaves_no_stale_base_for_later_rounds() -> None:
    """Seed 4042 (rf 1, 4 nodes in 2 datacenters): an anti-entropy round begun in one member view
    computed its filtered branch hashes after the view changed and kept them under the new view;
    every later round with that peer caught up from that wrong base, and a doc stayed missing on its
    holder. Hashes are kept only for the view their Filter answers for."""
    rf1 = PlacementPolicy((PlacementRule(1),))
    _check(run_simulation(_config(4042, nodes=4, docs=10, ops=60, datacenters=2, placement=rf1)))
