"""The decaying rate estimator of adaptive replication (crdtsync.core.load): it matches its half-life,
splits rates by kind and datacenter, stays bounded, and keeps hot docs through churn."""

from __future__ import annotations

import math
import random

import pytest

from crdtsync.core.load import LANDMARK_SPAN_HALF_LIVES, DecayingRate, RateTable

HALF_LIFE_MS = 10_000.0


def _steady(table: RateTable, doc_id: str, per_second: float, from_ms: float, to_ms: float) -> None:
    """Events at `per_second`, evenly spaced (10 ms apart at most), counted with their amount."""
    step_ms = 10.0
    now_ms = from_ms
    while now_ms < to_ms:
        table.count("read", doc_id, "dc1", now_ms, per_second * step_ms / 1000.0)
        now_ms += step_ms


def test_a_steady_rate_reads_back_and_halves_every_half_life_after_it_stops() -> None:
    table = RateTable(HALF_LIFE_MS, 8)
    _steady(table, "d", 50.0, 0.0, 20 * HALF_LIFE_MS)
    end_ms = 20 * HALF_LIFE_MS
    rates = table.rates("d", end_ms)
    assert rates is not None
    assert rates.reads["dc1"] == pytest.approx(50.0, rel=0.01)
    for half_lives in (1, 2, 3):
        later = table.rates("d", end_ms + half_lives * HALF_LIFE_MS)
        assert later is not None
        assert later.reads["dc1"] == pytest.approx(rates.reads["dc1"] / 2**half_lives, rel=1e-9)


def test_a_new_rate_reaches_half_its_value_after_one_half_life() -> None:
    table = RateTable(HALF_LIFE_MS, 8)
    _steady(table, "d", 20.0, 0.0, HALF_LIFE_MS)
    rates = table.rates("d", HALF_LIFE_MS)
    assert rates is not None
    assert rates.reads["dc1"] == pytest.approx(10.0, rel=0.01)


def test_decaying_rate_matches_the_half_life() -> None:
    rate = DecayingRate(HALF_LIFE_MS)
    for step in range(20 * 1000):
        rate.add(0.5 * 0.01, step * 10.0)  # half a core busy, reported every 10 ms
    busy = rate.per_second(200_000.0)
    assert busy == pytest.approx(0.5, rel=0.01)
    assert rate.per_second(200_000.0 + HALF_LIFE_MS) == pytest.approx(busy / 2, rel=1e-9)
    with pytest.raises(ValueError, match="half_life_ms"):
        DecayingRate(0.0)


def test_rates_are_kept_by_kind_and_datacenter_of_origin() -> None:
    table = RateTable(HALF_LIFE_MS, 8)
    table.count("read", "d", "east", 0.0, 3)
    table.count("write", "d", "west", 0.0, 2)
    table.count("fetch", "d", "west", 0.0, 1)
    rates = table.rates("d", 0.0)
    assert rates is not None
    unit = math.log(2) / (HALF_LIFE_MS / 1000.0)
    assert rates.reads == {"east": pytest.approx(3 * unit)}
    assert rates.writes == {"west": pytest.approx(2 * unit)}
    assert rates.fetches == {"west": pytest.approx(1 * unit)}
    assert rates.unattributed == 0.0
    assert rates.total == pytest.approx(6 * unit)
    assert table.rates("other", 0.0) is None


def test_a_full_table_evicts_the_coldest_and_the_newcomer_inherits_its_count_as_error() -> None:
    table = RateTable(HALF_LIFE_MS, 3)
    for doc_id, count in (("a", 5), ("b", 1), ("c", 3)):
        table.count("read", doc_id, "dc1", 0.0, count)
    table.count("read", "new", "dc1", 0.0)
    assert "b" not in table and len(table) == 3 and table.evicted == 1
    rates = table.rates("new", 0.0)
    assert rates is not None
    unit = math.log(2) / (HALF_LIFE_MS / 1000.0)
    assert rates.reads["dc1"] == pytest.approx(unit)
    assert rates.unattributed == pytest.approx(unit)  # b's count
    assert [r.doc_id for r in table.hottest(2, 0.0)] == ["a", "c"]


def test_counts_stay_exact_across_many_landmark_rescales() -> None:
    table = RateTable(HALF_LIFE_MS, 4)
    end_ms = 5 * LANDMARK_SPAN_HALF_LIVES * HALF_LIFE_MS
    _steady(table, "d", 8.0, end_ms - 20 * HALF_LIFE_MS, end_ms)
    rates = table.rates("d", end_ms)
    assert rates is not None
    assert rates.reads["dc1"] == pytest.approx(8.0, rel=0.01)
    assert math.isfinite(rates.total)


def test_hot_docs_survive_a_churn_of_cold_ones_and_memory_stays_bounded() -> None:
    seed = random.randrange(1 << 32)
    print(f"seed {seed}")
    rng = random.Random(seed)
    docs_max = 64
    table = RateTable(HALF_LIFE_MS, docs_max)
    hot = [f"hot-{i}" for i in range(4)]
    for step in range(50_000):
        now_ms = step * 2.0
        # Each hot doc takes 5% of the events; the rest go to 20,000 cold docs (Zipf-free churn).
        if rng.random() < 0.2:
            table.count("read", rng.choice(hot), "dc1", now_ms)
        else:
            table.count("read", f"cold-{rng.randrange(20_000)}", "dc2", now_ms)
        assert len(table) <= docs_max
        assert len(table._heap) == len(table)
    assert all(doc_id in table for doc_id in hot), f"seed {seed}"
    top = {rates.doc_id for rates in table.hottest(4, 100_000.0)}
    assert top == set(hot), f"seed {seed}"
