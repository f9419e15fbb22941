"""`GET /v1/ws/{doc}`, the y-websocket endpoint, on real `crdtsync serve` daemons.

Two daemons of two datacenters with the same tokens file (a read and a write token). Python clients
(aiohttp's WebSocket client, pycrdt's sync helpers) check the protocol, the HTTP API on both sides
of it, tokens and limits; Node.js clients from the npm packages `yjs`, `y-websocket` and `ws`
(tests/integration/js, installed at test time with npm; skipped without node or npm) check
convergence of concurrent edits across the datacenters, awareness between two clients of a node and
a provider's resync after its node is killed; headless Chromium (skipped without `chromium`) runs
examples/browser against one node while a Python client edits on the other.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import os
import random
import secrets
import shutil
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest
from aiohttp import web
from browser_support import Browser
from daemon_support import CONVERGE_TIMEOUT_S, Daemon, DaemonPool, start_all, wait_until
from pycrdt import (
    Doc,
    Encoder,
    Map,
    Text,
    YMessageType,
    YSyncMessageType,
    create_awareness_message,
    create_sync_message,
    create_update_message,
    handle_sync_message,
    read_message,
)
from zmq_support import wait_until as wait_until_async

from crdtsync import Node, NodeConfig
from crdtsync.daemon.websocket import CLOSE_SLOW, RECEIVE_BYTES_MAX, WebSockets

pytestmark = pytest.mark.integration

READ = secrets.token_urlsafe(32)
WRITE = secrets.token_urlsafe(32)
JS_DIR = Path(__file__).parent / "js"
STEP_TIMEOUT_S = 10.0
NPM_TIMEOUT_S = 180.0
JS_TIMEOUT_S = 30.0


def sha(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@pytest.fixture(scope="module")
def nodes(pool: DaemonPool) -> Iterator[list[Daemon]]:
    tokens = pool.root / "tokens.toml"
    tokens.write_text(
        f'[[token]]\nname = "viewer"\nscope = "read"\nsha256 = "{sha(READ)}"\n\n'
        f'[[token]]\nname = "editor"\nscope = "write"\nsha256 = "{sha(WRITE)}"\n'
    )
    east = pool.new("east-1", dc="east", http={"tokens_file": str(tokens)}, token=WRITE)
    west = pool.new("west-1", dc="west", http={"tokens_file": str(tokens)}, token=WRITE)
    east.peers, west.peers = [west.listen], [east.listen]
    start_all([east, west])
    wait_until(lambda: east.peers_up() and west.peers_up(), CONVERGE_TIMEOUT_S, "peers up")
    yield [east, west]


def ws_url(daemon: Daemon, doc_id: str = "") -> str:
    return f"ws://127.0.0.1:{daemon.http_port}/v1/ws" + (f"/{doc_id}" if doc_id else "")


# ------------------------------------------------------------------------------ a Python client


class Client:
    """A y-websocket client made of pycrdt's sync helpers over aiohttp's WebSocket client."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.doc: Doc[Any] = Doc()
        self.synced = False
        self.awareness: list[bytes] = []

    async def receive_one(self, timeout_s: float = STEP_TIMEOUT_S) -> aiohttp.WSMessage:
        message = await self.ws.receive(timeout=timeout_s)
        if message.type == aiohttp.WSMsgType.BINARY:
            data: bytes = message.data
            if data[0] == YMessageType.SYNC:
                if data[1] == YSyncMessageType.SYNC_STEP2:
                    self.synced = True
                reply = handle_sync_message(data[1:], self.doc)
                if reply is not None:
                    await self.ws.send_bytes(reply)
            elif data[0] == YMessageType.AWARENESS:
                self.awareness.append(read_message(data[1:]))
        return message

    async def until(self, predicate: Any, what: str, timeout_s: float = STEP_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout_s
        while not predicate():
            left = deadline - time.monotonic()
            assert left > 0, f"timed out waiting for {what}"
            message = await self.receive_one(left)
            assert message.type == aiohttp.WSMsgType.BINARY, f"waiting for {what}: got {message}"

    async def sync(self) -> None:
        await self.ws.send_bytes(create_sync_message(self.doc))
        await self.until(lambda: self.synced, "sync step 2")

    async def closed(self, timeout_s: float = STEP_TIMEOUT_S) -> int | None:
        """Read until the server closes; its close code."""
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            assert left > 0, "timed out waiting for the server to close"
            message = await self.ws.receive(timeout=left)
            if message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING):
                return self.ws.close_code


def data_of(doc: Doc[Any]) -> dict[str, Any]:
    result: dict[str, Any] = doc.get("data", type=Map).to_py()
    return result


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 60))


