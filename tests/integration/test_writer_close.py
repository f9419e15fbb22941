"""Closing a node while a group commit runs: the commit's late report must find nothing to do (close
appended what was left itself), not raise in the event loop."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from pycrdt import Doc, Map
from zmq_support import free_endpoint

from crdtsync import Node, NodeConfig
from crdtsync.store.sqlite import SqliteStore

pytestmark = pytest.mark.integration


def test_close_during_a_group_commit_raises_nothing_and_keeps_every_write(tmp_path: Path) -> None:
    errors: list[dict[str, Any]] = []

    async def scenario() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda _loop, context: errors.append(context))
        node = Node(NodeConfig(node_id="w", listen=free_endpoint(), data_dir=str(tmp_path)))
        await node.start()
        doc = await node.open("doc")
        for index in range(200):
            doc.get("data", type=Map)[f"k{index}"] = index
            await asyncio.sleep(0)  # each write is pumped: commits start while later writes queue
        await node.close()
        for _ in range(20):  # let the writer's late completion callbacks run
            await asyncio.sleep(0.01)

    asyncio.run(scenario())
    assert errors == [], [str(context.get("exception") or context.get("message")) for context in errors]
    store = SqliteStore(tmp_path, node_id="w")
    try:
        content = store.load_doc("doc")
    finally:
        store.close()
    assert content is not None
    check: Doc[Any] = Doc()
    check.apply_update(content)
    assert len(check.get("data", type=Map).to_py() or {}) == 200
