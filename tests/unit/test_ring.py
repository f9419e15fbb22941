"""The retransmit ring (`crdtsync.core.ring`) against a plain model: the newest deltas within both
limits, numbered consecutively, through wraps of its circular list."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from crdtsync.core.messages import Delta
from crdtsync.core.ring import DeltaRing, Sized


def _sized(seq: int, size: int) -> Sized:
    return Delta(f"doc-{seq % 3}", b"", b"", seq.to_bytes(4, "big")), size


def _model(all_deltas: list[Sized], deltas_max: int, bytes_max: int, after_each: list[int]) -> list[int]:
    """The numbers the old deque kept: after each batch, drop the oldest while over a limit."""
    kept: list[int] = []
    taken = 0
    for batch_end in after_each:
        kept.extend(range(taken + 1, batch_end + 1))
        taken = batch_end
        while kept and (len(kept) > deltas_max or sum(all_deltas[seq - 1][1] for seq in kept) > bytes_max):
            kept.pop(0)
    return kept


@settings(max_examples=200, deadline=None)
@given(
    deltas_max=st.integers(0, 7),
    bytes_max=st.integers(0, 60),
    batches=st.lists(st.lists(st.integers(1, 12), max_size=9), max_size=12),
)
def test_the_ring_keeps_the_newest_deltas_within_both_limits(
    deltas_max: int, bytes_max: int, batches: list[list[int]]
) -> None:
    ring = DeltaRing(deltas_max, bytes_max)
    all_deltas: list[Sized] = []
    batch_ends: list[int] = []
    for sizes in batches:
        batch = [_sized(len(all_deltas) + i + 1, size) for i, size in enumerate(sizes)]
        assert ring.next_seq == len(all_deltas) + 1
        ring.extend(batch)
        all_deltas.extend(batch)
        batch_ends.append(len(all_deltas))
        kept = _model(all_deltas, deltas_max, bytes_max, batch_ends)
        assert [seq for seq, _delta in ring] == kept
        assert [delta for _seq, delta in ring] == [all_deltas[seq - 1][0] for seq in kept]
        assert [seq for seq, _delta in ring.newest_first()] == kept[::-1]
        assert ring.oldest_seq == (kept[0] if kept else len(all_deltas) + 1)
        assert ring.next_seq == len(all_deltas) + 1
        assert len(ring) == len(kept)


def test_since_serves_consecutive_deltas_and_nothing_before_the_oldest() -> None:
    ring = DeltaRing(4, 1 << 20)
    deltas = [_sized(seq, 10) for seq in range(1, 11)]
    ring.extend(deltas[:6])
    ring.extend(deltas[6:])  # 1..6 fell out: 7..10 remain, the list wrapped
    assert ring.oldest_seq == 7
    assert ring.since(8, 2) == deltas[7:9]
    assert ring.since(7, 100) == deltas[6:], "past the newest: what there is"
    assert ring.since(6, 2) == [], "before the oldest: nothing (the caller answers gone)"
    assert ring.since(11, 5) == [], "after the newest: nothing yet"


def test_a_dropped_delta_is_released_at_once() -> None:
    ring = DeltaRing(4, 25)
    ring.extend([_sized(1, 10), _sized(2, 10)])
    ring.extend([_sized(3, 10)])  # over 25 bytes: the first falls out
    assert ring._slots[0] is None, "its slot no longer holds its bytes"
    assert [seq for seq, _delta in ring] == [2, 3]
