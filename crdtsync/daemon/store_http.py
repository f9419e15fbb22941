"""The HTTP API while the store cannot commit (a full disk, an I/O error): writes are refused with
507 `store_full` or 503 `store_unavailable`, never acknowledged; `/health` answers 503 until a
commit succeeds again (the store writer retries by itself, so the node recovers once space is
freed). See docs/reliability.md.

A write is refused before it is applied while the last commit failed, and after it was applied
when its own commit fails: then it stays in memory and in the writer's queue, is retried and may
still reach the store and the peers later, but the client was told it is not durable.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from crdtsync.daemon.causal_http import RequestError
from crdtsync.node import Node
from crdtsync.store import StoreCommitError

WRITE_METHODS = frozenset({"PUT", "DELETE", "PATCH", "POST"})


class StoreGuard:
    """Refuses writes while the node's store is failing, and counts the writes it refused."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.refused = 0
        """Writes answered 507 or 503 because the store could not commit them."""

    def failing(self) -> StoreCommitError | None:
        return self.node.store_failure()

    def check(self) -> None:
        """Raise the refusal of a write while the last commit failed."""
        failure = self.failing()
        if failure is not None:
            raise self.refusal(failure)

    def refusal(self, failure: StoreCommitError) -> RequestError:
        """The answer to a write the store could not commit (counted)."""
        self.refused += 1
        if failure.full:
            return RequestError(507, "store_full", str(failure))
        return RequestError(503, "store_unavailable", str(failure))

    def collector(self) -> Collector:
        return _StoreGuardCollector(self)


class _StoreGuardCollector(Collector):
    def __init__(self, guard: StoreGuard) -> None:
        self.guard = guard

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily(
            "crdtsync_http_writes_not_durable",
            "HTTP writes answered 507 store_full or 503 store_unavailable: the store could not commit.",
            value=self.guard.refused,
        )
