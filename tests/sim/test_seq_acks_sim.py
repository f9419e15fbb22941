"""Sequence acknowledgements under every fault in the simulator (two datacenters, durable stores,
crashes): every SEQ_ACK a node sends names only deltas its committed store holds, checked on each ack
as it leaves (after the commit); relays acknowledge the other datacenter's publishers from their
streams, and the other nodes of a datacenter from the numbers their relay's republished frames name.
Each run prints its verdict line (seed and replay command). CRDTSYNC_SIM_SEEDS=A..B runs another range."""

from __future__ import annotations

import os
from typing import Any

from pycrdt import Doc

from crdtsync.core import wire
from crdtsync.core.placement import PlacementPolicy, PlacementRule
from crdtsync.core.replica import Replica, ReplicaConfig
from crdtsync.core.state import StateVector, covers, decode_state_vector, merge_into
from crdtsync.core.update_check import causal_range
from crdtsync.sim import FAULTS, SimCluster, SimConfig, SimTracer

ALWAYS = ReplicaConfig(seq_ack_wanted_ms=0.0)
"""Every node acknowledges every publisher (the simulator's writes never wait, so no question would
start the acks): every ack the runs produce is checked."""


def _seeds(first: int, last: int) -> range:
    text = os.environ.get("CRDTSYNC_SIM_SEEDS")
    if text:
        first, last = (int(part) for part in text.split(".."))
    return range(first, last + 1)


class _AckChecker(SimTracer):
    """On every SEQ_ACK handed to the network that the publisher would trust (the same member view),
    the acknowledging node's committed store covers each acknowledged delta the publisher's ring
    still has of a doc the publisher sees it hold (grouped by doc: one store read per doc): the
    delta's items and what they depend on (`causal_range`: with them every earlier write of the
    same client), which is what an acknowledgement promises. Not the publisher's whole state vector
    after the delta: since wire version 3 a receiver applies a delta without the other writers'
    items its publisher happened to hold."""

    def __init__(self) -> None:
        self.cluster: SimCluster | None = None
        self.acks = 0
        self.deltas_checked = 0
        self.wan_acks = 0
        self.relayed_acks = 0
        self.relayed_frames = 0
        self.ack_frames = 0
        """Every SEQ_ACK handed to the network, checked or not."""
        self.relayed_named = 0
        """Relayed frames (version 2) handed to the network, and those naming the origin's numbers."""
        """Acks of numbers the node received relayed (from its `RelayedTrack`, not the stream)."""
        self.other_views = 0
        self.problems: list[str] = []

    def on_frame(self, source: int, target: int, frame: bytes, wan: bool) -> None:
        if frame[3] == wire.MessageKind.RELAYED and frame[2] >= 2:
            self.relayed_frames += 1
            self.relayed_named += wire.read_header(frame).seq != 0
        if frame[3] != wire.MessageKind.SEQ_ACK or self.cluster is None:
            return
        self.ack_frames += 1
        ack = wire.decode(frame)
        assert isinstance(ack, wire.SeqAck)
        publisher = self.cluster.nodes[target].replica
        acker = self.cluster.nodes[source]
        if publisher is None or publisher.epoch != ack.epoch or acker.replica is None:
            return
        if ack.view != publisher.seq_acks.view_digest:
            self.other_views += 1
            return
        self.acks += 1
        self.wan_acks += wan
        relayed = acker.replica.seq_acks.relayed.get(publisher.node_id)
        direct = acker.replica._inbound.tracks.get(publisher.node_id)
        if relayed is not None and (relayed.epoch, relayed.contiguous) == (ack.epoch, ack.through_seq):
            self.relayed_acks += direct is None or (direct.epoch, direct.contiguous) != (
                ack.epoch,
                ack.through_seq,
            )
        wanted: dict[str, list[bytes]] = {}
        for seq, delta in publisher._outbound.ring:
            if ack.from_seq <= seq <= ack.through_seq and _holds(
                publisher, delta.doc_id, acker.replica.node_id
            ):
                wanted.setdefault(delta.doc_id, []).append(delta.update)
        store = acker.store
        for doc_id, updates in wanted.items():
            self.deltas_checked += len(updates)
            stored = store.load_doc(doc_id)
            doc: Doc[Any] = Doc()
            if stored is not None:
                doc.apply_update(stored)
            held = decode_state_vector(doc.get_state())
            need: StateVector = {}
            for update in updates:
                merge_into(need, causal_range(update)[1])
            if not covers(held, need):
                self.problems.append(
                    f"n{source} acked {ack.from_seq}..{ack.through_seq} of n{target} at "
                    f"{self.cluster.now_ms:.0f} ms without {doc_id!r} in its store"
                )


def _holds(publisher: Replica, doc_id: str, node_id: str) -> bool:
    """Whether the publisher's member view makes `node_id` a holder of the doc (what write_acks counts)."""
    placed = publisher.doc_placement(doc_id)
    if not placed.enforced:
        return True
    return any(r.node_id == node_id for dc in placed.replicas.values() for r in dc)


def _run(config: SimConfig) -> _AckChecker:
    checker = _AckChecker()
    cluster = SimCluster(config, tracer=checker)
    checker.cluster = cluster
    result = cluster.run()
    print(result.verdict())
    print(
        f"  {checker.acks} acks checked ({checker.wan_acks} across the WAN, {checker.relayed_acks} of "
        f"relayed deltas), {checker.deltas_checked} deltas; {checker.relayed_named} of "
        f"{checker.relayed_frames} relayed frames named their numbers"
        f"; {checker.other_views} acks of another view (not trusted)"
    )
    assert result.ok, result.verdict()
    assert not checker.problems, checker.problems[:5]
    return checker


def test_every_ack_names_only_what_the_acknowledging_store_holds_under_every_fault() -> None:
    for seed in _seeds(40, 42):
        config = SimConfig(
            seed=seed,
            nodes=5,
            docs=6,
            ops=300,
            faults=frozenset(FAULTS),
            datacenters=2,
            durable=True,
            replica=ALWAYS,
        )
        checker = _run(config)
        assert checker.acks > 0 and checker.wan_acks > 0 and checker.relayed_acks > 0
        assert checker.relayed_named > 0


def test_a_cluster_whose_writes_never_wait_sends_no_ack_and_names_no_relayed_numbers() -> None:
    """The default `seq_ack_wanted_ms`, and no write asks a write-ack question: the acks and the
    numbers relayed frames would name cost nothing."""
    for seed in _seeds(43, 43):
        config = SimConfig(
            seed=seed, nodes=5, docs=6, ops=300, faults=frozenset(FAULTS), datacenters=2, durable=True
        )
        checker = _run(config)
        assert checker.relayed_frames > 0
        assert (checker.ack_frames, checker.relayed_named) == (0, 0)


def test_under_placement_an_ack_trusted_for_a_doc_comes_from_a_holder_that_stored_it() -> None:
    """rf 2 of 6 nodes in 2 datacenters, partition topics, joins and leaves (churn) and crashes: an ack
    counts numbers of buckets the node does not take; the writer trusts it only under its own
    member view and for the docs that view makes the node hold, and those it must have stored."""
    for seed in _seeds(60, 60):
        config = SimConfig(
            seed=seed,
            nodes=6,
            docs=30,
            ops=300,
            faults=frozenset(FAULTS),
            datacenters=2,
            durable=True,
            placement=PlacementPolicy((PlacementRule(2),)),
            replica=ReplicaConfig(handoff_grace_ms=2_000.0, seq_ack_wanted_ms=0.0),
        )
        checker = _run(config)
        assert checker.acks > 0
