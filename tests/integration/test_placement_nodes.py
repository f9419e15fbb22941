"""Placement views on real nodes (ZeroMQ on 127.0.0.1): every node computes the same replicas for a doc
from its own member table, and a member that leaves gives its partitions up."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from pycrdt import Map
from zmq_support import free_endpoint, wait_until

from crdtsync import MembershipConfig, Node, NodeConfig, PlacementPolicy, PlacementRule, ReplicaConfig
from crdtsync.core.placement import Candidate, replicas
from crdtsync.holders import WriteAcksTimeoutError
from crdtsync.store.sqlite import SqliteStore

pytestmark = pytest.mark.integration

FAST = ReplicaConfig(heartbeat_interval_ms=100.0, hello_interval_ms=100.0, tick_interval_ms=20.0)
GOSSIP = MembershipConfig(gossip_interval_ms=100.0)
POLICY = PlacementPolicy((PlacementRule({"east": 2, "west": 1}, "checkpoints/"), PlacementRule(1)))
DOC_IDS = [f"checkpoints/run-{i}" for i in range(8)] + [f"flags/f{i}" for i in range(8)]
TIMEOUT_S = 15.0


@contextlib.asynccontextmanager
async def _cluster() -> AsyncIterator[list[Node]]:
    listens = [free_endpoint() for _ in range(4)]
    dcs = ["east", "east", "east", "west"]
    configs = [
        NodeConfig(
            node_id=f"n{i}",
            listen=listen,
            peers=[listens[0]] if i else [],
            replication=FAST,
            membership=GOSSIP,
            dc=dcs[i],
            placement=POLICY,
        )
        for i, listen in enumerate(listens)
    ]
    async with contextlib.AsyncExitStack() as stack:
        yield [await stack.enter_async_context(Node(config)) for config in configs]


def _everyone_known(nodes: list[Node]) -> bool:
    return all(
        sum(member.state == "alive" for member in node.status().members) == len(nodes) - 1 for node in nodes
    )


def _views(nodes: list[Node], doc_id: str) -> list[dict[str, list[str]]]:
    return [
        {dc: [r.node_id for r in placed] for dc, placed in node.placement(doc_id).replicas.items()}
        for node in nodes
    ]


def test_every_node_places_each_doc_alike_and_a_leave_moves_its_share() -> None:
    asyncio.run(_scenario())


async def _scenario() -> None:
    async with _cluster() as nodes:
        await wait_until(lambda: _everyone_known(nodes), TIMEOUT_S, "every node knows every other")
        candidates = [Candidate(node.config.node_id, node.config.dc) for node in nodes]
        for doc_id in DOC_IDS:
            views = _views(nodes, doc_id)
            assert all(view == views[0] for view in views), doc_id
            assert views[0] == replicas(doc_id, POLICY, candidates), doc_id
            counts = {dc: len(ids) for dc, ids in views[0].items()}
            assert counts == (
                {"east": 2, "west": 1} if doc_id.startswith("checkpoints/") else {"east": 1, "west": 1}
            )
        placement = nodes[0].placement(DOC_IDS[0])
        assert placement.partition == POLICY.partition_of(DOC_IDS[0]) and placement.prefix == "checkpoints/"
        assert {r.state for placed in placement.replicas.values() for r in placed} == {"alive"}
        summary = nodes[0].cluster_placement()
        assert sum(summary.partitions_per_node.values()) == POLICY.partitions * 2  # rf 1 in two DCs
        assert summary.partitions_per_node["n3"] == POLICY.partitions  # west's only node
        await nodes[2].close()  # announces its leave
        rest = nodes[:2] + nodes[3:]
        await wait_until(
            lambda: all("n2" not in str(_views(rest, d)) for d in DOC_IDS), TIMEOUT_S, "n2's leave is known"
        )
        remaining = [c for c in candidates if c.node_id != "n2"]
        for doc_id in DOC_IDS:
            assert _views(rest, doc_id) == [replicas(doc_id, POLICY, remaining)] * len(rest)


RF2 = PlacementPolicy((PlacementRule(2),))
HANDOFF_FAST = dataclasses.replace(FAST, handoff_interval_ms=100.0, handoff_grace_ms=500.0)


def test_writes_on_every_node_end_on_their_two_holders_only(tmp_path: Path) -> None:
    """rf 2 on 4 nodes with SQLite stores: each node writes docs it may not hold; in the end every doc
    is on exactly its 2 holders (as every node's placement says), and the others dropped it from
    memory and from their store."""
    asyncio.run(_handoff_scenario(tmp_path))


async def _handoff_scenario(tmp_path: Path) -> None:
    listens = [free_endpoint() for _ in range(4)]
    configs = [
        NodeConfig(
            node_id=f"n{i}",
            listen=listen,
            peers=[listens[0]] if i else [],
            replication=HANDOFF_FAST,
            membership=GOSSIP,
            dc="east",
            placement=RF2,
            data_dir=str(tmp_path / f"n{i}"),
        )
        for i, listen in enumerate(listens)
    ]
    doc_ids = [f"runs/{i}" for i in range(12)]
    async with contextlib.AsyncExitStack() as stack:
        nodes = [await stack.enter_async_context(Node(config)) for config in configs]
        await wait_until(lambda: _everyone_known(nodes), TIMEOUT_S, "every node knows every other")
        for index, doc_id in enumerate(doc_ids):
            node = nodes[index % 4]
            doc = await node.open(doc_id)
            doc.get("meta", type=Map)["writer"] = node.config.node_id
            node.release(doc_id)
        for node in nodes:
            await node.flush()

        def holders(doc_id: str) -> set[str]:
            return {r.node_id for placed in nodes[0].placement(doc_id).replicas.values() for r in placed}

        def settled() -> bool:
            return all(
                node.has_doc(doc_id) == (node.config.node_id in holders(doc_id))
                for doc_id in doc_ids
                for node in nodes
            )

        await wait_until(settled, TIMEOUT_S, "every doc on its holders only")
        for index, doc_id in enumerate(doc_ids):
            assert len(holders(doc_id)) == 2
            for node in nodes:
                if node.has_doc(doc_id):
                    doc = await node.open(doc_id)
                    assert doc.get("meta", type=Map).to_py() == {"writer": f"n{index % 4}"}, (doc_id, node)
                    node.release(doc_id)
        await _write_acks(nodes, holders)
        await _follow_a_doc(nodes, holders)
        kept = {node.config.node_id: set(node.doc_ids()) for node in nodes}
        dropped = sum(node.status().counters.handoff_docs_dropped for node in nodes)
        print(f"docs per node {[len(ids) for ids in kept.values()]}, {dropped} handed off and dropped")
        assert dropped > 0
        # Deltas went out on their buckets' topics: each node skipped, by the publishers' indexes,
        # sequence numbers of docs it does not hold, instead of receiving those deltas.
        assert all(node.status().counters.seqs_not_subscribed > 0 for node in nodes)
    # Closing is a leave: each node hands what it holds to those who hold it without it, and the
    # last ones keep what nobody is left to take. Nothing is lost; n3 (closed first) only gave.
    stored: dict[str, set[str]] = {}
    for node_id in kept:
        store = SqliteStore(str(tmp_path / node_id), node_id=node_id)
        try:
            stored[node_id] = {record.doc_id for record in store.docs()}
        finally:
            store.close()
    assert set().union(*stored.values()) >= set().union(*kept.values())
    assert stored["n3"] < kept["n3"], "the first node to leave handed its docs over and dropped them"


async def _follow_a_doc(nodes: list[Node], holders: Callable[[str], set[str]]) -> None:
    """A node opens a doc it does not hold: it fetches it from a holder, follows the holder's writes
    while open, and drops the doc a grace period after its release."""
    doc_id = next(f"follow/{i}" for i in range(100) if "n0" not in holders(f"follow/{i}"))
    holder = next(node for node in nodes if node.config.node_id in holders(doc_id))
    written = await holder.open(doc_id)
    written.get("meta", type=Map)["v"] = 1
    await holder.flush()
    follower = await nodes[0].open(doc_id)  # returns once the holder answered
    meta = follower.get("meta", type=Map)
    assert meta.to_py() == {"v": 1}
    written.get("meta", type=Map)["v"] = 2
    holder.release(doc_id)
    await wait_until(lambda: meta.to_py() == {"v": 2}, TIMEOUT_S, "the follower sees the holder's write")
    nodes[0].release(doc_id)
    await wait_until(lambda: not nodes[0].has_doc(doc_id), TIMEOUT_S, "the released follower drops the doc")


async def _write_acks(nodes: list[Node], holders: Callable[[str], set[str]]) -> None:
    """A write on a node that does not hold the doc waits for both replicas' durable confirmation;
    asking for more replicas than the doc has times out naming those that confirmed."""
    doc_id = next(f"acks/{i}" for i in range(100) if "n0" not in holders(f"acks/{i}"))
    doc = await nodes[0].open(doc_id)
    doc.get("meta", type=Map)["v"] = "acked"
    nodes[0].release(doc_id)
    acks = await nodes[0].write_acks(doc_id, 2, timeout_ms=TIMEOUT_S * 1000)
    assert set(acks.confirmed) == holders(doc_id) and acks.needed == 2
    for node in nodes:
        if node.config.node_id in holders(doc_id):
            held = await node.open(doc_id)
            assert held.get("meta", type=Map).to_py() == {"v": "acked"}  # there before the answer
            node.release(doc_id)
    with pytest.raises(WriteAcksTimeoutError) as caught:  # long enough for both answers under load
        await nodes[0].write_acks(doc_id, 3, timeout_ms=2_000.0)
    assert set(caught.value.confirmed) == holders(doc_id)
