"""A TCP fault proxy between local `crdtsync serve` daemons, driven per directed link.

Every daemon on 127.0.0.1 gets its own source address 127.0.0.N (`source_host`: all of 127.0.0.0/8
is loopback on Linux, and ZeroMQ binds each outgoing connection's source to it) and advertises the
proxy's listeners instead of its own sockets (`advertise` for its request socket, `publish_advertise`
for its PUB socket). So every replication byte, requests and the PUB/SUB stream alike, crosses the
proxy, and the proxy knows the link of each byte from the connection's source address and the
listener it came in on: bytes from the client to the daemon travel link (client, daemon), the answers
and the published stream travel (daemon, client).

Per directed link (`LinkFaults`): latency with jitter, a bandwidth cap, a blackhole (the bytes are
held, not dropped, as TCP would keep retransmitting them through a partition: nothing arrives until
the link heals, and the senders' buffers fill up to their ZeroMQ high-water marks), and a slow close
(a close reaches the other side that much later). At any moment: `reset` (RST) or `close` (FIN) every
connection of a link. With `idle_close_ms` the proxy closes any connection that carried no byte
either way for that long, as load balancers do with idle streams (a route in front of an HTTP port
tests keep-alives). Partitions of every shape are sets of blocked links (`isolate`, `split`,
`one_way`, `bridge` in `crdtsync.testing.faultplans`), and `plan_network` there draws a whole
schedule from a seed (the same seed gives the same schedule):

    daemons = plan_daemons(LocalDaemon, root, ["a", "b", "c"])
    routes = put_behind_proxy(daemons)          # source hosts, proxy ports, peers rewritten
    async with FaultProxy(routes) as proxy:
        with LocalCluster(root, daemons) as cluster:
            cluster.start_all()
            proxy.set_link("a", "b", LinkFaults(latency_ms=80, jitter_ms=10))
            proxy.partition(isolate(["a", "b", "c"], ["c"]))
            ...
            proxy.heal()

The proxy runs on an asyncio event loop (the caller's); `BackgroundProxy` runs one on a thread of its
own for synchronous tests. Linux only (other systems do not route all of 127.0.0.0/8 to loopback).
Buffers are bounded: at most `QUEUE_CHUNKS_MAX` chunks of `CHUNK_BYTES_MAX` wait per direction of a
connection, and a full queue stops reading, which pushes back on the sender as TCP would.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
import socket
import struct
import threading
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from types import TracebackType
from typing import Any, Protocol, TypeVar

from crdtsync.testing._processes import free_ports

__all__ = [
    "BackgroundProxy",
    "FaultProxy",
    "Link",
    "LinkFaults",
    "LinkStats",
    "ProxiedDaemon",
    "Route",
    "put_behind_proxy",
    "source_hosts",
]

Link = tuple[str, str]
"""(from node, to node): the direction bytes travel."""

CHUNK_BYTES_MAX = 64 * 1024
"""Largest read from a socket: the unit of latency and bandwidth accounting."""
QUEUE_CHUNKS_MAX = 64
"""Chunks waiting for their delivery time per direction of a connection (<= 4 MiB): a 150 ms link at
5 MB/s holds 750 KB in flight. A full queue stops reading from the sender."""
BANDWIDTH_AHEAD_S = 0.5
"""How far ahead of the clock a capped link may have scheduled its bytes before reading stops: the
cap pushes back on the sender instead of filling the queue with a burst."""
CONNECTIONS_MAX = 4096
"""Open proxied connections; more are refused (closed at once)."""
CHUNKS_PER_DIRECTION_MAX = 1 << 40
"""A bound on each pump's loop (no run comes near it: 64 PiB at most)."""
CONNECT_TIMEOUT_S = 5.0
"""To open the connection to the daemon behind a listener."""
FIRST_HOST = 2
"""The first node's source address is 127.0.0.FIRST_HOST (127.0.0.1 stays the unproxied one)."""
HOSTS_MAX = 250
UNKNOWN = "?"
"""The node name of a client whose source address is no node's: its bytes pass unfaulted."""


