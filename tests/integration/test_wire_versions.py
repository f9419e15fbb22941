"""Rolling upgrades on real ZeroMQ sockets on 127.0.0.1: a node pinned to wire version 1 (what
releases before negotiation speak), 2 (before compact causal metadata) or 3 (before anti-entropy
cells and leaves) and nodes of the current version replicate both ways; a peer that speaks no
common version is refused, counted and never linked."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import struct
import zlib
from collections.abc import AsyncIterator, Sequence

import pytest
import zmq
from pycrdt import Map
from zmq_support import free_endpoint, wait_until

from crdtsync import Node, NodeConfig, ReplicaConfig
from crdtsync.core import wire
from crdtsync.core.placement import PLACEMENT_VERSION

pytestmark = pytest.mark.integration

FAST = ReplicaConfig(
    heartbeat_interval_ms=100.0,
    hello_interval_ms=100.0,
    tick_interval_ms=20.0,
    retransmit_timeout_ms=100.0,
    ae_round_timeout_ms=500.0,
)

TIMEOUT_S = 15.0


@contextlib.asynccontextmanager
async def _running(*configs: NodeConfig) -> AsyncIterator[list[Node]]:
    async with contextlib.AsyncExitStack() as stack:
        yield [await stack.enter_async_context(Node(config)) for config in configs]


def _versions(node: Node) -> dict[str | None, int | None]:
    return {peer.node_id: peer.wire_version for peer in node.status().peers}


def _values(node: Node, doc_id: str) -> dict[str, object]:
    if not node.has_doc(doc_id):
        return {}
    return dict(node._replica.open_doc(doc_id).get("data", type=Map).to_py() or {})


@pytest.mark.parametrize("pinned", [1, 2, 3])
def test_a_node_pinned_to_an_older_version_and_current_nodes_replicate_both_ways(pinned: int) -> None:
    listens = [free_endpoint() for _ in range(3)]
    names = ["new-a", "new-b", "old"]

    def config(index: int) -> NodeConfig:
        return NodeConfig(
            node_id=names[index],
            listen=listens[index],
            peers=[listen for listen in listens if listen != listens[index]],
            replication=dataclasses.replace(FAST, wire_version_max=pinned) if names[index] == "old" else FAST,
        )

    async def scenario() -> None:
        async with _running(config(0), config(1), config(2)) as nodes:
            new_a, new_b, old = nodes
            current = wire.WIRE_VERSION
            expected = {
                "new-a": {"new-b": current, "old": pinned},
                "new-b": {"new-a": current, "old": pinned},
            }
            await wait_until(
                lambda: (
                    all(_versions(n) == expected[n.config.node_id] for n in (new_a, new_b))
                    and _versions(old) == {"new-a": pinned, "new-b": pinned}
                ),
                TIMEOUT_S,
                lambda: f"links negotiated: {[_versions(n) for n in nodes]}",
            )
            for index, node in enumerate(nodes):
                (await node.open("doc")).get("data", type=Map)[node.config.node_id] = index
                node.release("doc")
            everything = {name: index for index, name in enumerate(names)}
            await wait_until(
                lambda: all(_values(node, "doc") == everything for node in nodes),
                TIMEOUT_S,
                lambda: f"every write on every node: {[_values(n, 'doc') for n in nodes]}",
            )
            # The pinned node read everything it was sent: only the current-version copies of the
            # new nodes' greetings were refused, by version.
            old_errors = old.status().counters.wire_errors
            assert set(old_errors) <= {"bad_version"}, old_errors
            for node in (new_a, new_b):
                assert node.status().counters.wire_errors == {}, node.status().counters.wire_errors

    asyncio.run(scenario())


def _frame_of_version(version: int) -> bytes:
    """A frame whose version byte is `version` (the rest a version-1 heartbeat)."""
    body = b"\x93\xa7mallory\x01\x00"
    return struct.pack("!2sBBBII", b"CS", version, 4, 0, len(body), zlib.crc32(body)) + body


def test_a_peer_announcing_version_99_is_refused_and_counted() -> None:
    listen, mallory_listen, mallory_publish = free_endpoint(), free_endpoint(), free_endpoint()

    async def scenario() -> None:
        context = zmq.Context()
        dealer = context.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        try:
            async with _running(NodeConfig(node_id="a", listen=listen, replication=FAST)) as (a,):
                dealer.connect(listen)  # queued until the connection is up (no ZMQ_IMMEDIATE)
                dealer.send(_frame_of_version(99))
                hello = wire.Hello(
                    "mallory",
                    1,
                    mallory_listen,
                    mallory_publish,
                    0,
                    "default",
                    placement_version=PLACEMENT_VERSION,
                    wire_version_min=99,
                    wire_version_max=99,
                )
                dealer.send(wire.encode(hello))
                await wait_until(
                    lambda: (
                        a.status().counters.hellos_refused_version == 1
                        and a.status().counters.wire_errors.get("bad_version") == 1
                    ),
                    TIMEOUT_S,
                    lambda: f"a refused both: {a.status().counters}",
                )
                peers: Sequence[str | None] = [peer.node_id for peer in a.status().peers]
                assert "mallory" not in peers
                assert "mallory" not in [member.node_id for member in a.status().members]
        finally:
            dealer.close(linger=0)
            context.term()

    asyncio.run(scenario())
