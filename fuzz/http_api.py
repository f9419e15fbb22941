"""Coverage-guided fuzzing of the daemon's HTTP API: every input becomes one request to the real
aiohttp app, served on 127.0.0.1 by a node with a SQLite store and a read and a write token.

A finding is: a 5xx answer (but the documented `503 too_many_watchers`), an error logged while
serving (an exception that escaped a handler), no answer within DEADLINE_S, a 4xx answer after
which the node's docs changed (the Merkle root or the number of docs), or a 2xx/3xx answer to a
request without the token its method needs.

    python -m fuzz.http_api --minutes 5

An input is the request in HTTP's own layout, which keeps the corpus readable and lets libFuzzer's
mutations land on one part at a time:

    METHOD /path?query
    Header: value
    (blank line)
    body

The node keeps its docs from one input to the next, so a finding may need the inputs before it:
replaying one input alone starts from the docs the target seeds (SEED_DOCS).
"""

from __future__ import annotations

import asyncio
import logging
import re
import sqlite3
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from multidict import CIMultiDict
from pycrdt import Doc, Map
from yarl import URL

from crdtsync import Node, NodeConfig
from crdtsync.core.effects import Persist
from crdtsync.daemon.config import DaemonConfig, HttpConfig, Token, parse_http_listen, token_digest
from crdtsync.daemon.http import Api
from crdtsync.daemon.http_input import b64url
from crdtsync.store.sqlite import SqliteStore
from crdtsync.testing.cluster import free_port
from fuzz._runner import Fuzzable, Target, cli_main

READ_TOKEN = "fuzz-read-token"
WRITE_TOKEN = "fuzz-write-token"
TOKENS = (
    Token(name="reader", scope="read", sha256=token_digest(READ_TOKEN)),
    Token(name="writer", scope="write", sha256=token_digest(WRITE_TOKEN)),
)
BODY_BYTES_MAX = 2048
"""Small, so that `413 too_large` is within reach of an input of at most max_len bytes."""
DEADLINE_S = 5.0
SEED_DOCS = {"notes": {"title": "seed", "n": 1}, "tenants/acme/flags": {"new-router": True}}
METHOD_RE = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,16}$")
HEADER_NAME_RE = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}$")
# What may stand in a request target as sent: every other byte is percent-encoded, so that the
# request always reaches the server and the server is what decides about it.
TARGET_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~!$&'()*+,;=:@/?%")
CLIENT_SET_HEADERS = frozenset(
    {
        "content-length",
        "transfer-encoding",
        "host",
        "connection",
        "keep-alive",
        "expect",
        "upgrade",
        "te",
        "trailer",
    }
)
"""Headers the client owns: framing and connection handling, which the fuzzer would only break."""
READ_METHODS = frozenset({"GET", "HEAD"})


class HttpFindingError(Exception):
    """What the API did wrong with one request: the finding the fuzzer saves."""


@dataclass(frozen=True)
class Request:
    method: str
    target: str
    headers: tuple[tuple[str, str], ...]
    body: bytes

    def __str__(self) -> str:
        headers = "".join(f"; {name}: {value[:80]}" for name, value in self.headers)
        return f"{self.method} {self.target[:200]}{headers}; {len(self.body)}-byte body {self.body[:80]!r}"


def parse(data: bytes) -> Request:
    head, _, body = data.partition(b"\n\n")
    first, *lines = head.split(b"\n")
    method_bytes, _, target_bytes = first.strip().partition(b" ")
    method = method_bytes.decode("latin-1").upper()  # as the client sends it
    if not METHOD_RE.match(method):
        method = "GET"
    if not target_bytes.startswith(b"/"):
        target_bytes = b"/" + target_bytes
    target = "".join(chr(byte) if byte in TARGET_SAFE else f"%{byte:02X}" for byte in target_bytes)
    headers = []
    for line in lines:
        name_bytes, colon, value_bytes = line.partition(b":")
        name = name_bytes.decode("latin-1").strip()
        value = value_bytes.decode("latin-1").strip()
        if not colon or not HEADER_NAME_RE.match(name) or name.lower() in CLIENT_SET_HEADERS:
            continue
        if any((ord(char) < 0x20 and char != "\t") or ord(char) == 0x7F for char in value):
            continue  # the client refuses control characters in a header value
        headers.append((name, value))
    return Request(method, target, tuple(headers), body)


