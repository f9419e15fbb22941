"""Group commit: the node's updates reach the store from one worker thread, many per transaction.

Updates handed over while a commit runs wait for the next one, so under load groups grow by
themselves and an idle node commits each update at once; no timer is needed. `flushed()` resolves
when everything handed over so far is committed (SQLite releases the GIL while it writes and syncs,
so the event loop keeps running meanwhile).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from crdtsync.core.effects import Persist
from crdtsync.core.state import merge_all
from crdtsync.store.base import Store

log = logging.getLogger("crdtsync.store")

T = TypeVar("T")

COMMIT_LATENCY_BUCKETS_MS = (0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 250.0, 1000.0)


class StoreWriter:
    RETRY_DELAY_S = 1.0

    def __init__(
        self,
        store: Store,
        loop: asyncio.AbstractEventLoop,
        *,
        group_updates_max: int = 20_000,
        inline: bool = False,
    ) -> None:
        self.store = store
        self.inline = inline
        """Append on the caller's thread at once (a store in memory: a thread hop per update would
        cost more than the append, and add latency to every remote apply)."""
        self.group_updates_max = group_updates_max
        self._loop = loop
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="crdtsync-store")
        self._pending: deque[Persist] = deque()
        self._group: list[Persist] = []
        """The group being committed right now (read by `load_doc` on the event-loop thread)."""
        self._committing = False
        self._retry: asyncio.TimerHandle | None = None
        # Effects are numbered in submission order; a flush waits until the commits reach the
        # number submitted before it, whichever groups they were split into.
        self._submitted = 0
        self._committed = 0
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self.commits = 0
        self.commit_failures = 0
        self.commit_latency_ms = [0] * (len(COMMIT_LATENCY_BUCKETS_MS) + 1)
        self.commit_latency_sum_ms = 0.0

    def submit(self, persist: Persist) -> None:
        self._submitted += 1
        if self.inline:
            self.store.append((persist,))
            self._committed += 1
            return
        self._pending.append(persist)
        if not self._committing and self._retry is None:
            self._start_group()

    def _start_group(self) -> None:
        self._retry = None
        group: list[Persist] = []
        size = 0
        while self._pending and (not group or size + len(self._pending[0].updates) <= self.group_updates_max):
            persist = self._pending.popleft()
            group.append(persist)
            size += len(persist.updates)
        if not group:
            return
        self._group = group
        self._committing = True
        future = self._loop.run_in_executor(self._executor, self._commit, group)
        future.add_done_callback(self._group_done)

    def _commit(self, group: list[Persist]) -> float:
        started = time.perf_counter()
        self.store.append(group)
        return (time.perf_counter() - started) * 1000.0

    def _group_done(self, future: asyncio.Future[float]) -> None:
        group, self._group = self._group, []
        self._committing = False
        error = future.exception()
        if error is None:
            elapsed_ms = future.result()
            self.commits += 1
            self._committed += len(group)
            self.commit_latency_sum_ms += elapsed_ms
            bucket = next((i for i, b in enumerate(COMMIT_LATENCY_BUCKETS_MS) if elapsed_ms <= b), -1)
            self.commit_latency_ms[bucket] += 1
            still_waiting = []
            for target, waiter in self._waiters:
                if target <= self._committed:
                    if not waiter.done():
                        waiter.set_result(None)
                else:
                    still_waiting.append((target, waiter))
            self._waiters = still_waiting
            if self._pending:
                self._start_group()
            return
        # Nothing of the group is committed (one transaction): keep it, in order, and try again
        # later; every flush waiting now learns of the failure.
        self.commit_failures += 1
        log.error(
            "store commit of %d effects failed, retrying in %.0f s: %s", len(group), self.RETRY_DELAY_S, error
        )
        self._pending.extendleft(reversed(group))
        for _target, waiter in self._waiters:
            if not waiter.done():
                waiter.set_exception(error)
        self._waiters = []
        self._retry = self._loop.call_later(self.RETRY_DELAY_S, self._start_group)

    async def flushed(self) -> None:
        """Wait until everything submitted so far is committed; raises if a commit failed meanwhile."""
        if self._committed >= self._submitted:
            return
        waiter: asyncio.Future[None] = self._loop.create_future()
        self._waiters.append((self._submitted, waiter))
        await waiter

    def load_doc(self, doc_id: str) -> bytes | None:
        """A doc's whole content: what the store has committed, plus what is still on its way there.
        Runs on the event-loop thread, which is also the only thread that changes the queues."""
        load = getattr(self.store, "load_doc", None)
        parts: list[bytes] = []
        stored = load(doc_id) if load is not None else None
        if stored is not None:
            parts.append(stored)
        for persist in (*self._group, *self._pending):
            parts.extend(update for update_doc, update in persist.updates if update_doc == doc_id)
        return merge_all(parts) if parts else None

    async def run(self, function: Callable[[], T]) -> T:
        """Run `function` on the writer thread, after every commit submitted before it."""
        await self.flushed()
        return await self._loop.run_in_executor(self._executor, function)

    def close(self) -> None:
        """Commit what is pending (synchronously) and stop the thread."""
        if self._retry is not None:
            self._retry.cancel()
        self._executor.shutdown(wait=True)
        self._pending.extendleft(reversed(self._group))  # a group whose commit never reported back
        self._group = []
        if self._pending:
            self.store.append(list(self._pending))
            self._pending.clear()
        self.store.close()
