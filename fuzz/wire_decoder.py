"""Mutation fuzzing of the wire decoder and the replica's receive path.

Starts from valid frames of every message kind (and from the files in --corpus, if given), applies
random mutations (bit flips, byte overwrites, truncation, duplication, splicing, recomputed checksums
so mutations reach the body decoder) and feeds each input to `wire.decode` and to a live `Replica`.
A finding is any exception other than `WireError` from the decoder, or any exception at all from
`Replica.receive`. Findings are written to --findings and make the exit status 1.

    python -m fuzz.wire_decoder --minutes 5 --seed 1 --corpus fuzz/corpus/wire
"""

from __future__ import annotations

import random
import sys
import zlib
from collections.abc import Callable
from typing import Any

from pycrdt import Doc, Map

from crdtsync.core import wire
from fuzz._runner import cli, open_replica, run


def seed_frames() -> list[bytes]:
    doc: Doc[Any] = Doc(client_id=7)
    updates: list[tuple[bytes, bytes, bytes]] = []
    doc.observe(lambda e: updates.append((e.before_state, e.after_state, e.update)))
    data = doc.get("data", type=Map)
    for index in range(20):
        data[f"k{index % 5}"] = index
    deltas = tuple(wire.Delta("doc", b, a, u) for b, a, u in updates)
    messages: list[wire.Message] = [
        wire.Hello("n1", 1, "tcp://127.0.0.1:1", "tcp://127.0.0.1:2", 5),
        wire.HelloAck("n1", 1, "tcp://127.0.0.1:1", "tcp://127.0.0.1:2", 5),
        wire.Deltas("n1", 1, 1, deltas[:1]),
        wire.Deltas("n1", 1, 1, deltas),
        wire.Heartbeat("n1", 1, 20),
        wire.RetransmitRequest("n1", 1, 1, 10),
        wire.RetransmitGone("n1", 1, 3),
        wire.SyncRequest("n1", (("doc", doc.get_state()), ("other", b"\x00"))),
        wire.SyncResponse("n1", (("doc", doc.get_update(), doc.get_state()),)),
        wire.SyncPush("n1", (("doc", doc.get_update()), ("doc", deltas[0].update))),
        wire.TreeRoot("n1", 1, b"\x01" * 16),
        wire.TreeBranches("n1", 1, False, tuple(bytes([i]) * 16 for i in range(wire.TREE_BRANCHES))),
        wire.TreeBranches("n1", 1, True, ()),
        wire.TreeSegmentsRequest("n1", 1, (0, 5)),
        wire.TreeSegments("n1", 1, (3,), (b"\x02" * 16,) * (wire.TREE_SEGMENTS // wire.TREE_BRANCHES)),
        wire.TreeEntriesRequest("n1", 1, (7, 9)),
        wire.TreeEntries("n1", 1, (7,), ((7, "doc", b"\x03" * 16),)),
    ]
    return [wire.encode(message) for message in messages]


def repair_checksum(data: bytes, rng: random.Random) -> bytes:
    """Mostly fix length and CRC so that mutations get past them to the body decoder."""
    if len(data) < wire.HEADER_BYTES or rng.random() >= 0.7:
        return data
    body = data[wire.HEADER_BYTES :]
    header = bytearray(data[: wire.HEADER_BYTES])
    header[5:9] = len(body).to_bytes(4, "big")
    header[9:13] = zlib.crc32(body).to_bytes(4, "big")
    return bytes(header) + body


def make_target() -> Callable[[bytes], str]:
    replica = open_replica(99)
    replica.open_doc("doc").get("data", type=Map)["seed"] = 1
    clock = [0.0]

    def target(data: bytes) -> str:
        try:
            message = wire.decode(data)
            outcome = type(message).__name__
        except wire.WireError as exc:
            outcome = f"error:{exc.reason}"
        clock[0] += 1.0
        replica.receive(data, clock[0])
        replica.take_effects(clock[0])
        return outcome

    return target


def main(argv: list[str] | None = None) -> int:
    args = cli("wire_decoder", __doc__.split("\n\n")[0], argv)
    return run(
        "wire_decoder",
        seed_frames(),
        make_target(),
        args.minutes * 60.0,
        args.seed,
        args.corpus,
        args.findings,
        fix=repair_checksum,
    )


if __name__ == "__main__":
    sys.exit(main())
