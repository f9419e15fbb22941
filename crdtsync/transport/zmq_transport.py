"""ZeroMQ sockets of one node.

- ROUTER bound at the node's advertised `listen` address: receives every directed message.
- PUB bound at the publish endpoint (an ephemeral port on the listen host unless configured):
  deltas and heartbeats under the WAN topics, relayed deltas under the datacenter topics. A topic
  is `w` or `d` (WAN or datacenter), then `c` for frames every subscriber gets, `f` for those of the
  subscribers that take every bucket (whole batches), `i` for those of the others (sequence
  indexes), or `b` and a topic key as 4 bytes (deltas only some nodes want: a holder set's, or a
  placement bucket's for peers of wire version 1; see `core.outbound`).
- One SUB per subscription, connected to one peer's PUB endpoint (learned in the hello exchange):
  subscribed to both kinds for a peer of the same datacenter, to the WAN topics only for another
  datacenter's peer when this node is a relay; to every bucket (`c` and `f`), or to some (`c`, `i`
  and those keys). ZeroMQ filters topics at the publisher, so frames meant for one datacenter never
  cross the WAN and a holder set's deltas reach only the nodes that subscribe to it. A socket per publisher
  is what tells whose frame is whose: with CurveZMQ, every frame of a subscription comes with the
  public key the publisher proved at the handshake, as frames on the ROUTER come with their sender's.
- One DEALER per peer, connected to the peer's ROUTER, for directed messages. DEALERs use
  ZMQ_IMMEDIATE so that nothing queues for a peer that is not connected: the core retries on its
  own timers, and stale queued requests would only arrive late.

Sends never block: a full queue drops the frame and counts it (the protocol repairs loss).

Receiving sockets are plain ZeroMQ sockets whose descriptor the event loop watches (`add_reader`):
a frame reaches the node in the callback that the descriptor wakes, as it does in a bare
pycrdt+ZeroMQ mesh. Through zmq.asyncio it took a future and a task wakeup more (a turn of the
event loop) on every frame, which a paced writer's frames, each alone, paid in latency.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import zmq
import zmq.auth.thread

from crdtsync.core.effects import Audience
from crdtsync.core.wire import FRAME_BYTES_MAX
from crdtsync.transport.curve import Allowlist, CurveKeys, make_server, set_client_keys, start_authenticator
from crdtsync.transport.endpoint import parse_endpoint

log = logging.getLogger("crdtsync.transport")

WAN_TOPIC = b"w"
DC_TOPIC = b"d"
COMMON = b"c"
KEYED = b"b"
WHOLE = b"f"
INDEX = b"i"
SEND_QUEUE_FRAMES_MAX = 10_000
RECEIVE_QUEUE_FRAMES_MAX = 100_000
"""Frames queued on the request socket before ZeroMQ drops them."""
SUBSCRIPTION_QUEUE_FRAMES_MAX = 10_000
"""Frames queued per subscription (one publisher) before ZeroMQ drops them."""
RECEIVE_DRAIN_FRAMES_MAX = 256
"""Frames taken from a socket per wakeup before the driver gets a turn to flush effects."""
DEALER_RECONNECT_IVL_MS = 10
"""How soon a request socket reconnects to a peer whose connection dropped (a restart on the same
port). With IMMEDIATE, requests to a peer not connected are dropped, to come again only with a
retransmission or the next anti-entropy round: ZeroMQ's default of 100 ms dropped that long a
window of sync and retransmit requests at every restart of a peer."""
DEALER_RECONNECT_IVL_MAX_MS = 1000
"""The reconnect interval doubles up to this while a peer stays away: a dead peer costs a connect
attempt a second, not a hundred."""
DEALERS_MAX = 1024
"""Request sockets kept open; the oldest is closed beyond this (addresses come from remote hellos)."""
SUBSCRIPTIONS_MAX = 1024
"""Publishers subscribed to at once (the core keeps one per linked peer, fewer than this)."""
SOCKETS_MAX = DEALERS_MAX + SUBSCRIPTIONS_MAX + 8
"""ZeroMQ's per-context socket limit (its default, 1023, is below the bounds above)."""

_SNDMORE_NOBLOCK = zmq.SNDMORE | zmq.NOBLOCK

OnFrame = Callable[[bytes, "str | None"], None]
"""Takes a frame's payload and the CurveZMQ public key of its sender, when the transport knows it."""


