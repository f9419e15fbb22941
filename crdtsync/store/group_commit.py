"""Group commit as data: which `Persist` effects are on their way to a store, in which group.

`CommitQueue` does no I/O and reads no clock. The node's `StoreWriter` drives it with a writer
thread; the simulator's durable mode drives it with simulated commit times. Both therefore share
what a commit takes, what a failed or lost commit leaves, and what a doc load sees: the store's
committed content merged with every update still in flight (a doc evicted and reloaded before its
last updates are committed must not lose them).
"""

from __future__ import annotations

from collections import deque

from crdtsync.core.effects import Persist
from crdtsync.core.state import merge_all
from crdtsync.store.base import Store


class CommitQueue:
    """Effects handed over (`submit`), taken in groups of at most `group_updates_max` updates
    (`next_group`, one group at a time), then committed (`group_committed`), failed and put back in
    order (`group_failed`), or lost with the process (`lose`).

    Effects are numbered from 1 in submission order: `submit` returns the number, and every effect
    up to `committed` is in the store. One thread (the event loop, or the simulator) calls all of it.

    Groups are bounded (`group_updates_max`); what waits for the next group is not capped here, as a
    `Persist` cannot be refused without losing it: it grows only while the store is slower than the
    replica's (bounded) inputs or failing, and shows as `pending_effects` (`Node.store_stats()`).
    """

    def __init__(self, *, group_updates_max: int = 20_000) -> None:
        if group_updates_max < 1:
            raise ValueError("group_updates_max must be >= 1")
        self.group_updates_max = group_updates_max
        self._pending: deque[Persist] = deque()
        self._group: list[Persist] = []
        self._group_id: int | None = None
        self._last_group_id = 0
        self.submitted = 0
        """Effects handed over so far (the number of the last one)."""
        self.committed = 0
        """Effects committed so far: every effect numbered up to this one is in the store."""

    @property
    def group_id(self) -> int | None:
        """The id of the group being committed (ids never repeat), None when no commit runs."""
        return self._group_id

    @property
    def pending_effects(self) -> int:
        """Effects handed over and not yet committed, the running group included."""
        return self.submitted - self.committed

    def submit(self, persist: Persist) -> int:
        """Hand an effect over; returns its number (committed once `committed` reaches it)."""
        self._pending.append(persist)
        self.submitted += 1
        return self.submitted

    def next_group(self) -> tuple[int, list[Persist]] | None:
        """Start committing the next group: the oldest pending effects, at least one and at most
        `group_updates_max` updates. None when a commit runs already or nothing is pending."""
        if self._group_id is not None or not self._pending:
            return None
        group: list[Persist] = []
        size = 0
        while self._pending and (not group or size + len(self._pending[0].updates) <= self.group_updates_max):
            persist = self._pending.popleft()
            group.append(persist)
            size += len(persist.updates)
        self._last_group_id += 1
        self._group, self._group_id = group, self._last_group_id
        return self._group_id, group

    def group_committed(self) -> list[Persist]:
        """The running group is in the store; returns it."""
        group = self._end_group()
        self.committed += len(group)
        return group

    def group_failed(self) -> list[Persist]:
        """Nothing of the running group is in the store: it goes back, in order, ahead of what came
        after it, to be committed again. Returns it."""
        group = self._end_group()
        self._pending.extendleft(reversed(group))
        return group

    def drain(self) -> list[Persist]:
        """Every effect not known to be committed, in order (the running group first), taken out of
        the queue as if committed: for a last synchronous append at shutdown."""
        remaining = [*self._group, *self._pending]
        self._group, self._group_id = [], None
        self._pending.clear()
        self.committed = self.submitted
        return remaining

    def lose(self) -> None:
        """A crash: the pending effects and the running commit are gone; completed commits stay."""
        self._group, self._group_id = [], None
        self._pending.clear()
        self.submitted = self.committed

    def in_flight(self, doc_id: str) -> tuple[bool, list[bytes]]:
        """The doc's updates handed over and not yet committed, in order, and whether a drop of the
        doc is among them (then the store's content and the updates before the drop are gone)."""
        dropped = False
        updates: list[bytes] = []
        for persist in (*self._group, *self._pending):
            for update_doc, update in persist.updates:
                if update_doc == doc_id:
                    updates.append(update)
            if doc_id in persist.drops:
                dropped, updates = True, []
        return dropped, updates

    def load_doc(self, store: Store, doc_id: str) -> bytes | None:
        """A doc's whole content: what `store` has committed, plus what is still on its way there."""
        return self.with_in_flight(doc_id, store.load_doc(doc_id))

    def with_in_flight(self, doc_id: str, stored: bytes | None) -> bytes | None:
        """`stored` (the store's committed content of the doc) merged with its updates in flight."""
        dropped, updates = self.in_flight(doc_id)
        parts = [stored] if stored is not None and not dropped else []
        parts.extend(updates)
        return merge_all(parts) if parts else None

    def _end_group(self) -> list[Persist]:
        if self._group_id is None:
            raise RuntimeError("no group commit is running")
        group = self._group
        self._group, self._group_id = [], None
        return group
