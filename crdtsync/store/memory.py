from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from pycrdt import Doc

from crdtsync.core.effects import Persist
from crdtsync.core.state import is_pycrdt_failure, merge_all
from crdtsync.store.base import DocRecord, StoreDescription, StoreError

log = logging.getLogger(__name__)

PENDING_UPDATES_MAX = 64
"""Updates of one doc kept aside before they are merged and applied to its Doc at once: pycrdt
applies 64 small updates merged in 1.8 us each against 24 us each one by one (overwrites of a
1,000-key map), and an append is on the event loop's thread for a store in memory."""


class MemoryStore:
    """Keeps docs in process memory: survives closing and reopening a `Node`, not the process.

    Each doc is kept as a pycrdt Doc that its updates are applied to, in the order the node applied
    them (so always in causal order), up to `PENDING_UPDATES_MAX` at a time, merged. Memory follows
    the docs' state, not their history, and an append costs a fraction of a small apply: merging a
    growing log instead stalled the event loop for tens of milliseconds every so often (measured:
    36 ms at 60,000 updates to one doc).

    Doc state records are kept like `SqliteStore` keeps them (an update clears its doc's record), so
    `docs()` answers what the contract asks, and the simulator uses a `MemoryStore` as the committed
    content of its durable nodes.

    `backup` raises `StoreError`: what a memory store holds is what the node itself holds in memory
    and its peers refill after a restart, and a backup file is an SQLite store of a node id, which a
    memory store does not have. Back up a node with a `data_dir`, or a peer.
    """

    def __init__(self) -> None:
        self._docs: dict[str, Doc[Any]] = {}
        self._pending: dict[str, list[bytes]] = {}
        """Updates of a doc not applied to its Doc yet (fewer than `PENDING_UPDATES_MAX` each)."""
        self._states: dict[str, tuple[bytes, bytes | None]] = {}
        self._epoch = 0

    def new_epoch(self) -> int:
        """Wall-clock milliseconds, the best order a store without a disk has across processes;
        strictly above the last epoch this store handed out (a `Node` restarted on it at once)."""
        self._epoch = max(time.time_ns() // 1_000_000, self._epoch + 1)
        return self._epoch

    def docs(self) -> Iterator[DocRecord]:
        for doc_id in sorted(self._docs.keys() | self._states.keys()):
            state, digest = self._states.get(doc_id, (None, None))
            yield DocRecord(doc_id, state, digest)

    def load_doc(self, doc_id: str) -> bytes | None:
        doc = self._docs.get(doc_id)
        if doc is None:
            return None
        self._apply_pending(doc_id, doc)
        return doc.get_update()

    def _apply_pending(self, doc_id: str, doc: Doc[Any]) -> None:
        pending = self._pending.pop(doc_id, None)
        if not pending:
            return
        try:
            doc.apply_update(merge_all(pending) if len(pending) > 1 else pending[0])
        except BaseException as exc:
            if not is_pycrdt_failure(exc):
                raise
            # The node applied each of these updates: one by one they apply (what appends did before).
            log.warning(
                "could not merge %d updates of doc %r, applied one by one: %s", len(pending), doc_id, exc
            )
            for update in pending:
                doc.apply_update(update)

    def load(self) -> Iterator[tuple[str, bytes]]:
        """Every doc's content, in doc id order."""
        for record in list(self.docs()):
            content = self.load_doc(record.doc_id)
            if content is not None:
                yield record.doc_id, content

    def append(self, group: Sequence[Persist]) -> None:
        for persist in group:
            for doc_id, update in persist.updates:
                doc = self._docs.get(doc_id)
                if doc is None:
                    doc = self._docs[doc_id] = Doc()
                pending = self._pending.setdefault(doc_id, [])
                pending.append(update)
                if len(pending) >= PENDING_UPDATES_MAX:
                    self._apply_pending(doc_id, doc)
                self._states.pop(doc_id, None)
            for doc_id, state, digest in persist.doc_states:
                self._states[doc_id] = (state, digest)
            for doc_id in persist.drops:
                self._docs.pop(doc_id, None)
                self._pending.pop(doc_id, None)
                self._states.pop(doc_id, None)

    def backup(self, target: str | Path) -> None:
        raise StoreError(
            f"cannot back up to {target}: backup needs a node with a data_dir (the memory store has nothing on disk)"
        )

    def describe(self) -> StoreDescription:
        return StoreDescription(name="memory", durable=False, lazy_loading=False)

    def close(self) -> None:
        """Nothing to release: the data stays for the next `Node` given this store."""
