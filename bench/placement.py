"""Placement: balance, weighted shares, movement on join and leave, capacity, and the cost of a lookup.

    python -m bench.placement [--json OUT] [--docs N]

Everything here is the pure placement function (`crdtsync.core.placement`), measured against its
ideal in the same run: a perfectly even spread (max/mean 1.0), a weighted node's exact share, the
minimal number of partition replicas a join or leave must move, and rf/n of the docs per node. The
replication side of placement (cost per write against full replication, capacity on real nodes, a
join's rebalance) is measured by `bench.placement_cost`.
"""

from __future__ import annotations

import argparse
import math
import random
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
from crdtsync.core.placement_weights import corrected_weights, corrections, target_shares

POLICY = PlacementPolicy((PlacementRule(3),))  # 4096 partitions, rf 3 in every datacenter


def _nodes(count: int, dcs: int) -> list[Candidate]:
    return [Candidate(f"n{i:02d}", f"dc{i % dcs}") for i in range(count)]


def balance() -> JSON:
    candidates = _nodes(12, 3)
    counts = partition_counts(POLICY, candidates, POLICY.default)
    return {"nodes": 12, "dcs": 3, "rf": 3, "max_over_mean": imbalance(counts), "per_node": counts}


WEIGHTS_ISSUE = [1.0, 1.0, 2.0, 4.0]
"""The issue's case; with rf 2 the weight-4 node's share is every partition, with rf 3 the weight-2
node's too (saturated), and the rest share what is left."""
WEIGHTS_SPREAD = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
"""No node saturated with rf 2 or 3: every weight is corrected."""


def _shares(weights: Sequence[float], rf: int) -> JSON:
    candidates = [Candidate(f"w{i}", "dc0", weight=w) for i, w in enumerate(weights)]
    counts = {c.node_id: 0 for c in candidates}
    for partition in range(POLICY.partitions):
        for node_id in replicas_in_dc(partition, candidates, rf):
            counts[node_id] += 1
    targets = target_shares(weights, rf)  # per partition: rf * w / W, at most 1 (water-filled)
    errors = [
        abs(counts[c.node_id] / POLICY.partitions - t) / t for c, t in zip(candidates, targets, strict=True)
    ]
    smallest = min(targets)
    return {
        "weights": list(weights),
        "rf": rf,
        "held": counts,
        "target": {c.node_id: t * POLICY.partitions for c, t in zip(candidates, targets, strict=True)},
        "max_relative_error": max(errors),
        # one standard deviation of the smallest share's count, relative: the noise of the draws
        "noise_1sd_smallest": math.sqrt((1 - smallest) / (smallest * POLICY.partitions))
        if smallest < 1
        else 0.0,
    }


def weighted() -> JSON:
    out: JSON = {}
    for rf in (1, 2, 3):
        out[f"rf{rf}"] = _shares(WEIGHTS_ISSUE, rf)
    for rf in (2, 3):
        out[f"spread_rf{rf}"] = _shares(WEIGHTS_SPREAD, rf)
    return out


def correction_cost() -> JSON:
    """CPU seconds to compute the corrected weights of one datacenter's members (once per member
    view and replica count, then cached)."""
    rng = random.Random(20261206)
    cases = {
        "256 members, weights 1/2/4": [1.0] * 200 + [2.0] * 40 + [4.0] * 16,
        "256 members, 256 distinct weights": [round(rng.uniform(0.5, 4.0), 3) + i / 1e6 for i in range(256)],
        "12 members, 12 distinct weights": [float(w) for w in range(1, 13)],
    }
    out: JSON = {}
    for name, weights in cases.items():
        for rf in (2, 3):
            corrections.cache_clear()
            started = time.process_time()  # CPU of this process: the figure holds on a busy machine
            corrected_weights(weights, rf)
            out[f"{name}, rf {rf}"] = time.process_time() - started
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
    # Weighted: a node of weight 3 joins the six of weights 1..6, and the weight-4 node leaves them.
    spread = [Candidate(f"w{i}", "dc0", weight=w) for i, w in enumerate(WEIGHTS_SPREAD)]
    spread_joined = [*spread, Candidate("w6", "dc0", weight=3.0)]
    spread_left = [c for c in spread if c.node_id != "w3"]
    # Milder: eight nodes of weights 1 and 2; one of weight 2 joins, one of weight 1 leaves.
    mixed = [Candidate(f"m{i}", "dc0", weight=1.0 + i % 2) for i in range(8)]
    mixed_joined = [*mixed, Candidate("m8", "dc0", weight=2.0)]
    return {
        "join_moved": join,
        "join_ideal": ideal_join,
        "join_ratio": join / ideal_join,
        "leave_moved": leave,
        "leave_ideal": ideal_leave,
        "leave_ratio": leave / ideal_leave,
        **_weighted_move("weighted_join", spread, spread_joined, rf),
        **_weighted_move("weighted_leave", spread, spread_left, rf),
        **_weighted_move("mixed_join", mixed, mixed_joined, rf),
        **_weighted_move("mixed_leave", mixed, mixed[1:], rf),
    }


