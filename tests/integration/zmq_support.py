"""Helpers for the integration tests: free TCP endpoints and condition waits with a deadline."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from crdtsync.testing.cluster import free_port


def free_endpoint() -> str:
    """`tcp://127.0.0.1:PORT` with a port that was free a moment ago (`crdtsync.testing.cluster.free_port`)."""
    return f"tcp://127.0.0.1:{free_port()}"


async def wait_until(predicate: Callable[[], bool], timeout_s: float, what: str | Callable[[], str]) -> float:
    """Poll `predicate` every 10 ms until it holds and return the seconds waited; once `timeout_s` has
    passed, fail naming `what` (a callable is evaluated then, to describe the state at the deadline)."""
    start = time.monotonic()
    deadline = start + timeout_s
    while not predicate():
        if time.monotonic() >= deadline:
            description = what() if callable(what) else what
            raise AssertionError(f"timed out after {timeout_s:.1f} s waiting until {description}")
        await asyncio.sleep(0.01)
    return time.monotonic() - start
