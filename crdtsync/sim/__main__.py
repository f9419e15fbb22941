"""`python -m crdtsync.sim`: run seeded cluster simulations with faults and check the invariants."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from crdtsync.core.config import ReplicaConfig
from crdtsync.core.envelope import WIRE_VERSION
from crdtsync.core.placement import PlacementPolicy, PlacementRule
from crdtsync.sim.cluster import run_simulation
from crdtsync.sim.config import FAULTS, SimConfig, SimResult, odd_nodes


def _seed_range(text: str) -> range:
    try:
        if ".." in text:
            first, last = (int(part) for part in text.split("..", 1))
        else:
            first = last = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a seed or a range A..B") from None
    if last < first:
        raise argparse.ArgumentTypeError(f"seed range {text!r} is empty")
    return range(first, last + 1)


def _faults(text: str) -> frozenset[str]:
    if text in ("", "none"):
        return frozenset()
    if text == "all":
        return frozenset(FAULTS)
    chosen = frozenset(part.strip() for part in text.split(",") if part.strip())
    unknown = chosen - set(FAULTS)
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown fault(s) {', '.join(sorted(unknown))}; choose from {', '.join(FAULTS)}"
        )
    return chosen


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m crdtsync.sim",
        description=(
            "Run a deterministic simulated crdtsync cluster with network and crash faults, heal it, let it "
            "go quiet and check convergence (canonical digests and JSON) and that no write was lost. "
            "Every run prints its seed; a failing seed replays exactly."
        ),
        epilog="example: python -m crdtsync.sim --seeds 1..200 --nodes 5 --faults loss,dup,reorder,partition,crash",
    )
    seeds = parser.add_mutually_exclusive_group()
    seeds.add_argument("--seed", type=int, help="run one simulation with this seed (default 1)")
    seeds.add_argument(
        "--seeds", type=_seed_range, metavar="A..B", help="run a campaign over seeds A to B inclusive"
    )
    parser.add_argument("--nodes", type=int, default=5, help="cluster size (default 5)")
    parser.add_argument("--docs", type=int, default=4, help="number of documents written (default 4)")
    parser.add_argument("--ops", type=int, default=300, help="client operations per run (default 300)")
    parser.add_argument(
        "--faults",
        type=_faults,
        default=frozenset(),
        help=f"comma-separated faults from {','.join(FAULTS)}, or 'all' or 'none' (default none)",
    )
    parser.add_argument(
        "--loss-rate", type=float, default=0.10, help="message loss probability with 'loss' (default 0.10)"
    )
    parser.add_argument(
        "--window-ms", type=float, default=5_000.0, help="simulated time over which ops are spread"
    )
    parser.add_argument(
        "--linger-ms",
        type=float,
        default=0.0,
        help="the nodes' linger_ms: a node's writes within it leave in one batch, where one doc's "
        "transactions merge into one delta (default 0: each op leaves at once)",
    )
    parser.add_argument(
        "--durable",
        action="store_true",
        help=(
            "give every node a durable store with group commit that survives its crashes, and check "
            "that no acknowledged (committed) write is ever lost"
        ),
    )
    parser.add_argument(
        "--datacenters",
        type=int,
        default=1,
        help="split the nodes into this many datacenters joined by WAN links of 30-150 ms (default 1)",
    )
    parser.add_argument(
        "--wan-loss-rate",
        type=float,
        default=0.0,
        help="loss probability on links between datacenters until healing (default 0)",
    )
    parser.add_argument(
        "--seed-only",
        action="store_true",
        help="configure every node with node 0 as its only peer; membership gossip finds the rest",
    )
    parser.add_argument(
        "--wire-pinned",
        type=int,
        metavar="V",
        help="a mixed-version cluster: every other node speaks wire versions up to V only until its "
        "first restart (an upgrade, with crash or churn faults)",
    )
    parser.add_argument(
        "--verbose", action="store_true", help="print a verdict line for every seed of a campaign"
    )
    _add_placement_arguments(parser)
    return parser


SIM_HANDOFF_GRACE_MS = 2_000.0
"""With --rf, handed-off docs are dropped after 2 s, not 30: runs settle within `settle_ms_max`."""


SIM_FOLLOWS = 6
"""With --rf and no --follows: follow sessions per run (docs held open on nodes that do not hold them)."""


def _add_placement_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--rf",
        type=int,
        metavar="N",
        help="enforce placement: N replicas of every doc per datacenter (default: every node holds every doc)",
    )
    parser.add_argument(
        "--follows",
        type=int,
        metavar="N",
        help=f"with --rf: follow sessions, a doc held open on a node that does not hold it (default {SIM_FOLLOWS})",
    )


def _placement_settings(rf: int | None, follows: int | None, linger_ms: float) -> dict[str, Any]:
    if rf is None:
        return {"replica": ReplicaConfig(linger_ms=linger_ms)}
    return {
        "placement": PlacementPolicy((PlacementRule(rf),)),
        "replica": ReplicaConfig(handoff_grace_ms=SIM_HANDOFF_GRACE_MS, linger_ms=linger_ms),
        "follows": SIM_FOLLOWS if follows is None else follows,
    }


def _wire_settings(nodes: int, pinned: int | None) -> dict[str, Any]:
    if pinned is None:
        return {}
    return {"wire_pinned_until_restart": odd_nodes(nodes), "wire_pinned_version": pinned}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.nodes < 1 or args.docs < 1 or args.ops < 0:
        print("error: --nodes and --docs must be >= 1, --ops >= 0", file=sys.stderr)
        return 2
    if not 0.0 <= args.loss_rate < 1.0 or not 0.0 <= args.wan_loss_rate < 1.0:
        print("error: --loss-rate and --wan-loss-rate must be in [0, 1)", file=sys.stderr)
        return 2
    if not 1 <= args.datacenters <= args.nodes:
        print("error: --datacenters must be between 1 and --nodes", file=sys.stderr)
        return 2
    if args.follows is not None and (args.rf is None or args.follows < 0):
        print("error: --follows needs --rf and must be >= 0", file=sys.stderr)
        return 2
    if args.wire_pinned is not None and not 1 <= args.wire_pinned <= WIRE_VERSION:
        print(f"error: --wire-pinned must be in 1..{WIRE_VERSION}", file=sys.stderr)
        return 2
    if args.rf is not None and args.rf < 1:
        print("error: --rf must be >= 1", file=sys.stderr)
        return 2
    if not 0.0 <= args.linger_ms <= args.window_ms:
        print("error: --linger-ms must be in [0, --window-ms]", file=sys.stderr)
        return 2
    single = args.seed if args.seed is not None else 1
    seeds: range = args.seeds if args.seeds is not None else range(single, single + 1)
    campaign = len(seeds) > 1
    failures: list[SimResult] = []
    started = time.monotonic()
    for done, seed in enumerate(seeds, start=1):
        config = SimConfig(
            seed=seed,
            nodes=args.nodes,
            docs=args.docs,
            ops=args.ops,
            faults=args.faults,
            loss_rate=args.loss_rate,
            write_window_ms=args.window_ms,
            durable=args.durable,
            datacenters=args.datacenters,
            wan_loss_rate=args.wan_loss_rate,
            seed_only=args.seed_only,
            **_placement_settings(args.rf, args.follows, args.linger_ms),
            **_wire_settings(args.nodes, args.wire_pinned),
        )
        result = run_simulation(config)
        if not result.ok:
            failures.append(result)
        if not campaign or args.verbose or not result.ok:
            if campaign:
                sys.stderr.write("\r\033[K")
            print(result.verdict(), flush=True)
        if campaign and (sys.stderr.isatty() or done == len(seeds) or done % max(1, len(seeds) // 10) == 0):
            width = 30
            filled = width * done // len(seeds)
            sys.stderr.write(
                f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{len(seeds)} seeds, "
                f"{len(failures)} failed, {time.monotonic() - started:.1f} s"
                + ("" if sys.stderr.isatty() else "\n")
            )
            sys.stderr.flush()
    if campaign:
        sys.stderr.write("\n")
        print(
            f"campaign seeds {seeds.start}..{seeds.stop - 1}: {len(seeds) - len(failures)} passed, "
            f"{len(failures)} failed"
        )
        for result in failures:
            print(f"  replay: {result.config.replay_command()}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
