"""Read followers of hot docs (adaptive replication, docs/placement.md#read-followers).

A node that does not hold a doc serves each read of it from a copy fetched from a holder: one round
trip, and one answer from the holder, per read. When a datacenter's nodes that do not hold a doc
read it faster than `follow_reads_per_s` together (the per-replica budget), one of them *follows*
the doc: it keeps it pinned, so that it subscribes to the doc's bucket and receives its deltas, and
serves its own reads from its copy without asking. The datacenter's rate is this node's reads plus
those the other nodes of the datacenter gossip in their summaries (their hottest docs). The node
that follows is one of those reading most (`dc_reads`); if the readers that still do not follow
still read more than the budget, the next one follows, and so on. A follower stops once its
datacenter's rate has stayed below half the budget for `follow_cool_down_ms` (hysteresis: a rate
that hovers around the budget does not flap). A follower never counts toward rf or durability,
receives no hints and is dropped without a handoff; its reads are as fresh as its replication lag.
Like any doc a node has but does not hold, a followed doc is offered to its holder as often as
anti-entropy runs, and a follower behind the holder's answer fetches what it missed
(`crdtsync.core.handoff`): anti-entropy itself compares only held docs.

Caps: at most `followed_docs_max` docs per node, and `followers_per_doc_max` followers per doc in
the cluster, counted from the gossiped summaries (a node lists the docs it follows). Several nodes
that want a doc at once (a fleet that starts polling the same entry) would all see room under the
cap before their summaries cross, and all start. So the nodes that may follow a doc (members not
holding it) are ranked by a hash of the doc and the node id, the same order on every node, and a
node starts only when fewer nodes ahead of it may take the room the cap leaves: a node ahead
counts unless a summary of it made since this node's datacenter went over the budget says it
would not start (it does not read the doc, or its datacenter forwards no more than the budget; no
summary yet: it counts). The first ones start at once; the others wait for the
summaries of those ahead. Should two still start at once (a node ahead went over the budget just
after its summary), the followers beyond the cap in that order stop at their next decision.

`decide` is the pure hysteresis, `dc_reads` a datacenter's rate and its next follower; `Followers`
applies them with the caps once per `DECIDE_INTERVAL_MS` and tells the replica which docs to start
and stop following. Pure: time comes in as `now_ms`.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from crdtsync.core.context import Context
from crdtsync.core.holding import Holding
from crdtsync.core.load import TOP_TRACKED
from crdtsync.core.load_board import FORWARD_AGE_MS, LoadBoard
from crdtsync.core.membership import Membership

log = logging.getLogger("crdtsync.adaptive")

DECIDE_INTERVAL_MS = 1000.0
"""How often the followed docs are decided again."""
CANDIDATES_MAX = TOP_TRACKED
"""Hottest docs of the node's rate table looked at per decision (beyond the followed ones)."""
CANDIDATE_SHARE = 0.5
"""A node of a datacenter may follow a doc next when it reads at least this share of what the
node reading most of it there does (`dc_reads`): following saves only the follower's own reads."""


class Host(Protocol):
    """What following a doc takes of the replica."""

    def needs_load(self, doc_id: str) -> bool: ...
    def open_doc(self, doc_id: str, *, pin: bool = False) -> Any: ...
    def release_doc(self, doc_id: str) -> None: ...
    def fetch_doc(self, doc_id: str, now_ms: float) -> bool: ...


@dataclass(frozen=True, slots=True)
class Follow:
    """A followed doc: since when, and since when its rate has been below half the budget (None
    while it is not)."""

    since_ms: float
    cool_since_ms: float | None = None


def decide(
    follow: Follow | None, reads_per_s: float, now_ms: float, budget_per_s: float, cool_down_ms: float
) -> Follow | None:
    """The hysteresis, for one doc this node does not hold: start following above the budget; once
    following, stop only after the rate stayed below half the budget for the whole cool-down. The
    caps are the caller's."""
    if follow is None:
        return Follow(now_ms) if reads_per_s > budget_per_s else None
    if reads_per_s >= budget_per_s / 2:
        return Follow(follow.since_ms) if follow.cool_since_ms is not None else follow
    if follow.cool_since_ms is None:
        return Follow(follow.since_ms, now_ms)
    return None if now_ms - follow.cool_since_ms >= cool_down_ms else follow


