"""`MergeThread`: a node's merges of a batch's updates run on a worker thread of their own (their
allocations then stay off the doc's thread's heap), and on the caller's once it is closed."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from pycrdt import Doc, Map

from crdtsync import merge_thread
from crdtsync.core import state
from crdtsync.core.state import merge_all, merge_each
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

    def recording(runs: list[list[bytes]]) -> list[bytes | None]:
        threads.append(threading.current_thread().name)
        return merge_each(runs)

    monkeypatch.setattr(merge_thread, "merge_each", recording)
    updates = _updates(20)
    runs = [updates[:8], updates[8:]]
    merging = MergeThread()
    assert merging.merge(runs) == [merge_all(updates[:8]), merge_all(updates[8:])]
    merging.close()
    assert merging.merge(runs) == [merge_all(updates[:8]), merge_all(updates[8:])]
    merging.close()  # twice: nothing left to close
    assert threads[0].startswith("crdtsync-merge") and threads[1] == threading.current_thread().name


def test_a_run_pycrdt_refuses_comes_back_none_and_the_others_merged() -> None:
    """A run pycrdt refuses to merge then leaves apart (`merge_runs`), the batch's others merged."""
    updates = _updates(4)
    merging = MergeThread()
    try:
        assert merging.merge([[b"\xff\xff\xff", b"\x00"], updates]) == [None, merge_all(updates)]
    finally:
        merging.close()


def test_an_error_that_is_not_pycrdt_refusing_reaches_the_caller(monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(updates: list[bytes]) -> bytes:
        raise KeyboardInterrupt

    monkeypatch.setattr(state, "merge_all", interrupted)
    merging = MergeThread()
    try:
        with pytest.raises(KeyboardInterrupt):
            merging.merge([_updates(2)])
    finally:
        merging.close()
