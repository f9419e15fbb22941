"""Placement: balance, weighted shares, movement on join and leave, capacity, and the cost of a lookup.

    python -m bench.placement [--json OUT] [--docs N]

Everything here is the pure placement function (`crdtsync.core.placement`), measured against its
ideal in the same run: a perfectly even spread (max/mean 1.0), a weighted node's exact share, the
minimal number of partition replicas a join or leave must move, and rf/n of the docs per node. The
replication side of placement (only replicas receive; rebalancing; hints) is not measured here yet.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from bench._common import JSON, Target, fmt, machine_info, print_table, write_json
from crdtsync.core.placement import (
    PLACEMENT_VERSION,
    Candidate,
    PlacementPolicy,
    PlacementRule,
    imbalance,
    partition_counts,
    replicas,
    replicas_in_dc,
)

POLICY = PlacementPolicy((PlacementRule(3),))  # 4096 partitions, rf 3 in every datacenter


def _nodes(count: int, dcs: int) -> list[Candidate]:
    return [Candidate(f"n{i:02d}", f"dc{i % dcs}") for i in range(count)]


def balance() -> JSON:
    candidates = _nodes(12, 3)
    counts = partition_counts(POLICY, candidates, POLICY.default)
    return {"nodes": 12, "dcs": 3, "rf": 3, "max_over_mean": imbalance(counts), "per_node": counts}


def weighted() -> JSON:
    weights = [1.0, 1.0, 2.0, 4.0]
    candidates = [Candidate(f"w{i}", "dc0", weight=w) for i, w in enumerate(weights)]
    out: JSON = {}
    for rf in (1, 2):
        rule = PlacementRule(rf)
        counts = partition_counts(POLICY, candidates, rule)
        total = sum(counts.values())
        errors = []
        for candidate, weight in zip(candidates, weights, strict=True):
            # A node can hold a partition once: with rf > 1 the ideal share is capped at 1/rf of the total.
            ideal = min(weight / sum(weights), 1.0 / rf)
            errors.append(abs(counts[candidate.node_id] / total - ideal) / ideal)
        out[f"rf{rf}"] = {
            "shares": {k: v / total for k, v in counts.items()},
            "max_relative_error": max(errors),
        }
    return out


def _moved(before: Sequence[Candidate], after: Sequence[Candidate], rf: int) -> int:
    """Partition replicas that change hands between the two member sets (one datacenter)."""
    moved = 0
    for partition in range(POLICY.partitions):
        old = set(replicas_in_dc(partition, before, rf))
        new = set(replicas_in_dc(partition, after, rf))
        moved += len(new - old)
    return moved


def movement() -> JSON:
    rf = 3
    dc0 = [c for c in _nodes(12, 3) if c.dc == "dc0"]  # 4 nodes
    joined = [*dc0, Candidate("n12", "dc0")]
    ideal_join = POLICY.partitions * rf / len(joined)  # the newcomer's fair share, nothing else moves
    join = _moved(dc0, joined, rf)
    left = dc0[1:]
    ideal_leave = POLICY.partitions * rf / len(dc0)  # the leaver's share, taken over by the others
    leave = _moved(dc0, left, rf)
    return {
        "join_moved": join,
        "join_ideal": ideal_join,
        "join_ratio": join / ideal_join,
        "leave_moved": leave,
        "leave_ideal": ideal_leave,
        "leave_ratio": leave / ideal_leave,
    }


def capacity(docs: int) -> JSON:
    candidates = _nodes(6, 2)
    policy = PlacementPolicy((PlacementRule(2),))
    held = {c.node_id: 0 for c in candidates}
    for index in range(docs):
        for ids in replicas(f"docs/{index}", policy, candidates).values():
            for node_id in ids:
                held[node_id] += 1
    ideal = docs * 2 / 3
    return {
        "docs": docs,
        "per_node": held,
        "ideal": ideal,
        "max_relative_error": max(abs(h - ideal) / ideal for h in held.values()),
    }


def lookup_cost() -> JSON:
    candidates = _nodes(12, 3)
    samples = []
    for repeat in range(5):
        started = time.perf_counter()
        for index in range(2000):
            replicas(f"lookup/{repeat}/{index}", POLICY, candidates)
        samples.append((time.perf_counter() - started) / 2000 * 1e6)
    return {"us_per_doc_placement": statistics.median(samples)}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.placement", description=__doc__.split("\n")[0])
    parser.add_argument("--json", type=Path, help="also write every figure as JSON to OUT", metavar="OUT")
    parser.add_argument(
        "--docs", type=int, default=100_000, help="docs of the capacity part (default 100,000)"
    )
    args = parser.parse_args(argv)
    print("machine")
    for key, value in machine_info().items():
        print(f"  {key:<18} {value}")
    print(f"\nplacement version {PLACEMENT_VERSION}, {POLICY.partitions} partitions")
    results: JSON = {
        "balance": balance(),
        "weighted": weighted(),
        "movement": movement(),
        "capacity": capacity(args.docs),
        "lookup": lookup_cost(),
    }
    b, w, m, c = results["balance"], results["weighted"], results["movement"], results["capacity"]
    targets = [
        Target("balance", "max/mean partitions per node, 12 nodes in 3 DCs, rf 3", b["max_over_mean"], 1.05),
        Target(
            "weighted_rf1",
            "weighted share, worst relative error, rf 1 (weights 1,1,2,4)",
            w["rf1"]["max_relative_error"],
            0.05,
        ),
        Target(
            "weighted_rf2",
            "weighted share, worst relative error, rf 2 (weights 1,1,2,4)",
            w["rf2"]["max_relative_error"],
            0.05,
        ),
        Target("join", "partition replicas moved by a join / ideal", m["join_ratio"], 1.1),
        Target("leave", "partition replicas moved by a leave / ideal", m["leave_ratio"], 1.1),
        Target(
            "capacity",
            f"docs per node vs docs x 2/3, rf 2 on 6 nodes ({c['docs']:,} docs), worst error",
            c["max_relative_error"],
            0.10,
        ),
        Target(
            "lookup",
            "one doc's placement, 12 nodes (us)",
            results["lookup"]["us_per_doc_placement"],
            None,
            "us",
        ),
    ]
    rows = [[t.text, fmt(t.value, 3), fmt(t.limit, 2), t.verdict] for t in targets]
    print_table(
        "Targets (from the issue), each against its ideal", ["figure", "value", "target", "verdict"], rows
    )
    print(
        f"\n  join: {m['join_moved']:,} moved, ideal {m['join_ideal']:,.0f}; leave: {m['leave_moved']:,}, ideal {m['leave_ideal']:,.0f}"
    )
    print(
        f"  weighted shares rf 1: {', '.join(f'{k}={v:.3f}' for k, v in w['rf1']['shares'].items())} (ideal 0.125, 0.125, 0.25, 0.5)"
    )
    if args.json is not None:
        write_json(
            args.json,
            {"machine": machine_info(), "results": results, "targets": [t.as_json() for t in targets]},
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