@dataclass(frozen=True, slots=True)
class Reader:
    """A node that reads a doc it does not hold: its client reads per second, as its latest summary
    says (this node's own, as its table says now), and whether it follows the doc."""

    node_id: str
    dc: str
    reads_per_s: float
    following: bool


@dataclass(frozen=True, slots=True)
class DcReads:
    """A datacenter's reads of a doc by the nodes that do not hold it: `total` (followers' reads
    included), `forwarded` (only the readers that do not follow it: what still goes to a holder),
    and `candidates`: the readers that may follow it next, in `rank_key` order."""

    total: float
    forwarded: float
    candidates: tuple[str, ...]

    @property
    def next_follower(self) -> str | None:
        return self.candidates[0] if self.candidates else None


def dc_reads(doc_id: str, readers: Sequence[Reader]) -> DcReads:
    """`readers` (one datacenter's) summed, and which of them may follow next: those that do not
    follow it and read at least `CANDIDATE_SHARE` of what the one reading most does. Not simply the
    one reading most: each node sees its own rate fresh and the others' as old as their summaries,
    so each would find itself first while the rates climb. Among the candidates, the doc's rank
    order (the same on every node) names the next."""
    total = sum(reader.reads_per_s for reader in readers)
    waiting = [reader for reader in readers if not reader.following and reader.reads_per_s > 0]
    forwarded = sum(reader.reads_per_s for reader in waiting)
    most = max((reader.reads_per_s for reader in waiting), default=0.0)
    candidates = sorted(
        (reader.node_id for reader in waiting if reader.reads_per_s >= CANDIDATE_SHARE * most),
        key=lambda node_id: rank_key(doc_id, node_id),
    )
    return DcReads(total, forwarded, tuple(candidates))


def rank_key(doc_id: str, node_id: str) -> bytes:
    """Where `node_id` comes in the order of the nodes that may follow `doc_id` (lowest first)."""
    return hashlib.blake2b(f"{doc_id}\x00{node_id}".encode(), digest_size=8).digest()


class FollowOrder:
    """The members that may follow a doc (alive or suspect, not holding it), in `rank_key` order."""

    def __init__(self, membership: Membership, holding: Holding) -> None:
        self._membership = membership
        self._holding = holding
        self._orders: dict[str, list[str]] = {}
        """Doc -> its order, while the member table stays at `_revision` (at most `CANDIDATES_MAX`:
        a decision asks for the docs over the budget that it does not follow yet)."""
        self._revision = -1

    def __call__(self, doc_id: str) -> list[str]:
        membership = self._membership
        if membership.revision != self._revision or len(self._orders) >= CANDIDATES_MAX:
            self._orders, self._revision = {}, membership.revision
        order = self._orders.get(doc_id)
        if order is None:
            order = self._orders[doc_id] = self._order(doc_id)
        return order

    def holds(self, node_id: str, doc_id: str) -> bool:
        """Whether `node_id` holds `doc_id` (its reads of it are local, not a follower's to take)."""
        holding = self._holding
        return holding.holds(node_id, holding.bucket_of(doc_id))

    def _order(self, doc_id: str) -> list[str]:
        membership, holding = self._membership, self._holding
        holders = holding.holders(holding.bucket_of(doc_id)) if holding.enforced else None
        nodes = [membership.own.node_id]
        nodes += [node_id for node_id, m in membership.members.items() if m.liveness in ("alive", "suspect")]
        return sorted(
            (node_id for node_id in nodes if holders is not None and node_id not in holders),
            key=lambda node_id: rank_key(doc_id, node_id),
        )


