"""`Node.wait_for` and `Node.causal_token` on a real node: woken by the doc's changes (remote applies
included), NotCoveredError naming what is missing, the waiter bound, and observers removed after."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from pycrdt import Doc, Map
from zmq_support import free_endpoint

from crdtsync import CausalToken, Node, NodeConfig, NotCoveredError, TooManyWaitersError
from crdtsync.consistency import Waiters, doc_state

pytestmark = pytest.mark.integration


def _elsewhere() -> tuple[Doc[Any], CausalToken]:
    """A write made on another replica (a plain pycrdt Doc) and its token."""
    other: Doc[Any] = Doc()
    other.get("data", type=Map)["stage"] = "production"
    return other, CausalToken.of({"models/registry": doc_state(other)})


def test_wait_for_is_woken_by_the_write_and_times_out_naming_what_is_missing() -> None:
    async def scenario() -> None:
        async with Node(NodeConfig(node_id="b", listen=free_endpoint())) as node:
            other, token = _elsewhere()
            # Covered at once: a token that does not name the doc, and the node's own token.
            await node.wait_for("models/registry", CausalToken(), timeout_ms=0)
            local = await node.open("local")
            local.get("data", type=Map)["x"] = 1
            await node.wait_for("local", await node.causal_token("local"), timeout_ms=0)
            node.release("local")

            start = time.monotonic()
            with pytest.raises(NotCoveredError) as raised:
                await node.wait_for("models/registry", token, timeout_ms=150)
            waited_s = time.monotonic() - start
            assert 0.14 <= waited_s < 2.0, waited_s
            assert dict(raised.value.missing.state) == dict(token.get("models/registry").state)

            # A write that arrives while the read waits wakes it, long before its deadline.
            async def arrive() -> None:
                await asyncio.sleep(0.05)
                doc = await node.open("models/registry")
                doc.apply_update(other.get_update())
                node.release("models/registry")

            arrival = asyncio.create_task(arrive())
            start = time.monotonic()
            await node.wait_for("models/registry", token, timeout_ms=10_000)
            assert time.monotonic() - start < 5.0
            await arrival

            # A delete-only write elsewhere: its token is not covered until the delete arrives.
            del other.get("data", type=Map)["stage"]
            token = CausalToken.of({"models/registry": doc_state(other)})
            with pytest.raises(NotCoveredError) as raised:
                await node.wait_for("models/registry", token, timeout_ms=50)
            assert raised.value.missing.deletes and not raised.value.missing.state
            doc = await node.open("models/registry")
            doc.apply_update(other.get_update(doc.get_state()))
            node.release("models/registry")
            await node.wait_for("models/registry", token, timeout_ms=0)
            assert node._waiters.waiting == 0 and not node._waiters._docs  # observers removed

    asyncio.run(scenario())


def test_waiters_are_bounded() -> None:
    async def scenario() -> None:
        async with Node(NodeConfig(node_id="b", listen=free_endpoint())) as node:
            node._waiters.waiters_max = 3
            _, token = _elsewhere()
            waits = [
                asyncio.create_task(node.wait_for("models/registry", token, timeout_ms=5_000))
                for _ in range(3)
            ]
            for _ in range(1000):  # each task reaches its wait within a few loop turns
                if node._waiters.waiting == 3:
                    break
                await asyncio.sleep(0)
            assert node._waiters.waiting == 3
            with pytest.raises(TooManyWaitersError):
                await node.wait_for("models/registry", token, timeout_ms=5_000)
            for wait in waits:
                wait.cancel()
            await asyncio.gather(*waits, return_exceptions=True)
            assert node._waiters.waiting == 0

    asyncio.run(scenario())


def test_waiters_follow_a_doc_reloaded_under_them() -> None:
    """Callers pin the doc, so its object stays the same; if one did not, a reload must not strand
    the reads that wait on the old object."""

    async def scenario() -> None:
        waiters = Waiters()
        other, token = _elsewhere()
        need = token.get("models/registry")
        old: Doc[Any] = Doc()
        first = asyncio.create_task(waiters.wait("models/registry", old, need, 10_000))
        await asyncio.sleep(0)
        live: Doc[Any] = Doc()
        second = asyncio.create_task(waiters.wait("models/registry", live, need, 10_000))
        await asyncio.sleep(0)
        assert waiters.waiting == 2
        live.apply_update(other.get_update())
        await asyncio.wait_for(asyncio.gather(first, second), 5.0)
        assert waiters.waiting == 0 and not waiters._docs

    asyncio.run(scenario())