def topic(*, dc_only: bool, topic_key: int | None = None, audience: Audience = "every") -> bytes:
    """The topic a frame is published under (see the module doc)."""
    kind = DC_TOPIC if dc_only else WAN_TOPIC
    if audience == "every":
        return kind + COMMON
    if audience == "whole":
        return kind + WHOLE
    return kind + INDEX if topic_key is None else kind + KEYED + topic_key.to_bytes(4, "big")


def topics(*, wan: bool, topic_keys: frozenset[int] | None) -> set[bytes]:
    """The topics a subscription takes (see the module doc)."""
    kinds = (WAN_TOPIC,) if wan else (WAN_TOPIC, DC_TOPIC)
    if topic_keys is None:
        return {kind + part for kind in kinds for part in (COMMON, WHOLE)}
    wanted = {kind + part for kind in kinds for part in (COMMON, INDEX)}
    wanted.update(kind + KEYED + key.to_bytes(4, "big") for kind in kinds for key in topic_keys)
    return wanted


class _Reader:
    """Hands every frame of one receiving socket to the node from the event loop's reader callback.

    ZeroMQ's descriptor signals that the socket's state may have changed, once: each wakeup takes
    what is queued until the socket says there is no more, or `RECEIVE_DRAIN_FRAMES_MAX` frames,
    then calls `on_batch_done` (the node flushes its effects) and, if frames were left, takes
    them in a later turn so that the other callbacks get theirs."""

    def __init__(
        self,
        sock: zmq.Socket[bytes],
        receiver: tuple[OnFrame, Callable[[], None]],
        publisher_key: str | None,
        *,
        identified: bool,
    ) -> None:
        self.socket = sock
        self._receiver: tuple[OnFrame, Callable[[], None]] | None = receiver
        self._publisher_key = publisher_key
        self._identified = identified
        self._loop = asyncio.get_running_loop()
        self._fd = cast(int, sock.getsockopt(zmq.FD))
        self._loop.add_reader(self._fd, self.drain)
        # Frames queued before the reader was added signalled no one: look once.
        self._again: asyncio.Handle | None = self._loop.call_soon(self.drain)

    def drain(self) -> None:
        self._again = None
        sock, receiver = self.socket, self._receiver
        if receiver is None or sock.closed:
            return
        on_frame, on_batch_done = receiver
        identified = self._identified
        drained = 0
        while drained < RECEIVE_DRAIN_FRAMES_MAX:
            try:
                parts = sock.recv_multipart(flags=zmq.NOBLOCK, copy=not identified)
            except zmq.Again:
                break
            drained += 1
            if len(parts) != 2:
                on_frame(b"", None)  # counted as truncated by the decoder
            elif identified:
                message = cast("zmq.Frame", parts[1])
                user_id = message.get("User-Id")
                on_frame(message.bytes, user_id if isinstance(user_id, str) else None)
            else:
                on_frame(cast(bytes, parts[1]), self._publisher_key)
        if drained:
            # The node's effects may stop this reader (an unsubscribe closes the socket).
            on_batch_done()
        if drained >= RECEIVE_DRAIN_FRAMES_MAX and self._receiver is not None and not sock.closed:
            self._again = self._loop.call_soon(self.drain)

    def wake(self) -> None:
        """Look at the socket in a later turn. ZeroMQ's descriptor signals an edge, and any operation
        on the socket may process its pending commands and take the edge that frames queued meanwhile
        would have signalled (pyzmq's asyncio sockets check their events after every operation)."""
        if self._again is None and self._receiver is not None:
            self._again = self._loop.call_soon(self.drain)

    @property
    def watching(self) -> bool:
        """Whether frames still go to the node (until `stop`)."""
        return self._receiver is not None

    def stop(self) -> None:
        """No more frames to the node; the descriptor is unwatched before its socket closes (a
        socket opened later may get the same number)."""
        if self._receiver is None:
            return
        self._receiver = None
        if self._again is not None:
            self._again.cancel()
            self._again = None
        self._loop.remove_reader(self._fd)


@dataclass(slots=True)
class _Subscription:
    reader: _Reader
    topics: set[bytes]

    @property
    def socket(self) -> zmq.Socket[bytes]:
        return self.reader.socket

    def close(self) -> None:
        self.reader.stop()
        self.reader.socket.close(linger=0)


