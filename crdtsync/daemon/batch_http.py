"""`POST /v1/batch`: many keys of many docs in one request, answered once, when the store holds all
of them (docs/http-api.md#post-v1batch).

    {"writes": [{"doc": "models/registry", "key": "llama-3", "value": {"stage": "prod"}},
                {"doc": "flags/features", "key": "old-router", "delete": true}]}

Every write is checked before any is applied: a bad one refuses the whole request with a 400 that
names it (`writes[3].key: ...`), and nothing is written. Then each doc's writes are applied in their
order in one transaction per doc, every doc's update is published and committed together (one pump,
one group commit: see `Node.flush`), and the answer says how many keys were set and deleted.
A single key PUT costs the daemon a whole HTTP request and its answer; a batch spreads that over up
to BATCH_WRITES_MAX keys.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from aiohttp import web
from pycrdt import Doc, Map

from crdtsync.consistency import CausalToken, TokenTooLargeError
from crdtsync.daemon import causal_http
from crdtsync.daemon.http_input import ApiError, check_doc_id, check_key, json_response, parse_json
from crdtsync.store import StoreCommitError

if TYPE_CHECKING:
    from crdtsync.daemon.http import Api

PATH = "/v1/batch"
BATCH_WRITES_MAX = 10_000
"""Writes (keys set or deleted) in one request."""
BATCH_DOCS_MAX = 1_000
"""Distinct docs in one request: each is loaded and held in memory until the answer."""
WRITE_FIELDS = frozenset({"doc", "key", "value", "delete"})

Write = tuple[str, Any, bool]
"""(key, value, delete) of one doc."""


def register(app: web.Application, api: Api) -> None:
    """Add the route to the daemon's application (`Api.app`)."""
    app.router.add_post(PATH, BatchRoute(api).post)


def _bad(index: int, message: str, code: str = "bad_batch") -> ApiError:
    return ApiError(400, code, f"writes[{index}]: {message}")


def _one_write(index: int, write: Any, seen: Mapping[str, object]) -> tuple[str, str, Any, bool]:
    """One write checked (its doc id once per batch: `seen` holds the ids already checked)."""
    if not isinstance(write, dict):
        raise _bad(index, 'each write is an object {"doc": ..., "key": ..., "value": ...}')
    if not WRITE_FIELDS.issuperset(write):  # no set built per write: a batch has up to 10,000
        unknown = set(write) - WRITE_FIELDS
        raise _bad(index, f"unknown field {sorted(unknown)[0]!r:.80} (a write has doc, key, value or delete)")
    doc_id, key = write.get("doc"), write.get("key")
    if not isinstance(doc_id, str) or not isinstance(key, str):
        raise _bad(index, '"doc" and "key" are required strings')
    try:
        if doc_id not in seen:
            check_doc_id(doc_id)
        check_key(key)
    except ApiError as exc:
        raise _bad(index, exc.message, exc.code) from None
    delete = write.get("delete", False)
    if delete is not False and delete is not True:
        raise _bad(index, '"delete" is true or false')
    if delete == ("value" in write):
        raise _bad(index, 'a write has a "value" to set, or "delete": true, not both or neither')
    return doc_id, key, write.get("value"), delete


def parse_batch(body: Any) -> dict[str, list[Write]]:
    """The writes of a batch body grouped by doc (in their order within each doc), every one
    checked: ApiError (400) naming the first bad one."""
    if not isinstance(body, dict) or set(body) != {"writes"} or not isinstance(body["writes"], list):
        raise ApiError(400, "bad_batch", 'a batch is a JSON object {"writes": [...]} and nothing else')
    writes: list[Any] = body["writes"]
    if not 1 <= len(writes) <= BATCH_WRITES_MAX:
        raise ApiError(400, "too_many_writes", f"a batch has 1..{BATCH_WRITES_MAX} writes, not {len(writes)}")
    by_doc: dict[str, list[Write]] = {}
    for index, write in enumerate(writes):
        doc_id, key, value, delete = _one_write(index, write, by_doc)
        if doc_id not in by_doc and len(by_doc) == BATCH_DOCS_MAX:
            raise ApiError(
                400, "too_many_docs", f"writes[{index}]: a batch writes at most {BATCH_DOCS_MAX} docs"
            )
        by_doc.setdefault(doc_id, []).append((key, value, delete))
    return by_doc


class BatchRoute:
    def __init__(self, api: Api) -> None:
        self.api = api
        self.node = api.node

    async def post(self, request: web.Request) -> web.Response:
        session = causal_http.session_token(request)
        want_token = _flag(request, "token")
        by_doc = parse_batch(parse_json(await request.read()))
        self.api.store_guard.check()  # refused before anything is applied while the store fails
        docs: dict[str, Doc[Any]] = {}
        try:
            for doc_id in by_doc:
                docs[doc_id] = await self.node.open(doc_id, read=False)
            set_keys = deleted = 0
            for doc_id, writes in by_doc.items():
                doc = docs[doc_id]
                # The root's lookup too: a transaction of its own costs ~5 µs. The origin lets
                # `DocStates` follow the doc's state for the token.
                with doc.transaction(origin=causal_http.EDIT_ORIGIN):
                    data = doc.get("data", type=Map)
                    for key, value, delete in writes:
                        if not delete:
                            data[key] = value
                            set_keys += 1
                        elif key in data:
                            del data[key]
                            deleted += 1
            try:
                await self.node.flush()
            except StoreCommitError as exc:  # applied, retried, but not durable: not acknowledged
                raise self.api.store_guard.refusal(exc) from None
            answer: dict[str, Any] = {"docs": len(by_doc), "set": set_keys, "deleted": deleted}
            if want_token or session is not None:
                answer.update(_token(docs, session, self.api.doc_states))
        finally:
            for doc_id in docs:
                self.node.release(doc_id)
        return json_response(answer)


def _flag(request: web.Request, name: str) -> bool:
    text = request.query.get(name, "false")
    if text not in ("true", "false"):
        raise ApiError(400, "bad_parameter", f"{name} is true or false, not {text[:20]!r}")
    return text == "true"


def _token(
    docs: Mapping[str, Doc[Any]], session: CausalToken | None, states: causal_http.DocStates
) -> dict[str, Any]:
    """One token of every doc written, merged into the request's `session`; beyond the token bounds
    (docs/consistency.md) none, with a `token_note` (the writes stand)."""
    try:
        token = CausalToken.of({doc_id: states.state(doc_id, doc) for doc_id, doc in docs.items()})
        return {"token": (token if session is None else session.merge(token)).encode()}
    except TokenTooLargeError as exc:
        return {"token": None, "token_note": str(exc)}
