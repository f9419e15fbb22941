"""Network fuzz campaign: a live 3-node cluster keeps converging while an attacker floods it.

Three honest nodes (real ZeroMQ sockets on 127.0.0.1, plaintext links, in this process) write to
shared docs. An attacker greets every node with a hello that advertises its own PUB socket (so the
nodes subscribe to it), then, until the time is up, publishes mutated and random frames on that PUB
and sends them straight to every node's request socket: corrupted envelopes, frames with valid
checksums but mutated bodies, forged deltas, sync pushes with garbage updates, and floods.

At the end the honest writes must have converged on every node (equal Merkle roots and every key
present), and the process's resident memory must have stayed under --rss-mb. Exit status 1 otherwise.

The honest nodes hold every doc (placement rf "all"): the attacker joins as a member, and under the
default rf 3 it would take a share of the docs, so that the honest nodes' roots (over what each
holds) could never be equal.

The attacker does not forge the honest nodes' ids: on plaintext links it could (node ids are not
authenticated), and then get them quarantined or rate-limited; CurveZMQ links keep it out entirely.

    python -m fuzz.network --minutes 2
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import time

import zmq
import zmq.asyncio
from pycrdt import Map

from crdtsync import Node, NodeConfig, ReplicaConfig
from crdtsync.core import wire
from crdtsync.core.placement import PLACEMENT_VERSION, PlacementPolicy, PlacementRule
from crdtsync.testing.cluster import free_ports
from crdtsync.transport.zmq_transport import topic
from fuzz._runner import rss_mb_of
from fuzz.wire_decoder import repair_checksum, seed_frames

FAST = ReplicaConfig(hello_interval_ms=100.0, tick_interval_ms=20.0, ae_interval_ms=500.0)
SETTLE_S = 30.0
EVERY_NODE_HOLDS_EVERY_DOC = PlacementPolicy((PlacementRule("all"),))
MUTANT_BYTES_MAX = 64 * 1024
"""Longest frame the mutator hands on (far below `wire.FRAME_BYTES_MAX`: big frames only slow the campaign)."""


def mutate(data: bytes, rng: random.Random, pool: list[bytes]) -> bytes:
    """The attacker's frame mutator: bit flips, byte overwrites, truncation, random insertions,
    duplication and splicing with another frame, 1 to 4 of them, drawn from `rng` (so the seed
    replays the attack)."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        choice = rng.randrange(6)
        if choice == 0 and out:
            out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
        elif choice == 1 and out:
            out[rng.randrange(len(out))] = rng.choice((0, 1, 0x7F, 0x80, 0xFF, rng.randrange(256)))
        elif choice == 2 and out:
            del out[rng.randrange(len(out)) :]
        elif choice == 3:
            position = rng.randint(0, len(out))
            out[position:position] = rng.randbytes(rng.randint(1, 16))
        elif choice == 4 and out:
            start = rng.randrange(len(out))
            out[start:start] = out[start : start + rng.randint(1, 32)]
        else:
            other = rng.choice(pool)
            out = out[: rng.randint(0, len(out))] + bytearray(other[rng.randint(0, len(other)) :])
    return bytes(out[:MUTANT_BYTES_MAX])


def flood_pool(version: int = wire.WIRE_VERSION) -> list[bytes]:
    """The valid frames the attacker mutates: every kind, in wire `version`."""
    return [frame for frame in seed_frames() if frame[2] == version]


def hostile_frame(rng: random.Random, pool: list[bytes]) -> bytes:
    """One frame of the flood: a mutated valid frame (checksums mostly repaired), random bytes, or a
    sync push of garbage updates from the attacker itself, in the version of the `pool`."""
    roll = rng.random()
    if roll < 0.8:
        return repair_checksum(mutate(rng.choice(pool), rng, pool), rng)
    if roll < 0.9:
        return rng.randbytes(rng.randint(0, 256))
    garbage = ((f"doc-{rng.randrange(4)}", rng.randbytes(rng.randint(1, 64))),)
    return wire.encode(wire.SyncPush("mallory", garbage), pool[0][2])


def rss_mb() -> float:
    return rss_mb_of(os.getpid()) or 0.0


