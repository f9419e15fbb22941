"""Short runs of the fuzz targets, the engine's own checks, and regression tests for what the
targets found. Each smoke run prints its seed and its summary (execs/s, coverage, findings)."""

from __future__ import annotations

import asyncio
import importlib.util
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pycrdt import Doc, Map

from crdtsync.core import wire
from crdtsync.core.replica import Replica
from crdtsync.daemon.config import ConfigError, load_config
from fuzz import http_api, network
from fuzz._runner import REPO_ROOT, Result, run

SMOKE_S = 20.0
"""20 s of each target: the suite stays within its 12 minutes on 2 cores as it grows; the
long campaigns are commands (`python -m fuzz.<target> --minutes N`, docs/fuzzing.md)."""
needs_atheris = pytest.mark.skipif(
    importlib.util.find_spec("atheris") is None, reason="atheris has wheels for Linux x86_64 only"
)
WRITE = (("Authorization", f"Bearer {http_api.WRITE_TOKEN}"),)
READ = (("Authorization", f"Bearer {http_api.READ_TOKEN}"),)

# Found by fuzz.update_apply --read: updates that pycrdt 0.14.13 accepts, after which the doc is
# unreadable. DIVIDE_BY_ZERO alone makes `get_update()` panic; FREED_ITEMS (two updates, in order)
# leave a map entry pointing at freed memory: reading the map then crashes the process (SIGSEGV or
# SIGBUS) or returns garbage.
DIVIDE_BY_ZERO = bytes.fromhex("0101000100000000000000010401047400")
FREED_ITEMS = (bytes.fromhex("01010b0028010464617461026b3001760000"), bytes.fromhex("01010b00000000"))


def smoke(target: str, seed: int, tmp_path: Path) -> Result:
    print(f"fuzz {target} seed {seed}")
    result = run(target, SMOKE_S, seed, tmp_path / "corpus", tmp_path / "findings", quiet=True)
    print(result.summary())
    return result


def assert_clean(result: Result) -> None:
    assert result.exit_code == 0 and not result.findings, "\n".join(result.output)
    assert result.execs > 0 and result.coverage > 0, result.summary()
    assert result.new_inputs > 0, f"coverage guidance found nothing new: {result.summary()}"


@needs_atheris
@pytest.mark.parametrize(
    ("target", "seed"),
    [
        ("wire_decoder", 20261126),
        ("update_apply", 20261127),
        ("config_loader", 20261128),
        ("http_api", 20261130),
    ],
)
def test_a_smoke_run_finds_nothing(target: str, seed: int, tmp_path: Path) -> None:
    assert_clean(smoke(target, seed, tmp_path))


def test_a_live_cluster_under_attack_converges_with_bounded_memory() -> None:
    """fuzz.network for SMOKE_S: honest writes converge everywhere, RSS stays under 400 MB."""
    seed = 20261129
    print(f"network fuzz seed {seed}")
    ok, summary = asyncio.run(network.campaign(SMOKE_S, seed, 400.0))
    print(summary)
    assert ok, summary


# ---------------------------------------------------------------------------------------------------------
# The engine


@needs_atheris
def test_a_finding_is_saved_with_its_traceback_and_replays(tmp_path: Path) -> None:
    seed = 7
    print(f"fuzz seed {seed}")
    result = run(
        "tests.fuzz.crashing_target", SMOKE_S, seed, tmp_path / "corpus", tmp_path / "findings", quiet=True
    )
    print(result.summary())
    assert result.exit_code != 0
    [finding] = result.findings
    assert finding.parent == tmp_path / "findings" and finding.name.startswith("crashing_target-crash-")
    assert "RuntimeError: planted failure" in finding.with_name(finding.name + ".txt").read_text()

    replayed = run(
        "tests.fuzz.crashing_target", 60.0, seed, None, tmp_path / "findings", quiet=True, replay=[finding]
    )
    assert replayed.exit_code != 0 and not replayed.findings
    assert any("planted failure" in line for line in replayed.output)
    harmless = tmp_path / "harmless"
    harmless.write_bytes(b"seed")
    assert (
        run(
            "tests.fuzz.crashing_target",
            60.0,
            seed,
            None,
            tmp_path / "findings",
            quiet=True,
            replay=[harmless],
        ).exit_code
        == 0
    )


