"""The retransmit ring: this node's latest published deltas, numbered consecutively, which answer
peers' requests for what they missed (`crdtsync.core.outbound`).

A list used as a circular buffer, of the outbox's own (delta, size) pairs: a delta's number is its
place after the oldest one's, so an entry adds no object of its own. Not a `deque`: a deque allocates
and frees a block of 64 slots every 64 entries from the C heap that pycrdt's Rust code allocates
from too, and holding tens of thousands of entries scattered those blocks among the doc's structs.
Replaying a real editing trace (259,778 edits into one doc) cost about 2 µs more per edit with a
full deque of 65,536 entries than with 200; a preallocated list costs what 200 did (bench/README.md).
"""

from __future__ import annotations

from collections.abc import Iterator

from crdtsync.core.messages import Delta

Sized = tuple[Delta, int]
"""A delta and what it adds to a batch, roughly: its update, two state vectors and its doc id
(computed once, when it is captured)."""


class DeltaRing:
    """At most `deltas_max` deltas and `bytes_max` of their sizes, the oldest falling out first."""

    def __init__(self, deltas_max: int, bytes_max: int) -> None:
        self._deltas_max = max(deltas_max, 0)
        self._bytes_max = bytes_max
        self._slots: list[Sized | None] = []
        """Grows to `deltas_max` slots as deltas come (a large limit costs nothing until used),
        then each new delta takes the slot of the one that fell out."""
        self._start = 0
        """The slot of the oldest delta."""
        self._count = 0
        self._bytes = 0
        self.oldest_seq = 1
        """The number of the oldest delta held (while empty: the next number)."""

    def __len__(self) -> int:
        return self._count

    @property
    def next_seq(self) -> int:
        return self.oldest_seq + self._count

    def extend(self, deltas: list[Sized]) -> None:
        """Keep `deltas`, numbered from `next_seq` on, and let the oldest fall out past the limits.
        A batch at a time, in slices: this runs for every local transaction."""
        capacity = self._deltas_max
        if len(deltas) >= capacity:  # only the newest `capacity` of them can stay (none at 0)
            self._drop(self._count)
            skipped = len(deltas) - capacity
            self.oldest_seq += skipped
            deltas = deltas[skipped:]
        else:
            self._drop(self._count + len(deltas) - capacity)
        if deltas:
            self._place(deltas)
        while self._count and self._bytes > self._bytes_max:
            self._drop(1)

    def _place(self, deltas: list[Sized]) -> None:
        """Put `deltas` after the newest (there is room for them)."""
        slots, capacity, count = self._slots, self._deltas_max, len(deltas)
        at = (self._start + self._count) % capacity
        first = min(count, capacity - at)
        if at == len(slots):  # still growing: slots fill in order until the first wrap
            slots.extend(deltas[:first])
        else:
            slots[at : at + first] = deltas[:first]
        if count > first:
            slots[: count - first] = deltas[first:]
        self._count += count
        self._bytes += sum([size for _delta, size in deltas])

    def _drop(self, count: int) -> None:
        """Let the `count` oldest deltas fall out, their slots emptied at once (their bytes are
        freed now, not when the slot is reused)."""
        if count <= 0:
            return
        slots, start, capacity = self._slots, self._start, self._deltas_max
        first = min(count, capacity - start)
        dropped = slots[start : start + first] + slots[: count - first]
        self._bytes -= sum([sized[1] for sized in dropped if sized is not None])
        slots[start : start + first] = [None] * first
        slots[: count - first] = [None] * (count - first)
        self._start = (start + count) % capacity
        self._count -= count
        self.oldest_seq += count

    def since(self, from_seq: int, count: int) -> list[Sized]:
        """Up to `count` deltas from number `from_seq` on (fewer at the newest end; none before
        `oldest_seq`)."""
        offset = from_seq - self.oldest_seq
        if offset < 0 or count <= 0:
            return []
        end = min(offset + count, self._count)
        return [self._at(index) for index in range(offset, end)]

    def _at(self, offset: int) -> Sized:
        sized = self._slots[(self._start + offset) % self._deltas_max]
        assert sized is not None
        return sized

    def newest_first(self) -> Iterator[tuple[int, Delta]]:
        """(number, delta), from the newest delta back to the oldest."""
        for offset in range(self._count - 1, -1, -1):
            yield self.oldest_seq + offset, self._at(offset)[0]

    def __iter__(self) -> Iterator[tuple[int, Delta]]:
        """(number, delta), from the oldest delta held to the newest."""
        for offset in range(self._count):
            yield self.oldest_seq + offset, self._at(offset)[0]
