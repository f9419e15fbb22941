"""What a node knows of load (adaptive replication, docs/placement.md#adaptive-replication): its own
decaying rates per doc and its load, and the latest summary of every other member, which it passes
on with the membership gossip.

Counted here (the driver and the parts call in; every call carries `now_ms`):
- `read`: a client of this node read a doc (an HTTP read, a library `Node.open`);
- `wrote`: this node's application wrote to a doc (captured by the doc's observer);
- `fetched`: a node that does not hold a doc asked this one for it (a forwarded read);
- `busy`: CPU time this node spent (the driver measures it; the core has no clock).

Each event is counted once in the cluster, where it entered (a read and a write where the client
made it, a forwarded read where it was answered), so the cluster's rates are the sums of the
members' summaries.

A summary (`NodeLoad`) is this node's load and its `load_docs_gossiped` hottest docs. Gossip carries
this node's own summary and, in turn, those it heard of others, up to `MESSAGE_BYTES_MAX`, so every
node of a datacenter (and through the relays, of every datacenter) learns every member's summary
within a few gossip rounds. Summaries are kept only for current members, so the board is bounded
by the member table.
"""

from __future__ import annotations

import dataclasses

from crdtsync.core.context import Context
from crdtsync.core.holding import Holding
from crdtsync.core.load import DecayingRate, DocRates, Kind, RateTable
from crdtsync.core.load_wire import (
    DOCS_PER_SUMMARY_MAX,
    SUMMARIES_PER_MESSAGE_MAX,
    DocLoad,
    LoadSummaries,
    NodeLoad,
)
from crdtsync.core.membership import Membership

MESSAGE_BYTES_MAX = 16 * 1024
"""About the bytes of one load message (estimated before encoding: strings plus 9 bytes a number);
summaries beyond wait for a later round."""
MESSAGE_FIELDS_MAX = 8192
"""Fields of one load message: well under what `wire` decodes (its msgpack array bound)."""
FORWARD_AGE_MS = 60_000.0
"""Another node's summary is passed on only while it is younger than this (its age travels with it):
a node that stopped gossiping is not advertised as loaded forever."""


def _doc_load(rates: DocRates, following: bool) -> DocLoad:
    triples: list[tuple[Kind, str, float]] = []
    kinds: tuple[tuple[Kind, dict[str, float]], ...] = (
        ("read", rates.reads),
        ("write", rates.writes),
        ("fetch", rates.fetches),
    )
    for kind, by_dc in kinds:
        triples += ((kind, dc, rate) for dc, rate in by_dc.items())
    return DocLoad(rates.doc_id, following, rates.unattributed, tuple(triples))


def _size(summary: NodeLoad) -> tuple[int, int]:
    """(fields, estimated bytes) of a summary on the wire."""
    fields = 6 + sum(4 + 3 * len(doc.rates) for doc in summary.docs)
    text = len(summary.node_id) + len(summary.dc)
    text += sum(len(doc.doc_id) + sum(len(dc) for _, dc, _ in doc.rates) for doc in summary.docs)
    return fields, text + 9 * fields


