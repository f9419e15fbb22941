"""Child process of the artifact crash test: a Node with a data_dir that puts versions in a loop.

    python artifact_writer.py --data-dir DIR --listen ADDR --seed N --work DIR

Version i is a safetensors-like file made from (seed, i): a few of its tensors change from one
version to the next, with collection (grace 0) run between puts so that chunks come and go. Prints
`ack <version id> <sha256>` once `put` returned (its chunks and manifest durable), and `deleting
<version id>` before it deletes one. Runs until killed, or --seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import random
import sys
import time
from pathlib import Path

from crdtsync import Node, NodeConfig
from crdtsync.testing.safetensors import write_safetensors


def tensors_of(seed: int, index: int) -> dict[str, bytes]:
    """Version `index`: tensor t is rewritten at versions where (index + t) % 4 == 0."""
    tensors = {}
    for tensor in range(8):
        generation = (index + tensor) // 4
        tensors[f"t{tensor}"] = random.Random(f"{seed}-{tensor}-{generation}").randbytes(60_000)
    return tensors


async def _run(args: argparse.Namespace) -> None:
    config = NodeConfig(node_id="writer", listen=args.listen, data_dir=args.data_dir)
    async with Node(config) as node:
        print("ready", flush=True)
        deadline = time.monotonic() + args.seconds
        index = 0
        while time.monotonic() < deadline:
            path = Path(args.work) / f"v{index}"
            write_safetensors(str(path), tensors_of(args.seed, index))
            result = await node.artifacts.put("crash/model", str(path))
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            print(f"ack {result.version} {digest}", flush=True)
            path.unlink()
            if index % 3 == 2:
                doomed = await node.artifacts.resolve("crash/model", str(result.seq - 2))
                print(f"deleting {doomed.version}", flush=True)  # before: a kill may land inside
                await node.artifacts.delete("crash/model", doomed.version)
                await node.artifacts.collect(grace_s=0)
            index += 1


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--listen", required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--work", required=True)
    parser.add_argument("--seconds", type=float, default=60.0)
    with contextlib.suppress(BrokenPipeError):
        asyncio.run(_run(parser.parse_args(argv)))


if __name__ == "__main__":
    main(sys.argv[1:])
