from __future__ import annotations

from collections.abc import Iterator, Sequence

from crdtsync.core.effects import Persist
from crdtsync.core.state import merge_all


class MemoryStore:
    """Keeps updates in process memory: survives closing and reopening a `Node`, not the process.

    Each doc's log is compacted with `merge_updates` once it holds `compact_after_updates` entries,
    so memory stays proportional to the docs' state, not to their history.
    """

    def __init__(self, compact_after_updates: int = 256) -> None:
        if compact_after_updates < 2:
            raise ValueError("compact_after_updates must be at least 2")
        self.compact_after_updates = compact_after_updates
        self._logs: dict[str, list[bytes]] = {}

    def append(self, group: Sequence[Persist]) -> None:
        for persist in group:
            for doc_id, update in persist.updates:
                log = self._logs.setdefault(doc_id, [])
                log.append(update)
                if len(log) >= self.compact_after_updates:
                    log[:] = [merge_all(log)]

    def load(self) -> Iterator[tuple[str, bytes]]:
        for doc_id, log in list(self._logs.items()):
            if len(log) > 1:
                log[:] = [merge_all(log)]
            yield doc_id, log[0]

    def close(self) -> None:
        """Nothing to release: the data stays for the next `Node` given this store."""
