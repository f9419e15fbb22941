"""`GET /v1/ws/{doc}`: a y-websocket-compatible endpoint, so that Yjs clients (the npm `y-websocket`
provider, pycrdt's own) edit the node's docs directly.

The protocol is y-protocols' (crdtsync/daemon/websocket_protocol.py reads it); pycrdt's helpers
build the messages.

One `Room` per doc with connections on this node: the doc is opened (pinned) once for the room and
released `linger_s` (30 s) after its last connection left; its ONE doc observer (unobserved then)
sends every change not from a client of the room (replication, HTTP) to every connection. A client's
update is applied (and replicated like any local write), made durable with `node.flush()`, and only
then sent to the room's other connections, never back to its sender; while the store cannot commit,
updates are refused before they are applied (close 1013: the client keeps them and retries).

A sync step 1 is answered with what the client lacks; over a frame (1 MiB), as sync updates of about
a frame each that integrate in order and a last step 2 (`crdtsync.core.update_split`), so that a
large doc never travels as one message.

Awareness (presence, cursors) is relayed to every connection of the room and to the other nodes of
every datacenter, never stored (`RoomAwareness`, crdtsync/daemon/websocket_awareness.py).

Limits (the `[websocket]` keys of the daemon's configuration, `WebSocketConfig`), each closing only
the connection concerned (close codes in `CLOSE_*` and docs/websocket.md):
frames over `receive_bytes_max` (1009, by aiohttp), text frames (1003), malformed messages or updates
(4400), a send queue over `send_queue_max` messages or `send_queue_bytes_max` bytes (4008), a client
update lacking dependencies that its sync step 2 did not bring (4409, before pycrdt sees it: the
provider reconnects and resends what the node lacks in its next step 2; until the step 2, such
updates are held). A read-only connection (read token) gets the doc and its changes and may send
awareness; its step 2 and updates are ignored and counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from pycrdt import (
    Doc,
    Subscription,
    TransactionEvent,
    YMessageType,
    YSyncMessageType,
    create_sync_message,
    create_update_message,
)
from pycrdt._sync import create_sync_step2_message

from crdtsync.core.state import StateDecodeError, covers, decode_state_vector
from crdtsync.core.update_check import UpdateError, check_update, dependencies
from crdtsync.core.update_split import ordered_runs, sync_parts
from crdtsync.daemon.websocket_awareness import AWARENESS_TIMEOUT_S, AwarenessError, RoomAwareness
from crdtsync.daemon.websocket_protocol import (
    EMPTY_UPDATE,
    MESSAGE_QUERY_AWARENESS,
    MalformedError,
    var_bytes,
    varuint,
)
from crdtsync.node import Node
from crdtsync.store.base import StoreCommitError

log = logging.getLogger("crdtsync.websocket")

PATH_PREFIX = "/v1/ws/"
# The defaults of `WebSocketConfig` (documented there).
FRAME_BYTES_MAX = 1 << 20
RECEIVE_BYTES_MAX = 16 << 20
"""Largest incoming frame; a larger one closes the connection with 1009. Larger than the frames the
node sends: a client's sync step 2 carries all its offline edits, and a client refused it on every
reconnect could never sync."""
SEND_QUEUE_MAX = 1024
SEND_QUEUE_BYTES_MAX = 64 << 20
"""Bytes waiting to be sent on one connection (a single message larger than this still goes out
alone, e.g. the sync step 2 of a large doc); more closes it with 4008."""
CONNECTIONS_MAX = 10_000
HELD_UPDATES_MAX = 1024
"""Updates lacking dependencies that a connection may send before its sync step 2 (edits made while
its provider reconnects: they depend on offline edits that the step 2 brings), held until it comes;
one more closes the connection with 4409."""
HELD_BYTES_MAX = 256 << 20
"""Bytes of such updates held on the node, all connections together: one more update to hold closes
its connection with 4409 (each connection may also hold `receive_bytes_max`)."""
LINGER_S = 30.0
CLOSE_TIMEOUT_S = 5.0
LOG_INTERVAL_S = 1.0

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_UNSUPPORTED = 1003
CLOSE_TOO_LARGE = 1009
CLOSE_INTERNAL = 1011
CLOSE_TRY_AGAIN = 1013
CLOSE_SLOW = 4008
CLOSE_MALFORMED = 4400
CLOSE_RESYNC = 4409

COUNTERS = (
    "connections_opened",
    "messages_received",
    "messages_sent",
    "updates_applied",
    "updates_ignored_read_only",
    "updates_held",
    "closed_malformed",
    "closed_too_large",
    "closed_slow",
    "closed_resync",
    "closed_store_failing",
    "refused_over_max",
    "awareness_from_nodes",
    "awareness_from_nodes_dropped",
    "awareness_not_published",
)


@dataclass(frozen=True, slots=True)
class WebSocketConfig:
    """The `[websocket]` table of the daemon's configuration (checked by crdtsync/daemon/config.py)."""

    frame_bytes_max: int = FRAME_BYTES_MAX
    """Largest message the node sends: the size it cuts a large sync answer into, and the size of the
    runs a larger client update is applied in (each a delta of its own)."""
    receive_bytes_max: int = RECEIVE_BYTES_MAX
    """Largest frame a client may send (1009 beyond): a sync step 2 with all its offline edits."""
    send_queue_max: int = SEND_QUEUE_MAX
    """Messages waiting to be sent on one connection; one more closes it with 4008."""
    send_queue_bytes_max: int = SEND_QUEUE_BYTES_MAX
    """Bytes waiting to be sent on one connection; more close it with 4008."""
    connections_max: int = CONNECTIONS_MAX
    """Open WebSocket connections on this node; more are refused with 503 (0: the endpoint is off)."""
    linger_s: float = LINGER_S
    """How long a doc stays loaded after its last connection closed (0: unloaded at once)."""
    close_timeout_s: float = CLOSE_TIMEOUT_S
    """How long a closing client may take to complete the close before its TCP connection is dropped."""
    compress: bool = False
    """Offer permessage-deflate to clients that ask for it. Off: a deflate context costs about 100 KiB
    per connection and CPU on every message (bench.websocket), and Yjs updates are small."""


