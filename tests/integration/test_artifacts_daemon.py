"""Artifacts through a live daemon (an OS process with a SQLite data dir): the HTTP routes
(streamed PUT, listing, GET with Range, diff, DELETE, errors) and `crdtsync artifact put|ls|get|diff|rm`."""

from __future__ import annotations

import hashlib
import random
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner, Result
from daemon_support import Daemon, DaemonPool, start_all, wait_until

from crdtsync.cli import main
from crdtsync.daemon.artifacts_http import PUTS_IN_FLIGHT_MAX
from crdtsync.testing.safetensors import safetensors_bytes

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def node(pool: DaemonPool) -> Daemon:
    daemon = pool.new("artifacts")
    spool = Path(daemon.data_dir) / "artifacts" / "incoming"
    spool.mkdir(parents=True)
    (spool / "left-by-a-crash").write_bytes(b"x" * 1000)
    start_all([daemon])
    return daemon


def test_spooled_bodies_a_crash_left_are_removed_at_start(node: Daemon) -> None:
    assert list((Path(node.data_dir) / "artifacts" / "incoming").iterdir()) == []


def run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), prog_name="crdtsync", catch_exceptions=False)


def _tensors(seed: int) -> dict[str, bytes]:
    rng = random.Random(seed)
    return {f"block{i}.w": rng.randbytes(30_000) for i in range(10)}


def test_put_list_get_range_diff_and_delete_over_http(node: Daemon, tmp_path: Path) -> None:
    tensors = _tensors(1)
    first = safetensors_bytes(tensors)
    tensors["block4.w"] = random.Random(2).randbytes(30_000)
    second = safetensors_bytes(tensors)
    client = node.client
    put = client.put("/v1/artifacts/http/model", content=first)
    assert put.status_code == 201, put.text
    assert put.json()["bytes_total"] == len(first) and put.json()["seq"] == 1
    put2 = client.put(
        "/v1/artifacts/http/model", params={"tag": "latest"}, content=iter([second[:1000], second[1000:]])
    )
    assert put2.json()["seq"] == 2 and 30_000 <= put2.json()["bytes_new"] < 40_000

    listed = client.get("/v1/artifacts/http/model").json()
    assert [(v["seq"], v["tags"], v["complete_on"]) for v in listed["versions"]] == [
        (1, [], ["artifacts"]),
        (2, ["latest"], ["artifacts"]),
    ]
    whole = client.get("/v1/artifacts/http/model/versions/latest")
    assert whole.status_code == 200 and whole.content == second
    assert whole.headers["X-Artifact-Version"] == put2.json()["version"]
    part = client.get("/v1/artifacts/http/model/versions/1", headers={"Range": "bytes=100-199"})
    assert part.status_code == 206 and part.content == first[100:200]
    assert part.headers["Content-Range"] == f"bytes 100-199/{len(first)}"
    tail = client.get("/v1/artifacts/http/model/versions/1", headers={"Range": "bytes=-10"})
    assert tail.content == first[-10:]
    assert (
        client.get("/v1/artifacts/http/model/versions/1", headers={"Range": "bytes=9999999-"}).status_code
        == 416
    )

    diff = client.get("/v1/artifacts/http/model/diff", params={"from": "1", "to": "2"}).json()
    assert diff["tensors_changed"] == ["block4.w"] and diff["tensors_unchanged_count"] == 9

    deleted = client.delete("/v1/artifacts/http/model/versions/1")
    assert deleted.json()["deleted"] == put.json()["version"]
    assert [v["seq"] for v in client.get("/v1/artifacts/http/model").json()["versions"]] == [2]