def test_a_client_syncs_an_existing_doc_and_edits_reach_both_ways(nodes: list[Daemon]) -> None:
    east, west = nodes
    east.put("ws/py", "seed", {"n": 1})

    async def scenario() -> None:
        async with aiohttp.ClientSession() as session:
            headers = {"Authorization": f"Bearer {WRITE}"}
            async with session.ws_connect(ws_url(east, "ws/py"), headers=headers) as ws:
                client = Client(ws)
                await client.sync()
                assert data_of(client.doc) == {"seed": {"n": 1}}
                # A client edit: on the node's HTTP API, and replicated to the other datacenter.
                data = client.doc.get("data", type=Map)
                updates: list[bytes] = []
                client.doc.observe(lambda event: updates.append(event.update))
                data["from_ws"] = "hello"
                await ws.send_bytes(create_update_message(updates[-1]))
                await asyncio.to_thread(
                    wait_until,
                    lambda: all((d.data("ws/py") or {}).get("from_ws") == "hello" for d in (east, west)),
                    CONVERGE_TIMEOUT_S,
                    "the client's edit on both nodes",
                )
                # An HTTP write on either node reaches the client.
                await asyncio.to_thread(west.put, "ws/py", "from_http", [1, 2])
                await client.until(lambda: data_of(client.doc).get("from_http") == [1, 2], "the HTTP write")
                # The client never gets its own edit back: only the HTTP write's update came.
                assert data_of(client.doc) == {"seed": {"n": 1}, "from_ws": "hello", "from_http": [1, 2]}

    run(scenario())


def test_a_clients_update_goes_to_the_other_clients_not_back(nodes: list[Daemon]) -> None:
    east, _ = nodes

    async def scenario() -> None:
        async with aiohttp.ClientSession() as session:
            url = ws_url(east, "ws/fanout") + f"?token={WRITE}"
            async with session.ws_connect(url) as ws1, session.ws_connect(url) as ws2:
                one, two = Client(ws1), Client(ws2)
                await one.sync()
                await two.sync()
                updates: list[bytes] = []
                one.doc.observe(lambda event: updates.append(event.update))
                one.doc.get("text", type=Text).insert(0, "typed by one")
                await ws1.send_bytes(create_update_message(updates[-1]))
                await two.until(lambda: str(two.doc.get("text", type=Text)) == "typed by one", "one's text")
                # A step 1 answered proves one's earlier messages were handled; nothing else came.
                await ws1.send_bytes(create_sync_message(one.doc))
                message = await ws1.receive(timeout=STEP_TIMEOUT_S)
                assert message.data[:2] == bytes([YMessageType.SYNC, YSyncMessageType.SYNC_STEP2])

    run(scenario())


def too_many_awareness_clients() -> bytes:
    """An awareness message with the states of 65 clients, one more than a connection may hold."""
    encoder = Encoder()
    encoder.write_var_uint(65)
    for client in range(1, 66):
        encoder.write_var_uint(client)
        encoder.write_var_uint(1)
        encoder.write_var_string("{}")
    return create_awareness_message(encoder.to_bytes())


def test_a_malformed_message_closes_only_that_connection(nodes: list[Daemon]) -> None:
    east, _ = nodes
    east.put("ws/bad", "k", 1)
    before = east.client.get("/v1/docs/ws/bad/update").content

    async def scenario() -> None:
        async with aiohttp.ClientSession() as session:
            url = ws_url(east, "ws/bad") + f"?token={WRITE}"
            async with session.ws_connect(url) as good_ws:
                good = Client(good_ws)
                await good.sync()
                for garbage in (
                    b"\x00\x02\x05ab",  # an update whose length runs past the frame
                    b"\x00\x02\x03\xff\xff\xff",  # not a Yjs update
                    b"\x07",  # an unknown message type
                    b"\x01\x03\x01\x01",  # an awareness update cut short
                    too_many_awareness_clients(),
                ):
                    async with session.ws_connect(url) as bad_ws:
                        bad = Client(bad_ws)
                        await bad.sync()
                        await bad_ws.send_bytes(garbage)
                        assert await bad.closed() == 4400, garbage
                async with session.ws_connect(url) as text_ws:
                    await text_ws.send_str("hello")
                    assert await Client(text_ws).closed() == 1003
                # The good connection still works, and the doc did not change.
                await asyncio.to_thread(east.put, "ws/bad", "after", True)
                await good.until(lambda: data_of(good.doc).get("after") is True, "a write after the garbage")

    run(scenario())
    assert east.data("ws/bad") == {"k": 1, "after": True}
    assert before  # the doc existed before and still reads
    metrics = east.client.get("/metrics").text
    assert "crdtsync_websocket_closed_malformed_total 6.0" in metrics, metrics


def test_a_doc_larger_than_a_frame_syncs_in_several_messages(nodes: list[Daemon], node_js: str) -> None:
    """A fresh client of a 3 MB doc gets it as sync updates of about a frame (1 MiB) each and a last
    sync step 2, each integrating at once; the npm provider syncs it too."""
    east, _ = nodes
    doc_id = "ws/large"
    sizes = {f"k{n:02}": 250_000 + n for n in range(12)}
    for first in range(0, 12, 4):
        patch = {key: "x" * size for key, size in list(sizes.items())[first : first + 4]}
        assert east.client.patch(f"/v1/docs/{doc_id}", json=patch).is_success

    async def scenario() -> list[tuple[int, int]]:
        url = ws_url(east, doc_id) + f"?token={WRITE}"
        async with aiohttp.ClientSession() as session, session.ws_connect(url) as ws:
            client = Client(ws)
            await ws.send_bytes(create_sync_message(client.doc))
            received: list[tuple[int, int]] = []
            while not client.synced:
                message = await client.receive_one()
                if message.data[0] == YMessageType.SYNC:
                    received.append((message.data[1], len(message.data)))
            assert {key: len(value) for key, value in data_of(client.doc).items()} == sizes
            return received

    received = run(scenario())
    updates = [size for kind, size in received if kind == YSyncMessageType.SYNC_UPDATE]
    assert len(updates) >= 2 and received[-1][0] == YSyncMessageType.SYNC_STEP2, received
    assert all(size <= (1 << 20) + 64 for _, size in received), received
    assert run_js(node_js, "fetch", ws_url(east), doc_id, WRITE) == {"sizes": sizes}


