"""Storage benchmark: what crdtsync's SQLite store costs, and how a node holding a million docs restarts.

    python -m bench.storage [--quick] [--json OUT] [--docs N] [--profile]

Measured in one run, each figure next to its target (from the issue) or a floor measured alongside:

(1) Write throughput with group commit. One Node with a data_dir and no peers; a writer sets
    ``m[f"k{i % 1000}"] = i`` on one doc, one transaction per write, yielding to the loop every 100 writes,
    then ``await node.flush()``; updates/s from the first write to the flush's return (after 1000 warm-up
    writes). Durability fsync (target >= 20,000/s), process and none, and the in-memory store (no
    data_dir). Floor: the update blobs of the fsync run inserted with plain sqlite3 (WAL,
    synchronous=FULL, a table ``updates(seq, doc_id, data)`` indexed on (doc_id, seq) like the store's) in
    exactly the groups the node committed; and one commit per update, to show what group commit saves.
    The ``unflushed`` column checks that flush() returned only once the store held every update.
(2) Flush latency: single writes, each followed by ``await node.flush()``: p50/p99/max.
(3) A node holding 1,000,000 small docs (``--docs``; 100,000 with --quick). The store is written directly
    with ``SqliteStore.append(Persist(...))`` in groups of 20,000 docs: each doc is a Map
    ``{"v": "<8 digits>"}`` authored by one client, so its update is a template update with its own value
    spliced in, and its state vector and canonical digest are the template's (verified against real pycrdt
    docs on a sample). Then a FRESH child process starts a Node on it (docs_cached_max 10,000): restart to
    serving (process spawn -> ``async with Node`` entered and ``merkle_root()`` computed; target <= 10 s),
    resident memory after start and after opening, reading and releasing 20,000 random docs (VmRSS; target
    <= 1 GB), and the CPU of in-sync anti-entropy rounds against a second child Node on a copy of the db
    file (ae_interval_ms 100): CPU of both processes over a window / rounds completed by both (target
    <= 50 ms per round; heartbeats and timers are included, so this is an upper bound).
(4) Disk bytes per doc after compaction: 1000 docs x 50 Map sets through a Node, then every doc compacted
    with ``SqliteStore.compact``; db file / docs against the mean encoded state ``len(doc.get_update())``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import gc
import io
import math
import os
import pstats
import random
import shutil
import sqlite3
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from pycrdt import Doc, Map

from bench._child import detached_map, emit, run_main, serve
from bench._common import (
    JSON,
    KEYS,
    BenchError,
    Child,
    Deadline,
    Target,
    close_all,
    fmt,
    machine_info,
    percentile,
    print_table,
    proc_cpu_s,
    proc_status_kb,
    ratio,
    write_json,
)
from bench._crdtsync import NodeAdapter
from crdtsync import Node, NodeConfig, ReplicaConfig
from crdtsync.core.effects import Persist
from crdtsync.core.state import digest as canonical_digest
from crdtsync.store.sqlite import DB_FILE, Durability, SqliteStore
from crdtsync.testing.cluster import free_port

Mode = Literal["fsync", "process", "none", "memory"]
MODES: tuple[Mode, ...] = ("fsync", "process", "none", "memory")
SEED = 7
YIELD_EVERY_WRITES = 100
WARMUP_WRITES = 1000
HOT_DOC = "bench/hot"
DATA = "data"
VALUE_KEY = "v"
VALUE_DIGITS = 8
DOCS_MAX = 10**VALUE_DIGITS - 1
TEMPLATE_CLIENT_ID = 1
BUILD_CHUNK_DOCS = 20_000
VERIFY_SAMPLE = 200
TOUCH_DOCS = 20_000
TOUCH_YIELD_EVERY = 100
CACHED_MAX = 10_000
AE_INTERVAL_MS = 100.0
AE_WARM_ROUNDS = 3
SINGLE_COMMITS = 300
DISK_DOCS = 1000
DISK_UPDATES = 50
DISK_KEYS = 10
GB = 1_000_000_000
POLL_S = 0.2
NODE_START_TIMEOUT_S = 300.0
REQUEST_TIMEOUT_S = 300.0
CONNECT_TIMEOUT_S = 60.0
PROFILE_LINES = 18

TARGET_UPDATES_PER_S = 20_000.0
TARGET_RESTART_S = 10.0
TARGET_RSS_BYTES = float(GB)
TARGET_ROUND_CPU_MS = 50.0


@dataclass(frozen=True)
class Settings:
    quick: bool
    writes: int
    latency_writes: int
    docs: int
    touch_docs: int
    ae_window_s: float
    disk_docs: int
    disk_updates: int
    profile: bool


def doc_id(index: int) -> str:
    return f"d{index:07d}"


def doc_value(index: int) -> str:
    return f"{index:0{VALUE_DIGITS}d}"


def _config(node_id: str, data_dir: Path | None, durability: Durability, **replication: Any) -> NodeConfig:
    return NodeConfig(
        node_id=node_id,
        listen=f"tcp://127.0.0.1:{free_port()}",
        data_dir=str(data_dir) if data_dir is not None else None,
        durability=durability,
        replication=ReplicaConfig(**replication),
    )


def _db_bytes(data_dir: Path) -> int:
    """Bytes of the store's files (db, WAL and shared memory, when present)."""
    total = 0
    for suffix in ("", "-wal", "-shm"):
        path = data_dir / f"{DB_FILE}{suffix}"
        if path.exists():
            total += path.stat().st_size
    return total


# ---------------------------------------------------------------------------------------------------------
# (1) Throughput and (2) flush latency


class RecordingSqliteStore(SqliteStore):
    """The node's SqliteStore, unchanged, that also keeps the (doc id, update) pairs of every group it commits
    while ``recording`` is set (by reference), so the raw-SQLite floor replays exactly the same groups."""

    def __init__(self, data_dir: Path, *, node_id: str, durability: Durability) -> None:
        super().__init__(data_dir, node_id=node_id, durability=durability)
        self.recording = False
        self.groups: list[list[tuple[str, bytes]]] = []
        self.updates_committed = 0

    def append(self, group: Sequence[Persist]) -> None:
        updates = [pair for persist in group for pair in persist.updates] if self.recording else None
        super().append(group)
        self.updates_committed += sum(len(persist.updates) for persist in group)
        if updates is not None:
            self.groups.append(updates)


