"""`crdtsync serve` as OS processes: replication over real ZeroMQ, real SQLite dirs, the HTTP API.

A 3-daemon cluster (a, b, c) is started once for the module; tests that kill or pause one of its
daemons bring it back, and the `cluster` fixture restarts (or resumes) any daemon a failed test left
down, then waits for every peer to be up. A single daemon with a small body limit takes the bad
requests and the clean shutdown; backup/restore starts a fresh daemon.
"""

from __future__ import annotations

import base64
import itertools
import json
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from daemon_support import (
    CONVERGE_TIMEOUT_S,
    HTTP_TIMEOUT_S,
    Daemon,
    DaemonPool,
    describe,
    same_everywhere,
    wait_until,
)
from prometheus_client.parser import text_string_to_metric_families
from pycrdt import Array, Doc, Map, Text, XmlFragment

from crdtsync.core.state import decode_state_vector

pytestmark = pytest.mark.integration

BODY_BYTES_MAX = 1024
WRITES_PER_NODE = 12


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def from_b64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def new_client(daemon: Daemon) -> httpx.Client:
    return httpx.Client(base_url=daemon.url, timeout=HTTP_TIMEOUT_S, trust_env=False)


def error_code(response: httpx.Response) -> str | None:
    """The error code of a `{"error": {"code", "message"}}` answer; None for any other body."""
    if not response.headers.get("content-type", "").startswith("application/json"):
        return None
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message"}, body
    assert body["error"]["message"], body
    code: str = body["error"]["code"]
    return code


# ------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def cluster_nodes(pool: DaemonPool) -> list[Daemon]:
    return pool.cluster(["a", "b", "c"])


@pytest.fixture
def cluster(cluster_nodes: list[Daemon]) -> list[Daemon]:
    """The module's cluster with every daemon running and every peer up."""
    for daemon in cluster_nodes:
        if daemon.running:
            daemon.send(signal.SIGCONT)
        else:
            daemon.start()
            daemon.wait_healthy()
    wait_until(
        lambda: all(d.peers_up() for d in cluster_nodes),
        CONVERGE_TIMEOUT_S,
        lambda: "every peer is up: " + json.dumps([d.status()["peers"] for d in cluster_nodes]),
    )
    return cluster_nodes


@pytest.fixture(scope="module")
def solo(pool: DaemonPool) -> Daemon:
    """One daemon without peers whose [http] body_bytes_max is small."""
    daemon = pool.new("solo", http={"body_bytes_max": BODY_BYTES_MAX})
    daemon.start()
    daemon.wait_healthy()
    return daemon


def wait_converged(daemons: list[Daemon], doc_ids: list[str]) -> None:
    wait_until(
        lambda: same_everywhere(daemons, doc_ids), CONVERGE_TIMEOUT_S, lambda: describe(daemons, doc_ids)
    )


# ------------------------------------------------------------------------------------------ replication


def test_write_acks_answer_once_that_many_replicas_hold_the_write_durably(cluster: list[Daemon]) -> None:
    a = cluster[0]
    with new_client(a) as client:
        response = client.put("/v1/docs/acks/doc/keys/k", params={"write_acks": 3}, json="v")
        assert response.status_code == 200, response.text
        assert response.headers["X-Served-By"] == a.name
        acks = response.json()["write_acks"]
        assert acks["needed"] == 3 and sorted(acks["confirmed"]) == sorted(d.name for d in cluster)
        assert acks["confirmed"][0] == a.name  # the node that took the write counts first
        for daemon in cluster[1:]:  # confirmed means there already, with no wait for replication
            with new_client(daemon) as other:
                body = other.get("/v1/docs/acks/doc/keys/k").json()
            assert body["value"] == "v", body
        # Three replicas exist: asking for four answers 504 with the three, once they all confirmed
        # (wait_ms leaves time for that on a loaded machine: 300 ms did not).
        response = client.put("/v1/docs/acks/doc/keys/k", params={"write_acks": 4, "wait_ms": 2000}, json="w")
        assert response.status_code == 504, response.text
        error = response.json()["error"]
        assert error["code"] == "write_acks_timeout" and sorted(error["confirmed"]) == sorted(
            d.name for d in cluster
        )
        # "all": every alive node that holds the doc (here every node); "dc": those of this datacenter.
        for scope in ("all", "dc"):
            response = client.put("/v1/docs/acks/doc/keys/k", params={"write_acks": scope}, json=scope)
            assert response.status_code == 200, response.text
            acks = response.json()["write_acks"]
            assert acks["needed"] == 3 and sorted(acks["confirmed"]) == sorted(d.name for d in cluster)
        for bad in ("0", "x", "65", "dcs"):
            response = client.put("/v1/docs/acks/doc/keys/k", params={"write_acks": bad}, json="w")
            assert error_code(response) == "bad_write_acks", response.text


