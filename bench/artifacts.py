"""Artifacts (docs/artifacts.md): chunking speed, put and remote get on real daemons, what a changed
version and an unchanged re-put move, the WAN bytes of a new version in 3 datacenters, peak RSS.

    python -m bench.artifacts [--size-mb 1024] [--quick] [--json OUT]

1. Chunking and hashing (FastCDC + BLAKE3, in this process) against reading the same file (from the
   page cache) in 1 MiB blocks: goal >= 1 GB/s per core and chunking not the bottleneck.
2. Two daemons (dc1, dc2; links uncapped): PUT of a safetensors-like file on dc1, then GET on dc2
   (which fetches every chunk) to a file, against a plain TCP copy of the same bytes over 127.0.0.1.
   Peak RSS of both daemons during the GET (goal <= 200 MB).
3. A version with 10% of its tensors changed: chunk bytes dc2 fetches against the changed bytes
   (goal <= 1.15x); the same file put again: bytes new against its size (goal <= 1%).
4. 3 datacenters x 2 nodes: WAN bytes for a new version (10% of tensors changed) against
   (DCs - 1) x its new chunk bytes (goal within 5%): the four remote nodes getting it at once, then
   one node per DC first and the other after it (the first version is fetched that way too).

Figures move between runs on a shared machine; each comparison is measured in the same run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import socket
import struct
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import psutil

from bench._common import JSON, fmt, machine_info, print_table, ratio, write_json
from crdtsync.artifacts.chunking import chunk_file
from crdtsync.testing.cluster import LocalCluster, LocalDaemon, log_tail

TENSOR_BYTES = 4 * 1024 * 1024
READ_BYTES = 1 << 20
UNCAPPED = {"dc_link_bytes_per_s": 1e12, "wan_link_bytes_per_s": 1e12, "prefetch_interval_s": 0}
"""Links uncapped, and no prefetch: the gets measured here are what fetches."""
TIMEOUT_S = 600.0


# ------------------------------------------------------------------------------------------ files


def tensor_names(size_bytes: int) -> list[str]:
    return [f"layers.{i}.weight" for i in range(max(1, size_bytes // TENSOR_BYTES))]


def write_model(path: Path, names: list[str], seeds: dict[str, int]) -> int:
    """A safetensors-like file of `names` (4 MiB each), each tensor's bytes from its seed; streamed."""
    header: dict[str, Any] = {}
    for index, name in enumerate(names):
        header[name] = {
            "dtype": "F32",
            "shape": [TENSOR_BYTES // 4],
            "data_offsets": [index * TENSOR_BYTES, (index + 1) * TENSOR_BYTES],
        }
    table = json.dumps(header).encode()
    table += b" " * (-len(table) % 8)
    with open(path, "wb") as file:
        file.write(struct.pack("<Q", len(table)) + table)
        for name in names:
            file.write(random.Random(seeds[name]).randbytes(TENSOR_BYTES))
    return path.stat().st_size


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while block := file.read(READ_BYTES):
            digest.update(block)
    return digest.hexdigest()


# ------------------------------------------------------------------------------------------ 1. chunking


def chunking(path: Path) -> JSON:
    size = path.stat().st_size
    sha256_of(path)  # into the page cache
    started = time.perf_counter()
    with open(path, "rb", buffering=0) as file:
        buffer = bytearray(READ_BYTES)
        while file.readinto(buffer):
            pass
    read_s = time.perf_counter() - started
    started = time.perf_counter()
    cpu = time.process_time()
    chunks = sum(1 for _ in chunk_file(str(path)))
    chunk_s, chunk_cpu_s = time.perf_counter() - started, time.process_time() - cpu
    return {
        "bytes": size,
        "chunks": chunks,
        "read_mb_per_s": size / read_s / 1e6,
        "chunk_hash_mb_per_s": size / chunk_s / 1e6,
        "chunk_hash_mb_per_cpu_s": size / chunk_cpu_s / 1e6,
        "mean_chunk_bytes": size / chunks,
    }


# ------------------------------------------------------------------------------------------ TCP floor


def tcp_copy(path: Path, out: Path) -> float:
    """MB/s of a plain TCP copy of the file over 127.0.0.1 (sendfile into a socket, written to `out`)."""
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def receive() -> None:
        connection, _ = server.accept()
        with connection, open(out, "wb") as target:
            while block := connection.recv(READ_BYTES):
                target.write(block)

    receiver = threading.Thread(target=receive)
    receiver.start()
    started = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port)) as client, open(path, "rb") as source:
        client.sendfile(source)
    receiver.join()
    server.close()
    return path.stat().st_size / (time.perf_counter() - started) / 1e6


