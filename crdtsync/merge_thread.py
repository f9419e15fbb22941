"""Merging a batch's runs of a doc's updates on a thread of its own (`Outbound`'s `merge`).

pycrdt's `merge_updates` allocates and frees the decoded updates on the C heap of the thread that
calls it. On the doc's own thread those blocks end up among the doc's structs, and every later edit
of a large doc pays for it: the automerge-paper trace (259,778 edits) into the core alone, a step
every 100 edits, took 8.0-8.3 s of CPU without merging, 10.2-11.6 s merging on the doc's thread and
9.0-9.1 s merging on this one, whose allocations come from another malloc arena. The event loop
waits for each merge (the batch cannot leave before it), so one worker is enough.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from crdtsync.core.state import merge_each


class MergeThread:
    """`merge_each` on one worker thread; after `close`, on the caller's (a last flush)."""

    def __init__(self) -> None:
        self._executor: ThreadPoolExecutor | None = ThreadPoolExecutor(1, thread_name_prefix="crdtsync-merge")

    def merge(self, runs: list[list[bytes]]) -> list[bytes | None]:
        """A batch's runs at once: one hand-over to the worker and back per batch."""
        executor = self._executor
        if executor is None:
            return merge_each(runs)
        return executor.submit(merge_each, runs).result()

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
