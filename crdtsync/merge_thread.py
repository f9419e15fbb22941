"""Merging a batch's updates of one doc on a thread of its own (`Outbound`'s `merge_updates`).

pycrdt's `merge_updates` allocates and frees the decoded updates on the C heap of the thread that
calls it. On the doc's own thread those blocks end up among the doc's structs, and every later edit
of a large doc pays for it: the automerge-paper trace (259,778 edits) into the core alone, a step
every 100 edits, took 8.0-8.3 s of CPU without merging, 10.2-11.6 s merging on the doc's thread and
9.0-9.1 s merging on this one, whose allocations come from another malloc arena. The event loop
waits for each merge (the batch cannot leave before it), so one worker is enough.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from crdtsync.core.state import merge_all


class MergeThread:
    """`merge_all` on one worker thread; after `close`, on the caller's (a last flush)."""

    def __init__(self) -> None:
        self._executor: ThreadPoolExecutor | None = ThreadPoolExecutor(1, thread_name_prefix="crdtsync-merge")

    def merge(self, updates: list[bytes]) -> bytes:
        executor = self._executor
        if executor is None:
            return merge_all(updates)
        return executor.submit(merge_all, updates).result()

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
