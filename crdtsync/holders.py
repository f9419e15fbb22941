"""What a node waits for from the holders of a doc (placement): a follower's first fetch, and the
acknowledgements of a write by its replicas (`write_acks`).

Both are event-driven: the driver calls `wake()` after every received frame, which resolves the
waits whose answer came. The number of waits is bounded; every wait has a deadline.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from crdtsync.core.messages import HANDOFF_COVERED, HANDOFF_NOT_HOLDER
from crdtsync.core.replica import Replica

WAITS_MAX = 4096
"""Follower fetches and write-ack requests waiting at once; beyond, they do not wait (a fetch serves
what the node has, a write-ack request fails at once)."""
ASK_AGAIN_MS = 500.0
"""A replica that has not answered a write-ack question in this time is asked again (lost frame)."""
KNOWN_STATES_MAX = 4096
"""(doc, node) pairs whose last confirmed state vector is remembered, so the next write-ack question
to that node carries the update at once: one round trip instead of a probe and then the update."""


WriteAcksWanted = int | Literal["dc", "all"]
"""How many must hold a write: a number of the doc's replicas, or every alive holder of the doc in
this datacenter (`"dc"`) or in every datacenter (`"all"`)."""


@dataclass(frozen=True, slots=True)
class WriteAcks:
    """Replicas that hold a write durably: `confirmed` (this node first when it is one of them)."""

    needed: int
    confirmed: tuple[str, ...]


class WriteAcksTimeoutError(TimeoutError):
    """Fewer than the asked number of replicas confirmed a write in time; `confirmed` names those
    that did (the write itself is durable on the node that took it, and replicates as usual)."""

    def __init__(self, doc_id: str, needed: int, confirmed: tuple[str, ...], timeout_ms: float) -> None:
        self.doc_id = doc_id
        self.needed = needed
        self.confirmed = confirmed
        names = ", ".join(confirmed) or "none"
        super().__init__(
            f"{len(confirmed)} of {needed} replicas confirmed doc {doc_id!r} within {timeout_ms:g} ms ({names})"
        )


def _now_ms() -> float:
    return time.monotonic() * 1000.0


class HolderWaits:
    def __init__(self, replica: Replica, pump: Callable[[], None]) -> None:
        self._replica = replica
        self._pump = pump
        self._waiting: list[asyncio.Future[None]] = []
        self._known: dict[tuple[str, str], bytes] = {}
        """(doc, node) -> the node's state vector of the doc in its last answer (oldest first)."""
        self.asked_again = 0
        """Write-ack questions asked again after ASK_AGAIN_MS without an answer."""

    def _remember(self, doc_id: str, node_id: str, state: bytes | None) -> None:
        key = (doc_id, node_id)
        self._known.pop(key, None)
        if state is None:
            return
        if len(self._known) >= KNOWN_STATES_MAX:
            del self._known[next(iter(self._known))]
        self._known[key] = state

    def wake(self) -> None:
        """A frame came in: every wait looks again."""
        waiting, self._waiting = self._waiting, []
        for future in waiting:
            if not future.done():
                future.set_result(None)

    async def _next_frame(self, deadline_ms: float) -> bool:
        """Wait for the next received frame; False at the deadline."""
        remaining_s = (deadline_ms - _now_ms()) / 1000.0
        if remaining_s <= 0 or len(self._waiting) >= WAITS_MAX:
            return False
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append(future)
        try:
            async with asyncio.timeout(remaining_s):
                await future
        except TimeoutError:
            return False
        finally:
            if future in self._waiting:
                self._waiting.remove(future)
        return True

    async def drain(self) -> bool:
        """Hand every doc this node holds to the nodes that hold it without this one (before a
        leave), waiting at most `leave_drain_ms`; False when some were not handed over in time."""
        replica = self._replica
        replica.drain(_now_ms())
        self._pump()
        deadline_ms = _now_ms() + replica.config.leave_drain_ms
        while not replica.drained():
            if not await self._next_frame(deadline_ms):
                return replica.drained()
        return True

    async def follow(self, doc_id: str) -> None:
        """Fetch what the nearest holder has of `doc_id` (opened here, not held here), waiting at most
        `follower_fetch_timeout_ms`; without a reachable holder the doc shows what this node has."""
        replica = self._replica
        if not replica.fetch_doc(doc_id, _now_ms()):
            return
        self._pump()
        deadline_ms = _now_ms() + replica.config.follower_fetch_timeout_ms
        while replica.fetch_pending(doc_id):
            if not await self._next_frame(deadline_ms):
                return

    def _scope(self, doc_id: str, wanted: WriteAcksWanted) -> tuple[list[str], int]:
        """The nodes to ask, nearest first, and how many must confirm: `wanted` replicas of the doc,
        or every alive holder of it in this datacenter (`"dc"`) or in all (`"all"`)."""
        replica = self._replica
        placement = replica.doc_placement(doc_id)
        own_dc = replica.dc
        ordered = [r.node_id for r in placement.replicas.get(own_dc, ())]
        ordered += [r.node_id for dc, placed in placement.replicas.items() if dc != own_dc for r in placed]
        if isinstance(wanted, int):
            return ordered, wanted
        members = replica.membership.members
        scoped: list[str] = []
        for node_id in (*ordered, *(relay for relay in placement.relays if relay not in ordered)):
            member = members.get(node_id)
            alive = member is not None and member.liveness == "alive"
            here = member is not None and (wanted == "all" or member.record.dc == own_dc)
            if node_id == replica.node_id or (alive and here):
                scoped.append(node_id)
        return scoped, len(scoped)

    async def write_acks(self, doc_id: str, wanted: WriteAcksWanted, timeout_ms: float) -> WriteAcks:
        """Wait until `wanted` replicas of `doc_id`, or every alive holder of it in this datacenter
        (`"dc"`) or in all (`"all"`), hold everything this node has of the doc, each answering after
        its own commit (this node counts when it is one, once its own store holds the write: the
        caller flushed). The doc must be loaded (open) here."""
        replica = self._replica
        ordered, needed = self._scope(doc_id, wanted)
        confirmed = [replica.node_id] if replica.node_id in ordered else []
        others = [node_id for node_id in ordered if node_id != replica.node_id]
        asked: dict[str, tuple[bool, float]] = {}
        """Replica -> (whether the update went out, rather than the probe; when)."""
        deadline_ms = _now_ms() + timeout_ms
        for node_id in others:
            # Against the state it last confirmed, the question carries the update (everything
            # since, and every deletion) and one answer confirms; a node that lost data since says
            # so with its state, and is asked again against that.
            known = self._known.get((doc_id, node_id))
            if replica.confirm(doc_id, node_id, known, _now_ms()):
                asked[node_id] = (known is not None, _now_ms())
        self._pump()
        while len(confirmed) < needed:
            if not asked or not await self._next_frame(deadline_ms):
                break
            for node_id, (sent_update, at_ms) in list(asked.items()):
                answer = replica.confirmation(doc_id, node_id)
                if answer is None:
                    if _now_ms() - at_ms > ASK_AGAIN_MS and replica.confirm(doc_id, node_id, None, _now_ms()):
                        asked[node_id] = (False, _now_ms())
                        self.asked_again += 1
                    continue
                status, state = answer
                self._remember(doc_id, node_id, None if status == HANDOFF_NOT_HOLDER else state)
                if status == HANDOFF_NOT_HOLDER:
                    del asked[node_id]
                elif status == HANDOFF_COVERED and sent_update:
                    del asked[node_id]
                    confirmed.append(node_id)
                elif replica.confirm(doc_id, node_id, state, _now_ms()):
                    # The probe's answer gave its state: send what it lacks, deletions included.
                    asked[node_id] = (True, _now_ms())
                else:
                    del asked[node_id]
            self._pump()
        for node_id in asked:
            replica.confirmation(doc_id, node_id)  # forget answers that come too late
        if len(confirmed) < needed:
            raise WriteAcksTimeoutError(doc_id, needed, tuple(confirmed), timeout_ms)
        return WriteAcks(needed, tuple(confirmed))