def test_concurrent_puts_and_patches_on_three_daemons_converge_to_the_same_json(
    cluster: list[Daemon],
) -> None:
    docs = ["conv/shared", "conv/other"]
    start = threading.Barrier(len(cluster))

    def write(daemon: Daemon) -> dict[tuple[str, str], Any]:
        written: dict[tuple[str, str], Any] = {}
        with new_client(daemon) as client:
            start.wait(timeout=HTTP_TIMEOUT_S)
            for k in range(WRITES_PER_NODE):
                value = {"node": daemon.name, "k": k}
                response = client.put(f"/v1/docs/conv/shared/keys/{daemon.name}-{k}", json=value)
                assert response.status_code == 200, response.text
                written[("conv/shared", f"{daemon.name}-{k}")] = value
                patch = {f"{daemon.name}-patch-{k}": k, "contended": f"{daemon.name}-{k}"}
                response = client.patch(f"/v1/docs/{docs[k % 2]}", json=patch)
                assert response.status_code == 200, response.text
                assert set(response.json()) == {"doc_id", "state_vector", "token"}
                written[(docs[k % 2], f"{daemon.name}-patch-{k}")] = k
        return written

    with ThreadPoolExecutor(len(cluster)) as executor:
        results = list(executor.map(write, cluster))
    wait_converged(cluster, docs)

    expected: dict[tuple[str, str], Any] = {}
    for result in results:
        expected.update(result)
    contents: dict[str, dict[str, Any]] = {}
    for doc_id in docs:
        data = cluster[0].data(doc_id)
        assert data is not None
        contents[doc_id] = data
    for (doc_id, key), value in expected.items():
        assert contents[doc_id][key] == value, (doc_id, key)
    contended = {f"{d.name}-{k}" for d in cluster for k in range(WRITES_PER_NODE)}
    for doc_id in docs:
        assert contents[doc_id]["contended"] in contended
        assert set(contents[doc_id]) == {key for (d, key) in expected if d == doc_id} | {"contended"}


def test_sigkilled_daemon_restarts_on_its_data_dir_converges_and_keeps_acknowledged_writes(
    cluster: list[Daemon],
) -> None:
    a, b, c = cluster
    acked: list[int] = []

    def write_on_c_until_killed() -> None:
        with new_client(c) as client:
            for i in itertools.count():
                try:
                    response = client.put(f"/v1/docs/kill/c/keys/k{i}", json=i)
                except httpx.HTTPError:
                    return
                if response.status_code != 200:
                    return
                acked.append(i)

    writer = threading.Thread(target=write_on_c_until_killed)
    writer.start()
    try:
        wait_until(lambda: len(acked) >= 40, CONVERGE_TIMEOUT_S, "40 writes on c are acknowledged")
        c.send(signal.SIGKILL)
    finally:
        writer.join(timeout=HTTP_TIMEOUT_S + 5)
    assert not writer.is_alive()
    assert c.proc is not None and c.proc.wait(timeout=10) == -signal.SIGKILL
    acknowledged = list(acked)

    # The others keep taking writes while c is down.
    for i in range(10):
        a.put("kill/ab", f"a{i}", i)
        b.put("kill/ab", f"b{i}", i)
        a.put("kill/c", f"from-a-{i}", i)

    # Restarted alone (no peers, another replication port: nothing can reach it), c holds from its
    # own store every write it acknowledged before the kill.
    c.start(isolated=True)
    c.wait_healthy()
    own = c.data("kill/c")
    assert own is not None
    lost = [i for i in acknowledged if own.get(f"k{i}") != i]
    assert not lost, f"{len(lost)} of {len(acknowledged)} acknowledged writes lost: {lost[:10]}"
    assert c.terminate() == 0

    # Back with its peers, it converges.
    c.start()
    c.wait_healthy()
    wait_converged(cluster, ["kill/c", "kill/ab"])
    final = c.data("kill/c")
    assert final is not None
    assert all(final[f"k{i}"] == i for i in acknowledged)
    assert all(final[f"from-a-{i}"] == i for i in range(10))
    assert c.data("kill/ab") == {**{f"a{i}": i for i in range(10)}, **{f"b{i}": i for i in range(10)}}