async def attack(
    addresses: list[str], stop: asyncio.Event, rng: random.Random, counts: dict[str, int]
) -> None:
    context = zmq.asyncio.Context()
    pub = context.socket(zmq.PUB)
    pub.setsockopt(zmq.SNDHWM, 10_000)
    pub.setsockopt(zmq.LINGER, 0)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    publish = f"tcp://127.0.0.1:{port}"
    dealers = []
    for address in addresses:
        dealer = context.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.setsockopt(zmq.SNDHWM, 10_000)
        dealer.connect(address)
        dealers.append(dealer)
    pool = flood_pool()
    hello = wire.encode(
        wire.Hello(
            "mallory", 1, "tcp://127.0.0.1:1", publish, 0, "default", placement_version=PLACEMENT_VERSION
        )
    )
    try:
        while not stop.is_set():
            for dealer in dealers:
                await dealer.send(hello)  # keeps the nodes subscribed to the attacker's PUB
            for _ in range(200):
                frame = hostile_frame(rng, pool)
                if rng.random() < 0.5:
                    await pub.send_multipart((topic(dc_only=False), frame))
                else:
                    await rng.choice(dealers).send(frame)
                counts["frames"] += 1
            await asyncio.sleep(0.005)
    finally:
        for dealer in dealers:
            dealer.close(linger=0)
        pub.close(linger=0)
        context.term()


async def campaign(seconds: float, seed: int, rss_limit_mb: float) -> tuple[bool, str]:
    rng = random.Random(seed)
    ports = free_ports(3)
    addresses = [f"tcp://127.0.0.1:{port}" for port in ports]
    names = ["a", "b", "c"]
    configs = [
        NodeConfig(
            node_id=name,
            listen=address,
            peers=[a for a in addresses if a != address],
            replication=FAST,
            placement=EVERY_NODE_HOLDS_EVERY_DOC,
        )
        for name, address in zip(names, addresses, strict=True)
    ]
    counts = {"frames": 0}
    written: dict[str, int] = {}
    peak_rss = rss_mb()
    # A task that dies of an exception (a receive loop, say) is a node that stopped doing part of
    # its job without crashing: asyncio only logs it, so the campaign collects them as findings.
    unhandled: list[str] = []
    asyncio.get_running_loop().set_exception_handler(
        lambda _loop, context: unhandled.append(f"{context.get('message')}: {context.get('exception')!r}")
    )
    async with Node(configs[0]) as a, Node(configs[1]) as b, Node(configs[2]) as c:
        nodes = [a, b, c]
        stop = asyncio.Event()
        attacker = asyncio.create_task(attack(addresses, stop, rng, counts))
        started = time.monotonic()
        index = 0
        while time.monotonic() - started < seconds:
            node = nodes[index % 3]
            doc = await node.open(f"doc-{index % 4}")
            key = f"{node.config.node_id}-{index}"
            doc.get("data", type=Map)[key] = index
            node.release(f"doc-{index % 4}")
            written[key] = index
            index += 1
            peak_rss = max(peak_rss, rss_mb())
            await asyncio.sleep(0.02)
        stop.set()
        await attacker

        def converged() -> bool:
            roots = {node.merkle_root() for node in nodes}
            return len(roots) == 1

        deadline = time.monotonic() + SETTLE_S
        while not converged() and time.monotonic() < deadline:  # noqa: ASYNC110 - polling a condition with a deadline
            await asyncio.sleep(0.1)
        problems = []
        if not converged():
            problems.append("the honest nodes did not converge")
        for node in nodes:
            present: dict[str, object] = {}
            for doc_index in range(4):
                doc_id = f"doc-{doc_index}"
                if node.has_doc(doc_id):
                    present.update((await node.open(doc_id)).get("data", type=Map).to_py())
                    node.release(doc_id)
            missing = [key for key, value in written.items() if present.get(key) != value]
            if missing:
                problems.append(
                    f"{node.config.node_id} lacks {len(missing)} honest writes, e.g. {missing[:3]}"
                )
        if unhandled:
            problems.append(
                f"{len(unhandled)} unhandled exceptions in the event loop, the first: {unhandled[0]}"
            )
        if peak_rss > rss_limit_mb:
            problems.append(f"resident memory peaked at {peak_rss:.0f} MB, over {rss_limit_mb:.0f} MB")
        counters = a.status().counters
        summary = (
            f"network seed={seed}: {counts['frames']} hostile frames over {seconds:.0f} s, {len(written)} honest writes, "
            f"peak RSS {peak_rss:.0f} MB; node a dropped "
            f"{counters.wire_errors_total()} malformed frames, rejected "
            f"{counters.updates_rejected} updates, quarantined {counters.peers_quarantined} senders"
        )
    return not problems, summary + ("" if not problems else "; FAIL: " + "; ".join(problems))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fuzz.network", description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=1.0, help="how long the attack lasts (default 1)")
    parser.add_argument("--seed", type=int, default=1, help="random seed of the attacker")
    parser.add_argument("--rss-mb", type=float, default=400.0, help="resident memory bound (default 400)")
    args = parser.parse_args(argv)
    ok, summary = asyncio.run(campaign(args.minutes * 60.0, args.seed, args.rss_mb))
    print(summary)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