class LoadBoard:
    """This node's rates and load, and the summaries of the other members."""

    def __init__(self, ctx: Context, membership: Membership, holding: Holding) -> None:
        config = ctx.config
        self.node_id = ctx.node_id
        self.dc = ctx.dc
        self._epoch = ctx.epoch
        self._membership = membership
        self._holding = holding
        self.table = RateTable(config.load_half_life_ms, config.load_docs_tracked_max)
        self.cpu = DecayingRate(config.load_half_life_ms)
        self.docs_gossiped = min(config.load_docs_gossiped, DOCS_PER_SUMMARY_MAX)
        self.following: set[str] = set()
        """Docs this node follows because they are read here (adaptive replication)."""
        self._seq = 0
        self.received: dict[str, tuple[NodeLoad, float]] = {}
        """Node -> (its latest summary, when it was made, in this node's clock: its arrival less the
        age it arrived with)."""
        self._turn = 0
        self.summaries_refused = 0
        """Summaries not kept: about this node, a node that is not a member, or in another
        datacenter than its member record's."""

    # ------------------------------------------------------------------ counting

    def read(self, doc_id: str, now_ms: float) -> None:
        self.table.count("read", doc_id, self.dc, now_ms)

    def wrote(self, doc_id: str, now_ms: float, writes: int = 1) -> None:
        """This node's application wrote `writes` transactions to `doc_id` (a peer's deltas are
        counted by that peer)."""
        self.table.count("write", doc_id, self.dc, now_ms, writes)

    def fetched(self, doc_id: str, requester: str, now_ms: float) -> None:
        """`requester` asked for `doc_id`'s state: a forwarded read when it does not hold the doc
        (otherwise it is a repair between holders, not a read)."""
        holding = self._holding
        if not holding.enforced or holding.holds(requester, holding.bucket_of(doc_id)):
            return
        dc = self._membership.dc_of(requester)
        if dc is not None:
            self.table.count("fetch", doc_id, dc, now_ms)

    def busy(self, cpu_s: float, now_ms: float) -> None:
        """This node spent `cpu_s` seconds of CPU since the last call."""
        self.cpu.add(max(0.0, cpu_s), now_ms)

    # ------------------------------------------------------------------ summaries

    def own(self, now_ms: float) -> NodeLoad:
        """This node's summary now (a fresh sequence number each time)."""
        self._seq += 1
        hottest = self.table.hottest(self.docs_gossiped, now_ms)
        docs = [_doc_load(rates, rates.doc_id in self.following) for rates in hottest]
        listed = {doc.doc_id for doc in docs}
        for doc_id in sorted(self.following - listed):
            if len(docs) >= DOCS_PER_SUMMARY_MAX:
                break
            rates = self.table.rates(doc_id, now_ms)
            docs.append(_doc_load(rates, True) if rates is not None else DocLoad(doc_id, True, 0.0, ()))
        load = self.cpu.per_second(now_ms)
        summary = NodeLoad(self.node_id, self.dc, self._epoch, self._seq, load, tuple(docs))
        while summary.docs and _size(summary)[1] > MESSAGE_BYTES_MAX // 2:
            # Long doc ids: the coldest go, so that others' summaries still fit beside this one.
            summary = dataclasses.replace(summary, docs=summary.docs[:-1])
        return summary

    def message(self, now_ms: float) -> LoadSummaries:
        """This node's summary, then others' in turn, bounded by `MESSAGE_BYTES_MAX`."""
        own = self.own(now_ms)
        summaries = [own]
        fields, size = _size(own)
        others = [
            dataclasses.replace(summary, age_ms=now_ms - made_ms)
            for node_id, (summary, made_ms) in sorted(self.received.items())
            if now_ms - made_ms < FORWARD_AGE_MS
        ]
        self._turn += 1
        start = self._turn % len(others) if others else 0
        for summary in (others[start:] + others[:start])[: SUMMARIES_PER_MESSAGE_MAX - 1]:
            more_fields, more_size = _size(summary)
            if fields + more_fields > MESSAGE_FIELDS_MAX or size + more_size > MESSAGE_BYTES_MAX:
                break
            summaries.append(summary)
            fields, size = fields + more_fields, size + more_size
        return LoadSummaries(self.node_id, tuple(summaries))

    def on_message(self, message: LoadSummaries, now_ms: float) -> None:
        """Keep each summary newer than the one known of its node, for current members only."""
        members = self._membership.members
        for summary in message.summaries:
            member = members.get(summary.node_id)
            if (
                summary.node_id == self.node_id
                or member is None
                or member.liveness == "left"
                or member.record.dc != summary.dc
            ):
                self.summaries_refused += 1
                continue
            known = self.received.get(summary.node_id)
            if known is None or (summary.epoch, summary.seq) > (known[0].epoch, known[0].seq):
                self.received[summary.node_id] = (summary, now_ms - summary.age_ms)
        for node_id in [node_id for node_id in self.received if node_id not in members]:
            del self.received[node_id]  # a member forgotten since: bounded by the member table

    def followers_here(self, doc_id: str, now_ms: float) -> list[str]:
        """The other nodes of this datacenter whose latest summary (made within `FORWARD_AGE_MS`)
        says they follow `doc_id`, in node id order: where a read of it can go without crossing the
        WAN when no holder is here. A summary is a gossip round or two old, so one may have stopped
        since: it then serves the read from a fetched copy, as any node does."""
        return sorted(
            node_id
            for node_id, (summary, made_ms) in self.received.items()
            if summary.dc == self.dc
            and now_ms - made_ms < FORWARD_AGE_MS
            and any(doc.following and doc.doc_id == doc_id for doc in summary.docs)
        )

    def view(self, now_ms: float) -> list[tuple[NodeLoad, float]]:
        """Every node's latest summary (this node's first, fresh) with its age in milliseconds."""
        nodes = [(self.own(now_ms), 0.0)]
        members = self._membership.members
        for node_id, (summary, made_ms) in sorted(self.received.items()):
            member = members.get(node_id)
            if member is not None and member.liveness != "left":
                nodes.append((summary, now_ms - made_ms))
        return nodes