def _weighted_move(name: str, before: Sequence[Candidate], after: Sequence[Candidate], rf: int) -> JSON:
    """Replicas moved against the ideal: what the nodes whose share grows must gain."""
    old = dict(zip([c.node_id for c in before], target_shares([c.weight for c in before], rf), strict=True))
    new = dict(zip([c.node_id for c in after], target_shares([c.weight for c in after], rf), strict=True))
    ideal = POLICY.partitions * sum(max(0.0, share - old.get(node, 0.0)) for node, share in new.items())
    moved = _moved(before, after, rf)
    return {f"{name}_moved": moved, f"{name}_ideal": ideal, f"{name}_ratio": moved / ideal}


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
    out: JSON = {}
    weighted = [Candidate(c.node_id, c.dc, weight=1.0 + i % 4) for i, c in enumerate(_nodes(12, 3))]
    for name, candidates in (("us_per_doc_placement", _nodes(12, 3)), ("us_per_doc_weighted", weighted)):
        replicas("warm-up", POLICY, candidates)  # the corrections, once per member view
        samples = []
        for repeat in range(5):
            started = time.perf_counter()
            for index in range(2000):
                replicas(f"lookup/{repeat}/{index}", POLICY, candidates)
            samples.append((time.perf_counter() - started) / 2000 * 1e6)
        out[name] = statistics.median(samples)
    return out


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
        "correction_cost": correction_cost(),
    }
    b, w, m, c = results["balance"], results["weighted"], results["movement"], results["capacity"]
    targets = [
        Target("balance", "max/mean partitions per node, 12 nodes in 3 DCs, rf 3", b["max_over_mean"], 1.05),
        *(
            Target(
                f"weighted_{key}",
                f"weighted share, worst relative error, rf {w[key]['rf']} (weights "
                + ",".join(f"{x:g}" for x in w[key]["weights"])
                + ")",
                w[key]["max_relative_error"],
                0.05,
            )
            for key in ("rf1", "rf2", "rf3", "spread_rf2", "spread_rf3")
        ),
        Target("join", "partition replicas moved by a join / ideal", m["join_ratio"], 1.1),
        Target("leave", "partition replicas moved by a leave / ideal", m["leave_ratio"], 1.1),
        Target(
            "weighted_join",
            "moved by a join of weight 3 to weights 1..6, rf 3 / ideal",
            m["weighted_join_ratio"],
            1.1,
        ),
        Target(
            "weighted_leave",
            "moved by a leave of the weight-4 node, rf 3 / ideal",
            m["weighted_leave_ratio"],
            1.1,
        ),
        Target(
            "mixed_join",
            "moved by a join of weight 2 to 8 nodes of weights 1 and 2, rf 3 / ideal",
            m["mixed_join_ratio"],
            1.1,
        ),
        Target(
            "mixed_leave",
            "moved by a leave of a weight-1 node of those 8, rf 3 / ideal",
            m["mixed_leave_ratio"],
            1.1,
        ),
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
        Target(
            "lookup_weighted",
            "one doc's placement, 12 nodes of weights 1..4, rf 3 (us)",
            results["lookup"]["us_per_doc_weighted"],
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
    for key, figures in w.items():
        held = ", ".join(
            f"{node}={count:,}/{figures['target'][node]:,.0f}" for node, count in figures["held"].items()
        )
        print(
            f"  weighted {key}: held/target {held}; 1 sd of the smallest {figures['noise_1sd_smallest']:.1%}"
        )
    print(
        f"  weighted join: {m['weighted_join_moved']:,} moved, ideal {m['weighted_join_ideal']:,.0f}; "
        f"leave: {m['weighted_leave_moved']:,}, ideal {m['weighted_leave_ideal']:,.0f}; "
        f"weights 1 and 2: join {m['mixed_join_moved']:,}, ideal {m['mixed_join_ideal']:,.0f}, "
        f"leave {m['mixed_leave_moved']:,}, ideal {m['mixed_leave_ideal']:,.0f}"
    )
    for name, seconds in results["correction_cost"].items():
        print(f"  corrections, {name}: {seconds * 1000:,.0f} ms CPU")
    if args.json is not None:
        write_json(
            args.json,
            {"machine": machine_info(), "results": results, "targets": [t.as_json() for t in targets]},
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