@dataclass(eq=False)
class Connection:
    """One WebSocket client of a room: its send queue, and the awareness client ids it announced."""

    ws: web.WebSocketResponse
    writable: bool
    remote: str | None
    transport: asyncio.Transport | None = None
    abort_after_s: float = 0.0
    abort: asyncio.TimerHandle | None = None
    """Armed by `close_soon`: drops the TCP connection of a client that does not take the close
    (one that stopped reading, whose socket buffers are full, would hold the sender forever)."""
    queue: deque[bytes] = field(default_factory=deque)
    queue_bytes: int = 0
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    close_code: int | None = None
    close_reason: str = ""
    step2_received: bool = False
    """Whether the client answered the node's sync step 1: until then, updates lacking dependencies
    are held (`held`), since the answer brings what they depend on."""
    held: list[bytes] = field(default_factory=list)
    held_bytes: int = 0

    def close_soon(self, code: int, reason: str) -> None:
        """Have the sender close the connection (queued messages are dropped); the first code wins."""
        if self.close_code is None:
            self.close_code = code
            self.close_reason = reason
            if self.transport is not None:
                self.abort = asyncio.get_running_loop().call_later(self.abort_after_s, self._abort)
        self.wake.set()

    def _abort(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.abort()


@dataclass(eq=False)
class Room:
    """The connections of one doc on this node, the doc (opened once for all of them), its observer
    and the room's awareness."""

    doc_id: str
    doc: Doc[Any]
    awareness: RoomAwareness
    connections: set[Connection] = field(default_factory=set)
    subscription: Subscription | None = None
    source: Connection | None = None
    """The connection whose update is being applied: its changes are captured, not sent at once."""
    captured: list[bytes] = field(default_factory=list)
    unload: asyncio.TimerHandle | None = None
    """Armed while the room has no connections: releases the doc `linger_s` later."""


class WebSockets:
    """Every WebSocket connection of a node, by doc (`rooms`), with their limits and counters."""

    def __init__(
        self,
        node: Node,
        config: WebSocketConfig = WebSocketConfig(),  # frozen: one shared default is safe
        *,
        awareness_timeout_s: float = AWARENESS_TIMEOUT_S,
        held_bytes_max: int = HELD_BYTES_MAX,
    ) -> None:
        self.node = node
        self.frame_bytes_max = config.frame_bytes_max
        self.receive_bytes_max = config.receive_bytes_max
        self.send_queue_max = config.send_queue_max
        self.send_queue_bytes_max = config.send_queue_bytes_max
        self.connections_max = config.connections_max
        self.linger_s = config.linger_s
        self.close_timeout_s = config.close_timeout_s
        self.compress = config.compress
        self.awareness_timeout_s = awareness_timeout_s
        self.held_bytes_max = held_bytes_max
        self.held_bytes = 0
        """Bytes of updates held for their connections' sync step 2, all connections together."""
        self._expiry: asyncio.Task[None] | None = None
        self._closing = False
        self.rooms: dict[str, Room] = {}
        self.connections = 0
        self.counters: dict[str, int] = dict.fromkeys(COUNTERS, 0)
        self._logged: dict[str, float] = {}

    # ------------------------------------------------------------------ a connection

    async def handle(self, request: web.Request, doc_id: str, *, writable: bool) -> web.StreamResponse:
        """Upgrade `request` and serve the doc `doc_id` on it until either side closes."""
        if self.connections >= self.connections_max:
            self.counters["refused_over_max"] += 1
            self._warn("over_max", "refused a WebSocket: %d connections are open", self.connections)
            raise web.HTTPServiceUnavailable(reason=f"{self.connections_max} WebSocket connections are open")
        ws = web.WebSocketResponse(
            max_msg_size=self.receive_bytes_max, timeout=self.close_timeout_s, compress=self.compress
        )
        await ws.prepare(request)
        conn = Connection(
            ws=ws,
            writable=writable,
            remote=request.remote,
            transport=request.transport,
            abort_after_s=self.close_timeout_s,
        )
        self.connections += 1
        self.counters["connections_opened"] += 1
        sender: asyncio.Task[None] | None = None
        room: Room | None = None
        try:
            room = await self._join(doc_id, conn)
            sender = asyncio.create_task(self._send_loop(conn))
            self._send(conn, create_sync_message(room.doc))
            self._send_awareness(room, conn)
            await self._serve(room, conn)
        finally:
            self.connections -= 1
            self._drop_held(conn)
            if room is not None:
                self._leave(room, conn)
            conn.close_soon(CLOSE_NORMAL, "")
            if sender is not None:
                with contextlib.suppress(Exception, asyncio.CancelledError):
                    await asyncio.wait_for(sender, self.close_timeout_s * 2)
            if not ws.closed:
                with contextlib.suppress(Exception):
                    await ws.close(code=conn.close_code or CLOSE_NORMAL)
            if conn.abort is not None:
                conn.abort.cancel()
        return ws

    async def _serve(self, room: Room, conn: Connection) -> None:
        """Handle the connection's messages until it closes or is to be closed."""
        async for message in conn.ws:
            if message.type == WSMsgType.BINARY:
                self.counters["messages_received"] += 1
                try:
                    await self._receive(room, conn, message.data)
                except MalformedError as exc:
                    self.counters["closed_malformed"] += 1
                    self._warn("malformed", "closing a WebSocket of %s: %s", room.doc_id, exc)
                    conn.close_soon(CLOSE_MALFORMED, str(exc)[:100])
                except StoreCommitError as exc:  # not durable: the client keeps its edits and retries
                    self.counters["closed_store_failing"] += 1
                    conn.close_soon(CLOSE_TRY_AGAIN, f"the node's store cannot commit: {exc}"[:100])
                except (asyncio.CancelledError, KeyboardInterrupt, SystemExit):
                    raise
                except BaseException:
                    # The node failed (at shutdown): this connection ends, the others go on.
                    log.exception("a WebSocket message of %s failed", room.doc_id)
                    conn.close_soon(CLOSE_INTERNAL, "internal error; see the node's log")
            elif message.type == WSMsgType.TEXT:
                self.counters["closed_malformed"] += 1
                conn.close_soon(CLOSE_UNSUPPORTED, "y-websocket messages are binary frames")
            elif message.type == WSMsgType.ERROR:
                # aiohttp closed the connection already; a frame over the bound is an error with
                # code 1009 (the connection's close code is the client's answer by then).
                if getattr(message.data, "code", None) == CLOSE_TOO_LARGE:
                    self.counters["closed_too_large"] += 1
                    self._warn(
                        "too_large",
                        "closed a WebSocket of %s: a frame over %d bytes",
                        room.doc_id,
                        self.receive_bytes_max,
                    )
                return
            if conn.close_code is not None:
                return

    async def _send_loop(self, conn: Connection) -> None:
        try:
            while conn.close_code is None:
                if not conn.queue:
                    await conn.wake.wait()
                    conn.wake.clear()
                    continue
                data = conn.queue.popleft()
                conn.queue_bytes -= len(data)
                await conn.ws.send_bytes(data)
                self.counters["messages_sent"] += 1
        except (ConnectionError, RuntimeError):
            return  # the client went away (aiohttp raises ClientConnectionResetError, a ConnectionError)
        conn.queue.clear()
        conn.queue_bytes = 0
        with contextlib.suppress(Exception):
            await conn.ws.close(code=conn.close_code, message=conn.close_reason.encode()[:123])

    def _send(self, conn: Connection, data: bytes, *, exempt: bool = False) -> None:
        """Queue a message; a full queue closes the connection (never raises: called from observers).
        `exempt`: the answer to a sync step 1 when nothing else was queued, whatever its size."""
        if conn.close_code is not None:
            return
        full = len(conn.queue) >= self.send_queue_max or (
            bool(conn.queue) and conn.queue_bytes + len(data) > self.send_queue_bytes_max
        )
        if full and not exempt:
            self.counters["closed_slow"] += 1
            self._warn("slow", "closing a WebSocket from %s: its send queue is full", conn.remote)
            conn.close_soon(CLOSE_SLOW, "send queue full: the client reads too slowly")
            return
        conn.queue.append(data)
        conn.queue_bytes += len(data)
        conn.wake.set()

    # ------------------------------------------------------------------ messages

    async def _receive(self, room: Room, conn: Connection, data: bytes) -> None:
        kind, pos = varuint(data, 0, "message type")
        if kind == YMessageType.SYNC:
            subtype, pos = varuint(data, pos, "sync message type")
            payload = var_bytes(data, pos, "sync payload")
            if subtype == YSyncMessageType.SYNC_STEP1:
                try:
                    decode_state_vector(payload)
                except StateDecodeError as exc:
                    raise MalformedError(f"sync step 1 without a valid state vector: {exc}") from None
                # A large answer goes as sync updates of about a frame each and a last step 2; with
                # nothing else queued it may exceed the queue's limits (one answer per client at a time).
                parts = sync_parts(room.doc, payload, self.frame_bytes_max)
                exempt = not conn.queue
                for part in parts[:-1]:
                    self._send(conn, create_update_message(part), exempt=exempt)
                self._send(conn, create_sync_step2_message(parts[-1]), exempt=exempt)
            elif subtype == YSyncMessageType.SYNC_STEP2:
                await self._update(room, conn, payload)
                await self._step2_received(room, conn)
            elif subtype == YSyncMessageType.SYNC_UPDATE:
                await self._update(room, conn, payload)
            else:
                raise MalformedError(f"unknown sync message type {subtype}")
        elif kind == YMessageType.AWARENESS:
            payload = var_bytes(data, pos, "awareness update")
            try:
                room.awareness.from_client(conn, payload)
            except AwarenessError as exc:
                raise MalformedError(str(exc)) from None
        elif kind == MESSAGE_QUERY_AWARENESS:
            if pos != len(data):
                raise MalformedError("bytes after a query-awareness message")
            self._send_awareness(room, conn)
        else:
            raise MalformedError(f"unknown message type {kind}")

    async def _update(self, room: Room, conn: Connection, update: bytes) -> None:
        if update == EMPTY_UPDATE:
            return
        if not conn.writable:
            self.counters["updates_ignored_read_only"] += 1
            self._warn("read_only", "ignored an update to %s from a read-only WebSocket", room.doc_id)
            return
        if (failure := self.node.store_stats().failing) is not None:
            raise failure  # refused before it is applied, as HTTP writes are
        try:
            check_update(update)
            needed = dependencies(update)
        except UpdateError as exc:
            raise MalformedError(f"not a valid Yjs update: {exc}") from None
        if not covers(decode_state_vector(room.doc.get_state()), needed):
            self._hold_or_refuse(room, conn, update)
            return
        parts = [update]
        if len(update) > self.frame_bytes_max:
            # In runs of about a frame, each its own transaction: each replicates as a delta within
            # the peers' bounds (`update_bytes_max`), where the whole would be refused; the whole
            # update then brings what the runs could not (runs out of order, deletions).
            have = decode_state_vector(room.doc.get_state())
            try:
                parts = [*ordered_runs(update, have, self.frame_bytes_max), update]
            except UpdateError as exc:
                raise MalformedError(f"not a valid Yjs update: {exc}") from None
        room.source = conn
        room.captured = []
        try:
            for part in parts:
                room.doc.apply_update(part)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # pycrdt panics (PanicException) on some input
            raise MalformedError(f"pycrdt refused the update: {exc!r}"[:200]) from None
        finally:
            room.source = None
        captured, room.captured = room.captured, []
        self.counters["updates_applied"] += 1
        if not captured:
            return
        await self.node.flush()
        for change in captured:
            message = create_update_message(change)
            for other in list(room.connections):
                if other is not conn:
                    self._send(other, message)

    def _hold_or_refuse(self, room: Room, conn: Connection, update: bytes) -> None:
        """An update lacking dependencies: held until the client's step 2 (a client that edits while
        it reconnects sends those edits before its step 2 with the offline edits they depend on),
        else refused with 4409."""
        if (
            not conn.step2_received
            and len(conn.held) < HELD_UPDATES_MAX
            and conn.held_bytes + len(update) <= self.receive_bytes_max
            and self.held_bytes + len(update) <= self.held_bytes_max
        ):
            conn.held.append(update)
            conn.held_bytes += len(update)
            self.held_bytes += len(update)
            self.counters["updates_held"] += 1
            return
        # pycrdt would hold it until its dependencies arrive, and 0.14 can stay stuck then: refuse it,
        # and let the client send it again with what it depends on, in the sync step 2 of its next
        # connection.
        self.counters["closed_resync"] += 1
        self._warn("resync", "an update to %s lacks dependencies: the client must resync", room.doc_id)
        conn.close_soon(CLOSE_RESYNC, "update lacks dependencies this node does not hold; resync")

    def _drop_held(self, conn: Connection) -> list[bytes]:
        """The connection's held updates, no longer counted as held."""
        held, conn.held = conn.held, []
        self.held_bytes -= conn.held_bytes
        conn.held_bytes = 0
        return held

    async def _step2_received(self, room: Room, conn: Connection) -> None:
        """The client's answer to the node's step 1 is applied: apply the updates held for it (one
        still lacking its dependencies closes the connection with 4409)."""
        conn.step2_received = True
        held = self._drop_held(conn)
        for update in held:
            if conn.close_code is not None:
                return
            await self._update(room, conn, update)

    def _send_awareness(self, room: Room, conn: Connection) -> None:
        message = room.awareness.message()
        if message is not None:
            self._send(conn, message)

    # ------------------------------------------------------------------ rooms

    async def _join(self, doc_id: str, conn: Connection) -> Room:
        room = self.rooms.get(doc_id)
        if room is None:
            doc = await self.node.open(doc_id)
            room = self.rooms.get(doc_id)  # another connection may have opened it meanwhile
            if room is None:
                room = self._new_room(doc_id, doc)
            else:
                self.node.release(doc_id)
        if room.unload is not None:
            room.unload.cancel()
            room.unload = None
        room.connections.add(conn)
        return room

    def _new_room(self, doc_id: str, doc: Doc[Any]) -> Room:
        # The room's awareness broadcasts through the room, made just after it.
        awareness = RoomAwareness(
            self.node, doc_id, lambda message: self._send_all(room, message), self.counters
        )
        room = Room(doc_id=doc_id, doc=doc, awareness=awareness)
        room.subscription = doc.observe(lambda event: self._on_change(room, event))
        if not room.awareness.listening:
            self._warn("awareness", "awareness of %s stays on this node: too many docs listened to", doc_id)
        self.rooms[doc_id] = room
        if self._expiry is None:
            self._expiry = asyncio.create_task(self._expire_awareness())
        return room

    def _leave(self, room: Room, conn: Connection) -> None:
        room.connections.discard(conn)
        room.awareness.client_left(conn)
        if room.connections or self.rooms.get(room.doc_id) is not room:
            return
        if self.linger_s > 0 and not self._closing:
            room.unload = asyncio.get_running_loop().call_later(self.linger_s, self._unload, room)
        else:
            self._unload(room)

    def _unload(self, room: Room) -> None:
        """Release the doc of a room without connections and drop its observers (an observer keeps a
        Doc alive)."""
        if room.connections or self.rooms.get(room.doc_id) is not room:
            return
        if room.unload is not None:
            room.unload.cancel()
            room.unload = None
        del self.rooms[room.doc_id]
        if not self.rooms and self._expiry is not None:
            self._expiry.cancel()
            self._expiry = None
        if room.subscription is not None:
            room.doc.unobserve(room.subscription)
        room.awareness.close()
        self.node.release(room.doc_id)

    def _on_change(self, room: Room, event: TransactionEvent) -> None:
        update: bytes = event.update
        if update == EMPTY_UPDATE:
            return
        if room.source is not None:
            room.captured.append(update)
            return
        self._send_all(room, create_update_message(update))

    def _send_all(self, room: Room, message: bytes) -> None:
        for conn in list(room.connections):
            self._send(conn, message)

    async def _expire_awareness(self) -> None:
        """Remove the awareness states that were not renewed within `awareness_timeout_s` (a client
        that stays connected but stopped renewing, a client of a node that died), and tell the rooms'
        clients."""
        while True:
            await asyncio.sleep(self.awareness_timeout_s / 10)
            for room in list(self.rooms.values()):
                room.awareness.expire(self.awareness_timeout_s)

    # ------------------------------------------------------------------ the daemon

    def close_all(self) -> None:
        """Close every connection with 1001 (at shutdown: the server would otherwise wait for them)
        and release the docs of rooms as they lose their last connection."""
        self._closing = True
        for room in list(self.rooms.values()):
            for conn in list(room.connections):
                conn.close_soon(CLOSE_GOING_AWAY, "the node is stopping")
            self._unload(room)

    def collector(self) -> Collector:
        return _Collector(self)

    def _warn(self, reason: str, message: str, *args: object) -> None:
        """Log at most one line per second per reason."""
        now = time.monotonic()
        if now - self._logged.get(reason, -LOG_INTERVAL_S) >= LOG_INTERVAL_S:
            self._logged[reason] = now
            log.warning(message, *args)


class _Collector(Collector):
    def __init__(self, sockets: WebSockets) -> None:
        self.sockets = sockets

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "crdtsync_websocket_connections", "Open WebSocket connections", value=self.sockets.connections
        )
        yield GaugeMetricFamily(
            "crdtsync_websocket_docs", "Docs with WebSocket connections", value=len(self.sockets.rooms)
        )
        for name, value in self.sockets.counters.items():
            yield CounterMetricFamily(
                f"crdtsync_websocket_{name}", f"WebSocket {name.replace('_', ' ')}", value=value
            )
