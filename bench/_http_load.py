"""The load generator of `bench.http`: keep-alive HTTP/1.1 clients on raw asyncio streams, in a process
of its own so that its CPU is not the daemon's.

    python -m bench._http_load --port P --clients N --duration-s S --route health|put|batch
        [--keys-per-request K --docs-per-request D]

It opens `clients` connections, prints `{"ev": "ready"}`, waits for a line on stdin, sends requests
back to back on every connection for `duration_s`, and prints `{"ev": "done", ...}`: requests, keys
written, latencies in ms (sorted, sampled to at most LATENCY_SAMPLES_MAX), its own CPU seconds and
the first error answer, if any. A hand-written client (an asyncio Protocol per connection) rather than
aiohttp's or httpx's: it costs a fraction of their CPU per request, so that the daemon, not the
generator, is what saturates; `bench.http` prints the generator's CPU per request to show it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import resource
import sys
import time
from typing import Any

DOCS = 1000
KEYS_PER_DOC = 100
LATENCY_SAMPLES_MAX = 200_000
CONNECT_TIMEOUT_S = 10.0
REQUEST_TIMEOUT_S = 30.0


class Load:
    def __init__(self, route: str, keys_per_request: int, docs_per_request: int = 1) -> None:
        self.route = route
        self.keys_per_request = keys_per_request
        self.docs_per_request = docs_per_request
        self.sent = 0
        self.ok = 0
        self.keys = 0
        self.latencies_ms: list[float] = []
        self.first_error: str | None = None

    def request(self) -> bytes:
        """The next request: a key of a doc, round robin over DOCS docs and KEYS_PER_DOC keys each."""
        index = self.sent
        self.sent += 1
        if self.route == "health":
            return b"GET /health HTTP/1.1\r\nHost: bench\r\n\r\n"
        doc, key = index % DOCS, (index // DOCS) % KEYS_PER_DOC
        if self.route == "put":
            body = b'{"n": %d}' % index
            head = b"PUT /v1/docs/bench/d%d/keys/k%d HTTP/1.1\r\nHost: bench\r\nContent-Length: %d\r\n\r\n"
            return head % (doc, key, len(body)) + body
        spread = self.docs_per_request
        writes = [
            {
                "doc": f"bench/d{(doc + 7 * (i % spread)) % DOCS}",
                "key": f"k{(key + i // spread) % KEYS_PER_DOC}",
                "value": {"n": index},
            }
            for i in range(self.keys_per_request)
        ]
        body = json.dumps({"writes": writes}).encode()
        head = b"POST /v1/batch HTTP/1.1\r\nHost: bench\r\nContent-Length: %d\r\n\r\n"
        return head % len(body) + body


class Connection(asyncio.Protocol):
    """One keep-alive connection sending its next request when the last answer is complete: a
    Protocol, not streams, as a coroutine and a `wait_for` per request cost more CPU than the daemon's
    cheapest route."""

    def __init__(
        self, load: Load, stop_at: list[float], done: asyncio.Future[None], sample_every: int
    ) -> None:
        self.load = load
        self.stop_at = stop_at
        self.done = done
        self.sample_every = sample_every
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.started = 0.0
        self.answers = 0

    def itself(self) -> Connection:
        """The protocol factory `create_connection` calls: this connection, made beforehand."""
        return self

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def send_next(self) -> None:
        assert self.transport is not None
        if time.perf_counter() >= self.stop_at[0]:
            self.transport.close()
            if not self.done.done():
                self.done.set_result(None)
            return
        self.started = time.perf_counter()
        self.transport.write(self.load.request())

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            head_end = self.buffer.find(b"\r\n\r\n")
            if head_end < 0:
                return
            head = self.buffer[:head_end]
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.lower() == b"content-length":
                    length = int(value)
            if len(self.buffer) < head_end + 4 + length:
                return
            body = self.buffer[head_end + 4 : head_end + 4 + length]
            self.buffer = self.buffer[head_end + 4 + length :]
            self.answered(int(head[9:12]), body)

    def answered(self, status: int, body: bytes) -> None:
        elapsed_ms = (time.perf_counter() - self.started) * 1000.0
        load = self.load
        if status != 200:
            load.first_error = load.first_error or f"{status} {body[:300]!r}"
        else:
            load.ok += 1
            load.keys += load.keys_per_request
            self.answers += 1
            if self.answers % self.sample_every == 0:
                load.latencies_ms.append(elapsed_ms)
        self.send_next()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_exception(ConnectionError(f"the daemon closed a connection: {exc}"))


async def run(args: argparse.Namespace) -> dict[str, Any]:
    batch = args.route == "batch"
    load = Load(args.route, args.keys_per_request if batch else 1, args.docs_per_request)
    loop = asyncio.get_running_loop()
    stop_at = [0.0]
    connections: list[Connection] = []
    for _ in range(args.clients):
        connection = Connection(load, stop_at, loop.create_future(), args.sample_every)
        await asyncio.wait_for(
            loop.create_connection(connection.itself, "127.0.0.1", args.port), CONNECT_TIMEOUT_S
        )
        connections.append(connection)
    print(json.dumps({"ev": "ready"}), flush=True)
    await loop.run_in_executor(None, sys.stdin.readline)
    cpu_before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    stop_at[0] = started + args.duration_s
    for connection in connections:
        connection.send_next()
    await asyncio.wait_for(
        asyncio.gather(*(c.done for c in connections)), args.duration_s + REQUEST_TIMEOUT_S
    )
    elapsed_s = time.perf_counter() - started
    cpu_after = resource.getrusage(resource.RUSAGE_SELF)
    cpu_s = cpu_after.ru_utime + cpu_after.ru_stime - cpu_before.ru_utime - cpu_before.ru_stime
    latencies = sorted(load.latencies_ms)
    if len(latencies) > LATENCY_SAMPLES_MAX:
        latencies = sorted(random.Random(0).sample(latencies, LATENCY_SAMPLES_MAX))
    return {
        "ev": "done",
        "requests": load.ok,
        "keys": load.keys,
        "errors": load.sent - load.ok,
        "first_error": load.first_error,
        "elapsed_s": elapsed_s,
        "loader_cpu_s": cpu_s,
        "latencies_ms": latencies,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--clients", type=int, required=True)
    parser.add_argument("--duration-s", type=float, required=True)
    parser.add_argument("--route", choices=("health", "put", "batch"), required=True)
    parser.add_argument("--keys-per-request", type=int, default=1)
    parser.add_argument("--docs-per-request", type=int, default=1)
    parser.add_argument("--sample-every", type=int, default=1)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(run(args))), flush=True)


if __name__ == "__main__":
    main()
