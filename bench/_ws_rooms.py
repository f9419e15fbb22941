"""pycrdt-websocket with one room per doc, for the reconnect part of the anti-entropy benchmark.

The server is ``bench._ws``'s deployment (``WebsocketServer`` behind ``ASGIServer`` on hypercorn, 127.0.0.1)
with ``auto_clean_rooms=False``, so a room keeps its Doc while no client is connected (a server that holds
the data for offline clients). A client holds ``--docs`` Docs and connects one websocket per doc room, as
pycrdt-websocket works (``pycrdt.Provider`` over httpx-ws, one shared httpx client).

Usage (started by bench.antientropy):
    python -m bench._ws_rooms server --port PORT
    python -m bench._ws_rooms client --url http://127.0.0.1:PORT --docs N

Commands, besides ``stats`` and ``quit`` (``bench._child.serve``):

- ``clock_sum`` -> ``clock_sum {total, rooms}``: items integrated over every room's Doc (server) or Doc (client)
- client ``connect`` -> ``connected {t0_ns, t1_ns, total}``: open every room, return once all are synced
- client ``disconnect`` -> ``disconnected``: close every room (queued updates are sent first)
- client ``init`` -> ``changed {total}``: load each doc's initial update (sent if connected)
- client ``changes {count, seed}`` -> ``changed {total}``: the workload's Map sets, one transaction each

Bytes are websocket message payloads: ``bytes_out`` of the server (ASGI ``websocket.send``) and of the
client (every room's channel).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import time
from typing import Any

import httpx
from httpx_ws import aconnect_ws
from pycrdt import Doc, Map, Provider
from pycrdt.websocket import WebsocketServer, exception_logger

from bench import _ae_workload as workload
from bench._child import CountingAdapter, detached_map, emit, run_main, serve
from bench._common import JSON
from bench._ws import CountingChannel, serve_websocket

CONNECT_TIMEOUT_S = 120.0
CLOSE_TIMEOUT_S = 30.0
CONNECTS_IN_FLIGHT_MAX = 64
"""Handshakes (connect + initial sync) running at once; the rest queue, so the listen backlog never
overflows (a dropped SYN would cost a 1 s retransmission and inflate the reconnect time)."""
LISTEN_BACKLOG = 2048
YIELD_EVERY_WRITES = 100


class ServerAdapter(CountingAdapter):
    def __init__(self, websocket_server: WebsocketServer) -> None:
        super().__init__(detached_map(workload.DATA))  # the benchmark reads rooms through commands instead
        self._server = websocket_server

    async def command(self, cmd: JSON) -> bool:
        if cmd.get("cmd") != "clock_sum":
            return False
        rooms = dict(self._server.rooms)
        total = sum(workload.clock_sum(room.ydoc.get_state()) for room in rooms.values())
        emit("clock_sum", total=total, rooms=len(rooms))
        return True


class ClientAdapter(CountingAdapter):
    def __init__(self, url: str, docs: int) -> None:
        super().__init__(detached_map(workload.DATA))  # the benchmark reads rooms through commands instead
        self._url = url.rstrip("/")
        self._docs: list[Doc[Any]] = [Doc() for _ in range(docs)]
        for doc in self._docs:
            doc.get(workload.DATA, type=Map)
        self._channels: list[CountingChannel] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._stop: asyncio.Event | None = None
        self._http: httpx.AsyncClient | None = None

    def counters(self) -> dict[str, int]:
        return {
            "bytes_out": self.bytes_out + sum(c.bytes_out for c in self._channels),
            "msgs_out": self.msgs_out + sum(c.msgs_out for c in self._channels),
        }

    def _total(self) -> int:
        return sum(workload.clock_sum(doc.get_state()) for doc in self._docs)

    async def command(self, cmd: JSON) -> bool:
        name = cmd.get("cmd")
        if name == "clock_sum":
            emit("clock_sum", total=self._total(), rooms=len(self._docs))
        elif name == "connect":
            t0, t1 = await self._connect()
            emit("connected", t0_ns=t0, t1_ns=t1, total=self._total())
        elif name == "disconnect":
            await self._disconnect()
            emit("disconnected")
        elif name == "init":
            for index, doc in enumerate(self._docs):
                doc.apply_update(workload.init_update(index))
            emit("changed", total=self._total())
        elif name == "changes":
            for j, change in enumerate(
                workload.changes(int(cmd["count"]), len(self._docs), int(cmd["seed"]))
            ):
                workload.apply_change(self._docs[change[0]], change)
                if j % YIELD_EVERY_WRITES == YIELD_EVERY_WRITES - 1:
                    await asyncio.sleep(0)
            emit("changed", total=self._total())
        else:
            return False
        return True

    async def _room(
        self, index: int, gate: asyncio.Semaphore, synced: list[int], all_synced: asyncio.Event
    ) -> None:
        assert self._stop is not None and self._http is not None
        room = workload.doc_id(index)
        await gate.acquire()
        released = False
        try:
            session: Any
            async with aconnect_ws(f"{self._url}/{room}", self._http) as session:
                channel = CountingChannel(session, room)
                self._channels.append(channel)
                async with Provider(self._docs[index], channel) as provider:
                    await asyncio.wait_for(provider.synced.wait(), CONNECT_TIMEOUT_S)
                    gate.release()
                    released = True
                    synced[0] += 1
                    if synced[0] == len(self._docs):
                        all_synced.set()
                    await self._stop.wait()
        finally:
            if not released:
                gate.release()

    async def _connect(self) -> tuple[int, int]:
        if self._tasks:
            raise RuntimeError("already connected")
        # One shared client; no pool limit, since every websocket holds its connection for good.
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
        self._http = httpx.AsyncClient(limits=limits, timeout=CONNECT_TIMEOUT_S)
        self._stop = asyncio.Event()
        gate = asyncio.Semaphore(CONNECTS_IN_FLIGHT_MAX)
        synced = [0]
        all_synced = asyncio.Event()
        t0 = time.monotonic_ns()
        self._tasks = [
            asyncio.create_task(self._room(index, gate, synced, all_synced))
            for index in range(len(self._docs))
        ]
        waiter = asyncio.create_task(all_synced.wait())
        failed = asyncio.create_task(self._first_failure())
        done, _ = await asyncio.wait(
            {waiter, failed}, timeout=CONNECT_TIMEOUT_S, return_when="FIRST_COMPLETED"
        )
        t1 = time.monotonic_ns()
        for task in (waiter, failed):
            task.cancel()
        if waiter not in done:
            reason = failed.result() if failed in done else f"timeout after {CONNECT_TIMEOUT_S:.0f} s"
            raise RuntimeError(f"{synced[0]}/{len(self._docs)} rooms synced: {reason}")
        return t0, t1

    async def _first_failure(self) -> str:
        """The first room task to end before the disconnect, as text (a room must never end early)."""
        done, _ = await asyncio.wait(self._tasks, return_when="FIRST_COMPLETED")
        task = next(iter(done))
        exc = task.exception()
        return f"a room ended early: {exc!r}"

    async def _disconnect(self) -> None:
        if self._stop is not None:
            self._stop.set()
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=CLOSE_TIMEOUT_S)
            for task in pending:
                task.cancel()
            results = await asyncio.gather(*self._tasks, return_exceptions=True)
            errors = [r for r in results if isinstance(r, BaseException)]
            if pending or errors:
                logging.warning("disconnect: %d rooms cancelled, %d errors", len(pending), len(errors))
        self._tasks = []
        # Keep the byte counts of closed rooms.
        self.bytes_out += sum(c.bytes_out for c in self._channels)
        self.msgs_out += sum(c.msgs_out for c in self._channels)
        self._channels = []
        if self._http is not None:
            await self._http.aclose()
            self._http = None


async def run_server(port: int) -> None:
    logging.basicConfig(level=logging.WARNING)
    websocket_server = WebsocketServer(auto_clean_rooms=False, exception_handler=exception_logger)
    await serve_websocket(websocket_server, ServerAdapter(websocket_server), port, LISTEN_BACKLOG)


async def run_client(url: str, docs: int) -> None:
    logging.basicConfig(level=logging.WARNING)
    adapter = ClientAdapter(url, docs)
    emit("ready")
    try:
        await serve(adapter, receiver=False)
    finally:
        await adapter._disconnect()


async def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench._ws_rooms")
    sub = parser.add_subparsers(dest="mode", required=True)
    server = sub.add_parser("server")
    server.add_argument("--port", type=int, required=True)
    client = sub.add_parser("client")
    client.add_argument("--url", required=True)
    client.add_argument("--docs", type=int, required=True)
    args = parser.parse_args()
    if args.mode == "server":
        await run_server(int(args.port))
    else:
        await run_client(str(args.url), int(args.docs))


if __name__ == "__main__":
    run_main(main)
