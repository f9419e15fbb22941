"""The asyncio driver: the one place where the core meets the clock, ZeroMQ and the store."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from pycrdt import Doc

from crdtsync.core.effects import Effect, Persist, Publish, Send, Subscribe, Unsubscribe
from crdtsync.core.replica import PeerStatus, Replica, ReplicaConfig
from crdtsync.core.wire import NODE_ID_BYTES_MAX
from crdtsync.store import MemoryStore, Store
from crdtsync.transport.zmq_transport import ZmqTransport, parse_endpoint

log = logging.getLogger("crdtsync.node")


@dataclass(frozen=True, slots=True)
class NodeConfig:
    """How one node runs.

    `listen` is the one address the node advertises (its request socket, `tcp://HOST:PORT`);
    `peers` are the advertised addresses of other nodes. Each node also binds a PUB socket, at
    `publish` or, by default, an ephemeral port on the listen host, and tells peers where in the
    hello exchange, so only `listen` needs to be known in advance.
    """

    node_id: str
    listen: str
    peers: list[str] = field(default_factory=list)
    publish: str | None = None
    replication: ReplicaConfig = field(default_factory=ReplicaConfig)

    def __post_init__(self) -> None:
        if not self.node_id or len(self.node_id.encode()) > NODE_ID_BYTES_MAX:
            raise ValueError(f"node_id must be 1..{NODE_ID_BYTES_MAX} bytes of UTF-8, got {self.node_id!r}")
        parse_endpoint(self.listen)
        for peer in self.peers:
            parse_endpoint(peer)
        if self.publish is not None:
            parse_endpoint(self.publish)


@dataclass(frozen=True, slots=True)
class NodeStatus:
    """A point-in-time view of a node, cheap to take."""

    node_id: str
    epoch: int
    listen: str
    publish_endpoint: str
    docs: int
    published_updates: int
    """Local transactions this node has published in this epoch."""
    pending_updates: int
    """Remote updates received but waiting for their causal dependencies."""
    peers: tuple[PeerStatus, ...]
    counters: dict[str, int]


def _now_ms() -> float:
    return time.monotonic() * 1000.0


class Node:
    """A replica of a set of pycrdt docs, kept in sync with its peers.

    Use as `async with Node(config) as node:`. Docs from `await node.open(doc_id)` are plain pycrdt
    Docs; every local transaction on them is captured and replicated. Everything runs on the event
    loop thread that entered the node: write to its docs from that thread only.
    """

    def __init__(self, config: NodeConfig, *, store: Store | None = None) -> None:
        self.config = config
        self._store: Store = store if store is not None else MemoryStore()
        self._transport: ZmqTransport | None = None
        self._replica: Replica | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._pump_scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    async def __aenter__(self) -> Node:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    @property
    def replica(self) -> Replica:
        if self._replica is None:
            raise RuntimeError("the node is not started: use `async with Node(config) as node`")
        return self._replica

    async def start(self) -> None:
        if self._replica is not None:
            raise RuntimeError("node already started")
        self._loop = asyncio.get_running_loop()
        transport = ZmqTransport(self.config.listen, self.config.publish)
        epoch = time.time_ns() // 1_000_000
        try:
            replica = self._new_replica(transport, epoch)
        except BaseException:
            transport.close()
            raise
        self._transport = transport
        self._replica = replica
        for doc_id, update in self._store.load():
            replica.load_update(doc_id, update)
        now = _now_ms()
        for peer in self.config.peers:
            replica.add_peer(peer, now)
        replica.set_wakeup(self._schedule_pump)
        self._tasks = [
            asyncio.create_task(transport.receive_loop(transport.router, self._on_frame, self._pump)),
            asyncio.create_task(transport.receive_loop(transport.sub, self._on_frame, self._pump)),
            asyncio.create_task(self._timer_loop()),
        ]
        replica.tick(now)
        self._pump()
        log.info(
            "node %s started: listen %s, publish %s, epoch %d, %d docs, %d peers",
            self.config.node_id, self.config.listen, transport.publish_endpoint, epoch,
            replica.status(now).docs, len(self.config.peers),
        )  # fmt: skip

    def _new_replica(self, transport: ZmqTransport, epoch: int) -> Replica:
        # A fresh client id per start: an id reused after a restart could collide with updates
        # the previous incarnation sent but never stored.
        return Replica(
            node_id=self.config.node_id,
            epoch=epoch,
            client_id=secrets.randbits(53) or 1,
            address=self.config.listen,
            publish_endpoint=transport.publish_endpoint,
            config=self.config.replication,
        )

    async def close(self) -> None:
        """Flush what is pending, then close sockets and unobserve every doc. Idempotent."""
        if self._closed or self._replica is None:
            self._closed = True
            return
        self._pump(force=True)
        self._closed = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._replica.set_wakeup(None)
        self._replica.close()
        if self._transport is not None:
            self._transport.close()
        self._store.close()

    async def open(self, doc_id: str) -> Doc[Any]:
        """The pycrdt Doc `doc_id`, kept in sync with the peers; created empty when new."""
        return self.replica.open_doc(doc_id)

    def digest(self, doc_id: str) -> bytes:
        """The canonical 16-byte digest of a doc's state: equal on two replicas iff they hold the same
        items and deletions. Raises KeyError for a doc this node does not hold."""
        return self.replica.doc_digest(doc_id)

    def doc_ids(self, *, after: str = "", limit: int | None = None) -> list[str]:
        """Ids of the docs this node holds, in sorted order, starting after `after`."""
        return self.replica.doc_ids(after=after, limit=limit)

    async def flush(self) -> None:
        """Hand every local write made so far to the store and the transport."""
        self._pump(force=True)
        await asyncio.sleep(0)

    def status(self) -> NodeStatus:
        replica = self.replica
        snapshot = replica.status(_now_ms())
        counters = dict(snapshot.counters)
        if self._transport is not None:
            counters["transport_send_drops"] = self._transport.send_drops
        return NodeStatus(
            node_id=snapshot.node_id,
            epoch=snapshot.epoch,
            listen=snapshot.address,
            publish_endpoint=replica.publish_endpoint,
            docs=snapshot.docs,
            published_updates=snapshot.last_seq,
            pending_updates=snapshot.pending_deltas,
            peers=snapshot.peers,
            counters=counters,
        )

    # ------------------------------------------------------------------ internals

    def _on_frame(self, frame: bytes) -> None:
        if not self._closed:
            self.replica.receive(frame, _now_ms())

    def _schedule_pump(self) -> None:
        if not self._pump_scheduled and self._loop is not None and not self._closed:
            self._pump_scheduled = True
            self._loop.call_soon(self._pump)

    def _pump(self, *, force: bool = False) -> None:
        self._pump_scheduled = False
        if self._closed or self._replica is None or self._transport is None:
            return
        self._execute(self._replica.take_effects(_now_ms(), force=force))

    def _execute(self, effects: list[Effect]) -> None:
        transport = self._transport
        assert transport is not None
        for effect in effects:
            match effect:
                case Publish(frame):
                    transport.publish(frame)
                case Send(address, frame):
                    transport.send(address, frame)
                case Persist(updates):
                    self._store.append(updates)
                case Subscribe(endpoint):
                    transport.subscribe(endpoint)
                case Unsubscribe(endpoint):
                    transport.unsubscribe(endpoint)

    async def _timer_loop(self) -> None:
        replica = self.replica
        cap_s = replica.config.tick_interval_ms / 1000.0
        while True:
            delay_s = (replica.next_deadline_ms() - _now_ms()) / 1000.0
            await asyncio.sleep(min(max(delay_s, 0.0), cap_s))
            try:
                replica.tick(_now_ms())
                self._pump()
            except Exception:  # a bug in a timer must not stop replication for good
                log.exception("timer tick failed")
