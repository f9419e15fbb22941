"""SIGTERM with a client stalled in the middle of a PUT body: the daemon stops within
`SHUTDOWN_REQUESTS_TIMEOUT_S`, not when the client gives up (aiohttp waits 60 s by default), and a
write answered before the stop survives the restart."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from crdtsync.daemon.server import SHUTDOWN_REQUESTS_TIMEOUT_S
from crdtsync.testing.cluster import LocalCluster, LocalDaemon

pytestmark = pytest.mark.integration

STOP_TIMEOUT_S = 10 * SHUTDOWN_REQUESTS_TIMEOUT_S
"""Far more than the bound, far less than aiohttp's 60 s: an exit within it is the bound at work."""
STALLED_CLIENTS = 3


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster[LocalDaemon]]:
    with LocalCluster.named(str(tmp_path), ["n1"], note="test_stop_stalled_body") as made:
        yield made


def stall_mid_body(port: int) -> socket.socket:
    """Send the headers of a PUT and the first bytes of its 100-byte body, then nothing."""
    client = socket.create_connection(("127.0.0.1", port), timeout=5.0)
    client.sendall(
        b"PUT /v1/docs/stall/keys/k HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b'Content-Length: 100\r\n\r\n{"half": "'
    )
    return client


def test_sigterm_stops_the_daemon_within_the_bound_while_clients_stall_mid_body(
    cluster: LocalCluster[LocalDaemon],
) -> None:
    daemon = cluster["n1"]
    cluster.start_all()
    cluster.wait_healthy()
    assert cluster.put("n1", "stop/doc", "before", {"answered": True})
    stalled = [stall_mid_body(daemon.http_port) for _ in range(STALLED_CLIENTS)]
    try:
        # A round trip on another connection: the stalled requests' headers were read before it.
        assert cluster.client.get(f"{daemon.url}/health").status_code == 200
        assert daemon.process is not None
        started = time.monotonic()
        status = cluster.terminate("n1", STOP_TIMEOUT_S)
        stopped_s = time.monotonic() - started
        print(f"stopped {stopped_s:.2f} s after SIGTERM with {STALLED_CLIENTS} clients stalled mid-body")
        assert status == 0, (
            f"exit status {status} ({stopped_s:.1f} s after SIGTERM; None: killed after the timeout)"
        )
        for client in stalled:  # none of the half-sent writes was acknowledged
            client.settimeout(5.0)
            try:
                answer = client.recv(65536)
            except ConnectionResetError:
                answer = b""
            assert b" 200 " not in answer.split(b"\r\n", 1)[0], answer[:200]
    finally:
        for client in stalled:
            client.close()
    cluster.restart("n1")
    cluster.wait_healthy()
    assert cluster.verify_acks() == []
