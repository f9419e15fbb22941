"""`node.artifacts` on real nodes (ZeroMQ on 127.0.0.1, SQLite stores on disk): put, ls, get, diff,
delete and collect; manifests published concurrently on two nodes merge."""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import pytest
from zmq_support import free_endpoint

from crdtsync import Node, NodeConfig, ReplicaConfig
from crdtsync.artifacts import (
    ArtifactError,
    ArtifactIncompleteError,
    ArtifactLimits,
    ArtifactNotFoundError,
    ArtifactTooLargeError,
)
from crdtsync.artifacts.manifest import parse_record
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


@asynccontextmanager
async def _nodes(tmp_path: Path, count: int) -> AsyncIterator[list[Node]]:
    listens = [free_endpoint() for _ in range(count)]
    async with AsyncExitStack() as stack:
        nodes = []
        for index, listen in enumerate(listens):
            config = NodeConfig(
                node_id=f"n{index}",
                listen=listen,
                peers=[peer for peer in listens if peer != listen],
                data_dir=str(tmp_path / f"n{index}"),
                replication=FAST,
            )
            nodes.append(await stack.enter_async_context(Node(config)))
        yield nodes


def _tensors(seed: int, count: int = 24, size: int = 40_000) -> dict[str, bytes]:
    rng = random.Random(seed)
    return {f"layer{i}.weight": rng.randbytes(size) for i in range(count)}


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def _put_get_ls_and_diff_on_one_node(tmp_path: Path) -> None:
    tensors = _tensors(1)
    write_safetensors(str(tmp_path / "v1.safetensors"), tensors)
    tensors["layer3.weight"] = random.Random(9).randbytes(40_000)
    tensors["layer7.weight"] = random.Random(10).randbytes(40_000)
    write_safetensors(str(tmp_path / "v2.safetensors"), tensors)
    async with _nodes(tmp_path, 1) as (node,):
        first = await node.artifacts.put("ckpt/llama", str(tmp_path / "v1.safetensors"))
        assert first.seq == 1 and first.bytes_new >= first.bytes_total  # the table's pieces are new too
        second = await node.artifacts.put("ckpt/llama", str(tmp_path / "v2.safetensors"))
        assert second.seq == 2
        # Only the two changed tensors (and the header) are new bytes.
        assert 80_000 <= second.bytes_new < 80_000 + 8_000
        again = await node.artifacts.put("ckpt/llama", str(tmp_path / "v2.safetensors"))
        assert (again.version, again.bytes_new) == (second.version, 0)

        versions = await node.artifacts.ls("ckpt/llama")
        assert [(v.seq, v.tags, v.complete_on) for v in versions] == [
            (1, (), ("n0",)),
            (2, ("latest",), ("n0",)),
        ]
        assert versions[0].format == "safetensors"

        await node.artifacts.get("ckpt/llama", str(tmp_path / "out1"), version="1")
        await node.artifacts.get("ckpt/llama", str(tmp_path / "out2"))
        assert _sha(tmp_path / "out1") == _sha(tmp_path / "v1.safetensors")
        assert _sha(tmp_path / "out2") == _sha(tmp_path / "v2.safetensors")

        diff = await node.artifacts.diff("ckpt/llama", "1", "latest")
        assert diff.tensors_changed == ("layer3.weight", "layer7.weight")
        assert diff.tensors_unchanged_count == 22 and diff.tensors_added == diff.tensors_removed == ()
        assert 80_000 <= diff.bytes_changed < 88_000

        _, stream = await node.artifacts.open_range("ckpt/llama", first.version, 100, 100_100)
        body = b"".join([part async for part in stream])
        assert body == (tmp_path / "v1.safetensors").read_bytes()[100:100_100]


async def _delete_moves_latest_and_collect_frees_the_chunks(tmp_path: Path) -> None:
    write_safetensors(str(tmp_path / "a"), _tensors(1))
    write_safetensors(str(tmp_path / "b"), _tensors(2))
    async with _nodes(tmp_path, 1) as (node,):
        first = await node.artifacts.put("m", str(tmp_path / "a"))
        second = await node.artifacts.put("m", str(tmp_path / "b"))
        await node.artifacts.delete("m", "latest")
        versions = await node.artifacts.ls("m")
        assert [(v.version, v.tags) for v in versions] == [(first.version, ("latest",))]
        assert (await node.artifacts.collect(grace_s=3600)).chunks_deleted == 0  # within the grace
        collected = await node.artifacts.collect(grace_s=0)
        assert collected.bytes_deleted == second.bytes_new  # the header chunk is shared with the first
        with pytest.raises(ArtifactNotFoundError):
            await node.artifacts.resolve("m", second.version)
        await node.artifacts.get("m", str(tmp_path / "out"))
        assert _sha(tmp_path / "out") == _sha(tmp_path / "a")


