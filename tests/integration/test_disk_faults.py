"""Disk faults on a real daemon with its SQLite store on disk: a data dir on a small tmpfs that fills
up, and I/O errors on every write (RLIMIT_FSIZE lowered on the running process). Each time the
daemon keeps running, answers the writes it could not commit 507 `store_full` or 503
`store_unavailable`, reports not ready on /health, counts them, commits again by itself once the
fault is gone, and after a kill -9 and a restart holds every write it acknowledged. A y-websocket
client's update during the fault is refused too (close 1013, try again later)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest
from pycrdt import Doc, Map, create_update_message

from crdtsync.testing.cluster import AckedWrite, LocalCluster, LocalDaemon, wait_until
from crdtsync.testing.diskfaults import DiskFaultError, SmallDisk, io_errors

pytestmark = pytest.mark.integration

DISK_BYTES = 8 << 20
VALUE_BYTES = 32 * 1024
WRITES_MAX = 2 * DISK_BYTES // VALUE_BYTES
"""More writes of VALUE_BYTES than the disk can hold: the one that fails comes before the bound."""
RECOVER_TIMEOUT_S = 15.0
DOC = "disk/log"


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster[LocalDaemon]]:
    with LocalCluster.named(str(tmp_path), ["n1"], note="test_disk_faults") as made:
        yield made


def attempt(cluster: LocalCluster[LocalDaemon], key: str, value: Any) -> httpx.Response:
    """PUT one key, logged like `LocalCluster.put`: a write answered 200 must be on the node at the end."""
    daemon = cluster["n1"]
    write = AckedWrite("n1", cluster.acks.next_seq("n1"), DOC, key, value, True, daemon.starts)
    response = cluster.client.put(f"{daemon.url}/v1/docs/{DOC}/keys/{key}", json=value)
    cluster.acks.record(write, response)
    return response


def put(cluster: LocalCluster[LocalDaemon], key: str, value: Any) -> None:
    response = attempt(cluster, key, value)
    assert response.status_code == 200, f"the write of {key} was not acknowledged: {response.text}"


def metric(cluster: LocalCluster[LocalDaemon], name: str) -> float:
    text = cluster.client.get(f"{cluster['n1'].url}/metrics").text
    values = [float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " ")]
    assert values, f"{name} is not in /metrics"
    return values[0]


def assert_refused_then_recovers(cluster: LocalCluster[LocalDaemon], status: int, code: str) -> None:
    """While the store is failing: /health says not ready, a write is refused at once, and both the
    failed commits and the refused writes are counted."""
    health = cluster.client.get(f"{cluster['n1'].url}/health")
    assert health.status_code == 503 and health.json()["status"] == code, health.text
    refused = attempt(cluster, "refused-at-once", "x")
    assert refused.status_code == status and refused.json()["error"]["code"] == code, refused.text
    assert metric(cluster, "crdtsync_store_commit_failures_total") >= 1
    assert metric(cluster, "crdtsync_http_writes_not_durable_total") >= 2


async def websocket_update_close_code(url: str) -> int | None:
    """Send one update over the node's y-websocket endpoint; the close code it answers with."""
    written: Doc[Any] = Doc()
    updates: list[bytes] = []
    written.observe(lambda event: updates.append(event.update))
    written.get("data", type=Map)["from_ws"] = "not durable"
    ws_url = url.replace("http", "ws", 1) + "/v1/ws/disk/ws"
    async with aiohttp.ClientSession() as session, session.ws_connect(ws_url) as ws:
        await ws.send_bytes(create_update_message(updates[-1]))
        async with asyncio.timeout(RECOVER_TIMEOUT_S):
            async for _message in ws:
                pass  # the node's sync step 1, then the close
        return ws.close_code


def wait_ready(cluster: LocalCluster[LocalDaemon]) -> None:
    url = f"{cluster['n1'].url}/health"
    wait_until(
        lambda: cluster.client.get(url).status_code == 200,
        RECOVER_TIMEOUT_S,
        lambda: f"/health answers 200 again (it answers {cluster.client.get(url).text})",
    )


def kill_restart_and_verify(cluster: LocalCluster[LocalDaemon]) -> None:
    cluster.kill("n1")
    cluster.restart("n1")
    cluster.wait_healthy(["n1"])
    assert cluster.verify_acks() == []


