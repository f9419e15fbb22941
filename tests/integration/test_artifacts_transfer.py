"""Chunk transfer between real nodes in two datacenters (ZeroMQ on 127.0.0.1, SQLite stores): a
version put in dc1 is fetched whole by dc2, a second version moves only its changed chunks, a
tampered chunk is refused and its sender struck, and a node no holder answers says what it lacks."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import random
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import pytest
from zmq_support import free_endpoint

from crdtsync import Node, NodeConfig, ReplicaConfig
from crdtsync.artifacts import ArtifactIncompleteError
from crdtsync.artifacts.transfer import ArtifactsConfig
from crdtsync.testing.safetensors import write_safetensors

pytestmark = pytest.mark.integration

FAST = ReplicaConfig(
    heartbeat_interval_ms=100.0,
    hello_interval_ms=100.0,
    tick_interval_ms=20.0,
    retransmit_timeout_ms=100.0,
    ae_round_timeout_ms=500.0,
    ae_interval_ms=300.0,
)
WAIT_S = 15.0


@asynccontextmanager
async def _nodes(tmp_path: Path, dcs: tuple[str, ...]) -> AsyncIterator[list[Node]]:
    listens = [free_endpoint() for _ in dcs]
    async with AsyncExitStack() as stack:
        nodes = []
        for index, (listen, dc) in enumerate(zip(listens, dcs, strict=True)):
            config = NodeConfig(
                node_id=f"n{index + 1}",
                listen=listen,
                peers=[peer for peer in listens if peer != listen],
                data_dir=str(tmp_path / f"n{index + 1}"),
                replication=FAST,
                dc=dc,
            )
            nodes.append(await stack.enter_async_context(Node(config)))
        yield nodes


@asynccontextmanager
async def _two_dcs(tmp_path: Path) -> AsyncIterator[tuple[Node, Node]]:
    async with _nodes(tmp_path, ("dc1", "dc2")) as (dc1, dc2):
        yield dc1, dc2


async def _listed(node: Node, name: str, version: str) -> None:
    """Wait until the manifest of `version` has reached `node` (the doc replicates as any doc)."""
    deadline = asyncio.get_running_loop().time() + WAIT_S
    while True:
        if node.has_doc(f"artifacts/{name}"):
            versions = await node.artifacts.ls(name)
            listed = any(v.version == version and v.complete_on for v in versions)
            if listed and any(m.state == "alive" for m in node.status().members):
                return
        assert asyncio.get_running_loop().time() < deadline, f"{version} never reached {node.config.node_id}"
        await asyncio.sleep(0.05)


async def _agreed_relay(one: Node, other: Node) -> None:
    """Wait until both dc2 nodes know every member and agree on dc2's relay (its fetcher)."""

    def relays(node: Node) -> tuple[str, ...]:
        dc2 = [dc.relays for dc in node.status().datacenters if dc.dc == "dc2"]
        return dc2[0] if dc2 and len(node.status().members) == 2 else ()

    deadline = asyncio.get_running_loop().time() + WAIT_S
    while not relays(one) or relays(one) != relays(other):
        assert asyncio.get_running_loop().time() < deadline, "dc2 never agreed on its relay"
        await asyncio.sleep(0.05)


def _tensors(seed: int) -> dict[str, bytes]:
    rng = random.Random(seed)
    return {f"layer{i}.weight": rng.randbytes(100_000) for i in range(20)}


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def _fetches_only_changed_chunks(tmp_path: Path) -> None:
    tensors = _tensors(1)
    write_safetensors(str(tmp_path / "v1"), tensors)
    for index in (2, 11, 17):
        tensors[f"layer{index}.weight"] = random.Random(100 + index).randbytes(100_000)
    write_safetensors(str(tmp_path / "v2"), tensors)
    async with _two_dcs(tmp_path) as (dc1, dc2):
        first = await dc1.artifacts.put("ckpt", str(tmp_path / "v1"))
        await _listed(dc2, "ckpt", first.version)
        await dc2.artifacts.get("ckpt", str(tmp_path / "got1"))
        assert _sha(tmp_path / "got1") == _sha(tmp_path / "v1")
        counters = dc2.artifacts.transfer.counters
        table_bytes = first.bytes_new - first.bytes_total
        assert counters.bytes_fetched == first.bytes_total + table_bytes
        assert counters.bytes_fetched_wan == counters.bytes_fetched and counters.chunks_refused == 0
        assert [v.complete_on for v in await dc2.artifacts.ls("ckpt")] == [("n1", "n2")]

        second = await dc1.artifacts.put("ckpt", str(tmp_path / "v2"))
        await _listed(dc2, "ckpt", second.version)
        before = counters.bytes_fetched
        await dc2.artifacts.get("ckpt", str(tmp_path / "got2"), version=second.version)
        assert _sha(tmp_path / "got2") == _sha(tmp_path / "v2")
        moved = counters.bytes_fetched - before
        # The three changed tensors, the header, and the table's piece: nothing else crosses.
        assert moved == second.bytes_new
        assert 300_000 <= moved <= 300_000 + 10_000, moved
        assert dc1.artifacts.transfer.counters.bytes_served == counters.bytes_fetched