def render(request: Request) -> bytes:
    head = [f"{request.method} {request.target}", *(f"{name}: {value}" for name, value in request.headers)]
    return "\n".join(head).encode("latin-1") + b"\n\n" + request.body


def authorized(request: Request) -> bool:
    """Whether the request carries the token its method needs: the oracle the server's answer is
    checked against, written apart from the server's own check."""
    needed = {WRITE_TOKEN} if request.method not in READ_METHODS else {READ_TOKEN, WRITE_TOKEN}
    for name, value in request.headers:
        scheme, _, token = value.strip().partition(" ")
        if name.lower() == "authorization" and scheme.lower() == "bearer" and token.strip() in needed:
            return True
    return False


# ---------------------------------------------------------------------------------------------------------
# Seeds: valid requests on every route, and the usual ways to get one wrong


def small_backup() -> bytes:
    """A real backup holding one doc, rewritten with 512-byte pages to fit an input (4.6 KB, not 28)."""
    doc: Doc[Any] = Doc(client_id=21)
    doc.get("data", type=Map)["restored"] = 1
    with tempfile.TemporaryDirectory() as scratch:
        store = SqliteStore(scratch, node_id="seed", durability="none")
        try:
            store.append([Persist((("restored/doc", doc.get_update()),))])
            store.backup(f"{scratch}/backup.db")
        finally:
            store.close()
        db = sqlite3.connect(f"{scratch}/backup.db", isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=DELETE")
            db.execute("PRAGMA page_size=512")
            db.execute("VACUUM")
        finally:
            db.close()
        return Path(f"{scratch}/backup.db").read_bytes()


def seed_requests() -> list[bytes]:
    write = (("Authorization", f"Bearer {WRITE_TOKEN}"),)
    read = (("Authorization", f"Bearer {READ_TOKEN}"),)
    json_body = (*write, ("Content-Type", "application/json"))
    whole: Doc[Any] = Doc(client_id=22)
    whole.get("data", type=Map)["fresh"] = "whole state"
    unknown_base = b64url(whole.get_state())  # a state this node never held: 409 behind
    requests = [
        Request("GET", "/health", (), b""),
        Request("HEAD", "/health", (), b""),
        Request("GET", "/metrics", read, b""),
        Request("GET", "/v1/status", write, b""),
        Request("HEAD", "/v1/status", read, b""),
        Request("GET", "/v1/docs", read, b""),
        Request("GET", "/v1/docs?prefix=tenants/&limit=1&after=a", read, b""),
        Request("GET", "/v1/docs?limit=0", read, b""),
        Request("GET", "/v1/docs/notes", read, b""),
        Request("GET", "/v1/docs/no/such/doc", read, b""),
        Request("PATCH", "/v1/docs/notes", json_body, b'{"a": 1, "b c": [true, null, "x"], "d": {"e": 2.5}}'),
        Request("PATCH", "/v1/docs/notes", json_body, b"[1, 2]"),
        Request("PATCH", "/v1/docs/notes", json_body, b'{"bad/key": 1}'),
        Request("GET", "/v1/docs/notes/keys/title", read, b""),
        Request("GET", "/v1/docs/notes/keys/missing", read, b""),
        Request("PUT", "/v1/docs/notes/keys/title", json_body, b'"new title"'),
        Request(
            "PUT", "/v1/docs/tenants/acme/flags/keys/with%20space", json_body, b'{"x": [1, 2, {"y": null}]}'
        ),
        Request("PUT", "/v1/docs/notes/keys/big", json_body, b"9007199254740993"),
        Request("PUT", "/v1/docs/notes/keys/nan", json_body, b"NaN"),
        Request("PUT", "/v1/docs/notes/keys/empty", json_body, b""),
        Request("PUT", "/v1/docs/notes/keys/deep", json_body, b"[" * 70 + b"]" * 70),
        Request("PUT", "/v1/docs/new/doc/keys/k", read, b"1"),
        Request("PUT", "/v1/docs/new/doc/keys/k", (), b"1"),
        Request("PUT", "/v1/docs/a//b/keys/k", json_body, b"1"),
        Request("PUT", "/v1/docs/notes/keys/k", json_body, b'"' + b"x" * (BODY_BYTES_MAX + 10) + b'"'),
        Request("DELETE", "/v1/docs/notes/keys/n", write, b""),
        Request("DELETE", "/v1/docs/notes/keys/missing", write, b""),
        Request("GET", "/v1/docs/notes/update", read, b""),
        Request("GET", "/v1/docs/notes/update?sv=AA", read, b""),
        Request("GET", "/v1/docs/notes/update?sv=!!", read, b""),
        Request("POST", "/v1/docs/fresh/doc/update", write, whole.get_update()),
        Request("POST", "/v1/docs/notes/update?sv=AA", write, whole.get_update()),
        Request("POST", f"/v1/docs/notes/update?sv={unknown_base}", write, whole.get_update()),
        Request("POST", "/v1/docs/notes/update?sv=AQID", write, whole.get_update()),
        Request("POST", "/v1/docs/notes/update", write, b"\x01\x01\xff\xff\xff\x0f"),
        Request("POST", "/v1/docs/notes/update", write, b""),
        Request("GET", "/v1/docs/notes/watch", read, b""),
        Request("GET", "/v1/docs/no/such/doc/watch", read, b""),
        Request("POST", "/v1/docs/notes/watch", write, b""),
        Request("POST", "/v1/backup", write, b""),
        Request("POST", "/v1/restore", write, small_backup()),
        Request("POST", "/v1/restore", write, b"SQLite format 3\x00not a database"),
        Request("POST", "/v1/restore", write, b""),
        Request("DELETE", "/v1/docs/notes", write, b""),
        Request("GET", "/nowhere", read, b""),
        Request("GET", "/v1/status", (("Authorization", "Bearer wrong"),), b""),
        Request("GET", "/v1/status", (("Authorization", "Basic Zm9vOmJhcg=="),), b""),
    ]
    return [render(request) for request in requests]


# ---------------------------------------------------------------------------------------------------------
# The server and the client, on one event loop for the whole run


class _ErrorLog(logging.Handler):
    """Collects the errors logged while a request is served: the API logs an exception that reached
    its error middleware, and aiohttp one that escaped the app. aiohttp also logs at ERROR each
    malformed request it refuses with a 4xx (an HttpProcessingError): those are not findings."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        error = record.exc_info[1] if record.exc_info else None
        if record.name.startswith("aiohttp") and isinstance(error, HttpProcessingError):
            return
        self.records.append(self.format(record))


class Server:
    def __init__(self, scratch: Path) -> None:
        self.loop = asyncio.new_event_loop()
        self.errors = _ErrorLog()
        for name in ("crdtsync", "aiohttp"):
            logging.getLogger(name).addHandler(self.errors)
        self.node = Node(
            NodeConfig(
                node_id="fuzz-http",
                listen=f"tcp://127.0.0.1:{free_port()}",
                data_dir=str(scratch / "node"),
                durability="none",
            )
        )
        http = HttpConfig(listen=f"127.0.0.1:{free_port()}", body_bytes_max=BODY_BYTES_MAX)
        self.api = Api(self.node, DaemonConfig(node=self.node.config, http=http, tokens=TOKENS))
        self.base = f"http://{http.listen}"
        self.loop.run_until_complete(self._start(http.listen))

    async def _start(self, listen: str) -> None:
        await self.node.start()
        for doc_id, data in SEED_DOCS.items():
            doc = await self.node.open(doc_id)
            doc.get("data", type=Map).update(data)
            self.node.release(doc_id)
        await self.node.flush()
        self.runner = web.AppRunner(self.api.app(), access_log=None, handle_signals=False)
        await self.runner.setup()
        host, port = parse_http_listen(listen)
        await web.TCPSite(self.runner, host, port).start()
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None))

    def is_open(self, request: Request) -> bool:
        """`GET /health` needs no token: the path as the server decodes it."""
        return (
            request.method in READ_METHODS and URL(self.base + request.target, encoded=True).path == "/health"
        )

    def state(self) -> tuple[bytes, int]:
        return self.node.merkle_root(), self.node.status().docs

    async def send(self, request: Request) -> tuple[int, bytes]:
        url = URL(self.base + request.target, encoded=True)
        async with self.session.request(
            request.method,
            url,
            headers=CIMultiDict(request.headers),
            data=request.body or None,
            allow_redirects=False,
            skip_auto_headers=("Content-Type", "User-Agent", "Accept-Encoding"),
        ) as response:
            if response.content_type == "text/event-stream":
                # A watch stream never ends by itself: its first event is the answer.
                body = await response.content.readuntil(b"\n\n")
                self.api.close_streams()
            else:
                body = await response.read()
            return response.status, body

    def exchange(self, request: Request) -> tuple[int, bytes]:
        """Send `request` and wait for the answer, at most DEADLINE_S."""
        return self.loop.run_until_complete(asyncio.wait_for(self.send(request), DEADLINE_S))

    @contextmanager
    def errors_logged(self) -> Iterator[list[str]]:
        self.errors.records.clear()
        yield self.errors.records

    def close(self) -> None:
        """Stop serving (the fuzzer never does: libFuzzer ends the process; tests do)."""
        self.api.close_streams()
        self.loop.run_until_complete(self._stop())
        self.loop.close()
        for name in ("crdtsync", "aiohttp"):
            logging.getLogger(name).removeHandler(self.errors)

    async def _stop(self) -> None:
        await self.session.close()
        await self.runner.cleanup()
        await self.node.close()


def check(server: Server, data: bytes) -> None:
    request = parse(data)
    before = server.state()
    with server.errors_logged() as errors:
        try:
            status, body = server.exchange(request)
        except TimeoutError:
            raise HttpFindingError(f"no answer within {DEADLINE_S} s to {request}") from None
        except aiohttp.InvalidURL:
            return  # the client would not send it (the server never saw it)
        except aiohttp.ClientResponseError as exc:
            # An answer the client could not read (aiohttp's own 400 to a HEAD comes with a body):
            # its status still counts.
            status, body = exc.status, b""
        except aiohttp.ClientConnectionError as exc:
            raise HttpFindingError(f"the server dropped the connection ({exc!r}) on {request}") from exc
        if errors:
            raise HttpFindingError(f"{len(errors)} errors logged while serving {request}:\n{errors[0]}")
    if status >= 500 and not (status == 503 and b'"too_many_watchers"' in body):
        raise HttpFindingError(f"{status} {body[:300]!r} to {request}")
    if 400 <= status < 500 and server.state() != before:
        raise HttpFindingError(f"the docs changed on a {status} {body[:200]!r} to {request}")
    if status < 400 and not authorized(request) and not server.is_open(request):
        raise HttpFindingError(f"{status} without the token {request.method} needs: {request}")


def make_target(scratch: Path, options: frozenset[str] = frozenset()) -> Fuzzable:
    server = Server(scratch)
    return lambda data: check(server, data)


TARGET = Target(
    name="http_api",
    description=__doc__.split("\n\n")[0],
    seeds=seed_requests,
    make=make_target,
    max_len=8 * 1024,
)


def main(argv: list[str] | None = None) -> int:
    return cli_main(TARGET, argv)


if __name__ == "__main__":
    sys.exit(main())