def test_a_full_disk_refuses_writes_with_507_loses_nothing_acknowledged_and_recovers_when_space_is_freed(
    cluster: LocalCluster[LocalDaemon],
) -> None:
    daemon = cluster["n1"]
    try:
        disk = SmallDisk(daemon.data_dir, DISK_BYTES).start()
    except DiskFaultError as exc:
        pytest.skip(str(exc))
    try:
        daemon.command_prefix = disk.command_prefix()
        cluster.start_all()
        cluster.wait_healthy()
        for index in range(10):
            put(cluster, f"before-{index}", index)
        taken = disk.fill()
        assert taken > 0 and disk.free_bytes() == 0
        big = "x" * VALUE_BYTES
        answers = [attempt(cluster, f"full-{index}", big) for index in range(WRITES_MAX)]
        failed = next((answer for answer in answers if answer.status_code != 200), None)
        assert failed is not None, f"{WRITES_MAX} writes of {VALUE_BYTES} bytes fitted on a full disk"
        assert failed.status_code == 507, failed.text
        assert failed.json()["error"]["code"] == "store_full", failed.text
        assert "disk is full" in failed.json()["error"]["message"]
        assert_refused_then_recovers(cluster, 507, "store_full")
        assert daemon.running
        disk.free()
        wait_ready(cluster)
        put(cluster, "after", "space came back")
        kill_restart_and_verify(cluster)
    finally:
        cluster.stop_all()
        disk.close()


def test_io_errors_on_every_write_answer_503_lose_nothing_acknowledged_and_the_node_recovers(
    cluster: LocalCluster[LocalDaemon],
) -> None:
    daemon = cluster["n1"]
    cluster.start_all()
    cluster.wait_healthy()
    for index in range(10):
        put(cluster, f"before-{index}", index)
    assert daemon.pid is not None
    io_errors(daemon.pid)
    failed = attempt(cluster, "during", "an I/O error")
    assert failed.status_code == 503, failed.text
    assert failed.json()["error"]["code"] == "store_unavailable", failed.text
    assert "I/O error" in failed.json()["error"]["message"]
    assert_refused_then_recovers(cluster, 503, "store_unavailable")
    assert asyncio.run(websocket_update_close_code(daemon.url)) == 1013  # refused too, try again later
    assert metric(cluster, "crdtsync_websocket_closed_store_failing_total") == 1
    assert daemon.running
    io_errors(daemon.pid, False)
    wait_ready(cluster)
    put(cluster, "after", "the disk works again")
    kill_restart_and_verify(cluster)


def test_sigterm_while_the_store_fails_exits_0_and_keeps_every_acknowledged_write(
    cluster: LocalCluster[LocalDaemon],
) -> None:
    daemon = cluster["n1"]
    cluster.start_all()
    cluster.wait_healthy()
    for index in range(10):
        put(cluster, f"before-{index}", index)
    assert daemon.pid is not None
    io_errors(daemon.pid)
    failed = attempt(cluster, "during", "an I/O error")
    assert failed.status_code == 503, failed.text
    assert cluster.terminate("n1") == 0, "the daemon did not exit 0 on SIGTERM while its store failed"
    cluster.restart("n1")
    cluster.wait_healthy(["n1"])
    assert cluster.verify_acks() == []


def test_a_start_on_a_full_disk_fails_with_a_clear_error_and_the_next_start_has_every_write(
    cluster: LocalCluster[LocalDaemon],
) -> None:
    daemon = cluster["n1"]
    try:
        disk = SmallDisk(daemon.data_dir, DISK_BYTES).start()
    except DiskFaultError as exc:
        pytest.skip(str(exc))
    try:
        daemon.command_prefix = disk.command_prefix()
        cluster.start_all()
        cluster.wait_healthy()
        for index in range(10):
            put(cluster, f"before-{index}", index)
        cluster.kill("n1")
        disk.fill()
        cluster.restart("n1")
        assert daemon.process is not None
        assert daemon.process.wait(timeout=30.0) == 1
        log = Path(daemon.log_path).read_text()
        assert "its new epoch could not be committed (database or disk is full)" in log, log[-2000:]
        assert "Traceback" not in log, log[-2000:]
        disk.free()
        cluster.restart("n1")
        cluster.wait_healthy(["n1"])
        assert cluster.verify_acks() == []
    finally:
        cluster.stop_all()
        disk.close()