@dataclass
class Throughput:
    mode: str
    writes: int
    wall_s: float
    cpu_s: float
    updates_per_s: float
    commits: int
    close_s: float
    db_bytes: int
    uncommitted_at_flush: int | None
    """Updates of the burst the store had not committed when flush() returned (None: not known)."""


async def _write_burst(node: Node, start: int, n: int) -> None:
    doc = await node.open(HOT_DOC)
    try:
        data = doc.get(DATA, type=Map)
        for j in range(n):
            i = start + j
            data[f"k{i % KEYS}"] = i
            if j % YIELD_EVERY_WRITES == YIELD_EVERY_WRITES - 1:
                await asyncio.sleep(0)
        await node.flush()
    finally:
        node.release(HOT_DOC)


async def _throughput(
    mode: Mode, writes: int, root: Path
) -> tuple[Throughput, list[list[tuple[str, bytes]]]]:
    data_dir = root / f"throughput-{mode}"
    # Without a data_dir the durability setting is the default, as a plain NodeConfig has it: flush() then
    # waits for the memory store's writer too.
    durability: Durability = "fsync" if mode == "memory" else mode
    store = None if mode == "memory" else RecordingSqliteStore(data_dir, node_id="w", durability=durability)
    config = _config("w", None if mode == "memory" else data_dir, durability)
    node = Node(config, store=store)
    async with node:
        await _write_burst(node, 0, WARMUP_WRITES)
        commits0 = node.status().counters.store_commits
        committed0 = store.updates_committed if store is not None else 0
        if store is not None:
            store.recording = mode == "fsync"
        cpu0 = time.process_time()
        t0 = time.perf_counter()
        await _write_burst(node, WARMUP_WRITES, writes)
        wall_s = time.perf_counter() - t0
        cpu_s = time.process_time() - cpu0
        uncommitted = None if store is None else writes - (store.updates_committed - committed0)
        if store is not None:
            store.recording = False
        commits = node.status().counters.store_commits - commits0
        t_close = time.perf_counter()
    close_s = time.perf_counter() - t_close
    result = Throughput(
        mode=mode,
        writes=writes,
        wall_s=wall_s,
        cpu_s=cpu_s,
        updates_per_s=writes / wall_s,
        commits=commits,
        close_s=close_s,
        db_bytes=_db_bytes(data_dir),
        uncommitted_at_flush=uncommitted,
    )
    return result, (store.groups if store is not None else [])


_FLOOR_SCHEMA = (
    "CREATE TABLE updates (seq INTEGER PRIMARY KEY, doc_id TEXT NOT NULL, data BLOB NOT NULL)",
    "CREATE INDEX updates_by_doc ON updates (doc_id, seq)",
)


def _floor_db(path: Path) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    for statement in _FLOOR_SCHEMA:
        db.execute(statement)
    return db


def _floor_commit_s(path: Path, groups: Sequence[Sequence[tuple[str, bytes]]]) -> float:
    """Seconds to insert ``groups`` into a fresh floor database at ``path``, one transaction per group."""
    db = _floor_db(path)
    try:
        t0 = time.perf_counter()
        for group in groups:
            db.execute("BEGIN IMMEDIATE")
            db.executemany("INSERT INTO updates (doc_id, data) VALUES (?, ?)", group)
            db.execute("COMMIT")
        return time.perf_counter() - t0
    finally:
        db.close()


def raw_sqlite_floor(groups: list[list[tuple[str, bytes]]], root: Path) -> JSON:
    """The same blobs in the same groups, straight into sqlite3; then one commit per update for a few."""
    updates = sum(len(group) for group in groups)
    grouped_s = _floor_commit_s(root / "floor-groups.db", groups)
    singles = [pair for group in groups for pair in group][:SINGLE_COMMITS]
    single_s = _floor_commit_s(root / "floor-single.db", [[pair] for pair in singles])
    sizes = sorted(len(group) for group in groups)
    return {
        "updates": updates,
        "groups": len(groups),
        "group_mean": updates / len(groups) if groups else math.nan,
        "group_p50": percentile(sizes, 50),
        "group_max": sizes[-1] if sizes else 0,
        "grouped_s": grouped_s,
        "grouped_updates_per_s": updates / grouped_s if grouped_s > 0 else math.nan,
        "single_updates": len(singles),
        "single_updates_per_s": len(singles) / single_s if single_s > 0 else math.nan,
    }


async def _flush_latency(mode: Mode, n: int, root: Path) -> JSON:
    data_dir = root / f"latency-{mode}"
    durability: Durability = "fsync" if mode == "memory" else mode
    async with Node(_config("l", None if mode == "memory" else data_dir, durability)) as node:
        doc = await node.open(HOT_DOC)
        data = doc.get(DATA, type=Map)
        latencies: list[float] = []
        for i in range(n + 20):  # the first 20 warm up
            t0 = time.perf_counter_ns()
            data[f"k{i % KEYS}"] = i
            await node.flush()
            if i >= 20:
                latencies.append((time.perf_counter_ns() - t0) / 1e6)
        node.release(HOT_DOC)
    latencies.sort()
    return {
        "mode": mode,
        "writes": n,
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
        "max_ms": latencies[-1],
        "mean_ms": sum(latencies) / len(latencies),
    }


# ---------------------------------------------------------------------------------------------------------
# (3) A million docs: building the store


def _real_doc(index: int) -> Doc[Any]:
    doc: Doc[Any] = Doc(client_id=TEMPLATE_CLIENT_ID)
    doc.get(DATA, type=Map)[VALUE_KEY] = doc_value(index)
    return doc