def test_a_request_survives_the_round_trip_through_the_input_layout() -> None:
    request = http_api.Request("PUT", "/v1/docs/a/keys/b%20c?x=1", (*WRITE, ("X-Other", "v")), b'{"k":\n\n1}')
    assert http_api.parse(http_api.render(request)) == request
    odd = http_api.parse(b"get a b\x00/\xff\nBad Name: x\nContent-Length: 5\nX-Ok: \x01\n\nbody")
    assert odd == http_api.Request("GET", "/a%20b%00/%FF", (), b"body")


# ---------------------------------------------------------------------------------------------------------
# Regression tests


def test_a_config_file_that_is_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    """Found by fuzz.config_loader: tomllib raised UnicodeDecodeError, not a ConfigError."""
    path = tmp_path / "bad.toml"
    path.write_bytes(b'node_id = "\xff"\n')
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(path, {})


def test_a_batch_with_a_malformed_update_does_not_crash_and_keeps_the_good_one() -> None:
    """Found by fuzz.wire_decoder: merge_updates raised ValueError on a batch with a garbage update.
    The structural update check now refuses the garbage before it is buffered or merged (a merge
    that still fails is isolated too: the run is applied update by update, `merge_failures`)."""
    writer: Doc[Any] = Doc(client_id=5)
    captured: list[tuple[bytes, bytes, bytes]] = []
    writer.observe(lambda e: captured.append((e.before_state, e.after_state, e.update)))
    writer.get("data", type=Map)["good"] = 1
    before, after, update = captured[0]
    garbage = wire.Delta("doc", after, after, b"\x01\x01\xff\xff\xff\x0f")
    frame = wire.encode(wire.Deltas("w", 1, 1, (wire.Delta("doc", before, after, update), garbage)))
    replica = Replica(node_id="r", epoch=1, client_id=6, address="a", publish_endpoint="p")
    replica.receive(frame, 0.0)
    assert replica.open_doc("doc").get("data", type=Map).to_py() == {"good": 1.0}
    assert replica.counters.updates_rejected == 1
    assert replica.counters.merge_failures == 0


@pytest.fixture
def server(tmp_path: Path) -> Iterator[http_api.Server]:
    served = http_api.Server(tmp_path)
    try:
        yield served
    finally:
        served.close()


def backup_with(replace: bytes, by: bytes) -> bytes:
    backup = http_api.small_backup()
    assert replace in backup
    return backup.replace(replace, by)


def backup_edited(statement: str) -> bytes:
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "backup.db"
        path.write_bytes(http_api.small_backup())
        db = sqlite3.connect(path, isolation_level=None)
        try:
            db.execute(statement)
        finally:
            db.close()
        return path.read_bytes()


@pytest.mark.parametrize(
    "backup",
    [
        pytest.param(backup_with(b"restored/doc", b"restored/d\x9fc"), id="doc id not UTF-8"),
        # Found by fuzz.http_api in CI: TypeError out of zlib.crc32 answered 500.
        pytest.param(
            backup_edited(
                "INSERT OR REPLACE INTO snapshots (doc_id, data, crc) SELECT doc_id, 7, 0 FROM docs"
            ),
            id="snapshot an integer",
        ),
        pytest.param(backup_edited("UPDATE updates SET data = 7"), id="update an integer"),
        pytest.param(backup_with(b"CREATE TABLE docs", b"CREATE TABLE d\x00cs"), id="schema corrupt"),
    ],
)
def test_a_corrupt_backup_with_a_valid_header_is_a_bad_backup(server: http_api.Server, backup: bytes) -> None:
    """Found by fuzz.http_api: UnicodeDecodeError (or sqlite3.DatabaseError) out of the backup reader
    answered 500 instead of 400."""
    before = server.state()
    status, body = server.exchange(http_api.Request("POST", "/v1/restore", WRITE, backup))
    assert (status, b'"bad_backup"' in body) == (400, True), body
    assert server.state() == before