class ZmqTransport:
    def __init__(
        self, listen: str, publish: str | None, curve: CurveKeys | None = None, source_host: str | None = None
    ) -> None:
        """`source_host`: the local IP address every outgoing connection binds (ZeroMQ's
        `tcp://SOURCE:0;HOST:PORT`); None lets the kernel choose."""
        host, _port = parse_endpoint(listen, "listen")
        if publish is not None:
            parse_endpoint(publish, "publish")
        self.source_host = source_host
        self._context = zmq.Context()
        self._context.set(zmq.MAX_SOCKETS, SOCKETS_MAX)
        self.router: zmq.Socket[bytes] = self._context.socket(zmq.ROUTER)
        self.pub = self._context.socket(zmq.PUB)
        self._dealers: dict[str, zmq.Socket[bytes]] = {}
        self._subscriptions: dict[str, _Subscription] = {}
        self._receiver: tuple[OnFrame, Callable[[], None]] | None = None
        self._router_reader: _Reader | None = None
        self.send_drops = 0
        self.subscriptions_refused = 0
        """Subscriptions not made because `SUBSCRIPTIONS_MAX` were open."""
        self.curve = curve
        self.curve_no_key = 0
        """Connections not made because the peer's public key is not configured."""
        self._allowlist: Allowlist | None = None
        self._authenticator: zmq.auth.thread.ThreadAuthenticator | None = None
        if curve is not None:
            self._allowlist = Allowlist(curve.allowed)
            self._authenticator = start_authenticator(self._context, self._allowlist)
            make_server(self.router, curve)
            make_server(self.pub, curve)
        for sock in (self.router, self.pub):
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.MAXMSGSIZE, FRAME_BYTES_MAX + 1024)
        self.router.setsockopt(zmq.RCVHWM, RECEIVE_QUEUE_FRAMES_MAX)
        self.pub.setsockopt(zmq.SNDHWM, SEND_QUEUE_FRAMES_MAX)
        try:
            self.router.bind(listen)
            self.pub.bind(publish or f"tcp://{host}:*")
        except zmq.ZMQError as exc:
            self.close()
            raise OSError(f"cannot bind {listen if publish is None else publish}: {exc}") from exc
        self.publish_endpoint: str = self.pub.getsockopt_string(zmq.LAST_ENDPOINT)

    def start_receiving(self, on_frame: OnFrame, on_batch_done: Callable[[], None]) -> None:
        """Hand every received frame to `on_frame` (with its sender's public key where known), and call
        `on_batch_done` after each burst: on the request socket from now on, and on each subscription
        from the moment it is made. Needs a running event loop."""
        self._receiver = (on_frame, on_batch_done)
        self._router_reader = _Reader(self.router, self._receiver, None, identified=self.curve is not None)

    async def stop_receiving(self) -> None:
        """Hand no more frames to the receiver (before `close`)."""
        self._receiver = None
        for subscription in self._subscriptions.values():
            subscription.reader.stop()
        if self._router_reader is not None:
            self._router_reader.stop()

    def publish(
        self,
        frame: bytes,
        *,
        dc_only: bool = False,
        topic_key: int | None = None,
        audience: Audience = "every",
    ) -> None:
        try:
            # Two sends, not `send_multipart`: its type checks and slicing cost more than the sends
            # on this path (every published frame). ZeroMQ queues a message's parts atomically.
            self.pub.send(topic(dc_only=dc_only, topic_key=topic_key, audience=audience), _SNDMORE_NOBLOCK)
            self.pub.send(frame, zmq.NOBLOCK)
        except zmq.Again:
            self.send_drops += 1

    def send(self, address: str, frame: bytes) -> None:
        dealer = self._dealers.get(address)
        if dealer is None:
            try:
                parse_endpoint(address, "address")
            except ValueError as exc:
                log.warning("not sending to %s: %s", address, exc)
                self.send_drops += 1
                return
            dealer = self._context.socket(zmq.DEALER)
            if self.curve is not None:
                server_key = self.curve.peers.get(address)
                if server_key is None:
                    dealer.close(linger=0)
                    self._no_key(address)
                    return
                set_client_keys(dealer, self.curve, server_key)
            dealer.setsockopt(zmq.LINGER, 0)
            dealer.setsockopt(zmq.IMMEDIATE, 1)
            dealer.setsockopt(zmq.RECONNECT_IVL, DEALER_RECONNECT_IVL_MS)
            dealer.setsockopt(zmq.RECONNECT_IVL_MAX, DEALER_RECONNECT_IVL_MAX_MS)
            dealer.setsockopt(zmq.SNDHWM, SEND_QUEUE_FRAMES_MAX)
            try:
                dealer.connect(self._outgoing(address))
            except zmq.ZMQError as exc:  # an address from a peer's hello is remote input
                dealer.close(linger=0)
                log.warning("not sending to %r: %s", address, exc)
                self.send_drops += 1
                return
            if len(self._dealers) >= DEALERS_MAX:
                oldest = next(iter(self._dealers))
                self._dealers.pop(oldest).close(linger=0)
            self._dealers[address] = dealer
        try:
            dealer.send(frame, flags=zmq.NOBLOCK)
        except zmq.Again:
            self.send_drops += 1

    def subscribe(
        self,
        endpoint: str,
        peer_address: str,
        *,
        wan: bool = False,
        topic_keys: frozenset[int] | None = None,
    ) -> None:
        """Receive the stream published at `endpoint` by the peer whose request socket is at
        `peer_address`: both kinds of topics, or the WAN topics only (`wan`); every bucket, or only
        the frames of `topic_keys` (and the common topics). Again for the same endpoint: change the
        keys."""
        wanted = topics(wan=wan, topic_keys=topic_keys)
        existing = self._subscriptions.get(endpoint)
        if existing is not None:
            # New topics first: a frame published meanwhile matches one or the other.
            for added in wanted - existing.topics:
                existing.socket.setsockopt(zmq.SUBSCRIBE, added)
            for dropped in existing.topics - wanted:
                existing.socket.setsockopt(zmq.UNSUBSCRIBE, dropped)
            if existing.topics != wanted:
                existing.reader.wake()
            existing.topics = wanted
            return
        receiver = self._receiver
        if receiver is None:
            return
        if len(self._subscriptions) >= SUBSCRIPTIONS_MAX:
            self.subscriptions_refused += 1
            log.warning("not subscribing to %s: %d subscriptions are open", endpoint, SUBSCRIPTIONS_MAX)
            return
        server_key: bytes | None = None
        if self.curve is not None:
            server_key = self.curve.peers.get(peer_address)
            if server_key is None:
                self._no_key(peer_address)
                return
        sock: zmq.Socket[bytes] = self._context.socket(zmq.SUB)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, FRAME_BYTES_MAX + 1024)
        sock.setsockopt(zmq.RCVHWM, SUBSCRIPTION_QUEUE_FRAMES_MAX)
        # Subscriptions travel to the publisher as messages on the send queue: past its high-water
        # mark ZeroMQ would drop some silently. Their number is bounded by the placement buckets.
        sock.setsockopt(zmq.SNDHWM, 0)
        for prefix in wanted:
            sock.setsockopt(zmq.SUBSCRIBE, prefix)
        if self.curve is not None and server_key is not None:
            set_client_keys(sock, self.curve, server_key)
        try:
            sock.connect(self._outgoing(endpoint))
        except zmq.ZMQError as exc:  # an endpoint from a peer's hello is remote input
            sock.close(linger=0)
            log.warning("cannot subscribe to %r: %s", endpoint, exc)
            return
        # Z85 text, as ZAP names the sender of a frame on the ROUTER.
        publisher_key = server_key.decode("ascii") if server_key is not None else None
        reader = _Reader(sock, receiver, publisher_key, identified=False)
        self._subscriptions[endpoint] = _Subscription(reader, wanted)

    def unsubscribe(self, endpoint: str) -> None:
        subscription = self._subscriptions.pop(endpoint, None)
        if subscription is not None:
            subscription.close()

    def _outgoing(self, endpoint: str) -> str:
        """What to connect to for `endpoint`: itself, or from `source_host` (an ephemeral port) when
        set. Sockets stay keyed by `endpoint`, as peers and keys know it."""
        if self.source_host is None:
            return endpoint
        source = f"[{self.source_host}]" if ":" in self.source_host else self.source_host
        return f"tcp://{source}:0;{endpoint.removeprefix('tcp://')}"

    def _no_key(self, address: str) -> None:
        self.curve_no_key += 1
        if self.curve_no_key == 1 or self.curve_no_key % 100 == 0:
            log.warning("not connecting to %s: its public key is not in peer_keys", address)

    @property
    def curve_refused(self) -> int:
        """Clients refused by the ZAP allowlist."""
        return self._allowlist.refused if self._allowlist is not None else 0

    def close(self) -> None:
        for dealer in self._dealers.values():
            dealer.close(linger=0)
        self._dealers.clear()
        for subscription in self._subscriptions.values():
            subscription.close()
        self._subscriptions.clear()
        if self._router_reader is not None:
            self._router_reader.stop()
        for sock in (self.router, self.pub):
            sock.close(linger=0)
        if self._authenticator is not None:
            self._authenticator.stop()
        self._context.term()