def test_paused_daemon_does_not_stop_the_others_and_catches_up_after_sigcont(cluster: list[Daemon]) -> None:
    a, b, c = cluster
    c.send(signal.SIGSTOP)
    try:
        a.put("pause/ab", "a0", 0)
        b.put("pause/ab", "b0", 0)
        wait_until(
            lambda: a.data("pause/ab") == b.data("pause/ab") == {"a0": 0, "b0": 0},
            CONVERGE_TIMEOUT_S,
            lambda: describe([a, b], ["pause/ab"]),
        )

        def c_down_on(node: Daemon) -> bool:
            return any(p["node_id"] == "c" and p["state"] == "down" for p in node.status()["peers"])

        wait_until(lambda: c_down_on(a) and c_down_on(b), CONVERGE_TIMEOUT_S, "a and b see c down")
        for i in range(1, 6):
            a.put("pause/ab", f"a{i}", i)
            b.put("pause/ab", f"b{i}", i)
        expected = {f"{n}{i}": i for n in "ab" for i in range(6)}
        wait_until(
            lambda: a.data("pause/ab") == b.data("pause/ab") == expected,
            CONVERGE_TIMEOUT_S,
            lambda: describe([a, b], ["pause/ab"]),
        )
        assert a.status()["merkle_root"] == b.status()["merkle_root"]
    finally:
        c.send(signal.SIGCONT)
    wait_converged(cluster, ["pause/ab"])
    assert c.data("pause/ab") == expected


# ------------------------------------------------------------------------------------------ binary updates


def test_pycrdt_update_posted_on_one_node_is_readable_as_json_on_another(cluster: list[Daemon]) -> None:
    a, b, _ = cluster
    client: Doc[Any] = Doc()
    data = client.get("data", type=Map)
    data["title"] = "hello"
    data["tags"] = ["x", "y"]

    # A full-state update (no sv) creates the doc.
    response = a.client.post("/v1/docs/yjs/post/update", content=client.get_update())
    assert response.status_code == 200, response.text
    wait_until(
        lambda: b.data("yjs/post") == {"title": "hello", "tags": ["x", "y"]}, CONVERGE_TIMEOUT_S, "b sees it"
    )

    # An incremental update computed against the state vector the node answered with.
    response = a.client.get("/v1/docs/yjs/post/update")
    assert response.status_code == 200
    node_sv = response.headers["X-State-Vector"]
    data["title"] = "hello again"
    data["count"] = 3
    response = a.client.post(
        "/v1/docs/yjs/post/update", params={"sv": node_sv}, content=client.get_update(from_b64url(node_sv))
    )
    assert response.status_code == 200, response.text
    expected = {"title": "hello again", "tags": ["x", "y"], "count": 3}
    wait_until(
        lambda: b.data("yjs/post") == expected, CONVERGE_TIMEOUT_S, lambda: describe([a, b], ["yjs/post"])
    )
    assert data.to_py() == expected


def test_a_key_holding_a_shared_type_reads_as_json_beside_a_value_json_cannot_hold(pool: DaemonPool) -> None:
    """`GET .../keys/{key}` converts the one value it answers: a nested Map, Array or Text reads as
    JSON, and a key beside an XmlFragment still reads; the XmlFragment itself, and the whole doc, have
    no JSON form: 422 `not_json`, not a 500. A daemon of its own: the shared ones' tests read every
    doc as JSON."""
    a = pool.new("xml")
    a.start()
    a.wait_healthy()
    client: Doc[Any] = Doc()
    data = client.get("data", type=Map)
    data["plain"] = 7
    data["nested"] = Map({"tags": Array(["x", "y"]), "note": Text("hi")})
    data["xml"] = XmlFragment()
    assert a.client.post("/v1/docs/yjs/shared/update", content=client.get_update()).status_code == 200
    nested = a.client.get("/v1/docs/yjs/shared/keys/nested")
    assert nested.status_code == 200, nested.text
    assert nested.json()["value"] == {"tags": ["x", "y"], "note": "hi"}
    plain = a.client.get("/v1/docs/yjs/shared/keys/plain")
    assert plain.status_code == 200 and plain.json()["value"] == 7, plain.text
    for path in ("/v1/docs/yjs/shared/keys/xml", "/v1/docs/yjs/shared"):
        refused = a.client.get(path)
        assert refused.status_code == 422 and refused.json()["error"]["code"] == "not_json", refused.text
    # A watch stream says so in an `error` event and ends (its headers went out before the render).
    with a.client.stream("GET", "/v1/docs/yjs/shared/watch") as stream:
        lines = [line for line in stream.iter_lines() if line]
    assert lines[0] == "event: error" and '"code": "not_json"' in lines[1], lines


