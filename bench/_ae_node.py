"""One crdtsync ``Node`` holding ``--docs`` docs, for the idle-cluster part of the anti-entropy benchmark.

Usage (started by bench.antientropy):
    python -m bench._ae_node --node-id N --listen tcp://127.0.0.1:P --peers A,B --docs 1000

The node starts from a store holding the workload's initial update of every doc, so all nodes of
a cluster start in sync, and reports ``ready`` once every configured peer is ``up``. Commands, besides
``stats`` and ``quit`` (``bench._child.serve``): ``root`` -> ``root {root, docs, rounds, rss_kb}``.
"""

from __future__ import annotations

import argparse

from bench import _ae_workload as workload
from bench._child import detached_map, emit, run_main, serve
from bench._common import JSON, proc_status_kb
from bench._crdtsync import NodeAdapter, wait_peers_up
from crdtsync import Node, NodeConfig


async def _emit_root(node: Node, cmd: JSON) -> None:
    status = node.status()
    emit(
        "root",
        root=node.merkle_root().hex(),
        docs=status.docs,
        rounds=status.counters.ae_rounds_completed,
        rss_kb=proc_status_kb("VmRSS"),
    )


async def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench._ae_node")
    parser.add_argument("--node-id", required=True)
    parser.add_argument("--listen", required=True)
    parser.add_argument("--peers", required=True, help="comma-separated listen addresses of the other nodes")
    parser.add_argument("--docs", type=int, required=True)
    args = parser.parse_args()
    peers = [p for p in str(args.peers).split(",") if p]
    store = workload.PreloadedStore(int(args.docs))
    config = NodeConfig(node_id=str(args.node_id), listen=str(args.listen), peers=peers)
    async with Node(config, store=store) as node:
        await wait_peers_up(node, len(peers))
        emit("ready")
        await serve(NodeAdapter(node, detached_map(workload.DATA), {"root": _emit_root}), receiver=False)


if __name__ == "__main__":
    run_main(main)
