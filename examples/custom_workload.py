"""Fuzz your own document schema with the crdtsync simulator.

A feature-flag doc: flags toggled concurrently by several nodes (contended keys: any written value
may win, but it must be one somebody wrote, and the same everywhere), rollout percentages, flags
deleted now and then, and an audit log whose entries must never be lost. The simulator runs it on a
5-node cluster with every fault (loss, duplication, reordering, delay, partitions, crashes) over
20 seeds and checks convergence and the `Write` promises after healing.

Run: .venv/bin/python examples/custom_workload.py
Exit status: 0 when every seed passes, 1 otherwise (each failure prints its replay seed).
"""

from __future__ import annotations

import random
import sys
from typing import Any

from pycrdt import Doc, Map

from crdtsync.sim import FAULTS, SimConfig, SimResult, Write, run_campaign

FLAGS = ("kv-cache-offload", "speculative-decoding", "fp8-matmul", "prefix-caching")
ROOTS = ("flags", "rollout", "audit")


class FeatureFlagWorkload:
    """Implements `crdtsync.sim.Workload`: `write` makes one client operation, `materialize` reads a
    doc back as plain data for comparison (a dict of roots, each a dict of keys, as the checker expects)."""

    def write(
        self, doc: Doc[Any], doc_id: str, node_index: int, op_index: int, rng: random.Random
    ) -> list[Write]:
        flags = doc.get("flags", type=Map)
        rollout = doc.get("rollout", type=Map)
        audit = doc.get("audit", type=Map)
        flag = rng.choice(FLAGS)
        roll = rng.random()
        entry_key = f"n{node_index}-{op_index}"
        if roll < 0.10:
            with doc.transaction():
                if flag in flags:
                    del flags[flag]
                audit[entry_key] = f"removed {flag}"
            return [Write(doc_id, "audit", entry_key, f"removed {flag}", shared=False)]
        if roll < 0.60:
            enabled = rng.random() < 0.5
            entry = f"{flag}={enabled}"
            with doc.transaction():  # the flag and its audit entry travel as one delta
                flags[flag] = enabled
                audit[entry_key] = entry
            return [
                Write(doc_id, "flags", flag, enabled, shared=True),
                Write(doc_id, "audit", entry_key, entry, shared=False),
            ]
        percent = rng.choice((0, 1, 5, 25, 50, 100))
        rollout[flag] = percent
        return [Write(doc_id, "rollout", flag, percent, shared=True)]

    def materialize(self, doc: Doc[Any]) -> Any:
        return {root: doc.get(root, type=Map).to_py() for root in ROOTS}


def main() -> int:
    configs = [
        SimConfig(seed=seed, nodes=5, docs=2, ops=300, faults=frozenset(FAULTS)) for seed in range(1, 21)
    ]

    def show(result: SimResult) -> None:
        print(result.verdict(), flush=True)

    results = run_campaign(configs, workload_factory=FeatureFlagWorkload, on_result=show)
    failed = [result for result in results if not result.ok]
    lost = sum(result.writes_lost_to_crashes for result in results)
    print(
        f"{len(results) - len(failed)} of {len(results)} seeds passed; "
        f"{lost} audit entries lost with crashed nodes that had not replicated them yet"
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