def test_binary_update_endpoint_round_trips_with_a_pycrdt_client(cluster: list[Daemon]) -> None:
    a = cluster[0]
    a.put("yjs/rt", "x", 1)
    assert (
        a.client.patch("/v1/docs/yjs/rt", json={"y": "two", "z": {"nested": [True, None]}}).status_code == 200
    )
    client: Doc[Any] = Doc()
    for change in range(2):
        response = a.client.get("/v1/docs/yjs/rt/update", params={"sv": b64url(client.get_state())})
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/octet-stream"
        client.apply_update(response.content)
        assert client.get("data", type=Map).to_py() == a.data("yjs/rt")
        assert decode_state_vector(from_b64url(response.headers["X-State-Vector"])) == decode_state_vector(
            client.get_state()
        )
        if change == 0:
            a.put("yjs/rt", "w", 5)
    assert client.get("data", type=Map).to_py() == {"x": 1, "y": "two", "z": {"nested": [True, None]}, "w": 5}


def test_update_against_a_state_vector_the_node_does_not_cover_gets_409_and_changes_nothing(
    cluster: list[Daemon],
) -> None:
    a = cluster[0]
    a.put("yjs/behind", "x", 1)

    def snapshot() -> tuple[Any, str]:
        return a.get_json("/v1/docs/yjs/behind"), a.status()["merkle_root"]

    before = snapshot()
    stranger: Doc[Any] = Doc()
    data = stranger.get("data", type=Map)
    data["s"] = 1
    base = stranger.get_state()
    data["t"] = 2
    response = a.client.post(
        "/v1/docs/yjs/behind/update", params={"sv": b64url(base)}, content=stranger.get_update(base)
    )
    assert response.status_code == 409
    assert error_code(response) == "behind"
    assert snapshot() == before


# ------------------------------------------------------------------------------------------ observability


def test_health_status_and_prometheus_metrics(cluster: list[Daemon]) -> None:
    a = cluster[0]
    a.put("obs/doc", "k", 1)

    health = a.client.get("/health")
    assert health.status_code == 200 and health.json() == {"status": "ok", "node_id": "a"}

    status = a.status()
    assert status["node_id"] == "a" and status["dc"] == "test-dc"
    # A whole number of seconds (1.0) is written 1, as every integral number of the API is.
    assert isinstance(status["uptime_s"], (int, float)) and status["uptime_s"] > 0
    assert status["docs"] >= 1 and status["docs"] == len(a.all_doc_ids())
    assert status["store"].startswith("sqlite:") and status["durability"] == "fsync"
    assert len(status["merkle_root"]) == 32
    peers = {peer["node_id"]: peer for peer in status["peers"]}
    assert set(peers) == {"b", "c"}
    for name, peer in peers.items():
        assert peer["address"] == next(d.listen for d in cluster if d.name == name)
        assert peer["state"] == "alive"
        assert isinstance(peer["last_heard_ago_ms"], (int, float)) and peer["last_heard_ago_ms"] >= 0
        assert isinstance(peer["behind_updates"], int) and peer["behind_updates"] >= 0
        assert set(peer["anti_entropy"]) >= {"rounds", "last_round_ago_ms", "divergence", "in_progress"}
        assert peer["anti_entropy"]["rounds"] >= 0

    response = a.client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }
    names = {name for name, _ in samples}
    assert {
        "crdtsync_updates_published_total",
        "crdtsync_peer_alive",
        "crdtsync_store_commit_seconds_bucket",
    } <= names
    assert samples[("crdtsync_updates_published_total", ())] >= 1
    up = {
        dict(labels)["peer"]: value
        for (name, labels), value in samples.items()
        if name == "crdtsync_peer_alive"
    }
    assert up == {"b": 1.0, "c": 1.0}
    assert samples[("crdtsync_store_commit_seconds_bucket", (("le", "+Inf"),))] >= 1


