"""Artifacts across real daemons in two datacenters (OS processes, SQLite data dirs, ZeroMQ on
127.0.0.1): put in dc1, get in dc2 byte-identical; a second version with a few changed tensors moves
only those chunks (the transfer counters); kill -9 of the receiver during a get, restart, and the get
completes without fetching again what was committed before the kill."""

from __future__ import annotations

import contextlib
import hashlib
import random
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest
from daemon_support import Daemon, DaemonPool, start_mesh, wait_until

from crdtsync.daemon.config import ConfigError, load_config
from crdtsync.testing.cluster import toml_text
from crdtsync.testing.safetensors import safetensors_bytes

pytestmark = pytest.mark.integration

WAN_BYTES_PER_S = 4_000_000
"""dc2's cap on what it asks of dc1: slow enough that a kill lands in the middle of a get."""
WAIT_S = 30.0


class ArtifactDaemon(Daemon):
    """A daemon with an `[artifacts]` table in its config."""

    artifacts: dict[str, Any]

    def config_path(self, peers: list[str], listen: str) -> Path:
        path = super().config_path(peers, listen)
        path.write_text(path.read_text() + toml_text({}, {"artifacts": self.artifacts}))
        return path


@pytest.fixture(scope="module")
def daemons(pool: DaemonPool) -> tuple[Daemon, Daemon]:
    made: list[Daemon] = []
    for name, dc in (("a1", "dc1"), ("b1", "dc2")):
        daemon = ArtifactDaemon(name, pool.root / name, dc=dc)
        # Collection every 0.2 s with no grace runs under every test here: it must never take a
        # chunk a version, a put or a transfer needs.
        daemon.artifacts = {
            "wan_link_bytes_per_s": WAN_BYTES_PER_S,
            "commit_bytes": 1 << 20,
            "collect_interval_s": 0.2,
            "collect_grace_s": 0.0,
            "prefetch_interval_s": 0.0,  # the gets here are what fetches (b1 is dc2's fetcher)
        }
        pool.daemons.append(daemon)
        made.append(daemon)
    start_mesh(made)
    return made[0], made[1]


def _tensors(seed: int, count: int, size: int) -> dict[str, bytes]:
    rng = random.Random(seed)
    return {f"layers.{i}.weight": rng.randbytes(size) for i in range(count)}


def _transfer(daemon: Daemon) -> dict[str, int]:
    counters: dict[str, int] = daemon.get_json("/v1/artifacts")["transfer"]
    return counters


def _listed(daemon: Daemon, name: str, version: str) -> bool:
    response = daemon.client.get(f"/v1/artifacts/{name}")
    return response.status_code == 200 and any(v["version"] == version for v in response.json()["versions"])


def _put(daemon: Daemon, name: str, body: bytes) -> dict[str, Any]:
    response = daemon.client.put(f"/v1/artifacts/{name}", content=body)
    assert response.status_code == 201, response.text
    answer: dict[str, Any] = response.json()
    return answer


def test_put_in_dc1_get_in_dc2_then_only_changed_tensors_move(
    daemons: tuple[Daemon, Daemon],
) -> None:
    a1, b1 = daemons
    tensors = _tensors(1, 24, 40_000)
    first_bytes = safetensors_bytes(tensors)
    first = _put(a1, "ckpt/ft", first_bytes)
    wait_until(lambda: _listed(b1, "ckpt/ft", first["version"]), WAIT_S, "the manifest reached dc2")
    got = b1.client.get("/v1/artifacts/ckpt/ft/versions/latest", timeout=WAIT_S)
    assert got.status_code == 200, got.text
    assert hashlib.sha256(got.content).digest() == hashlib.sha256(first_bytes).digest()
    after_first = _transfer(b1)
    assert after_first["bytes_fetched"] == first["bytes_new"]  # every chunk and the table, once
    assert after_first["bytes_fetched_wan"] == after_first["bytes_fetched"]

    for index in (3, 8, 20):
        tensors[f"layers.{index}.weight"] = random.Random(50 + index).randbytes(40_000)
    second_bytes = safetensors_bytes(tensors)
    second = _put(a1, "ckpt/ft", second_bytes)
    assert 120_000 <= second["bytes_new"] < 130_000
    wait_until(lambda: _listed(b1, "ckpt/ft", second["version"]), WAIT_S, "the second manifest reached dc2")
    got = b1.client.get(f"/v1/artifacts/ckpt/ft/versions/{second['version']}", timeout=WAIT_S)
    assert hashlib.sha256(got.content).digest() == hashlib.sha256(second_bytes).digest()
    moved = _transfer(b1)["bytes_fetched"] - after_first["bytes_fetched"]
    assert moved == second["bytes_new"]  # the three tensors, the header and the table piece
    listed = b1.get_json("/v1/artifacts/ckpt/ft")["versions"]
    assert [v["complete_on"] for v in listed] == [["a1", "b1"], ["a1", "b1"]]


