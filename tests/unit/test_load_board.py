"""The load board (crdtsync/core/load_board.py): what a node gossips stays within its byte budget
however long the doc ids and however many members, summaries are kept only for current members in
their own datacenter, and a newer summary replaces an older one, never the reverse."""

from __future__ import annotations

import dataclasses
import hashlib

from crdtsync.core import wire
from crdtsync.core.load_board import FORWARD_AGE_MS, MESSAGE_BYTES_MAX
from crdtsync.core.load_wire import DOCS_PER_SUMMARY_MAX, DocLoad, LoadSummaries, NodeLoad
from crdtsync.core.replica import Replica, ReplicaConfig


def _replica(**config: object) -> Replica:
    return Replica(
        node_id="a", epoch=1, client_id=5, address="a", publish_endpoint="ap", dc="east",
        config=ReplicaConfig(**config),  # type: ignore[arg-type]
    )  # fmt: skip


def _member(replica: Replica, node_id: str, dc: str = "east") -> None:
    record = wire.MemberEntry(node_id, dc, node_id, node_id + "p", 1, 1, False)
    replica.membership.merge(record, 0.0, direct=True)


def _long_id(i: int) -> str:
    """500 bytes that lz4 cannot shrink."""
    return "".join(hashlib.blake2b(f"{i}/{part}".encode()).hexdigest() for part in range(4))[:500]


def _summary(node_id: str, seq: int, docs: int = 1, dc: str = "east") -> NodeLoad:
    doc_loads = tuple(
        DocLoad(f"{node_id}/{_long_id(i)}", False, 0.0, (("read", dc, 1.0),)) for i in range(docs)
    )
    return NodeLoad(node_id, dc, 1, seq, 0.5, doc_loads)


def test_the_gossiped_message_stays_within_its_byte_budget() -> None:
    replica = _replica(load_docs_gossiped=DOCS_PER_SUMMARY_MAX)
    board = replica.load
    for i in range(100):
        board.read(_long_id(i), 0.0)
    for i in range(40):
        _member(replica, f"n{i}")
    board.on_message(LoadSummaries("n0", tuple(_summary(f"n{i}", 1, 10) for i in range(16))), 0.0)
    board.on_message(LoadSummaries("n0", tuple(_summary(f"n{i}", 1, 10) for i in range(16, 32))), 0.0)
    assert len(board.received) == 32
    for _ in range(5):
        message = board.message(1.0)
        frame = wire.encode(message)
        assert len(frame) <= MESSAGE_BYTES_MAX + 64
        assert message.summaries[0].node_id == "a"
        assert len(message.summaries) > 1, "others' summaries ride along"
        decoded = wire.decode(frame)
        assert isinstance(decoded, LoadSummaries)  # rates travel in thousandths: compare the rest
        assert [(s.node_id, len(s.docs)) for s in decoded.summaries] == [
            (s.node_id, len(s.docs)) for s in message.summaries
        ]


def test_summaries_are_kept_for_current_members_in_their_datacenter_only() -> None:
    replica = _replica()
    board = replica.load
    _member(replica, "b")
    _member(replica, "c", dc="west")
    board.on_message(
        LoadSummaries(
            "b",
            (
                _summary("b", 2),
                _summary("stranger", 1),
                _summary("a", 9),  # about this node: it knows its own
                _summary("c", 1, dc="east"),  # c is in west
            ),
        ),
        0.0,
    )
    assert set(board.received) == {"b"}
    assert board.summaries_refused == 3
    board.on_message(LoadSummaries("b", (_summary("b", 1),)), 5.0)
    assert board.received["b"][0].seq == 2, "an older summary replaced a newer one"
    board.on_message(LoadSummaries("b", (_summary("b", 3),)), 5.0)
    assert board.received["b"] == (_summary("b", 3), 5.0)


def test_a_summary_keeps_its_age_across_nodes() -> None:
    """Nodes share no clock: a summary's age travels with it, and each node adds the time it held it,
    so a summary that took a long way is known to be old (and stops travelling at FORWARD_AGE_MS)."""
    replica = _replica()
    board = replica.load
    _member(replica, "b")
    aged = dataclasses.replace(_summary("b", 1), age_ms=2_000.0)
    board.on_message(LoadSummaries("c", (aged,)), 10_000.0)
    assert board.view(10_000.0)[1] == (aged, 2_000.0)
    passed_on = board.message(13_000.0).summaries[1]
    assert passed_on.node_id == "b" and passed_on.age_ms == 5_000.0
    assert [s.node_id for s in board.message(10_000.0 + FORWARD_AGE_MS).summaries] == ["a"]
