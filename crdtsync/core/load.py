"""Decaying rates of reads and writes per doc and per datacenter of origin, and of a node's load
(adaptive replication, docs/placement.md#adaptive-replication).

Pure: every call carries `now_ms`; nothing here reads a clock.

An event at time `t` weighs `2 ** (-(now - t) / half_life)` at `now`, so a steady rate `r` per second
builds a decayed count of `r * half_life_s / ln 2`, and the rate read back is that count times
`ln 2 / half_life_s`: an exponentially weighted moving average whose weight halves every half-life.
Counts are kept against a common landmark time (`weight = 2 ** ((t - landmark) / half_life)`), so
decay never touches a stored count and never changes their order: the coldest doc stays the
coldest as time passes, which is what makes the bounded table below cheap.

The table is bounded with the space-saving algorithm (Metwally et al., 2005): at most `docs_max` docs;
a doc not in a full table takes the place of the coldest one and inherits its count as `error`. A
doc's count over-estimates its decayed count by at most its `error`, and every doc whose decayed
count exceeds the table's total divided by `docs_max` is in the table: the hot docs never leave it,
whatever the churn of cold ones. A capped table that forgets the coldest would lose a doc that is
only warming up each time the cold ones push it out; space-saving keeps its history in the error
bound instead, so a doc read again and again climbs into the table. The per-datacenter counts hold
only what happened since the doc entered the table (lower bounds); `error` is the part not split by
datacenter.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass
from typing import Literal

LANDMARK_SPAN_HALF_LIVES = 32.0
"""Counts are rescaled to a new landmark when it is this many half-lives old, long before the weight
2 ** span would lose precision or overflow."""
DATACENTERS_PER_DOC_MAX = 8
"""Origins kept per doc and kind; events from more datacenters count only in the doc's total (`error`)."""
TOP_TRACKED = 64
"""Hottest docs the table keeps apart as counts come, so that `hottest` up to this many sorts them
instead of scanning the whole table (4,096 docs: about 2 ms, on every summary and follower
decision). The follower decisions ask for 64, a summary for at most 32."""


Kind = Literal["read", "write", "fetch"]
"""What a count is of: a `read` by a client of this node (its origin is this node's datacenter), a
`write` applied here (made here, or a peer's delta: its origin is the publisher's datacenter), or a
`fetch`: a read of another node's client that this node answered because that node does not hold
the doc (a forwarded read; its origin is the asking node's datacenter)."""
KINDS: tuple[Kind, ...] = ("read", "write", "fetch")


@dataclass(frozen=True, slots=True)
class DocRates:
    """A doc's decayed rates, in events per second, by datacenter of origin (see `Kind`), and
    `unattributed`: the space-saving error (what the doc may have had before it entered the table,
    or from datacenters beyond `DATACENTERS_PER_DOC_MAX`)."""

    doc_id: str
    reads: dict[str, float]
    writes: dict[str, float]
    fetches: dict[str, float]
    unattributed: float

    @property
    def total(self) -> float:
        """Every kind, plus the unattributed part (an upper bound of the doc's rate here)."""
        counted = sum(self.reads.values()) + sum(self.writes.values()) + sum(self.fetches.values())
        return counted + self.unattributed


class DecayingRate:
    """One decaying rate (a node's load): `add(amount, now_ms)`, `per_second(now_ms)`."""

    __slots__ = ("_count", "_half_life_ms", "_since_ms")

    def __init__(self, half_life_ms: float) -> None:
        if half_life_ms <= 0:
            raise ValueError(f"half_life_ms must be positive, got {half_life_ms}")
        self._half_life_ms = half_life_ms
        self._count = 0.0
        self._since_ms = 0.0

    def _decay_to(self, now_ms: float) -> None:
        if now_ms > self._since_ms:
            self._count *= math.exp2(-(now_ms - self._since_ms) / self._half_life_ms)
            self._since_ms = now_ms

    def add(self, amount: float, now_ms: float) -> None:
        self._decay_to(now_ms)
        self._count += amount

    def per_second(self, now_ms: float) -> float:
        self._decay_to(now_ms)
        return self._count * math.log(2) / (self._half_life_ms / 1000.0)


