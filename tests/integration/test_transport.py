"""ZmqTransport over real sockets: one SUB socket per publisher, and its life cycle."""

from __future__ import annotations

import asyncio

import pytest
import zmq
from zmq_support import free_endpoint, wait_until

from crdtsync.transport.zmq_transport import WAN_TOPIC, ZmqTransport

pytestmark = pytest.mark.integration


def test_a_subscription_closed_by_its_own_receive_loop_ends_that_loop_cleanly() -> None:
    """The node's effects run inside a receive loop's `on_batch_done`, and may unsubscribe the very
    publisher whose frames are being handled: that loop must end, not fail on its closed socket."""

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        failures: list[object] = []
        loop.set_exception_handler(lambda _loop, context: failures.append(context.get("exception")))
        transport = ZmqTransport(free_endpoint(), None)
        context = zmq.Context()
        publisher = context.socket(zmq.PUB)
        publisher.setsockopt(zmq.LINGER, 0)
        publish_endpoint = free_endpoint()
        publisher.bind(publish_endpoint)
        received: list[bytes] = []

        def on_batch_done() -> None:
            if received:
                transport.unsubscribe(publish_endpoint)

        try:
            transport.start_receiving(lambda frame, _key: received.append(frame), on_batch_done)
            transport.subscribe(publish_endpoint, "tcp://127.0.0.1:1")
            subscription = transport._subscriptions[publish_endpoint]

            def published() -> bool:
                publisher.send_multipart([WAN_TOPIC, b"frame"])  # dropped until the SUB is connected
                return bool(received)

            await wait_until(published, 10.0, "the subscription received a frame")
            await wait_until(subscription.task.done, 10.0, "the unsubscribed loop ended")
            assert publish_endpoint not in transport._subscriptions
            assert subscription.task.cancelled() or subscription.task.exception() is None
            assert subscription.socket.closed
            await transport.stop_receiving()
            assert failures == []
        finally:
            transport.close()
            publisher.close(linger=0)
            context.term()

    asyncio.run(scenario())


def test_a_publisher_is_subscribed_once_and_its_frames_carry_no_key_without_curve() -> None:
    """Without CurveZMQ a subscription has no key to hand on: frames come with None."""

    async def scenario() -> None:
        transport = ZmqTransport(free_endpoint(), None)
        context = zmq.Context()
        publisher = context.socket(zmq.PUB)
        publisher.setsockopt(zmq.LINGER, 0)
        publish_endpoint = free_endpoint()
        publisher.bind(publish_endpoint)
        keys: list[str | None] = []
        try:
            transport.start_receiving(lambda _frame, key: keys.append(key), lambda: None)
            transport.subscribe(publish_endpoint, "tcp://127.0.0.1:1")
            transport.subscribe(publish_endpoint, "tcp://127.0.0.1:1")  # twice: still one socket
            assert len(transport._subscriptions) == 1

            def published() -> bool:
                publisher.send_multipart([WAN_TOPIC, b"frame"])
                return bool(keys)

            await wait_until(published, 10.0, "the subscription received a frame")
            assert set(keys) == {None}
            await transport.stop_receiving()
        finally:
            transport.close()
            publisher.close(linger=0)
            context.term()

    asyncio.run(scenario())