class Template:
    """The update of doc 0 split around its value: every doc's update is ``prefix + value + suffix``. All docs
    share one author and one item, hence one state vector and one canonical digest (the digest covers
    items and deletions, not content; the Merkle leaf hashes the doc id with it)."""

    def __init__(self) -> None:
        doc = _real_doc(0)
        self.update = doc.get_update()
        self.state = doc.get_state()
        self.digest = canonical_digest(doc)
        placeholder = doc_value(0).encode()
        if self.update.count(placeholder) != 1:
            raise BenchError("the template update does not hold its value exactly once")
        at = self.update.index(placeholder)
        self.prefix = self.update[:at]
        self.suffix = self.update[at + len(placeholder) :]

    def update_for(self, index: int) -> bytes:
        return self.prefix + doc_value(index).encode() + self.suffix

    def verify(self, docs: int, sample: int) -> int:
        """Compare the spliced update, state and digest with real pycrdt docs; returns docs checked."""
        rng = random.Random(SEED)
        indices = {0, docs - 1, *rng.sample(range(docs), min(sample, docs))}
        for index in sorted(indices):
            doc = _real_doc(index)
            spliced = self.update_for(index)
            if doc.get_update() != spliced or doc.get_state() != self.state:
                raise BenchError(f"spliced update of doc {index} differs from the real doc's")
            if canonical_digest(doc) != self.digest:
                raise BenchError(f"digest of doc {index} differs from the template's")
            check: Doc[Any] = Doc()
            check.apply_update(spliced)
            if check.get(DATA, type=Map).to_py() != {VALUE_KEY: doc_value(index)}:
                raise BenchError(f"spliced update of doc {index} does not decode to its value")
        return len(indices)


def build_store(data_dir: Path, docs: int, progress: Any) -> JSON:
    template = Template()
    verified = template.verify(docs, VERIFY_SAMPLE)
    store = SqliteStore(data_dir, node_id="a", durability="none")
    generate_s = 0.0
    append_s = 0.0
    t_build = time.perf_counter()
    try:
        for start in range(0, docs, BUILD_CHUNK_DOCS):
            indices = range(start, min(docs, start + BUILD_CHUNK_DOCS))
            t0 = time.perf_counter()
            persist = Persist(
                tuple((doc_id(i), template.update_for(i)) for i in indices),
                tuple((doc_id(i), template.state, template.digest) for i in indices),
            )
            t1 = time.perf_counter()
            store.append([persist])
            t2 = time.perf_counter()
            generate_s += t1 - t0
            append_s += t2 - t1
            done = indices.stop
            if done % (10 * BUILD_CHUNK_DOCS) == 0 or done == docs:
                progress(
                    f"  store: {done:,}/{docs:,} docs ({done / (time.perf_counter() - t_build):,.0f} docs/s)"
                )
    finally:
        store.close()
    build_s = time.perf_counter() - t_build
    return {
        "docs": docs,
        "verified_docs": verified,
        "build_s": build_s,
        "generate_s": generate_s,
        "append_s": append_s,
        "docs_per_s": docs / build_s,
        "db_bytes": _db_bytes(data_dir),
        "update_bytes": len(template.update),
        "state_bytes": len(template.state),
    }


def copy_store_for_peer(source: Path, target: Path, node_id: str) -> None:
    """Copy the db file for a second node and rewrite its node id (a store refuses another node's id)."""
    target.mkdir(parents=True)
    shutil.copyfile(source / DB_FILE, target / DB_FILE)
    db = sqlite3.connect(target / DB_FILE, isolation_level=None)
    try:
        db.execute("UPDATE meta SET value = ? WHERE key = 'node_id'", (node_id,))
    finally:
        db.close()


# ---------------------------------------------------------------------------------------------------------
# (3) A million docs: the child node (python -m bench.storage --child ...)


class GcPauses:
    """Durations of the cyclic garbage collector's full (generation 2) collections in this process: with a
    million docs indexed, each one walks every tracked object and stalls the event loop meanwhile."""

    def __init__(self) -> None:
        self.full_ms: list[float] = []
        self._started = 0
        gc.callbacks.append(self._on_gc)

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._started = time.perf_counter_ns()
        elif info.get("generation") == 2:
            self.full_ms.append((time.perf_counter_ns() - self._started) / 1e6)

    def since(self, index: int) -> JSON:
        pauses = self.full_ms[index:]
        return {"gc_full": len(pauses), "gc_full_ms": sum(pauses), "gc_full_max_ms": max(pauses, default=0.0)}


