"""Forwarded requests between two real nodes (ZeroMQ on 127.0.0.1), at the library level: a node
that does not hold a doc has its holder serve a request with the handler installed there and gets
the answer back; a handler that fails declines the request, one that does not answer in time leaves
it to the asking node, and a holder with no handler declines at once. Each outcome is counted."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
from zmq_support import free_endpoint, wait_until

from crdtsync import MembershipConfig, Node, NodeConfig, PlacementPolicy, PlacementRule, ReplicaConfig
from crdtsync.core.forward import ForwardRequest
from crdtsync.forwarding import ForwardAsk, Served

pytestmark = pytest.mark.integration

FAST = ReplicaConfig(heartbeat_interval_ms=100.0, hello_interval_ms=100.0, tick_interval_ms=20.0)
GOSSIP = MembershipConfig(gossip_interval_ms=100.0)
POLICY = PlacementPolicy((PlacementRule(1),))
TIMEOUT_S = 15.0
ASK = ForwardAsk("PUT", "/v1/docs/x/keys/k?write_acks=1", "application/json", b'"ab"')


@contextlib.asynccontextmanager
async def _pair() -> AsyncIterator[tuple[Node, Node]]:
    listens = [free_endpoint(), free_endpoint()]
    configs = [
        NodeConfig(
            node_id=f"n{i}",
            listen=listen,
            peers=[listens[1 - i]],
            replication=FAST,
            membership=GOSSIP,
            placement=POLICY,
        )
        for i, listen in enumerate(listens)
    ]
    async with Node(configs[0]) as first, Node(configs[1]) as second:
        yield first, second


def _alive(node: Node) -> bool:
    return any(member.state == "alive" for member in node.status().members)


def test_a_holder_serves_a_forwarded_request_and_every_failure_is_left_to_the_asker() -> None:
    asyncio.run(_scenario())


async def _scenario() -> None:
    async with _pair() as (asker, holder):
        await wait_until(lambda: _alive(asker) and _alive(holder), TIMEOUT_S, "both nodes see each other")
        doc_id = next(f"d{i}" for i in range(100) if holder.holds(f"d{i}") and not asker.holds(f"d{i}"))
        await wait_until(
            lambda: asker.forwarding.target(doc_id) is not None, TIMEOUT_S, "the asker links to the holder"
        )
        seen: list[ForwardRequest] = []
        release = asyncio.Event()

        async def echo(request: ForwardRequest) -> Served:
            seen.append(request)
            if request.target == "/fail":
                raise RuntimeError("the handler failed")
            if request.target == "/slow":
                await release.wait()
            return Served(201, "text/plain", "holder", request.body[::-1])

        # No handler yet: declined at once, served where it arrived.
        assert await asker.forwarding.forward(doc_id, ASK, read=False, timeout_ms=5000) is None
        assert asker.forwarding.counters.requests_declined == 1

        holder.forwarding.handler = echo
        answer = await asker.forwarding.forward(doc_id, ASK, read=False, timeout_ms=5000)
        assert answer is not None
        node_id, reply = answer
        served = (node_id, reply.status, reply.content_type, reply.served_as, reply.body)
        assert served == (holder.config.node_id, 201, "text/plain", "holder", b'"ba"')
        assert (
            seen[-1].method == "PUT"
            and seen[-1].target == ASK.target
            and seen[-1].node_id == asker.config.node_id
        )

        failing = ForwardAsk("GET", "/fail", "", b"")
        assert await asker.forwarding.forward(doc_id, failing, read=True, timeout_ms=5000) is None
        slow = ForwardAsk("GET", "/slow", "", b"")
        assert await asker.forwarding.forward(doc_id, slow, read=True, timeout_ms=200) is None
        release.set()
        await wait_until(
            lambda: asker.forwarding.counters.replies_unexpected == 1, TIMEOUT_S, "the late answer arrives"
        )
        counters = asker.forwarding.counters
        assert (counters.requests_sent, counters.replies_received) == (4, 3)
        assert (counters.requests_declined, counters.requests_timed_out) == (2, 1)
        assert holder.forwarding.counters.requests_served == 2  # the echo and the late one
        assert holder.forwarding.counters.requests_refused_busy == 1  # no handler at first
        held_here = next(f"d{i}" for i in range(100) if asker.holds(f"d{i}") and not holder.holds(f"d{i}"))
        assert asker.forwarding.target(held_here) is None
