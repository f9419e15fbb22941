"""Short runs of the fuzz targets, and regression tests for what they found."""

from __future__ import annotations

from typing import Any

from pycrdt import Doc, Map

from crdtsync.core import wire
from crdtsync.core.replica import Replica
from fuzz import wire_decoder


def test_wire_decoder_smoke_finds_nothing() -> None:
    seed = 20261126
    print(f"fuzz seed {seed}")
    assert wire_decoder.run(seconds=10.0, seed=seed, corpus=None, findings_dir=None, quiet=True) == 0


def test_a_batch_with_a_malformed_update_does_not_crash_and_keeps_the_good_one() -> None:
    """Found by fuzz.wire_decoder: merge_updates raised ValueError on a batch with a garbage update."""
    writer: Doc[Any] = Doc(client_id=5)
    captured: list[tuple[bytes, bytes, bytes]] = []
    writer.observe(lambda e: captured.append((e.before_state, e.after_state, e.update)))
    writer.get("data", type=Map)["good"] = 1
    before, after, update = captured[0]
    garbage = wire.Delta("doc", after, after, b"\x01\x01\xff\xff\xff\x0f")
    frame = wire.encode(wire.Deltas("w", 1, 1, (wire.Delta("doc", before, after, update), garbage)))
    replica = Replica(node_id="r", epoch=1, client_id=6, address="a", publish_endpoint="p")
    replica.receive(frame, 0.0)
    assert replica.open_doc("doc").get("data", type=Map).to_py() == {"good": 1.0}
    assert replica.counters.get("merge_failures") == 1
