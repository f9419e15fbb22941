"""Forwarding on real daemons (issue 13): four `crdtsync serve` processes, three in dc1 and one in
dc2, with `[[placement]] rf = 1` and bearer tokens. A request about a doc the node does not hold goes
to the doc's holder in its own datacenter over the replication link and comes back with
`X-Served-By` naming the holder; the asking node keeps no copy (nothing to hand over). A forged
forwarding header is refused like any request without a token. With that holder killed (SIGKILL),
the write goes to the doc's holder in dc2, and the first holder has it once it is back. (With no
holder reachable at all the node takes the write itself: test_hints_daemons.)"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from daemon_support import CONVERGE_TIMEOUT_S, FAST_REPLICATION, Daemon, DaemonPool, start_mesh, wait_until
from pycrdt import Doc, Map

from crdtsync.daemon.http_input import from_b64url

pytestmark = pytest.mark.integration

WRITE = "forwarding-test-write-token"


def _holder(daemon: Daemon, doc_id: str) -> str:
    holder: str = daemon.get_json(f"/v1/placement/{doc_id}")["replicas"][daemon.dc][0]["node_id"]
    return holder


def _alive_in(daemon: Daemon, name: str) -> bool:
    return any(m["node_id"] == name and m["state"] == "alive" for m in daemon.status()["members"])


def _metric(daemon: Daemon, name: str) -> float:
    match = re.search(rf"^crdtsync_forward_{name}_total (\S+)$", daemon.client.get("/metrics").text, re.M)
    assert match is not None, f"no crdtsync_forward_{name}_total on {daemon.name}"
    return float(match.group(1))


def test_requests_about_docs_not_held_are_served_by_the_holder(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.toml"
    digest = hashlib.sha256(WRITE.encode()).hexdigest()
    tokens.write_text(f'[[token]]\nname = "ops"\nscope = "write"\nsha256 = "{digest}"\n')
    pool = DaemonPool(tmp_path)
    try:
        daemons = start_mesh(
            [
                Daemon(
                    name,
                    tmp_path / name,
                    replication=FAST_REPLICATION,
                    placement_rf=1,
                    http={"tokens_file": str(tokens)},
                    token=WRITE,
                    dc=dc,
                )
                for name, dc in (("a", "dc1"), ("b", "dc1"), ("c", "dc1"), ("d", "dc2"))
            ]
        )
        pool.daemons.extend(daemons)
        a, b, _, _ = daemons
        doc_id = next(f"fwd/doc-{i}" for i in range(200) if _holder(a, f"fwd/doc-{i}") == "b")

        put = a.client.put(f"/v1/docs/{doc_id}/keys/model", json={"version": 3})
        assert put.status_code == 200, put.text
        assert put.headers["X-Served-By"] == "b"
        token = put.json()["token"]
        read = a.client.get(f"/v1/docs/{doc_id}/keys/model", params={"min_state": token})
        assert read.status_code == 200, read.text
        assert read.json()["value"] == {"version": 3}
        assert (read.headers["X-Served-By"], read.headers["X-Served-As"]) == ("b", "holder")

        update_doc: Doc[Any] = Doc()
        update_doc["data"] = data = Map[Any]()
        data["from_update"] = "yes"
        posted = a.client.post(
            f"/v1/docs/{doc_id}/update",
            content=update_doc.get_update(),
            headers={"Content-Type": "application/octet-stream"},
        )
        assert posted.status_code == 200, posted.text
        assert posted.headers["X-Served-By"] == "b"
        acked = a.client.put(f"/v1/docs/{doc_id}/keys/acked", json=1, params={"write_acks": 1})
        assert acked.status_code == 200, acked.text
        assert acked.json()["write_acks"]["confirmed"] == ["b"]
        assert b.data(doc_id) == {"model": {"version": 3}, "from_update": "yes", "acked": 1}
        binary = a.client.get(f"/v1/docs/{doc_id}/update")
        assert binary.status_code == 200 and binary.headers["Content-Type"] == "application/octet-stream"
        replayed: Doc[Any] = Doc()
        replayed.apply_update(binary.content)
        assert replayed.get("data", type=Map).to_py()["from_update"] == "yes"
        # The holder's own headers come back: the state vector the client edits against, and its token.
        held = b.client.get(f"/v1/docs/{doc_id}/update")
        assert binary.headers["X-State-Vector"] == held.headers["X-State-Vector"]
        assert binary.headers["X-Causal-Token"], "a forwarded read answers with the holder's token"
        replayed.get("data", type=Map)["edited"] = "against the forwarded state vector"
        state = from_b64url(binary.headers["X-State-Vector"], "sv")
        edit = a.client.post(
            f"/v1/docs/{doc_id}/update",
            params={"sv": binary.headers["X-State-Vector"]},
            content=replayed.get_update(state),
            headers={"Content-Type": "application/octet-stream"},
        )
        assert (edit.status_code, edit.headers["X-Served-By"]) == (200, "b"), edit.text

        missing_id = next(f"fwd/none-{i}" for i in range(200) if _holder(a, f"fwd/none-{i}") == "b")
        missing = a.client.get(f"/v1/docs/{missing_id}")
        assert (missing.status_code, missing.headers["X-Served-By"]) == (404, "b")
        assert missing.json()["error"]["code"] == "no_such_doc"

        assert a.status()["hinted_docs"] == 0, "a forwarded every write: it has nothing to hand over"
        assert doc_id not in a.all_doc_ids()
        assert _metric(a, "requests_sent") >= 6 and _metric(b, "requests_served") >= 6
        assert _metric(a, "requests_timed_out") == 0
        assert a.status()["forwarding"]["requests_sent"] == _metric(a, "requests_sent")

        forged = httpx.put(
            f"{a.url}/v1/docs/{doc_id}/keys/forged",
            json=1,
            headers={"X-Crdtsync-Forwarded": "0" * 64},
            timeout=10.0,
        )
        assert forged.status_code == 401, "a forged forwarding header does not replace a token"

        b.kill()
        # b may have been dc1's relay, which carried dc2's gossip: d can look suspect until another
        # node of dc1 takes over, and only alive holders are forwarded to.
        wait_until(
            lambda: not _alive_in(a, "b") and _alive_in(a, "d"),
            CONVERGE_TIMEOUT_S,
            "a sees b down and d alive",
        )
        across = a.client.put(f"/v1/docs/{doc_id}/keys/while_down", json="kept")
        assert across.status_code == 200, across.text
        assert across.headers["X-Served-By"] == "d", "with its holder here down, the one in dc2 serves it"
        b.start()
        b.wait_healthy()
        wait_until(
            lambda: (b.data(doc_id) or {}).get("while_down") == "kept",
            CONVERGE_TIMEOUT_S,
            "the write d took while b was down reaches b",
        )
    finally:
        pool.close()
