from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from pycrdt import Doc, Map

from crdtsync.sim import SimConfig, Write
from crdtsync.testing import assert_converges, sim_configs


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sim_configs(nodes_max=5, ops_max=150))
def test_any_generated_cluster_converges(config: SimConfig) -> None:
    assert_converges(config)


class _FlagsWorkload:
    """A user schema: feature flags as a Map of booleans, toggled concurrently."""

    def write(self, doc: Doc[Any], doc_id: str, node_index: int, op_index: int, rng: Any) -> list[Write]:
        flags = doc.get("flags", type=Map)
        name = f"flag-{rng.randrange(4)}"
        value = rng.random() < 0.5
        flags[name] = value
        return [Write(doc_id, "flags", name, value, shared=True)]

    def materialize(self, doc: Doc[Any]) -> Any:
        return {"flags": doc.get("flags", type=Map).to_py()}


def test_a_user_workload_runs_through_the_simulator() -> None:
    result = assert_converges(
        SimConfig(seed=21, nodes=4, faults=frozenset({"loss", "reorder"})), _FlagsWorkload()
    )
    print(result.verdict())
    assert result.writes > 0
    assert any(state for state in result.final_state.values())


class _LyingWorkload(_FlagsWorkload):
    """Promises a value it never wrote: the checker must catch it."""

    def write(self, doc: Doc[Any], doc_id: str, node_index: int, op_index: int, rng: Any) -> list[Write]:
        super().write(doc, doc_id, node_index, op_index, rng)
        return [Write(doc_id, "flags", f"ghost-{op_index}", True, shared=False)]


def test_assert_converges_fails_with_the_seed_when_a_promise_is_broken() -> None:
    with pytest.raises(
        AssertionError, match=r"seed 5: FAIL .*lost write.*replay: python -m crdtsync.sim --seed 5"
    ):
        assert_converges(SimConfig(seed=5, nodes=3, ops=20, settle_ms_max=2_000.0), _LyingWorkload())
