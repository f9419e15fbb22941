"""State sync: exchange of state vectors and `get_update(remote_sv)` for named docs.

A `SYNC_REQUEST` carries (doc id, the requester's state vector); the answer carries what the
requester lacks and the responder's own state vector, and the requester pushes back what the
responder lacks. An update computed against a state vector this node covers is applied at once,
without the causal buffer; afterwards the buffer is drained, since the update may have brought
the dependencies some waiting deltas needed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from crdtsync.core import wire
from crdtsync.core.causal import CausalBuffer
from crdtsync.core.context import Context
from crdtsync.core.docs import EMPTY_STATE, EMPTY_UPDATE, DocTable
from crdtsync.core.guard import Guard
from crdtsync.core.links import Links
from crdtsync.core.state import decode_state_vector, encode_state_vector


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
    ) -> None:
        """Send `entries` as few messages as the per-message doc and byte limits allow."""
        chunk: list[tuple[Any, ...]] = []
        chunk_bytes = 0
        for entry, size in zip(entries, sizes, strict=True):
            if chunk and (
                len(chunk) >= wire.SYNC_DOCS_PER_MESSAGE_MAX
                or chunk_bytes + size > self._ctx.config.batch_bytes_max
            ):
                self._links.send(address, build(tuple(chunk)))
                chunk, chunk_bytes = [], 0
            chunk.append(entry)
            chunk_bytes += size
        if chunk:
            self._links.send(address, build(tuple(chunk)))

    def push(self, address: str, pushes: list[tuple[Any, ...]]) -> None:
        node_id = self._ctx.node_id
        self.send_entries(
            address,
            lambda chunk: wire.SyncPush(node_id, chunk),
            pushes,
            [len(update) for _doc_id, update in pushes],
        )

    def on_request(self, message: wire.SyncRequest) -> None:
        ctx = self._ctx
        address = self._links.address_of.get(message.node_id)
        if address is None:
            ctx.counters.unknown_peer += 1
            return
        replies: list[tuple[Any, ...]] = []
        for doc_id, state in message.entries:
            ctx.counters.syncs_served += 1
            entry = self._docs.get(doc_id)
            if entry is None:
                replies.append((doc_id, EMPTY_UPDATE, EMPTY_STATE))
                continue
            decode_state_vector(state)  # validate before pycrdt sees it
            try:
                update = self._docs.doc(entry).get_update(state)
            except (KeyboardInterrupt, SystemExit):
                raise
            except BaseException as exc:
                ctx.counters.syncs_rejected += 1
                ctx.warn("sync_rejected", "sync of %r for %s rejected: %s", doc_id, message.node_id, exc)
                continue
            replies.append((doc_id, update, entry.state_bytes))
        self.send_entries(
            address,
            lambda chunk: wire.SyncResponse(ctx.node_id, chunk),
            replies,
            [len(update) + len(state) for _doc_id, update, state in replies],
        )

    def on_response(self, message: wire.SyncResponse) -> None:
        pushes: list[tuple[Any, ...]] = []
        for doc_id, update, state in message.entries:
            self.on_update(doc_id, update, message.node_id)
            entry = self._docs.get(doc_id)
            if entry is None:
                continue
            # Push back what the responder lacks: its state vector came with its answer.
            back = self._docs.doc(entry).get_update(encode_state_vector(decode_state_vector(state)))
            if back != EMPTY_UPDATE:
                pushes.append((doc_id, back))
        address = self._links.address_of.get(message.node_id)
        if pushes and address is not None:
            self._ctx.counters.sync_pushes += len(pushes)
            self.push(address, pushes)

    def on_update(self, doc_id: str, update: bytes, node_id: str) -> None:
        ctx = self._ctx
        if update == EMPTY_UPDATE or not self._guard.well_formed(doc_id, "sync", update, node_id):
            return
        try:
            entry = self._docs.entry(doc_id, create=True)
        except (ValueError, RuntimeError) as exc:
            ctx.counters.syncs_dropped_doc += 1
            ctx.warn("bad_doc", "dropped a sync update for doc %r from %s: %s", doc_id, node_id, exc)
            return
        # Safe to apply at once: it was computed against a state vector this node already covers.
        if self._docs.apply(entry, update, "sync", node_id):
            ctx.counters.sync_updates_applied += 1
            link = self._links.of_node(node_id)
            if link is not None:
                link.ae_docs_repaired += 1
                link.ae_bytes_repaired += len(update)
        self._causal.drain(doc_id, entry)
