"""Six crdtsync nodes in two datacenters, started from one seed, replicate a feature-flag doc.

Nodes east-1..3 are in datacenter "east", west-1..3 in "west". Every node is configured with
east-1 alone as its peer: membership gossip finds the others. Inside each datacenter the nodes
form a full mesh; between them only one relay per datacenter (chosen by rendezvous hashing, no
election) subscribes across the "WAN" and republishes into its datacenter. A non-relay in west
writes a flag; the script waits until every node holds it, prints who relays and how the update
travelled, then shuts the east relay down (a graceful leave) and shows another east node take over.

Run: .venv/bin/python examples/two_datacenters.py
Exit status: 0 when every step completes within its deadline, 1 otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import Callable

from pycrdt import Map

from crdtsync import MembershipConfig, Node, NodeConfig, ReplicaConfig
from crdtsync.testing.cluster import free_ports

STEP_TIMEOUT_S = 30.0
POLL_INTERVAL_S = 0.05
DOC_ID = "flags/features"
# Quicker than the defaults (heartbeats every 1.5 s, suspect after about 4 s of silence), so that the
# failover below shows within a few seconds.
REPLICATION = ReplicaConfig(heartbeat_interval_ms=300.0, hello_interval_ms=100.0, tick_interval_ms=20.0)
MEMBERSHIP = MembershipConfig(
    gossip_interval_ms=300.0, acceptable_pause_ms=300.0, down_after_suspect_ms=500.0
)


async def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + STEP_TIMEOUT_S
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"not within {STEP_TIMEOUT_S:.0f} s: {what}")
        await asyncio.sleep(POLL_INTERVAL_S)


async def flags(nodes: list[Node]) -> list[object]:
    values: list[object] = []
    for node in nodes:
        if not node.has_doc(DOC_ID):
            values.append(None)
            continue
        values.append((await node.open(DOC_ID)).get("data", type=Map).get("new-router"))
        node.release(DOC_ID)
    return values


async def wait_for_flag(nodes: list[Node], value: str, what: str) -> None:
    deadline = time.monotonic() + STEP_TIMEOUT_S
    while await flags(nodes) != [value] * len(nodes):
        if time.monotonic() > deadline:
            raise TimeoutError(f"not within {STEP_TIMEOUT_S:.0f} s: {what}")
        await asyncio.sleep(POLL_INTERVAL_S)


def relay_of(nodes: list[Node], dc: str) -> Node:
    (relay,) = [node for node in nodes if node.config.dc == dc and node.status().relay]
    return relay


async def main() -> int:
    names = [f"{dc}-{index}" for dc in ("east", "west") for index in (1, 2, 3)]
    listen = {
        name: f"tcp://127.0.0.1:{port}" for name, port in zip(names, free_ports(len(names)), strict=True)
    }
    seed = listen["east-1"]
    nodes = [
        Node(
            NodeConfig(
                node_id=name,
                listen=listen[name],
                peers=[] if name == "east-1" else [seed],
                dc=name.split("-")[0],
                replication=REPLICATION,
                membership=MEMBERSHIP,
            )
        )
        for name in names
    ]
    async with contextlib.AsyncExitStack() as stack:
        for node in nodes:
            await stack.enter_async_context(node)
        await wait_for(
            lambda: all(len([m for m in n.status().members if m.state == "alive"]) == 5 for n in nodes),
            "every node knows the five others",
        )
        await wait_for(
            lambda: all(
                len([n for n in nodes if n.config.dc == dc and n.status().relay]) == 1
                for dc in ("east", "west")
            ),
            "one relay per datacenter",
        )
        east_relay, west_relay = relay_of(nodes, "east"), relay_of(nodes, "west")
        print(f"relays: east {east_relay.config.node_id}, west {west_relay.config.node_id}")

        writer = next(n for n in nodes if n.config.dc == "west" and n is not west_relay)
        doc = await writer.open(DOC_ID)
        doc.get("data", type=Map)["new-router"] = "on"
        started = time.monotonic()
        await wait_for_flag(nodes, "on", "the flag reached every node")
        print(
            f"{writer.config.node_id} wrote the flag; all 6 nodes held it after {time.monotonic() - started:.3f} s"
        )
        for node in nodes:
            status = node.status()
            counters = status.counters
            print(
                f"  {status.node_id:7} dc={status.dc:4} relay={status.relay!s:5} "
                f"relayed out={counters.deltas_relayed_out:2} in={counters.deltas_relayed_in:2} "
                f"subscriptions={sorted(p.node_id or '?' for p in status.peers if p.subscribed)}"
            )

        print(f"shutting the east relay {east_relay.config.node_id} down: it announces its leave")
        await east_relay.close()
        survivors = [n for n in nodes if n is not east_relay]
        await wait_for(
            lambda: any(n.config.dc == "east" and n.status().relay for n in survivors),
            "another east node became relay",
        )
        successor = next(n for n in survivors if n.config.dc == "east" and n.status().relay)
        print(f"{successor.config.node_id} is the east relay now")
        doc.get("data", type=Map)["new-router"] = "off"
        await wait_for_flag(survivors, "off", "the change reached the survivors")
        relayed = successor.status().counters.deltas_relayed_out
        print(
            f"the next change from west reached every surviving node; {successor.config.node_id} relayed {relayed}"
        )
    return 0


if __name__ == "__main__":
    try:
        sys.exit(asyncio.run(main()))
    except TimeoutError as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        sys.exit(1)
