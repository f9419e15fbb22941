"""HTTP requests about a doc this node does not hold, forwarded to its nearest alive holder
(docs/placement.md#forwarding).

The asking side: a doc request (`/v1/docs/...`, but a `watch` stream) for a doc this node neither
holds nor follows goes over the replication link to the doc's nearest alive holder (this datacenter
first), and its answer is this node's answer, with `X-Served-By` naming the holder. With no holder
reachable, no answer within `http.forward_timeout_ms` (plus the request's own `wait_ms`), or an
answer declined, the node serves the request itself as before: a read from a copy fetched from a
holder, a write taken durably here and handed to a holder. Every doc write of the API is idempotent
(a key set to a value, a key deleted, a Yjs update applied), so a write served here after its
forward timed out does no harm if the holder applied it too.

The serving side runs a forwarded request through its own HTTP API over loopback, marked with a
secret of this process so that it passes the token check (the asking node checked the caller's token
and scope; the link is the cluster's, authenticated by CurveZMQ when configured) and is not forwarded
again.
"""

from __future__ import annotations

import hmac
import logging
import secrets
from collections.abc import Iterator
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from crdtsync.core.forward import BODY_BYTES_MAX, ForwardRequest
from crdtsync.daemon import causal_http
from crdtsync.daemon.auth_http import READ_METHODS
from crdtsync.daemon.config import HttpConfig
from crdtsync.daemon.http_input import SERVED_AS_KEY, SERVED_BY_KEY
from crdtsync.forwarding import NOT_SERVED, SERVING_MAX, ForwardAsk, Served
from crdtsync.node import Node

log = logging.getLogger("crdtsync.http")

INTERNAL_HEADER = "X-Crdtsync-Forwarded"


class HttpForwarding:
    def __init__(self, node: Node, config: HttpConfig) -> None:
        self._node = node
        self._config = config
        self._secret = secrets.token_hex(32)
        self._session: aiohttp.ClientSession | None = None
        self.local_url: str | None = None
        """This node's own HTTP API, where forwarded requests are served (set once it listens)."""
        node.forwarding.handler = self.serve

    def is_forwarded(self, request: web.Request) -> bool:
        """Whether `request` is one another node forwarded here (served here, never forwarded again)."""
        presented = request.headers.get(INTERNAL_HEADER)
        return presented is not None and hmac.compare_digest(presented, self._secret)

    def listening(self, addresses: list[Any], tls: bool) -> None:
        """The HTTP API is bound: forwarded requests go to its first address."""
        if not addresses:
            return
        host, port = addresses[0][0], addresses[0][1]
        host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
        host = f"[{host}]" if ":" in host else host
        self.local_url = f"{'https' if tls else 'http'}://{host}:{port}"

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    # ------------------------------------------------------------------ the asking side

    def wanted(self, request: web.Request, doc_id: str) -> bool:
        """Whether `request` goes to a holder of `doc_id`: it is not one already forwarded here, and
        this node neither holds the doc nor, for a read, follows it (a read follower answers reads
        from its own copy)."""
        node = self._node
        if not self._config.forward or self.is_forwarded(request) or node.holds(doc_id):
            return False
        return request.method not in READ_METHODS or not node.follows(doc_id)

    async def forward(self, request: web.Request, doc_id: str) -> web.Response | None:
        """The holder's answer to `request`, or None when this node serves it itself."""
        if not self.wanted(request, doc_id):
            return None
        node = self._node
        read = request.method in READ_METHODS
        body = await request.read()
        asked = ForwardAsk(request.method, request.raw_path, request.headers.get("Content-Type", ""), body)
        answer = await node.forwarding.forward(doc_id, asked, read=read, timeout_ms=self._timeout_ms(request))
        if answer is None:
            return None
        holder, reply = answer
        request[SERVED_BY_KEY] = holder
        if reply.served_as:
            request[SERVED_AS_KEY] = reply.served_as
        headers = {"Content-Type": reply.content_type} if reply.content_type else {}
        return web.Response(status=reply.status, body=reply.body, headers=headers)

    def _timeout_ms(self, request: web.Request) -> float:
        """Long enough for the holder to wait what the request asks it to wait (`wait_ms`)."""
        try:
            waited_ms = causal_http.wait_ms(request, self._config.wait_ms_max)
        except causal_http.RequestError:
            waited_ms = 0  # the holder answers 400 at once
        return self._config.forward_timeout_ms + waited_ms

    # ------------------------------------------------------------------ the serving side

    async def serve(self, request: ForwardRequest) -> Served:
        """Run a request another node forwarded through this node's own HTTP API."""
        if self.local_url is None:
            return NOT_SERVED
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=SERVING_MAX, ssl=False)  # loopback to this very process
            self._session = aiohttp.ClientSession(connector=connector, auto_decompress=False)
        headers = {INTERNAL_HEADER: self._secret}
        if request.content_type:
            headers["Content-Type"] = request.content_type
        timeout = aiohttp.ClientTimeout(
            total=(self._config.forward_timeout_ms + self._config.wait_ms_max) / 1000
        )
        url = self.local_url + request.target
        async with self._session.request(
            request.method, url, data=request.body, headers=headers, timeout=timeout, allow_redirects=False
        ) as response:
            body = await response.content.read(BODY_BYTES_MAX + 1)
            if len(body) > BODY_BYTES_MAX:
                log.info(
                    "a forwarded %s answer is over %d bytes: the asker serves it",
                    request.method,
                    BODY_BYTES_MAX,
                )
                return NOT_SERVED
            content_type = response.headers.get("Content-Type", "")
            return Served(response.status, content_type, response.headers.get("X-Served-As", ""), body)

    def collector(self) -> Collector:
        return _ForwardCollector(self._node)


class _ForwardCollector(Collector):
    def __init__(self, node: Node) -> None:
        self._node = node

    def collect(self) -> Iterator[Metric]:
        for name, value in self._node.forwarding.counters.as_dict().items():
            metric = CounterMetricFamily(f"crdtsync_forward_{name}", _HELP[name])
            metric.add_metric([], value)
            yield metric


_HELP = {
    "requests_sent": "HTTP requests about docs this node does not hold, sent to a holder",
    "replies_received": "Answers to requests this node forwarded",
    "requests_timed_out": "Forwarded requests with no answer in time: served here",
    "requests_declined": "Forwarded requests the holder declined (busy, answer too big): served here",
    "requests_unsent": "Requests not forwarded (no holder reachable, too many waiting, body too big): served here",
    "replies_unexpected": "Forward answers nobody waited for (late or unknown): dropped",
    "requests_served": "Requests other nodes forwarded here, served",
    "requests_refused_busy": "Requests other nodes forwarded here, declined (too many at once)",
    "requests_refused_unknown": "Requests forwarded from a node with no alive link here: dropped",
}
