"""kill -9 during the store's maintenance: a compaction, a backup and a restore. Afterwards the data
directory opens, every acknowledged write is there, and a backup cut short is never taken for a
whole one (`crdtsync backup` writes OUT.partial and renames it only once whole; a cut file is
refused by its size against its header). Each randomized test prints its seed."""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from pycrdt import Doc, Map

from crdtsync.daemon.backup_http import TRANSFERS_DIR
from crdtsync.store.sqlite import SqliteStore, StoreError, check_backup_file
from crdtsync.testing.cluster import LocalCluster, LocalDaemon, wait_until

pytestmark = pytest.mark.integration

SEED = int(os.environ.get("CRDTSYNC_TEST_SEED", "20261207"))
COMPACTION_CYCLES = 4
UPDATES_PER_APPEND = 400
APPENDS_PER_CYCLE = 4
VALUE_BYTES = 100 * 1024
KEYS_PER_PATCH = 8
PATCHES = 20
"""About 16 MB of values: a backup far larger than the sockets' buffers, streamed in 1 MB chunks."""
TIMEOUT_S = 30.0
RESTORE_CYCLES = 4
RESTORE_KILL_DELAY_S = (0.0, 0.3)

# A store-level child: appends acknowledged groups (printing each), then compacts the whole log of a
# doc that never compacted by threshold, and is killed somewhere in that compaction.
_COMPACTOR = """
import sys
from pycrdt import Doc, Map
from crdtsync.core.effects import Persist
from crdtsync.store.sqlite import SqliteStore

data_dir, appends, per_append = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
store = SqliteStore(data_dir, node_id="c", compact_after_updates=10**9, compact_after_bytes=1 << 40)
doc = Doc()
keys = doc.get("data", type=Map)
stored = store.load_doc("d")
if stored is not None:
    doc.apply_update(stored)
count = len(keys)
for _ in range(appends):
    updates = []
    for _ in range(per_append):
        before = doc.get_state()
        keys[f"k{count}"] = "v" * 200
        count += 1
        updates.append(("d", doc.get_update(before)))
    store.append([Persist(tuple(updates))])
    print(f"acked {count}", flush=True)
print("compacting", flush=True)
store.compact("d")
print("compacted", flush=True)
"""


def stored_keys(data_dir: Path) -> int:
    store = SqliteStore(data_dir, node_id="c")  # raises StoreError if it does not open cleanly
    try:
        content = store.load_doc("d")
    finally:
        store.close()
    doc: Doc[Any] = Doc()
    if content is not None:
        doc.apply_update(content)
    return len(doc.get("data", type=Map))


