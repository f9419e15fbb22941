"""A seconds-long smoke of `bench.trace` (issue 17): a prefix of the automerge-paper trace replayed
into a writer node reaches a receiver node in another process, and both hold the text the trace
produces. The timings are the benchmark's (bench/README.md), never asserted here."""

from __future__ import annotations

import json
from pathlib import Path

from bench import trace
from bench._trace_data import load_trace

EDITS = 2_000


def test_the_receiver_holds_the_writers_text_after_a_prefix_of_the_trace(tmp_path: Path) -> None:
    out = tmp_path / "trace.json"
    assert trace.main(["--quick", "--edits", str(EDITS), "--rounds", "1", "--json", str(out)]) == 0
    summary = json.loads(out.read_text())
    expected = load_trace(EDITS).end_sha
    assert summary["edits"] == EDITS
    assert summary["expected_sha"] == expected
    (measured,) = summary["rounds"]
    assert measured["writer_sha"] == measured["receiver_sha"] == expected
    assert measured["app_bytes"] > 0
    assert {target["verdict"] for target in summary["targets"]} <= {"PASS", "MISS"}
