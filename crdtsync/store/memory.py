from __future__ import annotations

from collections.abc import Iterator, Sequence

from crdtsync.core.effects import Persist
from crdtsync.core.state import merge_all


class MemoryStore:
    """Keeps updates in process memory: survives closing and reopening a `Node`, not the process.

    Each doc's log is merged into one update once it holds `compact_after_updates` entries and at
    least as many bytes as the last merge produced: merging re-reads the whole merged history, so
    letting the log grow with it keeps the merge work per update bounded (amortized) instead of
    growing with the doc's age.
    """

    def __init__(self, compact_after_updates: int = 256) -> None:
        if compact_after_updates < 2:
            raise ValueError("compact_after_updates must be at least 2")
        self.compact_after_updates = compact_after_updates
        self._logs: dict[str, list[bytes]] = {}
        self._log_bytes: dict[str, int] = {}
        self._merged_bytes: dict[str, int] = {}

    def append(self, group: Sequence[Persist]) -> None:
        for persist in group:
            for doc_id, update in persist.updates:
                log = self._logs.setdefault(doc_id, [])
                log.append(update)
                pending = self._log_bytes.get(doc_id, 0) + len(update)
                if len(log) >= self.compact_after_updates and pending >= self._merged_bytes.get(doc_id, 0):
                    merged = merge_all(log)
                    log[:] = [merged]
                    self._merged_bytes[doc_id] = len(merged)
                    pending = 0
                self._log_bytes[doc_id] = pending

    def load(self) -> Iterator[tuple[str, bytes]]:
        for doc_id, log in list(self._logs.items()):
            if len(log) > 1:
                log[:] = [merge_all(log)]
            yield doc_id, log[0]

    def close(self) -> None:
        """Nothing to release: the data stays for the next `Node` given this store."""
