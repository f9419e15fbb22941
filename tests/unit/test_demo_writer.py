"""`crdtsync demo`'s writers without daemons: a write still on its way when writing stops (the
writer task is cancelled) counts as one that may have landed, so the final check allows its value.
It once failed the demo: b's PUT of 22 was applied after the cancel, over the 61 it acknowledged."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from crdtsync.daemon.demo import Demo, make_cluster


def test_a_write_in_flight_when_writing_stops_counts_as_one_that_may_have_landed(tmp_path: Path) -> None:
    async def run() -> Demo:
        demo = Demo(make_cluster(str(tmp_path), 0), seconds=5.0, work_dir=None)
        arrived = asyncio.Event()

        async def never_answers(request: httpx.Request) -> httpx.Response:
            arrived.set()
            await asyncio.Event().wait()  # the node took the request; its answer is still to come
            raise AssertionError("unreachable")

        await demo.client.aclose()
        demo.client = httpx.AsyncClient(transport=httpx.MockTransport(never_answers))
        demo.write_enabled["b"].set()
        writer = asyncio.create_task(demo.writer(demo.daemons["b"]))
        await asyncio.wait_for(arrived.wait(), timeout=10.0)
        writer.cancel()
        with pytest.raises(asyncio.CancelledError):
            await writer
        await demo.client.aclose()
        return demo

    acks = asyncio.run(run()).cluster.acks
    assert acks.acks == []
    assert [(write.node, write.seq) for write in acks.failures] == [("b", 1)]
