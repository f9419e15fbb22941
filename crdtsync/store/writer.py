"""Group commit: the node's updates reach the store from one worker thread, many per transaction.

Updates handed over while a commit runs wait for the next one, so under load groups grow by
themselves and an idle node commits each update at once; no timer is needed. `flushed()` resolves
when everything handed over so far is committed (SQLite releases the GIL while it writes and syncs,
so the event loop keeps running meanwhile).
"""

from __future__ import annotations

import asyncio
import logging
import threading
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
    def __init__(
        self, store: Store, loop: asyncio.AbstractEventLoop, *, group_updates_max: int = 20_000
    ) -> None:
        self.store = store
        self.group_updates_max = group_updates_max
        self._loop = loop
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="crdtsync-store")
        self._pending: deque[Persist] = deque()
        self._group: list[Persist] = []
        """The group being committed right now (read by `load_doc` on the event-loop thread)."""
        self._pending_done: asyncio.Future[None] | None = None
        self._running: asyncio.Future[None] | None = None
        self._lock = threading.Lock()
        self.commits = 0
        self.updates_committed = 0
        self.commit_failures = 0
        self.commit_latency_ms = [0] * (len(COMMIT_LATENCY_BUCKETS_MS) + 1)
        self.commit_latency_sum_ms = 0.0

    def submit(self, persist: Persist) -> None:
        self._pending.append(persist)
        if self._pending_done is None:
            self._pending_done = self._loop.create_future()
        if self._running is None:
            self._start_group()

    def _start_group(self) -> None:
        group: list[Persist] = []
        size = 0
        while self._pending and (not group or size + len(self._pending[0].updates) <= self.group_updates_max):
            persist = self._pending.popleft()
            group.append(persist)
            size += len(persist.updates)
        self._group = group
        done = self._pending_done
        self._pending_done = self._loop.create_future() if self._pending else None
        self._running = done
        future = self._loop.run_in_executor(self._executor, self._commit, group)
        future.add_done_callback(lambda f: self._group_done(f, done))

    def _commit(self, group: list[Persist]) -> float:
        started = time.perf_counter()
        self.store.append(group)
        return (time.perf_counter() - started) * 1000.0

    def _group_done(self, future: asyncio.Future[float], done: asyncio.Future[None] | None) -> None:
        self._running = None
        self._group = []
        error = future.exception()
        if error is None:
            elapsed_ms = future.result()
            self.commits += 1
            self.commit_latency_sum_ms += elapsed_ms
            bucket = next((i for i, b in enumerate(COMMIT_LATENCY_BUCKETS_MS) if elapsed_ms <= b), -1)
            self.commit_latency_ms[bucket] += 1
            if done is not None and not done.done():
                done.set_result(None)
        else:
            self.commit_failures += 1
            log.error("store commit failed: %s", error)
            if done is not None and not done.done():
                done.set_exception(error)
        if self._pending:
            self._start_group()

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

    async def flushed(self) -> None:
        """Wait until everything submitted so far is committed; raises if its commit failed."""
        waiting = [f for f in (self._running, self._pending_done) if f is not None]
        for future in waiting:
            await asyncio.shield(future)

    async def run(self, function: Callable[[], T]) -> T:
        """Run `function` on the writer thread, after every commit submitted before it."""
        await self.flushed()
        return await self._loop.run_in_executor(self._executor, function)

    def close(self) -> None:
        """Commit what is pending (synchronously) and stop the thread."""
        self._executor.shutdown(wait=True)
        if self._pending:
            self.store.append(list(self._pending))
            self._pending.clear()
        self.store.close()
