"""The `crdtsync` command against live daemons (OS processes on 127.0.0.1 with SQLite data dirs).

Client commands run in-process with click's CliRunner (they talk HTTP to the live daemon); `watch`,
`--help` and one bad `serve` run as real processes. The module starts two daemons: `cli`, whose one
peer address has nobody behind it (so `status` has a row to show), and `target`, to restore into.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from daemon_support import Daemon, DaemonPool, free_port, start_all

from crdtsync import CausalToken, DocState
from crdtsync.cli import main
from crdtsync.core.placement import partition_of

pytestmark = pytest.mark.integration

PROCESS_TIMEOUT_S = 30.0
SUBCOMMANDS = [
    "serve",
    "demo",
    "status",
    "placement",
    "docs",
    "get",
    "put",
    "del",
    "watch",
    "backup",
    "restore",
]


@pytest.fixture(scope="module")
def daemons(pool: DaemonPool) -> tuple[Daemon, Daemon]:
    node = pool.new("cli")
    node.peers = [f"tcp://127.0.0.1:{free_port()}"]
    target = pool.new("target")
    start_all([node, target])
    for doc_id in ("cli/a", "cli/b", "cli/c", "other/x"):
        node.put(doc_id, "name", doc_id)
    node.put("cli/a", "n", 4)
    return node, target


@pytest.fixture(scope="module")
def node(daemons: tuple[Daemon, Daemon]) -> Daemon:
    return daemons[0]


def run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), prog_name="crdtsync", catch_exceptions=False)


def process(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "crdtsync", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


# ------------------------------------------------------------------------------------------ commands


def test_status_prints_a_table_and_json(node: Daemon) -> None:
    result = run("status", "--url", node.url)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith("node cli (dc test-dc), up ")
    assert "4 docs" in lines[0] and "store sqlite:" in lines[0] and "(fsync)" in lines[0]
    assert lines[1].split() == [
        "PEER",
        "ADDRESS",
        "STATE",
        "LAST",
        "HEARD",
        "BEHIND",
        "AE",
        "ROUNDS",
        "DIVERGENCE",
    ]
    assert len(lines) == 3
    row = lines[2].split()
    assert row[:2] == ["?", node.peers[0]] and row[2] in ("connecting", "down")

    result = run("status", "--url", node.url, "--json")
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)
    assert body["node_id"] == "cli" and body["docs"] == 4
    assert set(body) == set(node.status())


def test_placement_shows_a_docs_replicas_and_the_partitions_per_node(node: Daemon) -> None:
    result = run("placement", "cli/a", "--url", node.url, "--json")
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)
    assert (body["doc"], body["partition"], body["rf"], body["prefix"]) == (
        "cli/a",
        partition_of("cli/a"),
        3,  # the default rule: 3 replicas per datacenter
        None,
    )
    assert body["replicas"] == {"test-dc": [{"node_id": "cli", "state": "alive"}]}
    result = run("placement", "cli/a", "--url", node.url)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0] == f"doc cli/a: partition {partition_of('cli/a')}, rf 3 (the default rule)"
    assert lines[2].split() == ["test-dc", "cli", "(alive)"]
    assert lines[-1] == lines[2]  # no note: only rf "all" says every node holds every doc

    result = run("placement", "--url", node.url, "--json")
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)
    assert body["partitions_per_node"] == {"cli": 4096} and body["imbalance"] == {"test-dc": 1.0}
    result = run("placement", "bad//id", "--url", node.url)
    assert result.exit_code != 0 and "bad_doc_id" in result.stderr


def test_docs_lists_with_prefix_limit_and_after(node: Daemon) -> None:
    result = run("docs", "--url", node.url)
    assert (result.exit_code, result.stdout, result.stderr) == (0, "cli/a\ncli/b\ncli/c\nother/x\n", "")

    result = run("docs", "--url", node.url, "--prefix", "cli/", "--limit", "2")
    assert (result.exit_code, result.stdout) == (0, "cli/a\ncli/b\n")
    assert result.stderr == "(more: --after cli/b)\n"

    result = run("docs", "--url", node.url, "--prefix", "cli/", "--limit", "2", "--after", "cli/b")
    assert (result.exit_code, result.stdout, result.stderr) == (0, "cli/c\n", "")

    result = run("docs", "--url", node.url, "--prefix", "cli/", "--limit", "2", "--json")
    assert result.exit_code == 0
    assert json.loads(result.stdout) == {"docs": ["cli/a", "cli/b"], "next": "cli/b"}


# A token naming client 1 of cli/a at clock 1: no node here writes as client 1.
UNKNOWN_TOKEN = CausalToken.of({"cli/a": DocState.of({1: 1})}).encode()


def body_token(node: Daemon) -> str:
    token: str = node.get_json("/v1/docs/cli/a")["token"]
    return token


def test_get_prints_a_doc_or_one_key(node: Daemon) -> None:
    result = run("get", "--url", node.url, "cli/a")
    assert result.exit_code == 0, result.output
    # The 4 written is a float in pycrdt and printed as written: 4, not 4.0.
    assert result.stdout == '{\n  "n": 4,\n  "name": "cli/a"\n}\n'

    result = run("get", "--url", node.url, "cli/a", "n")
    assert (result.exit_code, result.stdout) == (0, "4\n")

    result = run("get", "--url", node.url, "cli/a", "name")
    assert (result.exit_code, json.loads(result.stdout)) == (0, "cli/a")

    result = run("get", "--url", node.url, "--json", "cli/a", "name")
    body = json.loads(result.stdout)
    assert body.pop("token") and body == {"doc_id": "cli/a", "key": "name", "value": "cli/a"}

    # --after: the token of the answer above is covered at once; one naming a write this node never
    # saw fails after --wait-ms, naming the error.
    result = run("get", "--url", node.url, "--after", body_token(node), "cli/a", "n")
    assert (result.exit_code, result.stdout) == (0, "4\n"), result.output
    result = run("get", "--url", node.url, "--after", UNKNOWN_TOKEN, "--wait-ms", "50", "cli/a")
    assert result.exit_code == 1 and "(504 not_yet_covered)" in result.stderr, result.output

    result = run("get", "--url", node.url, "no/such/doc")
    assert result.exit_code == 1
    assert "error: " in result.stderr and "(404 no_such_doc)" in result.stderr


def test_put_and_del_write_durably_through_the_daemon(node: Daemon) -> None:
    result = run("put", "--url", node.url, "cli/p", "stage", '{"stage": "canary", "pct": 5}')
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("set cli/p stage (durable; state vector ")
    assert node.data("cli/p") == {"stage": {"stage": "canary", "pct": 5}}

    result = run("put", "--url", node.url, "--json", "cli/p", "label", '"text"')
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["doc_id"] == "cli/p"

    result = run("del", "--url", node.url, "cli/p", "stage")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("deleted cli/p stage (durable; state vector ")
    assert node.data("cli/p") == {"label": "text"}

    result = run("del", "--url", node.url, "cli/p", "stage")
    assert result.exit_code == 1
    assert "(404 no_such_key)" in result.stderr


def test_put_and_del_with_write_acks_name_the_nodes_that_confirmed_or_fail_after_wait_ms(
    node: Daemon,
) -> None:
    result = run("put", "--url", node.url, "--write-acks", "dc", "cli/acked", "stage", '"canary"')
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("set cli/acked stage (durable on cli; state vector "), result.stdout
    result = run("del", "--url", node.url, "--write-acks", "all", "--json", "cli/acked", "stage")
    assert result.exit_code == 0 and json.loads(result.stdout)["write_acks"] == {
        "needed": 1,
        "confirmed": ["cli"],
    }, result.output
    # Its only peer never answers: two replicas cannot confirm. The write stands.
    result = run("put", "--url", node.url, "--write-acks", "2", "--wait-ms", "100", "cli/acked", "n", "1")
    assert result.exit_code == 1 and "(504 write_acks_timeout)" in result.stderr, result.output
    assert node.data("cli/acked") == {"n": 1}
    result = run("put", "--url", node.url, "--write-acks", "most", "cli/acked", "n", "2")
    assert result.exit_code == 1 and "(400 bad_write_acks)" in result.stderr, result.output


def test_watch_count_2_prints_the_current_state_then_a_concurrent_write(node: Daemon) -> None:
    node.put("cli/watched", "v", 0)
    watcher = process("watch", "--url", node.url, "--count", "2", "cli/watched")
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        assert watcher.stdout is not None
        for line in watcher.stdout:
            lines.put(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert lines.get(timeout=PROCESS_TIMEOUT_S) == '{"v": 0}\n'
        node.put("cli/watched", "v", 1)
        assert lines.get(timeout=PROCESS_TIMEOUT_S) == '{"v": 1}\n'
        assert watcher.wait(timeout=PROCESS_TIMEOUT_S) == 0
    finally:
        if watcher.poll() is None:
            watcher.kill()
        watcher.wait()
        reader.join(timeout=PROCESS_TIMEOUT_S)


def test_watch_after_a_token_starts_once_it_is_covered_or_fails_naming_not_yet_covered(node: Daemon) -> None:
    node.put("cli/a", "n", 4)
    result = run("watch", "--url", node.url, "--after", body_token(node), "--count", "1", "cli/a")
    assert result.exit_code == 0 and json.loads(result.stdout)["n"] == 4, result.output
    result = run("watch", "--url", node.url, "--after", UNKNOWN_TOKEN, "--wait-ms", "50", "cli/a")
    assert result.exit_code == 1 and "not_yet_covered" in result.stderr, result.output


def test_backup_then_restore_into_another_daemon(daemons: tuple[Daemon, Daemon], tmp_path: Path) -> None:
    node, target = daemons
    out = tmp_path / "node.db"
    result = run("backup", "--url", node.url, "--out", str(out))
    assert result.exit_code == 0, result.output
    size = out.stat().st_size
    assert result.stdout == f"backup written to {out} ({size} bytes)\n"
    assert out.read_bytes().startswith(b"SQLite format 3\x00")

    result = run("backup", "--url", node.url, "--out", str(out))
    assert result.exit_code == 2 and "already exists" in result.stderr
    assert out.stat().st_size == size

    ids = node.all_doc_ids()
    result = run("restore", "--url", target.url, str(out))
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"merged {len(ids)} docs from {out}")
    assert target.all_doc_ids() == ids
    assert {doc_id: target.data(doc_id) for doc_id in ids} == {doc_id: node.data(doc_id) for doc_id in ids}

    result = run("restore", "--url", target.url, "--json", str(out))
    assert result.exit_code == 0 and json.loads(result.stdout) == {"docs": len(ids)}


# ------------------------------------------------------------------------------------------ errors


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["status"], "cannot reach"),
        (["docs"], "cannot reach"),
        (["get", "d"], "cannot reach"),
        (["put", "d", "k", "1"], "cannot reach"),
        (["del", "d", "k"], "cannot reach"),
        (["watch", "d"], "cannot watch d"),
        (["backup", "--out", "{tmp}/b.db"], "failed"),
        (["restore", "{tmp}/r.db"], "cannot reach"),
    ],
    ids=lambda value: value[0] if isinstance(value, list) else "",
)
def test_unreachable_url_exits_1_with_a_clear_message(args: list[str], message: str, tmp_path: Path) -> None:
    (tmp_path / "r.db").write_bytes(b"x")
    url = f"http://127.0.0.1:{free_port()}"
    result = run(args[0], "--url", url, *(arg.format(tmp=tmp_path) for arg in args[1:]))
    assert result.exit_code == 1, result.output
    assert result.stderr.startswith("error: ") and message in result.stderr and url in result.stderr


def test_put_with_a_value_that_is_not_json_exits_2_and_writes_nothing(node: Daemon) -> None:
    result = run("put", "--url", node.url, "cli/never", "k", "canary")
    assert result.exit_code == 2
    assert "VALUE is not JSON" in result.stderr
    assert node.data("cli/never") is None


BAD_CONFIGS = [
    ("unknown key", 'node_id = "x"\nbogus = 1\n', "bogus: unknown key"),
    ("unknown table key", 'node_id = "x"\n[replication]\nfoo_ms = 1\n', "replication.foo_ms: unknown key"),
    (
        "wrong type",
        'node_id = "x"\n[replication]\ntick_interval_ms = "fast"\n',
        "replication.tick_interval_ms",
    ),
    ("wrong top type", "node_id = 7\n", "node_id: expected str"),
    ("missing node_id", 'listen = "tcp://127.0.0.1:7400"\n', "node_id: required"),
    ("bad endpoint", 'node_id = "x"\nlisten = "http://127.0.0.1:7400"\n', "listen: "),
    ("bad peer endpoint", 'node_id = "x"\npeers = ["tcp://127.0.0.1"]\n', "peers[0]: "),
    ("bad http listen", 'node_id = "x"\n[http]\nlisten = "7480"\n', "http.listen"),
    ("bad log level", 'node_id = "x"\n[log]\nlevel = "loud"\n', "log.level"),
    ("not TOML", 'node_id = "x\n', "not valid TOML"),
]


@pytest.mark.parametrize(("text", "message"), [c[1:] for c in BAD_CONFIGS], ids=[c[0] for c in BAD_CONFIGS])
def test_serve_with_a_bad_config_exits_2_naming_the_key(text: str, message: str, tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(text)
    result = run("serve", "--config", str(config))
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: configuration: ") and message in result.stderr, result.stderr


def test_serve_with_a_bad_flag_exits_2_naming_the_key(tmp_path: Path) -> None:
    result = run("serve", "--node-id", "x", "--listen", "127.0.0.1:7400")
    assert result.exit_code == 2 and "listen: " in result.stderr, result.stderr
    result = run("serve", "--config", str(tmp_path / "missing.toml"))
    assert result.exit_code == 2 and "does not exist" in result.stderr, result.stderr


def test_serve_process_with_a_bad_config_exits_2_naming_the_key(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('node_id = "x"\n[replication]\nhello_interval_ms = true\n')
    serve = process("serve", "--config", str(config))
    try:
        _, stderr = serve.communicate(timeout=PROCESS_TIMEOUT_S)
    finally:
        if serve.poll() is None:
            serve.kill()
            serve.wait()
    assert serve.returncode == 2, stderr
    assert "replication.hello_interval_ms: expected a number" in stderr


def test_help_exits_0() -> None:
    script = Path(sys.executable).with_name("crdtsync")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "crdtsync"]
    done = subprocess.run(
        [*command, "--help"], capture_output=True, text=True, timeout=PROCESS_TIMEOUT_S, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("Usage: ")
    assert all(f"  {name} " in done.stdout for name in SUBCOMMANDS), done.stdout


@pytest.mark.parametrize("name", SUBCOMMANDS)
def test_subcommand_help_exits_0(name: str) -> None:
    result = run(name, "--help")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"Usage: crdtsync {name} [OPTIONS]")