def test_watch_streams_the_current_state_then_a_write_made_on_another_node(cluster: list[Daemon]) -> None:
    a, b, _ = cluster
    a.put("watched/doc", "v", 0)
    wait_converged(cluster, ["watched/doc"])
    with (
        new_client(a) as client,
        client.stream("GET", "/v1/docs/watched/doc/watch") as response,
    ):
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = response.iter_lines()

        def next_event() -> dict[str, Any]:
            for line in lines:
                if line.startswith("data: "):
                    event: dict[str, Any] = json.loads(line.removeprefix("data: "))
                    return event
            raise AssertionError("the stream ended")

        first = next_event()
        assert first["doc_id"] == "watched/doc" and first["data"] == {"v": 0}
        b.put("watched/doc", "v", 1)
        # Events coalesce, so read until the write shows (each read has the client's timeout).
        for _ in range(100):
            event = next_event()
            if event["data"] == {"v": 1}:
                break
        else:
            raise AssertionError("no event with the write made on b")
        assert event["state_vector"] != first["state_vector"]


# ------------------------------------------------------------------------------------------ bad requests

GOOD = "good/doc"
BAD_REQUESTS: list[tuple[str, str, str, dict[str, Any], int, str]] = [
    # (case, method, path, request kwargs, status, error code)
    ("doc id with a space", "PUT", "/v1/docs/bad id/keys/k", {"json": 1}, 400, "bad_doc_id"),
    ("doc id with !", "GET", "/v1/docs/bad!id", {}, 400, "bad_doc_id"),
    ("doc id with empty segment", "PATCH", "/v1/docs/a//b", {"json": {"k": 1}}, 400, "bad_doc_id"),
    ("doc id too long", "PUT", "/v1/docs/" + "x" * 513 + "/keys/k", {"json": 1}, 400, "bad_doc_id"),
    ("reserved segment", "PUT", f"/v1/docs/{GOOD}/watch/x/keys/k", {"json": 1}, 400, "bad_doc_id"),
    ("reserved doc id", "PATCH", "/v1/docs/keys", {"json": {"k": 1}}, 400, "bad_doc_id"),
    ("reserved update segment", "GET", "/v1/docs/update/update", {}, 400, "bad_doc_id"),
    ("invalid key", "PUT", f"/v1/docs/{GOOD}/keys/bad!key", {"json": 1}, 400, "bad_key"),
    ("key too long", "PUT", f"/v1/docs/{GOOD}/keys/" + "k" * 257, {"json": 1}, 400, "bad_key"),
    ("invalid key in PATCH", "PATCH", f"/v1/docs/{GOOD}", {"json": {"ok": 1, "bad!": 2}}, 400, "bad_key"),
    ("invalid JSON", "PUT", f"/v1/docs/{GOOD}/keys/k", {"content": b"{nope"}, 400, "bad_json"),
    ("invalid UTF-8", "PUT", f"/v1/docs/{GOOD}/keys/k", {"content": b'"\xff"'}, 400, "bad_json"),
    ("empty PUT body", "PUT", f"/v1/docs/{GOOD}/keys/k", {"content": b""}, 400, "bad_json"),
    ("invalid JSON PATCH", "PATCH", f"/v1/docs/{GOOD}", {"content": b"[1,"}, 400, "bad_json"),
    ("oversized PUT", "PUT", f"/v1/docs/{GOOD}/keys/k", {"json": "x" * BODY_BYTES_MAX}, 413, "too_large"),
    ("oversized PATCH", "PATCH", f"/v1/docs/{GOOD}", {"json": {"k": "x" * BODY_BYTES_MAX}}, 413, "too_large"),
    ("oversized update", "POST", f"/v1/docs/{GOOD}/update", {"content": b"\x00" * 2048}, 413, "too_large"),
    ("bad base64 sv (GET)", "GET", f"/v1/docs/{GOOD}/update", {"params": {"sv": "A"}}, 400, "bad_base64"),
    (
        "bad base64 sv (POST)",
        "POST",
        f"/v1/docs/{GOOD}/update?sv=A",
        {"content": b"\x00\x00"},
        400,
        "bad_base64",
    ),
    (
        "bad state vector (GET)",
        "GET",
        f"/v1/docs/{GOOD}/update",
        {"params": {"sv": b64url(b"\xff\xff\xff")}},
        400,
        "bad_state_vector",
    ),
    (
        "bad state vector (POST)",
        "POST",
        f"/v1/docs/{GOOD}/update",
        {"params": {"sv": b64url(b"\x02\x01")}, "content": b"\x00\x00"},
        400,
        "bad_state_vector",
    ),
    (
        "garbage update",
        "POST",
        f"/v1/docs/{GOOD}/update",
        {"content": b"\x05garbage\xff\x00"},
        400,
        "bad_update",
    ),
    ("empty update", "POST", f"/v1/docs/{GOOD}/update", {"content": b""}, 400, "empty_body"),
    ("unknown doc", "GET", "/v1/docs/no/such/doc", {}, 404, "no_such_doc"),
    ("key of unknown doc", "GET", "/v1/docs/no/such/doc/keys/k", {}, 404, "no_such_doc"),
    ("delete in unknown doc", "DELETE", "/v1/docs/no/such/doc/keys/k", {}, 404, "no_such_doc"),
    ("update of unknown doc", "GET", "/v1/docs/no/such/doc/update", {}, 404, "no_such_doc"),
    ("unknown key", "GET", f"/v1/docs/{GOOD}/keys/missing", {}, 404, "no_such_key"),
    ("delete unknown key", "DELETE", f"/v1/docs/{GOOD}/keys/missing", {}, 404, "no_such_key"),
    ("POST a doc", "POST", f"/v1/docs/{GOOD}", {"json": {}}, 405, "method_not_allowed"),
    ("DELETE a doc", "DELETE", f"/v1/docs/{GOOD}", {}, 405, "method_not_allowed"),
    ("POST a key", "POST", f"/v1/docs/{GOOD}/keys/k", {"json": 1}, 405, "method_not_allowed"),
    ("PUT an update", "PUT", f"/v1/docs/{GOOD}/update", {"content": b"\x00\x00"}, 405, "method_not_allowed"),
    ("POST a watch", "POST", f"/v1/docs/{GOOD}/watch", {}, 405, "method_not_allowed"),
    ("PUT status", "PUT", "/v1/status", {"json": {}}, 405, "method_not_allowed"),
    ("GET backup", "GET", "/v1/backup", {}, 405, "method_not_allowed"),
    ("PATCH with a list", "PATCH", f"/v1/docs/{GOOD}", {"json": [1, 2]}, 400, "bad_patch"),
    ("PATCH with a string", "PATCH", f"/v1/docs/{GOOD}", {"json": "k"}, 400, "bad_patch"),
    ("PATCH with {}", "PATCH", f"/v1/docs/{GOOD}", {"json": {}}, 400, "bad_patch"),
    ("limit 0", "GET", "/v1/docs", {"params": {"limit": 0}}, 400, "bad_limit"),
    ("limit over the page max", "GET", "/v1/docs", {"params": {"limit": 1001}}, 400, "bad_limit"),
    ("limit -1", "GET", "/v1/docs", {"params": {"limit": -1}}, 400, "bad_limit"),
    ("limit not a number", "GET", "/v1/docs", {"params": {"limit": "ten"}}, 400, "bad_limit"),
    ("empty restore", "POST", "/v1/restore", {"content": b""}, 400, "empty_body"),
    (
        "restore of a non-backup",
        "POST",
        "/v1/restore",
        {"content": b"not a database" * 10},
        400,
        "bad_backup",
    ),
    ("unknown path", "GET", "/v2/docs", {}, 404, "not_found"),
]


