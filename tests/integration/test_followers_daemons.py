"""Read followers and `crdtsync top` on real daemons (issue 14): three `crdtsync serve` processes in
one datacenter with `[[placement]] rf = 1`; a doc read over HTTP on a node that does not hold it,
faster than the budget (forwarded to the holder, counted where they arrive), gains a follower there
(it serves the reads from its own copy, kept current
by the doc's deltas, and says so in its log), another node's `crdtsync top --json`, text frame and
`/metrics` show the reads and the follower, and the follower goes once the reads stop for the
cool-down. Short timers: a 1 s half-life, a budget of 5 reads/s, a 3 s cool-down."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from click.testing import CliRunner
from daemon_support import FAST_REPLICATION, Daemon, DaemonPool, start_mesh, wait_until

from crdtsync.cli import main

pytestmark = pytest.mark.integration

REPLICATION = {
    **FAST_REPLICATION,
    "load_half_life_ms": 1000,
    "follow_reads_per_s": 5,
    "follow_cool_down_ms": 3000,
}
READ_GAP_S = 0.03
"""Pacing of the reader (about 30 reads a second: six times the budget)."""


def _top(daemon: Daemon) -> Any:
    return daemon.get_json("/v1/top")


def _following(daemon: Daemon) -> int:
    following: int = _top(daemon)["nodes"][0]["following"]
    return following


def _top_cli(url: str, *args: str) -> Any:
    result = CliRunner().invoke(main, ["top", "--url", url, *args])
    assert result.exit_code == 0, result.output
    return json.loads(result.output) if "--json" in args else result.output


def _top_shows_follower(watcher: Daemon, reader: Daemon, doc_id: str) -> bool:
    """Whether `watcher` has every member's summary, and the reader's says it follows `doc_id`."""
    body = _top_cli(watcher.url, "--json")
    docs = {doc["doc_id"]: doc for doc in body["docs"]}
    every = {node["node_id"] for node in body["nodes"]} == {"f1", "f2", "f3"}
    return every and doc_id in docs and docs[doc_id]["followers"] == [reader.name]


def _check_top_elsewhere(watcher: Daemon, reader: Daemon, doc_id: str) -> None:
    """Another node's `crdtsync top` and `/metrics` show the reader's reads and its follower (the
    summaries travel with the gossip)."""
    body = _top_cli(watcher.url, "--json")
    hot = next(doc for doc in body["docs"] if doc["doc_id"] == doc_id)
    assert hot["reads_per_s"][reader.dc] > 0 and hot["writes_per_s"][watcher.dc] > 0
    assert body["node_id"] == watcher.name and body["nodes"][0]["state"] == "self"
    assert {node["node_id"] for node in body["nodes"]} == {"f1", "f2", "f3"}
    assert all(node["partitions"] is not None and node["partitions"] < 4096 for node in body["nodes"])
    assert body["weight_configured"] == 1.0 and all(node["weight"] == 1.0 for node in body["nodes"])
    text = _top_cli(watcher.url, "--once")
    assert doc_id in text and reader.name in text and "PARTITIONS" in text and "WEIGHT" in text
    metrics = watcher.client.get("/metrics").text
    assert f'crdtsync_hot_doc_rate{{dc="{reader.dc}",doc="{doc_id}",kind="read"}}' in metrics
    assert f'crdtsync_hot_doc_followers{{doc="{doc_id}"}} 1.0' in metrics
    assert f'crdtsync_node_load_cores{{dc="{reader.dc}",node="{reader.name}"}}' in metrics
    assert f'crdtsync_node_weight{{dc="{reader.dc}",node="{reader.name}"}} 1.0' in metrics
    refused = watcher.client.get("/v1/top", params={"docs": "0"})
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "bad_docs"


def test_a_hot_doc_gains_a_follower_where_it_is_read_and_loses_it_when_reads_stop(pool: DaemonPool) -> None:
    daemons: list[Daemon] = []
    for name in ("f1", "f2", "f3"):
        daemon = Daemon(name, pool.root / name, replication=REPLICATION, placement_rf=1)
        pool.daemons.append(daemon)
        daemons.append(daemon)
    start_mesh(daemons)
    reader = daemons[2]
    doc_id = next(
        f"models/hot-{i}"
        for i in range(64)
        if reader.get_json(f"/v1/placement/models/hot-{i}")["replicas"][reader.dc][0]["node_id"]
        != reader.name
    )
    holder = next(
        d
        for d in daemons
        if d.name == reader.get_json(f"/v1/placement/{doc_id}")["replicas"][reader.dc][0]["node_id"]
    )
    holder.put(doc_id, "version", "v1")
    assert reader.data(doc_id) == {"version": "v1"}  # forwarded to the holder
    forwarded = reader.client.get(f"/v1/docs/{doc_id}").headers
    assert (forwarded["X-Served-By"], forwarded["X-Served-As"]) == (holder.name, "holder")
    assert holder.client.get(f"/v1/docs/{doc_id}").headers["X-Served-As"] == "holder"
    assert _following(reader) == 0

    def read_until(condition: Any, timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while not condition():
            assert time.monotonic() < deadline, f"{what} within {timeout_s} s: {json.dumps(_top(reader))}"
            response = reader.client.get(f"/v1/docs/{doc_id}")
            # forwarded to the holder until the reader follows the doc, then served from its own copy
            assert response.status_code == 200 and response.headers["X-Served-By"] in (
                reader.name,
                holder.name,
            )
            time.sleep(READ_GAP_S)  # the load's pace, not a synchronisation

    read_until(lambda: _following(reader) == 1, 15.0, f"{reader.name} follows {doc_id}")
    following = reader.client.get(f"/v1/docs/{doc_id}").headers
    assert (following["X-Served-By"], following["X-Served-As"]) == (reader.name, "follower")
    top = _top(reader)
    assert [doc["followers"] for doc in top["docs"] if doc["doc_id"] == doc_id] == [[reader.name]]
    assert f"following doc '{doc_id}'" in reader.log_text()
    read_until(lambda: _top_shows_follower(holder, reader, doc_id), 10.0, f"{holder.name}'s top shows it")
    _check_top_elsewhere(holder, reader, doc_id)

    # The follower serves a new write from its own copy, brought by the doc's deltas.
    holder.put(doc_id, "version", "v2")
    read_until(lambda: reader.data(doc_id) == {"version": "v2"}, 5.0, "the follower serves the new write")
    assert _following(reader) == 1

    # The reads stop: the follower goes after the rate decays below half the budget and the cool-down.
    started = time.monotonic()
    wait_until(
        lambda: _following(reader) == 0,
        20.0,
        lambda: f"{reader.name} stops following: {json.dumps(_top(reader))}",
    )
    print(f"follower dropped {time.monotonic() - started:.1f} s after the reads stopped")
    assert f"no longer following doc '{doc_id}'" in reader.log_text()
    assert reader.data(doc_id) == {"version": "v2"}  # still served, by a fetch from the holder


def test_a_read_goes_to_the_follower_of_its_datacenter_before_a_holder_across_the_wan(
    pool: DaemonPool,
) -> None:
    """Every replica in dc1 (`rf = { dc1 = 1 }`), two nodes in dc2: once one of them follows a hot
    doc, the other's reads of it are forwarded to that follower (`X-Served-As: follower`) instead of
    crossing to the holder in dc1, and its writes still go to the holder."""
    daemons = [
        Daemon(name, pool.root / name, replication=REPLICATION, placement_rf={"dc1": 1}, dc=dc)
        for name, dc in (("g1", "dc1"), ("g2", "dc2"), ("g3", "dc2"))
    ]
    pool.daemons.extend(daemons)
    holder, reader, other = start_mesh(daemons)
    doc_id = "models/hot-wan"
    holder.put(doc_id, "version", "v1")
    served = other.client.get(f"/v1/docs/{doc_id}").headers
    assert (served["X-Served-By"], served["X-Served-As"]) == (holder.name, "holder")

    deadline = time.monotonic() + 15.0
    while _following(reader) == 0:
        assert time.monotonic() < deadline, f"{reader.name} follows {doc_id}: {json.dumps(_top(reader))}"
        assert reader.client.get(f"/v1/docs/{doc_id}").status_code == 200
        time.sleep(READ_GAP_S)  # the load's pace, not a synchronisation

    def served_by_follower() -> bool:
        # The reader's reads keep it following while its summary reaches the other node; the other
        # node reads a few times a second, under the budget, so that it does not follow too.
        for _ in range(5):
            reader.client.get(f"/v1/docs/{doc_id}")
        headers = other.client.get(f"/v1/docs/{doc_id}").headers
        return (headers["X-Served-By"], headers["X-Served-As"]) == (reader.name, "follower")

    wait_until(
        served_by_follower,
        10.0,
        lambda: f"{other.name}'s reads go to {reader.name}: {json.dumps(_top(other))}",
        poll_s=0.4,
    )
    assert other.data(doc_id) == {"version": "v1"}
    put = other.client.put(f"/v1/docs/{doc_id}/keys/version", json="v2")
    assert put.status_code == 200 and put.headers["X-Served-By"] == holder.name, put.text
    assert _following(other) == 0