def test_bad_requests_get_clear_errors(node: Daemon) -> None:
    client = node.client
    missing = client.get("/v1/artifacts/never/versions/latest")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "no_such_artifact"
    bad = client.put("/v1/artifacts/a$b", content=b"x")
    assert bad.status_code == 400 and "artifact name 'a$b'" in bad.json()["error"]["message"]
    reserved = client.put("/v1/artifacts/a/diff/b", content=b"x")
    assert reserved.status_code == 400 and reserved.json()["error"]["code"] == "bad_artifact_name"
    client.put("/v1/artifacts/errors/m", content=b"some bytes")
    no_tag = client.get("/v1/artifacts/errors/m/versions/stable")
    assert no_tag.status_code == 404 and "no version or tag 'stable'" in no_tag.json()["error"]["message"]
    no_from = client.get("/v1/artifacts/errors/m/diff")
    assert no_from.status_code == 400 and no_from.json()["error"]["code"] == "bad_diff"
    bad_tag = client.put("/v1/artifacts/errors/m", params={"tag": "-x"}, content=b"x")
    assert bad_tag.status_code == 400 and "tag '-x'" in bad_tag.json()["error"]["message"]


def test_the_cli_puts_lists_diffs_gets_and_removes(node: Daemon, tmp_path: Path) -> None:
    tensors = _tensors(3)
    (tmp_path / "one.safetensors").write_bytes(safetensors_bytes(tensors))
    tensors["block0.w"] = random.Random(4).randbytes(30_000)
    (tmp_path / "two.safetensors").write_bytes(safetensors_bytes(tensors))
    put = run("artifact", "put", "--url", node.url, "cli/ckpt", str(tmp_path / "one.safetensors"))
    assert put.exit_code == 0, put.output
    assert "cli/ckpt version" in put.stdout and "(#1, latest)" in put.stdout
    assert (
        run("artifact", "put", "--url", node.url, "cli/ckpt", str(tmp_path / "two.safetensors")).exit_code
        == 0
    )
    listed = run("artifact", "ls", "--url", node.url, "cli/ckpt")
    assert listed.exit_code == 0 and "latest" in listed.stdout and "COMPLETE ON" in listed.stdout
    everything = run("artifact", "ls", "--url", node.url)
    assert everything.exit_code == 0 and "cli/ckpt\n" in everything.stdout and "store: " in everything.stdout
    diff = run("artifact", "diff", "--url", node.url, "cli/ckpt", "1", "2")
    assert diff.exit_code == 0, diff.output
    assert "1 changed, 0 added, 0 removed, 9 unchanged" in diff.stdout and "block0.w" in diff.stdout
    out = tmp_path / "got.safetensors"
    got = run("artifact", "get", "--url", node.url, "cli/ckpt", "--version", "latest", "--out", str(out))
    assert got.exit_code == 0, got.output
    assert (
        hashlib.sha256(out.read_bytes()).digest()
        == hashlib.sha256((tmp_path / "two.safetensors").read_bytes()).digest()
    )
    assert run("artifact", "rm", "--url", node.url, "cli/ckpt", "1").exit_code == 0
    missing = run(
        "artifact", "get", "--url", node.url, "cli/ckpt", "--version", "1", "--out", str(tmp_path / "x")
    )
    assert (
        missing.exit_code == 1 and "no version or tag '1'" in missing.stderr and not (tmp_path / "x").exists()
    )


def test_a_put_beyond_the_ones_in_progress_is_refused(node: Daemon) -> None:
    release = threading.Event()
    answers: list[int] = []

    def slow_put() -> None:
        def body() -> Iterator[bytes]:
            yield b"first bytes"
            release.wait(30)

        answers.append(node.client.put("/v1/artifacts/busy/m", content=body()).status_code)

    putters = [threading.Thread(target=slow_put) for _ in range(PUTS_IN_FLIGHT_MAX)]
    for putter in putters:
        putter.start()
    try:
        wait_until(lambda: _in_flight(node) == PUTS_IN_FLIGHT_MAX, 10, "every slow PUT is in progress")
        refused = httpx.put(f"{node.url}/v1/artifacts/busy/m", content=b"x", timeout=10)
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "too_many_puts"
    finally:
        release.set()
        for putter in putters:
            putter.join(30)
    assert answers == [201] * PUTS_IN_FLIGHT_MAX


def _in_flight(node: Daemon) -> int:
    """PUTs the daemon is spooling: the files in its spool directory."""
    return len(list((Path(node.data_dir) / "artifacts" / "incoming").iterdir()))