def solo_snapshot(daemon: Daemon) -> tuple[list[str], Any, str]:
    return daemon.all_doc_ids(), daemon.get_json(f"/v1/docs/{GOOD}"), daemon.status()["merkle_root"]


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status", "code"),
    [case[1:] for case in BAD_REQUESTS],
    ids=[case[0] for case in BAD_REQUESTS],
)
def test_bad_request_gets_a_clear_4xx_and_changes_nothing(
    solo: Daemon, method: str, path: str, kwargs: dict[str, Any], status: int, code: str
) -> None:
    solo.put(GOOD, "k", {"v": 1})
    before = solo_snapshot(solo)
    response = solo.client.request(method, path, **kwargs)
    assert (response.status_code, error_code(response)) == (status, code), response.text
    assert solo_snapshot(solo) == before


def test_sv_with_characters_outside_base64url_is_rejected_as_bad_base64(solo: Daemon) -> None:
    # Regression: the lenient base64 decoder dropped characters outside the alphabet, so `sv=!!!`
    # was taken as no sv at all.
    solo.put(GOOD, "k", {"v": 1})
    for method, content in (("GET", None), ("POST", b"\x00\x00")):
        response = solo.client.request(
            method, f"/v1/docs/{GOOD}/update", params={"sv": "!!!"}, content=content
        )
        assert (response.status_code, error_code(response)) == (400, "bad_base64"), (method, response.text)