def test_a_50_mb_doc_syncs_to_a_fresh_npm_provider(pool: DaemonPool, node_js: str) -> None:
    """The issue's case: 50 MB that a y-websocket provider receives as ~50 messages of 1 MiB (on a
    daemon of its own that takes the doc in one request)."""
    daemon = pool.new("large", http={"body_bytes_max": 60 << 20})
    start_all([daemon])
    doc_id = "ws/50mb"
    sizes = {f"k{n:02}": 1_000_000 + n for n in range(50)}
    started = time.monotonic()
    patch = {key: "y" * size for key, size in sizes.items()}
    assert daemon.client.patch(f"/v1/docs/{doc_id}", json=patch).is_success
    written = time.monotonic()
    assert run_js(node_js, "fetch", ws_url(daemon), doc_id, "") == {"sizes": sizes}
    print(f"50 MB: written in {written - started:.1f} s, synced in {time.monotonic() - written:.1f} s")
    daemon.kill()


def test_a_read_token_gets_a_read_only_connection(nodes: list[Daemon]) -> None:
    east, _ = nodes
    east.put("ws/readonly", "k", 1)

    async def scenario() -> None:
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(ws_url(east, "ws/readonly") + f"?token={READ}") as ws:
                client = Client(ws)
                await client.sync()
                assert data_of(client.doc) == {"k": 1}
                updates: list[bytes] = []
                client.doc.observe(lambda event: updates.append(event.update))
                client.doc.get("data", type=Map)["k"] = "overwritten"
                await ws.send_bytes(create_update_message(updates[-1]))
                # Answered in order: once step 2 comes back, the update was handled (ignored).
                client.synced = False
                await client.sync()
                await asyncio.to_thread(east.put, "ws/readonly", "later", 2)
                await client.until(lambda: "later" in data_of(client.doc), "a write after the refused one")
            # No token, a wrong one: refused before the upgrade; a read token on a missing doc: 404.
            for url, status in (
                (ws_url(east, "ws/readonly"), 401),
                (ws_url(east, "ws/readonly") + "?token=nope", 401),
                (ws_url(east, "ws/does-not-exist") + f"?token={READ}", 404),
            ):
                with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                    await session.ws_connect(url)
                assert refused.value.status == status, url

    run(scenario())
    assert east.data("ws/readonly") == {"k": 1, "later": 2}
    assert not east.client.get("/v1/docs/ws/does-not-exist").is_success
    assert "crdtsync_websocket_updates_ignored_read_only_total 1.0" in east.client.get("/metrics").text


def test_a_frame_over_the_receive_bound_closes_the_connection(nodes: list[Daemon]) -> None:
    """A frame over frame_bytes_max (1 MiB) is taken; one over receive_bytes_max (16 MiB) closes its
    connection with 1009 and is counted."""
    east, _ = nodes

    async def scenario() -> None:
        url = ws_url(east, "ws/big") + f"?token={WRITE}"
        async with aiohttp.ClientSession() as session, session.ws_connect(url, compress=15) as ws:
            assert ws.compress == 0  # permessage-deflate is off unless websocket.compress is set
            client = Client(ws)
            await client.sync()
            big: Doc[Any] = Doc()
            big.get("data", type=Map)["blob"] = "x" * ((1 << 20) + 1)
            await ws.send_bytes(create_update_message(big.get_update()))
            client.synced = False
            await client.sync()  # answered in order: the update was handled, and the connection is open
            # The node may reset the connection while the rest of the frame is still on its way.
            with contextlib.suppress(ConnectionError):
                await ws.send_bytes(b"\x00\x02" + b"\x00" * RECEIVE_BYTES_MAX)
                assert await client.closed() == 1009

    run(scenario())
    assert len((east.data("ws/big") or {}).get("blob", "")) == (1 << 20) + 1
    wait_until(
        lambda: "crdtsync_websocket_closed_too_large_total 1.0" in east.client.get("/metrics").text,
        STEP_TIMEOUT_S,
        "the oversized frame counted",
    )


def test_without_tokens_only_the_nodes_own_pages_may_connect_from_a_browser(
    pool: DaemonPool, nodes: list[Daemon]
) -> None:
    """Any web page may open a WebSocket to a daemon on localhost: without tokens, a browser's
    connection needs the node's own origin; with tokens, the token is what counts."""
    daemon = pool.new("open")
    start_all([daemon])
    east, _ = nodes
    east.put("ws/origin", "k", 1)

    async def connects(url: str, origin: str | None) -> int:
        headers = {} if origin is None else {"Origin": origin}
        async with aiohttp.ClientSession() as session:
            try:
                async with session.ws_connect(url, headers=headers) as ws:
                    await Client(ws).sync()
                    return 101
            except aiohttp.WSServerHandshakeError as exc:
                return exc.status

    async def scenario() -> None:
        url = ws_url(daemon, "ws/origin")
        assert await connects(url, None) == 101  # not a browser
        assert await connects(url, f"http://127.0.0.1:{daemon.http_port}") == 101  # its own page
        assert await connects(url, "https://evil.example") == 403
        assert await connects(url, f"http://127.0.0.1:{daemon.http_port + 1}") == 403
        assert await connects(url, "null") == 403
        assert await connects(ws_url(east, "ws/origin") + f"?token={READ}", "https://app.example") == 101

    run(scenario())
    daemon.kill()


