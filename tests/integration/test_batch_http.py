"""`POST /v1/batch` on real daemons: many keys of many docs in one request, answered once they are
stored, replicated like any write; every kind of bad batch refused whole with a 400 (or 413) naming
what was wrong, and nothing of it written."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from daemon_support import CONVERGE_TIMEOUT_S, Daemon, DaemonPool, describe, same_everywhere, wait_until

from crdtsync.daemon.batch_http import BATCH_DOCS_MAX, BATCH_WRITES_MAX
from crdtsync.testing.diskfaults import io_errors

pytestmark = pytest.mark.integration

BODY_BYTES_MAX = 1 << 20
DOCS = 30
KEYS_PER_DOC = 10


@pytest.fixture(scope="module")
def pair(pool: DaemonPool) -> list[Daemon]:
    return pool.cluster(["a", "b"], http={"body_bytes_max": BODY_BYTES_MAX})


def batch(daemon: Daemon, body: Any, **params: str) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return daemon.client.post("/v1/batch", content=content, params=params)


def set_write(doc: str, key: str, value: Any) -> dict[str, Any]:
    return {"doc": doc, "key": key, "value": value}


def test_a_batch_sets_and_deletes_keys_of_many_docs_and_replicates(pair: list[Daemon]) -> None:
    a, b = pair
    doc_ids = [f"batch/d{index}" for index in range(DOCS)]
    writes = [
        set_write(doc_id, f"k{key}", {"n": key, "doc": doc_id})
        for key in range(KEYS_PER_DOC)
        for doc_id in doc_ids
    ]
    # Within a doc, writes apply in their order: k0 is set, then deleted, then k1 set again.
    writes += [{"doc": doc_ids[0], "key": "k0", "delete": True}, set_write(doc_ids[0], "k1", "last")]
    writes.append({"doc": doc_ids[1], "key": "never-set", "delete": True})
    answer = batch(a, {"writes": writes}, token="true")
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["docs"] == DOCS
    assert body["set"] == DOCS * KEYS_PER_DOC + 1
    assert body["deleted"] == 1
    assert isinstance(body["token"], str) and body["token"]
    expected: dict[str, dict[str, Any]] = {
        doc_id: {f"k{key}": {"n": key, "doc": doc_id} for key in range(KEYS_PER_DOC)} for doc_id in doc_ids
    }
    del expected[doc_ids[0]]["k0"]
    expected[doc_ids[0]]["k1"] = "last"
    for doc_id in doc_ids:
        assert a.data(doc_id) == expected[doc_id]
    wait_until(lambda: same_everywhere(pair, doc_ids), CONVERGE_TIMEOUT_S, lambda: describe(pair, doc_ids))
    assert b.data(doc_ids[5]) == expected[doc_ids[5]]


def test_a_batch_token_covers_every_doc_written_on_any_node(pair: list[Daemon]) -> None:
    a, b = pair
    doc_ids = [f"token/d{index}" for index in range(5)]
    answer = batch(a, {"writes": [set_write(doc_id, "v", 1) for doc_id in doc_ids]}, token="true")
    assert answer.status_code == 200, answer.text
    token = answer.json()["token"]
    assert token
    for doc_id in doc_ids:
        read = b.client.get(f"/v1/docs/{doc_id}/keys/v", params={"min_state": token, "wait_ms": "10000"})
        assert read.status_code == 200 and read.json()["value"] == 1, read.text
    plain = batch(a, {"writes": [set_write(doc_ids[0], "v", 2)]})
    assert plain.status_code == 200 and "token" not in plain.json(), plain.text
    # A token names at most 64 docs: a larger batch stands, answered without one.
    wide = batch(a, {"writes": [set_write(f"token/w{index}", "v", 1) for index in range(65)]}, token="true")
    assert wide.status_code == 200 and wide.json()["set"] == 65, wide.text
    assert wide.json()["token"] is None and "64" in wide.json()["token_note"], wide.text


BAD_BATCHES: list[tuple[str, Any, int, str, str]] = [
    ("not JSON", b"{writes", 400, "bad_json", "not valid JSON"),
    ("not an object", [1], 400, "bad_batch", '{"writes": [...]}'),
    ("another field", {"writes": [set_write("x/a", "k", 1)], "more": 1}, 400, "bad_batch", "nothing else"),
    ("no writes", {"writes": []}, 400, "too_many_writes", f"1..{BATCH_WRITES_MAX}"),
    ("a write not an object", {"writes": [set_write("x/a", "k", 1), 7]}, 400, "bad_batch", "writes[1]"),
    ("a bad doc id", {"writes": [set_write("x/a", "k", 1), set_write("x//a", "k", 1)]}, 400, "bad_doc_id", "writes[1]"),
    ("a bad key", {"writes": [set_write("x/a", "k/1", 1)]}, 400, "bad_key", "writes[0]"),
    ("a doc id ending in a newline", {"writes": [set_write("x/a\n", "k", 1)]}, 400, "bad_doc_id", "writes[0]"),
    ("a key ending in a newline", {"writes": [set_write("x/a", "k\n", 1)]}, 400, "bad_key", "writes[0]"),
    ("no value", {"writes": [{"doc": "x/a", "key": "k"}]}, 400, "bad_batch", "neither"),
    ("value and delete", {"writes": [{"doc": "x/a", "key": "k", "value": 1, "delete": True}]}, 400, "bad_batch", "not both"),
    ("delete not a bool", {"writes": [{"doc": "x/a", "key": "k", "delete": 1}]}, 400, "bad_batch", "true or false"),
    ("an unknown field", {"writes": [{"doc": "x/a", "key": "k", "value": 1, "ttl": 5}]}, 400, "bad_batch", "'ttl'"),
    ("a doc id not a string", {"writes": [{"doc": 5, "key": "k", "value": 1}]}, 400, "bad_batch", "required strings"),
    ("an integer beyond 2^53", {"writes": [set_write("x/a", "k", 2**60)]}, 400, "bad_value", "2^53"),
    ("too many writes", {"writes": [set_write("x/a", f"k{i}", 1) for i in range(BATCH_WRITES_MAX + 1)]}, 400, "too_many_writes", str(BATCH_WRITES_MAX + 1)),
    ("too many docs", {"writes": [set_write(f"x/d{i}", "k", 1) for i in range(BATCH_DOCS_MAX + 1)]}, 400, "too_many_docs", f"writes[{BATCH_DOCS_MAX}]"),
    ("over body_bytes_max", {"writes": [set_write("x/a", "k", "v" * BODY_BYTES_MAX)]}, 413, "too_large", "over"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("what", "body", "status", "code", "says"), BAD_BATCHES, ids=[b[0] for b in BAD_BATCHES]
)
def test_a_bad_batch_is_refused_whole_naming_what_was_wrong(
    pair: list[Daemon], what: str, body: Any, status: int, code: str, says: str
) -> None:
    a = pair[0]
    answer = batch(a, body)
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert error["code"] == code, error
    assert says in error["message"], error
    # The good writes before the bad one were not applied either.
    assert a.client.get("/v1/docs/x/a").status_code == 404


def test_a_bad_token_flag_is_refused(pair: list[Daemon]) -> None:
    answer = batch(pair[0], {"writes": [set_write("x/a", "k", 1)]}, token="yes")
    assert answer.status_code == 400 and answer.json()["error"]["code"] == "bad_parameter", answer.text
    assert pair[0].client.get("/v1/docs/x/a").status_code == 404


def test_a_batch_the_store_cannot_commit_is_refused_not_acknowledged(pool: DaemonPool) -> None:
    daemon = pool.new("faulty")
    daemon.start()
    daemon.wait_healthy()
    assert batch(daemon, {"writes": [set_write("disk/b", "before", 1)]}).status_code == 200
    io_errors(daemon.pid)  # every write of the store fails (RLIMIT_FSIZE on the running daemon)
    failed = batch(daemon, {"writes": [set_write("disk/b", "during", 2)]})
    assert failed.status_code == 503 and failed.json()["error"]["code"] == "store_unavailable", failed.text
    at_once = batch(daemon, {"writes": [set_write("disk/b", "refused", 3)]})
    assert at_once.status_code == 503 and at_once.json()["error"]["code"] == "store_unavailable", at_once.text
    io_errors(daemon.pid, False)
    wait_until(lambda: daemon.client.get("/health").status_code == 200, CONVERGE_TIMEOUT_S, lambda: "ready")
    assert batch(daemon, {"writes": [set_write("disk/b", "after", 4)]}).status_code == 200
    data = daemon.data("disk/b") or {}
    assert data.get("before") == 1 and data.get("after") == 4 and "refused" not in data, data
