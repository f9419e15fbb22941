"""`source_host`: every outgoing replication connection (request DEALERs and SUBs) binds the configured
local address, so a listener sees it as the connection's source (what the fault proxy tells nodes
apart by on 127.0.0.1); the config key is checked naming it."""

from __future__ import annotations

import asyncio
import re
import socket
from pathlib import Path

import pytest

from crdtsync import NodeConfig
from crdtsync.daemon.config import ConfigError, load_config
from crdtsync.testing.cluster import free_ports
from crdtsync.transport.zmq_transport import ZmqTransport

pytestmark = pytest.mark.integration

ACCEPT_TIMEOUT_S = 5.0


def _listener(port: int) -> socket.socket:
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", port))
    server.listen(4)
    server.settimeout(ACCEPT_TIMEOUT_S)
    return server


def _accepted_source(server: socket.socket) -> str:
    connection, (host, _port) = server.accept()
    connection.close()
    return str(host)


@pytest.mark.parametrize("source_host", [None, "127.0.0.23"])
def test_outgoing_request_and_subscription_connections_bind_the_source_host(source_host: str | None) -> None:
    asyncio.run(_connect_from(source_host))


async def _connect_from(source_host: str | None) -> None:
    listen_port, request_port, publish_port = free_ports(3)
    transport = ZmqTransport(f"tcp://127.0.0.1:{listen_port}", None, None, source_host)
    requests, publisher = _listener(request_port), _listener(publish_port)
    try:
        transport.start_receiving(lambda _frame, _key: None, lambda: None)
        transport.send(f"tcp://127.0.0.1:{request_port}", b"x")
        transport.subscribe(f"tcp://127.0.0.1:{publish_port}", f"tcp://127.0.0.1:{request_port}")
        # accept() blocks (with its timeout) while ZeroMQ's I/O thread connects: off the event loop.
        sources = await asyncio.gather(
            asyncio.to_thread(_accepted_source, requests), asyncio.to_thread(_accepted_source, publisher)
        )
        # Without source_host the kernel picks 127.0.0.1 for every loopback destination.
        assert list(sources) == [source_host or "127.0.0.1"] * 2
        await transport.stop_receiving()
    finally:
        transport.close()
        requests.close()
        publisher.close()


def test_source_host_must_be_one_address(tmp_path: Path) -> None:
    assert NodeConfig(node_id="n", listen="tcp://127.0.0.1:7400", source_host="::1").source_host == "::1"
    for value, message in (
        ("localhost", "source_host: 'localhost' is not an IPv4 or IPv6 address"),
        ("0.0.0.0", "source_host: '0.0.0.0' binds every interface"),
    ):
        with pytest.raises(ValueError, match=re.escape(message)):
            NodeConfig(node_id="n", listen="tcp://127.0.0.1:7400", source_host=value)
    path = tmp_path / "crdtsync.toml"
    path.write_text('node_id = "n"\nsource_host = "127.0.0.5"\n')
    assert load_config(path, {}, ['security.mode="plaintext"']).node.source_host == "127.0.0.5"
    path.write_text('node_id = "n"\nsource_host = 5\n')
    with pytest.raises(ConfigError, match="source_host"):
        load_config(path, {}, ['security.mode="plaintext"'])
