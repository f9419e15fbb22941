"""Checkpoints of a training run published from dc1, followed by an inference node in dc2.

A "trainer" node in datacenter dc1 writes a safetensors checkpoint at every step (tensors made with
numpy: frozen embeddings, and a fraction of the layers changed per step) and publishes it as a new
version of the artifact `checkpoints/demo` (`node.artifacts.put`). An "inference" node in dc2
follows the tag `latest`: when it moves, it gets the version (only the chunks it lacks cross the
WAN), loads the tensors with numpy and checks them against what the trainer wrote. Per step it
prints the checkpoint's size, the bytes that crossed the WAN and the time until dc2 had it.

Run: .venv/bin/python examples/checkpoints.py
Exit status: 0 when every step arrives whole within its deadline, 1 otherwise.
"""

from __future__ import annotations

import asyncio
import json
import struct
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from crdtsync import Node, NodeConfig, ReplicaConfig
from crdtsync.testing.cluster import free_ports

NAME = "checkpoints/demo"
STEPS = 5
LAYERS = 16
LAYER_SHAPE = (512, 512)  # 1 MiB of float32
EMBEDDING_SHAPE = (8192, 256)  # 8 MiB, frozen
CHANGED_PER_STEP = 0.25
STEP_TIMEOUT_S = 60.0
REPLICATION = ReplicaConfig(heartbeat_interval_ms=300.0, hello_interval_ms=100.0, tick_interval_ms=20.0)


def save_safetensors(path: Path, tensors: dict[str, np.ndarray]) -> None:
    """The safetensors layout: an 8-byte header length, a JSON table of offsets, the data."""
    header: dict[str, object] = {}
    offset = 0
    for name, array in tensors.items():
        header[name] = {
            "dtype": "F32",
            "shape": list(array.shape),
            "data_offsets": [offset, offset + array.nbytes],
        }
        offset += array.nbytes
    table = json.dumps(header).encode()
    table += b" " * (-len(table) % 8)
    with open(path, "wb") as file:
        file.write(struct.pack("<Q", len(table)) + table)
        for array in tensors.values():
            file.write(np.ascontiguousarray(array, dtype=np.float32).tobytes())


def load_safetensors(path: Path) -> dict[str, np.ndarray]:
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    start = 8 + length
    return {
        name: np.frombuffer(data[start + a : start + b], dtype=np.float32).reshape(entry["shape"])
        for name, entry in header.items()
        for a, b in [entry["data_offsets"]]
    }


async def latest(node: Node) -> str | None:
    if not node.has_doc("artifacts/" + NAME):
        return None
    versions = await node.artifacts.ls(NAME)
    return next((v.version for v in versions if "latest" in v.tags), None)


async def wait_for_latest(node: Node, version: str) -> None:
    deadline = time.monotonic() + STEP_TIMEOUT_S
    while await latest(node) != version:
        if time.monotonic() > deadline:
            raise TimeoutError(f"dc2 did not see version {version} within {STEP_TIMEOUT_S:.0f} s")
        await asyncio.sleep(0.02)


async def main() -> int:
    rng = np.random.default_rng(7)
    tensors = {"embeddings": rng.standard_normal(EMBEDDING_SHAPE, dtype=np.float32)}
    tensors |= {
        f"layers.{i}.weight": rng.standard_normal(LAYER_SHAPE, dtype=np.float32) for i in range(LAYERS)
    }
    with tempfile.TemporaryDirectory(prefix="crdtsync-checkpoints-") as work:
        root = Path(work)
        ports = free_ports(2)
        listens = [f"tcp://127.0.0.1:{port}" for port in ports]
        configs = [
            NodeConfig(
                node_id=node_id,
                dc=dc,
                listen=listen,
                peers=[peer for peer in listens if peer != listen],
                data_dir=str(root / node_id),
                replication=REPLICATION,
            )
            for node_id, dc, listen in zip(("trainer", "inference"), ("dc1", "dc2"), listens, strict=True)
        ]
        async with Node(configs[0]) as trainer, Node(configs[1]) as inference:
            print(f"{'step':>4} {'size':>9} {'new':>9} {'crossed WAN':>12} {'dc2 had it after':>17}")
            for step in range(STEPS):
                if step:  # a fraction of the layers trains; the embeddings stay frozen
                    for i in rng.choice(LAYERS, int(LAYERS * CHANGED_PER_STEP), replace=False):
                        tensors[f"layers.{i}.weight"] += 0.01 * rng.standard_normal(
                            LAYER_SHAPE, dtype=np.float32
                        )
                path = root / f"step-{step}.safetensors"
                save_safetensors(path, tensors)
                started = time.monotonic()
                put = await trainer.artifacts.put(NAME, str(path))
                crossed = inference.artifacts.transfer.counters.bytes_fetched_wan
                await wait_for_latest(inference, put.version)
                out = root / f"loaded-{step}.safetensors"
                await inference.artifacts.get(NAME, str(out), version=put.version)
                seconds = time.monotonic() - started
                crossed = inference.artifacts.transfer.counters.bytes_fetched_wan - crossed
                loaded = load_safetensors(out)
                if any(not np.array_equal(loaded[name], array) for name, array in tensors.items()):
                    print(
                        f"step {step}: the checkpoint loaded in dc2 differs from the one written",
                        file=sys.stderr,
                    )
                    return 1
                print(
                    f"{step:>4} {put.bytes_total / 2**20:>7.1f} MiB {put.bytes_new / 2**20:>5.1f} MiB "
                    f"{crossed / 2**20:>8.1f} MiB {seconds * 1000:>14.0f} ms"
                )
                out.unlink()
    print(f"dc2 loaded {STEPS} checkpoints; after the first, only the changed layers crossed the WAN")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