@dataclass(frozen=True, slots=True)
class LinkFaults:
    """What a directed link does to the bytes crossing it. The default passes them untouched."""

    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    """Each chunk's latency is drawn from latency_ms +/- jitter_ms (never below 0); bytes keep their
    order, as on one TCP connection."""
    bandwidth_bytes_per_s: float | None = None
    """Shared by every connection of the link; None: no cap."""
    blackhole: bool = False
    """Hold every byte (a partition): nothing is lost, nothing arrives until the link heals."""
    slow_close_ms: float = 0.0
    """How long a close (FIN) takes to reach the other side, once the bytes before it are delivered."""

    def __post_init__(self) -> None:
        if min(self.latency_ms, self.jitter_ms, self.slow_close_ms) < 0:
            raise ValueError("latency_ms, jitter_ms and slow_close_ms must be >= 0")
        if self.bandwidth_bytes_per_s is not None and self.bandwidth_bytes_per_s <= 0:
            raise ValueError("bandwidth_bytes_per_s must be positive (None: no cap)")


@dataclass(slots=True)
class LinkStats:
    """What crossed a directed link so far."""

    bytes: int = 0
    chunks: int = 0
    connections: int = 0
    """Connections opened that carry this link's bytes (each carries its reverse link's too)."""
    resets: int = 0
    closes: int = 0
    held_s: float = 0.0
    """Chunk-seconds spent behind a blackhole."""


@dataclass(frozen=True, slots=True)
class Route:
    """A proxy listener on 127.0.0.1:`listen_port` in front of `node`'s socket at 127.0.0.1:`target_port`."""

    node: str
    listen_port: int
    target_port: int

    @property
    def address(self) -> str:
        return f"tcp://127.0.0.1:{self.listen_port}"


class _LinkState:
    def __init__(self, link: Link, rng: random.Random) -> None:
        self.link = link
        self.faults = LinkFaults()
        self.open = asyncio.Event()
        """Set while the link is not blackholed."""
        self.open.set()
        self.next_free_at = 0.0
        """When the bandwidth cap lets the next byte leave (monotonic seconds)."""
        self.rng = rng
        self.stats = LinkStats()

    def apply(self, faults: LinkFaults) -> None:
        self.faults = faults
        if faults.blackhole:
            self.open.clear()
        else:
            self.open.set()

    def schedule(self, size_bytes: int, now: float, previous_at: float) -> float:
        """When a chunk read `now` arrives: after the bandwidth cap lets it leave, plus its latency,
        and never before the chunk ahead of it on the same connection."""
        faults = self.faults
        leaves_at = now
        if faults.bandwidth_bytes_per_s is not None:
            leaves_at = max(now, self.next_free_at) + size_bytes / faults.bandwidth_bytes_per_s
            self.next_free_at = leaves_at
        latency_ms = faults.latency_ms
        if faults.jitter_ms > 0:
            latency_ms = max(0.0, latency_ms + self.rng.uniform(-faults.jitter_ms, faults.jitter_ms))
        return max(previous_at, leaves_at + latency_ms / 1000.0)


class _Connection:
    def __init__(
        self, client: asyncio.StreamWriter, upstream: asyncio.StreamWriter, source: str, node: str
    ) -> None:
        self.client = client
        self.upstream = upstream
        self.source = source
        self.node = node
        self.tasks: list[asyncio.Task[None]] = []
        self.active_at = time.monotonic()
        """When a byte last came in from either side (for `idle_close_ms`)."""

    def carries(self, link: Link) -> bool:
        return link in ((self.source, self.node), (self.node, self.source))

    def abort(self, rst: bool) -> None:
        """Close both sides at once: with RST (`rst`, SO_LINGER 0) or an ordinary FIN."""
        for writer in (self.client, self.upstream):
            if rst:
                raw = writer.get_extra_info("socket")
                if raw is not None:
                    with contextlib.suppress(OSError):
                        raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                writer.transport.abort()
            else:
                writer.close()
        for task in self.tasks:
            task.cancel()


