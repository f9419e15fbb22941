"""The awareness of one WebSocket room (presence, cursors): its clients' states and those of the doc's
clients on every other node of every datacenter, never stored.

A change made by a client of this node (a state, a renewal, a removal when its connection closes) goes
to every client of the room, its sender included (as the npm y-websocket server does: a client that
hears nothing for 30 s reconnects, and its own renewal every 15 s is what it hears when it is alone),
and to the other nodes as an ephemeral message (`Node.publish_ephemeral`, crdtsync/core/ephemeral.py).
A change from another node goes to every client of the room. Each node expires the states not renewed
for 30 s (y-protocols' timeout) itself, those of other nodes' clients included: a node that dies
without a word has its clients' states expire everywhere. A node that opens a room asks the others
for their clients' states (`QUERY`), so that its first client sees them at once.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from pycrdt import Awareness, Doc, create_awareness_message

from crdtsync.core.state import StateDecodeError, read_varuint
from crdtsync.node import Node

log = logging.getLogger("crdtsync.websocket")

AWARENESS_CLIENTS_MAX = 64
"""Awareness client ids one connection may hold states for (a y-websocket provider has one per doc)."""
AWARENESS_STATES_MAX = 4096
"""Awareness states one room holds, its clients' and other nodes' together: a message from another
node that would take it beyond is dropped (counted)."""
AWARENESS_TIMEOUT_S = 30.0
"""An awareness state not renewed for this long is removed (y-protocols' outdated timeout; clients
renew theirs every 15 s)."""
QUERY = b"\x00"
"""An awareness update of no client (a no-op for any receiver): what a node publishes when it opens a
room, and what a node with clients of the doc answers by publishing their states."""
FROM_NODE = "another node"
"""The origin of changes that came from another node (never published again)."""


class AwarenessError(ValueError):
    """A client's awareness message that is not valid (its connection is closed as malformed)."""


class RoomAwareness:
    """The awareness states of one room; `broadcast(message)` sends an awareness message to each of
    the room's connections. Connections are opaque here: any hashable object a change came from."""

    def __init__(
        self, node: Node, doc_id: str, broadcast: Callable[[bytes], None], counters: dict[str, int]
    ) -> None:
        self.node = node
        self.doc_id = doc_id
        self.awareness = Awareness(Doc())
        self.awareness.set_local_state(None)  # the room relays its clients' states; it has none itself
        self._broadcast = broadcast
        self._counters = counters
        self.clients_of: dict[object, set[int]] = {}
        """The client ids each connection announced: removed when it closes."""
        self._subscription = self.awareness.observe(self._on_change)
        self.listening = node.listen_ephemeral(doc_id, self.from_node)
        if self.listening:
            node.publish_ephemeral(doc_id, QUERY)

    def close(self) -> None:
        """Stop hearing from other nodes and drop the observer."""
        self.awareness.unobserve(self._subscription)
        if self.listening:
            self.node.listen_ephemeral(self.doc_id, None)

    def message(self) -> bytes | None:
        """An awareness message with every state of the room, None without any."""
        clients = list(self.awareness.states)
        if not clients:
            return None
        return create_awareness_message(self.awareness.encode_awareness_update(clients))

    def from_client(self, connection: object, update: bytes) -> None:
        """Apply a client's awareness update; AwarenessError for a malformed one."""
        try:
            self.awareness.apply_awareness_update(update, connection)
        except (Exception, RecursionError) as exc:
            raise AwarenessError(f"not an awareness update: {exc!r}"[:200]) from None
        if len(self.clients_of.get(connection, ())) > AWARENESS_CLIENTS_MAX:
            raise AwarenessError(f"awareness states of over {AWARENESS_CLIENTS_MAX} clients")

    def client_left(self, connection: object) -> None:
        """Remove the states a closed connection announced, here and on the other nodes."""
        clients = self.clients_of.pop(connection, set())
        if clients:
            self.awareness.remove_awareness_states(sorted(clients), connection)

    def from_node(self, update: bytes, origin: str) -> None:
        """An awareness update another node published (listener of `Node.listen_ephemeral`)."""
        if update == QUERY:
            self._answer_query()
            return
        try:
            count, _ = read_varuint(update, 0)
        except StateDecodeError:
            count = 0
        if len(self.awareness.states) + count > AWARENESS_STATES_MAX:
            self._counters["awareness_from_nodes_dropped"] += 1
            return
        try:
            self.awareness.apply_awareness_update(update, FROM_NODE)
        except (Exception, RecursionError) as exc:
            # The core does not read the payload: a node (of another version?) sent a bad one.
            self._counters["awareness_from_nodes_dropped"] += 1
            log.warning("dropped an awareness update of %s from node %s: %r", self.doc_id, origin, exc)
            return
        self._counters["awareness_from_nodes"] += 1

    def _answer_query(self) -> None:
        """Publish the states of this node's clients (another node opened a room of the doc)."""
        clients = sorted({c for cs in self.clients_of.values() for c in cs if c in self.awareness.states})
        if clients and not self.node.publish_ephemeral(
            self.doc_id, self.awareness.encode_awareness_update(clients)
        ):
            self._counters["awareness_not_published"] += 1

    def expire(self, timeout_s: float) -> None:
        """Remove the states not renewed within `timeout_s`, and forget what is known of clients
        gone for that long (their clocks: a room of a long-lived doc would keep one per client ever)."""
        # pycrdt's Awareness stamps states with the wall clock in ms.
        oldest_ms = time.time() * 1000 - timeout_s * 1000
        meta = self.awareness.meta
        expired = [
            client
            for client in self.awareness.states
            if meta.get(client, {}).get("lastUpdated", 0) <= oldest_ms
        ]
        if expired:
            self.awareness.remove_awareness_states(expired, "timeout")
        for client in [c for c, m in meta.items() if c not in self.awareness.states]:
            if meta[client].get("lastUpdated", 0) <= oldest_ms:
                del meta[client]

    def _on_change(self, topic: str, change: tuple[dict[str, Any], Any]) -> None:
        if topic != "update":
            return
        changes, origin = change
        clients = [*changes["added"], *changes["updated"], *changes["removed"]]
        if not clients:
            return
        local = origin not in (FROM_NODE, "timeout")
        if not local:
            for announced in self.clients_of.values():
                announced.difference_update(changes["removed"])
        elif changes["added"] or changes["updated"]:
            announced = self.clients_of.setdefault(origin, set())
            announced.update(changes["added"], changes["updated"])
            announced.difference_update(changes["removed"])
        elif origin in self.clients_of:  # not after `client_left`, which popped it
            self.clients_of[origin].difference_update(changes["removed"])
        update = self.awareness.encode_awareness_update(clients)
        self._broadcast(create_awareness_message(update))
        # A change of this node's clients goes to the other nodes too (expiry is each node's own).
        if local and self.listening and not self.node.publish_ephemeral(self.doc_id, update):
            self._counters["awareness_not_published"] += 1
