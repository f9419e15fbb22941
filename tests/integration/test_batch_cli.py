"""`crdtsync batch FILE` against a live daemon: a file of writes, one per line, set and deleted in
requests within the route's limits; a bad line named by its number."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from daemon_support import Daemon, DaemonPool

from crdtsync.batch_cli import chunks, read_writes
from crdtsync.cli import main
from crdtsync.daemon.batch_http import BATCH_DOCS_MAX, BATCH_WRITES_MAX

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def node(pool: DaemonPool) -> Daemon:
    daemon = pool.new("batch-cli")
    daemon.start()
    daemon.wait_healthy()
    return daemon


def run(*args: str) -> Result:
    return CliRunner().invoke(main, list(args), prog_name="crdtsync", catch_exceptions=False)


def write_lines(path: Path, writes: list[dict[str, Any]]) -> str:
    path.write_text("".join(json.dumps(write) + "\n" for write in writes) + "\n")
    return str(path)


def test_batch_sets_and_deletes_the_keys_of_a_file(node: Daemon, tmp_path: Path) -> None:
    writes: list[dict[str, Any]] = [
        {"doc": f"cli/batch{i % 3}", "key": f"k{i}", "value": {"n": i}} for i in range(12)
    ]
    writes.append({"doc": "cli/batch0", "key": "k0", "delete": True})
    result = run("batch", "--url", node.url, write_lines(tmp_path / "writes.jsonl", writes))
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "set 12 keys, deleted 1 in 1 requests"
    assert node.data("cli/batch1") == {f"k{i}": {"n": i} for i in range(1, 12, 3)}
    assert "k0" not in (node.data("cli/batch0") or {})


def test_a_refused_write_is_named_by_its_line(node: Daemon, tmp_path: Path) -> None:
    writes = [
        {"doc": "cli/refused", "key": "ok", "value": 1},
        {"doc": "cli/refused", "key": "a/b", "value": 2},
    ]
    result = run("batch", "--url", node.url, write_lines(tmp_path / "bad.jsonl", writes))
    assert result.exit_code == 1
    assert "line 2: key 'a/b' is invalid" in result.output and "(400 bad_key)" in result.output, result.output
    assert node.data("cli/refused") is None


def test_a_line_that_is_not_json_stops_before_anything_is_sent(node: Daemon, tmp_path: Path) -> None:
    path = tmp_path / "garbage.jsonl"
    path.write_text('{"doc": "cli/garbage", "key": "k", "value": 1}\n{not json\n')
    result = run("batch", "--url", node.url, str(path))
    assert result.exit_code == 2 and "line 2: not JSON" in result.output, result.output
    assert node.data("cli/garbage") is None


def test_writes_are_split_within_the_route_limits() -> None:
    many = "".join(
        json.dumps({"doc": "d", "key": f"k{i}", "value": i}) + "\n" for i in range(BATCH_WRITES_MAX + 1)
    )
    sizes = [len(writes) for _, writes in chunks(read_writes(io.StringIO(many)))]
    assert sizes == [BATCH_WRITES_MAX, 1]
    wide = "".join(
        json.dumps({"doc": f"d{i}", "key": "k", "value": i}) + "\n" for i in range(BATCH_DOCS_MAX + 1)
    )
    split = list(chunks(read_writes(io.StringIO(wide))))
    assert [len(writes) for _, writes in split] == [BATCH_DOCS_MAX, 1]
    assert split[1][0] == [BATCH_DOCS_MAX + 1]  # the line numbers travel with the writes