def test_a_get_cut_by_kill_9_resumes_without_fetching_again(
    daemons: tuple[Daemon, Daemon],
) -> None:
    a1, b1 = daemons
    body = safetensors_bytes(_tensors(7, 12, 1_000_000))  # 12 MB: 3 s at the WAN cap
    put = _put(a1, "ckpt/big", body)
    wait_until(lambda: _listed(b1, "ckpt/big", put["version"]), WAIT_S, "the manifest reached dc2")
    fetched_before = _transfer(b1)["bytes_fetched"]
    url = f"{b1.url}/v1/artifacts/ckpt/big/versions/latest"

    def get_until_killed() -> None:
        with contextlib.suppress(httpx.HTTPError):  # the daemon dies under it
            httpx.get(url, timeout=WAIT_S, trust_env=False)

    getter = threading.Thread(target=get_until_killed, daemon=True)
    getter.start()
    wait_until(
        lambda: _transfer(b1)["bytes_fetched"] - fetched_before >= 4_000_000,
        WAIT_S,
        "4 MB of the get arrived",
    )
    b1.kill()
    getter.join(WAIT_S)
    b1.start()
    b1.wait_healthy()
    wait_until(b1.peers_up, WAIT_S, "b1 sees a1 again")
    stored_after_restart = b1.get_json("/v1/artifacts")["store"]["bytes_stored"]
    assert stored_after_restart >= 3_000_000  # what was committed before the kill survived it
    got = b1.client.get("/v1/artifacts/ckpt/big/versions/latest", timeout=WAIT_S)
    assert got.status_code == 200, got.text
    assert hashlib.sha256(got.content).digest() == hashlib.sha256(body).digest()
    refetched = _transfer(b1)["bytes_fetched"]  # counters restart with the process
    assert refetched <= put["bytes_new"] - 3_000_000, (refetched, put["bytes_new"])
    assert refetched + stored_after_restart >= put["bytes_new"]


def test_the_daemon_collects_the_chunks_of_a_deleted_version(daemons: tuple[Daemon, Daemon]) -> None:
    a1, _ = daemons
    first = _put(a1, "gc/model", safetensors_bytes(_tensors(11, 6, 50_000)))
    second_body = safetensors_bytes(_tensors(12, 6, 50_000))
    second = _put(a1, "gc/model", second_body)
    stored = a1.get_json("/v1/artifacts")["store"]["bytes_stored"]
    assert a1.client.delete(f"/v1/artifacts/gc/model/versions/{first['version']}").status_code == 200
    wait_until(
        # its six tensors (the header chunk is the same in both versions, and stays)
        lambda: a1.get_json("/v1/artifacts")["store"]["bytes_stored"] <= stored - 6 * 50_000,
        WAIT_S,
        "the daemon collected the deleted version's chunks",
    )
    got = a1.client.get("/v1/artifacts/gc/model/versions/latest")
    assert got.content == second_body and got.headers["X-Artifact-Version"] == second["version"]


def test_a_bad_artifacts_table_is_a_config_error() -> None:
    overrides: dict[str, Any] = {"node_id": "x"}
    with pytest.raises(ConfigError, match=r"artifacts: window_requests must be in 1\.\.256"):
        load_config(None, overrides, ['security.mode="plaintext"', "artifacts.window_requests=0"])
    with pytest.raises(ConfigError, match=r"artifacts\.nonsense: unknown key"):
        load_config(None, overrides, ['security.mode="plaintext"', "artifacts.nonsense=1"])