class StorageCommands:
    """``bench._child.serve`` commands of a child node: ``touch {n, docs, seed}`` -> ``touched``, ``ae`` ->
    ``ae {cpu_s, rounds, rounds_in_sync, peers_up, root}``."""

    def __init__(self, pauses: GcPauses) -> None:
        self._pauses = pauses

    async def touch(self, node: Node, cmd: JSON) -> None:
        emit("touched", **await self._touch(node, int(cmd["n"]), int(cmd["docs"]), int(cmd["seed"])))

    async def ae(self, node: Node, cmd: JSON) -> None:
        status = node.status()
        emit(
            "ae",
            cpu_s=time.process_time(),
            rounds=status.counters.ae_rounds_completed,
            rounds_in_sync=status.counters.ae_rounds_in_sync,
            rounds_started=status.counters.ae_rounds_started,
            peers_up=sum(1 for peer in status.peers if peer.state == "alive"),
            root=node.merkle_root().hex(),
            rss_kb=proc_status_kb("VmRSS"),
            gc_full=len(self._pauses.full_ms),
            gc_full_ms=sum(self._pauses.full_ms),
        )

    async def _touch(self, node: Node, n: int, docs: int, seed: int) -> JSON:
        """Open, read and release ``n`` random docs, yielding to the loop every 100 (as an application
        would; the node evicts beyond its cache when its timer runs)."""
        counters0 = node.status().counters
        rng = random.Random(seed)
        indices = rng.sample(range(docs), min(n, docs))
        latencies: list[float] = []
        wrong = 0
        loaded_max = 0
        gc_index = len(self._pauses.full_ms)
        cpu0 = time.process_time()
        t0 = time.perf_counter()
        for k, index in enumerate(indices):
            t_open = time.perf_counter_ns()
            doc = await node.open(doc_id(index))
            value = doc.get(DATA, type=Map).get(VALUE_KEY)
            node.release(doc_id(index))
            latencies.append((time.perf_counter_ns() - t_open) / 1e6)
            if value != doc_value(index):
                wrong += 1
            if k % TOUCH_YIELD_EVERY == TOUCH_YIELD_EVERY - 1:
                await asyncio.sleep(0)
                loaded_max = max(loaded_max, node.status().counters.docs_loaded)
        wall_s = time.perf_counter() - t0
        await node.flush()
        flushed_s = time.perf_counter() - t0
        cpu_s = time.process_time() - cpu0
        counters1 = node.status().counters
        latencies.sort()

        def delta(key: str) -> int:
            return counters1.as_dict()[key] - counters0.as_dict()[key]

        return {
            "touched": len(indices),
            "wrong_values": wrong,
            "wall_s": wall_s,
            "with_flush_s": flushed_s,
            "cpu_s": cpu_s,
            "open_p50_ms": percentile(latencies, 50),
            "open_p99_ms": percentile(latencies, 99),
            "open_max_ms": latencies[-1] if latencies else math.nan,
            "loaded_max": loaded_max,
            "loaded_after": counters1.docs_loaded,
            "evicted": delta("docs_evicted"),
            "store_commits": delta("store_commits"),
            "rss_kb": proc_status_kb("VmRSS"),
            "hwm_kb": proc_status_kb("VmHWM"),
            **self._pauses.since(gc_index),
        }


def _profile_text(profiler: cProfile.Profile) -> str:
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("tottime").print_stats(PROFILE_LINES)
    stats.sort_stats("cumulative").print_stats("crdtsync|sqlite|sortedcontainers", PROFILE_LINES)
    return out.getvalue()


async def child_main(args: argparse.Namespace) -> None:
    t_main = time.monotonic_ns()
    cpu_main = time.process_time()
    peers = [p for p in str(args.peers or "").split(",") if p]
    config = NodeConfig(
        node_id=str(args.node_id),
        listen=str(args.listen),
        peers=peers,
        data_dir=str(args.data_dir),
        durability="fsync",
        replication=ReplicaConfig(docs_cached_max=CACHED_MAX, ae_interval_ms=AE_INTERVAL_MS),
    )
    pauses = GcPauses()
    profiler = cProfile.Profile() if args.profile else None
    if profiler is not None:
        profiler.enable()
    node = Node(config)
    async with node:
        t_entered = time.monotonic_ns()
        root = node.merkle_root()
        t_root = time.monotonic_ns()
        if profiler is not None:
            profiler.disable()
        status = node.status()
        emit(
            "ready",
            t_main_ns=t_main,
            t_entered_ns=t_entered,
            t_root_ns=t_root,
            cpu_imports_s=cpu_main,
            cpu_s=time.process_time(),
            root=root.hex(),
            docs=status.docs,
            epoch=status.epoch,
            counters=status.counters.as_dict(),
            rss_kb=proc_status_kb("VmRSS"),
            hwm_kb=proc_status_kb("VmHWM"),
            profile=_profile_text(profiler) if profiler is not None else "",
            **pauses.since(0),
        )
        commands = StorageCommands(pauses)
        adapter = NodeAdapter(node, detached_map(DATA), {"touch": commands.touch, "ae": commands.ae})
        await serve(adapter, receiver=False)


# ---------------------------------------------------------------------------------------------------------
# (3) A million docs: the parent side


def _spawn_node(
    name: str, data_dir: Path, peers: Sequence[str], log_dir: Path, *, profile: bool = False
) -> tuple[Child, str, int]:
    listen = f"tcp://127.0.0.1:{free_port()}"
    args = ["--child", "--node-id", name, "--data-dir", str(data_dir), "--listen", listen]
    if peers:
        args += ["--peers", ",".join(peers)]
    if profile:
        args.append("--profile")
    t_spawn = time.monotonic_ns()
    return Child(name, "bench.storage", args, log_dir), listen, t_spawn


def _restart_figures(ready: JSON, t_spawn: int) -> JSON:
    return {
        "restart_s": (int(ready["t_root_ns"]) - t_spawn) / 1e9,
        "imports_s": (int(ready["t_main_ns"]) - t_spawn) / 1e9,
        "node_start_s": (int(ready["t_entered_ns"]) - int(ready["t_main_ns"])) / 1e9,
        "merkle_root_s": (int(ready["t_root_ns"]) - int(ready["t_entered_ns"])) / 1e9,
        "cpu_s": float(ready["cpu_s"]),
        "docs": int(ready["docs"]),
        "docs_loaded": int(ready["counters"].get("docs_loaded", 0)),
        "rss_kb": int(ready["rss_kb"]),
        "hwm_kb": int(ready["hwm_kb"]),
        "root": str(ready["root"]),
        "gc_full": int(ready["gc_full"]),
        "gc_full_ms": float(ready["gc_full_ms"]),
    }


def _ae_sample(children: Sequence[Child], deadline: Deadline) -> list[JSON]:
    return [child.request("ae", "ae", deadline) for child in children]


