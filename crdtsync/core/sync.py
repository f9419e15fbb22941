"""State sync: exchange of state vectors and `get_update(remote_sv)` for named docs.

A `SYNC_REQUEST` carries (doc id, the requester's state vector); the answer carries what the
requester lacks and the responder's own state vector, and the requester pushes back what the
responder lacks. An update computed against a state vector this node covers is applied at once,
without the causal buffer; afterwards the buffer is drained, since the update may have brought
the dependencies some waiting deltas needed. Work on an evicted doc waits for its load (the answer
for that doc then goes out in a message of its own).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from crdtsync.core import wire
from crdtsync.core.causal import CausalBuffer
from crdtsync.core.context import Context
from crdtsync.core.docs import EMPTY_STATE, EMPTY_UPDATE, DocEntry, DocTable
from crdtsync.core.guard import Guard
from crdtsync.core.links import Links
from crdtsync.core.state import check_state_vector, update_since


class StateSync:
    def __init__(
        self, ctx: Context, docs: DocTable, guard: Guard, links: Links, causal: CausalBuffer
    ) -> None:
        self._ctx = ctx
        self._docs = docs
        self._guard = guard
        self._links = links
        self._causal = causal

    def send_entries(
        self,
        address: str,
        build: Callable[[tuple[Any, ...]], wire.Message],
        entries: list[tuple[Any, ...]],
        sizes: list[int],
        *,
        after_commit: bool = False,
    ) -> None:
        """Send `entries` as few messages as the per-message doc and byte limits allow."""
        chunk: list[tuple[Any, ...]] = []
        chunk_bytes = 0
        for entry, size in zip(entries, sizes, strict=True):
            if chunk and (
                len(chunk) >= wire.SYNC_DOCS_PER_MESSAGE_MAX
                or chunk_bytes + size > self._ctx.config.batch_bytes_max
            ):
                self._links.send(address, build(tuple(chunk)), after_commit=after_commit)
                chunk, chunk_bytes = [], 0
            chunk.append(entry)
            chunk_bytes += size
        if chunk:
            self._links.send(address, build(tuple(chunk)), after_commit=after_commit)

    def push(self, address: str, pushes: list[tuple[Any, ...]]) -> None:
        node_id = self._ctx.node_id
        self.send_entries(
            address,
            lambda chunk: wire.SyncPush(node_id, chunk),
            pushes,
            [len(update) for _doc_id, update in pushes],
        )

    def _send_answers(self, node_id: str, replies: list[tuple[Any, ...]]) -> None:
        address = self._links.address_of.get(node_id)
        if address is None:
            self._ctx.counters.unknown_peer += 1
            return
        node = self._ctx.node_id
        self.send_entries(
            address,
            lambda chunk: wire.SyncResponse(node, chunk),
            replies,
            [len(update) + len(state) for _doc_id, update, state in replies],
        )

    def on_request(self, message: wire.SyncRequest) -> None:
        ctx = self._ctx
        node_id = message.node_id
        if node_id not in self._links.address_of:
            ctx.counters.unknown_peer += 1
            return
        replies: list[tuple[Any, ...]] = []
        for doc_id, state in message.entries:
            ctx.counters.syncs_served += 1
            if len(message.entries) == 1:  # a follower's fetch is one doc (a forwarded read)
                ctx.load.fetched(doc_id, node_id, ctx.now_ms)
            entry = self._docs.get(doc_id)
            if entry is None:
                replies.append((doc_id, EMPTY_UPDATE, EMPTY_STATE))
                continue
            check_state_vector(state)  # before pycrdt sees it
            if entry.doc is not None:
                self._answer(entry, state, node_id, replies)
            else:
                answer = functools.partial(self._answer_alone, state=state, node_id=node_id)
                self._docs.when_loaded(entry, answer, len(state))
        if replies:
            self._send_answers(node_id, replies)

    def _answer(self, entry: DocEntry, state: bytes, node_id: str, replies: list[tuple[Any, ...]]) -> None:
        try:
            update = update_since(self._docs.doc(entry), state)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:
            self._ctx.counters.syncs_rejected += 1
            self._ctx.warn("sync_rejected", "sync of %r for %s rejected: %s", entry.doc_id, node_id, exc)
            return
        replies.append((entry.doc_id, update, entry.state_bytes))

    def _answer_alone(self, entry: DocEntry, state: bytes, node_id: str) -> None:
        replies: list[tuple[Any, ...]] = []
        self._answer(entry, state, node_id, replies)
        if replies:
            self._send_answers(node_id, replies)

    def on_response(self, message: wire.SyncResponse) -> None:
        node_id = message.node_id
        pushes: list[tuple[Any, ...]] = []
        for doc_id, update, state in message.entries:
            # Push back what the responder lacks: its state vector came with its answer.
            check_state_vector(state)
            remote_state = state
            if update != EMPTY_UPDATE and not self._guard.well_formed(doc_id, "sync", update, node_id):
                update = EMPTY_UPDATE  # refused, but the responder still gets what it lacks
            if update == EMPTY_UPDATE and doc_id not in self._docs:
                continue
            entry = self._entry_for(doc_id, node_id)
            if entry is None:
                continue
            if entry.doc is not None:
                self._take_answer(entry, update, remote_state, node_id, pushes)
            else:
                take = functools.partial(
                    self._take_answer_alone, update=update, remote_state=remote_state, node_id=node_id
                )
                self._docs.when_loaded(entry, take, len(update) + len(state))
        self._push_back(node_id, pushes)

    def _take_answer(
        self, entry: DocEntry, update: bytes, remote_state: bytes, node_id: str, pushes: list[tuple[Any, ...]]
    ) -> None:
        self._apply(entry, update, node_id)
        back = update_since(self._docs.doc(entry), remote_state)
        if back != EMPTY_UPDATE:
            pushes.append((entry.doc_id, back))

    def _take_answer_alone(self, entry: DocEntry, update: bytes, remote_state: bytes, node_id: str) -> None:
        pushes: list[tuple[Any, ...]] = []
        self._take_answer(entry, update, remote_state, node_id, pushes)
        self._push_back(node_id, pushes)

    def _push_back(self, node_id: str, pushes: list[tuple[Any, ...]]) -> None:
        address = self._links.address_of.get(node_id)
        if pushes and address is not None:
            self._ctx.counters.sync_pushes += len(pushes)
            self.push(address, pushes)

    def on_update(self, doc_id: str, update: bytes, node_id: str) -> None:
        """A pushed update (`SYNC_PUSH`): applied once the doc is loaded."""
        if update == EMPTY_UPDATE or not self._guard.well_formed(doc_id, "sync", update, node_id):
            return
        entry = self._entry_for(doc_id, node_id)
        if entry is not None:
            self._docs.when_loaded(entry, lambda e: self._apply(e, update, node_id), len(update))

    def _entry_for(self, doc_id: str, node_id: str) -> DocEntry | None:
        """The entry a sync update from `node_id` goes to; None for a refused doc id or a doc this node
        neither holds nor has (both counted)."""
        ctx = self._ctx
        try:
            return self._docs.entry_for_remote(doc_id)
        except (ValueError, RuntimeError) as exc:
            ctx.counters.syncs_dropped_doc += 1
            ctx.warn("bad_doc", "dropped a sync update for doc %r from %s: %s", doc_id, node_id, exc)
            return None

    def _apply(self, entry: DocEntry, update: bytes, node_id: str) -> None:
        if update == EMPTY_UPDATE:
            return
        # Safe to apply at once: it was computed against a state vector this node already covers.
        if self._docs.apply(entry, update, "sync", node_id):
            self._ctx.counters.sync_updates_applied += 1
            link = self._links.of_node(node_id)
            if link is not None:
                link.ae_docs_repaired += 1
                link.ae_bytes_repaired += len(update)
        self._causal.drain(entry.doc_id, entry)