@pytest.mark.parametrize(
    ("case", "sv", "status", "code"),
    [("garbage", None, 400, "bad_update"), ("uncovered sv", "stranger", 409, "behind")],
)
def test_refused_update_to_an_unknown_doc_leaves_no_doc_behind(
    solo: Daemon, case: str, sv: str | None, status: int, code: str
) -> None:
    # Regression: a refused update used to open (and so create) the doc before it was checked.
    doc_id = f"ghost/{case.replace(' ', '-')}"
    stranger: Doc[Any] = Doc()
    stranger.get("data", type=Map)["s"] = 1
    params = {"sv": b64url(stranger.get_state())} if sv else {}
    content = stranger.get_update() if sv else b"\x05garbage\xff\x00"
    before = solo_snapshot(solo)
    response = solo.client.post(f"/v1/docs/{doc_id}/update", params=params, content=content)
    assert (response.status_code, error_code(response)) == (status, code)
    assert solo.client.get(f"/v1/docs/{doc_id}").status_code == 404
    assert solo_snapshot(solo) == before


def test_sigterm_exits_0_promptly_and_the_restarted_daemon_holds_every_acknowledged_write(
    solo: Daemon,
) -> None:
    written = {f"k{i}": {"i": i} for i in range(30)}
    for key, value in written.items():
        solo.put("shutdown/doc", key, value)
    assert solo.client.patch("/v1/docs/shutdown/other", json={"a": 1, "b": [2]}).status_code == 200
    assert solo.client.delete("/v1/docs/shutdown/doc/keys/k0").status_code == 200
    del written["k0"]

    def held() -> tuple[dict[str, Any], str]:
        # Docs with content only: an empty doc (opened, never written) is not stored.
        contents = {doc_id: solo.data(doc_id) for doc_id in solo.all_doc_ids()}
        return {k: v for k, v in contents.items() if v}, solo.status()["merkle_root"]

    before = held()
    assert solo.terminate(timeout_s=10) == 0
    solo.start()
    solo.wait_healthy()
    assert solo.data("shutdown/doc") == written
    assert solo.data("shutdown/other") == {"a": 1, "b": [2]}
    assert held() == before


# ------------------------------------------------------------------------------------------ backup


def test_backup_over_http_restored_into_a_fresh_daemon_gives_the_same_docs(
    cluster: list[Daemon], pool: DaemonPool, tmp_path: Path
) -> None:
    a = cluster[0]
    a.put("backup/doc", "k", [1, 2, 3])
    wait_until(
        lambda: len({d.status()["merkle_root"] for d in cluster}) == 1,
        CONVERGE_TIMEOUT_S,
        lambda: describe(cluster, []),
    )
    ids = a.all_doc_ids()
    contents = {doc_id: a.data(doc_id) for doc_id in ids}
    root = a.status()["merkle_root"]

    response = a.client.post("/v1/backup")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/vnd.sqlite3"
    assert response.content.startswith(b"SQLite format 3\x00")
    (tmp_path / "backup.db").write_bytes(response.content)

    fresh = pool.new("fresh")
    fresh.start()
    fresh.wait_healthy()
    assert fresh.all_doc_ids() == []
    restored = fresh.client.post("/v1/restore", content=(tmp_path / "backup.db").read_bytes())
    assert restored.status_code == 200, restored.text
    assert restored.json() == {"docs": len(ids)}
    assert fresh.all_doc_ids() == ids
    assert {doc_id: fresh.data(doc_id) for doc_id in ids} == contents
    assert fresh.status()["merkle_root"] == root


# ------------------------------------------------------------------------------------------ watch streams


def test_watching_an_unknown_doc_is_404_and_creates_nothing(solo: Daemon) -> None:
    before = solo.all_doc_ids()
    response = solo.client.get("/v1/docs/never/written/watch")
    assert response.status_code == 404 and error_code(response) == "no_such_doc"
    assert solo.all_doc_ids() == before