# ------------------------------------------------------------------------------------------ daemons


def put(daemon: LocalDaemon, name: str, path: Path) -> tuple[JSON, float]:
    def body() -> Iterator[bytes]:
        with open(path, "rb") as file:
            while block := file.read(READ_BYTES):
                yield block

    started = time.perf_counter()
    response = httpx.put(
        f"{daemon.url}/v1/artifacts/{name}",
        content=body(),
        headers={"Content-Length": str(path.stat().st_size)},
        timeout=TIMEOUT_S,
    )
    seconds = time.perf_counter() - started
    if response.status_code != 201:
        raise RuntimeError(f"PUT on {daemon.name}: {response.status_code} {response.text}")
    answer: JSON = response.json()
    return answer, seconds


def get(daemon: LocalDaemon, name: str, version: str, out: Path) -> float:
    started = time.perf_counter()
    with (
        httpx.stream(
            "GET", f"{daemon.url}/v1/artifacts/{name}/versions/{version}", timeout=TIMEOUT_S
        ) as response,
        open(out, "wb") as target,
    ):
        if response.status_code != 200:
            tail = log_tail(daemon.log_path, 40)
            raise RuntimeError(f"GET on {daemon.name}: {response.status_code} {response.read()!r}\n{tail}")
        for block in response.iter_bytes(READ_BYTES):
            target.write(block)
    return time.perf_counter() - started


def counters(daemon: LocalDaemon) -> dict[str, int]:
    body: dict[str, int] = httpx.get(f"{daemon.url}/v1/artifacts", timeout=30).json()["transfer"]
    return body


