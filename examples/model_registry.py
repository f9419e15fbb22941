"""Three crdtsync nodes in one process replicate a small model registry.

Each node writes to the same doc concurrently: different models, and one model written by two nodes
at once. The script waits (polling, with a deadline) until all three nodes hold equal JSON, then
prints the registry and a summary of each node's status.

Run: .venv/bin/python examples/model_registry.py
Exit status: 0 when the nodes converge within 20 s, 1 otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from typing import Any

from pycrdt import Map

from crdtsync import Node, NodeConfig, NodeStatus
from crdtsync.testing.cluster import free_ports

CONVERGE_TIMEOUT_S = 20.0
POLL_INTERVAL_S = 0.05
DOC_ID = "model-registry"


def registry_json(node_doc: Map[Any]) -> str:
    return json.dumps(node_doc.to_py(), sort_keys=True)


def summary(status: NodeStatus) -> str:
    peers = ", ".join(f"{peer.node_id or peer.address}={peer.state}" for peer in status.peers)
    applied = status.counters.deltas_applied + status.counters.sync_updates_applied
    return (
        f"{status.node_id}: docs={status.docs} published={status.published_updates} applied={applied} "
        f"pending={status.pending_updates} ae_rounds={status.counters.ae_rounds_completed} "
        f"peers[{peers}]"
    )


async def main() -> int:
    names = ("a", "b", "c")
    addresses = {name: f"tcp://127.0.0.1:{port}" for name, port in zip(names, free_ports(3), strict=True)}
    configs = [
        NodeConfig(node_id=name, listen=address, peers=[a for n, a in addresses.items() if n != name])
        for name, address in addresses.items()
    ]
    async with contextlib.AsyncExitStack() as stack:
        nodes = [await stack.enter_async_context(Node(config)) for config in configs]
        a, b, c = nodes
        registries = [(await node.open(DOC_ID)).get("data", type=Map) for node in nodes]
        reg_a, reg_b, reg_c = registries

        # Concurrent writes on different nodes, made before the nodes have even met: whatever the
        # publish/subscribe stream misses is repaired by the anti-entropy round that follows each hello.
        reg_a["llama-3-70b"] = {"stage": "canary", "shards": 8}
        reg_b["mistral-7b"] = {"stage": "production", "shards": 1}
        reg_c["embed-small"] = {"stage": "staging", "shards": 2}
        # Two nodes write the same key at once: exactly one value wins, the same on every node.
        reg_b["llama-3-70b"] = {"stage": "production", "shards": 8}
        reg_c["llama-3-70b"] = {"stage": "rollback", "shards": 4}
        for node in nodes:
            await node.flush()

        expected_keys = {"llama-3-70b", "mistral-7b", "embed-small"}
        started = time.monotonic()
        deadline = started + CONVERGE_TIMEOUT_S
        while True:
            views = [registry_json(registry) for registry in registries]
            if len(set(views)) == 1 and set(reg_a.keys()) == expected_keys:
                break
            if time.monotonic() >= deadline:
                print(f"error: the nodes did not converge within {CONVERGE_TIMEOUT_S:.0f} s", file=sys.stderr)
                for node, view in zip(nodes, views, strict=True):
                    print(f"  {node.config.node_id}: {view}", file=sys.stderr)
                return 1
            await asyncio.sleep(POLL_INTERVAL_S)
        elapsed_ms = (time.monotonic() - started) * 1000

        print(f"converged in {elapsed_ms:.0f} ms; every node holds:")
        print(json.dumps(reg_a.to_py(), indent=2, sort_keys=True))
        # A later write on one node reaches the others through the live publish/subscribe stream.
        reg_a["mistral-7b"] = {"stage": "retired", "shards": 0}
        deadline = time.monotonic() + CONVERGE_TIMEOUT_S
        while (
            reg_c.get("mistral-7b") != reg_a["mistral-7b"] or reg_b.get("mistral-7b") != reg_a["mistral-7b"]
        ):
            if time.monotonic() >= deadline:
                print("error: a later write did not reach every node", file=sys.stderr)
                return 1
            await asyncio.sleep(POLL_INTERVAL_S)
        print(f"after a.retire(mistral-7b): c sees {reg_c['mistral-7b']}")
        for node in (a, b, c):
            print(summary(node.status()))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
