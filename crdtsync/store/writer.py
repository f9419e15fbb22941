"""Group commit: the node's updates reach the store from one worker thread, many per transaction.

Updates handed over while a commit runs wait for the next one, so under load groups grow by
themselves. `flushed()` resolves when everything handed over so far is committed (SQLite releases
the GIL while it writes and syncs, so the event loop keeps running meanwhile).

What nobody waits for (no `flushed()`, no acknowledgement waiting in `after_commit`: updates
received from peers, whose publishers hold them durably) lingers up to `commit_linger_ms` for
more before its group starts; a wait that comes meanwhile starts it at once. A node receiving
deltas a few at a time otherwise paid a commit (a transaction, a WAL fsync and two thread hops)
per received frame.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

from crdtsync.core.effects import Persist
from crdtsync.store.base import Store, StoreCommitError, StoreDescription
from crdtsync.store.group_commit import CommitQueue

log = logging.getLogger("crdtsync.store")

T = TypeVar("T")

AFTER_COMMIT_MAX = 4096
"""Actions (acknowledgements of durability to send) waiting for commits at once (`after_commit`)."""
COMMIT_LINGER_MS = 20.0
"""How long updates that nothing waits for may wait for more before their group commits (see the
module doc): what a crash of this node can lose of what it received and did not acknowledge, which
its peers still hold and anti-entropy brings back."""
COMMIT_LATENCY_BUCKETS_MS = (0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 250.0, 1000.0)


@dataclass(frozen=True, slots=True)
class StoreStats:
    """A node's store and what its writer did, cheap to take (`Node.store_stats()`)."""

    store: StoreDescription
    commits: int
    """Group commits completed (0 for a store appended to inline)."""
    commit_failures: int
    """Group commits that failed (each is retried)."""
    commit_latency_counts: tuple[int, ...] | None
    """Commits per `COMMIT_LATENCY_BUCKETS_MS` bucket, the last one unbounded; None for a store
    appended to inline (nothing is timed)."""
    commit_latency_sum_ms: float
    pending_effects: int
    """Persist effects handed over and not yet committed."""
    load_errors: int
    """Docs the store could not load (refilled from the peers instead)."""
    failing: StoreCommitError | None = None
    """Why the last commit failed, until a commit succeeds again (None: the store commits)."""


SQLITE_FULL = 13
FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def commit_error(error: BaseException) -> StoreCommitError:
    """What a failed commit tells the writes waiting on it: a full disk, or another failure."""
    if isinstance(error, StoreCommitError):
        return error
    code = getattr(error, "sqlite_errorcode", None)
    full = (isinstance(code, int) and code & 0xFF == SQLITE_FULL) or (
        isinstance(error, OSError) and error.errno in FULL_ERRNOS
    )
    kind = (
        "the disk is full"
        if full
        else "an I/O error"
        if isinstance(error, (OSError, sqlite3.Error))
        else "an error"
    )
    return StoreCommitError(
        f"the store cannot commit ({kind}: {error}); nothing of the write is durable", full=full
    )


