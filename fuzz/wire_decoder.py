"""Coverage-guided fuzzing of the wire decoder and the replica's receive path.

Starts from valid frames of every message kind, alone and in short sequences (and from the corpus
directory); libFuzzer mutates them and a custom mutator recomputes length and CRC-32 of most frames,
so that mutations reach the body decoder. Each frame goes to `wire.decode` and to a replica. A
finding is any exception other than `WireError` from the decoder, or any exception at all from
`Replica.receive`.

    python -m fuzz.wire_decoder --minutes 5 [--seed 1] [--corpus fuzz/corpus/wire_decoder]

An input is one or more frames separated by SEPARATOR, received in order by a new replica that
holds one doc: every input is a whole reproducer, whatever ran before it in the same process.
"""

from __future__ import annotations

import contextlib
import random
import sys
import zlib
from pathlib import Path
from typing import Any

from pycrdt import Doc, Map

from crdtsync.core import wire
from fuzz._runner import Fuzzable, Target, cli_main, mutate_then, open_replica

SEPARATOR = b"\xfe\xed\xfa\xce"
"""Between the frames of one input. A frame may contain it (a mutation can put it anywhere), which
only splits that frame in two."""
FRAMES_PER_INPUT_MAX = 8


def seed_frames() -> list[bytes]:
    doc: Doc[Any] = Doc(client_id=7)
    updates: list[tuple[bytes, bytes, bytes]] = []
    doc.observe(lambda e: updates.append((e.before_state, e.after_state, e.update)))
    data = doc.get("data", type=Map)
    for index in range(20):
        data[f"k{index % 5}"] = index
    deltas = tuple(wire.Delta("doc", b, a, u) for b, a, u in updates)
    messages: list[wire.Message] = [
        wire.Hello("n1", 1, "tcp://127.0.0.1:1", "tcp://127.0.0.1:2", 5, "dc1"),
        wire.HelloAck("n1", 1, "tcp://127.0.0.1:1", "tcp://127.0.0.1:2", 5, "dc1"),
        wire.Deltas("n1", 1, 1, deltas[:1]),
        wire.Deltas("n1", 1, 1, deltas),
        wire.Heartbeat("n1", 1, 20),
        wire.SeqAck("n1", 1, 1, 20, 0x1234ABCD),
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
        wire.TreeCells("n1", 1, (3, 9), (b"\x04" * 64, bytes(64))),
        wire.TreeLeavesRequest("n1", 1, (7, 9), (b"\x05" * 12, b"")),
        wire.TreeLeaves("n1", 1, (7, 9), ((0, 2), ()), ((9, "doc", b"\x06" * 16),)),
        wire.Members(
            "n1",
            False,
            (
                wire.MemberEntry("n1", "dc1", "tcp://127.0.0.1:1", "tcp://127.0.0.1:2", 3, 17, False),
                wire.MemberEntry("n3", "dc2", "tcp://127.0.0.1:5", "tcp://127.0.0.1:6", 1, 2, True),
            ),
        ),
        wire.Members("n1", True, ()),
        wire.Relayed("n1", "origin", deltas[:2]),
        wire.Ephemeral("n1", "origin", "doc", b'\x01\x07\x02\x0e{"user":"ann"}'),
    ]
    return [wire.encode(message, version) for version in (4, 3, 2, 1) for message in messages]


def seed_inputs() -> list[bytes]:
    """Every frame of `seed_frames` alone, and sequences: a hello then deltas, deltas out of order
    (the second batch first), a sync request then a push, a heartbeat announcing what was lost."""
    doc: Doc[Any] = Doc(client_id=8)
    updates: list[tuple[bytes, bytes, bytes]] = []
    doc.observe(lambda e: updates.append((e.before_state, e.after_state, e.update)))
    for index in range(4):
        doc.get("data", type=Map)[f"k{index}"] = index
    deltas = [wire.Delta("doc", b, a, u) for b, a, u in updates]
    hello = seed_frames()[0]
    sequences: list[list[wire.Message]] = [
        [wire.Deltas("n1", 1, 1, tuple(deltas[:2]))],  # after the hello
        [wire.Deltas("n2", 1, 2, tuple(deltas[1:3])), wire.Deltas("n2", 1, 1, tuple(deltas[:1]))],
        [wire.SyncRequest("n2", (("doc", b"\x00"),)), wire.SyncPush("n2", (("doc", doc.get_update()),))],
        [
            wire.Deltas("n2", 1, 1, tuple(deltas[:1])),
            wire.Heartbeat("n2", 1, 4),
            wire.RetransmitGone("n2", 1, 4),
        ],
    ]
    encoded = [SEPARATOR.join(wire.encode(message) for message in sequence) for sequence in sequences]
    encoded[0] = hello + SEPARATOR + encoded[0]
    return [*seed_frames(), *encoded]


def repair_checksum(data: bytes, rng: random.Random) -> bytes:
    """Mostly fix length and CRCs (the header's own too, from version 2) so that mutations get past
    them to the body decoder."""
    if len(data) < wire.HEADER_BYTES or rng.random() >= 0.7:
        return data
    fixed_end = 9 if data[2] >= 3 else wire.HEADER_BYTES  # versions 3 and 4 have no body length
    sender_in_header = data[2] >= 2
    header_end = _sender_header_end(data, fixed_end) if sender_in_header else fixed_end
    if header_end is None:
        return data
    body_start = header_end + 4 if sender_in_header else header_end
    body = data[body_start:]
    header = bytearray(data[:header_end])
    if fixed_end == wire.HEADER_BYTES:
        header[5:9] = len(body).to_bytes(4, "big")
    header[fixed_end - 4 : fixed_end] = zlib.crc32(body).to_bytes(4, "big")
    if sender_in_header:
        header += zlib.crc32(header).to_bytes(4, "big")
    return bytes(header) + body


def _sender_header_end(data: bytes, start: int) -> int | None:
    """Where a version-2 or 3 header's checksum starts (after the sender id and two varints), if
    the frame is long enough to have one."""
    if len(data) <= start:
        return None
    offset = start + 1 + data[start]
    for _ in range(2):  # epoch, seq
        while offset < len(data) and data[offset] & 0x80:
            offset += 1
        offset += 1
    return offset if offset + 4 <= len(data) else None


def repair_frames(data: bytes, seed: int) -> bytes:
    rng = random.Random(seed)
    return SEPARATOR.join(repair_checksum(frame, rng) for frame in data.split(SEPARATOR))


def make_target(scratch: Path | None = None, options: frozenset[str] = frozenset()) -> Fuzzable:
    def target(data: bytes) -> None:
        replica = open_replica(99)
        try:
            replica.open_doc("doc").get("data", type=Map)["seed"] = 1
            for clock, frame in enumerate(data.split(SEPARATOR)[:FRAMES_PER_INPUT_MAX], start=1):
                # WireError is the decoder's one way to refuse; anything else propagates as a finding.
                with contextlib.suppress(wire.WireError):
                    wire.decode(frame)
                replica.receive(frame, float(clock))
                replica.take_effects(float(clock))
        finally:
            replica.close()  # else its doc observers keep it (and its Merkle tree) alive for good

    return target


TARGET = Target(
    name="wire_decoder",
    description=__doc__.split("\n\n")[0],
    seeds=seed_inputs,
    make=make_target,
    max_len=16 * 1024,
    mutator=mutate_then(repair_frames),
)


def main(argv: list[str] | None = None) -> int:
    return cli_main(TARGET, argv)


if __name__ == "__main__":
    sys.exit(main())
