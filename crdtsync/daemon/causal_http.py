"""The HTTP side of causal tokens (docs/consistency.md): `min_state` and `wait_ms` on reads, the
`token` of every doc answer (merged into the request's `session` token), and the watch stream's
event ids and `Last-Event-ID`.

Errors are `RequestError`s, which the API's error middleware answers like its own (with `details`
beside `code` and `message`).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import weakref
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

from aiohttp import web
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from pycrdt import Doc, Map, Snapshot, Subscription, TransactionEvent

from crdtsync.consistency import (
    CausalToken,
    DocState,
    NotCoveredError,
    TokenError,
    TokenTooLargeError,
    TooManyWaitersError,
    delete_set_ranges,
    doc_state,
    snapshot_state,
)
from crdtsync.core.state import decode_state_vector
from crdtsync.daemon import jsonvalues
from crdtsync.daemon.http_input import json_of
from crdtsync.node import Node

WAIT_MS_DEFAULT = 2000
SESSION_KEY = web.RequestKey("causal_session", CausalToken)
"""Where `doc_route` keeps the request's parsed `session` token."""
EDIT_ORIGIN = "crdtsync.http.edit"
"""The origin of the API's own Map edits (PUT, PATCH, DELETE of keys): `DocStates` follows them."""
TRACKED_DOCS_MAX = 1024
"""The most docs whose DocState `DocStates` keeps up to date (the least recently answered leave)."""


class RequestError(Exception):
    def __init__(self, status: int, code: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details or {}


def _token(text: str, name: str) -> CausalToken:
    try:
        return CausalToken.decode(text)
    except TokenError as exc:
        raise RequestError(400, "bad_token", f"{name} is not a causal token of this version: {exc}") from None


def session_token(request: web.Request) -> CausalToken | None:
    """The request's `session` token (checked before anything is written), or None."""
    text = request.query.get("session")
    return None if text is None else _token(text, "session")


def wait_ms(request: web.Request, wait_ms_max: int) -> int:
    text = request.query.get("wait_ms")
    if text is None:
        return min(WAIT_MS_DEFAULT, wait_ms_max)
    if not text.isdigit() or int(text) > wait_ms_max:
        raise RequestError(400, "bad_wait_ms", f"wait_ms must be an integer in 0..{wait_ms_max}")
    return int(text)


def wanted_token(request: web.Request, *, watch: bool) -> CausalToken | None:
    """What a read must wait for: `min_state`, merged for a watch with its `Last-Event-ID` (a
    reconnecting stream resumes from no older state than the one it saw last)."""
    text = request.query.get("min_state")
    token = None if text is None else _token(text, "min_state")
    last = request.headers.get("Last-Event-ID") if watch else None
    if last:
        seen = _token(last, "Last-Event-ID")
        try:
            token = seen if token is None else token.merge(seen)
        except TokenTooLargeError as exc:
            raise RequestError(400, "bad_token", f"min_state and Last-Event-ID together: {exc}") from None
    return token


class TokenWaits:
    """The API's reads that wait for a token: counted (for the metrics) and ended at shutdown, so that
    a waiting read never holds up a stopping daemon for its `wait_ms`."""

    def __init__(self) -> None:
        self.waiting = 0
        self.not_covered = 0
        """Reads answered 504 `not_yet_covered` so far."""
        self.stopping = asyncio.Event()

    def stop(self) -> None:
        """Answer every waiting read now (503 `stopping`) and every later one at once."""
        self.stopping.set()

    def collector(self) -> Collector:
        return _TokenWaitsCollector(self)


class _TokenWaitsCollector(Collector):
    def __init__(self, waits: TokenWaits) -> None:
        self.waits = waits

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "crdtsync_http_token_waits",
            "HTTP reads waiting now for their min_state causal token (docs/consistency.md).",
            value=self.waits.waiting,
        )
        yield CounterMetricFamily(
            "crdtsync_http_token_not_covered",
            "HTTP reads answered 504 not_yet_covered: the node did not cover their token within wait_ms.",
            value=self.waits.not_covered,
        )


