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

The serving side runs a forwarded request in process through the same handlers as the doc route of
its HTTP API, with the same error answers, but no token check (the asking node checked the caller's
token and scope; the link is the cluster's, authenticated by CurveZMQ when configured), and never
forwards it again. Only doc requests are served so: any other target is declined (served where it
arrived), a `watch` stream refused (405; an asking node never forwards one).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterator

from aiohttp import hdrs, web
from aiohttp.http import HttpVersion11, RawRequestMessage
from aiohttp.streams import StreamReader
from multidict import CIMultiDict, CIMultiDictProxy
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector
from yarl import URL

from crdtsync.core.forward import BODY_BYTES_MAX, ForwardRequest
from crdtsync.daemon import causal_http
from crdtsync.daemon.auth_http import READ_METHODS
from crdtsync.daemon.config import HttpConfig
from crdtsync.daemon.http_input import SERVED_AS_KEY, SERVED_BY_KEY
from crdtsync.forwarding import NOT_SERVED, ForwardAsk, Served
from crdtsync.node import Node

log = logging.getLogger("crdtsync.http")

BODY_READ_LIMIT_BYTES = 64 * 1024
"""The read buffer's limit of a forwarded request's body (it is all there at once)."""

DocHandler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class HttpForwarding:
    def __init__(self, node: Node, config: HttpConfig) -> None:
        self._node = node
        self._config = config
        self._app: web.Application | None = None
        self._route: DocHandler | None = None
        self._serve_doc: DocHandler | None = None
        node.forwarding.handler = self.serve

    def serving(self, app: web.Application, route: DocHandler, serve_doc: DocHandler) -> None:
        """Serve forwarded requests with `serve_doc` (the doc handlers and their error answers, no
        token check) once `app` resolves their target to `route` (the doc route)."""
        self._app, self._route, self._serve_doc = app, route, serve_doc

    def close(self) -> None:
        """Decline forwarded requests from now on (the HTTP API stopped)."""
        self._app = self._route = self._serve_doc = None

    @staticmethod
    def is_forwarded(request: web.Request) -> bool:
        """Whether `request` is one another node forwarded here (served here, never forwarded again):
        it stands on no connection. Not a key of the request: a `web.Request` answers `in` for an
        absent key by raising and catching a KeyError, on every client request."""
        connection: object = request.protocol  # typed as aiohttp's, which `_NoConnection` stands in for
        return connection is _NO_CONNECTION

    # ------------------------------------------------------------------ the asking side

    def wanted(self, request: web.Request, doc_id: str) -> bool:
        """Whether a client's `request` goes to a holder of `doc_id`: this node neither holds the doc
        nor, for a read, follows it (a read follower answers reads from its own copy). A request
        forwarded here is never asked about (the doc route serves it)."""
        node = self._node
        if not self._config.forward or node.holds(doc_id):
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
        headers = dict(reply.headers)
        if reply.content_type:
            headers[hdrs.CONTENT_TYPE] = reply.content_type
        return web.Response(status=reply.status, body=reply.body, headers=headers)

    def _timeout_ms(self, request: web.Request) -> float:
        """Long enough for the holder to wait what the request asks it to wait (`wait_ms`)."""
        try:
            waited_ms = causal_http.wait_ms(request, self._config.wait_ms_max)
        except causal_http.RequestError:
            waited_ms = 0  # the holder answers 400 at once
        return self._config.forward_timeout_ms + waited_ms

    # ------------------------------------------------------------------ the serving side

    async def serve(self, forwarded: ForwardRequest) -> Served:
        """Serve a doc request another node forwarded, in process, as the doc route would."""
        app, route, serve_doc = self._app, self._route, self._serve_doc
        if app is None or route is None or serve_doc is None:
            return NOT_SERVED
        request = _request(forwarded, self._config.body_bytes_max)
        # As aiohttp's application resolves a request (`Application._handle`): the same matching,
        # with the same decoding of the path, as a request from a client.
        match = await app.router.resolve(request)
        if match.http_exception is not None or match.handler != route:
            log.info("declined a forwarded %s of %s: not a doc request", forwarded.method, forwarded.target)
            return NOT_SERVED
        match.add_app(app)
        match.freeze()
        request._match_info = match
        response = await serve_doc(request)
        if not isinstance(response, web.Response) or not isinstance(response.body, bytes):
            return NOT_SERVED  # not an answer of bytes: served where it arrived
        if len(response.body) > BODY_BYTES_MAX:
            log.info(
                "a forwarded %s answer is over %d bytes: the asker serves it",
                forwarded.method,
                BODY_BYTES_MAX,
            )
            return NOT_SERVED
        content_type = response.headers.get(hdrs.CONTENT_TYPE, "")
        # The answer's own headers (`X-State-Vector`, `X-Causal-Token`) go back with it; `X-Served-By`
        # and `X-Served-As` are set where the client asked, from the reply's other fields.
        own = tuple((name, value) for name, value in response.headers.items() if name.startswith("X-"))
        return Served(response.status, content_type, request.get(SERVED_AS_KEY, ""), response.body, own)

    def collector(self) -> Collector:
        return _ForwardCollector(self._node)


class _NoConnection:
    """The connection a forwarded request stands on: none (it came over the replication link). What
    `web.Request` and its body's reader ask of a connection."""

    ssl_context = None
    peername = None
    sockname = None
    transport = None

    def pause_reading(self) -> None:
        """The whole body is fed at once: nothing to pause."""

    def resume_reading(self, resume_parser: bool = True) -> None:
        """Nothing was paused."""


_NO_CONNECTION = _NoConnection()


def _request(forwarded: ForwardRequest, body_bytes_max: int) -> web.Request:
    """The `web.Request` of a forwarded request: its method, target (raw path and query, as the
    client sent it to the asking node), content type and body."""
    loop = asyncio.get_running_loop()
    headers = CIMultiDict({hdrs.CONTENT_LENGTH: str(len(forwarded.body))})
    if forwarded.content_type:
        headers[hdrs.CONTENT_TYPE] = forwarded.content_type
    frozen = CIMultiDictProxy(headers)
    raw_headers = tuple((name.encode(), value.encode()) for name, value in headers.items())
    url = URL(forwarded.target, encoded=True)
    message = RawRequestMessage(
        forwarded.method, forwarded.target, HttpVersion11, frozen, raw_headers, False, None, False, False, url
    )
    payload = StreamReader(_NO_CONNECTION, BODY_READ_LIMIT_BYTES, loop=loop)  # type: ignore[arg-type]
    if forwarded.body:
        payload.feed_data(forwarded.body)
    payload.feed_eof()
    task = asyncio.current_task()
    assert task is not None
    return web.Request(
        message,
        payload,
        _NO_CONNECTION,  # type: ignore[arg-type]
        _NO_CONNECTION,  # type: ignore[arg-type]
        task,
        loop,
        client_max_size=body_bytes_max,
    )


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