def test_a_stopping_daemon_closes_its_websockets_with_1001(pool: DaemonPool) -> None:
    daemon = pool.new("stopping")
    start_all([daemon])

    async def scenario() -> float:
        async with aiohttp.ClientSession() as session, session.ws_connect(ws_url(daemon, "ws/stop")) as ws:
            client = Client(ws)
            await client.sync()
            started = time.monotonic()
            stopping = asyncio.create_task(asyncio.to_thread(daemon.terminate))
            assert await client.closed() == 1001
            assert await stopping == 0
            return time.monotonic() - started

    assert run(scenario()) < 10, "the daemon waited for its WebSocket before stopping"


# ------------------------------------------------------------------------------ Node.js clients


@pytest.fixture(scope="module")
def node_js() -> str:
    """The node binary, with tests/integration/js/node_modules installed (npm install, reused)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("Node.js clients need node and npm on the PATH (apt install nodejs npm)")
    try:
        subprocess.run(
            [npm, "install", "--no-audit", "--no-fund", "--loglevel=error"],
            cwd=JS_DIR,
            check=True,
            capture_output=True,
            timeout=NPM_TIMEOUT_S,
        )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        output = getattr(exc, "stderr", b"") or b""
        pytest.skip(f"npm install of yjs, y-websocket and ws failed: {exc}: {output.decode()[-500:]}")
    return node


def run_js(node: str, *args: str) -> Any:
    done = subprocess.run(
        [node, str(JS_DIR / "clients.mjs"), *args], cwd=JS_DIR, capture_output=True, timeout=JS_TIMEOUT_S
    )
    assert done.returncode == 0, f"node clients.mjs {args[0]}: {done.stderr.decode()[-2000:]}"
    return json.loads(done.stdout.decode().strip().splitlines()[-1])


def text_on(daemon: Daemon, doc_id: str) -> str:
    doc: Doc[Any] = Doc()
    doc.apply_update(daemon.client.get(f"/v1/docs/{doc_id}/update").content)
    return str(doc.get("text", type=Text))


def test_js_clients_on_two_datacenters_converge(nodes: list[Daemon], node_js: str) -> None:
    east, west = nodes
    result = run_js(node_js, "converge", ws_url(east), ws_url(west), "ws/js-converge", WRITE)
    assert "hello from A" in result["text"] and "hello from B" in result["text"]
    assert result["data"]["a"] == 1 and result["data"]["b"] == 2 and result["data"]["both"] in ("A", "B")
    wait_until(
        lambda: all(
            d.data("ws/js-converge") == result["data"] and text_on(d, "ws/js-converge") == result["text"]
            for d in (east, west)
        ),
        CONVERGE_TIMEOUT_S,
        "both daemons hold what both clients converged to",
    )


def test_js_clients_of_one_node_see_each_others_awareness(nodes: list[Daemon], node_js: str) -> None:
    east, _ = nodes
    result = run_js(node_js, "awareness", ws_url(east), "ws/js-awareness", WRITE)
    assert result == {"seen": {"user": {"name": "alice"}}, "removed": True}
    # Awareness is never stored.
    assert east.data("ws/js-awareness") in (None, {})


def test_js_clients_on_two_datacenters_see_each_others_awareness(nodes: list[Daemon], node_js: str) -> None:
    """Presence set by a client of east reaches a client of west and back (an ephemeral message
    between the nodes, never stored), and when east's client goes without a goodbye, east tells
    west's client at once instead of y-protocols' 30 s timeout."""
    east, west = nodes
    doc_id = "ws/js-awareness-dcs"
    result = run_js(node_js, "awareness", ws_url(east), ws_url(west), doc_id, WRITE)
    assert result == {"seen": {"user": {"name": "alice"}}, "removed": True}
    assert all(d.data(doc_id) in (None, {}) for d in (east, west))
    for daemon in (east, west):
        assert metric(daemon, 'crdtsync_ephemeral_messages_total{event="published"}') >= 1
        assert metric(daemon, 'crdtsync_ephemeral_messages_total{event="delivered"}') >= 1
        assert metric(daemon, "crdtsync_websocket_awareness_from_nodes_total") >= 1


# ------------------------------------------------------------------------------ in process


@contextlib.asynccontextmanager
async def in_process(
    awareness_timeout_s: float,
    node_id: str = "ws",
    listen: str | None = None,
    peers: tuple[str, ...] = (),
    held_bytes_max: int = 1 << 20,
) -> AsyncIterator[tuple[Node, WebSockets, int]]:
    """A node with the WebSocket endpoint on a free port of 127.0.0.1, in this process (for a timeout
    that is not configurable: y-protocols' awareness timeout)."""
    from zmq_support import free_endpoint

    node = Node(NodeConfig(node_id=node_id, listen=listen or free_endpoint(), peers=list(peers)))
    await node.start()
    sockets = WebSockets(node, awareness_timeout_s=awareness_timeout_s, held_bytes_max=held_bytes_max)

    async def handle(request: web.Request) -> web.StreamResponse:
        return await sockets.handle(request, request.match_info["doc"], writable=True)

    app = web.Application()
    app.router.add_get("/v1/ws/{doc:.+}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        yield node, sockets, site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    finally:
        sockets.close_all()
        await runner.cleanup()
        await node.close()


@contextlib.asynccontextmanager
async def two_in_process(awareness_timeout_s: float) -> AsyncIterator[list[tuple[Node, WebSockets, int]]]:
    """Two in-process nodes (`in_process`), peers of each other, once each sees the other alive."""
    from zmq_support import free_endpoint

    first, second = free_endpoint(), free_endpoint()
    async with (
        in_process(awareness_timeout_s, "ws-a", first, (second,)) as a,
        in_process(awareness_timeout_s, "ws-b", second, (first,)) as b,
    ):
        deadline = time.monotonic() + STEP_TIMEOUT_S
        while not all(any(p.state == "alive" for p in node.status().peers) for node in (a[0], b[0])):
            assert time.monotonic() < deadline, "the in-process nodes did not link"
            await asyncio.sleep(0.02)
        yield [a, b]


@pytest.mark.parametrize("where", ["same node", "another node"])
def test_an_awareness_state_that_is_not_renewed_expires(where: str) -> None:
    """A state nobody renews is removed within the timeout, on its client's node and on the others
    (each node expires states itself: a node that died tells no one)."""

    async def scenario() -> None:
        async with two_in_process(awareness_timeout_s=0.5) as nodes, aiohttp.ClientSession() as session:
            (_, _, first_port), (_, sockets, second_port) = (
                nodes[0],
                nodes[1 if where == "another node" else 0],
            )
            url = "ws://127.0.0.1:{}/v1/ws/expiry"
            async with (
                session.ws_connect(url.format(first_port)) as ws1,
                session.ws_connect(url.format(second_port)) as ws2,
            ):
                one, two = Client(ws1), Client(ws2)
                await one.sync()
                await two.sync()
                presence = Encoder()
                presence.write_var_uint(1)
                for number in (11, 1):  # client 11, clock 1
                    presence.write_var_uint(number)
                presence.write_var_string('{"user":"eleven"}')
                await ws1.send_bytes(create_awareness_message(presence.to_bytes()))
                await two.until(lambda: any(b"eleven" in update for update in two.awareness), "11's state")
                # Nobody renews it: the node removes it and says so (state null) within the timeout.
                await two.until(lambda: b"null" in two.awareness[-1], "11's removal", timeout_s=5)
                assert sockets.rooms["expiry"].awareness.awareness.states == {}
                assert ws1.close_code is None and ws2.close_code is None

    run(scenario())


def test_the_first_client_of_a_doc_on_a_node_sees_the_others_awareness_at_once() -> None:
    """A node that opens a doc for its first client asks the other nodes for their clients' states:
    the client sees them at once, not at their next renewal (15 s)."""

    async def scenario() -> None:
        async with two_in_process(awareness_timeout_s=30.0) as nodes, aiohttp.ClientSession() as session:
            url = "ws://127.0.0.1:{}/v1/ws/query"
            async with session.ws_connect(url.format(nodes[0][2])) as ws1:
                one = Client(ws1)
                await one.sync()
                presence = Encoder()
                presence.write_var_uint(1)
                for number in (12, 1):  # client 12, clock 1
                    presence.write_var_uint(number)
                presence.write_var_string('{"user":"twelve"}')
                await ws1.send_bytes(create_awareness_message(presence.to_bytes()))
                await one.until(lambda: any(b"twelve" in update for update in one.awareness), "12's state")
                async with session.ws_connect(url.format(nodes[1][2])) as ws2:
                    two = Client(ws2)
                    await two.sync()
                    await two.until(
                        lambda: any(b"twelve" in u for u in two.awareness), "12's state", timeout_s=5
                    )

    run(scenario())


def test_updates_held_for_step_2_are_bounded_on_the_node() -> None:
    """Updates held for their connections' step 2 take at most `held_bytes_max` of the node, all
    connections together: beyond, the update is refused with 4409 at once."""
    source: Doc[Any] = Doc()
    text = source.get("text", type=Text)
    text.insert(0, "offline ")
    before = source.get_state()
    text.insert(8, "x" * 200)
    later = source.get_update(before)  # over 200 bytes, lacking "offline "

    async def scenario() -> None:
        async with (
            in_process(awareness_timeout_s=30.0, held_bytes_max=len(later) + 10) as (_, sockets, port),
            aiohttp.ClientSession() as session,
        ):
            url = f"ws://127.0.0.1:{port}/v1/ws/held-bound"
            async with session.ws_connect(url) as first_ws, session.ws_connect(url) as second_ws:
                await first_ws.send_bytes(create_update_message(later))  # held: within the bound
                await wait_until_async(
                    lambda: sockets.held_bytes == len(later), STEP_TIMEOUT_S, "the first update held"
                )
                await second_ws.send_bytes(create_update_message(later))  # the node holds too much
                assert await Client(second_ws).closed() == 4409
                assert sockets.held_bytes == len(later) and sockets.counters["updates_held"] == 1
            # The first connection closed: what it held is no longer counted.
            await wait_until_async(lambda: sockets.held_bytes == 0, STEP_TIMEOUT_S, "the held bytes released")

    run(scenario())


def metric(daemon: Daemon, name: str) -> float:
    """The value of an unlabelled series of the daemon's /metrics."""
    for line in daemon.client.get("/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} is not in /metrics")


def test_a_slow_client_is_closed_and_the_others_keep_up(pool: DaemonPool) -> None:
    """On a daemon with small [websocket] limits: a client that stops reading fills the kernel's socket
    buffers, then its send queue, and is closed with 4008 (or dropped when it does not even take the
    close frame) while a client of the same doc that reads gets every change, and the doc has them
    all. A frame over the configured bound closes its connection with 1009, a doc over it syncs in
    messages within it, connections over `connections_max` are refused with 503, and the doc is
    unloaded `linger_s` after its last connection closed."""
    daemon = pool.new(
        "slow",
        websocket={
            "frame_bytes_max": 64 << 10,
            "receive_bytes_max": 64 << 10,
            "send_queue_bytes_max": 256 << 10,
            "close_timeout_s": 0.5,
            "linger_s": 1.0,
            "connections_max": 3,
        },
    )
    start_all([daemon])
    doc_id = "ws/slow"
    chunk = "x" * (60 << 10)
    bound_bytes = (64 << 10) + 64  # the clients refuse larger messages: a message over 64 KiB and its header
    writes_max = 2000

    async def scenario() -> int:
        url = ws_url(daemon, doc_id)
        async with aiohttp.ClientSession() as session:
            async with (
                session.ws_connect(url) as slow_ws,
                session.ws_connect(url, max_msg_size=bound_bytes) as fast_ws,
            ):
                slow, fast = Client(slow_ws), Client(fast_ws)
                await slow.sync()
                await fast.sync()
                # connections_max (3): a third connection is taken, a fourth refused before the upgrade.
                async with session.ws_connect(url):
                    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                        await session.ws_connect(url)
                    assert refused.value.status == 503
                target: list[int] = []

                async def read_fast() -> None:
                    while True:
                        message = await fast.receive_one(STEP_TIMEOUT_S)
                        assert message.type == aiohttp.WSMsgType.BINARY, message
                        if target and len(data_of(fast.doc)) == target[0]:
                            return

                reader = asyncio.create_task(read_fast())
                writes = 0
                deadline = time.monotonic() + 30
                with httpx.Client(base_url=daemon.url, timeout=STEP_TIMEOUT_S) as http:
                    # The slow client reads nothing from here on; writes go through the HTTP API.
                    while (
                        await asyncio.to_thread(metric, daemon, "crdtsync_websocket_closed_slow_total") == 0
                    ):
                        assert writes < writes_max and time.monotonic() < deadline, (
                            "the slow client stays open"
                        )
                        for _ in range(8):
                            response = await asyncio.to_thread(
                                http.put, f"/v1/docs/{doc_id}/keys/k{writes}", json=chunk
                            )
                            assert response.is_success, response.text
                            writes += 1
                    # One more write, after the reader knows the total: it returns when it has it.
                    target.append(writes + 1)
                    response = await asyncio.to_thread(http.put, f"/v1/docs/{doc_id}/keys/k{writes}", json=1)
                    assert response.is_success, response.text
                    writes += 1
                await asyncio.wait_for(reader, STEP_TIMEOUT_S)
                # The slow client's buffers hold the close frame back: the node drops its TCP
                # connection after close_timeout_s, and only the fast client stays.
                assert await slow.closed() in (CLOSE_SLOW, 1006)  # 1006: no close frame came
                await asyncio.to_thread(
                    wait_until,
                    lambda: metric(daemon, "crdtsync_websocket_connections") == 1,
                    STEP_TIMEOUT_S,
                    "the slow connection to end",
                )
                assert fast_ws.close_code is None
                # A frame over the configured bound closes only its own connection.
                async with session.ws_connect(url, max_msg_size=bound_bytes) as big_ws:
                    big = Client(big_ws)
                    await big.sync()  # the doc (MBs) comes in messages within the bound
                    assert len(data_of(big.doc)) == writes
                    await big_ws.send_bytes(b"\x00\x02" + b"\x00" * (65 << 10))
                    assert await big.closed() == 1009
            return writes

    writes = run(scenario())
    assert len(daemon.data(doc_id) or {}) == writes
    assert metric(daemon, "crdtsync_websocket_closed_slow_total") == 1
    assert metric(daemon, "crdtsync_websocket_refused_over_max_total") == 1
    # The handler counts the oversized frame once it has seen its connection end.
    wait_until(
        lambda: metric(daemon, "crdtsync_websocket_closed_too_large_total") == 1,
        STEP_TIMEOUT_S,
        "the oversized frame counted",
    )
    # Every client left: the doc stays loaded for linger_s (1 s), then is unloaded.
    wait_until(
        lambda: metric(daemon, "crdtsync_websocket_docs") == 0, STEP_TIMEOUT_S, "the doc to be unloaded"
    )
    daemon.kill()


class JsSteps:
    """A clients.mjs scenario that talks with the test: it prints one JSON line per step and waits
    for the test's lines on stdin (the script exits when one of its own deadlines passes)."""

    def __init__(self, node_js: str, *args: str, describe: Any = lambda: "") -> None:
        """`describe()`: what to add to a failure's message (the daemons' logs)."""
        self.describe = describe
        self.process = subprocess.Popen(
            [node_js, str(JS_DIR / "clients.mjs"), *args],
            cwd=JS_DIR,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def step(self, expected: str) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        stderr = self.process.stderr
        assert line, (
            f"clients.mjs ended before {expected!r}: {stderr.read() if stderr else ''}{self.describe()}"
        )
        reply: dict[str, Any] = json.loads(line)
        assert reply["step"] == expected, reply
        return reply

    def say(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def finish(self) -> None:
        """Wait for a clean exit (after the last step); kill a script still running."""
        try:
            code = self.process.wait(timeout=JS_TIMEOUT_S)
            stderr = self.process.stderr.read() if self.process.stderr else ""
            assert code == 0, f"clients.mjs exited with {code}: {stderr[-2000:]}"
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()


def test_a_js_provider_resyncs_after_its_node_is_killed_and_restarted(pool: DaemonPool, node_js: str) -> None:
    """kill -9 of the node under a connected y-websocket provider, edits while it is down, a restart:
    the provider reconnects and the node ends with everything the client has."""
    daemon = pool.new("restarting")
    start_all([daemon])
    doc_id = "ws/js-reconnect"
    js = JsSteps(node_js, "reconnect", ws_url(daemon), doc_id)
    try:
        js.step("edited")
        daemon.kill()
        js.say("killed")
        js.step("offline")
        start_all([daemon])
        js.say("restarted")
        result = js.step("done")
    finally:
        js.finish()
    assert result["text"] == "before the kill. while the node was down." and result["data"] == {
        "offline": True
    }
    wait_until(
        lambda: text_on(daemon, doc_id) == result["text"] and daemon.data(doc_id) == result["data"],
        CONVERGE_TIMEOUT_S,
        lambda: f"the restarted node holds the client's doc: {text_on(daemon, doc_id)!r}",
    )


def test_js_providers_on_two_datacenters_edit_through_a_kill_of_one_node(
    pool: DaemonPool, node_js: str
) -> None:
    """npm providers on a node of each datacenter edit concurrently (every 10 ms, at seeded random
    places) while one node is killed -9 and restarted; its provider reconnects, and both providers
    and both nodes end with byte-equal text and equal data."""
    seed = random.randrange(1 << 31)
    print(f"seed {seed} (clients.mjs killed ... {seed} replays the clients' edits)")
    east = pool.new("kill-east", dc="east")
    west = pool.new("kill-west", dc="west")
    east.peers, west.peers = [west.listen], [east.listen]
    start_all([east, west])
    wait_until(lambda: east.peers_up() and west.peers_up(), CONVERGE_TIMEOUT_S, "peers up")
    doc_id = "ws/js-kill-dcs"
    js = JsSteps(
        node_js,
        "killed",
        ws_url(east),
        ws_url(west),
        doc_id,
        str(seed),
        describe=lambda: f"\neast's log:\n{east.log_tail()}\nwest's log:\n{west.log_tail()}",
    )
    try:
        js.step("editing")
        east.kill()
        js.say("killed")
        js.step("offline")
        start_all([east])
        js.say("restarted")
        result = js.step("done")
        text = result["text"].encode()
        wait_until(
            lambda: all(
                text_on(d, doc_id).encode() == text and d.data(doc_id) == result["data"] for d in (east, west)
            ),
            CONVERGE_TIMEOUT_S,
            lambda: (
                f"both nodes hold the clients' text ({len(text)} bytes): {[len(text_on(d, doc_id)) for d in (east, west)]}"
            ),
        )
        js.say("stored")
    finally:
        js.finish()
    assert result["edits"] >= 80, result["edits"]
    # The provider's edits made while it reconnected went out before its sync step 2 and were held
    # for it, not refused: it never had to reconnect again.
    print(
        {name: metric(east, f"crdtsync_websocket_{name}_total") for name in ("updates_held", "closed_resync")}
    )
    assert metric(east, "crdtsync_websocket_closed_resync_total") == 0
    east.kill()
    west.kill()


def test_a_js_provider_with_offline_edits_larger_than_a_frame_syncs(
    nodes: list[Daemon], node_js: str
) -> None:
    """5 MB of offline edits, more than the node's frames (1 MiB) and a peer's update bound (4 MiB):
    the provider's sync step 2 is taken (within receive_bytes_max), applied in runs of about a frame,
    and replicated to the other datacenter; the provider is never closed."""
    east, west = nodes
    doc_id = "ws/js-offline"
    too_large_before = metric(east, "crdtsync_websocket_closed_too_large_total")
    js = JsSteps(node_js, "offline", ws_url(east), doc_id, WRITE, str(5_000_000))
    try:
        keys = js.step("reconnected")["keys"]
        assert keys == 50
        expected = {f"k{i}": f"{i}".ljust(100_000, ".") for i in range(keys)}
        wait_until(
            lambda: all(d.data(doc_id) == expected for d in (east, west)),
            CONVERGE_TIMEOUT_S,
            lambda: f"both nodes hold the offline edits: {[len(d.data(doc_id) or {}) for d in (east, west)]}",
        )
        js.say("stored")
        result = js.step("done")
    finally:
        js.finish()
    assert result["closes"] == 0 and result["connected"], result
    assert all(text_on(d, doc_id) == "written offline" for d in (east, west))
    assert metric(east, "crdtsync_websocket_closed_too_large_total") == too_large_before


def test_an_update_without_its_dependencies_asks_the_client_to_resync(nodes: list[Daemon]) -> None:
    """An update whose dependencies the node does not hold closes with 4409; the client's next
    connection sends everything in its sync step 2 and the node ends with all of it."""
    east, west = nodes
    source: Doc[Any] = Doc()
    text = source.get("text", type=Text)
    text.insert(0, "ab")
    before = source.get_state()
    text.insert(2, "c")
    later = source.get_update(before)  # depends on "ab", which the node never got

    async def scenario() -> None:
        url = ws_url(east, "ws/resync") + f"?token={WRITE}"
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(url) as ws:
                client = Client(ws)
                await client.sync()
                await ws.send_bytes(create_update_message(later))
                assert await client.closed() == 4409
            async with session.ws_connect(url) as ws:
                client = Client(ws)
                client.doc = source
                await client.sync()  # the node's step 1 is answered with everything it lacks

    run(scenario())
    wait_until(
        lambda: all(text_on(d, "ws/resync") == "abc" for d in (east, west)),
        CONVERGE_TIMEOUT_S,
        lambda: f"both nodes hold 'abc': {[text_on(d, 'ws/resync') for d in (east, west)]}",
    )


def test_an_update_sent_before_the_clients_step_2_waits_for_what_it_brings(nodes: list[Daemon]) -> None:
    """A provider that edits while it reconnects sends those edits before its sync step 2 with the
    offline edits they depend on: the node holds them until the step 2 instead of closing (4409)."""
    east, west = nodes
    source: Doc[Any] = Doc()
    text = source.get("text", type=Text)
    text.insert(0, "offline ")
    before = source.get_state()
    text.insert(8, "then typed while reconnecting")
    later = source.get_update(before)
    held_before = metric(east, "crdtsync_websocket_updates_held_total")

    async def scenario() -> None:
        url = ws_url(east, "ws/held") + f"?token={WRITE}"
        async with aiohttp.ClientSession() as session, session.ws_connect(url) as ws:
            client = Client(ws)
            client.doc = source
            await ws.send_bytes(create_update_message(later))  # before the node's step 1 is answered
            await client.sync()  # answers it with a step 2 of everything
            client.synced = False
            await client.sync()  # answered in order: the held update was handled, and nothing closed
            assert ws.close_code is None

    run(scenario())
    assert metric(east, "crdtsync_websocket_updates_held_total") == held_before + 1
    wait_until(
        lambda: all(text_on(d, "ws/held") == str(text) for d in (east, west)),
        CONVERGE_TIMEOUT_S,
        lambda: f"both nodes hold the client's text: {[text_on(d, 'ws/held') for d in (east, west)]}",
    )


# ------------------------------------------------------------------------------ a browser

EXAMPLE_PAGE = Path(__file__).resolve().parents[2] / "examples" / "browser"


class QuietFiles(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def test_a_browser_page_and_a_python_client_on_another_node_edit_one_text(
    nodes: list[Daemon], node_js: str, chromium: str, tmp_path: Path
) -> None:
    """examples/browser (bundled with esbuild, served from another origin, with a token) in headless
    Chromium on one node; a Python client on the other datacenter's node. Each sees the other's text."""
    east, west = nodes
    doc_id = "ws/browser"
    site = tmp_path / "site"
    site.mkdir()
    shutil.copyfile(EXAMPLE_PAGE / "index.html", site / "index.html")
    bundled = subprocess.run(
        [str(JS_DIR / "node_modules" / ".bin" / "esbuild"), str(EXAMPLE_PAGE / "app.js"), "--bundle",
         "--format=esm", f"--outfile={site / 'bundle.js'}"],
        env={**os.environ, "NODE_PATH": str(JS_DIR / "node_modules")},
        capture_output=True, timeout=60, check=False,
    )  # fmt: skip
    assert bundled.returncode == 0, bundled.stderr.decode()[-2000:]
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietFiles, directory=str(site)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    browser = Browser(chromium, tmp_path / "profile")
    try:
        browser.open(
            f"http://127.0.0.1:{server.server_port}/index.html?ws={ws_url(east)}&doc={doc_id}"
            f"&token={WRITE}&name=chromium"
        )
        wait_until(
            lambda: browser.evaluate("document.body.dataset.synced") == "true",
            CONVERGE_TIMEOUT_S,
            lambda: f"the page synced: {browser.dom()[-2000:]}",
        )

        async def python_edit() -> None:
            async with aiohttp.ClientSession() as session:
                url = ws_url(west, doc_id) + f"?token={WRITE}"
                async with session.ws_connect(url) as ws:
                    client = Client(ws)
                    await client.sync()
                    before = client.doc.get_state()
                    client.doc.get("text", type=Text).insert(0, "from python on west. ")
                    await ws.send_bytes(create_update_message(client.doc.get_update(before)))
                    # A step 1 answered: the node handled the update before this connection closes.
                    await client.sync()

        run(python_edit())
        area = "document.getElementById('text').value"
        wait_until(
            lambda: browser.evaluate(area) == "from python on west. ",
            CONVERGE_TIMEOUT_S,
            lambda: f"the page shows the Python edit: {browser.evaluate(area)!r}",
        )
        browser.evaluate(
            "(() => { const area = document.getElementById('text'); area.value += 'typed in chromium on east.';"
            " area.dispatchEvent(new Event('input')) })()"
        )
        wait_until(
            lambda: text_on(west, doc_id) == "from python on west. typed in chromium on east.",
            CONVERGE_TIMEOUT_S,
            lambda: f"west holds the page's edit: {text_on(west, doc_id)!r}",
        )
        screenshot = tmp_path / "browser.png"
        browser.screenshot(screenshot)
        assert screenshot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        print(f"screenshot: {screenshot}")
    finally:
        browser.close()
        server.shutdown()
        server.server_close()
