"""Cost of CurveZMQ on the replication links: the same burst with plaintext and with Curve.

    python -m bench.curve [--writes N] [--runs R]

Two nodes in one process on 127.0.0.1; a writer makes N Map sets, one transaction each, yielding to
the loop every 100; the figure is the time until the other node holds the final value, and the CPU
of the process over that window. Median of R runs per mode, modes interleaved.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

from pycrdt import Map

from bench._common import machine_info
from crdtsync import CurveConfig, Node, NodeConfig, ReplicaConfig
from crdtsync.testing.cluster import free_ports
from crdtsync.transport.curve import write_key_file

FAST = ReplicaConfig(hello_interval_ms=50.0, tick_interval_ms=20.0)
DEADLINE_S = 60.0


async def burst(writes: int, key_dir: Path | None) -> tuple[float, float]:
    """(seconds, CPU seconds) for `writes` updates to reach the second node; Curve links when
    `key_dir` (an empty directory for this run's keys) is given."""
    a_port, b_port = free_ports(2)
    a_address, b_address = f"tcp://127.0.0.1:{a_port}", f"tcp://127.0.0.1:{b_port}"
    curve_a = curve_b = None
    if key_dir is not None:
        a_public = write_key_file(key_dir / "a.key", "a")
        b_public = write_key_file(key_dir / "b.key", "b")
        curve_a = CurveConfig(key_file=str(key_dir / "a.key"), peer_keys={b_address: b_public})
        curve_b = CurveConfig(key_file=str(key_dir / "b.key"), peer_keys={a_address: a_public})
    a_config = NodeConfig(node_id="a", listen=a_address, peers=[b_address], replication=FAST, curve=curve_a)
    b_config = NodeConfig(node_id="b", listen=b_address, replication=FAST, curve=curve_b)
    async with Node(a_config) as a, Node(b_config) as b:
        started = time.monotonic()
        while not any(peer.state == "alive" for peer in b.status().peers):
            if time.monotonic() - started > DEADLINE_S:
                raise RuntimeError("the nodes did not connect")
            await asyncio.sleep(0.01)
        doc = await a.open("bench")
        remote = await b.open("bench")
        data, remote_data = doc.get("data", type=Map), remote.get("data", type=Map)
        wall, cpu = time.monotonic(), time.process_time()
        for index in range(writes):
            data[f"k{index % 1000}"] = index
            if index % 100 == 99:
                await asyncio.sleep(0)
        last = f"k{(writes - 1) % 1000}"
        while remote_data.get(last) != writes - 1:
            if time.monotonic() - wall > DEADLINE_S:
                raise RuntimeError("the burst did not arrive")
            await asyncio.sleep(0.001)
        return time.monotonic() - wall, time.process_time() - cpu


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.curve", description=__doc__.split("\n\n")[0])
    parser.add_argument("--writes", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args(argv)
    for key, value in machine_info().items():
        print(f"  {key:<18} {value}")
    results: dict[bool, list[tuple[float, float]]] = {False: [], True: []}
    with tempfile.TemporaryDirectory() as scratch:
        for run in range(args.runs):
            results[False].append(asyncio.run(burst(args.writes, None)))
            key_dir = Path(scratch) / f"run-{run}"
            key_dir.mkdir()
            results[True].append(asyncio.run(burst(args.writes, key_dir)))
    print(f"\n{args.writes} writes, 2 nodes in one process, median of {args.runs} runs")
    print(f"{'links':<10} {'updates/s':>10} {'CPU us/update':>14}")
    medians: dict[bool, tuple[float, float]] = {}
    for curve, runs in results.items():
        seconds = statistics.median(run[0] for run in runs)
        cpu = statistics.median(run[1] for run in runs)
        medians[curve] = (seconds, cpu)
        print(
            f"{'curve' if curve else 'plaintext':<10} {args.writes / seconds:>10,.0f} {cpu / args.writes * 1e6:>14.1f}"
        )
    ratio = medians[False][0] / medians[True][0]
    print(
        f"\nthroughput with Curve / plaintext: {ratio:.3f}; CPU per update ratio {medians[True][1] / medians[False][1]:.3f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
