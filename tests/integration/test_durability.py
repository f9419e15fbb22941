"""Durability with real processes, real SQLite files and real ZeroMQ on 127.0.0.1.

A write is acknowledged once `await node.flush()` returned for it (durability fsync). The writer
child (durable_writer.py) prints each acknowledged write; the tests kill it with SIGKILL at a seeded
moment, restart its node on the same data_dir and check that no acknowledged write is lost, then
that the restarted node converges with a peer. Backups taken while writing are restored into a
cluster that moved on. Randomized tests print their seed: replay with CRDTSYNC_TEST_SEED=<seed>;
CRDTSYNC_CRASH_ITERATIONS=<n> runs more kill -9 iterations.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import os
import random
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pycrdt import Doc, Map
from zmq_support import free_endpoint, wait_until

from crdtsync import Node, NodeConfig, ReplicaConfig, StoreError
from crdtsync.store.sqlite import DB_FILE, SqliteStore, read_backup

pytestmark = pytest.mark.integration

FAST = ReplicaConfig(
    hello_interval_ms=100.0, tick_interval_ms=20.0, ae_interval_ms=300.0, ae_round_timeout_ms=1000.0
)
WRITER = Path(__file__).with_name("durable_writer.py")
REPO = Path(__file__).resolve().parents[2]
CHILD_START_TIMEOUT_S = 30.0
ACK_TIMEOUT_S = 30.0
CONVERGE_TIMEOUT_S = 20.0
DOCS = 4


def _base_seed(default: int) -> int:
    return int(os.environ.get("CRDTSYNC_TEST_SEED", default))


def _config(node_id: str, listen: str, peers: list[str], data_dir: Path | None = None) -> NodeConfig:
    return NodeConfig(
        node_id=node_id,
        listen=listen,
        peers=peers,
        data_dir=None if data_dir is None else str(data_dir),
        durability="fsync",
        replication=FAST,
    )


def _seq(value: str) -> int:
    return int(value.rsplit(":", 1)[1])


@dataclass
class Acked:
    """Acknowledged writes of a writer child: (doc, key) -> largest acknowledged seq."""

    latest: dict[tuple[str, str], int] = field(default_factory=dict)
    lines: int = 0

    def add(self, line: str) -> None:
        kind, doc_id, key, value = line.split()
        assert kind == "ack", line
        self.lines += 1
        self.latest[(doc_id, key)] = max(_seq(value), self.latest.get((doc_id, key), 0))

    def problems(self, maps: dict[str, dict[str, Any]]) -> list[str]:
        """What a replica holding `maps` (doc -> Map content) lost of these writes. A value newer than the
        acknowledged one is fine: it was written (maybe not acknowledged) after it."""
        out = []
        for (doc_id, key), seq in sorted(self.latest.items()):
            value = maps.get(doc_id, {}).get(key)
            if value is None:
                out.append(f"{doc_id}/{key} is missing (acknowledged seq {seq})")
            elif _seq(value) < seq:
                out.append(f"{doc_id}/{key} = {value!r}, older than acknowledged seq {seq}")
        return out


class WriterChild:
    """durable_writer.py as a child process; its stdout is read line by line with deadlines."""

    def __init__(self, process: asyncio.subprocess.Process, stderr_path: Path) -> None:
        self.process = process
        self.stderr_path = stderr_path
        self.epoch = 0

    @classmethod
    async def start(
        cls, log_dir: Path, *, data_dir: Path, listen: str, peers: list[str], seed: int, prefix: str
    ) -> WriterChild:
        stderr_path = log_dir / f"writer-{prefix}.stderr"
        arguments = ["--data-dir", str(data_dir), "--node-id", "w", "--listen", listen]
        for peer in peers:
            arguments += ["--peer", peer]
        arguments += ["--seed", str(seed), "--prefix", prefix, "--docs", str(DOCS)]
        with stderr_path.open("wb") as stderr:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                str(WRITER),
                *arguments,
                cwd=REPO,
                stdout=asyncio.subprocess.PIPE,
                stderr=stderr,
            )
        child = cls(process, stderr_path)
        line = await child._line(time.monotonic() + CHILD_START_TIMEOUT_S, "the writer is ready")
        if line is None or not line.startswith("ready "):
            raise AssertionError(f"writer did not start: {line!r}\n{child.stderr()}")
        child.epoch = int(line.split()[1])
        return child

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")[-4000:]

    async def _line(self, deadline: float, what: str) -> str | None:
        """The next complete line, or None at end of output (a line cut short by the kill is dropped)."""
        assert self.process.stdout is not None
        remaining = deadline - time.monotonic()
        try:
            raw = await asyncio.wait_for(self.process.stdout.readline(), max(remaining, 0.0))
        except TimeoutError:
            raise AssertionError(f"timed out waiting until {what}\nwriter stderr:\n{self.stderr()}") from None
        if not raw.endswith(b"\n"):
            return None
        return raw.decode().rstrip("\n")

    async def read_acks(self, acked: Acked, count: int, on_line: Callable[[], None] | None = None) -> None:
        """Read `count` acknowledgement lines into `acked`."""
        deadline = time.monotonic() + ACK_TIMEOUT_S
        for _ in range(count):
            line = await self._line(deadline, f"{count} acknowledged writes")
            if line is None:
                raise AssertionError(f"writer exited early (rc {self.process.returncode})\n{self.stderr()}")
            acked.add(line)
            if on_line is not None:
                on_line()

    async def kill(self, acked: Acked) -> None:
        """SIGKILL, then read what the child had acknowledged before it died."""
        self.process.send_signal(signal.SIGKILL)
        deadline = time.monotonic() + ACK_TIMEOUT_S
        while (line := await self._line(deadline, "the killed writer's output ends")) is not None:
            acked.add(line)
        returncode = await asyncio.wait_for(self.process.wait(), ACK_TIMEOUT_S)
        assert returncode == -signal.SIGKILL, f"writer exited with {returncode}\n{self.stderr()}"

    async def ensure_dead(self) -> None:
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()


async def _maps(node: Node, doc_ids: list[str]) -> dict[str, dict[str, Any]]:
    return {doc_id: (await node.open(doc_id)).get("data", type=Map).to_py() for doc_id in doc_ids}


def _same(a: Node, b: Node) -> bool:
    ids = a.doc_ids()
    return (
        ids == b.doc_ids()
        and all(a.digest(doc_id) == b.digest(doc_id) for doc_id in ids)
        and a.merkle_root() == b.merkle_root()
    )


def _differences(a: Node, b: Node) -> str:
    ids_a, ids_b = set(a.doc_ids()), set(b.doc_ids())
    differing = [d for d in sorted(ids_a & ids_b) if a.digest(d) != b.digest(d)]
    return f"docs only on one side: {sorted(ids_a ^ ids_b)}, docs with different digests: {differing}"


def _db_bytes(directory: Path) -> str:
    return hashlib.sha256((directory / DB_FILE).read_bytes()).hexdigest()


# ---------------------------------------------------------------------------------------- a. kill -9


def test_every_acknowledged_write_survives_kill_9_of_the_writer(tmp_path: Path) -> None:
    base_seed = _base_seed(1000)
    iterations = int(os.environ.get("CRDTSYNC_CRASH_ITERATIONS", "6"))
    print(f"seed={base_seed} iterations={iterations} (replay with CRDTSYNC_TEST_SEED={base_seed})")
    data_dir = tmp_path / "w"

    async def scenario() -> None:
        acked = Acked()
        epochs: list[int] = []
        for iteration in range(iterations):
            seed = base_seed + iteration
            kill_after = random.Random(seed).randint(20, 400)
            print(f"iteration {iteration}: seed {seed}, SIGKILL after {kill_after} acknowledged lines")
            listen = free_endpoint()
            child = await WriterChild.start(
                tmp_path, data_dir=data_dir, listen=listen, peers=[], seed=seed, prefix=f"i{iteration}"
            )
            try:
                await child.read_acks(acked, kill_after)
                await child.kill(acked)
            finally:
                await child.ensure_dead()
            # Restart the node on the same data_dir, in this process: nothing acknowledged is lost.
            async with Node(_config("w", free_endpoint(), [], data_dir)) as node:
                epochs += [child.epoch, node.status().epoch]
                maps = await _maps(node, [f"doc-{index}" for index in range(DOCS)])
                lost = acked.problems(maps)
                assert not lost, f"iteration {iteration} (seed {seed}) lost {len(lost)} writes: {lost[:10]}"
            print(f"  {acked.lines} acknowledged lines, {len(acked.latest)} keys so far, all present")
        assert all(a < b for a, b in itertools.pairwise(epochs)), f"epochs {epochs}"

    asyncio.run(scenario())


# ---------------------------------------------------------------------------------------- b. converge


def test_a_writer_restarted_after_kill_9_converges_with_its_peer(tmp_path: Path) -> None:
    seed = _base_seed(2000)
    rng = random.Random(seed)
    kill_after = rng.randint(20, 400)
    print(
        f"seed={seed}: SIGKILL after {kill_after} acknowledged lines (replay with CRDTSYNC_TEST_SEED={seed})"
    )
    data_dir = tmp_path / "w"
    doc_ids = [f"doc-{index}" for index in range(DOCS)]

    async def scenario() -> None:
        child_listen, peer_listen = free_endpoint(), free_endpoint()
        acked = Acked()
        peer_values: dict[tuple[str, str], str | None] = {}  # the peer's own keys: final value or deleted
        async with Node(_config("p", peer_listen, [child_listen])) as peer:
            maps = {doc_id: (await peer.open(doc_id)).get("data", type=Map) for doc_id in doc_ids}

            def peer_write() -> None:
                doc_id, index = rng.choice(doc_ids), len(peer_values)
                maps[doc_id][f"p:k{index}"] = peer_values[(doc_id, f"p:k{index}")] = f"p:{index}"

            child = await WriterChild.start(
                tmp_path, data_dir=data_dir, listen=child_listen, peers=[peer_listen], seed=seed, prefix="w"
            )
            try:
                # The peer writes one key per acknowledged line of the child, so both write at once.
                await child.read_acks(acked, kill_after, on_line=peer_write)
                await child.kill(acked)
            finally:
                await child.ensure_dead()
            # The child is down: the peer keeps writing, overwrites and deletes some of its own keys.
            for _ in range(100):
                peer_write()
            for doc_id, key in rng.sample(sorted(peer_values), 30):
                if rng.random() < 0.5:
                    maps[doc_id][key] = peer_values[(doc_id, key)] = f"p:{len(peer_values) + 1000}"
                else:
                    del maps[doc_id][key]
                    peer_values[(doc_id, key)] = None
            await peer.flush()

            async with Node(_config("w", child_listen, [peer_listen], data_dir)) as restarted:
                assert restarted.status().epoch > child.epoch
                waited = await wait_until(
                    lambda: _same(peer, restarted), CONVERGE_TIMEOUT_S, lambda: _differences(peer, restarted)
                )
                print(f"converged {waited:.2f} s after the restart; {acked.lines} acknowledged child lines")
                for name, node in (("peer", peer), ("restarted writer", restarted)):
                    content = await _maps(node, doc_ids)
                    lost = acked.problems(content)
                    assert not lost, f"{name} lacks {len(lost)} acknowledged child writes: {lost[:10]}"
                    peers_own = {(doc_id, key): content[doc_id].get(key) for doc_id, key in peer_values}
                    assert peers_own == peer_values, f"{name} differs from the peer's own writes"

    asyncio.run(scenario())


# ---------------------------------------------------------------------------------------- c. backups


def test_a_backup_taken_while_writing_restores_without_losing_anything_newer(tmp_path: Path) -> None:
    seed = _base_seed(3000)
    rng = random.Random(seed)
    print(f"seed={seed} (replay with CRDTSYNC_TEST_SEED={seed})")
    doc_ids = [f"doc-{index}" for index in range(DOCS)]
    backup_path = tmp_path / "a-backup.db"

    async def scenario() -> None:
        a_listen, b_listen = free_endpoint(), free_endpoint()
        async with (
            Node(_config("a", a_listen, [b_listen], tmp_path / "a")) as a,
            Node(_config("b", b_listen, [a_listen])) as b,
        ):
            maps = {doc_id: (await a.open(doc_id)).get("data", type=Map) for doc_id in doc_ids}
            written: list[tuple[str, str, str]] = []
            stop = asyncio.Event()

            async def writer() -> None:
                while not stop.is_set():
                    for _ in range(rng.randint(1, 8)):
                        doc_id, key = rng.choice(doc_ids), f"k{len(written)}"
                        value = f"v{len(written)}"
                        maps[doc_id][key] = value
                        written.append((doc_id, key, value))
                    await a.flush()

            task = asyncio.create_task(writer())
            await wait_until(lambda: len(written) >= 300, 10.0, "300 writes before the backup")
            before_backup = len(written)
            await a.backup(str(backup_path))
            after_backup = len(written)
            await wait_until(lambda: len(written) >= after_backup + 300, 10.0, "300 writes after the backup")
            stop.set()
            await task
            print(
                f"backup taken after {before_backup} writes; returned after {after_backup}; {len(written)} in all"
            )

            backed_up: dict[str, dict[str, Any]] = {}
            for doc_id, update in read_backup(backup_path):
                doc: Doc[Any] = Doc()
                doc.apply_update(update)
                backed_up[doc_id] = doc.get("data", type=Map).to_py()
            backup_keys = sorted((d, k) for d, m in backed_up.items() for k in m)
            missing = [(d, k, v) for d, k, v in written[:before_backup] if backed_up.get(d, {}).get(k) != v]
            assert not missing, f"writes made before backup() are missing from it: {missing[:10]}"
            assert len(backup_keys) <= len(written)

            # The cluster moves on: overwrite some keys of the backup, delete others.
            changed = rng.sample(backup_keys, 60)
            overwritten, deleted = changed[:30], changed[30:]
            for doc_id, key in overwritten:
                maps[doc_id][key] = f"newer-{key}"
            for doc_id, key in deleted:
                del maps[doc_id][key]
            await a.flush()
            await wait_until(lambda: _same(a, b), CONVERGE_TIMEOUT_S, lambda: _differences(a, b))
            digests = {doc_id: a.digest(doc_id) for doc_id in a.doc_ids()}
            content = await _maps(a, doc_ids)

            # Restoring the older backup into b (in sync with a) merges state b already holds: a CRDT
            # merge of an older state into a newer one changes nothing, so deletes stay deleted.
            assert await b.restore(str(backup_path)) == len(backed_up)
            assert {doc_id: b.digest(doc_id) for doc_id in b.doc_ids()} == digests
            b_content = await _maps(b, doc_ids)
            assert b_content == content
            for doc_id, key in overwritten:
                assert b_content[doc_id][key] == f"newer-{key}"
            for doc_id, key in deleted:
                assert key not in b_content[doc_id], f"{doc_id}/{key} was resurrected by the restore"
            await b.flush()
            await wait_until(lambda: _same(a, b), CONVERGE_TIMEOUT_S, lambda: _differences(a, b))
            assert {doc_id: a.digest(doc_id) for doc_id in a.doc_ids()} == digests

            # A fresh, empty node joins and restores the backup: it ends with everything.
            async with Node(_config("c", free_endpoint(), [a_listen, b_listen])) as c:
                assert await c.restore(str(backup_path)) == len(backed_up)
                waited = await wait_until(lambda: _same(a, c), CONVERGE_TIMEOUT_S, lambda: _differences(a, c))
                print(f"fresh node caught up {waited:.2f} s after its restore")
                assert await _maps(c, doc_ids) == content
                assert {doc_id: a.digest(doc_id) for doc_id in a.doc_ids()} == digests
                await wait_until(lambda: _same(b, c), CONVERGE_TIMEOUT_S, lambda: _differences(b, c))

    asyncio.run(scenario())


# ---------------------------------------------------------------------------------------- d. refusal


def test_a_data_dir_of_another_node_fails_start_with_store_error_and_binds_nothing(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path, node_id="a")
    store.close()
    before = _db_bytes(tmp_path)

    async def scenario() -> None:
        listen, publish = free_endpoint(), free_endpoint()
        config = NodeConfig(node_id="b", listen=listen, publish=publish, data_dir=str(tmp_path))
        with pytest.raises(StoreError, match="belongs to node 'a'"):
            await Node(config).start()
        # Neither address was left bound: another node starts on both.
        async with Node(NodeConfig(node_id="b", listen=listen, publish=publish)) as node:
            assert node.status().publish_endpoint == publish

    asyncio.run(scenario())
    assert _db_bytes(tmp_path) == before, "the refused start changed the other node's store"


# ---------------------------------------------------------------------------------------- flush


def test_flush_returns_only_once_every_earlier_write_is_committed_even_beyond_one_commit_group(
    tmp_path: Path,
) -> None:
    # Regression: a flush used to wait only for the first group when its writes spanned more than
    # group_updates_max (20,000) updates; a kill then lost "acknowledged" writes.
    data_dir = tmp_path / "a"

    async def scenario() -> None:
        async with Node(_config("a", free_endpoint(), [], data_dir)) as node:
            maps = [(await node.open(f"doc-{index}")).get("data", type=Map) for index in range(3)]
            written = 0
            for burst in range(6):  # bursts handed to the writer while earlier ones commit
                for _ in range(12_000):
                    maps[burst % 3][f"k{written}"] = written
                    written += 1
                await asyncio.sleep(0)  # one turn of the loop: the node hands the burst to its writer
            await node.flush()
            # Read the committed state right now, through another connection, before anything else runs.
            committed = 0
            for _doc_id, update in read_backup(data_dir / DB_FILE):
                doc: Doc[Any] = Doc()
                doc.apply_update(update)
                committed += len(doc.get("data", type=Map).to_py())
            assert committed == written, (
                f"flush() returned with {written - committed} of {written} writes uncommitted"
            )

    asyncio.run(scenario())
