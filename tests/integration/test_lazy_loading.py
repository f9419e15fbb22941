"""Docs load on first use and are evicted least-recently-used beyond the cache budget; the Merkle
tree and status work from stored digests without loading docs."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from pycrdt import Map
from zmq_support import free_endpoint, wait_until

from crdtsync import Node, NodeConfig, ReplicaConfig

pytestmark = pytest.mark.integration

SMALL_CACHE = ReplicaConfig(
    docs_cached_max=8, hello_interval_ms=100.0, tick_interval_ms=20.0, ae_interval_ms=300.0
)


def _config(node_id: str, listen: str, data_dir: Path, peers: list[str] | None = None) -> NodeConfig:
    return NodeConfig(
        node_id=node_id, listen=listen, peers=peers or [], data_dir=str(data_dir), replication=SMALL_CACHE
    )


def test_docs_are_evicted_beyond_the_budget_and_reload_equal(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with Node(_config("a", free_endpoint(), tmp_path / "a")) as node:
            digests = {}
            for index in range(60):
                doc_id = f"doc-{index:02d}"
                doc = await node.open(doc_id)
                doc.get("data", type=Map)["value"] = index
                await node.flush()
                digests[doc_id] = node.digest(doc_id)
                node.release(doc_id)
            await node.flush()
            status = node.status()
            assert status.docs == 60
            assert status.counters.docs_loaded <= 8 + 1
            assert status.counters.docs_evicted >= 50
            root = node.merkle_root()
            for doc_id, expected in digests.items():
                doc = await node.open(doc_id)
                assert doc.get("data", type=Map)["value"] == int(doc_id[4:])
                assert node.digest(doc_id) == expected
                node.release(doc_id)
            assert node.merkle_root() == root
            await node.flush()  # eviction runs on the node's next turn
            assert node.status().counters.docs_loaded <= 9

    asyncio.run(scenario())


def test_restart_builds_the_tree_from_stored_digests_without_loading_docs(tmp_path: Path) -> None:
    async def scenario() -> None:
        listen = free_endpoint()
        async with Node(_config("a", listen, tmp_path / "a")) as node:
            for index in range(40):
                doc = await node.open(f"doc-{index:02d}")
                doc.get("data", type=Map)["value"] = index
                node.release(f"doc-{index:02d}")
            await node.flush()
            root = node.merkle_root()
        async with Node(_config("a", listen, tmp_path / "a")) as node:
            assert node.status().docs == 40
            assert node.status().counters.docs_loaded == 0, "a clean shutdown recorded every digest"
            assert node.merkle_root() == root
            assert node.status().counters.docs_loaded == 0

    asyncio.run(scenario())


def test_anti_entropy_repairs_docs_that_are_not_loaded(tmp_path: Path) -> None:
    async def scenario() -> None:
        first, second = free_endpoint(), free_endpoint()
        async with Node(_config("a", first, tmp_path / "a")) as a:
            for index in range(30):
                doc = await a.open(f"doc-{index:02d}")
                doc.get("data", type=Map)["value"] = index
                a.release(f"doc-{index:02d}")
            await a.flush()
            async with Node(_config("b", second, tmp_path / "b", peers=[first])) as b:
                await wait_until(lambda: b.merkle_root() == a.merkle_root(), 20.0, "b converged with a")
                assert b.status().docs == 30
                assert b.status().counters.docs_loaded <= 9
                doc = await b.open("doc-29")
                assert doc.get("data", type=Map)["value"] == 29

    asyncio.run(scenario())


def test_the_byte_budget_evicts_large_docs_before_the_count_budget_is_reached(tmp_path: Path) -> None:
    config = ReplicaConfig(docs_cached_max=1000, docs_cached_bytes_max=20_000, tick_interval_ms=20.0)

    async def scenario() -> None:
        node_config = NodeConfig(
            node_id="a", listen=free_endpoint(), data_dir=str(tmp_path / "a"), replication=config
        )
        async with Node(node_config) as node:
            for index in range(40):
                doc = await node.open(f"big-{index:02d}")
                doc.get("data", type=Map)["blob"] = "x" * 2_000
                node.release(f"big-{index:02d}")
                await node.flush()
            counters = node.status().counters
            assert counters.docs_loaded_bytes <= 20_000 + 3_000, counters
            assert counters.docs_loaded < 15
            assert counters.docs_evicted >= 25
            doc = await node.open("big-00")
            assert doc.get("data", type=Map)["blob"] == "x" * 2_000

    asyncio.run(scenario())
