"""The rate table's guarantees for any stream of events (crdtsync.core.load): bounded size, every rate
bracketed by what it reports (attributed counts below, plus the error above), and every doc hotter
than the table's share in the table, with decay."""

from __future__ import annotations

import heapq
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crdtsync.core.load import RateTable

HALF_LIFE_MS = 1000.0
events = st.lists(
    st.tuples(
        st.integers(0, 30),  # doc
        st.sampled_from(["read", "write", "fetch"]),
        st.sampled_from(["dc1", "dc2"]),
        st.floats(0.0, 500.0),  # ms since the previous event
    ),
    max_size=300,
)


@settings(max_examples=300, deadline=None)
@given(events, st.integers(1, 12))
def test_the_table_is_bounded_brackets_every_rate_and_keeps_every_heavy_doc(
    stream: list[tuple[int, str, str, float]], docs_max: int
) -> None:
    table = RateTable(HALF_LIFE_MS, docs_max)
    exact: dict[str, list[float]] = {}
    now_ms = 0.0
    for doc, kind, dc, gap_ms in stream:
        now_ms += gap_ms
        doc_id = f"d{doc}"
        table.count(kind, doc_id, dc, now_ms)  # type: ignore[arg-type]
        exact.setdefault(doc_id, []).append(now_ms)
        assert len(table) <= docs_max
    unit = math.log(2) / (HALF_LIFE_MS / 1000.0)
    true_rate = {
        doc_id: unit * sum(2.0 ** (-(now_ms - at_ms) / HALF_LIFE_MS) for at_ms in times)
        for doc_id, times in exact.items()
    }
    all_rates = sum(true_rate.values())
    for doc_id, rate in true_rate.items():
        rates = table.rates(doc_id, now_ms)
        if rates is None:
            assert rate <= all_rates / docs_max * (1 + 1e-9), "a heavy doc left the table"
            continue
        attributed = rates.total - rates.unattributed
        assert attributed <= rate * (1 + 1e-9) + 1e-12
        assert rate <= rates.total * (1 + 1e-9) + 1e-12


@given(st.floats(1000.0, 1e7), st.floats(0.0, 1e10))
def test_one_event_decays_to_half_in_one_half_life(half_life_ms: float, at_ms: float) -> None:
    table = RateTable(half_life_ms, 4)
    table.count("read", "d", "dc1", at_ms)
    first = table.rates("d", at_ms)
    later = table.rates("d", at_ms + half_life_ms)
    assert first is not None and later is not None
    assert later.reads["dc1"] == pytest.approx(first.reads["dc1"] / 2, rel=1e-6)


def _scanned(table: RateTable, count: int) -> list[str]:
    """What `hottest` answered before it kept a top: a scan of the whole table."""
    entries = table._entries
    return heapq.nlargest(count, entries, key=lambda doc_id: (entries[doc_id].total, doc_id))


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 40),  # doc
            st.sampled_from([1.0, 2.0, 0.5, 3.0]),  # amount: equal totals (ties) are common
            st.sampled_from([0.0, 0.0, 10.0, 700.0, 40_000.0]),  # ms since the previous event
        ),
        max_size=400,
    ),
    st.integers(1, 16),
    st.integers(1, 10),
    st.integers(1, 20),
)
def test_the_kept_top_answers_what_a_scan_of_the_table_does(
    stream: list[tuple[int, float, float]], docs_max: int, top_max: int, count: int
) -> None:
    # Gaps of 40 s are 40 half-lives: the table rescales to a new landmark (and chooses its top
    # again) several times in a stream; small tables evict, and a doc may leave the top and return.
    table = RateTable(HALF_LIFE_MS, docs_max, top_max)
    now_ms = 0.0
    for doc, amount, gap_ms in stream:
        now_ms += gap_ms
        table.count("read", f"d{doc}", "dc1", now_ms, amount)
        wanted = min(count, top_max)
        assert [rates.doc_id for rates in table.hottest(wanted, now_ms)] == _scanned(table, wanted)
        assert len(table._top_heap) <= 4 * top_max + 1
    assert [rates.doc_id for rates in table.hottest(count, now_ms)] == _scanned(table, count)
