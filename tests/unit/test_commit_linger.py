"""`StoreWriter`'s commit linger: updates that nothing waits for wait for more before their group
commits; a flush or an acknowledgement waiting on them starts the group at once."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence

from crdtsync.core.effects import Persist
from crdtsync.store.memory import MemoryStore
from crdtsync.store.writer import StoreWriter

LONG_LINGER_MS = 60_000.0
"""Far longer than any test waits: a commit that happens did not come from the linger's end."""
DEADLINE_S = 10.0


class CountingStore(MemoryStore):
    """A memory store that counts the groups appended to it (each is one commit)."""

    def __init__(self) -> None:
        super().__init__()
        self.groups = 0
        self.appended = threading.Event()
        """Set by the first append, on the writer's thread."""

    def append(self, group: Sequence[Persist]) -> None:
        self.groups += 1
        super().append(group)
        self.appended.set()


def _update(doc_id: str) -> Persist:
    return Persist(((doc_id, b"\x00\x00"),))


def test_unawaited_updates_linger_and_share_one_commit() -> None:
    async def scenario() -> None:
        store = CountingStore()
        writer = StoreWriter(store, asyncio.get_running_loop(), commit_linger_ms=LONG_LINGER_MS)
        for index in range(5):
            writer.submit(_update(f"d{index}"))
        assert writer.lingering and writer.pending_effects == 5
        assert store.groups == 0  # nothing started: a commit would have started in submit
        await writer.flushed()  # a wait: the group starts at once, not after the linger
        assert (store.groups, writer.commits, writer.pending_effects) == (1, 1, 0)
        assert not writer.lingering
        writer.close()

    asyncio.run(scenario())


def test_an_acknowledgement_waiting_starts_the_group_at_once() -> None:
    async def scenario() -> None:
        store = CountingStore()
        writer = StoreWriter(store, asyncio.get_running_loop(), commit_linger_ms=LONG_LINGER_MS)
        writer.submit(_update("d"))
        sent: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        assert writer.after_commit(lambda: sent.set_result(None))
        assert not writer.lingering
        await asyncio.wait_for(sent, DEADLINE_S)  # sent once committed, long before the linger's end
        assert store.groups == 1
        writer.close()

    asyncio.run(scenario())


def test_the_linger_ends_with_a_commit() -> None:
    async def scenario() -> None:
        store = CountingStore()
        writer = StoreWriter(store, asyncio.get_running_loop(), commit_linger_ms=1.0)
        writer.submit(_update("d"))
        assert writer.lingering
        assert await asyncio.to_thread(store.appended.wait, DEADLINE_S), "the lingering group never committed"
        assert store.groups == 1 and not writer.lingering
        writer.close()

    asyncio.run(scenario())


def test_close_commits_what_lingers() -> None:
    async def scenario() -> CountingStore:
        store = CountingStore()
        writer = StoreWriter(store, asyncio.get_running_loop(), commit_linger_ms=LONG_LINGER_MS)
        writer.submit(_update("d"))
        writer.close()
        return store

    store = asyncio.run(scenario())
    assert store.groups == 1
