"""Chunk transfer between nodes over the replication links (the request path: CHUNK_REQUEST and
CHUNK_REPLY of crdtsync.core.chunks), driven by asyncio beside the node.

A node that needs a version asks the nodes that hold it complete (the manifest's `complete` map),
those of its own datacenter first, for the chunks its store lacks: `window_requests` requests in
flight of at most `request_bytes_max` each, paced by a byte-rate cap per link (separate for links
inside the datacenter and across), each chunk checked against its BLAKE3 id before it is stored. A
chunk that does not match is dropped and counted, and its sender struck: not asked again for
`strike_ms`. What arrived is committed every `commit_bytes`, so a transfer cut short (kill -9)
resumes from what the store holds. The serving side answers from its store, at most
`serving_requests_max` requests at once (more are dropped, counted: the asker retries elsewhere).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING

from crdtsync.artifacts.chunking import chunk_id
from crdtsync.artifacts.store import ChunkStore, ChunkStoreError, ChunkWriter
from crdtsync.core import wire
from crdtsync.core.chunks import (
    CHUNKS_PER_REQUEST_MAX,
    REPLY_BYTES_MAX,
    ChunkMessage,
    ChunkReply,
    ChunkRequest,
)

if TYPE_CHECKING:
    from crdtsync.node import Node

log = logging.getLogger("crdtsync.artifacts")

TABLE_PIECE_BYTES_MAX = 64 * 1024
"""A bound of a table piece's size, for requests of pieces whose lengths are not known yet."""


class TransferError(RuntimeError):
    """No reachable holder had some chunks (after every attempt)."""

    def __init__(self, message: str, chunks_missing: int, bytes_missing: int) -> None:
        super().__init__(message)
        self.chunks_missing = chunks_missing
        self.bytes_missing = bytes_missing


@dataclass(frozen=True, slots=True)
class ArtifactsConfig:
    """How chunks move between nodes, and how often the daemon collects unreferenced ones."""

    window_requests: int = 8
    request_bytes_max: int = 1024 * 1024
    request_timeout_ms: float = 10_000.0
    dc_link_bytes_per_s: float = 1024.0**3
    """The cap of chunk bytes asked of one holder of this datacenter per second."""
    wan_link_bytes_per_s: float = 100.0 * 1024**2
    """The cap of chunk bytes asked of one holder in another datacenter per second."""
    strike_ms: float = 60_000.0
    commit_bytes: int = 16 * 1024 * 1024
    attempts_max: int = 6
    serving_requests_max: int = 16
    prefetch_interval_s: float = 5.0
    """How often the daemon, as its datacenter's fetcher, fetches `latest` of every artifact no
    node of its datacenter holds complete (0: never; the library's `prefetch`)."""
    collect_interval_s: float = 600.0
    """How often the daemon runs `collect` (0: never; the library never runs it by itself)."""
    collect_grace_s: float = 3600.0
    """Unreferenced chunks younger than this are kept by the daemon's collection."""

    def __post_init__(self) -> None:
        if not 1 <= self.window_requests <= 256:
            raise ValueError(f"window_requests must be in 1..256, got {self.window_requests}")
        if not TABLE_PIECE_BYTES_MAX <= self.request_bytes_max <= REPLY_BYTES_MAX:
            raise ValueError(f"request_bytes_max must be in {TABLE_PIECE_BYTES_MAX}..{REPLY_BYTES_MAX}")
        if self.dc_link_bytes_per_s <= 0 or self.wan_link_bytes_per_s <= 0:
            raise ValueError("link caps must be positive bytes per second")
        if min(self.collect_interval_s, self.collect_grace_s, self.prefetch_interval_s) < 0:
            raise ValueError(
                "collect_interval_s, collect_grace_s and prefetch_interval_s must not be negative"
            )


@dataclass(slots=True)
class TransferCounters:
    requests_sent: int = 0
    requests_timed_out: int = 0
    chunks_fetched: int = 0
    bytes_fetched: int = 0
    bytes_fetched_wan: int = 0
    chunks_refused: int = 0
    """Chunks whose bytes did not hash to their id (or that were not asked for): dropped."""
    holders_struck: int = 0
    replies_unexpected: int = 0
    requests_served: int = 0
    chunks_served: int = 0
    bytes_served: int = 0
    requests_dropped_busy: int = 0

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(slots=True)
class _Link:
    """A holder as seen by one transfer: where it is, its pace, whether it is struck."""

    node_id: str
    address: str
    wan: bool
    rate_bytes_per_s: float
    next_free_s: float = 0.0
    struck_until_s: float = 0.0

    async def pace(self, size: int) -> None:
        """Wait until the link's cap allows `size` more bytes (a token bucket as a virtual clock)."""
        now = time.monotonic()
        start = max(now, self.next_free_s)
        self.next_free_s = start + size / self.rate_bytes_per_s
        if start > now:
            await asyncio.sleep(start - now)


