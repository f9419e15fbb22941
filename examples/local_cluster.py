"""Three `crdtsync serve` daemons on 127.0.0.1 with the local-cluster harness (`crdtsync.testing.cluster`).

Writes go to every daemon over HTTP; b is paused (SIGSTOP) and resumed; c is killed with SIGKILL
while a and b keep taking writes, then restarted on the same data dir and ports. Once the three hold
the same Merkle root, every write a daemon acknowledged is checked on every daemon. Exits 0 when
nothing was lost, 1 otherwise.

    .venv/bin/python examples/local_cluster.py
"""

from __future__ import annotations

import sys
import tempfile

from crdtsync.testing.cluster import LocalCluster, LocalDaemon

CONVERGE_TIMEOUT_S = 30.0


def write_round(cluster: LocalCluster[LocalDaemon], names: list[str], round_index: int) -> None:
    for name in names:
        # A key only this node writes (checked by value) and a key every node writes (by presence).
        cluster.put(name, "fleet/config", f"{name}.replicas", round_index, owned=True)
        cluster.put(name, "models/registry", "llama-3-8b", {"stage": "canary", "by": name})


def main() -> int:
    with (
        tempfile.TemporaryDirectory(prefix="crdtsync-cluster-") as root,
        LocalCluster.named(root, ["a", "b", "c"], curve=True) as cluster,
    ):
        cluster.start_all()
        print(f"a, b, c answer /health after {cluster.wait_healthy():.1f} s")
        for round_index in range(5):
            write_round(cluster, ["a", "b", "c"], round_index)
        cluster.pause("b")
        cluster.resume("b")
        cluster.kill("c")
        print(f"kill -9 c after {len(cluster.acks.selected('c'))} acknowledged writes")
        for round_index in range(5, 10):
            write_round(cluster, ["a", "b"], round_index)
        cluster.restart("c")
        print(f"c restarted on its data dir, healthy after {cluster.wait_healthy(['c']):.1f} s")
        if not cluster.wait_converged(CONVERGE_TIMEOUT_S):
            print(f"NOT converged within {CONVERGE_TIMEOUT_S:.0f} s", file=sys.stderr)
            return 1
        problems = cluster.verify_acks()
        for problem in problems:
            print(f"LOST: {problem}", file=sys.stderr)
        print(
            f"converged; {len(cluster.acks.acks)} acknowledged writes checked on a, b and c: "
            + ("all there" if not problems else f"{len(problems)} problems")
        )
        return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