def wait_listed(daemon: LocalDaemon, name: str, version: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        response = httpx.get(f"{daemon.url}/v1/artifacts/{name}", timeout=30)
        if response.status_code == 200 and any(v["version"] == version for v in response.json()["versions"]):
            return
        time.sleep(0.05)
    raise RuntimeError(f"{version} never reached {daemon.name}")


class PeakRss:
    """The peak RSS of some processes, sampled every 20 ms while in use."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.processes = {name: psutil.Process(pid) for name, pid in pids.items()}
        self.peak_mb = dict.fromkeys(pids, 0.0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample)

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            for name, process in self.processes.items():
                self.peak_mb[name] = max(self.peak_mb[name], process.memory_info().rss / 2**20)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


# ------------------------------------------------------------------------------------------ 2 and 3


def two_datacenters(root: Path, size_bytes: int) -> JSON:
    names = tensor_names(size_bytes)
    seeds = {name: index for index, name in enumerate(names)}
    v1, v2 = root / "v1.safetensors", root / "v2.safetensors"
    total = write_model(v1, names, seeds)
    changed = names[:: max(1, round(len(names) / max(1, len(names) // 10)))][: max(1, len(names) // 10)]
    write_model(v2, names, {**seeds, **{name: 10_000 + seeds[name] for name in changed}})
    result: JSON = {"bytes": total, "tcp_copy_mb_per_s": tcp_copy(v1, root / "tcp-copy")}
    os.unlink(root / "tcp-copy")
    cluster = LocalCluster.named(
        str(root / "two"), ["a", "b"], dcs={"a": "dc1", "b": "dc2"}, settings={"artifacts": UNCAPPED}
    )
    with cluster:
        cluster.start_all()
        cluster.wait_healthy()
        a, b = cluster["a"], cluster["b"]
        first, put_s = put(a, "bench/model", v1)
        wait_listed(b, "bench/model", first["version"])
        with PeakRss({"sender": a.pid or 0, "receiver": b.pid or 0}) as rss:
            get_s = get(b, "bench/model", first["version"], root / "got1")
        assert sha256_of(root / "got1") == sha256_of(v1), "the remote get differs"
        os.unlink(root / "got1")
        result |= {"put_mb_per_s": total / put_s / 1e6, "get_mb_per_s": total / get_s / 1e6}
        result |= {"rss_sender_mb": rss.peak_mb["sender"], "rss_receiver_mb": rss.peak_mb["receiver"]}
        before = counters(b)["bytes_fetched"]
        second, _ = put(a, "bench/model", v2)
        wait_listed(b, "bench/model", second["version"])
        get(b, "bench/model", second["version"], root / "got2")
        assert sha256_of(root / "got2") == sha256_of(v2), "the second remote get differs"
        os.unlink(root / "got2")
        again, _ = put(a, "bench/model", v2)
        result |= {
            "changed_bytes": len(changed) * TENSOR_BYTES,
            "changed_fetched_bytes": counters(b)["bytes_fetched"] - before,
            "reput_bytes_new": again["bytes_new"],
        }
    os.unlink(v2)
    return result


# ------------------------------------------------------------------------------------------ 4


def three_datacenters(root: Path, size_bytes: int) -> JSON:
    names = tensor_names(size_bytes)
    seeds = {name: index for index, name in enumerate(names)}
    nodes = {f"{dc}-{n}": dc for dc in ("dc1", "dc2", "dc3") for n in ("a", "b")}
    cluster = LocalCluster.named(
        str(root / "three"), list(nodes), dcs=nodes, settings={"artifacts": UNCAPPED}
    )
    result: JSON = {"bytes": size_bytes}
    with cluster:
        cluster.start_all()
        cluster.wait_healthy()
        remote = [name for name in nodes if not name.startswith("dc1")]
        plan = (
            ("first", [remote[::2], remote[1::2]]),
            ("at_once", [remote]),
            ("dc_first", [remote[::2], remote[1::2]]),
        )
        for step, (label, waves) in enumerate(plan):
            path = root / f"three-{step}.safetensors"
            changed = names[step * 3 :: 10] if step else []
            write_model(path, names, {**seeds, **{name: 100 * step + seeds[name] for name in changed}})
            answer, _ = put(cluster["dc1-a"], "bench/three", path)
            before = sum(counters(cluster[name])["bytes_fetched_wan"] for name in remote)
            for wave in waves:
                for name in wave:
                    wait_listed(cluster[name], "bench/three", answer["version"])
                with ThreadPoolExecutor(len(wave)) as pool:
                    list(
                        pool.map(
                            lambda n, v=answer["version"]: get(
                                cluster[n], "bench/three", v, root / f"got-{n}"
                            ),
                            wave,
                        )
                    )
            wan = sum(counters(cluster[name])["bytes_fetched_wan"] for name in remote) - before
            result[label] = {
                "new_bytes": answer["bytes_new"],
                "wan_bytes": wan,
                "ideal_wan_bytes": 2 * answer["bytes_new"],
            }
            for name in remote:
                os.unlink(root / f"got-{name}")
            os.unlink(path)
    return result


# ------------------------------------------------------------------------------------------ report


def report(chunked: JSON, two: JSON, three: JSON) -> None:
    mb = 1e6
    print_table(
        "Chunking and hashing (one process, file in the page cache)",
        ["", "MB/s", "vs read", "target"],
        [
            ["read, 1 MiB blocks", fmt(chunked["read_mb_per_s"]), "1.00", ""],
            [
                "FastCDC + BLAKE3",
                fmt(chunked["chunk_hash_mb_per_s"]),
                fmt(ratio(chunked["chunk_hash_mb_per_s"], chunked["read_mb_per_s"]), 2),
                ">= 1,000 per core",
            ],
        ],
        [
            f"{chunked['chunks']:,} chunks, mean {chunked['mean_chunk_bytes'] / 1024:.1f} KiB; {chunked['chunk_hash_mb_per_cpu_s']:,.0f} MB per CPU second"
        ],
    )
    print_table(
        f"Put and remote get, 2 daemons in 2 DCs, {two['bytes'] / mb:,.0f} MB",
        ["", "MB/s", "vs TCP copy"],
        [
            ["TCP copy over 127.0.0.1", fmt(two["tcp_copy_mb_per_s"]), "1.00"],
            [
                "PUT on dc1 (HTTP, spooled, chunked, fsynced)",
                fmt(two["put_mb_per_s"]),
                fmt(ratio(two["put_mb_per_s"], two["tcp_copy_mb_per_s"]), 2),
            ],
            [
                "GET on dc2 (fetches every chunk)",
                fmt(two["get_mb_per_s"]),
                fmt(ratio(two["get_mb_per_s"], two["tcp_copy_mb_per_s"]), 2),
            ],
        ],
        [
            f"peak RSS during the GET: sender {two['rss_sender_mb']:.0f} MB, receiver {two['rss_receiver_mb']:.0f} MB (target <= 200)"
        ],
    )
    three_rows = [
        [
            label,
            fmt(three[label]["new_bytes"] / mb, 1),
            fmt(three[label]["wan_bytes"] / mb, 1),
            fmt(three[label]["ideal_wan_bytes"] / mb, 1),
            fmt(ratio(three[label]["wan_bytes"], three[label]["ideal_wan_bytes"]), 2),
        ]
        for label in ("first", "at_once", "dc_first")
    ]
    print_table(
        f"3 DCs x 2 nodes, versions of a {three['bytes'] / mb:,.0f} MB file (then 10% changed)",
        ["gets", "new MB", "WAN MB", "ideal MB", "ratio"],
        three_rows,
    )
    changed_ratio = ratio(two["changed_fetched_bytes"], two["changed_bytes"]) or 0.0
    reput_ratio = two["reput_bytes_new"] / two["bytes"]
    targets: list[tuple[str, bool]] = [
        (
            f"chunking >= 1 GB/s per core ({chunked['chunk_hash_mb_per_cpu_s']:,.0f} MB/s)",
            chunked["chunk_hash_mb_per_cpu_s"] >= 1000,
        ),
        (f"10% changed: fetched <= 1.15x changed bytes ({changed_ratio:.3f}x)", changed_ratio <= 1.15),
        (f"unchanged re-put: new <= 1% of size ({reput_ratio:.4%})", reput_ratio <= 0.01),
        (
            f"peak RSS <= 200 MB (sender {two['rss_sender_mb']:.0f}, receiver {two['rss_receiver_mb']:.0f})",
            max(two["rss_sender_mb"], two["rss_receiver_mb"]) <= 200,
        ),
    ]
    for label in ("at_once", "dc_first"):
        value = ratio(three[label]["wan_bytes"], three[label]["ideal_wan_bytes"]) or 0.0
        targets.append(
            (
                f"WAN bytes = (DCs-1) x new bytes within 5%, gets {label} ({value:.2f}x)",
                abs(value - 1) <= 0.05,
            )
        )
    print("\nTargets")
    for text, passed in targets:
        print(f"  {'PASS' if passed else 'MISS'}  {text}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--size-mb", type=int, default=1024, help="size of the file of parts 1-3 (default 1024)"
    )
    parser.add_argument("--quick", action="store_true", help="256 MB, and 128 MB for the 3 datacenters")
    parser.add_argument("--json", type=Path, help="write every figure as JSON here")
    args = parser.parse_args(argv)
    size = (256 if args.quick else args.size_mb) * 1_000_000
    machine = machine_info()
    print("machine: " + ", ".join(f"{key} {value}" for key, value in machine.items()))
    with tempfile.TemporaryDirectory(prefix="bench-artifacts-") as work:
        root = Path(work)
        sample = root / "sample.safetensors"
        write_model(sample, tensor_names(size), {name: i for i, name in enumerate(tensor_names(size))})
        chunked = chunking(sample)
        os.unlink(sample)
        two = two_datacenters(root, size)
        three = three_datacenters(root, size // 2 if args.quick else size // 4)
    report(chunked, two, three)
    if args.json is not None:
        write_json(args.json, {"machine": machine, "chunking": chunked, "two_dcs": two, "three_dcs": three})


if __name__ == "__main__":
    main()
