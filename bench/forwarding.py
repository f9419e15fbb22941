"""What a forwarded HTTP request costs two `crdtsync serve` daemons, against the same request sent
to the holder (docs/placement.md#forwarding).

    python -m bench.forwarding [--requests N] [--rounds R] [--json OUT]

Two daemons in one datacenter with `[[placement]] rf = 1` (SQLite, durability `fsync`): `b` holds
the docs, `a` holds none of them. One client (keep-alive, one request at a time) writes single keys
(`PUT /v1/docs/{doc}/keys/k`) and reads them back (`GET`), over 100 docs `b` holds: sent to `b`
(`direct`), or to `a`, which forwards them to `b` (`forwarded`). Each line gives the CPU of both
daemons (all threads, from /proc) per request and the client's p50 and p99 latency. The two modes
alternate `--rounds` times; the figures are the medians of the rounds (the machine is shared: the
load average is printed).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench._common import JSON, fmt, machine_info, percentile, print_table, proc_cpu_s, write_json
from crdtsync.testing.cluster import LocalCluster

DOCS = 100
START_TIMEOUT_S = 30.0
LINKED_TIMEOUT_S = 30.0
MODES = ("direct", "forwarded")
ROUTES = ("put", "get")


def _cpu_s(pid: int | None) -> float:
    cpu = proc_cpu_s(pid) if pid is not None else None
    if cpu is None:
        raise SystemExit(f"daemon {pid} exited during the run")
    return cpu


def _docs_held_by(client: httpx.Client, url: str, holder: str) -> list[str]:
    docs: list[str] = []
    for index in range(DOCS * 20):
        doc_id = f"fwd/d{index}"
        replicas = client.get(f"{url}/v1/placement/{doc_id}").json()["replicas"]
        if [r["node_id"] for dc in replicas.values() for r in dc] == [holder]:
            docs.append(doc_id)
        if len(docs) == DOCS:
            return docs
    raise SystemExit(f"fewer than {DOCS} docs held by {holder}")


def _run(client: httpx.Client, url: str, route: str, docs: list[str], requests: int, holder: str) -> JSON:
    latencies_ms: list[float] = []
    for index in range(requests):
        path = f"{url}/v1/docs/{docs[index % len(docs)]}/keys/k"
        started = time.perf_counter()
        answer = client.put(path, json=index) if route == "put" else client.get(path)
        latencies_ms.append((time.perf_counter() - started) * 1000.0)
        if answer.status_code != 200 or answer.headers.get("X-Served-By") != holder:
            raise SystemExit(f"{route} {path}: {answer.status_code} by {answer.headers.get('X-Served-By')}")
    latencies_ms.sort()
    return {"p50_ms": percentile(latencies_ms, 50), "p99_ms": percentile(latencies_ms, 99)}


def measure(requests: int, rounds: int) -> JSON:
    with tempfile.TemporaryDirectory(prefix="bench-forwarding-") as root:
        cluster = LocalCluster.named(
            root, ["a", "b"], note="bench.forwarding", config_toml="[[placement]]\nrf = 1\n"
        )
        with cluster, httpx.Client(timeout=10.0) as client:
            cluster.start_all()
            cluster.wait_healthy(timeout_s=START_TIMEOUT_S)
            a, b = cluster["a"], cluster["b"]
            docs = _docs_held_by(client, a.url, "b")
            deadline = time.monotonic() + LINKED_TIMEOUT_S
            while client.put(f"{a.url}/v1/docs/{docs[0]}/keys/k", json=0).headers.get("X-Served-By") != "b":
                if time.monotonic() > deadline:
                    raise SystemExit("a does not forward to b")
                time.sleep(0.1)
            for doc_id in docs:  # every doc exists before the first measured read
                client.put(f"{b.url}/v1/docs/{doc_id}/keys/k", json=0)
            runs: dict[str, list[JSON]] = {f"{route}/{mode}": [] for route in ROUTES for mode in MODES}
            for _ in range(rounds):
                for route in ROUTES:
                    for mode in MODES:
                        before = _cpu_s(a.pid), _cpu_s(b.pid)
                        result = _run(
                            client, (a if mode == "forwarded" else b).url, route, docs, requests, "b"
                        )
                        asker_s, holder_s = _cpu_s(a.pid) - before[0], _cpu_s(b.pid) - before[1]
                        result["asker_us"] = asker_s / requests * 1e6
                        result["holder_us"] = holder_s / requests * 1e6
                        result["total_us"] = (asker_s + holder_s) / requests * 1e6
                        runs[f"{route}/{mode}"].append(result)
    medians = {
        name: {key: statistics.median(r[key] for r in results) for key in results[0]}
        for name, results in runs.items()
    }
    return {"requests": requests, "rounds": rounds, "runs": runs, "medians": medians}


def report(summary: JSON) -> None:
    medians: JSON = summary["medians"]
    rows = [
        [
            name,
            fmt(m["asker_us"]),
            fmt(m["holder_us"]),
            fmt(m["total_us"]),
            fmt(m["p50_ms"], 2),
            fmt(m["p99_ms"], 2),
        ]
        for name, m in medians.items()
    ]
    print_table(
        f"{summary['requests']} requests a run, medians of {summary['rounds']} rounds",
        ["route/mode", "a µs/req", "b µs/req", "both µs/req", "p50 ms", "p99 ms"],
        rows,
    )
    for route in ROUTES:
        forwarded, direct = medians[f"{route}/forwarded"]["total_us"], medians[f"{route}/direct"]["total_us"]
        print(
            f"{route}: CPU of both daemons per forwarded request / per request sent to the holder: {forwarded / direct:.2f}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.forwarding", description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=2000, help="requests of each run (default 2,000)")
    parser.add_argument("--rounds", type=int, default=3, help="alternated rounds of every run (default 3)")
    parser.add_argument("--json", type=Path, help="also write every figure as JSON to OUT")
    args = parser.parse_args(argv)
    info = machine_info()
    print(f"load average {os.getloadavg()}; {info.get('python', sys.version.split()[0])}")
    summary = measure(args.requests, args.rounds)
    report(summary)
    print(f"load average {os.getloadavg()}")
    if args.json is not None:
        write_json(args.json, {"machine": info, **summary})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
