"""The load gossip message (adaptive replication, docs/placement.md#adaptive-replication): each node's
load and its hottest docs, spread with the membership gossip.

- LOAD_SUMMARIES (25): the sender's node id, then 1..SUMMARIES_PER_MESSAGE_MAX summaries, each: node
  id, datacenter, epoch, sequence number, load (thousandths of a core), age (ms), the count of its
  docs, then
  per doc: doc id, whether that node follows it (a read follower, not a replica), its unattributed
  rate, the count of its rates and that many (kind, datacenter, rate) triples. Rates are thousandths
  of an event per second; kind is 0 read, 1 write, 2 fetch (see `crdtsync.core.load.Kind`).

A summary is replaced only by one of the same node with a higher (epoch, sequence number). The
envelope, its checks and the admission of the sender are `wire`'s and the replica's as for every
kind. Of the core it imports only `load`, `envelope` (its errors) and `field_reader`: `messages`
and `wire` import it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from crdtsync.core.envelope import WireError
from crdtsync.core.field_reader import FieldReader
from crdtsync.core.load import DATACENTERS_PER_DOC_MAX, KINDS, Kind

LOAD_SUMMARIES = 25
SUMMARIES_PER_MESSAGE_MAX = 16
DOCS_PER_SUMMARY_MAX = 32
RATES_PER_DOC_MAX = len(KINDS) * DATACENTERS_PER_DOC_MAX
MILLI_MAX = (1 << 63) - 1
_NODE_ID_BYTES_MAX = 64
_DC_BYTES_MAX = 64
_DOC_ID_BYTES_MAX = 512


@dataclass(frozen=True, slots=True)
class DocLoad:
    """One hot doc of a node's summary: rates in events per second."""

    doc_id: str
    following: bool
    unattributed: float
    rates: tuple[tuple[Kind, str, float], ...]
    """(kind, datacenter of origin, events per second)."""

    def of(self, kind: Kind) -> dict[str, float]:
        return {dc: rate for rate_kind, dc, rate in self.rates if rate_kind == kind}


@dataclass(frozen=True, slots=True)
class NodeLoad:
    """One node's summary: its load (cores busy) and its hottest docs, hottest first."""

    node_id: str
    dc: str
    epoch: int
    seq: int
    load_cores: float
    docs: tuple[DocLoad, ...]
    age_ms: float = 0.0
    """How old the summary is: 0 from its node; each node that passes it on adds the time it held it
    (nodes share no clock), so a summary that took a long way is known to be old."""


@dataclass(frozen=True, slots=True)
class LoadSummaries:
    node_id: str
    summaries: tuple[NodeLoad, ...]


def _milli(value: float) -> int:
    return min(MILLI_MAX, max(0, round(value * 1000)))


def body_of(message: LoadSummaries) -> tuple[int, list[Any]]:
    """The kind and the fields of a load message (`wire.encode` wraps them in the envelope)."""
    if not 1 <= len(message.summaries) <= SUMMARIES_PER_MESSAGE_MAX:
        raise ValueError(f"a load message carries 1..{SUMMARIES_PER_MESSAGE_MAX} summaries")
    fields: list[Any] = [message.node_id]
    for summary in message.summaries:
        if len(summary.docs) > DOCS_PER_SUMMARY_MAX:
            raise ValueError(f"a load summary names at most {DOCS_PER_SUMMARY_MAX} docs")
        fields += [summary.node_id, summary.dc, summary.epoch, summary.seq, _milli(summary.load_cores)]
        fields += [min(MILLI_MAX, max(0, round(summary.age_ms))), len(summary.docs)]
        for doc in summary.docs:
            if len(doc.rates) > RATES_PER_DOC_MAX:
                raise ValueError(f"a doc's load carries at most {RATES_PER_DOC_MAX} rates")
            fields += [doc.doc_id, doc.following, _milli(doc.unattributed), len(doc.rates)]
            for kind, dc, rate in doc.rates:
                fields += [KINDS.index(kind), dc, _milli(rate)]
    return LOAD_SUMMARIES, fields


def _count(f: FieldReader, name: str, bound: int) -> int:
    count = f.uint(name)
    if count > bound:
        raise WireError("too_large", f"{f.kind.name}.{name} is {count}, over {bound}")
    return count


def _read_doc(f: FieldReader) -> DocLoad:
    doc_id, following = f.text("doc_id", _DOC_ID_BYTES_MAX), f.flag("following")
    unattributed = f.uint("unattributed") / 1000.0
    rates: list[tuple[Kind, str, float]] = []
    for _ in range(_count(f, "rates", RATES_PER_DOC_MAX)):
        kind_index = f.uint("rate_kind")
        if kind_index >= len(KINDS):
            raise WireError("bad_body", f"{f.kind.name}.rate_kind {kind_index} is unknown")
        rates.append((KINDS[kind_index], f.text("dc", _DC_BYTES_MAX), f.uint("rate") / 1000.0))
    return DocLoad(doc_id, following, unattributed, tuple(rates))


def read_summaries(f: FieldReader, node_id: str) -> LoadSummaries:
    summaries: list[NodeLoad] = []
    while f.remaining():
        if len(summaries) == SUMMARIES_PER_MESSAGE_MAX:
            raise WireError(
                "too_large", f"{f.kind.name} carries more than {SUMMARIES_PER_MESSAGE_MAX} summaries"
            )
        about, dc = f.text("node_id", _NODE_ID_BYTES_MAX), f.text("dc", _DC_BYTES_MAX)
        epoch, seq, load = f.uint("epoch"), f.uint("seq"), f.uint("load") / 1000.0
        age_ms = float(f.uint("age_ms"))
        docs = tuple(_read_doc(f) for _ in range(_count(f, "docs", DOCS_PER_SUMMARY_MAX)))
        summaries.append(NodeLoad(about, dc, epoch, seq, load, docs, age_ms))
    if not summaries:
        raise WireError("bad_body", f"{f.kind.name} carries no summary")
    return LoadSummaries(node_id, tuple(summaries))
