"""`crdtsync top` on real daemons (issue 14): reads of a doc through one `crdtsync serve` process show
up, through the load gossip, in `GET /v1/top`, `crdtsync top --json` and `/metrics` of another
(every member with its load, the doc with its read rate from its datacenter)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from click.testing import CliRunner
from daemon_support import FAST_REPLICATION, DaemonPool, wait_until

from crdtsync.cli import main

pytestmark = pytest.mark.integration

HOT = "models/registry-entry"


def _top(runner: CliRunner, url: str, *args: str) -> Any:
    result = runner.invoke(main, ["top", "--url", url, *args])
    assert result.exit_code == 0, result.output
    return json.loads(result.output) if "--json" in args else result.output


def test_reads_on_one_node_show_in_top_and_metrics_of_another(pool: DaemonPool) -> None:
    reader, watcher = pool.cluster(
        ["t1", "t2"], replication={**FAST_REPLICATION, "load_half_life_ms": 10_000}
    )
    reader.put(HOT, "version", "v7")
    for _ in range(40):
        assert reader.data(HOT) == {"version": "v7"}
    runner = CliRunner()

    def hot_seen() -> bool:
        body = _top(runner, watcher.url, "--json")
        docs = {doc["doc_id"]: doc for doc in body["docs"]}
        return HOT in docs and docs[HOT]["reads_per_s"].get(reader.dc, 0) > 0

    wait_until(
        hot_seen, 15.0, lambda: "t1's reads in t2's top: " + json.dumps(_top(runner, watcher.url, "--json"))
    )
    body = _top(runner, watcher.url, "--json")
    print(json.dumps(body, indent=1))
    assert body["node_id"] == "t2"
    assert [node["node_id"] for node in body["nodes"]] == ["t2", "t1"]
    assert {node["state"] for node in body["nodes"]} == {"self", "alive"}
    assert [node["partitions"] for node in body["nodes"]] == [4096, 4096]  # rf 3: both hold everything
    hot = body["docs"][0]
    assert hot["doc_id"] == HOT
    assert hot["writes_per_s"][reader.dc] > 0
    assert hot["followers"] == []
    text = _top(runner, watcher.url, "--once")
    assert HOT in text and "t1" in text and "PARTITIONS" in text
    metrics = watcher.client.get("/metrics").text
    assert f'crdtsync_hot_doc_rate{{dc="{reader.dc}",doc="{HOT}",kind="read"}}' in metrics
    assert 'crdtsync_node_load_cores{dc="test-dc",node="t1"}' in metrics
    refused = watcher.client.get("/v1/top", params={"docs": "0"})
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "bad_docs"
