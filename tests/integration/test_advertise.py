"""Bind and advertise are separate: nodes bound to every interface (`0.0.0.0`) tell their peers the
address to use instead, for the request socket and for the PUB endpoint, and replicate through it."""

from __future__ import annotations

import asyncio
import contextlib
import re

import pytest
from pycrdt import Map
from zmq_support import wait_until

from crdtsync import Node, NodeConfig, ReplicaConfig
from crdtsync.testing.cluster import free_ports

pytestmark = pytest.mark.integration

FAST = ReplicaConfig(heartbeat_interval_ms=100.0, hello_interval_ms=100.0, tick_interval_ms=20.0)
TIMEOUT_S = 15.0


def test_wildcard_bound_nodes_advertise_reachable_addresses_and_replicate() -> None:
    asyncio.run(_scenario())


async def _scenario() -> None:
    ports = free_ports(2)
    advertised = [f"tcp://127.0.0.1:{port}" for port in ports]
    configs = [
        NodeConfig(
            node_id=f"n{i}",
            listen=f"tcp://0.0.0.0:{port}",
            advertise=advertised[i],
            peers=[advertised[1 - i]],
            replication=FAST,
        )
        for i, port in enumerate(ports)
    ]
    async with contextlib.AsyncExitStack() as stack:
        a, b = [await stack.enter_async_context(Node(config)) for config in configs]
        for node, address in ((a, advertised[0]), (b, advertised[1])):
            status = node.status()
            assert status.listen == address
            assert status.publish_endpoint.startswith("tcp://127.0.0.1:"), status.publish_endpoint
        await wait_until(
            lambda: (
                [p.address for p in a.status().peers] == [advertised[1]]
                and all(p.state == "alive" for n in (a, b) for p in n.status().peers)
            ),
            TIMEOUT_S,
            "the nodes linked through their advertised addresses",
        )
        doc = await a.open("flags")
        doc.get("data", type=Map)["on"] = True
        await wait_until(
            lambda: b.has_doc("flags"), TIMEOUT_S, "b received a's write over the advertised PUB"
        )
        assert (await b.open("flags")).get("data", type=Map).to_py() == {"on": True}


def test_a_wildcard_listen_without_advertise_is_refused() -> None:
    with pytest.raises(ValueError, match=re.escape("listen: 'tcp://0.0.0.0:7400' binds every interface")):
        NodeConfig(node_id="n", listen="tcp://0.0.0.0:7400")
