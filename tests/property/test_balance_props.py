"""Shedding load (crdtsync.core.balance): the decision moves a node's weight by at most one step, never
while degraded, never in an idle datacenter, never within the cool-down, and in the direction of
the load's distance from the mean; run over any stream of loads, changes are a cool-down apart."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from crdtsync.core.balance import Loads, decide_step

COOL_DOWN_MS = 10_000.0
OVER = 0.1
STEPS_MAX = 5
MIN_CORES = 0.2
loads = st.builds(Loads, st.floats(0.0, 8.0), st.floats(0.0, 8.0), st.booleans())


@given(st.integers(0, STEPS_MAX), loads, st.floats(0.0, 3 * COOL_DOWN_MS))
def test_one_step_at_most_in_the_direction_of_the_load_and_only_when_allowed(
    step: int, seen: Loads, quiet_for_ms: float
) -> None:
    after = decide_step(step, seen, quiet_for_ms, COOL_DOWN_MS, OVER, STEPS_MAX, MIN_CORES)
    assert 0 <= after <= STEPS_MAX and abs(after - step) <= 1
    if seen.degraded or quiet_for_ms < COOL_DOWN_MS or seen.mean_cores < MIN_CORES:
        assert after == step
    elif after > step:
        assert seen.own_cores > seen.mean_cores * (1 + OVER)
    elif after < step:
        assert seen.own_cores < seen.mean_cores * (1 - OVER)
    else:
        above = seen.own_cores > seen.mean_cores * (1 + OVER)
        below = seen.own_cores < seen.mean_cores * (1 - OVER)
        assert (not above or step == STEPS_MAX) and (not below or step == 0)


@given(st.lists(st.tuples(st.floats(100.0, 4_000.0), loads), max_size=120))
def test_changes_are_at_least_a_cool_down_apart(stream: list[tuple[float, Loads]]) -> None:
    step, now_ms, changed_ms = 0, 0.0, 0.0
    changes: list[float] = []
    for gap_ms, seen in stream:
        now_ms += gap_ms
        after = decide_step(step, seen, now_ms - changed_ms, COOL_DOWN_MS, OVER, STEPS_MAX, MIN_CORES)
        if after != step:
            changes.append(now_ms)
            step, changed_ms = after, now_ms
    assert all(later - earlier >= COOL_DOWN_MS for earlier, later in itertools.pairwise(changes))
