from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from pycrdt import Doc

from crdtsync.core.effects import Persist


class MemoryStore:
    """Keeps docs in process memory: survives closing and reopening a `Node`, not the process.

    Each doc is kept as a pycrdt Doc that every update is applied to, in the order the node applied
    them (so always in causal order). Memory follows the docs' state, not their history, and an
    append costs one small apply: merging a growing log instead stalled the event loop for tens of
    milliseconds every so often (measured: 36 ms at 60,000 updates to one doc).
    """

    def __init__(self) -> None:
        self._docs: dict[str, Doc[Any]] = {}

    def append(self, group: Sequence[Persist]) -> None:
        for persist in group:
            for doc_id, update in persist.updates:
                doc = self._docs.get(doc_id)
                if doc is None:
                    doc = self._docs[doc_id] = Doc()
                doc.apply_update(update)

    def load(self) -> Iterator[tuple[str, bytes]]:
        for doc_id, doc in list(self._docs.items()):
            yield doc_id, doc.get_update()

    def close(self) -> None:
        """Nothing to release: the data stays for the next `Node` given this store."""