class FaultProxy:
    """Listeners in front of daemons (`routes`), faults per directed link between the nodes of `hosts`
    (node -> its source address). `seed` drives the jitter draws. `idle_close_ms`: close (FIN) every
    connection that carried no byte either way for that long (None: never). Use as an async context
    manager, or `start` and `aclose`."""

    def __init__(
        self,
        routes: Sequence[Route],
        hosts: Mapping[str, str] | None = None,
        seed: int = 0,
        idle_close_ms: float | None = None,
    ) -> None:
        if idle_close_ms is not None and idle_close_ms <= 0:
            raise ValueError("idle_close_ms must be positive (None: never)")
        self.idle_close_ms = idle_close_ms
        self.routes = list(routes)
        # In the order of the routes, as put_behind_proxy numbers the hosts (n10 must not sort before n2).
        nodes = list(dict.fromkeys(route.node for route in self.routes))
        self.hosts = dict(hosts) if hosts is not None else source_hosts(nodes)
        self._node_by_host = {host: node for node, host in self.hosts.items()}
        self._seed = seed
        self._links: dict[Link, _LinkState] = {}
        self._connections: set[_Connection] = set()
        self._servers: list[asyncio.Server] = []
        self.refused = 0
        """Connections refused: over CONNECTIONS_MAX, or the daemon behind did not accept."""
        self.unknown_clients = 0
        """Connections from an address that is no node's (their bytes pass unfaulted)."""
        self.idle_closed = 0
        """Connections closed after `idle_close_ms` without a byte."""

    async def __aenter__(self) -> FaultProxy:
        await self.start()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, value: BaseException | None, trace: TracebackType | None
    ) -> None:
        await self.aclose()

    async def start(self) -> None:
        """Bind every route's listener on 127.0.0.1."""
        for route in self.routes:
            server = await asyncio.start_server(
                functools.partial(self._accept, route),
                "127.0.0.1",
                route.listen_port,
                reuse_address=True,
            )
            self._servers.append(server)

    async def aclose(self) -> None:
        """Stop listening and close every proxied connection."""
        for server in self._servers:
            server.close()
        for connection in list(self._connections):
            connection.abort(rst=False)
        tasks = [task for connection in self._connections for task in connection.tasks]
        await asyncio.gather(*tasks, return_exceptions=True)
        for server in self._servers:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(server.wait_closed(), CONNECT_TIMEOUT_S)
        self._servers.clear()
        self._connections.clear()

    # ------------------------------------------------------------------ faults

    def _state(self, link: Link) -> _LinkState:
        state = self._links.get(link)
        if state is None:
            # One jitter stream per link, from the seed and the link's names (not Python's hash,
            # which varies between runs).
            state = _LinkState(link, random.Random(f"{self._seed}/{link[0]}/{link[1]}"))
            self._links[link] = state
        return state

    def set_link(self, source: str, target: str, faults: LinkFaults) -> None:
        """What the link source -> target does from now on (bytes already scheduled keep their time)."""
        self._state((source, target)).apply(faults)

    def link(self, source: str, target: str) -> LinkFaults:
        return self._state((source, target)).faults

    def stats(self, source: str, target: str) -> LinkStats:
        return self._state((source, target)).stats

    @property
    def links(self) -> dict[Link, LinkStats]:
        """Every link that carried a connection, with its stats."""
        return {link: state.stats for link, state in self._links.items()}

    def partition(self, blocked: Iterable[Link]) -> None:
        """Blackhole exactly the links of `blocked` (see `isolate`, `split`, `one_way`, `bridge`) and
        open every other; latency, bandwidth and slow close stay as they are."""
        blocked = set(blocked)
        for link in blocked:
            self._state(link)
        for link, state in self._links.items():
            state.apply(replace(state.faults, blackhole=link in blocked))

    def heal(self) -> None:
        """Open every blackholed link (held bytes then flow)."""
        self.partition(())

    @property
    def blocked(self) -> frozenset[Link]:
        return frozenset(link for link, state in self._links.items() if state.faults.blackhole)

    def reset(self, source: str, target: str) -> int:
        """RST every open connection between the two nodes (either initiated it); how many."""
        return self._end((source, target), rst=True)

    def close(self, source: str, target: str) -> int:
        """Close (FIN) every open connection between the two nodes; how many."""
        return self._end((source, target), rst=False)

    def _end(self, link: Link, rst: bool) -> int:
        ended = [connection for connection in self._connections if connection.carries(link)]
        stats = self._state(link).stats
        for connection in ended:
            connection.abort(rst)
            self._connections.discard(connection)
            if rst:
                stats.resets += 1
            else:
                stats.closes += 1
        return len(ended)

    # ------------------------------------------------------------------ connections

    async def _accept(self, route: Route, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        source = self._node_by_host.get(peer[0] if peer else "", UNKNOWN)
        if source == UNKNOWN:
            self.unknown_clients += 1
        if len(self._connections) >= CONNECTIONS_MAX:
            self.refused += 1
            writer.transport.abort()
            return
        try:
            upstream_reader, upstream = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", route.target_port), CONNECT_TIMEOUT_S
            )
        except (TimeoutError, OSError):
            # The daemon is down (killed, not yet restarted): refuse, as it would itself.
            self.refused += 1
            writer.transport.abort()
            return
        connection = _Connection(writer, upstream, source, route.node)
        self._connections.add(connection)
        for link in ((source, route.node), (route.node, source)):
            self._state(link).stats.connections += 1
        connection.tasks = [
            asyncio.create_task(self._pump(connection, self._state((source, route.node)), reader, upstream)),
            asyncio.create_task(
                self._pump(connection, self._state((route.node, source)), upstream_reader, writer)
            ),
        ]
        idle = None if self.idle_close_ms is None else asyncio.create_task(self._close_idle(connection))
        await asyncio.gather(*connection.tasks, return_exceptions=True)
        if idle is not None:
            idle.cancel()
        self._connections.discard(connection)
        connection.abort(rst=False)

    async def _close_idle(self, connection: _Connection) -> None:
        assert self.idle_close_ms is not None
        idle_s = self.idle_close_ms / 1000.0
        for _ in range(CHUNKS_PER_DIRECTION_MAX):
            quiet_s = time.monotonic() - connection.active_at
            if quiet_s >= idle_s:
                self.idle_closed += 1
                connection.abort(rst=False)
                return
            await asyncio.sleep(idle_s - quiet_s)

    async def _pump(
        self,
        connection: _Connection,
        state: _LinkState,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        """One direction of a connection: reads chunks while the link is open, delivers each at its
        time while the link is open, then passes the close on (after the link's slow close)."""
        queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue(maxsize=QUEUE_CHUNKS_MAX)
        deliver = asyncio.create_task(self._deliver(connection, state, queue, writer))
        try:
            previous_at = 0.0
            for _ in range(CHUNKS_PER_DIRECTION_MAX):
                await state.open.wait()
                ahead_s = state.next_free_at - time.monotonic()
                if ahead_s > BANDWIDTH_AHEAD_S:
                    await asyncio.sleep(ahead_s - BANDWIDTH_AHEAD_S)
                try:
                    data = await reader.read(CHUNK_BYTES_MAX)
                except OSError:
                    data = b""
                if not data:
                    break
                connection.active_at = time.monotonic()
                previous_at = state.schedule(len(data), time.monotonic(), previous_at)
                await queue.put((previous_at, data))
            await queue.put(None)
            await deliver
        finally:
            deliver.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await deliver

    async def _deliver(
        self,
        connection: _Connection,
        state: _LinkState,
        queue: asyncio.Queue[tuple[float, bytes] | None],
        writer: asyncio.StreamWriter,
    ) -> None:
        """Writes each chunk at its time; a close passes on as a half close (FIN), so each direction
        ends by itself. A side that cannot be written to is gone: the whole connection closes."""
        for _ in range(CHUNKS_PER_DIRECTION_MAX):
            item = await queue.get()
            if item is None:
                if state.faults.slow_close_ms > 0:
                    await asyncio.sleep(state.faults.slow_close_ms / 1000.0)
                with contextlib.suppress(OSError):
                    if writer.can_write_eof():
                        writer.write_eof()
                return
            at, data = item
            delay_s = at - time.monotonic()
            if delay_s > 0:
                await asyncio.sleep(delay_s)
            if not state.open.is_set():
                held = time.monotonic()
                await state.open.wait()
                state.stats.held_s += time.monotonic() - held
            try:
                writer.write(data)
                await writer.drain()
            except OSError:
                connection.abort(rst=False)
                return
            state.stats.bytes += len(data)
            state.stats.chunks += 1


# ---------------------------------------------------------------------------------------------- a thread

T = TypeVar("T")


class BackgroundProxy:
    """A `FaultProxy` on an event loop of its own thread, for synchronous tests and campaigns:
    `call(fn)` runs `fn(proxy)` on that loop and returns its result.

        with BackgroundProxy(routes) as proxy:
            proxy.call(lambda p: p.partition(isolate(names, ["c"])))
    """

    def __init__(
        self,
        routes: Sequence[Route],
        hosts: Mapping[str, str] | None = None,
        seed: int = 0,
        idle_close_ms: float | None = None,
    ) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fault-proxy", daemon=True)
        self._thread.start()
        self.proxy = self._run(self._make(routes, hosts, seed, idle_close_ms))

    async def _make(
        self, routes: Sequence[Route], hosts: Mapping[str, str] | None, seed: int, idle_close_ms: float | None
    ) -> FaultProxy:
        proxy = FaultProxy(routes, hosts, seed, idle_close_ms)
        await proxy.start()
        return proxy

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout=30.0)

    def call(self, fn: Callable[[FaultProxy], T]) -> T:
        async def on_loop() -> T:
            return fn(self.proxy)

        return self._run(on_loop())

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._run(self.proxy.aclose())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30.0)
        self._loop.close()

    def __enter__(self) -> BackgroundProxy:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()


