"""The fault proxy (`crdtsync.testing.faultproxy`): on plain sockets, what each fault does to the bytes
of a link (latency, bandwidth, blackhole, reset, slow close, links told apart by source address); then
real daemons behind it: every replication byte crosses it, an isolated node misses writes until the
partition heals, latency delays arrival, and resets are repaired."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from crdtsync.testing.cluster import LocalCluster, LocalDaemon, free_ports, plan_daemons, wait_until
from crdtsync.testing.faultplans import isolate
from crdtsync.testing.faultproxy import BackgroundProxy, FaultProxy, LinkFaults, Route, put_behind_proxy
from fuzz.chaos import FAST_MEMBERSHIP, FAST_REPLICATION

pytestmark = pytest.mark.integration

HOSTS = {"a": "127.0.0.2", "b": "127.0.0.3"}
IO_TIMEOUT_S = 5.0


@asynccontextmanager
async def _echo_behind_proxy(
    seed: int = 0, idle_close_ms: float | None = None
) -> AsyncIterator[tuple[FaultProxy, int]]:
    """An echo server as node b behind a proxy; yields the proxy and its listener's port. Node a
    connects from 127.0.0.2 (see `_connect`)."""

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):  # a reset
            for _ in range(10_000):
                data = await reader.read(65536)
                if not data:
                    break
                writer.write(data)
                await writer.drain()
        writer.close()

    listen_port, target_port = free_ports(2)
    server = await asyncio.start_server(echo, "127.0.0.1", target_port, reuse_address=True)
    try:
        async with FaultProxy([Route("b", listen_port, target_port)], HOSTS, seed, idle_close_ms) as proxy:
            yield proxy, listen_port
    finally:
        server.close()
        await server.wait_closed()


async def _connect(port: int, source: str = HOSTS["a"]) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))


async def _round_trip_s(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, size_bytes: int) -> float:
    started = time.monotonic()
    writer.write(b"x" * size_bytes)
    await writer.drain()
    await asyncio.wait_for(reader.readexactly(size_bytes), IO_TIMEOUT_S * 4)
    return time.monotonic() - started


def test_latency_applies_to_each_direction_of_its_link() -> None:
    async def scenario() -> None:
        async with _echo_behind_proxy() as (proxy, port):
            reader, writer = await _connect(port)
            baseline_s = await _round_trip_s(reader, writer, 10)
            proxy.set_link("a", "b", LinkFaults(latency_ms=150))
            one_way_s = await _round_trip_s(reader, writer, 10)
            proxy.set_link("b", "a", LinkFaults(latency_ms=100, jitter_ms=20))
            both_s = await _round_trip_s(reader, writer, 10)
            writer.close()
            assert baseline_s < 0.1, baseline_s
            assert 0.15 <= one_way_s < 0.15 + 0.1, one_way_s
            assert 0.15 + 0.08 <= both_s < 0.15 + 0.12 + 0.1, both_s
            assert proxy.stats("a", "b").bytes == 30 and proxy.stats("b", "a").bytes == 30
            assert proxy.unknown_clients == 0

    asyncio.run(scenario())


def test_bandwidth_is_capped_per_link() -> None:
    async def scenario() -> None:
        async with _echo_behind_proxy() as (proxy, port):
            proxy.set_link("a", "b", LinkFaults(bandwidth_bytes_per_s=1_000_000))
            reader, writer = await _connect(port)
            elapsed_s = await _round_trip_s(reader, writer, 500_000)
            writer.close()
            # 500 KB at 1 MB/s: half a second, give or take one chunk's worth.
            assert 0.43 <= elapsed_s < 1.5, elapsed_s

    asyncio.run(scenario())


def test_a_blackhole_holds_bytes_until_it_heals_and_a_client_of_no_node_passes_unfaulted() -> None:
    async def scenario() -> None:
        async with _echo_behind_proxy() as (proxy, port):
            reader, writer = await _connect(port)
            proxy.partition(isolate(["a", "b"], ["a"]))
            assert proxy.blocked == {("a", "b"), ("b", "a")}
            writer.write(b"held")
            await writer.drain()
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(reader.readexactly(4), 0.5)
            proxy.heal()
            assert await asyncio.wait_for(reader.readexactly(4), IO_TIMEOUT_S) == b"held"
            writer.close()
            # 127.0.0.1 is no node's address: its link is not the partitioned one.
            proxy.partition(isolate(["a", "b"], ["a"]))
            other_reader, other_writer = await _connect(port, "127.0.0.1")
            assert await _round_trip_s(other_reader, other_writer, 3) < IO_TIMEOUT_S
            other_writer.close()
            assert proxy.unknown_clients == 1

    asyncio.run(scenario())


def test_reset_sends_rst_and_slow_close_delays_the_close() -> None:
    async def scenario() -> None:
        async with _echo_behind_proxy() as (proxy, port):
            reader, writer = await _connect(port)
            await _round_trip_s(reader, writer, 1)
            assert proxy.reset("b", "a") == 1
            with pytest.raises(ConnectionResetError):
                await asyncio.wait_for(reader.read(1), IO_TIMEOUT_S)
            writer.close()
            assert proxy.stats("b", "a").resets == 1
            proxy.set_link("b", "a", LinkFaults(slow_close_ms=300))
            reader, writer = await _connect(port)
            await _round_trip_s(reader, writer, 1)
            writer.write_eof()  # the echo server closes at once; its close reaches us 300 ms later
            started = time.monotonic()
            assert await asyncio.wait_for(reader.read(1), IO_TIMEOUT_S) == b""
            assert time.monotonic() - started >= 0.3
            writer.close()

    asyncio.run(scenario())


def test_idle_close_ends_a_connection_only_after_that_long_without_a_byte() -> None:
    async def scenario() -> None:
        async with _echo_behind_proxy(idle_close_ms=400) as (proxy, port):
            reader, writer = await _connect(port)
            started = time.monotonic()
            for _ in range(8):  # a byte every 100 ms keeps it open past the idle time
                await asyncio.sleep(0.1)
                await _round_trip_s(reader, writer, 1)
            assert time.monotonic() - started > 0.8 and proxy.idle_closed == 0
            quiet = time.monotonic()
            assert await asyncio.wait_for(reader.read(1), IO_TIMEOUT_S) == b""
            assert time.monotonic() - quiet >= 0.4 and proxy.idle_closed == 1
            writer.close()

    asyncio.run(scenario())


# ---------------------------------------------------------------------------------------------- daemons


def test_daemons_behind_the_proxy_replicate_through_it_and_through_its_faults(tmp_path: Path) -> None:
    names = ["a", "b", "c"]
    daemons = plan_daemons(LocalDaemon, str(tmp_path), names, data_dirs=False)
    routes = put_behind_proxy(daemons)
    assert all(peer.startswith("tcp://127.0.0.1:") for d in daemons for peer in d.peers)
    with (
        BackgroundProxy(routes) as background,
        LocalCluster(
            str(tmp_path),
            daemons,
            settings={"replication": FAST_REPLICATION, "membership": FAST_MEMBERSHIP},
            extra_args=["--log-level", "info"],
        ) as cluster,
    ):
        cluster.start_all()
        cluster.wait_healthy()
        assert cluster.put("a", "flags/proxy", "first", {"n": 1}, owned=True)
        assert cluster.wait_converged(20.0)
        links = background.call(lambda proxy: proxy.links)
        pairs = {(a, b) for a in names for b in names if a != b}
        assert {link for link, stats in links.items() if stats.bytes > 0} == pairs, links
        assert background.call(lambda proxy: proxy.unknown_clients) == 0

        background.call(lambda proxy: proxy.partition(isolate(names, ["c"])))
        assert cluster.put("a", "flags/proxy", "partitioned", {"n": 2}, owned=True)
        wait_until(lambda: _value(cluster, "b", "partitioned") == {"n": 2}, 10.0, "b has a's write")
        # The one negative wait: c must not get the write while isolated (it would within 0.1 s otherwise).
        time.sleep(1.0)
        assert _value(cluster, "c", "partitioned") is None
        background.call(lambda proxy: proxy.heal())
        wait_until(
            lambda: _value(cluster, "c", "partitioned") == {"n": 2}, 15.0, "c has a's write after the heal"
        )

        def slow_into_b(proxy: FaultProxy) -> None:
            for other in ("a", "c"):
                proxy.set_link(other, "b", LinkFaults(latency_ms=300))

        background.call(slow_into_b)
        started = time.monotonic()
        assert cluster.put("a", "flags/proxy", "slow", {"n": 3}, owned=True)
        wait_until(
            lambda: _value(cluster, "b", "slow") == {"n": 3}, 10.0, "b has the write over the slow links"
        )
        assert time.monotonic() - started >= 0.3

        assert background.call(lambda proxy: proxy.reset("a", "b") + proxy.reset("c", "b")) > 0
        assert cluster.put("c", "flags/proxy", "after-reset", {"n": 4}, owned=True)
        assert cluster.wait_converged(20.0)
        assert cluster.verify_acks() == []


def _value(cluster: LocalCluster[LocalDaemon], name: str, key: str) -> object:
    response = cluster.client.get(f"{cluster[name].url}/v1/docs/flags/proxy")
    if response.status_code != 200:
        return None
    data = response.json().get("data", {})
    return data.get(key) if isinstance(data, dict) else None
