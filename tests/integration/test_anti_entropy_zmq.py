"""Anti-entropy over real ZeroMQ sockets on 127.0.0.1: late joiners and delete-only divergence."""

from __future__ import annotations

import asyncio
import time

import pytest
from pycrdt import Map
from zmq_support import free_endpoint, wait_until

from crdtsync import MemoryStore, Node, NodeConfig, ReplicaConfig

pytestmark = pytest.mark.integration

FAST = ReplicaConfig(
    hello_interval_ms=100.0, tick_interval_ms=20.0, ae_interval_ms=300.0, ae_round_timeout_ms=1000.0
)


def _config(node_id: str, listen: str, peers: list[str]) -> NodeConfig:
    return NodeConfig(node_id=node_id, listen=listen, peers=peers, replication=FAST)


def _same(a: Node, b: Node) -> bool:
    ids = a.doc_ids()
    return ids == b.doc_ids() and all(a.digest(doc_id) == b.digest(doc_id) for doc_id in ids)


def test_a_node_joining_after_1000_docs_were_written_receives_them_all() -> None:
    async def scenario() -> None:
        first, second, late = free_endpoint(), free_endpoint(), free_endpoint()
        async with (
            Node(_config("a", first, [second])) as a,
            Node(_config("b", second, [first])) as b,
        ):
            for index in range(1000):
                doc = await a.open(f"models/m{index:04d}")
                doc.get("data", type=Map)["stage"] = index % 3
            await wait_until(lambda: len(b.doc_ids()) == 1000, 30.0, "b holds the 1000 docs")
            async with Node(_config("c", late, [first])) as c:
                started = time.monotonic()
                await wait_until(
                    lambda: _same(a, c), 30.0, lambda: f"c holds {len(c.doc_ids())} of 1000 docs"
                )
                print(f"late joiner caught up on 1000 docs in {time.monotonic() - started:.2f} s")
                doc = await c.open("models/m0999")
                assert doc.get("data", type=Map).to_py() == {"stage": 999 % 3}
                # c was configured with a alone and learns b by gossip (maybe after it caught up):
                # either may repair it.
                await wait_until(
                    lambda: {p.node_id for p in c.status().peers} == {"a", "b"},
                    15.0,
                    lambda: f"c knows a and b: {c.status().peers}",
                )
                assert sum(p.ae_docs_repaired for p in c.status().peers) >= 1000
                assert c.status().counters.deltas_applied == 0, "nothing came by pub/sub"

    asyncio.run(scenario())


def test_two_nodes_that_diverged_only_by_deletions_converge() -> None:
    async def scenario() -> None:
        first, second = free_endpoint(), free_endpoint()
        store_b = MemoryStore()
        async with Node(_config("a", first, [second])) as a:
            async with Node(_config("b", second, [first]), store=store_b) as b:
                doc = await a.open("flags")
                flags = doc.get("data", type=Map)
                for index in range(20):
                    flags[f"flag-{index}"] = True
                await wait_until(lambda: _same(a, b), 15.0, "b has a's flags")
            # b is stopped: a deletes half the flags, which moves no state vector.
            before = doc.get_state()
            for index in range(0, 20, 2):
                del flags[f"flag-{index}"]
            assert doc.get_state() == before, "delete-only divergence: the state vector did not move"
            # b restarts with its store: same items, none of the deletions, and nothing in any ring for it.
            async with Node(_config("b", second, [first]), store=store_b) as b:
                await wait_until(lambda: _same(a, b), 15.0, "b has a's deletions")
                b_flags = (await b.open("flags")).get("data", type=Map).to_py()
                assert b_flags == {f"flag-{index}": True for index in range(1, 20, 2)}
                repaired = sum(peer.ae_docs_repaired for peer in b.status().peers)
                assert repaired >= 1

    asyncio.run(scenario())