class StoreWriter:
    RETRY_DELAY_S = 1.0

    def __init__(
        self,
        store: Store,
        loop: asyncio.AbstractEventLoop,
        *,
        group_updates_max: int = 20_000,
        inline: bool = False,
        commit_linger_ms: float = COMMIT_LINGER_MS,
    ) -> None:
        self.store = store
        self.inline = inline
        """Append on the caller's thread at once (a store in memory: a thread hop per update would
        cost more than the append, and add latency to every remote apply)."""
        self.commit_linger_ms = commit_linger_ms
        self._linger: asyncio.TimerHandle | None = None
        """The start of the next group, while what is pending waits for more (nothing waits on it)."""
        self._loop = loop
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="crdtsync-store")
        self._queue = CommitQueue(group_updates_max=group_updates_max)
        self._retry: asyncio.TimerHandle | None = None
        self._closed = False
        self.failing: StoreCommitError | None = None
        """Why the last commit failed, until one succeeds: writes are refused meanwhile."""
        # A flush waits until the commits reach the number of the last effect submitted before it,
        # whichever groups they were split into.
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._after_commit_waiting = 0
        self.commits = 0
        self.commit_failures = 0
        self.commit_latency_counts = [0] * (len(COMMIT_LATENCY_BUCKETS_MS) + 1)
        self.commit_latency_sum_ms = 0.0

    @property
    def group_updates_max(self) -> int:
        return self._queue.group_updates_max

    @property
    def pending_effects(self) -> int:
        return self._queue.pending_effects

    def submit(self, persist: Persist) -> None:
        self._queue.submit(persist)
        if self.inline:
            started = self._queue.next_group()
            assert started is not None  # inline: nothing else is ever pending
            try:
                self.store.append(started[1])
            except BaseException:
                self._queue.lose()  # not retried inline: the caller learns of the failure
                raise
            self._queue.group_committed()
            return
        if self._queue.group_id is None and self._retry is None:
            self._start_or_linger()

    @property
    def lingering(self) -> bool:
        """Pending updates wait for more before their group starts (nothing waits on them)."""
        return self._linger is not None

    def _start_or_linger(self) -> None:
        """Start the next group, or let it wait `commit_linger_ms` when nothing waits on it."""
        if self._waiters or self.commit_linger_ms <= 0:
            self._start_group()
        elif self._linger is None and self._queue.pending_effects:
            self._linger = self._loop.call_later(self.commit_linger_ms / 1000.0, self._start_group)

    def _waited_on(self) -> None:
        """Something waits on the pending updates now: their group starts at once."""
        if self._linger is not None and self._queue.group_id is None and self._retry is None:
            self._start_group()

    def _start_group(self) -> None:
        self._retry = None
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        started = self._queue.next_group()
        if started is None:
            return
        _group_id, group = started
        future = self._loop.run_in_executor(self._executor, self._commit, group)
        future.add_done_callback(self._group_done)

    def _commit(self, group: list[Persist]) -> float:
        started = time.perf_counter()
        self.store.append(group)
        return (time.perf_counter() - started) * 1000.0

    def _group_done(self, future: asyncio.Future[float]) -> None:
        if self._closed:
            # `close` drained the queue and appended what was left itself: this report comes after.
            return
        error = future.exception()
        if error is None:
            elapsed_ms = future.result()
            self._queue.group_committed()
            if self.failing is not None:
                log.warning("the store commits again after %d failed commits", self.commit_failures)
                self.failing = None
            self.commits += 1
            self.commit_latency_sum_ms += elapsed_ms
            bucket = next((i for i, b in enumerate(COMMIT_LATENCY_BUCKETS_MS) if elapsed_ms <= b), -1)
            self.commit_latency_counts[bucket] += 1
            still_waiting = []
            for target, waiter in self._waiters:
                if target <= self._queue.committed:
                    if not waiter.done():
                        waiter.set_result(None)
                else:
                    still_waiting.append((target, waiter))
            self._waiters = still_waiting
            self._start_or_linger()
            return
        # Nothing of the group is committed (one transaction): keep it, in order, and try again
        # later; every flush waiting now learns of the failure.
        group = self._queue.group_failed()
        self.commit_failures += 1
        self.failing = failure = commit_error(error)
        log.error(
            "store commit of %d effects failed, retrying in %.0f s: %s", len(group), self.RETRY_DELAY_S, error
        )
        for _target, waiter in self._waiters:
            if not waiter.done():
                waiter.set_exception(failure)
        self._waiters = []
        self._retry = self._loop.call_later(self.RETRY_DELAY_S, self._start_group)

    def after_commit(self, then: Callable[[], None], weight: int = 1) -> bool:
        """Call `then` once everything submitted so far is committed (at once if it is); never if a
        commit fails or the writer closes first. False (and `then` never called) when
        `AFTER_COMMIT_MAX` items wait already: the caller drops what `then` would have done."""
        if self.inline or self._queue.committed >= self._queue.submitted:
            then()
            return True
        if self._after_commit_waiting + weight > AFTER_COMMIT_MAX:
            return False
        self._after_commit_waiting += weight
        waiter: asyncio.Future[None] = self._loop.create_future()
        self._waiters.append((self._queue.submitted, waiter))
        self._waited_on()

        def done(future: asyncio.Future[None]) -> None:
            self._after_commit_waiting -= weight
            if not future.cancelled() and future.exception() is None and not self._closed:
                then()

        waiter.add_done_callback(done)
        return True

    async def flushed(self) -> None:
        """Wait until everything submitted so far is committed; raises `StoreCommitError` if a commit
        failed meanwhile."""
        if self._queue.committed >= self._queue.submitted:
            return
        waiter: asyncio.Future[None] = self._loop.create_future()
        self.resolve_when_committed([waiter])
        await waiter

    def resolve_when_committed(self, waiters: Sequence[asyncio.Future[None]]) -> None:
        """Resolve every one of `waiters` once everything submitted so far is committed (at once if
        it is), or fail it with the `StoreCommitError` of a commit that fails first: `flushed` for
        many waiters at once, without a task each (the flushes of one pump: `Node.flush`)."""
        if self._queue.committed >= self._queue.submitted:
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)
            return
        target = self._queue.submitted
        self._waiters.extend((target, waiter) for waiter in waiters)
        self._waited_on()

    async def load_doc(self, doc_id: str) -> bytes | None:
        """A doc's whole content: what the store has committed, plus what is still on its way there.

        The store is read on the writer's thread, between two commits, so the event loop never waits
        on it; what is in flight is merged on the event loop's thread when the read returns. A group
        whose commit finished before the read is marked committed before this resumes (the
        executor runs in order and reports in order), and one that started after it is still in
        flight here: nothing is missed, and merging an update twice is harmless."""
        if self.inline:
            return self._queue.load_doc(self.store, doc_id)
        stored = await self._loop.run_in_executor(self._executor, self.store.load_doc, doc_id)
        return self._queue.with_in_flight(doc_id, stored)

    async def run(self, function: Callable[[], T]) -> T:
        """Run `function` on the writer thread, after every commit submitted before it."""
        await self.flushed()
        return await self._loop.run_in_executor(self._executor, function)

    def close(self) -> None:
        """Commit what is pending (synchronously) and stop the thread."""
        self._closed = True
        if self._retry is not None:
            self._retry.cancel()
        if self._linger is not None:
            self._linger.cancel()
        self._executor.shutdown(wait=True)
        # With a group whose commit never reported back: appended again, which a CRDT store absorbs.
        remaining = self._queue.drain()
        try:
            if remaining:
                self.store.append(remaining)
        except Exception as exc:
            # Nothing of it was acknowledged (every flush waiting for it failed or was never
            # answered): peers hold what was replicated, and the rest is lost with this stop.
            log.error("stopping: %d effects could not be committed: %s", len(remaining), commit_error(exc))
        finally:
            self.store.close()