# ---------------------------------------------------------------------------------------------- daemons


class ProxiedDaemon(Protocol):
    """What `put_behind_proxy` needs of a daemon (`crdtsync.testing.cluster.LocalDaemon` has it)."""

    name: str
    listen_port: int
    http_port: int
    peers: list[str]
    advertise: str
    publish: str
    publish_advertise: str
    source_host: str


def source_hosts(names: Sequence[str]) -> dict[str, str]:
    """Node -> 127.0.0.N, N from FIRST_HOST in the order of `names`."""
    if len(names) > HOSTS_MAX:
        raise ValueError(f"at most {HOSTS_MAX} nodes behind one proxy")
    return {name: f"127.0.0.{FIRST_HOST + index}" for index, name in enumerate(names)}


def put_behind_proxy(daemons: Sequence[ProxiedDaemon]) -> list[Route]:
    """Route every replication byte of `daemons` through a proxy: each gets its own source address
    (see `source_hosts`, in the order given), a fixed PUB port, and advertises two proxy listeners
    (request socket, PUB socket); seeds (`peers`) are rewritten to the proxy's addresses. Returns
    the routes for `FaultProxy` (its `hosts` default matches, when the same names come in the same
    order, e.g. `plan_daemons`'s). Call before the first start."""
    hosts = source_hosts([daemon.name for daemon in daemons])
    # The daemons' own ports are planned but not bound yet, so free_ports may offer them again.
    taken = {port for daemon in daemons for port in (daemon.listen_port, daemon.http_port)}
    ports = [port for port in free_ports(3 * len(daemons) + len(taken)) if port not in taken][
        : 3 * len(daemons)
    ]
    routes: list[Route] = []
    through: dict[str, str] = {}
    for index, daemon in enumerate(daemons):
        publish_port, request_proxy_port, publish_proxy_port = ports[3 * index : 3 * index + 3]
        requests = Route(daemon.name, request_proxy_port, daemon.listen_port)
        routes += [requests, Route(daemon.name, publish_proxy_port, publish_port)]
        through[f"tcp://127.0.0.1:{daemon.listen_port}"] = requests.address
        daemon.advertise = requests.address
        daemon.publish = f"tcp://127.0.0.1:{publish_port}"
        daemon.publish_advertise = f"tcp://127.0.0.1:{publish_proxy_port}"
        daemon.source_host = hosts[daemon.name]
    for daemon in daemons:
        daemon.peers = [through.get(peer, peer) for peer in daemon.peers]
    return routes