async def await_token(
    node: Node, waits: TokenWaits, request: web.Request, doc_id: str, wait_ms_max: int, *, watch: bool
) -> None:
    """Return once the node covers the read's token for `doc_id` (at once without one); 504
    `not_yet_covered` naming what it lacks after `wait_ms`, 503 `too_many_waiters` beyond the bound,
    503 `stopping` when the daemon stops meanwhile."""
    token = wanted_token(request, watch=watch)
    if token is None:
        return
    timeout_ms = wait_ms(request, wait_ms_max)
    try:
        try:
            # Covered already (the common case): answered without a task or a wait.
            await node.wait_for(doc_id, token, timeout_ms=0)
            return
        except NotCoveredError:
            if timeout_ms == 0:
                raise
        if waits.stopping.is_set():
            raise RequestError(503, "stopping", "the node is stopping; read from another node")
        waits.waiting += 1
        try:
            await _wait_unless_stopping(node, waits, doc_id, token, timeout_ms)
        finally:
            waits.waiting -= 1
    except NotCoveredError as exc:
        waits.not_covered += 1
        raise RequestError(
            504,
            "not_yet_covered",
            f"this node does not yet hold everything the token names of doc {doc_id!r} "
            f"(waited {timeout_ms} ms); retry, or read from another node",
            {"doc_id": doc_id, "waited_ms": timeout_ms, "missing": exc.missing.to_json()},
        ) from None
    except TooManyWaitersError as exc:
        raise RequestError(503, "too_many_waiters", str(exc)) from None


