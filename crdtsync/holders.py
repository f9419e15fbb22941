"""What a node waits for from the holders of a doc (placement): a follower's first fetch, and the
acknowledgements of a write by its replicas (`write_acks`).

Both are event-driven: the driver calls `wake()` after every received frame, which resolves the
waits whose answer came. The number of waits is bounded; every wait has a deadline.

A write's acknowledgements are the sequence acknowledgements holders send of this node's stream
anyway (`crdtsync.core.seqacks`): no frame per write goes out for them. A holder is asked directly
(the question `_Questions` sends) only when its acks cannot tell: it never acknowledged this node's
stream (at the first waiting write: the question starts its acks), its acks begin after the write,
or none covered the write within `ACK_WAIT_MS`. An ack counts for a doc when it covers the number
of this node's latest delta of that doc (`SeqAcks.last_seq_of`).
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
ACK_WAIT_MS = 500.0
"""A holder whose sequence acknowledgements have not covered a write in this time is asked directly
(its ack was lost, or it holds the write by another path than this node's stream)."""
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


class HintsFullError(RuntimeError):
    """A write to a doc this node does not hold was refused before it was applied: the writes it
    took for docs it does not hold and no holder has confirmed yet reached `hint_bytes_max` (the
    holders are unreachable, or slow to take them). Write on a holder, or retry once hints drain."""

    def __init__(self, doc_id: str, hint_bytes_max: int) -> None:
        self.doc_id = doc_id
        super().__init__(
            f"doc {doc_id!r} is not held by this node and its unconfirmed hints reached "
            f"hint_bytes_max ({hint_bytes_max} bytes): write on a replica, or retry once a holder takes them"
        )


def _now_ms() -> float:
    return time.monotonic() * 1000.0


class _KnownStates:
    """(doc, node) -> the node's state vector of the doc in its last answer to a question (oldest
    first, at most KNOWN_STATES_MAX), so that the next question carries the update at once."""

    def __init__(self) -> None:
        self._states: dict[tuple[str, str], bytes] = {}

    def get(self, doc_id: str, node_id: str) -> bytes | None:
        return self._states.get((doc_id, node_id))

    def remember(self, doc_id: str, node_id: str, state: bytes | None) -> None:
        key = (doc_id, node_id)
        self._states.pop(key, None)
        if state is None:
            return
        if len(self._states) >= KNOWN_STATES_MAX:
            del self._states[next(iter(self._states))]
        self._states[key] = state


class HolderWaits:
    def __init__(self, replica: Replica, pump: Callable[[], None]) -> None:
        self._replica = replica
        self._pump = pump
        self._waiting: list[asyncio.Future[None]] = []
        self._known = _KnownStates()
        self.asked_again = 0
        """Write-ack questions asked again after ASK_AGAIN_MS without an answer."""
        self.confirmed_by_ack = 0
        """Holders whose sequence acknowledgement confirmed a write (no question)."""
        self.asked_for_silence = 0
        """Holders asked because no ack of theirs covered a write within ACK_WAIT_MS (a lost ack)."""
        self._asked_ms: dict[str, float] = {}
        """Node -> when this node last asked it a write-ack question, which makes it acknowledge this
        node's deltas for `seq_ack_wanted_ms` (oldest first, at most KNOWN_STATES_MAX nodes)."""

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
        for node_id in ordered:
            member = members.get(node_id)
            alive = member is not None and member.liveness == "alive"
            here = member is not None and (wanted == "all" or member.record.dc == own_dc)
            if node_id == replica.node_id or (alive and here):
                scoped.append(node_id)
        return scoped, len(scoped)

    def _should_ask(self, node_id: str, seq: int, waited_ms: float) -> bool:
        """Whether to ask a holder directly rather than wait for its sequence acknowledgement: it
        never acknowledged this node's deltas of this run (no question started its acks yet, or it
        gets them from a relay whose frames do not name their numbers), its acks start after the
        write (it got the write, if at all, by another path), its ack covers the write under another
        member view than this node's (it may not hold the doc), or it has been silent for
        `ACK_WAIT_MS`."""
        if seq == 0:
            return True  # no write of the doc in this run (or too old): what the node has of it counts
        seq_acks = self._replica.seq_acks
        acked = seq_acks.acked.get(node_id)
        if acked is None or acked[0] > seq:
            return True
        if waited_ms >= ACK_WAIT_MS:
            self.asked_for_silence += 1
            return True
        return acked[2] != seq_acks.view_digest and acked[1] >= seq  # it counted under another view

    def _renewal_due(self, node_id: str) -> bool:
        """Whether this node's last question to a holder is older than half of `seq_ack_wanted_ms`:
        the holder acknowledges for that long after a question, however many acks it sends."""
        wanted_ms = self._replica.config.seq_ack_wanted_ms
        return wanted_ms > 0 and _now_ms() - self._asked_ms.get(node_id, -wanted_ms) > wanted_ms / 2

    async def write_acks(self, doc_id: str, wanted: WriteAcksWanted, timeout_ms: float) -> WriteAcks:
        """Wait until `wanted` replicas of `doc_id`, or every alive holder of it in this datacenter
        (`"dc"`) or in all (`"all"`), hold every write this node took so far, durably: each says
        so with the sequence acknowledgement it sends after its commit (`crdtsync.core.seqacks`),
        or, when it does not acknowledge this node's stream, answering a direct question after its
        commit. This node counts when it is one of them (the caller flushed). The doc must be
        loaded (open) here."""
        replica = self._replica
        ordered, needed = self._scope(doc_id, wanted)
        confirmed = [replica.node_id] if replica.node_id in ordered else []
        waiting = [node_id for node_id in ordered if node_id != replica.node_id]
        seq = replica.seq_acks.last_seq_of(doc_id)
        questions = _Questions(replica, doc_id, self._known, self._asked_ms)
        started_ms = _now_ms()
        deadline_ms = started_ms + timeout_ms
        while True:
            for node_id in list(waiting):
                acked = replica.seq_acks.acked.get(node_id)
                by_ack = seq > 0 and acked is not None and acked[0] <= seq <= acked[1]
                by_ack = by_ack and acked is not None and acked[2] == replica.seq_acks.view_digest
                if by_ack and node_id not in questions.not_holders:
                    self.confirmed_by_ack += 1
                elif not questions.confirmed(node_id):
                    continue
                waiting.remove(node_id)
                confirmed.append(node_id)
            waited_ms = _now_ms() - started_ms
            for node_id in waiting:
                if node_id in questions.asked or node_id in questions.unreachable:
                    continue
                if self._should_ask(node_id, seq, waited_ms):
                    questions.ask(node_id)
                elif self._renewal_due(node_id):
                    # Its acks tell: only renew them, with a probe (a state vector, no update: the
                    # update against the state it last confirmed could be all of a hot doc's writes).
                    questions.ask(node_id, probe=True)
            self.asked_again += questions.take_asked_again()
            self._pump()
            reachable = [node_id for node_id in waiting if node_id not in questions.unreachable]
            # Fewer holders than asked for: still wait for those reachable, so that the error names
            # every one that confirmed (it comes once they all did, or at the deadline).
            if len(confirmed) >= needed or not reachable:
                break
            if len(self._waiting) >= WAITS_MAX:
                break  # too many waits already: this one fails at once
            until_ms = min(deadline_ms, started_ms + ACK_WAIT_MS)
            until_ms = deadline_ms if until_ms <= _now_ms() else until_ms
            if not await self._next_frame(until_ms) and until_ms == deadline_ms:
                break
        questions.forget()
        if len(confirmed) < needed:
            raise WriteAcksTimeoutError(doc_id, needed, tuple(confirmed), timeout_ms)
        return WriteAcks(needed, tuple(confirmed))


class _Questions:
    """Direct write-ack questions of one `write_acks` call (the fallback of sequence acks): a
    `HANDOFF_OFFER` carrying what the holder lacks against the state it last confirmed (`known`),
    or a probe of its state first, each answered after the holder's commit."""

    def __init__(
        self, replica: Replica, doc_id: str, known: _KnownStates, asked_ms: dict[str, float]
    ) -> None:
        self._replica = replica
        self._doc_id = doc_id
        self._known = known
        self._asked_ms = asked_ms
        self.asked: dict[str, tuple[bool, float]] = {}
        """Holder -> (whether the update went out, rather than the probe; when)."""
        self.unreachable: set[str] = set()
        self.not_holders: set[str] = set()
        """Holders that answered they do not hold the doc: their acks of its writes do not count
        (a node counts the numbers of docs it does not hold as held)."""
        self._asked_again = 0

    def ask(self, node_id: str, against: bytes | None = None, *, probe: bool = False) -> None:
        known = None if probe else against if against is not None else self._known.get(self._doc_id, node_id)
        if self._replica.confirm(self._doc_id, node_id, known, _now_ms()):
            self.asked[node_id] = (known is not None, _now_ms())
            asked_ms = self._asked_ms
            asked_ms.pop(node_id, None)
            if len(asked_ms) >= KNOWN_STATES_MAX:
                del asked_ms[next(iter(asked_ms))]
            asked_ms[node_id] = _now_ms()
        else:
            self.asked.pop(node_id, None)
            self.unreachable.add(node_id)

    def take_asked_again(self) -> int:
        count, self._asked_again = self._asked_again, 0
        return count

    def confirmed(self, node_id: str) -> bool:
        """Whether the holder's answer came and confirms; asks again (the update after a probe, or
        after `ASK_AGAIN_MS` of silence) when needed."""
        if node_id not in self.asked:
            return False
        sent_update, at_ms = self.asked[node_id]
        answer = self._replica.confirmation(self._doc_id, node_id)
        if answer is None:
            if _now_ms() - at_ms > ASK_AGAIN_MS:
                self._asked_again += 1
                self.ask(node_id, probe=True)
            return False
        status, state = answer
        self._known.remember(self._doc_id, node_id, None if status == HANDOFF_NOT_HOLDER else state)
        if status == HANDOFF_NOT_HOLDER:
            del self.asked[node_id]
            self.unreachable.add(node_id)
            self.not_holders.add(node_id)
        elif status == HANDOFF_COVERED and sent_update:
            del self.asked[node_id]
            return True
        else:
            self.ask(node_id, state)  # the probe's answer gave its state: send what it lacks
        return False

    def forget(self) -> None:
        for node_id in self.asked:
            self._replica.confirmation(self._doc_id, node_id)  # answers that come too late