def million(settings: Settings, root: Path, log_dir: Path, progress: Any, result: JSON) -> None:
    """Fills ``result`` as it goes, so a failure late in the part keeps what was measured before it."""
    dir_a = root / "million-a"
    dir_b = root / "million-b"
    progress(f"(3) building a store of {settings.docs:,} docs")
    result["build"] = build_store(dir_a, settings.docs, progress)
    t0 = time.perf_counter()
    copy_store_for_peer(dir_a, dir_b, "b")
    result["build"]["copy_s"] = time.perf_counter() - t0
    children: list[Child] = []
    try:
        progress("(3) restarting a node on it in a fresh process")
        child_a, listen_a, spawn_a = _spawn_node("a", dir_a, [], log_dir)
        children.append(child_a)
        result["restart"] = _restart_figures(child_a.wait("ready", Deadline(NODE_START_TIMEOUT_S)), spawn_a)
        progress(f"(3) touching {settings.touch_docs:,} random docs")
        result["touch"] = child_a.request(
            "touch",
            "touched",
            Deadline(REQUEST_TIMEOUT_S),
            n=settings.touch_docs,
            docs=settings.docs,
            seed=SEED,
        )
        progress("(3) starting the peer on the copy")
        child_b, _listen_b, spawn_b = _spawn_node("b", dir_b, [listen_a], log_dir)
        children.append(child_b)
        result["peer_restart"] = _restart_figures(
            child_b.wait("ready", Deadline(NODE_START_TIMEOUT_S)), spawn_b
        )
        result["roots_equal"] = result["peer_restart"]["root"] == result["restart"]["root"]
        pair = [child_a, child_b]
        connect = Deadline(CONNECT_TIMEOUT_S)
        samples = _ae_sample(pair, connect)
        while not all(int(s["peers_up"]) >= 1 and int(s["rounds"]) >= AE_WARM_ROUNDS for s in samples):
            if connect.expired():
                raise BenchError(f"the two nodes did not connect and run rounds: {samples}")
            time.sleep(POLL_S)
            samples = _ae_sample(pair, connect)
        progress(f"(3) in-sync anti-entropy rounds for {settings.ae_window_s:.0f} s")
        deadline = Deadline(REQUEST_TIMEOUT_S)
        s0 = _ae_sample(pair, deadline)
        proc0 = [proc_cpu_s(child.pid) for child in pair]
        time.sleep(settings.ae_window_s)
        s1 = _ae_sample(pair, deadline)
        proc1 = [proc_cpu_s(child.pid) for child in pair]
        rounds = sum(int(b["rounds"]) - int(a["rounds"]) for a, b in zip(s0, s1, strict=True))
        in_sync = sum(
            int(b["rounds_in_sync"]) - int(a["rounds_in_sync"]) for a, b in zip(s0, s1, strict=True)
        )
        cpu_s = sum(float(b["cpu_s"]) - float(a["cpu_s"]) for a, b in zip(s0, s1, strict=True))
        gc_ms = sum(float(b["gc_full_ms"]) - float(a["gc_full_ms"]) for a, b in zip(s0, s1, strict=True))
        gc_count = sum(int(b["gc_full"]) - int(a["gc_full"]) for a, b in zip(s0, s1, strict=True))
        proc_s = (
            sum(b - a for a, b in zip(proc0, proc1, strict=True) if a is not None and b is not None)
            if None not in proc0 + proc1
            else None
        )
        result["ae"] = {
            "window_s": settings.ae_window_s,
            "rounds": rounds,
            "rounds_in_sync": in_sync,
            "cpu_s": cpu_s,
            "proc_cpu_s": proc_s,
            "cpu_ms_per_round": cpu_s * 1e3 / rounds if rounds else math.nan,
            "proc_cpu_ms_per_round": proc_s * 1e3 / rounds if rounds and proc_s is not None else None,
            "roots_equal": s1[0]["root"] == s1[1]["root"],
            "gc_full": gc_count,
            "gc_full_ms": gc_ms,
            "rss_kb": [int(s["rss_kb"]) for s in s1],
        }
    finally:
        close_all(children)
    result["db_bytes_after"] = _db_bytes(dir_a)
    shutil.rmtree(dir_b, ignore_errors=True)
    if settings.profile:
        progress("(3) profiling a restart (cProfile, in a fresh process)")
        child_p, _listen_p, spawn_p = _spawn_node("a", dir_a, [], log_dir, profile=True)
        try:
            ready = child_p.wait("ready", Deadline(NODE_START_TIMEOUT_S))
            result["profile"] = {
                "restart_s": (int(ready["t_root_ns"]) - spawn_p) / 1e9,
                "text": str(ready["profile"]),
            }
        finally:
            close_all([child_p])
    shutil.rmtree(dir_a, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------------
# (4) Disk bytes per doc after compaction


async def _disk_write(data_dir: Path, docs: int, updates: int) -> JSON:
    async with Node(_config("disk", data_dir, "process", docs_cached_max=max(CACHED_MAX, docs))) as node:
        opened = [await node.open(doc_id(i)) for i in range(docs)]
        maps = [doc.get(DATA, type=Map) for doc in opened]
        writes = 0
        for r in range(updates):
            for data in maps:
                data[f"k{r % DISK_KEYS}"] = r
                writes += 1
                if writes % YIELD_EVERY_WRITES == 0:
                    await asyncio.sleep(0)
        await node.flush()
        states = [len(doc.get_update()) for doc in opened]
        contents = [data.to_py() for data in maps]
        for i in range(docs):
            node.release(doc_id(i))
    return {"writes": writes, "state_bytes_mean": sum(states) / len(states), "contents": contents}


def _page_stats(path: Path) -> JSON:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        page_size = int(db.execute("PRAGMA page_size").fetchone()[0])
        page_count = int(db.execute("PRAGMA page_count").fetchone()[0])
        freelist = int(db.execute("PRAGMA freelist_count").fetchone()[0])
        row = db.execute(
            "SELECT count(*), sum(length(CAST(doc_id AS BLOB))),"
            " (SELECT sum(length(data)) FROM snapshots),"
            " sum(ifnull(length(state), 0) + ifnull(length(digest), 0)) FROM docs"
        ).fetchone()
        log_rows = int(db.execute("SELECT count(*) FROM updates").fetchone()[0])
    finally:
        db.close()
    return {
        "page_size": page_size,
        "pages": page_count,
        "free_pages": freelist,
        "live_bytes": (page_count - freelist) * page_size,
        "docs": int(row[0]),
        "id_bytes": int(row[1] or 0),
        "snapshot_bytes": int(row[2] or 0),
        "state_digest_bytes": int(row[3] or 0),
        "log_rows": log_rows,
    }


def disk_per_doc(settings: Settings, root: Path) -> JSON:
    data_dir = root / "disk"
    docs = settings.disk_docs
    written = asyncio.run(_disk_write(data_dir, docs, settings.disk_updates))
    contents: list[dict[str, Any]] = written.pop("contents")
    before = _db_bytes(data_dir)
    before_pages = _page_stats(data_dir / DB_FILE)
    store = SqliteStore(data_dir, node_id="disk", durability="process")
    t0 = time.perf_counter()
    try:
        for i in range(docs):
            store.compact(doc_id(i))
        compact_s = time.perf_counter() - t0
        wrong = sum(
            1
            for i in range(docs)
            if _decode_map(store.load_doc(doc_id(i))) != contents[i]  # the compacted content is unchanged
        )
    finally:
        store.close()
    after = _db_bytes(data_dir)
    pages = _page_stats(data_dir / DB_FILE)
    db = sqlite3.connect(data_dir / DB_FILE, isolation_level=None)
    try:
        db.execute("VACUUM")
    finally:
        db.close()
    vacuumed = _db_bytes(data_dir)
    shutil.rmtree(data_dir, ignore_errors=True)
    state_mean = float(written["state_bytes_mean"])
    return {
        "docs": docs,
        "updates_per_doc": settings.disk_updates,
        "writes": written["writes"],
        "state_bytes_mean": state_mean,
        "bytes_before_compaction": before,
        "log_rows_before": before_pages["log_rows"],
        "compact_s": compact_s,
        "bytes_after": after,
        "bytes_per_doc": after / docs,
        "live_bytes_per_doc": pages["live_bytes"] / docs,
        "vacuumed_bytes_per_doc": vacuumed / docs,
        "snapshot_bytes_mean": pages["snapshot_bytes"] / docs,
        "row_payload_per_doc": (pages["id_bytes"] + pages["snapshot_bytes"] + pages["state_digest_bytes"])
        / docs,
        "ratio_file": ratio(after / docs, state_mean),
        "ratio_vacuumed": ratio(vacuumed / docs, state_mean),
        "pages": pages,
        "content_mismatches": wrong,
    }


def _decode_map(update: bytes | None) -> dict[str, Any] | None:
    if update is None:
        return None
    doc: Doc[Any] = Doc()
    doc.apply_update(update)
    content: dict[str, Any] = doc.get(DATA, type=Map).to_py() or {}
    return content


# ---------------------------------------------------------------------------------------------------------
# Report


def _targets(results: JSON) -> list[Target]:
    targets: list[Target] = []
    throughput: dict[str, Throughput] = results.get("throughput", {})
    if "fsync" in throughput:
        targets.append(
            Target(
                "fsync_updates_per_s",
                "(1) durable writes, fsync, updates/s",
                throughput["fsync"].updates_per_s,
                TARGET_UPDATES_PER_S,
                unit="/s",
                op=">=",
            )
        )
    big = results.get("million")
    if big and "build" in big:
        docs = int(big["build"]["docs"])
        if "restart" in big:
            targets.append(
                Target(
                    "restart_s",
                    f"(3) restart to serving, {docs:,} docs, s",
                    float(big["restart"]["restart_s"]),
                    TARGET_RESTART_S,
                    unit="s",
                )
            )
        if "touch" in big:
            rss = max(int(big["restart"]["rss_kb"]), int(big["touch"]["rss_kb"]), int(big["touch"]["hwm_kb"]))
            targets.append(
                Target(
                    "rss_bytes",
                    "(3) resident memory (peak), MB",
                    rss * 1024 / 1e6,
                    TARGET_RSS_BYTES / 1e6,
                    unit="MB",
                )
            )
        if "ae" in big:
            targets.append(
                Target(
                    "round_cpu_ms",
                    "(3) in-sync AE round CPU (both nodes), ms",
                    float(big["ae"]["cpu_ms_per_round"]),
                    TARGET_ROUND_CPU_MS,
                    unit="ms",
                )
            )
    return targets


def report(machine: dict[str, str], settings: Settings, results: JSON) -> list[Target]:
    print("Machine and versions")
    for key, value in machine.items():
        print(f"  {key:18} {value}")
    print(f"  {'mode':18} {'quick' if settings.quick else 'default'}")

    throughput: dict[str, Throughput] = results.get("throughput", {})
    floor: JSON | None = results.get("floor")
    if throughput:
        none = throughput.get("none")
        rows = [
            [
                t.mode,
                fmt(t.updates_per_s, 0),
                fmt(t.wall_s * 1e3, 0),
                fmt(t.cpu_s / t.writes * 1e6, 1),
                fmt(t.commits),
                fmt(t.writes / t.commits if t.commits else None, 1),
                fmt(t.close_s * 1e3, 0),
                fmt(t.db_bytes / 1e6, 1) if t.mode != "memory" else "-",
                fmt(t.uncommitted_at_flush),
            ]
            for t in throughput.values()
        ]
        notes = []
        if floor is not None:
            rows.append(
                [
                    "raw sqlite3, same groups",
                    fmt(floor["grouped_updates_per_s"], 0),
                    fmt(floor["grouped_s"] * 1e3, 0),
                    "-",
                    fmt(int(floor["groups"])),
                    fmt(floor["group_mean"], 1),
                    "-",
                    "-",
                ]
            )
            rows.append(
                [
                    "raw sqlite3, 1 per commit",
                    fmt(floor["single_updates_per_s"], 0),
                    "-",
                    "-",
                    fmt(int(floor["single_updates"])),
                    "1.0",
                    "-",
                    "-",
                ]
            )
            notes.append(
                f"fsync groups: mean {floor['group_mean']:.1f}, median {floor['group_p50']:.0f},"
                f" max {floor['group_max']} updates; floor = INSERT into an updates(seq, doc_id, data) table"
                " + index, WAL,"
                " synchronous=FULL"
            )
        if "fsync" in throughput and none is not None:
            notes.append(
                f"gap fsync/none: {fmt(ratio(throughput['fsync'].updates_per_s, none.updates_per_s), 3)}"
                " (updates/s); with durability none flush() does not wait for the store:"
                " close ms is the drain"
            )
        notes.append(
            "CPU us/update: the whole process (event loop + store writer thread) over the timed burst"
        )
        notes.append(
            "unflushed: updates of the burst not yet committed when flush() returned"
            " (0 expected but for none)"
        )
        for t in throughput.values():
            if t.mode in ("fsync", "process") and t.uncommitted_at_flush:
                notes.append(
                    f"BUG: with durability {t.mode}, flush() returned before"
                    f" {t.uncommitted_at_flush:,} of the"
                    f" {t.writes:,} updates were committed; the updates/s figure is not a durable rate"
                )
        headers = [
            "store",
            "updates/s",
            "wall ms",
            "CPU us/upd",
            "commits",
            "upd/commit",
            "close ms",
            "db MB",
        ]
        headers.append("unflushed")
        print_table(
            f"(1) Write throughput: {settings.writes:,} Map sets on one doc, one transaction each,"
            " then flush()",
            headers,
            [row + ["-"] * (len(headers) - len(row)) for row in rows],
            notes,
        )
    latency: list[JSON] = results.get("latency", [])
    if latency:
        print_table(
            f"(2) Flush latency: single write + await flush(), {settings.latency_writes:,} times",
            ["store", "p50 ms", "p99 ms", "max ms", "mean ms"],
            [
                [
                    str(r["mode"]),
                    fmt(r["p50_ms"], 3),
                    fmt(r["p99_ms"], 3),
                    fmt(r["max_ms"], 3),
                    fmt(r["mean_ms"], 3),
                ]
                for r in latency
            ],
        )
    big: JSON | None = results.get("million")
    if big and "build" in big:
        build = big["build"]
        rows = [
            ["docs", fmt(int(build["docs"])), ""],
            [
                "build s",
                fmt(build["build_s"], 1),
                f"generate {build['generate_s']:.1f} s + SqliteStore.append {build['append_s']:.1f} s;"
                f" {build['docs_per_s']:,.0f} docs/s; {build['verified_docs']} docs checked against pycrdt",
            ],
            [
                "db MB",
                fmt(build["db_bytes"] / 1e6, 1),
                f"{build['db_bytes'] / build['docs']:.0f} B/doc (update {build['update_bytes']} B, state"
                f" {build['state_bytes']} B); copy for the peer {build.get('copy_s', 0):.2f} s",
            ],
        ]
        restart = big.get("restart")
        if restart is not None:
            rows += [
                [
                    "restart to serving s",
                    fmt(restart["restart_s"], 2),
                    f"interpreter+imports {restart['imports_s']:.2f}"
                    f" + Node start {restart['node_start_s']:.2f}"
                    f" + merkle_root {restart['merkle_root_s']:.3f}; CPU {restart['cpu_s']:.2f} s;"
                    f" {restart['docs']:,} docs, {restart['docs_loaded']} loaded;"
                    f" {restart['gc_full']} full GCs"
                    f" {restart['gc_full_ms']:.0f} ms",
                ],
                [
                    "RSS after start MB",
                    fmt(restart["rss_kb"] / 1024, 0),
                    f"peak {restart['hwm_kb'] / 1024:,.0f} MB",
                ],
            ]
        touch = big.get("touch")
        if touch is not None:
            rows += [
                [
                    f"touch {touch['touched']:,} docs s",
                    fmt(touch["wall_s"], 2),
                    f"open+read+release p50 {touch['open_p50_ms']:.3f} ms, p99 {touch['open_p99_ms']:.3f} ms,"
                    f" max {touch['open_max_ms']:.1f} ms; wrong values {touch['wrong_values']};"
                    f" {touch['gc_full']}"
                    f" full GCs, max {touch['gc_full_max_ms']:.0f} ms",
                ],
                [
                    "RSS after touching MB",
                    fmt(touch["rss_kb"] / 1024, 0),
                    f"peak {touch['hwm_kb'] / 1024:,.0f} MB; loaded max {touch['loaded_max']:,}, after"
                    f" {touch['loaded_after']:,}; evicted {touch['evicted']:,};"
                    f" store commits {touch['store_commits']:,}",
                ],
            ]
        peer = big.get("peer_restart")
        if peer is not None:
            rows.append(
                [
                    "peer restart s",
                    fmt(peer["restart_s"], 2),
                    f"same root as the first node: {'yes' if big.get('roots_equal') else 'NO'}",
                ]
            )
        ae = big.get("ae")
        if ae is not None:
            rows.append(
                [
                    "AE CPU ms/round",
                    fmt(ae["cpu_ms_per_round"], 3),
                    f"{ae['rounds']} rounds ({ae['rounds_in_sync']} in sync) in {ae['window_s']:.0f} s,"
                    " CPU both"
                    f" {ae['cpu_s'] * 1e3:.0f} ms (/proc {fmt(ae['proc_cpu_ms_per_round'], 3)} ms/round);"
                    f" roots equal: {'yes' if ae['roots_equal'] else 'NO'}; {ae['gc_full']} full GCs"
                    f" {ae['gc_full_ms']:.0f} ms",
                ]
            )
        print_table(f"(3) One node holding {int(build['docs']):,} docs", ["figure", "value", "detail"], rows)
    disk: JSON | None = results.get("disk")
    if disk is not None:
        rows = [
            ["mean encoded state (doc.get_update())", fmt(disk["state_bytes_mean"], 0), "1.00"],
            [
                "mean compacted snapshot",
                fmt(disk["snapshot_bytes_mean"], 0),
                fmt(ratio(disk["snapshot_bytes_mean"], disk["state_bytes_mean"]), 2),
            ],
            [
                "row payload (id + snapshot + state + digest)",
                fmt(disk["row_payload_per_doc"], 0),
                fmt(ratio(disk["row_payload_per_doc"], disk["state_bytes_mean"]), 2),
            ],
            [
                "db file / docs, before compaction",
                fmt(disk["bytes_before_compaction"] / disk["docs"], 0),
                fmt(ratio(disk["bytes_before_compaction"] / disk["docs"], disk["state_bytes_mean"]), 2),
            ],
            ["db file / docs, after compaction", fmt(disk["bytes_per_doc"], 0), fmt(disk["ratio_file"], 2)],
            [
                "live pages / docs, after compaction",
                fmt(disk["live_bytes_per_doc"], 0),
                fmt(ratio(disk["live_bytes_per_doc"], disk["state_bytes_mean"]), 2),
            ],
            [
                "db file / docs, after VACUUM",
                fmt(disk["vacuumed_bytes_per_doc"], 0),
                fmt(disk["ratio_vacuumed"], 2),
            ],
        ]
        print_table(
            f"(4) Disk per doc: {disk['docs']:,} docs x {disk['updates_per_doc']} Map sets"
            f" over {DISK_KEYS} keys,"
            " then compacted",
            ["bytes per doc", "B", "x state"],
            rows,
            [
                f"compaction {disk['compact_s'] * 1e3:.0f} ms for {disk['docs']:,} docs; log rows before"
                f" {disk['log_rows_before']:,}; content changed by compaction:"
                f" {disk['content_mismatches']} docs",
                f"free pages after compaction {disk['pages']['free_pages']:,} of {disk['pages']['pages']:,}"
                " (the store never vacuums: freed log pages are reused, the file does not shrink)",
            ],
        )
    targets = _targets(results)
    print_table(
        "Targets (from the issue)",
        ["target", "measured", "limit", "verdict"],
        [[t.text, fmt(t.value, 2), f"{t.op} {t.limit:,.4g}", t.verdict] for t in targets],
    )
    profile = (big or {}).get("profile")
    if profile is not None:
        print(
            "\nProfile of a restart (cProfile, Node start + merkle_root;"
            f" {profile['restart_s']:.1f} s with profiling):"
        )
        print(profile["text"])
    return targets


# ---------------------------------------------------------------------------------------------------------
# Main


def _loadavg() -> str:
    """1, 5 and 15 minute load averages: other work on the machine (e.g. tests) skews every figure."""
    try:
        return " ".join(f"{value:.2f}" for value in os.getloadavg())
    except OSError:
        return "unknown"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.storage", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer writes, 100,000 docs (< 2 minutes)")
    parser.add_argument("--json", metavar="OUT", type=Path, help="also write every figure as JSON to OUT")
    parser.add_argument("--docs", type=int, help="docs of part (3) (default 1,000,000; 100,000 with --quick)")
    parser.add_argument("--profile", action="store_true", help="also profile a restart of the big node")
    # The child node of part (3): python -m bench.storage --child --node-id ... --data-dir ... --listen ...
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--node-id", help=argparse.SUPPRESS)
    parser.add_argument("--data-dir", help=argparse.SUPPRESS)
    parser.add_argument("--listen", help=argparse.SUPPRESS)
    parser.add_argument("--peers", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        run_main(lambda: child_main(args))
        return 0
    quick = bool(args.quick)
    docs = int(args.docs) if args.docs is not None else (100_000 if quick else 1_000_000)
    if not 1 <= docs <= DOCS_MAX:
        print(f"--docs must be in 1..{DOCS_MAX:,}", file=sys.stderr)
        return 2
    settings = Settings(
        quick=quick,
        writes=30_000 if quick else 100_000,
        latency_writes=300 if quick else 2000,
        docs=docs,
        touch_docs=TOUCH_DOCS,
        ae_window_s=5.0 if quick else 15.0,
        disk_docs=DISK_DOCS,
        disk_updates=DISK_UPDATES,
        profile=bool(args.profile),
    )
    machine = machine_info()
    machine["loadavg at start"] = _loadavg()
    root = Path(tempfile.mkdtemp(prefix="crdtsync-storage-bench-"))
    machine["temp dir"] = str(root.parent)
    log_dir = root / "logs"
    log_dir.mkdir()
    results: JSON = {}
    failures: list[str] = []
    started = time.monotonic()

    def progress(text: str) -> None:
        print(f"... [{time.monotonic() - started:6.1f} s] {text}", file=sys.stderr, flush=True)

    keep_logs = False
    try:
        throughput: dict[str, Throughput] = {}
        for mode in MODES:
            progress(f"(1) throughput, {mode}")
            measured, groups = asyncio.run(_throughput(mode, settings.writes, root))
            throughput[mode] = measured
            if groups:
                progress("(1) raw sqlite3 floor")
                results["floor"] = raw_sqlite_floor(groups, root)
        results["throughput"] = throughput
        results["latency"] = []
        for mode in MODES:
            progress(f"(2) flush latency, {mode}")
            results["latency"].append(asyncio.run(_flush_latency(mode, settings.latency_writes, root)))
        results["million"] = {}
        try:
            million(settings, root, log_dir, progress, results["million"])
        except BenchError as exc:
            failures.append(f"(3) million docs: {exc}")
            keep_logs = True
        progress("(4) disk bytes per doc")
        results["disk"] = disk_per_doc(settings, root)
        progress("done")
        machine["loadavg at end"] = _loadavg()
        targets = report(machine, settings, results)
        for failure in failures:
            print(f"note: not measured: {failure}")
        if args.json is not None:
            summary = {
                "machine": machine,
                "settings": asdict(settings),
                "results": {
                    key: ({k: asdict(v) for k, v in value.items()} if key == "throughput" else value)
                    for key, value in results.items()
                },
                "targets": [t.as_json() for t in targets],
                "failures": failures,
            }
            write_json(args.json, summary)
    finally:
        if keep_logs:
            kept = Path(tempfile.mkdtemp(prefix="crdtsync-storage-logs-"))
            with contextlib.suppress(OSError):
                shutil.copytree(log_dir, kept, dirs_exist_ok=True)
            print(f"\nchild logs kept in {kept}", file=sys.stderr)
        shutil.rmtree(root, ignore_errors=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
