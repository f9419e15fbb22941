"""Short runs of the fuzz targets, and regression tests for what they found."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from pycrdt import Doc, Map

from crdtsync.core import wire
from crdtsync.core.replica import Replica
from crdtsync.daemon.config import ConfigError, load_config
from fuzz import config_loader, network, update_apply, wire_decoder
from fuzz._runner import run


def test_wire_decoder_smoke_finds_nothing() -> None:
    seed = 20261126
    print(f"fuzz seed {seed}")
    target = wire_decoder.make_target()
    found = run(
        "wire_decoder",
        wire_decoder.seed_frames(),
        target,
        8.0,
        seed,
        None,
        None,
        quiet=True,
        fix=wire_decoder.repair_checksum,
    )
    assert found == 0


def test_update_apply_smoke_finds_nothing() -> None:
    seed = 20261127
    print(f"fuzz seed {seed}")
    assert (
        run(
            "update_apply",
            update_apply.seed_updates(),
            update_apply.make_target(),
            8.0,
            seed,
            None,
            None,
            quiet=True,
        )
        == 0
    )


def test_config_loader_smoke_finds_nothing(tmp_path: Path) -> None:
    seed = 20261128
    print(f"fuzz seed {seed}")
    target = config_loader.make_target(tmp_path)
    assert run("config_loader", config_loader.SEEDS, target, 5.0, seed, None, None, quiet=True) == 0


def test_a_live_cluster_under_attack_converges_with_bounded_memory() -> None:
    """fuzz.network for 8 s: honest writes converge everywhere, RSS stays under 400 MB."""
    seed = 20261129
    print(f"network fuzz seed {seed}")
    ok, summary = asyncio.run(network.campaign(8.0, seed, 400.0))
    print(summary)
    assert ok, summary


def test_a_config_file_that_is_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    """Found by fuzz.config_loader: tomllib raised UnicodeDecodeError, not a ConfigError."""
    path = tmp_path / "bad.toml"
    path.write_bytes(b'node_id = "\xff"\n')
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(path, {})


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
