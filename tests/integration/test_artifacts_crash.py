"""kill -9 of a node putting artifact versions (and deleting and collecting between puts), at a
seeded moment: after a restart every acknowledged version is there, and every version the manifest
lists reads back whole and verified (no version claims chunks the node does not have).
Replay with CRDTSYNC_TEST_SEED=<seed>."""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from zmq_support import free_endpoint

from crdtsync import Node, NodeConfig

pytestmark = pytest.mark.integration

WRITER = Path(__file__).with_name("artifact_writer.py")
ITERATIONS = 2
LINE_TIMEOUT_S = 30.0


def _wait_for_acks(process: subprocess.Popen[str], count: int) -> list[str]:
    """The lines the child printed up to its `count`-th acknowledgement."""
    assert process.stdout is not None
    lines: list[str] = []
    deadline = time.monotonic() + LINE_TIMEOUT_S
    while sum(line.startswith("ack ") for line in lines) < count:
        assert time.monotonic() < deadline, "the writer stopped acknowledging"
        line = process.stdout.readline()
        assert line, f"the writer exited: {process.stderr.read() if process.stderr else ''}"
        lines.append(line)
    return lines


async def _check(data_dir: Path, tmp_path: Path, acked: dict[str, str], deleted: set[str]) -> None:
    config = NodeConfig(node_id="writer", listen=free_endpoint(), data_dir=str(data_dir))
    async with Node(config) as node:
        listed = {v.version for v in await node.artifacts.ls("crash/model")}
        assert set(acked) - deleted <= listed, "an acknowledged version was lost"
        for version in listed:  # whole and verified: no listed version claims a chunk that is not here
            out = tmp_path / f"check-{version}"
            await node.artifacts.get("crash/model", str(out), version=version, fetch=False)
            if version in acked:
                assert hashlib.sha256(out.read_bytes()).hexdigest() == acked[version]
            out.unlink()


def test_kill_9_during_puts_leaves_every_listed_version_whole(tmp_path: Path) -> None:
    base_seed = int(os.environ.get("CRDTSYNC_TEST_SEED", "1500"))
    print(f"seed={base_seed} (replay with CRDTSYNC_TEST_SEED={base_seed})")
    for iteration in range(ITERATIONS):
        seed = base_seed + iteration
        rng = random.Random(seed)
        data_dir, work = tmp_path / f"data-{iteration}", tmp_path / f"work-{iteration}"
        work.mkdir()
        acked: dict[str, str] = {}
        deleted: set[str] = set()
        for start in range(2):  # kill, restart on the same data dir, kill again
            process = subprocess.Popen(
                [
                    *(sys.executable, str(WRITER), "--data-dir", str(data_dir), "--listen", free_endpoint()),
                    *("--seed", str(seed + 100 * start), "--work", str(work)),
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            try:
                lines = _wait_for_acks(process, rng.randint(2, 9))
                time.sleep(rng.uniform(0.0, 0.05))  # the kill lands anywhere in the next put
                process.send_signal(signal.SIGKILL)
                assert process.wait(LINE_TIMEOUT_S) == -signal.SIGKILL
                lines += process.stdout.readlines() if process.stdout else []
            finally:
                if process.poll() is None:
                    process.kill()
                    process.wait()
            for line in lines:
                words = line.split()
                if words[:1] == ["ack"] and len(words) == 3:
                    acked[words[1]] = words[2]
                elif words[:1] == ["deleting"]:
                    deleted.add(words[1])
        print(f"iteration {iteration}: seed {seed}, {len(acked)} acknowledged puts, {len(deleted)} deletes")
        asyncio.run(_check(data_dir, tmp_path, acked, deleted))