def test_kill_9_during_compaction_leaves_a_store_that_opens_with_every_acknowledged_update(
    tmp_path: Path,
) -> None:
    print(f"seed={SEED} (replay with CRDTSYNC_TEST_SEED={SEED})")
    rng = random.Random(SEED)
    killed_mid_compaction = 0
    for cycle in range(COMPACTION_CYCLES):
        child = subprocess.Popen(
            [
                sys.executable,
                "-c",
                _COMPACTOR,
                str(tmp_path),
                str(APPENDS_PER_CYCLE),
                str(UPDATES_PER_APPEND),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert child.stdout is not None
        acked = 0
        for line in child.stdout:
            if line.startswith("acked "):
                acked = int(line.split()[1])
            if line.strip() == "compacting":
                break
        delay_s = rng.uniform(0.0, 0.05)
        try:
            child.wait(timeout=delay_s)
        except subprocess.TimeoutExpired:
            child.send_signal(signal.SIGKILL)
        child.wait()
        rest = child.stdout.read()
        child.stdout.close()
        if "compacted" not in rest:
            killed_mid_compaction += 1
        keys = stored_keys(tmp_path)
        print(f"cycle {cycle}: kill after {delay_s * 1000:.0f} ms, {acked} acked, {keys} stored")
        assert keys >= acked, f"cycle {cycle}: {acked} updates acknowledged, {keys} in the store"
    assert killed_mid_compaction >= 1, "no kill landed before a compaction finished: raise the delays"


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster[LocalDaemon]]:
    # Each its own cluster: a stop hands no docs to the other (rf 3 by default would drain for 30 s).
    with LocalCluster.named(
        str(tmp_path), ["n1", "n2"], note="test_kill_during_maintenance", seeds=[]
    ) as made:
        yield made


def fill(cluster: LocalCluster[LocalDaemon], name: str, doc: str) -> dict[str, str]:
    """About 16 MB of acknowledged values in `doc` on node `name`; what was written."""
    rng = random.Random(SEED)
    written: dict[str, str] = {}
    for patch in range(PATCHES):
        values = {f"p{patch}-{i}": rng.randbytes(VALUE_BYTES // 2).hex() for i in range(KEYS_PER_PATCH)}
        response = cluster.client.patch(f"{cluster[name].url}/v1/docs/{doc}", json=values, timeout=TIMEOUT_S)
        assert response.status_code == 200, response.text
        written.update(values)
    return written


def assert_holds(cluster: LocalCluster[LocalDaemon], name: str, doc: str, written: dict[str, str]) -> None:
    response = cluster.client.get(f"{cluster[name].url}/v1/docs/{doc}", timeout=TIMEOUT_S)
    assert response.status_code == 200, response.text
    data = response.json()["data"]
    missing = [key for key, value in written.items() if data.get(key) != value]
    assert not missing, f"{name} lost {len(missing)} of {len(written)} acknowledged writes, e.g. {missing[0]}"


def cli(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "crdtsync", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


class HoldingProxy:
    """One TCP connection from the CLI to a daemon that passes the daemon's first `forward_bytes` and
    then stops reading: the daemon blocks mid-stream, however fast the loopback is (holding the client
    with SIGSTOP raced a whole 16 MB stream on a fast run). `cut()` closes the client's side."""

    def __init__(self, daemon_port: int, forward_bytes: int) -> None:
        self.forward_bytes = forward_bytes
        self.forwarded = 0
        self.held = threading.Event()
        self._daemon_port = daemon_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._client: socket.socket | None = None
        self._thread = threading.Thread(target=self._run, name="holding-proxy", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        self._listener.settimeout(TIMEOUT_S)
        client, _address = self._listener.accept()
        self._client = client
        upstream = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        # A small receive buffer keeps most of the stream in the daemon, not in this socket.
        upstream.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        upstream.connect(("127.0.0.1", self._daemon_port))
        threading.Thread(target=self._pass_request, args=(client, upstream), daemon=True).start()
        while self.forwarded < self.forward_bytes:
            chunk = upstream.recv(min(65536, self.forward_bytes - self.forwarded))
            if not chunk:
                break
            client.sendall(chunk)
            self.forwarded += len(chunk)
        self.held.set()

    @staticmethod
    def _pass_request(client: socket.socket, upstream: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while chunk := client.recv(65536):
                upstream.sendall(chunk)

    def cut(self) -> None:
        assert self._client is not None
        self._client.shutdown(socket.SHUT_RDWR)
        self._client.close()
        self._listener.close()


def test_kill_9_of_the_daemon_during_a_backup_leaves_no_backup_file_and_loses_nothing(
    cluster: LocalCluster[LocalDaemon], tmp_path: Path
) -> None:
    cluster.start("n1")
    cluster.wait_healthy(["n1"])
    written = fill(cluster, "n1", "big")
    out = tmp_path / "backup.db"
    partial = Path(f"{out}.partial")
    proxy = HoldingProxy(cluster["n1"].http_port, forward_bytes=1 << 20)
    backup = cli("backup", "--url", f"http://127.0.0.1:{proxy.port}", "--out", str(out))
    assert proxy.held.wait(TIMEOUT_S), "the backup stream did not begin"
    assert proxy.forwarded == 1 << 20, f"the daemon ended its stream after {proxy.forwarded} bytes"
    wait_until(
        lambda: partial.exists() and partial.stat().st_size > 0, TIMEOUT_S, "the CLI began OUT.partial"
    )
    cluster.kill("n1")
    proxy.cut()
    _stdout, stderr = backup.communicate(timeout=TIMEOUT_S)
    assert backup.returncode == 1, stderr
    assert "nothing was written" in stderr, stderr
    assert not out.exists() and not partial.exists()
    transfers = Path(cluster["n1"].data_dir) / TRANSFERS_DIR
    assert list(transfers.iterdir()), "the killed daemon's copy of the store is not where it was spooled"
    cluster.restart("n1")
    cluster.wait_healthy(["n1"])
    assert list(transfers.iterdir()) == [], "the restart left the killed backup's copy behind"
    assert_holds(cluster, "n1", "big", written)


def test_a_backup_cut_short_is_refused_by_restore_and_a_whole_one_restores(
    cluster: LocalCluster[LocalDaemon], tmp_path: Path
) -> None:
    cluster.start("n1")
    cluster.wait_healthy(["n1"])
    written = fill(cluster, "n1", "big")
    out = tmp_path / "backup.db"
    done = cli("backup", "--url", cluster["n1"].url, "--out", str(out))
    _stdout, stderr = done.communicate(timeout=TIMEOUT_S)
    assert done.returncode == 0, stderr
    check_backup_file(out)
    whole = out.read_bytes()
    cut = tmp_path / "cut.db"
    cut.write_bytes(whole[: len(whole) // 2])  # what a client killed mid-stream leaves in OUT.partial
    with pytest.raises(StoreError, match="incomplete or damaged"):
        check_backup_file(cut)
    cluster.start("n2")
    cluster.wait_healthy(["n2"])
    url = cluster["n2"].url
    refused = cluster.client.post(f"{url}/v1/restore", content=cut.read_bytes(), timeout=TIMEOUT_S)
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "bad_backup", refused.text
    assert "incomplete" in refused.json()["error"]["message"]
    restored = cluster.client.post(f"{url}/v1/restore", content=whole, timeout=TIMEOUT_S)
    assert restored.status_code == 200, restored.text
    assert_holds(cluster, "n2", "big", written)


def test_kill_9_during_a_restore_leaves_a_store_that_opens_with_every_acknowledged_write(
    cluster: LocalCluster[LocalDaemon], tmp_path: Path
) -> None:
    print(f"seed={SEED} (replay with CRDTSYNC_TEST_SEED={SEED})")
    rng = random.Random(SEED)
    cluster.start("n1")
    cluster.wait_healthy(["n1"])
    backed_up = fill(cluster, "n1", "big")
    out = tmp_path / "backup.db"
    done = cli("backup", "--url", cluster["n1"].url, "--out", str(out))
    assert done.wait(timeout=TIMEOUT_S) == 0
    body = out.read_bytes()
    cluster.start("n2")
    cluster.wait_healthy(["n2"])
    own = {f"own-{i}": f"n2-{i}" for i in range(20)}
    for key, value in own.items():
        assert (
            cluster.client.put(f"{cluster['n2'].url}/v1/docs/own/keys/{key}", json=value).status_code == 200
        )
    cut_short = 0
    for cycle in range(RESTORE_CYCLES):
        delay_s = rng.uniform(*RESTORE_KILL_DELAY_S)
        with (
            httpx.Client(timeout=TIMEOUT_S, trust_env=False) as client,
            concurrent.futures.ThreadPoolExecutor(1) as pool,
        ):
            # The restore runs on a thread of this process; the daemon is killed under it.
            answer = pool.submit(client.post, f"{cluster['n2'].url}/v1/restore", content=body)
            with contextlib.suppress(concurrent.futures.TimeoutError):
                answer.exception(timeout=delay_s)  # the fault's timing: the kill comes now at the latest
            cluster.kill("n2")
            failed = answer.exception(timeout=TIMEOUT_S) is not None
        cut_short += failed
        print(
            f"cycle {cycle}: kill after {delay_s * 1000:.0f} ms, restore {'cut short' if failed else 'done'}"
        )
        cluster.restart("n2")
        cluster.wait_healthy(["n2"])
        assert list((Path(cluster["n2"].data_dir) / TRANSFERS_DIR).iterdir()) == []
        assert_holds(cluster, "n2", "own", own)
    assert cut_short >= 1, "every restore finished before its kill: shorten the delays"
    final = cluster.client.post(f"{cluster['n2'].url}/v1/restore", content=body, timeout=TIMEOUT_S)
    assert final.status_code == 200, final.text
    assert_holds(cluster, "n2", "big", backed_up)
    assert_holds(cluster, "n2", "own", own)
