"""The daemon's HTTP API (aiohttp): JSON in and out, binary Yjs updates, server-sent events.

Errors are `{"error": {"code": ..., "message": ...}}` with a 4xx or 5xx status. Every write answers
once the node's store holds it as the durability setting promises, with the doc's new state vector
and a causal token; reads can wait for a token (`min_state`, `wait_ms`): see `causal_http` and
docs/consistency.md.

With tokens configured (`http.tokens_file`), every request but `GET /health` and the dashboard's
static files (`GET /ui`, `/ui/*`: the page asks for a token and sends it with its data calls) needs
`Authorization: Bearer TOKEN` (on `GET /v1/ws/{doc}` also a `token` query parameter, as browsers
cannot send headers on a WebSocket): GET and HEAD need a read or write token, every other method (writes,
update, backup, restore) a write token. No token or an unknown one is refused with 401, a read token
on a write with 403, before the request body is read.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from pycrdt import Doc, Map, TransactionEvent

from crdtsync.consistency import DocState
from crdtsync.core.docs import EMPTY_STATE
from crdtsync.core.state import StateDecodeError, covers, decode_state_vector
from crdtsync.daemon import artifacts_http, backup_http, batch_http, causal_http, jsonvalues, top_http
from crdtsync.daemon.auth_http import TOKEN_KEY, TokenCheck
from crdtsync.daemon.config import DaemonConfig, Token
from crdtsync.daemon.forward_http import HttpForwarding
from crdtsync.daemon.http_input import (
    SERVED_AS_KEY,
    SERVED_BY_KEY,
    ApiError,
    b64url,
    check_doc_id,
    check_key,
    error_response,
    from_b64url,
    json_of,
    json_response,
    parse_json,
)
from crdtsync.daemon.metrics import NodeCollector, RefusalCollector
from crdtsync.daemon.status_json import cluster_placement_json, config_warnings, placement_json, status_json
from crdtsync.daemon.store_http import WRITE_METHODS, StoreGuard
from crdtsync.daemon.websocket import PATH_PREFIX as WS_PATH_PREFIX
from crdtsync.daemon.websocket import WebSockets
from crdtsync.daemon.websocket_protocol import same_origin
from crdtsync.holders import HintsFullError, WriteAcksTimeoutError, WriteAcksWanted
from crdtsync.node import Node
from crdtsync.store import StoreCommitError

log = logging.getLogger("crdtsync.http")

WRITE_ACKS_MAX = 64
"""The most replicas a write may wait for (`write_acks`)."""

UI_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ui")
UI_FILES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
"""The dashboard's static files (crdtsync/daemon/ui) and their content types: open without a token."""
UI_HEADERS = {
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
DocHandler = Callable[[web.Request, str], Awaitable[web.StreamResponse]]


class KeyHandler(Protocol):
    """A key's method (`get_key`, `put_key`, `delete_key`): `key` by name, for `functools.partial`."""

    def __call__(self, request: web.Request, doc_id: str, key: str) -> Awaitable[web.StreamResponse]: ...


def _read_bytes(path: str) -> bytes:
    with open(path, "rb") as file:
        return file.read()


class Api:
    def __init__(self, node: Node, config: DaemonConfig) -> None:
        self.node = node
        self.config = config
        self.started = time.monotonic()
        self._watch_signals: set[causal_http.WatchSignal] = set()
        self.registry = CollectorRegistry()
        self.registry.register(NodeCollector(node, self.started, config.node.dc))
        self.requests_rejected = 0
        self.forwarding = HttpForwarding(node, config.http)
        self.registry.register(self.forwarding.collector())
        self.auth = TokenCheck(config.tokens, open_files=UI_FILES)
        self.registry.register(RefusalCollector(lambda: self.auth.refused))
        self.store_guard = StoreGuard(node)
        self.registry.register(self.store_guard.collector())
        self.token_waits = causal_http.TokenWaits()
        self.watch_events = causal_http.WatchEvents(config.http.watchers_max)
        self.doc_states = causal_http.DocStates()
        self.registry.register(self.token_waits.collector())
        self.registry.register(self.watch_events.collector())
        self.websockets = WebSockets(node, config.websocket)
        self.registry.register(self.websockets.collector())
        self.warnings = config_warnings(config)
        self._ui_bodies: dict[str, bytes] = {}
        # Built once: bound methods and their tables cost a few allocations per request otherwise.
        self._key_methods: dict[str, KeyHandler] = {
            "GET": self.get_key,
            "PUT": self.put_key,
            "DELETE": self.delete_key,
        }
        self._stream_methods: dict[tuple[str, str], DocHandler] = {
            ("watch", "GET"): self.watch,
            ("update", "GET"): self.get_update,
            ("update", "POST"): self.post_update,
        }
        self._doc_methods: dict[str, DocHandler] = {"GET": self.get_doc, "PATCH": self.patch_doc}

    def app(self) -> web.Application:
        middlewares = [self._errors, self.auth.middleware] if self.config.tokens else [self._errors]
        app = web.Application(client_max_size=self.config.http.body_bytes_max, middlewares=middlewares)
        app.on_response_prepare.append(self._served_by)
        app.router.add_get("/health", self.health)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/ui", self.ui)
        app.router.add_get("/ui/{name}", self.ui)
        app.router.add_get("/v1/status", self.status)
        app.router.add_get("/v1/docs", self.list_docs)
        app.router.add_get("/v1/placement", self.cluster_placement)
        app.router.add_get("/v1/placement/{doc:.+}", self.placement)
        app.router.add_route("*", "/v1/docs/{rest:.+}", self.doc_route)
        app.router.add_get(WS_PATH_PREFIX + "{doc:.+}", self.websocket)
        artifacts_http.register(app, self)
        batch_http.register(app, self)
        backup_http.register(app, self)
        top_http.register(app, self)
        self.forwarding.serving(app, self.doc_route, self._serve_forwarded)
        return app

    async def _served_by(self, request: web.Request, response: web.StreamResponse) -> None:
        """Every answer names the node that served it: behind a load balancer, and for a doc this
        node does not hold (placement), the holder it forwarded the request to."""
        if not len(request):  # nothing set on it (most requests): served here, and not a doc read.
            # Checked first: `request.get` of an absent key raises and catches a KeyError.
            response.headers["X-Served-By"] = self.node.config.node_id
            return
        response.headers["X-Served-By"] = request.get(SERVED_BY_KEY, self.node.config.node_id)
        if SERVED_AS_KEY in request:  # a doc read: from a replica, a read follower, or a fetched copy
            response.headers["X-Served-As"] = request[SERVED_AS_KEY]

    @web.middleware
    async def _errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except ApiError as exc:
            self.requests_rejected += 1
            return error_response(exc.status, exc.code, exc.message)
        except causal_http.RequestError as exc:
            self.requests_rejected += 1
            error = {"code": exc.code, "message": exc.message, **exc.details}
            return json_response({"error": error}, status=exc.status)
        except HintsFullError as exc:  # refused before it was applied: nothing to undo
            self.requests_rejected += 1
            return error_response(507, "hints_full", str(exc))
        except web.HTTPRequestEntityTooLarge as exc:
            self.requests_rejected += 1
            return error_response(
                413, "too_large", f"request body over {self.config.http.body_bytes_max} bytes: {exc.text}"
            )
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            return error_response(exc.status, exc.reason.lower().replace(" ", "_"), exc.reason)
        except (ConnectionResetError, asyncio.CancelledError, GeneratorExit, KeyboardInterrupt, SystemExit):
            raise
        except BaseException:
            # BaseException: pycrdt panics (PanicException) are not Exceptions, and one that escaped
            # here made aiohttp drop the connection without an answer.
            log.exception("request %s %s failed", request.method, request.path)
            return error_response(500, "internal", "internal error; see the daemon log")

    # ------------------------------------------------------------------ node-wide

    async def health(self, request: web.Request) -> web.Response:
        failure = self.store_guard.failing()
        if failure is not None:
            code = "store_full" if failure.full else "store_unavailable"
            error = {"code": code, "message": str(failure)}
            return json_response({"status": code, "node_id": self.node.config.node_id, "error": error}, 503)
        return json_response({"status": "ok", "node_id": self.node.config.node_id})

    async def metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def status(self, request: web.Request) -> web.Response:
        status = self.node.status()
        uptime_s = time.monotonic() - self.started
        return json_response(
            status_json(
                status,
                uptime_s=uptime_s,
                http_listen=self.config.http.listen,
                merkle_root=self.node.merkle_root(),
                warnings=self.warnings,
            )
            | {"forwarding": self.node.forwarding.counters.as_dict()}
        )

    async def ui(self, request: web.Request) -> web.Response:
        """The dashboard: `/ui` is its page, `/ui/NAME` one of its files (UI_FILES)."""
        name = request.match_info.get("name", "index.html")
        if name not in UI_FILES:
            raise ApiError(404, "not_found", f"no dashboard file {name[:80]!r}")
        body = self._ui_bodies.get(name)
        if body is None:
            body = self._ui_bodies[name] = await asyncio.to_thread(_read_bytes, os.path.join(UI_DIR, name))
        return web.Response(body=body, headers={"Content-Type": UI_FILES[name], **UI_HEADERS})

    async def websocket(self, request: web.Request) -> web.StreamResponse:
        """`GET /v1/ws/{doc}`: a y-websocket connection (crdtsync/daemon/websocket.py); read-only with
        a read token, and then only to a doc that exists."""
        doc_id = check_doc_id(request.match_info["doc"])
        token: Token | None = request.get(TOKEN_KEY)
        writable = token is None or token.scope == "write"
        if not writable and not self.node.has_doc(doc_id):
            raise ApiError(404, "no_such_doc", f"doc {doc_id!r} does not exist on this node")
        if not self.config.tokens and not same_origin(request):
            # Without tokens, any web page a user of this host opens could use the node.
            raise ApiError(403, "forbidden_origin", "without tokens, only this node's own pages may connect")
        return await self.websockets.handle(request, doc_id, writable=writable)

    async def cluster_placement(self, request: web.Request) -> web.Response:
        return json_response(cluster_placement_json(self.node.cluster_placement(), self.node.status()))

    async def placement(self, request: web.Request) -> web.Response:
        doc_id = check_doc_id(request.match_info["doc"])
        return json_response(placement_json(self.node.placement(doc_id)))

    async def list_docs(self, request: web.Request) -> web.Response:
        prefix = request.query.get("prefix", "")
        after = request.query.get("after", "")
        limit_text = request.query.get("limit", "100")
        if not limit_text.isdigit() or not 1 <= int(limit_text) <= self.config.http.docs_page_max:
            raise ApiError(
                400, "bad_limit", f"limit must be an integer in 1..{self.config.http.docs_page_max}"
            )
        limit = int(limit_text)
        ids = self.node.doc_ids(after=after, limit=limit + 1, prefix=prefix)
        more = len(ids) > limit
        ids = ids[:limit]
        return json_response({"docs": ids, "next": ids[-1] if more and ids else None})

    # ------------------------------------------------------------------ one doc

    async def doc_route(self, request: web.Request) -> web.StreamResponse:
        doc_id, serve = self._doc_handler(request)
        forwarded_here = self.forwarding.is_forwarded(request)
        watch = serve == self.watch
        if forwarded_here and watch:
            raise ApiError(405, "method_not_allowed", "a watch stream is not forwarded")
        session = causal_http.session_token(request)
        if session is not None:
            request[causal_http.SESSION_KEY] = session
        # A stream is served where it is asked for, a request forwarded here is never forwarded
        # again. Whether to forward is asked first, without a coroutine: most requests are about
        # docs this node holds.
        if not forwarded_here and not watch and self.forwarding.wanted(request, doc_id):
            forwarded = await self.forwarding.forward(request, doc_id)
            if forwarded is not None:
                return forwarded
        if request.method in WRITE_METHODS:
            self.store_guard.check()
        return await serve(request, doc_id)

    async def _serve_forwarded(self, request: web.Request) -> web.StreamResponse:
        """A doc request another node forwarded here: the doc route with its error answers, but not
        the token check (done where it arrived)."""
        return await self._errors(request, self.doc_route)

    def _doc_handler(self, request: web.Request) -> tuple[str, DocHandler]:
        """The doc a `/v1/docs/...` request is about and the method that serves it (400 or 405 first)."""
        rest: str = request.match_info["rest"]
        segments = rest.split("/")
        method: DocHandler | None
        if len(segments) >= 3 and segments[-2] == "keys":
            doc_id, key = check_doc_id("/".join(segments[:-2])), check_key(segments[-1])
            key_method = self._key_methods.get(request.method)
            if key_method is None:
                raise ApiError(405, "method_not_allowed", f"{request.method} is not allowed on a key")
            # A partial, not a coroutine around the method: one frame less per key request.
            return doc_id, functools.partial(key_method, key=key)
        if len(segments) >= 2 and segments[-1] in ("update", "watch"):
            doc_id = check_doc_id("/".join(segments[:-1]))
            method = self._stream_methods.get((segments[-1], request.method))
            if method is None:
                raise ApiError(405, "method_not_allowed", f"{request.method} is not allowed here")
            return doc_id, method
        method = self._doc_methods.get(request.method)
        if method is None:
            raise ApiError(405, "method_not_allowed", f"{request.method} is not allowed on a doc")
        return check_doc_id(rest), method

    async def _open_existing(self, doc_id: str, request: web.Request) -> Doc[Any]:
        if request.method == "GET":  # a read waits for its token first: the doc may be on its way
            watch = request.path.endswith("/watch")
            await causal_http.await_token(
                self.node, self.token_waits, request, doc_id, self.config.http.wait_ms_max, watch=watch
            )
        holds = self.node.holds(doc_id)
        request[SERVED_AS_KEY] = "holder" if holds else "follower" if self.node.follows(doc_id) else "fetched"
        # A forwarded read was counted where it arrived (adaptive replication: where it is read).
        read = request.method == "GET" and not self.forwarding.is_forwarded(request)
        if self.node.has_doc(doc_id):
            return await self.node.open(doc_id, read=read)
        if not holds:
            # A doc this node does not hold (placement) is fetched from its nearest holder.
            doc = await self.node.open(doc_id, read=read)
            if doc.get_state() != EMPTY_STATE:
                return doc
            self.node.release(doc_id)
        raise ApiError(404, "no_such_doc", f"doc {doc_id!r} does not exist on this node")

    async def _written(self, doc_id: str, doc: Doc[Any], request: web.Request) -> web.Response:
        try:
            try:
                await self.node.flush()
            except StoreCommitError as exc:
                raise self.store_guard.refusal(exc) from None
            state, vector = self.doc_states.current(doc_id, doc)
            token = causal_http.token_fields(request, doc_id, state)
        finally:
            self.node.release(doc_id)
        acks = await self._write_acks(doc_id, request) if "write_acks" in request.query else {}
        return json_response({"doc_id": doc_id, "state_vector": b64url(vector), **token, **acks})

    async def _write_acks(self, doc_id: str, request: web.Request) -> dict[str, Any]:
        """`write_acks=N|dc|all`: answer once N replicas, or every alive holder of this datacenter or
        of all, hold the write durably (docs/placement.md, docs/consistency.md); 504
        `write_acks_timeout` with the replicas that did after `wait_ms`. The write itself stands."""
        text = request.query["write_acks"]
        wanted: WriteAcksWanted
        if text in ("dc", "all"):
            wanted = "dc" if text == "dc" else "all"
        elif text.isdigit() and 1 <= int(text) <= WRITE_ACKS_MAX:
            wanted = int(text)
        else:
            raise ApiError(
                400, "bad_write_acks", f'write_acks must be an integer in 1..{WRITE_ACKS_MAX}, "dc" or "all"'
            )
        timeout_ms = causal_http.wait_ms(request, self.config.http.wait_ms_max)
        try:
            acks = await self.node.write_acks(doc_id, wanted, timeout_ms=timeout_ms)
        except WriteAcksTimeoutError as exc:
            details = {"needed": exc.needed, "confirmed": list(exc.confirmed)}
            raise causal_http.RequestError(504, "write_acks_timeout", str(exc), details) from None
        return {"write_acks": {"needed": acks.needed, "confirmed": list(acks.confirmed)}}

    async def get_doc(self, request: web.Request, doc_id: str) -> web.Response:
        doc = await self._open_existing(doc_id, request)
        try:
            data = json_of(doc.get("data", type=Map), doc_id)
            state, vector = self.doc_states.current(doc_id, doc)
            token = causal_http.token_fields(request, doc_id, state)
        finally:
            self.node.release(doc_id)
        return json_response({"doc_id": doc_id, "data": data, "state_vector": b64url(vector), **token})

    async def get_key(self, request: web.Request, doc_id: str, key: str) -> web.Response:
        doc = await self._open_existing(doc_id, request)
        try:
            data = doc.get("data", type=Map)
            if key not in data:
                raise ApiError(404, "no_such_key", f"doc {doc_id!r} has no key {key!r}")
            value = json_of(data[key], doc_id)  # the one value: the whole map would cost every key's
            token = causal_http.token_fields(request, doc_id, self.doc_states.state(doc_id, doc))
        finally:
            self.node.release(doc_id)
        return json_response({"doc_id": doc_id, "key": key, "value": value, **token})

    async def put_key(self, request: web.Request, doc_id: str, key: str) -> web.Response:
        value = parse_json(await request.read())
        doc = await self.node.open(doc_id, read=False)
        try:
            # The root's lookup is a transaction too: one instead of two. The origin lets
            # `DocStates` follow the doc's state without a snapshot per answer.
            with doc.transaction(origin=causal_http.EDIT_ORIGIN):
                doc.get("data", type=Map)[key] = value
        except BaseException:
            self.node.release(doc_id)
            raise
        return await self._written(doc_id, doc, request)

    async def delete_key(self, request: web.Request, doc_id: str, key: str) -> web.Response:
        doc = await self._open_existing(doc_id, request)
        data = doc.get("data", type=Map)
        if key not in data:
            self.node.release(doc_id)
            raise ApiError(404, "no_such_key", f"doc {doc_id!r} has no key {key!r}")
        with doc.transaction(origin=causal_http.EDIT_ORIGIN):
            del data[key]
        return await self._written(doc_id, doc, request)

    async def patch_doc(self, request: web.Request, doc_id: str) -> web.Response:
        body = parse_json(await request.read())
        if not isinstance(body, dict) or not body:
            raise ApiError(400, "bad_patch", "PATCH takes a non-empty JSON object of keys to set")
        for key in body:
            check_key(key)
        doc = await self.node.open(doc_id, read=False)
        try:
            data = doc.get("data", type=Map)
            with doc.transaction(origin=causal_http.EDIT_ORIGIN):
                for key, value in body.items():
                    data[key] = value
        except BaseException:
            self.node.release(doc_id)
            raise
        return await self._written(doc_id, doc, request)

    async def get_update(self, request: web.Request, doc_id: str) -> web.Response:
        state = from_b64url(request.query.get("sv", ""), "sv")
        if state:
            try:
                decode_state_vector(state)
            except StateDecodeError as exc:
                raise ApiError(400, "bad_state_vector", f"sv is not an encoded state vector: {exc}") from None
        doc = await self._open_existing(doc_id, request)
        try:
            update = doc.get_update(state) if state else doc.get_update()
            held, current = self.doc_states.current(doc_id, doc)
            token = causal_http.token_fields(request, doc_id, held)["token"]
        finally:
            self.node.release(doc_id)
        return web.Response(
            body=update,
            content_type="application/octet-stream",
            headers={"X-State-Vector": b64url(current), **({"X-Causal-Token": token} if token else {})},
        )

    async def post_update(self, request: web.Request, doc_id: str) -> web.Response:
        """Apply a Yjs update. `sv` names the state vector it was computed against (what this node
        answered with); without it the update must be a whole doc state. An update whose base this
        node does not cover is refused (409): pycrdt 0.14 can get stuck on out-of-order updates."""
        update = await request.read()
        if not update:
            raise ApiError(400, "empty_body", "send a binary Yjs update as the request body")
        base = from_b64url(request.query.get("sv", ""), "sv")
        try:
            needed = decode_state_vector(base) if base else {}
        except StateDecodeError as exc:
            raise ApiError(400, "bad_state_vector", f"sv is not an encoded state vector: {exc}") from None
        # Check everything before the doc is opened: opening creates it, and a refused update must
        # leave nothing behind.
        exists = self.node.has_doc(doc_id)
        current = b"\x00"
        if exists:
            doc = await self.node.open(doc_id, read=False)
            current = doc.get_update()
            held = decode_state_vector(doc.get_state())
            self.node.release(doc_id)
        else:
            held = {}
        if not covers(held, needed):
            raise ApiError(
                409, "behind", "this node does not hold the state the update was computed against; sync first"
            )
        # Validate on a scratch copy first: pycrdt rejects some garbage only by panicking, and
        # accepts some only to be left with a doc that cannot be encoded (a panic at every later
        # read) or whose encoding no longer rebuilds it (items freed, which a later read of the
        # doc dereferences: a crash). A doc must re-encode into an update that rebuilds its state.
        scratch: Doc[Any] = Doc()
        try:
            if exists:
                scratch.apply_update(current)
            scratch.apply_update(update)
            rebuilt: Doc[Any] = Doc()
            rebuilt.apply_update(scratch.get_update())
            # Compared decoded: get_state() bytes follow hash-map order, and equal states of two
            # clients or more came out in different orders (one valid update in ten refused).
            if decode_state_vector(rebuilt.get_state()) != decode_state_vector(scratch.get_state()):
                raise ValueError("the doc it leaves does not survive re-encoding")
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:
            raise ApiError(400, "bad_update", f"not a valid Yjs update for this doc: {exc}") from None
        doc = await self.node.open(doc_id, read=False)
        try:
            doc.apply_update(update)
        except BaseException:
            self.node.release(doc_id)
            raise
        return await self._written(doc_id, doc, request)

    async def watch(self, request: web.Request, doc_id: str) -> web.StreamResponse:
        self.watch_events.take_slot()  # before any await: concurrent opens cannot pass the limit
        try:
            return await self._watch(request, doc_id)
        finally:
            self.watch_events.free_slot()

    async def _watch(self, request: web.Request, doc_id: str) -> web.StreamResponse:
        doc = await self._open_existing(doc_id, request)
        watch_signal = causal_http.WatchSignal()

        def changed(event: TransactionEvent) -> None:
            watch_signal.changed()

        subscription = doc.observe(changed)
        self.watch_events.hold(doc_id)
        self._watch_signals.add(watch_signal)
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            }
        )
        try:
            await response.prepare(request)
            since = causal_http.last_event_state(request, doc_id)
            async for event in self._snapshots(doc_id, doc, watch_signal, since):
                await response.write(event)
        except ApiError as exc:  # the doc cannot be rendered (not_json): say so, end the stream
            error = {"error": {"code": exc.code, "message": exc.message}}
            await response.write(f"event: error\ndata: {jsonvalues.dumps(error)}\n\n".encode())
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self.watch_events.drop(doc_id)
            self._watch_signals.discard(watch_signal)
            doc.unobserve(subscription)
            self.node.release(doc_id)
        return response

    def close_streams(self) -> None:
        """End every watch stream and WebSocket (at shutdown: the server would otherwise wait for them)."""
        self.websockets.close_all()
        self.token_waits.stop()
        for watch_signal in self._watch_signals:
            watch_signal.stop()

    async def _snapshots(
        self, doc_id: str, doc: Doc[Any], watch_signal: causal_http.WatchSignal, since: DocState | None
    ) -> AsyncIterator[bytes]:
        """The stream's events: the doc now, then after every change; `id:` is the doc's token (a
        client reconnecting with it as `Last-Event-ID` resumes from there, on any node). After a
        `Last-Event-ID` (`since`), the first event says whether the doc `changed` since."""
        keepalive_s = self.config.http.watch_keepalive_ms / 1000.0
        while True:
            yield self.watch_events.render(doc_id, doc, since)
            since = None
            changed = await watch_signal.wait(keepalive_s)
            while changed is None:
                # A comment line keeps proxies from closing an idle stream, and a client that went
                # away fails this write and frees its slot.
                yield b":\n\n"
                changed = await watch_signal.wait(keepalive_s)
            if not changed:
                return
