"""A rolling upgrade on real daemons: three `crdtsync serve` processes start pinned to wire version 1
(`replication.wire_version_max = 1`, as a release before negotiation speaks); one is restarted
pinned to version 2 (a release before compact causal metadata), then each in turn without a pin,
while every node takes writes. The cluster goes through links of versions 1, 2 and 3 side by side:
every link negotiates the highest version both ends speak, the mixed cluster keeps replicating both
ways, and at the end every link speaks the current version and every node holds every write."""

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

from crdtsync.core.envelope import WIRE_VERSION

pytestmark = pytest.mark.integration


def link_versions(daemon: Daemon) -> dict[str, Any]:
    return {peer["node_id"]: peer["wire_version"] for peer in daemon.status()["peers"] if peer["node_id"]}


def versions_are(daemons: list[Daemon], expected: dict[tuple[str, str], int]) -> bool:
    """Whether each daemon's link to each other one speaks the expected version."""
    seen = {daemon.name: link_versions(daemon) for daemon in daemons}
    return all(seen[a].get(b) == version for (a, b), version in expected.items())


def test_nodes_upgraded_one_at_a_time_through_wire_versions_1_and_2_replicate_throughout(
    tmp_path: Path,
) -> None:
    pinned = {**FAST_REPLICATION, "wire_version_max": 1}
    current = WIRE_VERSION
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
        speaks = dict.fromkeys(names, 1)
        by_name = {daemon.name: daemon for daemon in daemons}
        for name, version in ((names[0], 2), (names[1], current), (names[2], current), (names[0], current)):
            daemon = by_name[name]
            assert daemon.terminate() == 0, daemon.log_tail()
            daemon.replication = {**FAST_REPLICATION, "wire_version_max": version}
            daemon.start()
            daemon.wait_healthy()
            speaks[name] = version
            # A link speaks the highest version both of its ends speak.
            expected = {(a, b): min(speaks[a], speaks[b]) for a, b in pairs}
            wait_until(
                lambda expected=expected: versions_are(daemons, expected),  # type: ignore[misc]
                CONVERGE_TIMEOUT_S,
                lambda: (
                    f"link versions with {speaks}: " + json.dumps({d.name: link_versions(d) for d in daemons})
                ),
            )
            write_through_every_node(f"after-{daemon.name}-v{version}")
            wait_until(
                lambda: same_everywhere(daemons, written),
                CONVERGE_TIMEOUT_S,
                f"every node holds all {len(written)} docs with {speaks}",
            )
        for daemon in daemons:
            for doc_id in written:
                assert daemon.data(doc_id) == {"written_by": doc_id.rsplit("-", 1)[1]}, (daemon.name, doc_id)
    finally:
        pool.close()
