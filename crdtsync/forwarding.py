"""Requests forwarded to a doc's holder over the replication links (FORWARD_REQUEST and FORWARD_REPLY
of crdtsync.core.forward), driven by asyncio beside the node: docs/placement.md#forwarding.

A node that does not hold a doc asks its nearest alive holder (this datacenter first; for a read, a
follower of the doc in this datacenter before a holder in another) to serve a request about it and
waits for the answer, at most `timeout_ms`; the serving side runs the request
with the handler its owner installed (the daemon's runs it through its doc route's handlers, in
process) and answers.
Bounded on both sides: at most `WAITING_MAX` requests wait for an answer (more are served where they
arrived) and at most `SERVING_MAX` are served at once (more are declined at once, so the asker
serves them itself rather than wait for a timeout). Replies nobody waits for are counted and dropped.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

from crdtsync.core import wire
from crdtsync.core.forward import (
    BODY_BYTES_MAX,
    STATUS_NOT_SERVED,
    ForwardMessage,
    ForwardReply,
    ForwardRequest,
    headers_allowed,
)

if TYPE_CHECKING:
    from crdtsync.node import Node

log = logging.getLogger("crdtsync.forwarding")

WAITING_MAX = 1024
SERVING_MAX = 64


@dataclass(frozen=True, slots=True)
class ForwardAsk:
    """The request to forward (a `ForwardRequest` but the sender and request id)."""

    method: str
    target: str
    """Path and query."""
    content_type: str
    body: bytes


@dataclass(frozen=True, slots=True)
class Served:
    """What a forwarded request's handler answered."""

    status: int
    content_type: str
    served_as: str
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()
    """The answer's own `X-` headers (`crdtsync.core.forward.ForwardReply.headers`)."""


NOT_SERVED = Served(STATUS_NOT_SERVED, "", "", b"")
"""The answer that sends the request back to be served where it arrived."""

Handler = Callable[[ForwardRequest], Awaitable[Served]]


@dataclass(slots=True)
class ForwardCounters:
    requests_sent: int = 0
    replies_received: int = 0
    requests_timed_out: int = 0
    """Sent, but no answer came within the timeout: served where they arrived."""
    requests_declined: int = 0
    """Answered "not served here" (the holder was busy or the answer too big): served where they arrived."""
    requests_unsent: int = 0
    """Not sent: no holder alive and reachable, or too many requests waiting already."""
    replies_unexpected: int = 0
    requests_served: int = 0
    requests_refused_busy: int = 0
    requests_refused_unknown: int = 0
    """From a node this one has no alive link to (it cannot answer it): dropped."""

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


class Forwarding:
    def __init__(self, node: Node) -> None:
        self._node = node
        self.counters = ForwardCounters()
        self.handler: Handler | None = None
        """Serves a request forwarded by another node (set by the daemon); None: every request is
        declined."""
        self._request_ids = itertools.count(1)
        self._waiting: dict[int, tuple[str, asyncio.Future[ForwardReply]]] = {}
        self._serving: set[asyncio.Task[None]] = set()

    def close(self) -> None:
        for task in self._serving:
            task.cancel()
        for _, future in self._waiting.values():
            future.cancel()

    def target(self, doc_id: str, *, read: bool = False) -> tuple[str, str] | None:
        """Where to forward a request about `doc_id`: (node id, address), or None. The nearest alive
        holder; for a `read`, a follower of this datacenter before a holder in another."""
        return self._node._replica.forward_target(doc_id, read=read)

    async def forward(
        self, doc_id: str, asked: ForwardAsk, *, read: bool, timeout_ms: float
    ) -> tuple[str, ForwardReply] | None:
        """Have the nearest alive holder of `doc_id` serve `asked` and wait for its answer: (the
        holder's node id, its answer). None when it must be served here (no holder reachable, too
        many waiting, no answer in time, or declined: counted). With `read`, an answered request
        counts as a read of the doc here (adaptive replication: this node's clients read it; the
        holder does not count it)."""
        target = self.target(doc_id, read=read)
        if target is None or len(self._waiting) >= WAITING_MAX or len(asked.body) > BODY_BYTES_MAX:
            self.counters.requests_unsent += 1
            return None
        node_id, address = target
        request_id = next(self._request_ids)
        future = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = (node_id, future)
        self.counters.requests_sent += 1
        try:
            own = self._node.config.node_id
            # The fields one by one: `dataclasses.astuple` deep-copies each (the body too).
            request = ForwardRequest(
                own, request_id, asked.method, asked.target, asked.content_type, asked.body
            )
            self._send(address, request)
            reply: ForwardReply = await asyncio.wait_for(future, timeout_ms / 1000.0)
        except TimeoutError:
            self.counters.requests_timed_out += 1
            log.warning(
                "no answer from %s to a forwarded %s within %.0f ms", node_id, asked.method, timeout_ms
            )
            return None
        finally:
            del self._waiting[request_id]
        self.counters.replies_received += 1
        if reply.status == STATUS_NOT_SERVED:
            self.counters.requests_declined += 1
            return None
        if read:  # counted once it was served there: served here, the node counts it when it opens the doc
            self._node._replica.load.read(doc_id, time.monotonic() * 1000.0)
        return node_id, reply

    def on_message(self, message: ForwardMessage) -> None:
        """From the replica's dispatch, on the event loop."""
        if isinstance(message, ForwardRequest):
            self._on_request(message)
            return
        waiting = self._waiting.get(message.request_id)
        if waiting is None or waiting[0] != message.node_id or waiting[1].done():
            self.counters.replies_unexpected += 1
            return
        waiting[1].set_result(message)

    def _on_request(self, request: ForwardRequest) -> None:
        address = self._node._replica.member_address(request.node_id)
        if address is None:
            self.counters.requests_refused_unknown += 1
            return
        if len(self._serving) >= SERVING_MAX or self.handler is None:
            self.counters.requests_refused_busy += 1
            self._reply(address, request, NOT_SERVED)
            return
        task = asyncio.get_running_loop().create_task(self._serve(address, request, self.handler))
        self._serving.add(task)
        task.add_done_callback(self._serving.discard)

    async def _serve(self, address: str, request: ForwardRequest, handler: Handler) -> None:
        try:
            served = await handler(request)
        except Exception:  # the asker serves it itself rather than wait for its timeout
            log.exception("serving a request forwarded by %s failed", request.node_id)
            served = NOT_SERVED
        if len(served.body) > BODY_BYTES_MAX or not headers_allowed(served.headers):
            served = NOT_SERVED
        self.counters.requests_served += served.status != STATUS_NOT_SERVED
        self._reply(address, request, served)

    def _reply(self, address: str, request: ForwardRequest, served: Served) -> None:
        own = self._node.config.node_id
        reply = ForwardReply(
            own,
            request.request_id,
            served.status,
            served.content_type,
            served.served_as,
            served.body,
            served.headers,
        )
        self._send(address, reply)

    def _send(self, address: str, message: ForwardMessage) -> None:
        transport = self._node._transport
        if transport is not None:
            transport.send(address, wire.encode(message))
