"""pycrdt-websocket, deployed the way its documentation shows: a ``WebsocketServer`` behind ``ASGIServer``
served by hypercorn on 127.0.0.1, and ``pycrdt.Provider`` clients connected with httpx-ws through
``pycrdt.websocket.websocket.HttpxWebsocket``. The server is a hub: it applies each client's update to its
room's Doc and broadcasts it to every client.

Usage (started by bench.replication):
    python -m bench._ws server --port PORT
    python -m bench._ws client --role writer|reader --url http://127.0.0.1:PORT/bench

Bytes are counted as websocket message payloads: what the server hands to ASGI ``websocket.send`` and what
each client's channel sends (frame headers, pings and the HTTP upgrade are not included).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, cast

from httpx_ws import aconnect_ws
from hypercorn.asyncio import serve as hypercorn_serve
from hypercorn.config import Config
from pycrdt import Doc, Map, Provider
from pycrdt.websocket import ASGIServer, WebsocketServer, exception_logger
from pycrdt.websocket.websocket import HttpxWebsocket

from bench._child import CountingAdapter, detached_map, emit, run_main, serve

STARTUP_TIMEOUT_S = 30.0
LISTEN_POLL_INTERVAL_S = 0.02
SHUTDOWN_TIMEOUT_S = 5.0

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class CountingChannel(HttpxWebsocket):
    """``HttpxWebsocket`` that counts the message bytes it sends."""

    def __init__(self, websocket: Any, path: str) -> None:
        super().__init__(websocket, path)
        self.bytes_out = 0
        self.msgs_out = 0

    async def send(self, message: bytes) -> None:
        self.bytes_out += len(message)
        self.msgs_out += 1
        await super().send(message)


class ClientAdapter(CountingAdapter):
    def __init__(self, doc: Doc[Map[Any]], channel: CountingChannel) -> None:
        super().__init__(doc.get("data", type=Map))  # nothing to flush: the Provider sends from doc.events()
        self._channel = channel

    def counters(self) -> dict[str, int]:
        return {"bytes_out": self._channel.bytes_out, "msgs_out": self._channel.msgs_out}


async def _wait_listening(port: int) -> None:
    loop = asyncio.get_running_loop()
    give_up_at = loop.time() + STARTUP_TIMEOUT_S
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            if loop.time() > give_up_at:
                raise TimeoutError(f"hypercorn did not listen on port {port}") from None
            await asyncio.sleep(LISTEN_POLL_INTERVAL_S)
            continue
        writer.close()
        await writer.wait_closed()
        return


async def serve_websocket(
    websocket_server: WebsocketServer, adapter: CountingAdapter, port: int, backlog: int | None = None
) -> None:
    """Serve `websocket_server` over hypercorn on 127.0.0.1:`port`, counting what it sends into
    `adapter`, and run the child command loop until told to quit."""
    asgi = ASGIServer(websocket_server)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        async def counting_send(message: Message) -> None:
            if message.get("type") == "websocket.send":
                payload = message.get("bytes") or message.get("text") or b""
                adapter.bytes_out += len(payload)
                adapter.msgs_out += 1
            await send(message)

        await asgi(scope, receive, counting_send)

    config = Config()
    config.bind = [f"127.0.0.1:{port}"]
    config.accesslog = None
    if backlog is not None:
        config.backlog = backlog
    shutdown = asyncio.Event()
    async with websocket_server:
        server_task = asyncio.create_task(
            hypercorn_serve(cast(Any, app), config, shutdown_trigger=shutdown.wait)
        )
        try:
            await _wait_listening(port)
            emit("ready")
            await serve(adapter, receiver=False)
        finally:
            shutdown.set()
            try:
                await asyncio.wait_for(server_task, SHUTDOWN_TIMEOUT_S)
            except (TimeoutError, asyncio.CancelledError):
                server_task.cancel()


async def run_server(port: int) -> None:
    logging.basicConfig(level=logging.WARNING)
    # The hub holds no replica the benchmark inspects; it only reports CPU and bytes.
    hub = CountingAdapter(detached_map("data"))
    await serve_websocket(WebsocketServer(exception_handler=exception_logger), hub, port)


async def run_client(role: str, url: str) -> None:
    doc: Doc[Map[Any]] = Doc()
    session: Any
    async with aconnect_ws(url) as session:
        channel = CountingChannel(session, url.rsplit("/", 1)[-1])
        async with Provider(doc, channel) as provider:
            await asyncio.wait_for(provider.synced.wait(), STARTUP_TIMEOUT_S)
            emit("ready")
            await serve(ClientAdapter(doc, channel), receiver=role == "reader")


async def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench._ws")
    sub = parser.add_subparsers(dest="mode", required=True)
    server = sub.add_parser("server")
    server.add_argument("--port", type=int, required=True)
    client = sub.add_parser("client")
    client.add_argument("--role", choices=("writer", "reader"), required=True)
    client.add_argument("--url", required=True)
    args = parser.parse_args()
    if args.mode == "server":
        await run_server(int(args.port))
    else:
        await run_client(str(args.role), str(args.url))


if __name__ == "__main__":
    run_main(main)
