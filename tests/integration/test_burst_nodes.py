"""Bursts of small transactions on real ZeroMQ TCP sockets on 127.0.0.1 (one process, one event
loop): each node's transactions of one doc in a turn leave merged into one delta
(`crdtsync.core.outbound.merge_runs`), while the other nodes write the same docs and keys."""

from __future__ import annotations

import asyncio
import threading

import pytest
from pycrdt import Map, Text
from test_zmq_cluster import (
    CONVERGE_TIMEOUT_S,
    _converged,
    _describe,
    _flush,
    _full_mesh,
    _json,
    _links_up,
    _running,
)
from zmq_support import wait_until

from crdtsync import merge_thread
from crdtsync.core.state import merge_each

pytestmark = pytest.mark.integration

ROUNDS = 4
WRITES_PER_DOC = 40


def test_concurrent_bursts_merge_per_doc_and_every_node_converges_on_every_write(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    doc_ids = [f"doc-{i}" for i in range(3)]
    merged_on: set[str] = set()

    def recording(runs: list[list[bytes]]) -> list[bytes | None]:
        merged_on.add(threading.current_thread().name)
        return merge_each(runs)

    monkeypatch.setattr(merge_thread, "merge_each", recording)

    async def scenario() -> None:
        async with _running(*_full_mesh(3)) as nodes:
            await wait_until(lambda: _links_up(nodes, 2), 10.0, "every node sees both peers up")
            for round_index in range(ROUNDS):
                for node in nodes:  # each node's burst in one turn: one batch, one delta a doc
                    node_id = node.config.node_id
                    for doc_id in doc_ids:
                        doc = await node.open(doc_id)
                        data, text = doc.get("data", type=Map), doc.get("text", type=Text)
                        for i in range(WRITES_PER_DOC):  # one transaction each
                            data[f"shared-{i % 5}"] = f"{node_id}-{round_index}-{i}"
                            data[f"by-{node_id}-{i}"] = round_index
                        text.insert(0, node_id)
                await _flush(nodes)
            await wait_until(
                lambda: _converged(nodes, doc_ids),
                CONVERGE_TIMEOUT_S,
                lambda: "converged: " + _describe(nodes),
            )
            writes = ROUNDS * len(doc_ids) * (2 * WRITES_PER_DOC + 1)
            assert merged_on and all(name.startswith("crdtsync-merge") for name in merged_on), merged_on
            for node in nodes:
                status = node.status()
                assert status.pending_updates == 0
                assert status.published_updates == writes
                assert status.counters.deltas_merged > writes // 2, "a burst's transactions merged"
                assert status.counters.updates_left_pending == 0
            for doc_id in doc_ids:
                data, text = _json(nodes[0]._replica.open_doc(doc_id))
                for i in range(3):
                    for j in range(WRITES_PER_DOC):
                        assert data[f"by-n{i}-{j}"] == ROUNDS - 1
                assert sorted(text[k : k + 2] for k in range(0, len(text), 2)) == sorted(
                    ["n0", "n1", "n2"] * ROUNDS
                )

    asyncio.run(scenario())
