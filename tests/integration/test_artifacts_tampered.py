"""A tampered chunk reaching a real daemon: `crdtsync serve` (an OS process, SQLite data dir) in dc2
gets a version from a node of dc1 that sends bytes not matching their ids (a library Node in this
process, over ZeroMQ on 127.0.0.1, whose chunk reads are altered). The daemon stores none of them,
strikes the sender, and answers the get with a clear error naming what it lacks, never a truncated
file."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from daemon_support import Daemon, wait_until
from test_artifacts_daemons import ArtifactDaemon
from test_artifacts_transfer import FAST
from zmq_support import free_endpoint

from crdtsync import Node, NodeConfig
from crdtsync.testing.safetensors import write_safetensors

pytestmark = pytest.mark.integration

WAIT_S = 30.0


def _transfer(daemon: Daemon) -> dict[str, int]:
    counters: dict[str, int] = daemon.get_json("/v1/artifacts")["transfer"]
    return counters


async def _scenario(tmp_path: Path, daemon: ArtifactDaemon) -> None:
    listen = free_endpoint()
    daemon.peers = [listen]
    config = NodeConfig(
        node_id="liar",
        listen=listen,
        peers=[daemon.listen],
        data_dir=str(tmp_path / "liar"),
        dc="dc1",
        replication=FAST,
    )
    async with Node(config) as liar:
        await asyncio.to_thread(daemon.start)
        await asyncio.to_thread(daemon.wait_healthy)
        honest = liar.artifacts.transfer._read

        def tampering(chunk_ids: tuple[bytes, ...]) -> tuple[Any, tuple[bytes, ...]]:
            chunks, not_sent = honest(chunk_ids)
            return tuple((chunk, b"X" + data[1:]) for chunk, data in chunks), not_sent

        liar.artifacts.transfer._read = tampering  # type: ignore[method-assign]
        write_safetensors(str(tmp_path / "v1"), {f"layers.{i}.weight": bytes([i]) * 50_000 for i in range(8)})
        put = await liar.artifacts.put("ckpt/bad", str(tmp_path / "v1"))

        def listed() -> bool:
            response = daemon.client.get("/v1/artifacts/ckpt/bad")
            return response.status_code == 200 and any(
                v["version"] == put.version for v in response.json()["versions"]
            )

        await asyncio.to_thread(wait_until, listed, WAIT_S, "the manifest reached the daemon")
        got = await asyncio.to_thread(
            daemon.client.get, f"/v1/artifacts/ckpt/bad/versions/{put.version}", timeout=WAIT_S
        )
        assert got.status_code == 409, got.text
        body = got.json()
        print(f"answer: {got.status_code} {body}")
        assert body["error"]["code"] == "incomplete" and body["error"]["chunks_missing"] >= 1
        assert "struck" in body["error"]["message"]
        counters = _transfer(daemon)
        assert counters["chunks_refused"] >= 1 and counters["holders_struck"] >= 1
        assert counters["bytes_fetched"] == 0  # nothing unverified was stored
        listing = daemon.get_json("/v1/artifacts/ckpt/bad")["versions"]
        assert "b1" not in listing[0]["complete_on"]


def test_a_daemon_refuses_a_tampered_chunk_strikes_its_sender_and_says_what_it_lacks(tmp_path: Path) -> None:
    daemon = ArtifactDaemon("b1", tmp_path / "b1", dc="dc2")
    daemon.artifacts = {"attempts_max": 2, "request_timeout_ms": 3000.0, "prefetch_interval_s": 0.0}
    try:
        asyncio.run(_scenario(tmp_path, daemon))
    finally:
        daemon.kill()
