"""`Node.write_acks("dc" | "all")` on real nodes over ZeroMQ in two datacenters: the nodes each scope
waits for, confirmed by the sequence acknowledgements holders send of the writer's stream (no
question per write), and the frames an acknowledged write costs."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from pycrdt import Map
from zmq_support import free_endpoint, wait_until

from crdtsync import MembershipConfig, Node, NodeConfig, ReplicaConfig

pytestmark = pytest.mark.integration

FAST = ReplicaConfig(heartbeat_interval_ms=100.0, hello_interval_ms=100.0, tick_interval_ms=20.0)
GOSSIP = MembershipConfig(gossip_interval_ms=100.0)
TIMEOUT_S = 15.0
DOC = "models/registry"


@contextlib.asynccontextmanager
async def _two_datacenters(root: Path, replication: ReplicaConfig) -> AsyncIterator[list[Node]]:
    """a and c in dc1, b in dc2, SQLite stores (a confirmation comes after the holder's commit)."""
    names = {"a": "dc1", "b": "dc2", "c": "dc1"}
    listens = {name: free_endpoint() for name in names}
    async with contextlib.AsyncExitStack() as stack:
        nodes = [
            await stack.enter_async_context(
                Node(
                    NodeConfig(
                        node_id=name,
                        dc=dc,
                        listen=listens[name],
                        peers=[listens[other] for other in names if other != name],
                        replication=replication,
                        membership=GOSSIP,
                        data_dir=str(root / name),
                    )
                )
            )
            for name, dc in names.items()
        ]
        await wait_until(
            lambda: all(sum(m.state == "alive" for m in node.status().members) == 2 for node in nodes),
            TIMEOUT_S,
            "every node knows the other two",
        )
        yield nodes


async def _write(node: Node, key: str, value: str) -> None:
    doc = await node.open(DOC)
    doc.get("data", type=Map)[key] = value
    node.release(DOC)
    await node.flush()


def _questions(node: Node) -> int:
    """Direct write-ack questions the node sent (HANDOFF_OFFER), less those asked again after a
    silence (a loaded machine can hold an answer past holders.ASK_AGAIN_MS)."""
    return node.status().counters.handoff_offers_sent - node._waits.asked_again


def test_dc_and_all_confirm_their_scope_by_sequence_acks_without_a_question(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with _two_datacenters(tmp_path, FAST) as nodes:
            a = nodes[0]
            await _write(a, "llama-3-8b", "canary")
            in_dc = await a.write_acks(DOC, "dc", timeout_ms=TIMEOUT_S * 1000)
            assert (in_dc.needed, sorted(in_dc.confirmed)) == (2, ["a", "c"])

            # c and b (dc2's relay, which subscribes to a's stream) acknowledged a's deltas: from
            # now on their acks confirm, and no question goes out.
            offers, by_ack = _questions(a), a._waits.confirmed_by_ack
            for value in ("production", "everywhere"):
                await _write(a, "llama-3-8b", value)
                everywhere = await a.write_acks(DOC, "all", timeout_ms=TIMEOUT_S * 1000)
                assert (everywhere.needed, sorted(everywhere.confirmed)) == (3, ["a", "b", "c"])
            assert _questions(a) - offers == 0
            assert a._waits.confirmed_by_ack - by_ack == 2 * 2
            for node in nodes:  # each acknowledged after its commit: it holds the write now
                doc = await node.open(DOC)
                assert doc.get("data", type=Map).to_py() == {"llama-3-8b": "everywhere"}, node.config.node_id
                node.release(DOC)

    asyncio.run(scenario())


def test_an_acknowledged_write_on_an_idle_cluster_costs_one_ack_frame_per_holder(tmp_path: Path) -> None:
    """Counted on the nodes: over N writes with write_acks=all, the writer sends no frame at all
    (its delta is published), and each holder sends at most one SEQ_ACK per write and nothing else
    but gossip (anti-entropy rounds are off here so that none falls in the window)."""
    writes = 5
    quiet = ReplicaConfig(
        heartbeat_interval_ms=100.0,
        hello_interval_ms=100.0,
        tick_interval_ms=20.0,
        ae_interval_ms=0.0,
        ae_wan_interval_ms=0.0,
    )

    async def scenario() -> None:
        async with _two_datacenters(tmp_path, quiet) as nodes:
            a = nodes[0]
            await _write(a, "warm-up", "1")
            await a.write_acks(DOC, "all", timeout_ms=TIMEOUT_S * 1000)
            before = [node.status().counters for node in nodes]
            for index in range(writes):
                await _write(a, "llama-3-8b", f"v{index}")
                acks = await a.write_acks(DOC, "all", timeout_ms=TIMEOUT_S * 1000)
                assert sorted(acks.confirmed) == ["a", "b", "c"]
            after = [node.status().counters for node in nodes]
            sent = [
                (n.frames_sent - b.frames_sent) - (n.gossip_sent - b.gossip_sent)
                for n, b in zip(after, before, strict=True)
            ]
            acks_sent = [n.seq_acks_sent - b.seq_acks_sent for n, b in zip(after, before, strict=True)]
            print(f"frames sent over {writes} writes, besides gossip: {sent}; of them acks: {acks_sent}")
            assert sent[0] == 0, "the writer asked something"
            assert after[0].seq_acks_received - before[0].seq_acks_received >= 2 * writes
            for index in (1, 2):
                assert sent[index] == acks_sent[index] <= writes, nodes[index].config.node_id

    asyncio.run(scenario())
