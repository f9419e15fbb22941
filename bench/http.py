"""The HTTP write path of one `crdtsync serve` daemon with `durability = "fsync"`.

    python -m bench.http [--quick] [--duration-s S] [--json OUT]

One daemon (SQLite store in a temporary dir, fsync at every group commit) and a load generator in
another process (`bench._http_load`: keep-alive HTTP/1.1 clients on raw asyncio streams). For 32 and
64 clients, back to back on every connection:

- `GET /health`, the floor: what the HTTP server itself costs per request, measured in the same run;
- `PUT /v1/docs/{doc}/keys/{key}` of single keys (1,000 docs, 100 keys each), each answered once the
  write is fsynced;
- `POST /v1/batch` with 100 keys per request, answered once at fsync: over 10 docs (10 keys each:
  `batch`) and over 100 docs (a key each, the costliest shape: `batch-wide`).

Each line gives requests (keys) per second, p50/p99 latency, the daemon's CPU per request and per key
(from /proc, all its threads) and the generator's CPU per request (it must stay below the daemon's,
or it is the bottleneck). With `wrk` installed (`apt-get install wrk`: a load generator in C), the
health and put lines are run again with it (`health/wrk`, `put/wrk`: 64 connections on one
thread), to show whether the Python generator limits the rate. Targets from issue 17: >= 8,000 PUT/s with 64 clients, >= 50,000 keys/s
through the batch route. The machine has 2 cores: the daemon, its store thread and the generator
share them, so figures move between runs when anything else runs.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import httpx

from bench._common import (
    JSON,
    REPO_ROOT,
    Target,
    fmt,
    machine_info,
    percentile,
    print_table,
    write_json,
)
from crdtsync.testing.cluster import LocalCluster

BATCH_KEYS = 100
BATCH_DOCS = {"batch": 10, "batch-wide": 100}
"""Docs per batch request of each batch route."""
START_TIMEOUT_S = 30.0
LOAD_SLACK_S = 60.0
PUT_GOAL_PER_S = 8000.0
BATCH_GOAL_KEYS_PER_S = 50_000.0


_CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def daemon_cpu_s(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of the daemon, all threads, from /proc (system time is mostly the
    store's fsync and the sockets' syscalls)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        raise SystemExit("the daemon exited during the run") from None
    fields = stat[stat.rfind(")") + 2 :].split()
    return int(fields[11]) / _CLOCK_TICKS_PER_S, int(fields[12]) / _CLOCK_TICKS_PER_S


def store_commits(url: str) -> int:
    counters: dict[str, int] = httpx.get(f"{url}/v1/status", timeout=10.0).json()["counters"]
    return counters["store_commits"]


def run_load(url: str, port: int, pid: int, route: str, clients: int, duration_s: float) -> JSON:
    """One load run against the daemon `pid` on `port`: the generator's figures, the daemon's CPU and
    its store commits."""
    args = [
        sys.executable,
        "-m",
        "bench._http_load",
        f"--port={port}",
        f"--clients={clients}",
        f"--duration-s={duration_s}",
        f"--route={'batch' if route in BATCH_DOCS else route}",
        f"--keys-per-request={BATCH_KEYS}",
        f"--docs-per-request={BATCH_DOCS.get(route, 1)}",
    ]
    with subprocess.Popen(
        args, cwd=REPO_ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    ) as loader:
        assert loader.stdin is not None and loader.stdout is not None
        ready = json.loads(loader.stdout.readline() or "{}")
        if ready.get("ev") != "ready":
            raise SystemExit(f"the load generator did not start: {ready}")
        commits_before = store_commits(url)
        user_before_s, system_before_s = daemon_cpu_s(pid)
        loader.stdin.write("go\n")
        loader.stdin.flush()
        try:
            out, _ = loader.communicate(timeout=duration_s + LOAD_SLACK_S)
        except subprocess.TimeoutExpired:
            loader.kill()
            raise SystemExit(f"the load generator ran past {duration_s + LOAD_SLACK_S} s") from None
        user_after_s, system_after_s = daemon_cpu_s(pid)
        commits = store_commits(url) - commits_before
    done: JSON = json.loads(out.strip().splitlines()[-1])
    requests = max(done["requests"], 1)
    user_s, system_s = user_after_s - user_before_s, system_after_s - system_before_s
    latencies = done.pop("latencies_ms")
    return {
        "route": route,
        "clients": clients,
        **done,
        "requests_per_s": done["requests"] / done["elapsed_s"],
        "keys_per_s": done["keys"] / done["elapsed_s"],
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
        "daemon_cpu_us_per_request": (user_s + system_s) / requests * 1e6,
        "daemon_system_us_per_request": system_s / requests * 1e6,
        "daemon_cpu_us_per_key": (user_s + system_s) / max(done["keys"], 1) * 1e6,
        "daemon_cores": (user_s + system_s) / done["elapsed_s"],
        "store_commits": commits,
        "requests_per_commit": done["requests"] / commits if commits else None,
        "loader_cpu_us_per_request": done["loader_cpu_s"] / requests * 1e6,
    }


WRK_PUT_SCRIPT = """
counter = 0
request = function()
  local body = '{"n": ' .. counter .. '}'
  local path = "/v1/docs/bench/d" .. (counter % 1000) .. "/keys/k" .. (math.floor(counter / 1000) % 100)
  counter = counter + 1
  return wrk.format("PUT", path, {["Content-Length"] = #body}, body)
end
"""
"""The same requests as `bench._http_load --route put`: a key of 1,000 docs in turn."""


def _wrk_ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def run_wrk(url: str, pid: int, route: str, clients: int, duration_s: float, root: str) -> JSON:
    """One run of `wrk` (health or put) against the daemon `pid`: the figures `run_load` gives."""
    script = os.path.join(root, "put.lua")
    with open(script, "w", encoding="utf-8") as file:
        file.write(WRK_PUT_SCRIPT)
    command = ["wrk", "-t1", f"-c{clients}", f"-d{max(1, round(duration_s))}s", "--latency"]
    command += ["-s", script, f"{url}/"] if route == "put" else [f"{url}/health"]
    commits_before = store_commits(url)
    user_before_s, system_before_s = daemon_cpu_s(pid)
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(command, capture_output=True, text=True, timeout=duration_s + LOAD_SLACK_S).stdout
    children_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    user_after_s, system_after_s = daemon_cpu_s(pid)
    commits = store_commits(url) - commits_before
    found = re.search(r"(\d+) requests in ([\d.]+)(m?s)", out)
    if found is None:
        raise SystemExit(f"wrk printed no result: {out[-500:]}")
    requests = int(found.group(1))
    elapsed_s = float(found.group(2)) / (1000.0 if found.group(3) == "ms" else 1.0)
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    percentiles = dict(re.findall(r"^\s+(50|99)%\s+(\S+)$", out, re.M))
    loader_s = (children_after.ru_utime + children_after.ru_stime) - (
        children_before.ru_utime + children_before.ru_stime
    )
    user_s, system_s = user_after_s - user_before_s, system_after_s - system_before_s
    return {
        "route": f"{route}/wrk",
        "clients": clients,
        "requests": requests,
        "keys": requests,
        "errors": int(non_2xx.group(1)) if non_2xx else 0,
        "first_error": None,
        "elapsed_s": elapsed_s,
        "loader_cpu_s": loader_s,
        "requests_per_s": requests / elapsed_s,
        "keys_per_s": requests / elapsed_s,
        "p50_ms": _wrk_ms(percentiles["50"]),
        "p99_ms": _wrk_ms(percentiles["99"]),
        "daemon_cpu_us_per_request": (user_s + system_s) / max(requests, 1) * 1e6,
        "daemon_system_us_per_request": system_s / max(requests, 1) * 1e6,
        "daemon_cpu_us_per_key": (user_s + system_s) / max(requests, 1) * 1e6,
        "daemon_cores": (user_s + system_s) / elapsed_s,
        "store_commits": commits,
        "requests_per_commit": requests / commits if commits else None,
        "loader_cpu_us_per_request": loader_s / max(requests, 1) * 1e6,
    }


def measure(duration_s: float, routes: list[str]) -> list[JSON]:
    with tempfile.TemporaryDirectory(prefix="bench-http-") as root:
        cluster = LocalCluster.named(root, ["a"], note="bench.http")
        with cluster:
            cluster.start_all()
            cluster.wait_healthy(timeout_s=START_TIMEOUT_S)
            daemon = cluster["a"]
            assert daemon.pid is not None
            status = httpx.get(f"{daemon.url}/v1/status", timeout=10.0).json()
            if status["durability"] != "fsync":
                raise SystemExit(f"the daemon runs with durability {status['durability']}, not fsync")
            wrk = shutil.which("wrk") is not None
            if not wrk:
                print("wrk is not installed: no health/wrk and put/wrk lines (apt-get install wrk)")
            results = []
            for route in routes:
                for clients in (32, 64):
                    result = run_load(daemon.url, daemon.http_port, daemon.pid, route, clients, duration_s)
                    results.append(result)
                    if result["errors"]:
                        print(
                            f"{route} x{clients}: {result['errors']} errors, first: {result['first_error']}"
                        )
                if wrk and route in ("health", "put"):  # next to its route: the docs grow with each run
                    results.append(run_wrk(daemon.url, daemon.pid, route, 64, duration_s, root))
            return results


def report(results: list[JSON]) -> list[Target]:
    rows = [
        [
            f"{r['route']} x{r['clients']}",
            fmt(r["requests_per_s"]),
            fmt(r["keys_per_s"]),
            fmt(r["p50_ms"], 2),
            fmt(r["p99_ms"], 2),
            fmt(r["daemon_cpu_us_per_request"], 1),
            fmt(r["daemon_system_us_per_request"], 1),
            fmt(r["daemon_cpu_us_per_key"], 1),
            fmt(r["daemon_cores"], 2),
            fmt(r["loader_cpu_us_per_request"], 1),
            fmt(r["requests_per_commit"], 1),
            fmt(r["errors"]),
        ]
        for r in results
    ]
    print_table(
        "HTTP API of one daemon, durability fsync (every answer after its write is fsynced)",
        [
            "route x clients",
            "requests/s",
            "keys/s",
            "p50 ms",
            "p99 ms",
            "daemon µs/req",
            "of it sys",
            "µs/key",
            "daemon cores",
            "loader µs/req",
            "req/commit",
            "errors",
        ],
        rows,
        notes=[
            f"batch: {BATCH_KEYS} keys over {BATCH_DOCS['batch']} docs per request; batch-wide: over "
            f"{BATCH_DOCS['batch-wide']} docs; health: the HTTP floor; /wrk: the same requests from wrk"
        ],
    )
    by = {(r["route"], r["clients"]): r for r in results}
    targets = []
    if ("put", 64) in by:
        targets.append(
            Target(
                "put_64_per_s",
                "PUT of single keys, 64 clients, acknowledged at fsync",
                by[("put", 64)]["requests_per_s"],
                PUT_GOAL_PER_S,
                "/s",
                ">=",
            )
        )
    if ("put/wrk", 64) in by:
        targets.append(
            Target(
                "put_wrk_64_per_s",
                "PUT of single keys, 64 connections of wrk (a client in C), acknowledged at fsync",
                by[("put/wrk", 64)]["requests_per_s"],
                PUT_GOAL_PER_S,
                "/s",
                ">=",
            )
        )
    if ("put", 64) in by and ("health", 64) in by:
        floor = by[("health", 64)]["daemon_cpu_us_per_request"]
        targets.append(
            Target(
                "put_cpu_over_health",
                "daemon CPU of a PUT over a GET /health (the HTTP floor)",
                by[("put", 64)]["daemon_cpu_us_per_request"] / floor if floor else None,
                None,
            )
        )
    for route, docs in BATCH_DOCS.items():
        if (route, 64) in by:
            targets.append(
                Target(
                    f"{route.replace('-', '_')}_64_keys_per_s",
                    f"POST /v1/batch of {BATCH_KEYS} keys over {docs} docs, 64 clients",
                    by[(route, 64)]["keys_per_s"],
                    BATCH_GOAL_KEYS_PER_S,
                    "keys/s",
                    ">=",
                )
            )
    print()
    for target in targets:
        print(
            f"{target.verdict:5} {target.text}: {fmt(target.value, 2)} {target.unit} (goal {fmt(target.limit)})"
        )
    return targets


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="3 s per run instead of 10")
    parser.add_argument("--duration-s", type=float, help="seconds per run")
    parser.add_argument(
        "--routes",
        default="health,put,batch,batch-wide",
        help="comma-separated: health, put, batch, batch-wide",
    )
    parser.add_argument("--json", type=Path, help="write the figures to this file")
    args = parser.parse_args(argv)
    duration_s = args.duration_s or (3.0 if args.quick else 10.0)
    machine = machine_info()
    print(" ".join(f"{key}={value}" for key, value in machine.items()))
    results = measure(duration_s, args.routes.split(","))
    targets = report(results)
    summary: dict[str, Any] = {
        "machine": machine,
        "duration_s": duration_s,
        "runs": results,
        "targets": [t.as_json() for t in targets],
    }
    if args.json is not None:
        write_json(args.json, summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