async def _wait_unless_stopping(
    node: Node, waits: TokenWaits, doc_id: str, token: CausalToken, timeout_ms: int
) -> None:
    wait = asyncio.ensure_future(node.wait_for(doc_id, token, timeout_ms=timeout_ms))
    stopping = asyncio.ensure_future(waits.stopping.wait())
    try:
        await asyncio.wait((wait, stopping), return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
        if not wait.done():
            wait.cancel()  # the waiter leaves the node's table, and its doc is released
            with contextlib.suppress(asyncio.CancelledError):
                await wait
    if wait.cancelled():
        raise RequestError(503, "stopping", "the node is stopping; read from another node")
    wait.result()  # NotCoveredError and TooManyWaitersError propagate


class _Tracked:
    __slots__ = ("doc", "state", "subscription", "vector")

    def __init__(self, doc: Doc[Any]) -> None:
        self.doc = weakref.ref(doc)  # the node may evict the doc: this must not keep it in memory
        self.subscription: Subscription | None = None
        self.state: DocState | None = None
        """What the doc holds now; None until computed, and after any change not made by the API."""
        self.vector = b""
        """The doc's encoded state vector (as `Doc.get_state`) while `state` is not None."""


class DocStates:
    """What each doc answered about holds now (its DocState, for the token of every answer), kept
    up to date from the API's own edits instead of a pycrdt snapshot per answer: a snapshot walks
    every item the doc ever had (2.5 µs at 10 writes, 24 µs at 3,000, 266 µs at 30,000; a hot doc's
    PUT cost grew from 259 to 719 µs over its first 56,000 writes). An edit of `EDIT_ORIGIN` is a
    local Map edit, whose transaction's delete set and state vector are exact; any other change (a
    remote update, a WebSocket client, a backup restored) drops the doc's state, computed again from a
    snapshot at its next answer. At most `tracked_max` docs, the least recently answered leave."""

    def __init__(self, tracked_max: int = TRACKED_DOCS_MAX) -> None:
        self.tracked_max = tracked_max
        self._tracked: OrderedDict[str, _Tracked] = OrderedDict()

    def state(self, doc_id: str, doc: Doc[Any]) -> DocState:
        """The doc's DocState now (call it outside a transaction)."""
        return self.current(doc_id, doc)[0]

    def current(self, doc_id: str, doc: Doc[Any]) -> tuple[DocState, bytes]:
        """The doc's DocState and its encoded state vector now (what `Doc.get_state` gives, without
        the transaction it takes after an edit of the API). Call it outside a transaction."""
        tracked = self._tracked.get(doc_id)
        if tracked is None or tracked.doc() is not doc:  # new, or evicted and loaded again
            tracked = self._track(doc_id, doc)
        else:
            self._tracked.move_to_end(doc_id)
        if tracked.state is None:
            tracked.state = doc_state(doc)
            tracked.vector = doc.get_state()
        return tracked.state, tracked.vector

    def _track(self, doc_id: str, doc: Doc[Any]) -> _Tracked:
        self._untrack(doc_id)
        while len(self._tracked) >= self.tracked_max:
            self._untrack(next(iter(self._tracked)))
        tracked = self._tracked[doc_id] = _Tracked(doc)
        tracked.subscription = doc.observe(lambda event: _follow(tracked, event))
        return tracked

    def _untrack(self, doc_id: str) -> None:
        tracked = self._tracked.pop(doc_id, None)
        if tracked is None:
            return
        doc = tracked.doc()
        if doc is not None and tracked.subscription is not None:
            doc.unobserve(tracked.subscription)

    def __len__(self) -> int:
        return len(self._tracked)


_EDIT_ORIGIN_HASH = hash(EDIT_ORIGIN)  # what pycrdt keeps of a transaction's origin
_NO_DELETES = b"\x00"
"""A transaction's `delete_set` when it deleted nothing (a key set for the first time)."""


def _follow(tracked: _Tracked, event: TransactionEvent) -> None:
    state = tracked.state
    if state is None:
        return
    if event.transaction.origin() != _EDIT_ORIGIN_HASH:  # type: ignore[attr-defined]
        tracked.state = None
        return
    # pycrdt's stubs omit these attributes of TransactionEvent; they exist at run time.
    vector: bytes = event.after_state  # type: ignore[attr-defined]
    after = decode_state_vector(vector)
    tracked.vector = vector
    delete_set: bytes = event.delete_set  # type: ignore[attr-defined]
    deleted = None if delete_set == _NO_DELETES else delete_set_ranges(delete_set)
    tracked.state = state.merge(DocState(after, deleted)) if deleted else DocState(after, state.deletes)


def token_fields(request: web.Request, doc_id: str, state: DocState) -> dict[str, Any]:
    """The answer's `token`: what this node holds of the doc now (`state`, from `DocStates`), merged
    into the request's `session` token. Beyond the token bounds: the doc's own token and a
    `token_note` (the session token could not take the doc), or no token at all for a doc too large
    for any (see docs/consistency.md); the write itself stands either way."""
    try:
        own = CausalToken.of({doc_id: state})
    except TokenTooLargeError as exc:
        return {"token": None, "token_note": str(exc)}
    # Looked up only when the request has one: `request.get` of an absent key raises and catches a
    # KeyError.
    session: CausalToken | None = request.get(SESSION_KEY) if "session" in request.query else None
    if session is None:
        return {"token": own.encode()}
    try:
        return {"token": session.merge(own).encode()}
    except TokenTooLargeError as exc:
        return {"token": own.encode(), "token_note": f"session token not merged: {exc}"}


def event_id(doc_id: str, state: DocState) -> str:
    """A watch event's `id:`: the doc's token (empty, which resets the client's last id, for a doc
    beyond the token bounds)."""
    try:
        return CausalToken.of({doc_id: state}).encode()
    except TokenTooLargeError:
        return ""


class WatchSignal:
    """What a watch stream waits for: a change of its doc, or the daemon stopping. One slot (a slow
    client gets the latest state, never a backlog), and light: an idle stream holds this and one
    future, not a queue's three deques and a `wait_for` task (docs/consistency.md: memory per watcher)."""

    __slots__ = ("_pending", "_waiter")

    def __init__(self) -> None:
        self._pending: bool | None = None
        """True: the doc changed; False: the daemon stops (which no change overrides)."""
        self._waiter: asyncio.Future[None] | None = None

    def changed(self) -> None:
        self._set(True)

    def stop(self) -> None:
        self._set(False)

    def _set(self, value: bool) -> None:
        if self._pending is not False:
            self._pending = value
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def wait(self, timeout_s: float) -> bool | None:
        """True after a change, False when stopping, None after `timeout_s` without either."""
        if self._pending is None:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                async with asyncio.timeout(timeout_s):
                    await self._waiter
            except TimeoutError:
                return None
            finally:
                self._waiter = None
        pending, self._pending = self._pending, None
        return pending


class WatchEvents:
    """The node's watch streams: at most `watchers_max` open (each further one is refused, counted),
    and their events rendered once per doc change for all the doc's watchers (measured: about 60 µs
    a render, a third of a second per change for 5,000 watchers of one doc if each rendered its own).
    The cache key is the doc's encoded snapshot (its state vector and delete set): equal snapshots,
    equal content. One entry per watched doc, dropped with its last watcher."""

    def __init__(self, watchers_max: int) -> None:
        self.watchers_max = watchers_max
        self.open = 0
        """Streams open or opening (a slot is taken before the doc is opened)."""
        self.refused = 0
        """Streams refused with 503 `too_many_watchers`."""
        self._watchers: dict[str, int] = {}
        self._rendered: dict[str, tuple[bytes, bytes]] = {}

    def take_slot(self) -> None:
        """One stream more, or 503 `too_many_watchers` at `watchers_max` (counted)."""
        if self.open >= self.watchers_max:
            self.refused += 1
            raise RequestError(
                503,
                "too_many_watchers",
                f"{self.watchers_max} watch streams are open on this node (http.watchers_max); "
                "watch from another node, or retry later",
            )
        self.open += 1

    def free_slot(self) -> None:
        self.open -= 1

    def collector(self) -> Collector:
        return _WatchersCollector(self)

    def hold(self, doc_id: str) -> None:
        self._watchers[doc_id] = self._watchers.get(doc_id, 0) + 1

    def drop(self, doc_id: str) -> None:
        left = self._watchers[doc_id] - 1
        if left:
            self._watchers[doc_id] = left
        else:
            del self._watchers[doc_id]
            self._rendered.pop(doc_id, None)

    def render(self, doc_id: str, doc: Doc[Any], since: DocState | None) -> bytes:
        """The `change` event of the doc now; after a `Last-Event-ID` (`since`), with `changed`."""
        snapshot = Snapshot.from_doc(doc).encode()
        cached = self._rendered.get(doc_id)
        if since is None and cached is not None and cached[0] == snapshot:
            return cached[1]
        state = snapshot_state(snapshot)
        body: dict[str, Any] = {
            "doc_id": doc_id,
            "data": json_of(doc.get("data", type=Map), doc_id),
            "state_vector": base64.urlsafe_b64encode(doc.get_state()).rstrip(b"=").decode(),
        }
        if since is not None:
            body["changed"] = state != since
        event = f"id: {event_id(doc_id, state)}\nevent: change\ndata: {jsonvalues.dumps(body)}\n\n".encode()
        if since is None and doc_id in self._watchers:
            self._rendered[doc_id] = (snapshot, event)
        return event


class _WatchersCollector(Collector):
    def __init__(self, events: WatchEvents) -> None:
        self.events = events

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "crdtsync_http_watchers",
            "Watch streams open now (at most http.watchers_max).",
            value=self.events.open,
        )
        yield CounterMetricFamily(
            "crdtsync_http_watchers_refused",
            "Watch streams refused with 503 too_many_watchers: http.watchers_max were open.",
            value=self.events.refused,
        )


def last_event_state(request: web.Request, doc_id: str) -> DocState | None:
    """What the watcher saw last (its `Last-Event-ID`), or None for a fresh watch."""
    last = request.headers.get("Last-Event-ID")
    return None if not last else _token(last, "Last-Event-ID").get(doc_id)
