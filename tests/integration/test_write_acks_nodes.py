"""`Node.write_acks("dc" | "all")` on real nodes over ZeroMQ in two datacenters: the nodes each scope
waits for, confirmed by the sequence acknowledgements holders send of the writer's stream (no
question per write), and the frames an acknowledged write costs."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from pycrdt import Map
from zmq_support import free_endpoint, wait_until

from crdtsync import MembershipConfig, Node, NodeConfig, ReplicaConfig, holders
from crdtsync.holders import ACK_WAIT_MS, WriteAcksTimeoutError

pytestmark = pytest.mark.integration

FAST = ReplicaConfig(heartbeat_interval_ms=100.0, hello_interval_ms=100.0, tick_interval_ms=20.0)
QUIET = dataclasses.replace(FAST, ae_interval_ms=0.0, ae_wan_interval_ms=0.0)
"""No anti-entropy rounds, so that none falls in a window whose frames are counted."""
GOSSIP = MembershipConfig(gossip_interval_ms=100.0)
TIMEOUT_S = 15.0
DOC = "models/registry"


@contextlib.asynccontextmanager
async def _two_datacenters(
    root: Path, replication: ReplicaConfig, names: dict[str, str] | None = None
) -> AsyncIterator[list[Node]]:
    """a and c in dc1, b in dc2 (or `names`: node -> dc), SQLite stores (a confirmation comes after
    the holder's commit)."""
    names = names or {"a": "dc1", "b": "dc2", "c": "dc1"}
    listens = {name: free_endpoint() for name in names}
    async with contextlib.AsyncExitStack() as stack:
        nodes = [
            await stack.enter_async_context(
                Node(
                    NodeConfig(
                        node_id=name,
                        dc=dc,
                        listen=listens[name],
                        peers=[listens[other] for other in names if other != name],
                        replication=replication,
                        membership=GOSSIP,
                        data_dir=str(root / name),
                    )
                )
            )
            for name, dc in names.items()
        ]
        await wait_until(
            lambda: all(
                sum(m.state == "alive" for m in node.status().members) == len(names) - 1 for node in nodes
            ),
            TIMEOUT_S,
            "every node knows every other",
        )
        yield nodes


async def _write(node: Node, key: str, value: str) -> None:
    doc = await node.open(DOC)
    doc.get("data", type=Map)[key] = value
    node.release(DOC)
    await node.flush()


def _questions(node: Node) -> int:
    """Direct write-ack questions the node sent (HANDOFF_OFFER), less those asked again after a
    silence (a loaded machine can hold an answer past holders.ASK_AGAIN_MS)."""
    return node.status().counters.handoff_offers_sent - node._waits.asked_again


async def _acknowledged_by_all(node: Node, others: list[Node]) -> None:
    """Write with write_acks until every other node acknowledged a write: the first waiting write
    asks each holder, which starts its acks (for `seq_ack_wanted_ms`), and a node tracks a
    publisher's stream from the hello exchange on and acknowledges only the numbers after it (the
    first write after the start may come before it)."""
    replica = node._replica
    expected = {other.config.node_id for other in others}

    def all_acked() -> bool:
        acked = replica.seq_acks.acked
        return expected <= set(acked) and all(
            acked[name][1] >= replica.seq_acks.last_seq for name in expected
        )

    deadline_s = time.monotonic() + TIMEOUT_S
    while not all_acked():
        assert time.monotonic() < deadline_s, f"acks of {replica.seq_acks.last_seq}: {replica.seq_acks.acked}"
        await _write(node, "warm-up", str(replica.seq_acks.last_seq))
        # Right after the start a link may not be up yet: that holder cannot be asked (the write
        # fails at once naming who confirmed), and the next round asks it.
        with contextlib.suppress(WriteAcksTimeoutError):
            await node.write_acks(DOC, "all", timeout_ms=TIMEOUT_S * 1000)
        with contextlib.suppress(AssertionError):
            await wait_until(all_acked, 1.0, "acknowledged")


def test_dc_and_all_confirm_their_scope_by_sequence_acks_without_a_question(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with _two_datacenters(tmp_path, FAST) as nodes:
            a = nodes[0]
            await _acknowledged_by_all(a, nodes[1:])
            # c and b (dc2's relay, which subscribes to a's stream) acknowledge a's deltas: their
            # acks confirm, and no question goes out.
            offers, by_ack = _questions(a), a._waits.confirmed_by_ack
            await _write(a, "llama-3-8b", "canary")
            in_dc = await a.write_acks(DOC, "dc", timeout_ms=TIMEOUT_S * 1000)
            assert (in_dc.needed, sorted(in_dc.confirmed)) == (2, ["a", "c"])
            for value in ("production", "everywhere"):
                await _write(a, "llama-3-8b", value)
                everywhere = await a.write_acks(DOC, "all", timeout_ms=TIMEOUT_S * 1000)
                assert (everywhere.needed, sorted(everywhere.confirmed)) == (3, ["a", "b", "c"])
            assert _questions(a) - offers == 0
            assert a._waits.confirmed_by_ack - by_ack == 1 + 2 * 2
            for node in nodes:  # each acknowledged after its commit: it holds the write now
                doc = await node.open(DOC)
                assert doc.get("data", type=Map)["llama-3-8b"] == "everywhere", node.config.node_id
                node.release(DOC)

            # b wrote nothing in this run: no ack can tell, so it asks (a probe, then the update
            # against the state the answer gave), and each answers after its commit.
            b = nodes[1]
            offers = _questions(b)
            asked = await b.write_acks(DOC, "all", timeout_ms=TIMEOUT_S * 1000)
            assert sorted(asked.confirmed) == ["a", "b", "c"]
            assert _questions(b) - offers == 2 * 2

    asyncio.run(scenario())


def test_an_acknowledged_write_on_an_idle_cluster_costs_one_ack_frame_per_holder(tmp_path: Path) -> None:
    """Counted on the nodes over N writes with write_acks=all: the writer asks no question (no
    HANDOFF_OFFER leaves it), and each holder sends exactly one SEQ_ACK per
    write (the writer waits for each before the next). Anti-entropy rounds are off so that none
    falls in the window; the other frames (gossip, a hello after a slow beat) are printed."""
    writes = 5

    async def scenario() -> None:
        async with _two_datacenters(tmp_path, QUIET) as nodes:
            a = nodes[0]
            await _acknowledged_by_all(a, nodes[1:])
            delta = await _counted_over_writes(a, ["a", "b", "c"], nodes, writes, _FRAME_COUNTERS)
            for node, counted in zip(nodes, delta, strict=True):
                print(f"{node.config.node_id} over {writes} acknowledged writes: {counted}")
            assert delta[0]["handoff_offers_sent"] == 0, "the writer asked a question"
            assert delta[0]["seq_acks_received"] == 2 * writes
            for index in (1, 2):  # (a warm-up question may still arrive in the window: not counted)
                assert delta[index]["seq_acks_sent"] == writes, nodes[index].config.node_id

    asyncio.run(scenario())


def test_a_holder_of_another_datacenter_that_is_not_a_relay_confirms_by_acks_without_a_question(
    tmp_path: Path,
) -> None:
    """a and c in dc1, b and d in dc2, one of which is dc2's relay: the other gets a's deltas only as
    the relay republishes them. Its first write-ack question starts its acks of the numbers the
    relayed frames name (wire version 2), and then N writes with write_acks=all on idle links ask it
    nothing: a sends no question, and the non-relay sends one SEQ_ACK of relayed deltas per write."""
    writes = 5

    async def scenario() -> None:
        names = {"a": "dc1", "b": "dc2", "c": "dc1", "d": "dc2"}
        async with _two_datacenters(tmp_path, QUIET, names) as nodes:
            a, dc2 = nodes[0], [nodes[1], nodes[3]]
            await wait_until(
                lambda: sorted(node._replica.membership.is_relay() for node in dc2) == [False, True],
                TIMEOUT_S,
                "dc2 has one relay",
            )
            relay, holder = sorted(dc2, key=lambda node: not node._replica.membership.is_relay())
            await _acknowledged_by_all(a, nodes[1:])
            names_of = ("handoff_offers_sent", "seq_acks_sent", "seq_acks_relayed_sent", "deltas_relayed_out")
            delta = await _counted_over_writes(a, ["a", "b", "c", "d"], [a, holder, relay], writes, names_of)
            print(f"over {writes} writes: a {delta[0]}, holder {delta[1]}, relay {delta[2]}")
            assert delta[0]["handoff_offers_sent"] == 0, "a asked a question"
            assert delta[1]["seq_acks_relayed_sent"] == delta[1]["seq_acks_sent"] == writes
            assert delta[2]["deltas_relayed_out"] == writes and delta[2]["seq_acks_relayed_sent"] == 0
            doc = await holder.open(DOC)
            assert doc.get("data", type=Map)["llama-3-8b"] == f"v{writes - 1}"
            holder.release(DOC)

    asyncio.run(scenario())


def test_a_writer_whose_writes_keep_waiting_renews_the_holders_acks_before_they_stop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A holder acknowledges for `seq_ack_wanted_ms` after a question, however many acks it sends:
    a writer whose writes wait all the time asks each holder again when its last question to it is
    half that old, so the acks never stop and no write waits `ACK_WAIT_MS` for an ack that will not
    come. Here with seq_ack_wanted_ms 1 s, over 2.5 s of writes with write_acks=all: about every
    0.5 s a question to each of the 2 holders (the code before asked only once the acks had stopped
    and a write had waited for them: 2 in all); ACK_WAIT_MS is 3 s, so that only stopped acks, not a
    loaded machine's stall, make a write wait that long."""
    monkeypatch.setattr(holders, "ACK_WAIT_MS", 3_000.0)
    renewing = dataclasses.replace(FAST, seq_ack_wanted_ms=1_000.0)

    async def scenario() -> None:
        async with _two_datacenters(tmp_path, renewing) as nodes:
            a = nodes[0]
            await _acknowledged_by_all(a, nodes[1:])
            offers, silences, writes = _questions(a), a._waits.asked_for_silence, 0
            started = time.monotonic()
            while time.monotonic() - started < 2.5:
                await _write(a, "llama-3-8b", f"v{writes}")
                acks = await a.write_acks(DOC, "all", timeout_ms=TIMEOUT_S * 1000)
                assert sorted(acks.confirmed) == ["a", "b", "c"]
                writes += 1
            renewals = _questions(a) - offers
            print(f"{writes} writes in 2.5 s, {renewals} renewing questions")
            assert a._waits.asked_for_silence == silences, "a holder's acks stopped: a write waited for one"
            assert renewals >= 2 * 2, "each holder is asked again about every 0.5 s"

    asyncio.run(scenario())


async def _counted_over_writes(
    writer: Node, confirmed: list[str], counted: list[Node], writes: int, names: tuple[str, ...]
) -> list[dict[str, int]]:
    """`writes` writes on `writer`, each with `write_acks="all"` confirmed by exactly the nodes
    `confirmed`; what each of `counted` counted of `names` meanwhile."""
    before = [node.status().counters for node in counted]
    for index in range(writes):
        await _write(writer, "llama-3-8b", f"v{index}")
        acks = await writer.write_acks(DOC, "all", timeout_ms=TIMEOUT_S * 1000)
        assert sorted(acks.confirmed) == confirmed
    after = [node.status().counters for node in counted]
    return [
        {name: getattr(n, name) - getattr(b, name) for name in names}
        for n, b in zip(after, before, strict=True)
    ]


_FRAME_COUNTERS = (
    "frames_published",
    "frames_sent",
    "gossip_sent",
    "handoff_offers_sent",
    "handoff_offers_received",
    "seq_acks_sent",
    "seq_acks_received",
)


def test_a_holder_whose_acks_are_lost_is_asked_after_the_ack_wait(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fallback: c's acknowledgements stop leaving (as if lost), so a's write waits
    `holders.ACK_WAIT_MS` for them, then asks c directly, and c's answer (after its commit) confirms."""

    async def scenario() -> None:
        async with _two_datacenters(tmp_path, FAST) as nodes:
            a, c = nodes[0], nodes[2]
            await _acknowledged_by_all(a, nodes[1:])
            monkeypatch.setattr(c._replica.seq_acks, "send_due", lambda *args: None)
            offers = _questions(a)
            await _write(a, "llama-3-8b", "canary")
            started = time.monotonic()
            in_dc = await a.write_acks(DOC, "dc", timeout_ms=TIMEOUT_S * 1000)
            assert sorted(in_dc.confirmed) == ["a", "c"]
            assert time.monotonic() - started >= ACK_WAIT_MS / 1000
            assert _questions(a) - offers >= 1
            doc = await c.open(DOC)
            assert doc.get("data", type=Map)["llama-3-8b"] == "canary"
            c.release(DOC)

    asyncio.run(scenario())


def test_an_ack_under_another_member_view_is_not_trusted_and_the_holder_is_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """c's acknowledgements carry another view digest than a's (as while a join is gossiped): a
    does not count them (c might not hold the doc in its view) and asks c instead."""

    async def scenario() -> None:
        async with _two_datacenters(tmp_path, FAST) as nodes:
            a, c = nodes[0], nodes[2]
            await _acknowledged_by_all(a, nodes[1:])
            holding = c._replica._holding
            monkeypatch.setattr(holding, "view_digest", holding.view_digest ^ 1)
            offers, by_ack = _questions(a), a._waits.confirmed_by_ack
            await _write(a, "llama-3-8b", "canary")
            in_dc = await a.write_acks(DOC, "dc", timeout_ms=TIMEOUT_S * 1000)
            assert sorted(in_dc.confirmed) == ["a", "c"]
            assert a._waits.confirmed_by_ack == by_ack, "c's ack was counted"
            assert _questions(a) - offers >= 1

    asyncio.run(scenario())
