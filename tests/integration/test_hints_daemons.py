"""Hints on real daemons (issue 13): two `crdtsync serve` processes with `[[placement]] rf = 1` and a
small `hint_bytes_max`. With the holder of some docs killed (SIGKILL), the other node takes writes
for them as hints until its unconfirmed hinted bytes reach the cap, then answers `507 hints_full`
for such docs (before applying anything) while writes to docs it holds still succeed. Once the
holder is back, the hints are confirmed, writes are accepted again, and every acknowledged write is
on the holder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from daemon_support import CONVERGE_TIMEOUT_S, FAST_REPLICATION, Daemon, DaemonPool, start_mesh, wait_until

pytestmark = pytest.mark.integration

HINT_BYTES_MAX = 4000
VALUE = "v" * 400


def _holder(daemon: Daemon, doc_id: str) -> str:
    holder: str = daemon.get_json(f"/v1/placement/{doc_id}")["replicas"][daemon.dc][0]["node_id"]
    return holder


def _hints(daemon: Daemon) -> dict[str, Any]:
    body: dict[str, Any] = daemon.get_json("/v1/placement")
    return body


def test_hints_past_hint_bytes_max_refuse_writes_for_docs_not_held_until_the_holder_confirms(
    tmp_path: Path,
) -> None:
    pool = DaemonPool(tmp_path)
    replication = {**FAST_REPLICATION, "hint_bytes_max": HINT_BYTES_MAX}
    try:
        a, b = start_mesh(
            [Daemon(name, tmp_path / name, replication=replication, placement_rf=1) for name in ("a", "b")]
        )
        pool.daemons.extend([a, b])
        candidates = [f"hints/doc-{i}" for i in range(200)]
        on_b = [doc_id for doc_id in candidates if _holder(a, doc_id) == "b"][:40]
        on_a = next(doc_id for doc_id in candidates if _holder(a, doc_id) == "a")
        b.kill()

        accepted: list[str] = []
        refusal: dict[str, Any] | None = None
        for doc_id in on_b:
            response = a.client.put(f"/v1/docs/{doc_id}/keys/k", json=VALUE)
            if response.status_code == 507:
                refusal = response.json()["error"]
                break
            assert response.status_code == 200, response.text
            accepted.append(doc_id)
        assert refusal is not None and refusal["code"] == "hints_full", (
            f"no refusal after {len(accepted)} writes"
        )
        assert "hint_bytes_max" in refusal["message"]
        hints = _hints(a)
        assert hints["hinted_bytes"] >= HINT_BYTES_MAX and hints["hinted_docs"] == len(accepted)
        assert a.client.put(f"/v1/docs/{on_a}/keys/k", json=VALUE).status_code == 200, "a holds it"
        refused_doc = on_b[len(accepted)]
        assert a.data(refused_doc) is None, "the refused write was not applied"
        metrics = a.client.get("/metrics").text
        assert "crdtsync_writes_refused_hints_full_total 1.0" in metrics

        b.start()
        b.wait_healthy()
        wait_until(lambda: _hints(a)["hinted_bytes"] == 0, CONVERGE_TIMEOUT_S, "b confirms a's hints")
        response = a.client.put(f"/v1/docs/{refused_doc}/keys/k", json=VALUE)
        assert response.status_code == 200, response.text
        accepted.append(refused_doc)
        wait_until(
            lambda: all(b.data(doc_id) == {"k": VALUE} for doc_id in accepted),
            CONVERGE_TIMEOUT_S,
            "every acknowledged write is on its holder",
        )
    finally:
        pool.close()
