"""`Node.flush` from many concurrent writers (the HTTP API's requests): the writes of one turn of the
event loop leave in one published batch and reach the store in one commit, and every flush still
returns only once its own write is committed."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from pycrdt import Doc, Map
from zmq_support import free_endpoint

from crdtsync import Node, NodeConfig
from crdtsync.store.sqlite import DB_FILE

pytestmark = pytest.mark.integration

WRITERS = 50


def stored_value(data_dir: Path, doc_id: str) -> Any:
    """The doc's data as committed to the store, read through a connection of its own (the node
    holds the store open meanwhile)."""
    db = sqlite3.connect(f"file:{data_dir / DB_FILE}?mode=ro", uri=True, isolation_level=None)
    try:
        rows = db.execute("SELECT data FROM updates WHERE doc_id = ? ORDER BY seq", (doc_id,)).fetchall()
    finally:
        db.close()
    doc: Doc[Any] = Doc()
    for (update,) in rows:
        doc.apply_update(update)
    return doc.get("data", type=Map).to_py()


def test_concurrent_flushes_share_one_batch_and_one_commit(tmp_path: Path) -> None:
    async def scenario() -> tuple[int, int, list[bool]]:
        async with Node(NodeConfig(node_id="w", listen=free_endpoint(), data_dir=str(tmp_path))) as node:
            for index in range(WRITERS):  # loaded first, so that the writes below need no await
                await node.open(f"doc-{index}")
            await node.flush()
            commits_before = node.store_stats().commits
            batches_before = node.status().counters.batches_published
            committed: list[bool] = []

            async def write_then_flush(index: int) -> None:
                doc = await node.open(f"doc-{index}")
                doc.get("data", type=Map)["v"] = index
                await node.flush()
                # Flushed means stored: read back through another connection, off the event loop.
                value = await asyncio.to_thread(stored_value, tmp_path, f"doc-{index}")
                committed.append(value == {"v": index})
                node.release(f"doc-{index}")

            await asyncio.gather(*(write_then_flush(index) for index in range(WRITERS)))
            commits = node.store_stats().commits - commits_before
            batches = node.status().counters.batches_published - batches_before
            return commits, batches, committed

    commits, batches, committed = asyncio.run(scenario())
    assert committed == [True] * WRITERS
    assert commits == 1, f"{WRITERS} concurrent writes took {commits} commits"
    assert batches == 1, f"{WRITERS} concurrent writes left in {batches} published batches"


def test_a_flush_cancelled_while_waiting_leaves_the_other_flushes_of_its_turn_to_their_commit(
    tmp_path: Path,
) -> None:
    """Each flush waits on a future of its own: a request cancelled while its flush waits (a client
    gone, a shutdown) must not cancel or fail the flushes of the other requests of its turn."""

    async def scenario() -> tuple[bool, list[bool]]:
        async with Node(NodeConfig(node_id="w", listen=free_endpoint(), data_dir=str(tmp_path))) as node:
            for index in range(WRITERS):
                doc = await node.open(f"doc-{index}")
                doc.get("data", type=Map)["v"] = index
            started = [asyncio.Event() for _ in range(WRITERS)]

            async def flush_after(index: int) -> None:
                started[index].set()
                await node.flush()  # registers its waiter before this task yields

            flushes = [asyncio.create_task(flush_after(index)) for index in range(WRITERS)]
            for event in started:
                await event.wait()
            flushes[0].cancel()
            outcomes = await asyncio.gather(*flushes, return_exceptions=True)
            stored = await asyncio.to_thread(
                lambda: [stored_value(tmp_path, f"doc-{index}") == {"v": index} for index in range(WRITERS)]
            )
            others_returned = all(outcome is None for outcome in outcomes[1:])
            return isinstance(outcomes[0], asyncio.CancelledError) and others_returned, stored

    flushed, stored = asyncio.run(scenario())
    assert flushed, "the cancelled flush raised CancelledError and every other flush returned"
    assert stored == [True] * WRITERS
