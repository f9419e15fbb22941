"""A rolling upgrade on real daemons: three `crdtsync serve` processes start pinned to wire version 1
(`replication.wire_version_max = 1`, as a release before version 2 speaks), then are restarted one at
a time without the pin while every node takes writes. Every link negotiates the highest version both
ends speak, the mixed cluster keeps replicating both ways, and at the end every link speaks version 2
and every node holds every acknowledged write."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from daemon_support import (
    CONVERGE_TIMEOUT_S,
    FAST_REPLICATION,
    Daemon,
    DaemonPool,
    same_everywhere,
    wait_until,
)

pytestmark = pytest.mark.integration


def link_versions(daemon: Daemon) -> dict[str, Any]:
    return {peer["node_id"]: peer["wire_version"] for peer in daemon.status()["peers"] if peer["node_id"]}


def versions_are(daemons: list[Daemon], expected: dict[tuple[str, str], int]) -> bool:
    """Whether each daemon's link to each other one speaks the expected version."""
    seen = {daemon.name: link_versions(daemon) for daemon in daemons}
    return all(seen[a].get(b) == version for (a, b), version in expected.items())


def test_nodes_upgraded_one_at_a_time_from_wire_version_1_replicate_throughout(tmp_path: Path) -> None:
    pinned = {**FAST_REPLICATION, "wire_version_max": 1}
    pool = DaemonPool(tmp_path)
    try:
        daemons = pool.cluster(["a", "b", "c"], replication=pinned)
        names = [daemon.name for daemon in daemons]
        pairs = [(a, b) for a in names for b in names if a != b]
        wait_until(
            lambda: versions_are(daemons, dict.fromkeys(pairs, 1)), CONVERGE_TIMEOUT_S, "every link on v1"
        )
        written: list[str] = []

        def write_through_every_node(round_name: str) -> None:
            for daemon in daemons:
                doc_id = f"upgrade/{round_name}-{daemon.name}"
                daemon.put(doc_id, "written_by", daemon.name)
                written.append(doc_id)

        write_through_every_node("all-v1")
        upgraded: set[str] = set()
        for daemon in daemons:
            assert daemon.terminate() == 0, daemon.log_tail()
            daemon.replication = dict(FAST_REPLICATION)
            daemon.start()
            daemon.wait_healthy()
            upgraded.add(daemon.name)
            # A link speaks v2 only when both of its ends were upgraded.
            expected = {(a, b): 2 if {a, b} <= upgraded else 1 for a, b in pairs}
            wait_until(
                lambda expected=expected: versions_are(daemons, expected),  # type: ignore[misc]
                CONVERGE_TIMEOUT_S,
                lambda: (
                    "link versions after upgrading "
                    + ", ".join(sorted(upgraded))
                    + ": "
                    + json.dumps({d.name: link_versions(d) for d in daemons})
                ),
            )
            write_through_every_node(f"after-{daemon.name}")
            wait_until(
                lambda: same_everywhere(daemons, written),
                CONVERGE_TIMEOUT_S,
                f"every node holds all {len(written)} docs after upgrading {', '.join(sorted(upgraded))}",
            )
        for daemon in daemons:
            for doc_id in written:
                assert daemon.data(doc_id) == {"written_by": doc_id.rsplit("-", 1)[1]}, (daemon.name, doc_id)
    finally:
        pool.close()
