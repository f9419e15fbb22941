"""`MergeThread`: a node's merges of a batch's updates run on a worker thread of their own (their
allocations then stay off the doc's thread's heap), and on the caller's once it is closed."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from pycrdt import Doc, Map

from crdtsync import merge_thread
from crdtsync.core.state import merge_all
from crdtsync.merge_thread import MergeThread


def _updates(count: int) -> list[bytes]:
    doc: Doc[Any] = Doc(client_id=5)
    updates: list[bytes] = []
    doc.observe(lambda event: updates.append(event.update))
    for i in range(count):
        doc.get("m", type=Map)[f"k{i % 4}"] = i
    return updates


def test_merges_run_on_the_worker_and_on_the_callers_thread_after_close(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    threads: list[str] = []

    def recording(updates: list[bytes]) -> bytes:
        threads.append(threading.current_thread().name)
        return merge_all(updates)

    monkeypatch.setattr(merge_thread, "merge_all", recording)
    updates = _updates(20)
    merging = MergeThread()
    assert merging.merge(updates) == merge_all(updates)
    merging.close()
    assert merging.merge(updates) == merge_all(updates)
    merging.close()  # twice: nothing left to close
    assert threads[0].startswith("crdtsync-merge") and threads[1] == threading.current_thread().name


def test_a_pycrdt_failure_reaches_the_caller_as_it_was_raised() -> None:
    """`merge_runs` tells a pycrdt failure (the run then leaves apart) from a bug by its type."""
    merging = MergeThread()
    try:
        with pytest.raises(ValueError, match="Cannot merge updates"):
            merging.merge([b"\xff\xff\xff", b"\x00"])
    finally:
        merging.close()
