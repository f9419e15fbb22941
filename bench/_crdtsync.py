"""crdtsync under the replication benchmark: one ``crdtsync.Node`` per process, public API only.

Usage (started by bench.replication):
    python -m bench._crdtsync writer|reader --node-id N --listen tcp://127.0.0.1:P --peers A,B

The process reports ``ready`` once every configured peer is ``up`` in ``node.status()``. Bytes are the node's
own ``bytes_out`` counter (ZeroMQ frames it sent); without one, ``bytes_published + bytes_sent``.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from pycrdt import Map

from bench._child import emit, run_main, serve
from bench._common import JSON
from crdtsync import Node, NodeConfig

PEERS_UP_TIMEOUT_S = 30.0
PEERS_POLL_INTERVAL_S = 0.01


NodeCommand = Callable[[Node, JSON], Awaitable[None]]
"""Answers one child command for a node (emits the reply event)."""


class NodeAdapter:
    """The :class:`bench._child.Adapter` of a child holding one ``crdtsync.Node``: flushes through the node and
    reports its ``status().counters``. Commands besides ``bench._child.serve``'s go to ``commands`` by name.

    ``derive_bytes_out``: where the node has no ``bytes_out`` counter, report ``bytes_published +
    bytes_sent`` under that name and mark it with ``bench_bytes_out_derived`` (the replication benchmark
    reads ``bytes_out``).
    """

    def __init__(
        self,
        node: Node,
        data: Map[Any],
        commands: Mapping[str, NodeCommand],
        *,
        derive_bytes_out: bool = False,
    ) -> None:
        self._node = node
        self._data = data
        self._commands = commands
        self._derive_bytes_out = derive_bytes_out

    @property
    def data(self) -> Map[Any]:
        return self._data

    async def flush(self) -> None:
        await self._node.flush()

    async def after_write(self) -> None:
        return None  # paced writes are plain pycrdt writes; the node decides when they leave

    def counters(self) -> dict[str, int]:
        counters = {str(k): int(v) for k, v in self._node.status().counters.as_dict().items()}
        if self._derive_bytes_out and "bytes_out" not in counters and "bytes_published" in counters:
            # Older counter names: PUB frames (counted once, not per subscriber) + request frames.
            counters["bytes_out"] = counters["bytes_published"] + counters.get("bytes_sent", 0)
            counters["bench_bytes_out_derived"] = 1
        return counters

    async def command(self, cmd: JSON) -> bool:
        answer = self._commands.get(str(cmd.get("cmd")))
        if answer is None:
            return False
        await answer(self._node, cmd)
        return True


async def _emit_status(node: Node, cmd: JSON) -> None:
    st = node.status()
    emit(
        "status",
        node_id=st.node_id,
        docs=st.docs,
        peers=[
            {"address": p.address, "node_id": p.node_id, "state": p.state, "behind": p.behind_updates}
            for p in st.peers
        ],
        counters=st.counters.as_dict(),
    )


async def wait_peers_up(node: Node, expected: int) -> None:
    give_up_at = time.monotonic() + PEERS_UP_TIMEOUT_S
    while True:
        peers = node.status().peers
        if len(peers) >= expected and all(p.state == "alive" for p in peers):
            return
        if time.monotonic() > give_up_at:
            states = ", ".join(f"{p.address}={p.state}" for p in peers) or "none"
            raise TimeoutError(f"peers not up after {PEERS_UP_TIMEOUT_S:.0f} s: {states}")
        await asyncio.sleep(PEERS_POLL_INTERVAL_S)


async def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench._crdtsync")
    parser.add_argument("role", choices=("writer", "reader"))
    parser.add_argument("--node-id", required=True)
    parser.add_argument("--listen", required=True)
    parser.add_argument("--peers", required=True, help="comma-separated listen addresses of the other nodes")
    args = parser.parse_args()
    peers = [p for p in str(args.peers).split(",") if p]
    config = NodeConfig(node_id=str(args.node_id), listen=str(args.listen), peers=peers)
    async with Node(config) as node:
        doc = await node.open("bench")
        data: Map[Any] = doc.get("data", type=Map)
        await wait_peers_up(node, len(peers))
        emit("ready")
        adapter = NodeAdapter(node, data, {"status": _emit_status}, derive_bytes_out=True)
        await serve(adapter, receiver=args.role == "reader")


if __name__ == "__main__":
    run_main(main)
