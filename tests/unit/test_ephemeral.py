"""Ephemeral messages (awareness across nodes): crdtsync/core/ephemeral.py, driven by the simulator
on two datacenters of three nodes (no faults: the rate and size bounds are what is tested)."""

from __future__ import annotations

from crdtsync.core import wire
from crdtsync.core.ephemeral import PUBLISH_PER_SECOND_MAX, EphemeralChannel
from crdtsync.core.replica import Replica
from crdtsync.sim import SimCluster, SimConfig
from crdtsync.sim.node import SimNode

SEED = 7
DOC = "notes/today"
PAYLOAD = b'\x01\x2a\x03\x10{"user":"alice"}'


def _cluster() -> SimCluster:
    print(f"seed {SEED}")
    cluster = SimCluster(SimConfig(seed=SEED, nodes=6, datacenters=2, ops=0, faults=frozenset()))
    cluster.start_nodes()
    cluster.advance(5_000)  # hellos, gossip and relays settle
    return cluster


def _replica(node: SimNode) -> Replica:
    assert node.replica is not None
    return node.replica


def test_a_message_reaches_the_listening_nodes_of_both_datacenters_once_through_the_relays() -> None:
    cluster = _cluster()
    wan_kinds: list[int] = []
    transmit = cluster.network.transmit

    def recording(source: SimNode, target: SimNode, frame: bytes, now_ms: float) -> None:
        if source.dc != target.dc:
            wan_kinds.append(frame[3])
        transmit(source, target, frame, now_ms)

    cluster.network.transmit = recording  # type: ignore[method-assign]
    origin, *others = cluster.nodes
    listening = [node for node in others if node.index != 4]  # n4 (dc1) has no clients of the doc
    for node in [origin, *listening]:
        assert _replica(node).listen_ephemeral(DOC, True)
    assert _replica(origin).publish_ephemeral(DOC, PAYLOAD, cluster.now_ms)
    cluster.advance(cluster.now_ms + 1_000)

    for node in listening:
        delivered = [(e.doc_id, e.payload, e.origin) for e in node.ephemeral_delivered]
        # Both relays of a datacenter may forward a message; nodes of dc1 hear it from their relay.
        assert delivered and set(delivered) == {(DOC, PAYLOAD, "n0")}, f"n{node.index}: {delivered}"
    assert not origin.ephemeral_delivered, "a node never gets its own message back"
    assert not cluster.nodes[4].ephemeral_delivered
    assert _replica(cluster.nodes[4]).counters.ephemeral_not_listened >= 1
    # Once across the WAN (to the other datacenter's relay), never stored.
    assert wan_kinds.count(wire.MessageKind.EPHEMERAL) == 1, wan_kinds
    assert sum(_replica(node).counters.ephemeral_relayed for node in cluster.nodes) == 1
    assert not any(_replica(node).has_doc(DOC) for node in cluster.nodes)


def test_a_node_stops_getting_messages_of_a_doc_it_no_longer_listens_to() -> None:
    cluster = _cluster()
    origin, other = cluster.nodes[0], cluster.nodes[1]
    assert _replica(other).listen_ephemeral(DOC, True)
    assert _replica(other).listen_ephemeral(DOC, False)
    assert _replica(origin).publish_ephemeral(DOC, PAYLOAD, cluster.now_ms)
    cluster.advance(cluster.now_ms + 1_000)
    assert not other.ephemeral_delivered
    assert _replica(other).counters.ephemeral_not_listened == 1


def test_messages_over_the_size_or_the_rate_bound_are_not_published_and_counted() -> None:
    cluster = _cluster()
    replica = _replica(cluster.nodes[0])
    assert not replica.publish_ephemeral(DOC, b"x" * (wire.EPHEMERAL_BYTES_MAX + 1), cluster.now_ms)
    assert replica.counters.ephemeral_dropped_too_large == 1
    # A burst of as many as a second's rate goes out; the next one within the same instant does not.
    now_ms = cluster.now_ms
    sent = sum(
        replica.publish_ephemeral(DOC, PAYLOAD, now_ms) for _ in range(int(PUBLISH_PER_SECOND_MAX) + 5)
    )
    assert sent == PUBLISH_PER_SECOND_MAX
    assert replica.counters.ephemeral_dropped_rate == 5
    assert replica.counters.ephemeral_published == PUBLISH_PER_SECOND_MAX
    # Tokens come back with time: 5 more in the time the rate gives 5.
    later_ms = now_ms + 5 * 1000.0 / PUBLISH_PER_SECOND_MAX
    assert sum(replica.publish_ephemeral(DOC, PAYLOAD, later_ms) for _ in range(10)) == 5


def test_the_listened_docs_are_bounded() -> None:
    replica = Replica(node_id="n", epoch=1, client_id=5, address="tcp://n:1", publish_endpoint="tcp://n:2")
    channel = EphemeralChannel(replica._ctx, replica._links, replica.membership, listened_max=2)
    assert channel.listen("a", True) and channel.listen("b", True) and channel.listen("a", True)
    assert not channel.listen("c", True)
    assert replica.counters.ephemeral_listen_refused == 1
    assert channel.listen("a", False) and channel.listen("c", True)