async def _refuses_a_tampered_chunk(tmp_path: Path) -> None:
    write_safetensors(str(tmp_path / "v1"), _tensors(2))
    async with _two_dcs(tmp_path) as (dc1, dc2):
        put = await dc1.artifacts.put("ckpt", str(tmp_path / "v1"))
        await _listed(dc2, "ckpt", put.version)
        honest = dc1.artifacts.transfer._read

        def tampering(
            chunk_ids: tuple[bytes, ...],
        ) -> tuple[tuple[tuple[bytes, bytes], ...], tuple[bytes, ...]]:
            chunks, not_sent = honest(chunk_ids)
            return tuple((chunk, b"X" + data[1:]) for chunk, data in chunks), not_sent

        dc1.artifacts.transfer._read = tampering  # type: ignore[method-assign]
        dc2.artifacts.transfer.config = dataclasses.replace(ArtifactsConfig(), attempts_max=2)
        with pytest.raises(ArtifactIncompleteError, match="could not be fetched") as caught:
            await dc2.artifacts.get("ckpt", str(tmp_path / "got"))
        assert caught.value.chunks_missing >= 1 and not (tmp_path / "got").exists()
        counters = dc2.artifacts.transfer.counters
        assert counters.chunks_refused >= 1 and counters.holders_struck >= 1
        assert dc2.artifacts.store.stats().chunks == 0  # nothing unverified was stored
        # Struck: the holder is not asked again while the strike lasts.
        sent = counters.requests_sent
        with pytest.raises(
            ArtifactIncompleteError, match=r"from n1 \(struck: it sent bytes that did not match\)"
        ):
            await dc2.artifacts.get("ckpt", str(tmp_path / "got"))
        assert counters.requests_sent == sent


async def _crosses_the_wan_once(tmp_path: Path) -> None:
    write_safetensors(str(tmp_path / "v1"), _tensors(3))
    async with _nodes(tmp_path, ("dc1", "dc2", "dc2")) as (source, one, other):
        await _agreed_relay(one, other)
        put = await source.artifacts.put("ckpt", str(tmp_path / "v1"))
        await _listed(one, "ckpt", put.version)
        await _listed(other, "ckpt", put.version)
        await asyncio.gather(
            one.artifacts.get("ckpt", str(tmp_path / "one")),
            other.artifacts.get("ckpt", str(tmp_path / "other")),
        )
        assert _sha(tmp_path / "one") == _sha(tmp_path / "other") == _sha(tmp_path / "v1")
        wan = sum(node.artifacts.transfer.counters.bytes_fetched_wan for node in (one, other))
        assert wan == put.bytes_new  # each chunk crossed once: dc2's relay fetched, the other asked it
        assert source.artifacts.transfer.counters.bytes_served == put.bytes_new


async def _prefetches(tmp_path: Path) -> None:
    write_safetensors(str(tmp_path / "v1"), _tensors(4))
    async with _nodes(tmp_path, ("dc1", "dc2", "dc2")) as (source, one, other):
        await _agreed_relay(one, other)
        put = await source.artifacts.put("ckpt", str(tmp_path / "v1"))
        await _listed(one, "ckpt", put.version)
        await _listed(other, "ckpt", put.version)
        prefetched = [await node.artifacts.prefetch() for node in (one, other)]
        fetcher, follower = (one, other) if prefetched[0] else (other, one)
        assert sorted(prefetched, key=len) == [[], [("ckpt", put.version)]]  # the fetcher only
        assert fetcher.artifacts.transfer.counters.bytes_fetched_wan == put.bytes_new
        assert await fetcher.artifacts.prefetch() == []  # complete in dc2 now: nothing to do
        await follower.artifacts.get("ckpt", str(tmp_path / "got"))
        assert _sha(tmp_path / "got") == _sha(tmp_path / "v1")
        counters = follower.artifacts.transfer.counters
        assert (counters.bytes_fetched, counters.bytes_fetched_wan) == (put.bytes_new, 0)


def test_the_fetcher_prefetches_latest_for_its_datacenter(tmp_path: Path) -> None:
    asyncio.run(_prefetches(tmp_path))


def test_two_nodes_of_a_datacenter_getting_at_once_cross_the_wan_once(tmp_path: Path) -> None:
    asyncio.run(_crosses_the_wan_once(tmp_path))


def test_a_second_version_moves_only_its_changed_chunks(tmp_path: Path) -> None:
    asyncio.run(_fetches_only_changed_chunks(tmp_path))


def test_a_tampered_chunk_is_refused_and_its_sender_struck(tmp_path: Path) -> None:
    asyncio.run(_refuses_a_tampered_chunk(tmp_path))
