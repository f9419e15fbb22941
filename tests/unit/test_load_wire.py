"""LOAD_SUMMARIES (crdtsync/core/load_wire.py): round trips through `wire`, and every malformed body
is refused with a reason."""

from __future__ import annotations

import struct
import zlib
from typing import Any

import msgpack
import pytest

from crdtsync.core import wire
from crdtsync.core.load_wire import (
    DOCS_PER_SUMMARY_MAX,
    SUMMARIES_PER_MESSAGE_MAX,
    DocLoad,
    LoadSummaries,
    NodeLoad,
)
from crdtsync.core.wire import MessageKind, WireError

NODE = "node-a"


def _frame(fields: list[Any]) -> bytes:
    body: bytes = msgpack.packb(fields, use_bin_type=True)
    header = struct.pack(
        "!2sBBBII", wire.MAGIC, 1, MessageKind.LOAD_SUMMARIES, 0, len(body), zlib.crc32(body)
    )
    return header + body


def _summary(node_id: str, docs: int) -> NodeLoad:
    doc_loads = tuple(
        DocLoad(
            f"doc-{i}",
            i % 2 == 0,
            0.5,
            (("read", "east", 120.25), ("fetch", "west", 3.0), ("write", "east", 0.001)),
        )
        for i in range(docs)
    )
    return NodeLoad(node_id, "east", 7, 12, 1.375, doc_loads, 2500.0)


def test_the_kind_is_25() -> None:
    assert int(MessageKind.LOAD_SUMMARIES) == 25


def test_summaries_round_trip() -> None:
    message = LoadSummaries(NODE, (_summary(NODE, 3), _summary("node-b", 0)))
    assert wire.decode(wire.encode(message)) == message


@pytest.mark.parametrize(
    ("name", "fields", "reason"),
    [
        ("no-summary", [NODE], "bad_body"),
        ("truncated-summary", [NODE, "b", "east", 1, 2], "bad_body"),
        ("negative-age", [NODE, "b", "east", 1, 2, 0, -1, 0], "bad_body"),
        ("too-many-docs", [NODE, "b", "east", 1, 2, 0, 0, DOCS_PER_SUMMARY_MAX + 1], "too_large"),
        ("missing-doc", [NODE, "b", "east", 1, 2, 0, 0, 1], "bad_body"),
        ("unknown-rate-kind", [NODE, "b", "east", 1, 2, 0, 0, 1, "d", False, 0, 1, 3, "east", 5], "bad_body"),
        ("negative-rate", [NODE, "b", "east", 1, 2, 0, 0, 1, "d", False, 0, 1, 0, "east", -5], "bad_body"),
        ("too-many-rates", [NODE, "b", "east", 1, 2, 0, 0, 1, "d", False, 0, 10_000], "too_large"),
        ("long-dc", [NODE, "b", "e" * 65, 1, 2, 0, 0, 0], "bad_body"),
        (
            "too-many-summaries",
            [NODE, *(["b", "east", 1, 2, 0, 0, 0] * (SUMMARIES_PER_MESSAGE_MAX + 1))],
            "too_large",
        ),
    ],
)
def test_malformed_summaries_are_refused_with_a_reason(name: str, fields: list[Any], reason: str) -> None:
    with pytest.raises(WireError) as caught:
        wire.decode(_frame(fields))
    assert caught.value.reason == reason, name


def test_the_encoder_refuses_what_the_decoder_would() -> None:
    with pytest.raises(ValueError, match="summaries"):
        wire.encode(LoadSummaries(NODE, ()))
    with pytest.raises(ValueError, match="docs"):
        wire.encode(LoadSummaries(NODE, (_summary(NODE, DOCS_PER_SUMMARY_MAX + 1),)))
