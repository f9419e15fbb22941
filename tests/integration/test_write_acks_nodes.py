"""`Node.write_acks("dc" | "all")` on real nodes over ZeroMQ in two datacenters: the nodes each scope
asks, and the round trips a confirmation takes (a probe and then the update the first time a node
is asked about a doc, the update at once after that)."""

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
async def _two_datacenters(root: Path) -> AsyncIterator[list[Node]]:
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
                        replication=FAST,
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
    """Write-ack questions the node sent, less those asked again after a silence (a loaded machine
    can hold an answer past holders.ASK_AGAIN_MS; that is not what is counted here)."""
    return node.status().counters.handoff_offers_sent - node._waits.asked_again


def test_dc_and_all_confirm_their_scope_and_a_known_holder_confirms_in_one_round_trip(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with _two_datacenters(tmp_path) as nodes:
            a = nodes[0]
            await _write(a, "llama-3-8b", "canary")
            in_dc = await a.write_acks(DOC, "dc", timeout_ms=TIMEOUT_S * 1000)
            assert (in_dc.needed, sorted(in_dc.confirmed)) == (2, ["a", "c"])

            offers = _questions(a)
            await _write(a, "llama-3-8b", "production")
            everywhere = await a.write_acks(DOC, "all", timeout_ms=TIMEOUT_S * 1000)
            assert (everywhere.needed, sorted(everywhere.confirmed)) == (3, ["a", "b", "c"])
            # c answered before: asked with the update at once; b is new to this doc: probed first.
            first_time = _questions(a) - offers
            assert first_time == 1 + 2, first_time

            offers = _questions(a)
            await _write(a, "llama-3-8b", "everywhere")
            again = await a.write_acks(DOC, "all", timeout_ms=TIMEOUT_S * 1000)
            assert sorted(again.confirmed) == ["a", "b", "c"]
            assert _questions(a) - offers == 2  # one question per holder
            for node in nodes:  # each confirmed after its commit: it holds the write now
                doc = await node.open(DOC)
                assert doc.get("data", type=Map).to_py() == {"llama-3-8b": "everywhere"}, node.config.node_id
                node.release(DOC)

    asyncio.run(scenario())