class Followers:
    """The docs this node follows because its datacenter reads them, decided with `decide`,
    `dc_reads` and the caps (`order`: who may follow a doc, first to last; None starts every
    follower at once)."""

    def __init__(
        self, ctx: Context, board: LoadBoard, holds: Callable[[str], bool], order: FollowOrder | None = None
    ) -> None:
        self._config = ctx.config
        self._counters = ctx.counters
        self._board = board
        self._holds = holds
        self._order = order
        self.follows: dict[str, Follow] = {}
        self._over_since: dict[str, float] = {}
        """Docs this node does not follow whose reads its datacenter forwards over the budget:
        since when (at most the docs one decision looks at)."""
        self._next_ms = 0.0
        self._readers: dict[str, list[Reader]] = {}
        """During a decision: doc -> the other nodes that read it without holding it (from their
        summaries; bounded by the member table times `DOCS_PER_SUMMARY_MAX`)."""
        self._own: dict[str, float] = {}
        """During a decision: this node's reads per second of the docs it decides on."""

    @property
    def enabled(self) -> bool:
        return self._config.follow_reads_per_s > 0

    def _heard(self, now_ms: float) -> tuple[dict[str, list[str]], dict[str, list[Reader]]]:
        """From the other nodes' summaries heard in the last `FORWARD_AGE_MS`: doc -> the nodes that
        follow it (in node id order), and doc -> the nodes that read it without holding it."""
        followers: dict[str, list[str]] = {}
        readers: dict[str, list[Reader]] = {}
        order = self._order
        for node_id, (summary, made_ms) in sorted(self._board.received.items()):
            if now_ms - made_ms >= FORWARD_AGE_MS:
                continue
            for doc in summary.docs:
                if doc.following:
                    followers.setdefault(doc.doc_id, []).append(node_id)
                reads_per_s = doc.of("read").get(summary.dc, 0.0)
                if (reads_per_s > 0 or doc.following) and not (
                    order is not None and order.holds(node_id, doc.doc_id)
                ):
                    reader = Reader(node_id, summary.dc, reads_per_s, doc.following)
                    readers.setdefault(doc.doc_id, []).append(reader)
        return followers, readers

    def _own_reads(self, now_ms: float) -> dict[str, float]:
        """Reads per second here of the hottest docs, of every followed one, and of the docs other
        nodes of this datacenter read."""
        board = self._board
        rates = {
            rates.doc_id: rates.reads.get(board.dc, 0.0)
            for rates in board.table.hottest(CANDIDATES_MAX, now_ms)
        }
        here = (doc_id for doc_id, readers in self._readers.items() if any(r.dc == board.dc for r in readers))
        for doc_id in itertools.chain(self.follows, here):
            if doc_id not in rates:
                known = board.table.rates(doc_id, now_ms)
                rates[doc_id] = 0.0 if known is None else known.reads.get(board.dc, 0.0)
        return rates

    def _dc_reads(self, doc_id: str, dc: str) -> DcReads:
        """Datacenter `dc`'s reads of `doc_id`, as this decision knows them (this node's own reads
        fresh, the others' from their summaries)."""
        readers = [reader for reader in self._readers.get(doc_id, ()) if reader.dc == dc]
        board = self._board
        if dc == board.dc:
            readers.append(Reader(board.node_id, dc, self._own.get(doc_id, 0.0), doc_id in self.follows))
        return dc_reads(doc_id, readers)

    def _next(
        self, doc_id: str, follow: Follow | None, reads_per_s: float, now_ms: float, elsewhere: list[str]
    ) -> Follow | None:
        """Where `doc_id` (followed as `follow`) stands after this decision: the hysteresis on
        `reads_per_s` (this datacenter's rate), then the caps (`elsewhere`: the other nodes that
        follow it)."""
        config = self._config
        if self._holds(doc_id) or not self.enabled:
            return None  # a replica now (placement moved), or following was turned off
        after = decide(follow, reads_per_s, now_ms, config.follow_reads_per_s, config.follow_cool_down_ms)
        if after is None:
            return None
        if follow is None:
            full = len(self.follows) >= config.followed_docs_max
            if full or len(elsewhere) >= config.followers_per_doc_max:
                return None
            since_ms = self._over_since.get(doc_id, now_ms)
            return after if self._my_turn(doc_id, elsewhere, since_ms) else None
        # Over the cap (summaries slower than the turns): the nodes that come first keep following.
        me = rank_key(doc_id, self._board.node_id)
        before_me = [node_id for node_id in elsewhere if rank_key(doc_id, node_id) < me]
        return None if len(before_me) >= config.followers_per_doc_max else after

    def _my_turn(self, doc_id: str, elsewhere: list[str], since_ms: float) -> bool:
        """Whether fewer nodes ahead of this one in `doc_id`'s order may take the room the cap
        leaves (`since_ms`: since when this node's datacenter forwards the doc's reads over the
        budget)."""
        if self._order is None:
            return True
        room = self._config.followers_per_doc_max - len(elsewhere)
        ahead = 0
        for node_id in self._order(doc_id):
            if node_id == self._board.node_id:
                break
            if node_id not in elsewhere and self._may_follow(node_id, doc_id, since_ms):
                ahead += 1
        return ahead < room

    def _may_follow(self, node_id: str, doc_id: str, since_ms: float) -> bool:
        """Unless a summary of `node_id` made since `since_ms` says it would not start following
        `doc_id`: it does not read it (a doc outside its gossiped hottest is colder than all of
        them), or the reads its datacenter still forwards are within the budget. Whether it is its
        datacenter's next follower is not asked: that compares its rate, as old as its summary,
        with others' (this node's fresh), and a node ahead must count while it may start."""
        known = self._board.received.get(node_id)
        if known is None or known[1] < since_ms:
            return True
        reads = any(r.node_id == node_id and r.reads_per_s > 0 for r in self._readers.get(doc_id, ()))
        return reads and self._dc_reads(doc_id, known[0].dc).forwarded > self._config.follow_reads_per_s

    def _rate(self, doc_id: str, following: bool) -> tuple[float, DcReads]:
        """(the rate the hysteresis sees, this datacenter's reads): while following, the
        datacenter's reads; before, the reads it still forwards, when this node is the one to
        follow next (otherwise none: another node of the datacenter goes first)."""
        here = self._dc_reads(doc_id, self._board.dc)
        if following:
            return here.total, here
        return (here.forwarded if here.next_follower == self._board.node_id else 0.0), here

    def step(self, now_ms: float) -> tuple[list[str], list[str]]:
        """(docs to start following, docs to stop following), at most once per `DECIDE_INTERVAL_MS`."""
        if now_ms < self._next_ms or not (self.enabled or self.follows):
            return [], []
        self._next_ms = now_ms + DECIDE_INTERVAL_MS
        elsewhere, self._readers = self._heard(now_ms)
        self._own = self._own_reads(now_ms)
        start: list[str] = []
        stop: list[str] = []
        budget = self._config.follow_reads_per_s
        over_since, self._over_since = self._over_since, {}
        decided = {doc_id: self._rate(doc_id, doc_id in self.follows) for doc_id in self._own}
        for doc_id, (rate, here) in sorted(decided.items(), key=lambda item: (-item[1][1].total, item[0])):
            before = self.follows.pop(doc_id, None)
            if before is None and here.forwarded > budget:
                # Since when this datacenter forwards too much of it, whether or not this node is
                # the next to follow: the summaries of the nodes ahead made since then tell.
                self._over_since[doc_id] = over_since.get(doc_id, now_ms)
            after = self._next(doc_id, before, rate, now_ms, elsewhere.get(doc_id, []))
            if after is not None:
                self._over_since.pop(doc_id, None)
                self.follows[doc_id] = after
            own = self._own[doc_id]
            if before is None and after is not None:
                start.append(doc_id)
                log.info(
                    "following doc %r: %.1f reads/s from datacenter %s (%.1f here), over the budget of %g",
                    doc_id, here.total, self._board.dc, own, budget,
                )  # fmt: skip
            elif before is not None and after is None:
                stop.append(doc_id)
                log.info(
                    "no longer following doc %r: %.1f reads/s from datacenter %s (%.1f here; budget %g)",
                    doc_id, here.total, self._board.dc, own, budget,
                )  # fmt: skip
        self._readers, self._own = {}, {}
        self._counters.follows_started += len(start)
        self._counters.follows_stopped += len(stop)
        self._board.following = set(self.follows)
        return start, stop

    def tick(self, host: Host, now_ms: float) -> None:
        """Timer duty: follow (pin, and fetch from a holder) the docs `step` starts, and release those
        it stops."""
        start, stop = self.step(now_ms)
        for doc_id in start:
            if host.needs_load(doc_id):
                del self.follows[doc_id]  # evicted from memory: the next decision tries again
                continue
            host.open_doc(doc_id, pin=True)
            host.fetch_doc(doc_id, now_ms)
        for doc_id in stop:
            host.release_doc(doc_id)
        self._board.following = set(self.follows)
