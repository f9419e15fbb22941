"""A node asks its store only through the `Store` contract: what the store describes decides lazy
loading and the writer thread, and `Node.store_stats()` reports what the writer did."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from pycrdt import Map
from zmq_support import free_endpoint

from crdtsync import MemoryStore, Node, NodeConfig, ReplicaConfig, StoreDescription, StoreError
from crdtsync.store.writer import COMMIT_LATENCY_BUCKETS_MS

pytestmark = pytest.mark.integration


class LazyMemoryStore(MemoryStore):
    """A custom store: memory, but it tells the node to load docs lazily and evict them."""

    def describe(self) -> StoreDescription:
        return StoreDescription(name="lazy-memory", durable=False, lazy_loading=True)


def test_memory_store_stats_status_and_backup_refusal(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with Node(NodeConfig(node_id="a", listen=free_endpoint())) as node:
            doc = await node.open("d")
            doc.get("data", type=Map)["x"] = 1
            await node.flush()
            stats = node.store_stats()
            assert stats.store == StoreDescription(name="memory", durable=False, lazy_loading=False)
            assert (stats.commits, stats.commit_failures, stats.load_errors) == (0, 0, 0)
            assert stats.commit_latency_counts is None and stats.pending_effects == 0
            status = node.status()
            assert (status.store, status.durability) == ("memory", "none")
            with pytest.raises(StoreError, match="data_dir"):
                await node.backup(str(tmp_path / "backup.db"))

    asyncio.run(scenario())


def test_sqlite_store_stats_count_commits(tmp_path: Path) -> None:
    async def scenario() -> None:
        config = NodeConfig(node_id="a", listen=free_endpoint(), data_dir=str(tmp_path / "a"))
        async with Node(config) as node:
            for index in range(5):
                doc = await node.open(f"d{index}")
                doc.get("data", type=Map)["x"] = index
                await node.flush()
                node.release(f"d{index}")
            stats = node.store_stats()
            assert stats.store.durable and stats.store.lazy_loading
            assert stats.store.name == f"sqlite:{tmp_path / 'a' / 'crdtsync.db'}" == node.status().store
            assert stats.commits >= 5 and stats.pending_effects == 0
            assert stats.commit_latency_counts is not None
            assert len(stats.commit_latency_counts) == len(COMMIT_LATENCY_BUCKETS_MS) + 1
            assert sum(stats.commit_latency_counts) == stats.commits
            assert stats.commit_latency_sum_ms > 0.0
            assert node.status().counters.store_commits == stats.commits

    asyncio.run(scenario())


def test_a_custom_store_that_loads_lazily_gets_evictions_and_a_restart_from_digests() -> None:
    store = LazyMemoryStore()
    replication = ReplicaConfig(docs_cached_max=2)

    async def scenario() -> None:
        config = NodeConfig(node_id="a", listen=free_endpoint(), replication=replication)
        digests = {}
        async with Node(config, store=store) as node:
            for index in range(10):
                doc = await node.open(f"d{index}")
                doc.get("data", type=Map)["x"] = index
                await node.flush()
                digests[f"d{index}"] = node.digest(f"d{index}")
                node.release(f"d{index}")
            await node.flush()
            assert node.status().counters.docs_evicted >= 5
            assert node.status().store == "lazy-memory"
        # Evictions and the clean shutdown recorded every doc's state and digest in the store.
        assert all(record.digest is not None for record in store.docs())
        async with Node(config, store=store) as again:
            assert again.status().counters.docs_loaded == 0  # registered, not loaded
            for doc_id, expected in digests.items():
                assert again.digest(doc_id) == expected
                doc = await again.open(doc_id)
                assert doc.get("data", type=Map)["x"] == int(doc_id[1:])
                again.release(doc_id)

    asyncio.run(scenario())
