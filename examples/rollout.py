"""A rollout with causal tokens: the controller writes on a node in dc1, the inference servers read
their nearest node in dc2 and never see the old stage (docs/consistency.md).

Two `crdtsync serve` daemons (the local-cluster harness): ctl-1 in dc1, serve-1 in dc2. The
controller marks `models/registry` entry `llama-3-8b` as `stage = production` on ctl-1 and hands
the write's token to the inference servers with its "reload" message. Each server reads serve-1
with `min_state=TOKEN`: serve-1 answers as soon as it holds the write (the read waits for it; the
client never polls). A server's watch stream, resumed with its `Last-Event-ID` after the controller
moved on to `stage = retired`, says that the doc changed since. Exits 0 when every read saw what it
must, 1 otherwise.

    .venv/bin/python examples/rollout.py
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from crdtsync.testing.cluster import LocalCluster

DOC = "models/registry"
MODEL = "llama-3-8b"
SERVERS = 4
WAIT_MS = 15_000  # generous: right after start the two nodes may still be meeting


def read_with_token(url: str, token: str) -> tuple[int, object, float]:
    """One inference server's reload: read the entry with the controller's token."""
    start = time.monotonic()
    answer = httpx.get(
        f"{url}/v1/docs/{DOC}/keys/{MODEL}",
        params={"min_state": token, "wait_ms": WAIT_MS},
        timeout=WAIT_MS / 1000 + 10,
    )
    waited_ms = (time.monotonic() - start) * 1000
    value = answer.json().get("value") if answer.status_code == 200 else answer.json()["error"]
    return answer.status_code, value, waited_ms


def first_event(url: str, last_event_id: str | None) -> tuple[str, dict[str, object]]:
    """The first event of a watch stream (its id and data), resumed from `last_event_id` if given."""
    headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
    with httpx.stream("GET", f"{url}/v1/docs/{DOC}/watch", headers=headers, timeout=10.0) as stream:
        event_id = ""
        for line in stream.iter_lines():
            if line.startswith("id: "):
                event_id = line.removeprefix("id: ")
            elif line.startswith("data: "):
                return event_id, json.loads(line.removeprefix("data: "))
    raise RuntimeError("the watch stream ended before its first event")


def main() -> int:
    with (
        tempfile.TemporaryDirectory(prefix="crdtsync-rollout-") as root,
        LocalCluster.named(root, ["ctl-1", "serve-1"], dcs={"ctl-1": "dc1", "serve-1": "dc2"}) as cluster,
    ):
        cluster.start_all()
        cluster.wait_healthy()
        controller, nearest = cluster["ctl-1"].url, cluster["serve-1"].url
        with httpx.Client(base_url=controller, timeout=10.0) as ctl:
            ctl.put(f"/v1/docs/{DOC}/keys/{MODEL}", json={"stage": "canary", "shards": 4}).raise_for_status()
            written = ctl.put(f"/v1/docs/{DOC}/keys/{MODEL}", json={"stage": "production", "shards": 4})
            written.raise_for_status()
            token = written.json()["token"]
            print(f"controller: {MODEL} -> production on ctl-1 (dc1); token {token}")

            # Every server reloads at once, on serve-1 in dc2, with the token.
            with ThreadPoolExecutor(SERVERS) as pool:
                reads = list(pool.map(lambda _: read_with_token(nearest, token), range(SERVERS)))
            ok = True
            for index, (status, value, waited_ms) in enumerate(reads):
                print(f"server {index}: {status} {value} after {waited_ms:.1f} ms")
                ok &= status == 200 and isinstance(value, dict) and value.get("stage") == "production"

            # A server's watch: it remembers the last event id, the controller moves on, and the
            # resumed stream (on the same node here; any node would do) says the doc changed.
            seen_id, seen = first_event(nearest, None)
            retired = ctl.put(
                f"/v1/docs/{DOC}/keys/{MODEL}",
                params={"session": token},
                json={"stage": "retired", "shards": 4},
            )
            retired.raise_for_status()
            # Wait for the retirement first (a read with its token), so the resumed stream sees it.
            status, value, _ = read_with_token(nearest, retired.json()["token"])
            _, resumed = first_event(nearest, seen_id)
            print(f"watch resumed with Last-Event-ID: changed={resumed['changed']}, data={resumed['data']}")
            ok &= status == 200 and seen["data"] != resumed["data"] and resumed["changed"] is True
        print(
            "every read saw what it must" if ok else "A READ SAW AN OLD STAGE",
            file=sys.stderr if not ok else sys.stdout,
        )
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
