"""A seconds-long smoke of `bench.adaptive` (issue 14's benchmark): both runs of a tiny workload
complete with the same reads, and only the adaptive one makes followers, which serve some reads
the static run forwarded. The figures themselves are the benchmark's (bench/README.md), never
asserted here. The seed is printed and replays."""

from __future__ import annotations

import dataclasses
import math
import os
import random

from bench.adaptive import QUICK_REPLICA, Workload, measure, report, summary


def test_the_adaptive_benchmark_runs_both_modes_on_the_same_reads() -> None:
    seed = int(os.environ.get("CRDTSYNC_SIM_SEED", random.randrange(1 << 30)))
    print(f"seed {seed} (replay: CRDTSYNC_SIM_SEED={seed})")
    workload = Workload(
        seed=seed, docs=2_000, nodes_per_dc=2, reads_per_s_per_node=300.0, shift_ms=20_000.0,
        duration_ms=50_000.0, warmup_ms=10_000.0,
        replica=dataclasses.replace(QUICK_REPLICA, load_half_life_ms=3_000.0, follow_cool_down_ms=5_000.0),
    )  # fmt: skip
    tallies = measure(workload)
    static, adaptive = tallies["static"], tallies["adaptive"]
    assert static.reads == adaptive.reads > 0, f"seed {seed}"
    assert static.follower_changes == 0 and static.weight_changes == 0, f"seed {seed}"
    assert adaptive.follower_changes > 0, f"seed {seed}: no follower in the adaptive run"
    assert adaptive.forwarded < static.forwarded, f"seed {seed}: followers served no forwarded read"
    result = summary(workload, tallies)
    report(result)
    figures = result["runs"]["adaptive"]
    assert all(
        math.isfinite(figures[key])
        for key in ("read_p50_ms", "read_p99_ms", "load_max_over_mean", "wan_bytes_per_read")
    ), f"seed {seed}: {figures}"
    assert {target["verdict"] for target in result["targets"]} <= {"PASS", "MISS", "info"}