class _Entry:
    __slots__ = ("counts", "error", "total")

    def __init__(self, error: float) -> None:
        self.total = error
        """Scaled count of every event, plus `error`: the key the table evicts by."""
        self.error = error
        self.counts: dict[Kind, dict[str, float]] = {"read": {}, "write": {}, "fetch": {}}


class RateTable:
    """Decayed read and write counts of at most `docs_max` docs, by datacenter of origin."""

    def __init__(self, half_life_ms: float, docs_max: int, top_max: int = TOP_TRACKED) -> None:
        if half_life_ms <= 0:
            raise ValueError(f"half_life_ms must be positive, got {half_life_ms}")
        if docs_max < 1:
            raise ValueError(f"docs_max must be at least 1, got {docs_max}")
        if top_max < 1:
            raise ValueError(f"top_max must be at least 1, got {top_max}")
        self.half_life_ms = half_life_ms
        self.docs_max = docs_max
        self._landmark_ms: float | None = None
        self._entries: dict[str, _Entry] = {}
        self._heap: list[tuple[float, str]] = []
        """One (key, doc) per doc, the key its total when pushed: never above its total now, since
        totals only grow. An eviction pops the least key and pushes it back with its total while
        that moved; the first that did not is the coldest doc. A count touches no heap."""
        self.evicted = 0
        """Docs that lost their place to a newcomer (cold docs churning through a full table)."""
        self._top_max = top_max
        self._top: set[str] = set()
        """The `top_max` hottest docs by (total, doc id), or every doc of a table that has fewer:
        each is above every doc outside. Totals only grow, so a doc leaves it only when another
        climbs past it (or when the table evicts it, the coldest of a table that small)."""
        self._top_heap: list[tuple[float, str]] = []
        """(key, doc) of the docs in `_top`, lazy as `_heap` is; entries of docs that left are skipped."""
        self._top_floor: tuple[float, str] = (-math.inf, "")
        """A lower bound of the coldest (total, doc) in a full `_top` (that coldest only grows): a
        doc at or below it stays outside without looking at the heap."""

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, doc_id: str) -> bool:
        return doc_id in self._entries

    def _weight(self, now_ms: float) -> float:
        """What one event at `now_ms` counts against the landmark (rescaling first when it is old)."""
        if self._landmark_ms is None:
            self._landmark_ms = now_ms
        elif now_ms - self._landmark_ms > LANDMARK_SPAN_HALF_LIVES * self.half_life_ms:
            self._rescale(now_ms)
        assert self._landmark_ms is not None
        return math.exp2((now_ms - self._landmark_ms) / self.half_life_ms)

    def _rescale(self, now_ms: float) -> None:
        assert self._landmark_ms is not None
        factor = math.exp2(-(now_ms - self._landmark_ms) / self.half_life_ms)
        self._landmark_ms = now_ms
        for entry in self._entries.values():
            entry.total *= factor
            entry.error *= factor
            for counts in entry.counts.values():
                for dc in counts:
                    counts[dc] *= factor
        self._rebuild_heap()
        # Scaled totals that were a rounding apart may now be equal: the top is chosen again.
        entries = self._entries
        self._top = set(
            heapq.nlargest(self._top_max, entries, key=lambda doc_id: (entries[doc_id].total, doc_id))
        )
        self._rebuild_top_heap()
        self._top_floor = (-math.inf, "")

    def _rebuild_heap(self) -> None:
        self._heap = [(entry.total, doc_id) for doc_id, entry in self._entries.items()]
        heapq.heapify(self._heap)

    def _rebuild_top_heap(self) -> None:
        self._top_heap = [(self._entries[doc_id].total, doc_id) for doc_id in self._top]
        heapq.heapify(self._top_heap)

    def _top_coldest(self) -> tuple[float, str]:
        """The coldest (total, doc) of `_top` (not empty), with the lazy heap brought up to date."""
        heap, entries, top = self._top_heap, self._entries, self._top
        while True:
            key, doc_id = heap[0]
            if doc_id not in top:
                heapq.heappop(heap)
                continue
            total = entries[doc_id].total
            if total == key:
                return key, doc_id
            heapq.heapreplace(heap, (total, doc_id))

    def _climb(self, doc_id: str, entry: _Entry) -> None:
        """Keep `_top` the hottest docs after the total of `doc_id` (not in it) grew."""
        top = self._top
        if len(top) >= self._top_max:
            if (entry.total, doc_id) <= self._top_floor:
                return
            coldest = self._top_floor = self._top_coldest()
            if (entry.total, doc_id) <= coldest:
                return
            heapq.heappop(self._top_heap)
            top.discard(coldest[1])
        top.add(doc_id)
        heapq.heappush(self._top_heap, (entry.total, doc_id))
        if len(self._top_heap) > 4 * self._top_max:  # docs that left it (evicted, or passed)
            self._rebuild_top_heap()

    def _entry(self, doc_id: str) -> _Entry:
        entry = self._entries.get(doc_id)
        if entry is not None:
            return entry
        error = 0.0
        if len(self._entries) >= self.docs_max:
            while True:
                key, coldest = heapq.heappop(self._heap)
                total = self._entries[coldest].total
                if total == key:
                    break
                heapq.heappush(self._heap, (total, coldest))
            del self._entries[coldest]
            self._top.discard(coldest)  # in it only when the table is no larger than the top
            self.evicted += 1
            error = total
        entry = self._entries[doc_id] = _Entry(error)
        heapq.heappush(self._heap, (error, doc_id))
        return entry

    def count(self, kind: Kind, doc_id: str, dc: str, now_ms: float, amount: float = 1.0) -> None:
        """`amount` events of `kind` on `doc_id` from datacenter `dc` at `now_ms`."""
        weight = amount * self._weight(now_ms)
        entry = self._entry(doc_id)
        counts = entry.counts[kind]
        if dc in counts or len(counts) < DATACENTERS_PER_DOC_MAX:
            counts[dc] = counts.get(dc, 0.0) + weight
        else:
            entry.error += weight
        entry.total += weight
        if entry.total >= self._top_floor[0] and doc_id not in self._top:
            self._climb(doc_id, entry)

    def _per_second(self, now_ms: float) -> float:
        """The factor from a stored count to events per second at `now_ms`."""
        if self._landmark_ms is None:
            return 0.0
        decay = math.exp2(-(now_ms - self._landmark_ms) / self.half_life_ms)
        return decay * math.log(2) / (self.half_life_ms / 1000.0)

    def _rates(self, doc_id: str, entry: _Entry, factor: float) -> DocRates:
        reads, writes, fetches = (
            {dc: count * factor for dc, count in entry.counts[kind].items()} for kind in KINDS
        )
        return DocRates(doc_id, reads, writes, fetches, entry.error * factor)

    def rates(self, doc_id: str, now_ms: float) -> DocRates | None:
        """The doc's rates at `now_ms`; None for a doc not in the table (colder than every doc in it)."""
        entry = self._entries.get(doc_id)
        if entry is None:
            return None
        return self._rates(doc_id, entry, self._per_second(now_ms))

    def hottest(self, count: int, now_ms: float) -> list[DocRates]:
        """The `count` docs with the highest total rate, hottest first (ties: the greater doc id
        first). Up to `TOP_TRACKED` docs this sorts the kept top, not the table."""
        factor, entries = self._per_second(now_ms), self._entries
        candidates = self._top if count <= self._top_max else entries
        top = heapq.nlargest(count, candidates, key=lambda doc_id: (entries[doc_id].total, doc_id))
        return [self._rates(doc_id, entries[doc_id], factor) for doc_id in top]
