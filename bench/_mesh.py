"""Bare pycrdt + ZeroMQ mesh, no reliability: the physical limit the replication engine is compared with.

Each of the three processes binds a PUB socket on 127.0.0.1 and SUBscribes to the other two. The writer
publishes every ``event.update`` of its Doc as one ZeroMQ message; receivers ``apply_update`` it directly.
No envelope, no batching, no sequence numbers, no retransmission, no anti-entropy. High-water marks are
unlimited so that a burst is not dropped by PUB (bounded by the burst size).

Usage (started by bench.replication): ``python -m bench._mesh writer|reader``.
Extra commands: ``connect {endpoints}`` -> ``connected``; ``ping_start`` / ``ping_stop`` -> ``ping_stopped``
(the writer publishes empty messages until told to stop; a receiver emits ``synced`` on the first one, so
the parent knows the SUB subscriptions are live before measuring).
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from typing import Any, cast

import zmq
from pycrdt import Doc, Map, TransactionEvent

from bench._child import CountingAdapter, emit, run_main, serve
from bench._common import JSON

PING_INTERVAL_S = 0.002
PINGS_MAX = 10_000  # 20 s of pings at most
DRAIN_BATCH_MAX = 10_000


class MeshNode(CountingAdapter):
    def __init__(self, role: str) -> None:
        self.role = role
        self.ctx = zmq.Context()
        self.pub = self.ctx.socket(zmq.PUB)
        self.pub.setsockopt(zmq.SNDHWM, 0)
        self.pub.setsockopt(zmq.LINGER, 0)
        self.pub.bind("tcp://127.0.0.1:*")
        self.endpoint = self.pub.getsockopt_string(zmq.LAST_ENDPOINT)
        self.sub = self.ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.RCVHWM, 0)
        self.sub.setsockopt(zmq.LINGER, 0)
        self.sub.setsockopt(zmq.SUBSCRIBE, b"")
        self.doc: Doc[Map[Any]] = Doc()
        super().__init__(self.doc.get("data", type=Map))  # nothing to flush: each update is published at once
        self.synced = False
        self._ping_task: asyncio.Task[None] | None = None
        if role == "writer":
            self._subscription = self.doc.observe(self._on_local_update)

    def _on_local_update(self, event: TransactionEvent) -> None:
        update: bytes = event.update
        self.pub.send(update)
        self.bytes_out += len(update)
        self.msgs_out += 1

    def counters(self) -> dict[str, int]:
        # Everything this node sends goes out on its PUB socket, a copy to each subscriber.
        return super().counters() | {"bytes_published": self.bytes_out}

    def drain(self) -> None:
        loop = asyncio.get_running_loop()
        for _ in range(DRAIN_BATCH_MAX):
            if not cast(int, self.sub.getsockopt(zmq.EVENTS)) & zmq.POLLIN:
                return
            try:
                msg = self.sub.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            if msg:
                self.doc.apply_update(msg)
            elif not self.synced:
                self.synced = True
                emit("synced")
        loop.call_soon(self.drain)  # more left: continue after other callbacks had a turn

    async def _ping(self) -> None:
        for _ in range(PINGS_MAX):
            self.pub.send(b"")
            await asyncio.sleep(PING_INTERVAL_S)

    async def command(self, cmd: JSON) -> bool:
        name = cmd.get("cmd")
        if name == "connect":
            for endpoint in cmd["endpoints"]:
                self.sub.connect(str(endpoint))
            asyncio.get_running_loop().call_soon(self.drain)  # the ZeroMQ fd is edge-triggered
            emit("connected")
            return True
        if name == "ping_start":
            self._ping_task = asyncio.create_task(self._ping())
            return True
        if name == "ping_stop":
            if self._ping_task is not None:
                self._ping_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._ping_task
                self._ping_task = None
            emit("ping_stopped")
            return True
        return False

    def close(self) -> None:
        self.pub.close(linger=0)
        self.sub.close(linger=0)
        self.ctx.term()


async def main() -> None:
    role = sys.argv[1] if len(sys.argv) > 1 else ""
    if role not in ("writer", "reader"):
        raise SystemExit("usage: python -m bench._mesh writer|reader")
    node = MeshNode(role)
    loop = asyncio.get_running_loop()
    loop.add_reader(node.sub.fileno(), node.drain)
    try:
        emit("ready", endpoint=node.endpoint)
        await serve(node, receiver=role == "reader")
    finally:
        loop.remove_reader(node.sub.fileno())
        if node._ping_task is not None:
            node._ping_task.cancel()
        node.close()


if __name__ == "__main__":
    run_main(main)