@dataclass(frozen=True, slots=True)
class _Inflight:
    """A chunk one fetch is asking for: `arrived` (readable here, True) and `settled` (that fetch
    ended, its commit done: True when the chunk is durable here)."""

    arrived: asyncio.Future[bool]
    settled: asyncio.Future[bool]


@dataclass(slots=True)
class _Fetch:
    """One transfer's shared state: the links, the writer, what is left."""

    links: list[_Link]
    writer: ChunkWriter
    artifact: str
    version: str
    uncommitted_bytes: int = 0
    turn: itertools.count[int] = field(default_factory=itertools.count)


class Transfer:
    def __init__(self, node: Node, store: ChunkStore, config: ArtifactsConfig | None = None) -> None:
        self._node = node
        self._store = store
        self.config = config or ArtifactsConfig()
        self.counters = TransferCounters()
        self._request_ids = itertools.count(1)
        self._waiting: dict[int, tuple[str, asyncio.Future[ChunkReply]]] = {}
        self._serving: set[asyncio.Task[None]] = set()
        self._struck: dict[str, float] = {}
        self._inflight: dict[bytes, _Inflight] = {}
        """Chunks a fetch of this node is asking for: another fetch (or a request served through)
        waits for them instead of asking again; True once readable here. Bounded by the fetches."""
        self.holders_of: Callable[[str, str], Awaitable[list[str]]] | None = None
        """The nodes complete for (artifact, version), for requests served through: set by Artifacts."""

    def close(self) -> None:
        """Stop serving (the node is closing): requests in progress are dropped."""
        for task in self._serving:
            task.cancel()

    # ------------------------------------------------------------------ messages

    def on_message(self, message: ChunkMessage) -> None:
        """From the replica's dispatch, on the event loop."""
        if isinstance(message, ChunkRequest):
            if len(self._serving) >= self.config.serving_requests_max:
                self.counters.requests_dropped_busy += 1
                return
            task = asyncio.get_running_loop().create_task(self._serve(message))
            self._serving.add(task)
            task.add_done_callback(self._serving.discard)
            return
        waiting = self._waiting.get(message.request_id)
        if waiting is None or waiting[0] != message.node_id or waiting[1].done():
            self.counters.replies_unexpected += 1
            return
        waiting[1].set_result(message)

    def _send(self, address: str, message: ChunkMessage) -> None:
        transport = self._node._transport
        if transport is not None:
            transport.send(address, wire.encode(message))

    def _address_of(self, node_id: str) -> str | None:
        for member in self._node.status().members:
            if member.node_id == node_id and member.state in ("alive", "suspect"):
                return member.address
        return None

    async def _serve(self, request: ChunkRequest) -> None:
        address = self._address_of(request.node_id)
        if address is None:
            return
        chunks, not_sent = await asyncio.to_thread(self._read, request.chunk_ids)
        if not_sent and await self._fetch_through(request, not_sent):
            chunks, not_sent = await asyncio.to_thread(self._read, request.chunk_ids)
        size = sum(len(data) for _, data in chunks)
        self.counters.requests_served += 1
        self.counters.chunks_served += len(chunks)
        self.counters.bytes_served += size
        self._send(address, ChunkReply(self._node.config.node_id, request.request_id, chunks, not_sent))

    def _read(
        self, chunk_ids: tuple[bytes, ...]
    ) -> tuple[tuple[tuple[bytes, bytes], ...], tuple[bytes, ...]]:
        chunks: list[tuple[bytes, bytes]] = []
        not_sent: list[bytes] = []
        size = 0
        for chunk in dict.fromkeys(chunk_ids):
            try:
                data = self._store.read(chunk) if size < REPLY_BYTES_MAX else None
            except ChunkStoreError:
                data = None
            if data is None or size + len(data) > REPLY_BYTES_MAX:
                not_sent.append(chunk)
                continue
            chunks.append((chunk, data))
            size += len(data)
        return tuple(chunks), tuple(not_sent)

    def is_fetcher(self) -> bool:
        """Whether this node is its datacenter's fetcher (its first relay) in its own view."""
        own = self._node.config
        relays = next((dc.relays for dc in self._node.status().datacenters if dc.dc == own.dc), ())
        return bool(relays) and relays[0] == own.node_id

    async def _fetch_through(self, request: ChunkRequest, lacking: tuple[bytes, ...]) -> bool:
        """A node of this datacenter asked this one (its datacenter's fetcher) for chunks it lacks:
        fetch them across the WAN once, for both (waiting for those already on their way)."""
        own = self._node.config
        requester_dc = next((m.dc for m in self._node.status().members if m.node_id == request.node_id), None)
        # Only the fetcher in this node's own view: two nodes that each take the other for the
        # fetcher (views differ for a moment) answer what they have instead of waiting on each other.
        if not self.is_fetcher() or requester_dc != own.dc or not request.artifact or self.holders_of is None:
            return False
        holders = [
            h for h in await self.holders_of(request.artifact, request.version) if h != request.node_id
        ]
        writer = self._store.writer()
        try:
            wanted = [(chunk, 0) for chunk in lacking]
            await self.fetch(wanted, holders, writer, request.artifact, request.version, durable=False)
        except TransferError:
            pass  # what arrived is sent; the asker tries elsewhere for the rest
        finally:
            writer.close()
        return True

    # ------------------------------------------------------------------ fetching

    def links(self, holders: list[str]) -> list[_Link]:
        """The holders this node can reach, its own datacenter first; when none of them is in its
        datacenter, the datacenter's fetcher (its first relay) comes before the others, so that
        a chunk crosses the WAN once per datacenter."""
        own = self._node.config
        status = self._node.status()
        members = {m.node_id: m for m in status.members if m.state in ("alive", "suspect")}
        links = []
        for node_id in holders:
            member = members.get(node_id)
            if node_id == own.node_id or member is None:
                continue
            wan = member.dc != own.dc
            rate = self.config.wan_link_bytes_per_s if wan else self.config.dc_link_bytes_per_s
            links.append(_Link(node_id, member.address, wan, rate))
        relays = next((dc.relays for dc in status.datacenters if dc.dc == own.dc), ())
        fetcher = members.get(relays[0]) if relays else None
        if links and all(link.wan for link in links) and fetcher is not None:
            links.append(_Link(fetcher.node_id, fetcher.address, False, self.config.dc_link_bytes_per_s))
        links.sort(key=lambda link: link.wan)
        return links

    async def fetch(
        self,
        wanted: list[tuple[bytes, int]],
        holders: list[str],
        writer: ChunkWriter,
        artifact: str,
        version: str,
        *,
        durable: bool = True,
    ) -> None:
        """Fetch every chunk of `wanted` ((id, length or 0 when unknown), none held here) of the
        version from `holders` into `writer`, committed as it goes. A chunk another fetch of this
        node is asking for is not asked again: this one waits until it arrived (`durable` False:
        to send it on) or until that fetch committed it. TransferError naming what is missing."""
        theirs = [
            (chunk, length, self._inflight[chunk]) for chunk, length in wanted if chunk in self._inflight
        ]
        mine = [(chunk, length) for chunk, length in wanted if chunk not in self._inflight]
        loop = asyncio.get_running_loop()
        for chunk, _ in mine:
            self._inflight[chunk] = _Inflight(loop.create_future(), loop.create_future())
        try:
            await self._fetch_mine(mine, holders, writer, artifact, version)
        finally:
            for chunk, _ in mine:
                inflight = self._inflight.pop(chunk)
                if not inflight.arrived.done():
                    inflight.arrived.set_result(False)
                inflight.settled.set_result(inflight.arrived.result())
        lost = []
        for chunk, length, inflight in theirs:
            if not await asyncio.shield(inflight.settled if durable else inflight.arrived):
                lost.append((chunk, length))
        if lost:  # the other fetch gave up on them: ask ourselves
            await self.fetch(lost, holders, writer, artifact, version, durable=durable)

    async def _fetch_mine(
        self,
        wanted: list[tuple[bytes, int]],
        holders: list[str],
        writer: ChunkWriter,
        artifact: str,
        version: str,
    ) -> None:
        state = _Fetch(self.links(holders), writer, artifact, version)
        if wanted and not state.links:
            raise TransferError(
                f"no node that holds the version complete is reachable (holders: {', '.join(holders) or 'none'})",
                len(wanted),
                sum(length for _, length in wanted),
            )
        batches = asyncio.Queue[list[tuple[bytes, int]]]()
        for batch in _batches(wanted, self.config.request_bytes_max):
            batches.put_nowait(batch)
        failed: list[tuple[bytes, int]] = []
        workers = [
            asyncio.create_task(self._worker(batches, state, failed))
            for _ in range(min(self.config.window_requests, batches.qsize()))
        ]
        try:
            await asyncio.gather(*workers)
        finally:
            for worker in workers:
                worker.cancel()
            await asyncio.to_thread(writer.commit)
        if failed:
            now = time.monotonic()
            asked = ", ".join(
                link.node_id
                + (
                    " (struck: it sent bytes that did not match)"
                    if self._struck.get(link.node_id, 0.0) > now
                    else ""
                )
                for link in state.links
            )
            raise TransferError(
                f"{len(failed)} chunks ({sum(length for _, length in failed)} bytes) could not be fetched from {asked}",
                len(failed),
                sum(length for _, length in failed),
            )

    async def _worker(
        self, batches: asyncio.Queue[list[tuple[bytes, int]]], state: _Fetch, failed: list[tuple[bytes, int]]
    ) -> None:
        while not batches.empty():
            batch = batches.get_nowait()
            left = await self._fetch_batch(batch, state)
            failed.extend(left)

    def _pick(self, state: _Fetch, attempt: int) -> _Link | None:
        """The nearest usable holders in turn; the others too from the second half of the attempts."""
        now = time.monotonic()
        usable = [link for link in state.links if self._struck.get(link.node_id, 0.0) <= now]
        if not usable:
            return None
        if attempt < self.config.attempts_max // 2:
            usable = [link for link in usable if link.wan == usable[0].wan]
        return usable[next(state.turn) % len(usable)]

    async def _fetch_batch(self, batch: list[tuple[bytes, int]], state: _Fetch) -> list[tuple[bytes, int]]:
        left = dict(batch)
        for attempt in range(self.config.attempts_max):
            link = self._pick(state, attempt)
            if link is None or not left:
                break
            reply = await self._ask(link, left, state)
            if reply is None:
                continue
            # Hashing and appending off the event loop, one thread hop per reply.
            stored, refused = await asyncio.to_thread(_verify_into, state.writer, left, reply)
            for chunk in refused:
                self._strike(link, chunk)
            for chunk, length in stored:
                del left[chunk]
                await self._stored(state, link, chunk, length)
        return list(left.items())

    async def _ask(self, link: _Link, left: dict[bytes, int], state: _Fetch) -> ChunkReply | None:
        ids = tuple(left)[:CHUNKS_PER_REQUEST_MAX]
        await link.pace(sum(left[chunk] or TABLE_PIECE_BYTES_MAX for chunk in ids))
        request_id = next(self._request_ids)
        future = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = (link.node_id, future)
        self.counters.requests_sent += 1
        try:
            request = ChunkRequest(self._node.config.node_id, request_id, state.artifact, state.version, ids)
            self._send(link.address, request)
            return await asyncio.wait_for(future, self.config.request_timeout_ms / 1000.0)
        except TimeoutError:
            self.counters.requests_timed_out += 1
            return None
        finally:
            del self._waiting[request_id]

    def _strike(self, link: _Link, chunk: bytes) -> None:
        self.counters.chunks_refused += 1
        self.counters.holders_struck += 1
        self._struck[link.node_id] = time.monotonic() + self.config.strike_ms / 1000.0
        if len(self._struck) > 1024:  # bounded: the oldest strike goes
            del self._struck[next(iter(self._struck))]
        log.warning(
            "refused chunk %s from %s: its bytes do not match its id; struck", chunk.hex()[:16], link.node_id
        )

    async def _stored(self, state: _Fetch, link: _Link, chunk: bytes, length: int) -> None:
        inflight = self._inflight.get(chunk)
        if inflight is not None and not inflight.arrived.done():
            inflight.arrived.set_result(True)  # readable now (pending in the store): it may be sent on
        self.counters.chunks_fetched += 1
        self.counters.bytes_fetched += length
        if link.wan:
            self.counters.bytes_fetched_wan += length
        state.uncommitted_bytes += length
        if state.uncommitted_bytes >= self.config.commit_bytes:
            state.uncommitted_bytes = 0
            await asyncio.to_thread(state.writer.commit)


def _verify_into(
    writer: ChunkWriter, left: dict[bytes, int], reply: ChunkReply
) -> tuple[list[tuple[bytes, int]], list[bytes]]:
    """On a worker thread: the reply's chunks that were asked for and hash to their ids go into
    `writer` (stored, with their lengths); the others are refused."""
    stored: list[tuple[bytes, int]] = []
    refused: list[bytes] = []
    for chunk, data in reply.chunks:
        if chunk not in left or chunk_id(data) != chunk:
            refused.append(chunk)
            continue
        writer.add(chunk, data)
        stored.append((chunk, len(data)))
    return stored, refused


def _batches(wanted: list[tuple[bytes, int]], bytes_max: int) -> list[list[tuple[bytes, int]]]:
    batches: list[list[tuple[bytes, int]]] = []
    batch: list[tuple[bytes, int]] = []
    size = 0
    for chunk, length in wanted:
        length_bound = length or TABLE_PIECE_BYTES_MAX
        if batch and (size + length_bound > bytes_max or len(batch) == CHUNKS_PER_REQUEST_MAX):
            batches.append(batch)
            batch, size = [], 0
        batch.append((chunk, length))
        size += length_bound
    if batch:
        batches.append(batch)
    return batches
