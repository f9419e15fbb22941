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
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

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
        self._pending: list[tuple[str, bytes]] = []
        self._pending_done: asyncio.Future[None] | None = None
        self._running: asyncio.Future[None] | None = None
        self._lock = threading.Lock()
        self.commits = 0
        self.updates_committed = 0
        self.commit_failures = 0
        self.commit_latency_ms = [0] * (len(COMMIT_LATENCY_BUCKETS_MS) + 1)
        self.commit_latency_sum_ms = 0.0

    def submit(self, updates: tuple[tuple[str, bytes], ...]) -> None:
        self._pending.extend(updates)
        if self._pending_done is None:
            self._pending_done = self._loop.create_future()
        if self._running is None:
            self._start_group()

    def _start_group(self) -> None:
        group = self._pending[: self.group_updates_max]
        del self._pending[: self.group_updates_max]
        done = self._pending_done
        self._pending_done = self._loop.create_future() if self._pending else None
        self._running = done
        future = self._loop.run_in_executor(self._executor, self._commit, group)
        future.add_done_callback(lambda f: self._group_done(f, done))

    def _commit(self, group: list[tuple[str, bytes]]) -> float:
        started = time.perf_counter()
        self.store.append(group)
        return (time.perf_counter() - started) * 1000.0

    def _group_done(self, future: asyncio.Future[float], done: asyncio.Future[None] | None) -> None:
        self._running = None
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
            self.store.append(self._pending)
            self._pending = []
        self.store.close()
