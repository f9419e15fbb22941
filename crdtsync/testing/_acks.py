"""The log of acknowledged writes of a local cluster, and its check against the nodes' HTTP API."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import httpx

from crdtsync.core.state import StateDecodeError, covers, decode_state_vector

__all__ = ["Ack", "AckLog", "AckedWrite", "state_vector_of"]


@dataclass(frozen=True, slots=True)
class AckedWrite:
    """One write sent to a node's HTTP API (`PUT /v1/docs/DOC/keys/KEY`)."""

    node: str
    """The node it was sent to."""
    seq: int
    """Per node, across restarts: the order the writes were sent in (one at a time)."""
    doc: str
    key: str
    value: Any
    owned: bool
    """Only this node writes this key, so its last acknowledged value must be the value there."""
    incarnation: int
    """The node's start count when it was sent (a restart makes a new incarnation)."""


@dataclass(frozen=True, slots=True)
class Ack:
    write: AckedWrite
    state_vector: str
    """The doc's state vector the node answered with (base64url)."""


def state_vector_of(response: httpx.Response) -> str | None:
    """The `state_vector` of a write's 200 answer; None for an answer that is not one."""
    if response.status_code != 200:
        return None
    try:
        state_vector = response.json()["state_vector"]
    except (ValueError, KeyError, TypeError):
        return None
    return state_vector if isinstance(state_vector, str) else None


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass
class AckLog:
    """Every write sent to the cluster: the acknowledged ones with the state vector of their answer,
    and the failed ones (connection errors, timeouts, HTTP errors), which may or may not have landed."""

    acks: list[Ack] = field(default_factory=list)
    failures: list[AckedWrite] = field(default_factory=list)
    seqs: dict[str, int] = field(default_factory=dict)

    def next_seq(self, node: str) -> int:
        self.seqs[node] = self.seqs.get(node, 0) + 1
        return self.seqs[node]

    def record(self, write: AckedWrite, response: httpx.Response | None) -> bool:
        """Log the answer to `write` (None: no answer); whether it was acknowledged."""
        state_vector = None if response is None else state_vector_of(response)
        if state_vector is None:
            self.failures.append(write)
            return False
        self.acks.append(Ack(write, state_vector))
        return True

    def selected(self, node: str | None = None, incarnation: int | None = None) -> list[Ack]:
        """The acknowledgements of `node` (every node: None) in `incarnation` (all: None)."""
        return [
            ack
            for ack in self.acks
            if (node is None or ack.write.node == node)
            and (incarnation is None or ack.write.incarnation == incarnation)
        ]

    def allowed_values(self, write: AckedWrite) -> list[Any]:
        """The values an owned key may hold: the last acknowledged one, or that of a later write of the
        same node that was sent but never acknowledged (in flight at a kill) and may have landed."""
        later = [
            failed.value
            for failed in self.failures
            if (failed.node, failed.doc, failed.key) == (write.node, write.doc, write.key)
            and failed.seq > write.seq
        ]
        return [write.value, *later]

    async def verify(self, client: httpx.AsyncClient, url: str, acks: Iterable[Ack]) -> tuple[list[str], int]:
        """Check `acks` on the node at `url`: the last value of each owned key (see `allowed_values`),
        the presence of each shared key, and that the doc's state vector covers the last acknowledgement
        of each writer. Returns (problems, number of keys checked by value)."""
        last: dict[tuple[str, str, str], Ack] = {}
        last_per_doc: dict[tuple[str, str], Ack] = {}
        for ack in acks:
            write = ack.write
            last[(write.node, write.doc, write.key)] = ack
            last_per_doc[(write.node, write.doc)] = ack
        problems: list[str] = []
        await asyncio.gather(
            *(self._check_key(client, url, ack, problems) for ack in last.values()),
            *(self._check_doc(client, url, ack, problems) for ack in last_per_doc.values()),
        )
        return problems, sum(1 for ack in last.values() if ack.write.owned)

    async def _check_key(self, client: httpx.AsyncClient, url: str, ack: Ack, problems: list[str]) -> None:
        write = ack.write
        try:
            response = await client.get(f"{url}/v1/docs/{write.doc}/keys/{write.key}")
        except httpx.HTTPError as exc:
            problems.append(f"{write.doc} {write.key}: {exc}")
            return
        if response.status_code != 200:
            problems.append(f"{write.doc} {write.key}: HTTP {response.status_code} {response.text[:120]}")
            return
        if not write.owned:
            return  # a peer may have written a newer value since: presence is what counts
        value = response.json()["value"]
        if value not in self.allowed_values(write):
            problems.append(f"{write.doc} {write.key}: {value!r}, acknowledged {write.value!r}")

    @staticmethod
    async def _check_doc(client: httpx.AsyncClient, url: str, ack: Ack, problems: list[str]) -> None:
        doc = ack.write.doc
        try:
            response = await client.get(f"{url}/v1/docs/{doc}")
            have = decode_state_vector(_b64url_decode(response.json()["state_vector"]))
            need = decode_state_vector(_b64url_decode(ack.state_vector))
        except (httpx.HTTPError, ValueError, KeyError, StateDecodeError) as exc:
            problems.append(f"{doc}: cannot compare state vectors: {exc}")
            return
        if not covers(have, need):
            problems.append(f"{doc}: the state vector does not cover the last acknowledged write")
