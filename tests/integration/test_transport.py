"""ZmqTransport over real sockets: one SUB socket per publisher, and its life cycle."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest
import zmq
from zmq_support import free_endpoint, wait_until

from crdtsync.transport.zmq_transport import (
    DEALER_RECONNECT_IVL_MAX_MS,
    DEALER_RECONNECT_IVL_MS,
    RECEIVE_DRAIN_FRAMES_MAX,
    ZmqTransport,
    topic,
)

pytestmark = pytest.mark.integration


@asynccontextmanager
async def _subscribed(
    on_frame: Callable[[bytes, str | None], None], on_batch_done: Callable[[], None]
) -> AsyncIterator[tuple[ZmqTransport, zmq.Socket[bytes], str]]:
    """A plaintext transport receiving with these callbacks, and a PUB socket at an endpoint it is
    subscribed to (`publish_until` sends on it)."""
    transport = ZmqTransport(free_endpoint(), None)
    context = zmq.Context()
    publisher: zmq.Socket[bytes] = context.socket(zmq.PUB)
    publisher.setsockopt(zmq.LINGER, 0)
    publish_endpoint = free_endpoint()
    publisher.bind(publish_endpoint)
    try:
        transport.start_receiving(on_frame, on_batch_done)
        transport.subscribe(publish_endpoint, "tcp://127.0.0.1:1")
        yield transport, publisher, publish_endpoint
        await transport.stop_receiving()
    finally:
        transport.close()
        publisher.close(linger=0)
        context.term()


async def publish_until(publisher: zmq.Socket[bytes], arrived: Callable[[], bool]) -> None:
    def published() -> bool:
        publisher.send_multipart([topic(dc_only=False), b"frame"])  # dropped until the SUB is connected
        return arrived()

    await wait_until(published, 10.0, "the subscription received a frame")


def test_a_subscription_closed_by_its_own_reader_stops_that_reader_cleanly() -> None:
    """The node's effects run inside a reader's `on_batch_done`, and may unsubscribe the very
    publisher whose frames are being handled: that reader must stop watching, not fail on its closed
    socket."""

    async def scenario() -> None:
        failures: list[object] = []
        asyncio.get_running_loop().set_exception_handler(
            lambda _loop, context: failures.append(context.get("exception"))
        )
        received: list[bytes] = []
        unsubscribe: list[Callable[[], None]] = []

        def on_batch_done() -> None:
            if received:
                unsubscribe[0]()

        async with _subscribed(lambda frame, _key: received.append(frame), on_batch_done) as (
            transport,
            publisher,
            endpoint,
        ):
            unsubscribe.append(lambda: transport.unsubscribe(endpoint))
            subscription = transport._subscriptions[endpoint]
            await publish_until(publisher, lambda: bool(received))
            await wait_until(lambda: not subscription.reader.watching, 10.0, "the reader stopped")
            assert endpoint not in transport._subscriptions
            assert subscription.socket.closed
            await asyncio.sleep(0)  # a continuation the reader had scheduled would fail here
        assert failures == []

    asyncio.run(scenario())


def test_frames_queued_beyond_one_drain_all_arrive_without_another_wakeup() -> None:
    """ZeroMQ's descriptor signals once for many queued frames: a reader that stops after
    RECEIVE_DRAIN_FRAMES_MAX frames (to let other callbacks run) must come back for the rest by
    itself, and flush the node after each batch."""

    async def scenario() -> None:
        received: list[bytes] = []
        batches: list[int] = []

        def on_batch_done() -> None:
            batches.append(len(received) - sum(batches))

        async with _subscribed(lambda frame, _key: received.append(frame), on_batch_done) as (
            _transport,
            publisher,
            _endpoint,
        ):
            await publish_until(publisher, lambda: bool(received))
            frames = [f"frame {i}".encode() for i in range(3 * RECEIVE_DRAIN_FRAMES_MAX + 1)]
            for frame in frames:  # all sent within one turn of the loop: no reader runs meanwhile
                publisher.send_multipart([topic(dc_only=False), frame])
            await wait_until(lambda: received[-1:] == frames[-1:], 10.0, "every frame arrived")
            assert [
                frame for frame in received if frame != b"frame"
            ] == frames  # publish_until's are b"frame"
            assert max(batches) <= RECEIVE_DRAIN_FRAMES_MAX
            assert sum(batches) == len(received)

    asyncio.run(scenario())


def test_a_publisher_is_subscribed_once_and_its_frames_carry_no_key_without_curve() -> None:
    async def scenario() -> None:
        keys: list[str | None] = []
        async with _subscribed(lambda _frame, key: keys.append(key), lambda: None) as (
            transport,
            publisher,
            endpoint,
        ):
            transport.subscribe(endpoint, "tcp://127.0.0.1:1")  # again: still one socket
            assert len(transport._subscriptions) == 1
            await publish_until(publisher, lambda: bool(keys))
            assert set(keys) == {None}

    asyncio.run(scenario())


def test_a_peer_restarted_on_the_same_port_gets_requests_again() -> None:
    """Requests to a peer that restarted on its port reach the new process: the request socket
    reconnects by itself (every DEALER_RECONNECT_IVL_MS, backing off to DEALER_RECONNECT_IVL_MAX_MS
    while the peer stays away), and what was sent while it was away is dropped and counted."""

    async def scenario() -> None:
        transport = ZmqTransport(free_endpoint(), None)
        context = zmq.Context()
        address = free_endpoint()

        def peer() -> zmq.Socket[bytes]:
            router: zmq.Socket[bytes] = context.socket(zmq.ROUTER)
            router.setsockopt(zmq.LINGER, 0)
            router.bind(address)
            return router

        def delivered(router: zmq.Socket[bytes]) -> bool:
            transport.send(address, b"request")  # dropped while the request socket is not connected
            return router.poll(0) != 0 and router.recv_multipart()[-1] == b"request"

        first = peer()
        try:
            await wait_until(lambda: delivered(first), 10.0, "the first process got a request")
            dealer = transport._dealers[address]
            assert dealer.getsockopt(zmq.RECONNECT_IVL) == DEALER_RECONNECT_IVL_MS
            assert dealer.getsockopt(zmq.RECONNECT_IVL_MAX) == DEALER_RECONNECT_IVL_MAX_MS
            first.close(linger=0)
            drops_before = transport.send_drops

            def dropped() -> bool:
                transport.send(address, b"lost")
                return transport.send_drops > drops_before

            await wait_until(dropped, 10.0, "a request to the stopped peer was dropped")
            second = peer()
            try:
                await wait_until(lambda: delivered(second), 10.0, "the restarted process got a request")
                assert transport._dealers[address] is dealer  # reconnected, not replaced
            finally:
                second.close(linger=0)
        finally:
            first.close(linger=0)
            transport.close()
            context.term()

    asyncio.run(scenario())
