"""Child process of the durability tests: a Node with a data_dir that writes under load.

    python durable_writer.py --data-dir DIR --node-id ID --listen ADDR [--peer ADDR ...] --seed N --prefix P

Prints `ready <epoch>` once the node has started, then `ack <doc> <key> <value>` for every write, and
only after `await node.flush()` returned for it: a printed line is a write acknowledged as durable.
Writes go in batches of 1..--batch-max per flush, to several docs: Map sets of new keys and, with
probability --overwrites, overwrites of keys it wrote earlier. Keys are `<prefix>:k<seq>`, values
`<prefix>:<seq>` with `seq` increasing, so a later value of a key always has a larger seq. Runs until
killed, or until --seconds have passed (so an orphan cannot outlive its test for long).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import sys
import time

from pycrdt import Map

from crdtsync import Node, NodeConfig, ReplicaConfig

FAST = ReplicaConfig(
    hello_interval_ms=100.0, tick_interval_ms=20.0, ae_interval_ms=300.0, ae_round_timeout_ms=1000.0
)


def _arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--node-id", required=True)
    parser.add_argument("--listen", required=True)
    parser.add_argument("--peer", action="append", default=[])
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--docs", type=int, default=4)
    parser.add_argument("--batch-max", type=int, default=8)
    parser.add_argument("--overwrites", type=float, default=0.2)
    parser.add_argument("--durability", default="fsync", choices=["fsync", "process", "none"])
    parser.add_argument("--seconds", type=float, default=60.0)
    return parser.parse_args(argv)


async def _run(args: argparse.Namespace) -> None:
    rng = random.Random(args.seed)
    config = NodeConfig(
        node_id=args.node_id,
        listen=args.listen,
        peers=list(args.peer),
        data_dir=args.data_dir,
        durability=args.durability,
        replication=FAST,
    )
    async with Node(config) as node:
        doc_ids = [f"doc-{index}" for index in range(args.docs)]
        maps = {doc_id: (await node.open(doc_id)).get("data", type=Map) for doc_id in doc_ids}
        print(f"ready {node.status().epoch}", flush=True)
        written: list[tuple[str, str]] = []
        seq = 0
        deadline = time.monotonic() + args.seconds
        while time.monotonic() < deadline:
            batch: list[str] = []
            for _ in range(rng.randint(1, args.batch_max)):
                seq += 1
                if written and rng.random() < args.overwrites:
                    doc_id, key = rng.choice(written)
                else:
                    doc_id, key = rng.choice(doc_ids), f"{args.prefix}:k{seq}"
                    written.append((doc_id, key))
                value = f"{args.prefix}:{seq}"
                maps[doc_id][key] = value
                batch.append(f"ack {doc_id} {key} {value}\n")
            await node.flush()
            # Acknowledged only now: the store holds every write of the batch.
            sys.stdout.write("".join(batch))
            sys.stdout.flush()


def main(argv: list[str]) -> None:
    with contextlib.suppress(BrokenPipeError):  # the test went away; nobody reads the acknowledgements
        asyncio.run(_run(_arguments(argv)))


if __name__ == "__main__":
    main(sys.argv[1:])