def test_sigterm_ends_open_watch_streams_and_exits_promptly(solo: Daemon) -> None:
    solo.put("watched/doc", "k", 1)
    with (
        httpx.Client(base_url=solo.url, verify=solo.verify, timeout=10.0) as client,
        client.stream("GET", "/v1/docs/watched/doc/watch") as stream,
    ):
        lines = stream.iter_lines()
        assert next(line for line in lines if line.startswith("data: "))
        started = time.monotonic()
        assert solo.terminate(timeout_s=10) == 0
        assert time.monotonic() - started < 5.0, "an open watch stream delayed the shutdown"
        assert all(not line.startswith("data: ") for line in lines)
    solo.start()
    solo.wait_healthy()


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"12345678901234567890", "bad_value"),
        (b'{"a": [1, -99999999999999999999]}', "bad_value"),
        (b"NaN", "bad_json"),
        (b'{"x": Infinity}', "bad_json"),
        (b"[" * 70 + b"]" * 70, "bad_json"),
    ],
)
def test_values_a_yjs_number_cannot_hold_are_refused_and_change_nothing(
    solo: Daemon, body: bytes, code: str
) -> None:
    solo.put("numbers/doc", "k", 1)
    before = solo.data("numbers/doc")
    response = solo.client.put("/v1/docs/numbers/doc/keys/k", content=body)
    assert (response.status_code, error_code(response)) == (400, code), response.text
    assert solo.data("numbers/doc") == before
    assert solo.client.get("/health").status_code == 200


# ------------------------------------------------------------------------------------------ numbers

NUMBERS_BODY = (
    b'{"n": 4, "half": 4.5, "neg": -7, "zero": 0, "max": 9007199254740992, "beyond": 9007199254740994.0,'
    b' "flag": true, "none": null, "nested": {"shards": [1, 2.0, 2.25, {"x": 3}]}}'
)
NUMBERS_TYPES = {
    "n": "int",
    "half": "float",
    "neg": "int",
    "zero": "int",
    "max": "int",
    "beyond": "float",
    "flag": "bool",
    "none": "NoneType",
    "nested": {"shards": ["int", "int", "float", {"x": "int"}]},
}


def json_types(value: Any) -> Any:
    """`value` with every scalar replaced by its Python type's name: `json.loads` reads `4` as an int
    and `4.0` as a float, so this shows how each number was written."""
    if isinstance(value, dict):
        return {key: json_types(item) for key, item in value.items()}
    if isinstance(value, list):
        return [json_types(item) for item in value]
    return type(value).__name__


def test_integral_numbers_read_back_as_integers_in_answers_and_watch_events(solo: Daemon) -> None:
    """pycrdt reads every Yjs number back as a float; the API writes the integral ones within ±2^53 as
    integers (`4`, not `4.0`), as JavaScript does; 4.5 and a float beyond 2^53 stay floats."""
    response = solo.client.put("/v1/docs/numbers/plain/keys/v", content=NUMBERS_BODY)
    assert response.status_code == 200, response.text
    solo.put("numbers/plain", "four", 4)
    expected = {"v": json.loads(NUMBERS_BODY), "four": 4}

    key = solo.client.get("/v1/docs/numbers/plain/keys/four")
    assert key.status_code == 200 and '"value": 4, "token"' in key.text, key.text  # 4, not 4.0
    assert type(key.json()["value"]) is int
    value = solo.client.get("/v1/docs/numbers/plain/keys/v").json()["value"]
    assert value == expected["v"] and json_types(value) == NUMBERS_TYPES
    assert value["beyond"] == float(2**53 + 2)

    doc = solo.client.get("/v1/docs/numbers/plain")
    assert doc.status_code == 200
    assert doc.json()["data"] == expected
    assert json_types(doc.json()["data"]) == {"v": NUMBERS_TYPES, "four": "int"}

    with (
        httpx.Client(base_url=solo.url, verify=solo.verify, timeout=HTTP_TIMEOUT_S) as client,
        client.stream("GET", "/v1/docs/numbers/plain/watch") as stream,
    ):
        line = next(line for line in stream.iter_lines() if line.startswith("data: "))
    event = json.loads(line.removeprefix("data: "))
    assert event["data"] == expected
    assert json_types(event["data"]) == {"v": NUMBERS_TYPES, "four": "int"}