def test_a_backup_that_sqlite_reads_as_out_of_memory_is_a_bad_backup(server: http_api.Server) -> None:
    """Found by fuzz.http_api (saved input under tests/fuzz/regressions): SQLite reports some corrupt
    pages as SQLITE_NOMEM, a MemoryError out of the backup reader, which answered 500."""
    finding = (Path(__file__).parent / "regressions" / "http_api-restore-sqlite-nomem.bin").read_bytes()
    request = http_api.parse(finding)
    assert (request.method, request.target) == ("POST", "/v1/restore")
    before = server.state()
    status, body = server.exchange(request)
    assert (status, b'"bad_backup"' in body) == (400, True), body
    assert server.state() == before


def test_an_update_pycrdt_cannot_encode_afterwards_is_a_bad_update(server: http_api.Server) -> None:
    """Found by fuzz.http_api: the update passed the scratch check, and every later read of the doc
    (GET .../update, the next POST) panicked, which dropped the connection without an answer."""
    status, body = server.exchange(http_api.Request("POST", "/v1/docs/poison/update", WRITE, DIVIDE_BY_ZERO))
    assert (status, b'"bad_update"' in body) == (400, True), body
    assert not server.node.has_doc("poison")


def test_a_panic_in_a_handler_is_a_500_answer(server: http_api.Server) -> None:
    """Found by fuzz.http_api: a pycrdt PanicException is a BaseException and went past the error
    middleware; aiohttp then dropped the connection. Replication can still deliver such a doc."""

    async def poison() -> None:
        doc = await server.node.open("poisoned")
        doc.apply_update(DIVIDE_BY_ZERO)
        server.node.release("poisoned")

    server.loop.run_until_complete(poison())
    with server.errors_logged():
        status, body = server.exchange(http_api.Request("GET", "/v1/docs/poisoned/update", READ, b""))
    assert (status, b'"internal"' in body) == (500, True), body


def test_updates_that_leave_freed_items_are_refused_before_the_doc_is_read() -> None:
    """Found by fuzz.update_apply --read, with a fixed input: pycrdt 0.14.13 accepts FREED_ITEMS
    (the pycrdt "read after garbage apply" crash); reading the map afterwards crashes the process.
    The API must refuse the second update so that no read ever reaches such a doc. In a subprocess,
    because a regression is a crash."""
    script = textwrap.dedent(
        f"""
        import sys, tempfile
        from pathlib import Path
        from fuzz import http_api
        first, second = {FREED_ITEMS!r}
        with tempfile.TemporaryDirectory() as scratch:
            server = http_api.Server(Path(scratch))
            write = (("Authorization", "Bearer " + http_api.WRITE_TOKEN),)
            answers = [server.exchange(http_api.Request("POST", "/v1/docs/freed/update", write, update))[0]
                       for update in (first, second)]
            status, body = server.exchange(http_api.Request("GET", "/v1/docs/freed", write, b""))
            server.close()
        print(answers, status, body.decode())
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    print(done.stdout, done.stderr[-2000:])
    assert done.returncode == 0, f"the process died ({done.returncode}): {done.stderr[-2000:]}"
    assert done.stdout.startswith("[200, 400] 200 "), done.stdout
    assert '"data": {"k0": {}}' in done.stdout


def test_a_replica_refuses_updates_that_leave_freed_items() -> None:
    """The same two updates from a peer: pycrdt would accept both, and a read of the doc (an HTTP
    GET of it, say) would crash the process. The replica's structural check refuses the second (a GC
    range of length 0). In a subprocess, because a regression is a crash."""
    script = textwrap.dedent(
        f"""
        from pycrdt import Map
        from crdtsync.core import wire
        from fuzz._runner import open_replica
        replica = open_replica(5)
        for clock, update in enumerate({FREED_ITEMS!r}, start=1):
            replica.receive(wire.encode(wire.SyncPush("peer", (("doc", update),))), float(clock))
        if replica.has_doc("doc"):
            print(replica.open_doc("doc").get("data", type=Map).to_py())
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=False
    )
    # Refusing the second update leaves what the first wrote; refusing both, no doc.
    assert done.returncode == 0 and done.stdout.strip() in ("", "{'k0': {}}"), (done.returncode, done.stdout)