async def _bad_names_refs_and_limits_are_refused(tmp_path: Path) -> None:
    write_safetensors(str(tmp_path / "a"), _tensors(1))
    async with _nodes(tmp_path, 1) as (node,):
        with pytest.raises(ArtifactError, match="artifact name"):
            await node.artifacts.put("../etc", str(tmp_path / "a"))
        with pytest.raises(ArtifactNotFoundError, match="no artifact"):
            await node.artifacts.ls("never")
        await node.artifacts.put("m", str(tmp_path / "a"))
        with pytest.raises(ArtifactNotFoundError, match="no version or tag 'stable'"):
            await node.artifacts.get("m", str(tmp_path / "out"), version="stable")
        node.artifacts.limits = ArtifactLimits(chunks_per_version_max=10)
        with pytest.raises(ArtifactTooLargeError, match="chunks_per_version_max 10"):
            await node.artifacts.put("m", str(tmp_path / "a"))
        node.artifacts.limits = ArtifactLimits(bytes_per_version_max=1000)
        with pytest.raises(ArtifactTooLargeError, match="bytes_per_version_max 1000"):
            await node.artifacts.put("m", str(tmp_path / "a"))
        # A replicated record beyond the limits is ignored and counted, never followed.
        with pytest.raises(ValueError, match="table must be a list of at most"):
            parse_record("0" * 16, {"table": ["00" * 32] * 5000}, ArtifactLimits(chunks_per_version_max=10))


async def _concurrent_versions_on_two_nodes_merge_and_each_node_fetches_the_other(
    tmp_path: Path,
) -> None:
    write_safetensors(str(tmp_path / "a"), _tensors(1))
    write_safetensors(str(tmp_path / "b"), _tensors(2))
    async with _nodes(tmp_path, 2) as (one, two):
        put_a, put_b = await asyncio.gather(
            one.artifacts.put("m", str(tmp_path / "a")), two.artifacts.put("m", str(tmp_path / "b"))
        )
        want = {put_a.version, put_b.version}

        async def seen(node: Node) -> set[str]:
            return {v.version for v in await node.artifacts.ls("m")} if node.has_doc("artifacts/m") else set()

        for node in (one, two):
            deadline = asyncio.get_running_loop().time() + 15
            while await seen(node) != want:
                assert asyncio.get_running_loop().time() < deadline, "the versions did not merge"
                await asyncio.sleep(0.05)
        listed = await one.artifacts.ls("m")
        assert sorted(v.complete_on for v in listed) == [("n0",), ("n1",)]
        with pytest.raises(ArtifactIncompleteError, match="lacks") as lacking:
            await one.artifacts.get("m", str(tmp_path / "out"), version=put_b.version, fetch=False)
        assert not (tmp_path / "out").exists()
        assert lacking.value.bytes_missing > 0
        await one.artifacts.get("m", str(tmp_path / "out"), version=put_b.version)
        assert _sha(tmp_path / "out") == _sha(tmp_path / "b")


def test_put_get_ls_and_diff_on_one_node(tmp_path: Path) -> None:
    asyncio.run(_put_get_ls_and_diff_on_one_node(tmp_path))


def test_delete_moves_latest_and_collect_frees_the_chunks(tmp_path: Path) -> None:
    asyncio.run(_delete_moves_latest_and_collect_frees_the_chunks(tmp_path))


def test_bad_names_refs_and_limits_are_refused(tmp_path: Path) -> None:
    asyncio.run(_bad_names_refs_and_limits_are_refused(tmp_path))


def test_concurrent_versions_on_two_nodes_merge_and_each_node_fetches_the_other(
    tmp_path: Path,
) -> None:
    asyncio.run(_concurrent_versions_on_two_nodes_merge_and_each_node_fetches_the_other(tmp_path))
