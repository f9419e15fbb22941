"""`GET /v1/top` and the load gauges of `/metrics` (docs/http-api.md#get-v1top): every member's load
and lag, and the cluster's hottest docs with their rates and followers, from the load summaries the
members gossip (docs/placement.md#adaptive-replication). `crdtsync top` draws it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from crdtsync.core.load_wire import NodeLoad
from crdtsync.daemon.http_input import ApiError, json_response
from crdtsync.daemon.metrics import PREFIX

if TYPE_CHECKING:
    from crdtsync.daemon.http import Api
    from crdtsync.node import Node

TOP_DOCS_MAX = 100
"""Docs one `GET /v1/top` lists at most (`docs=`; 20 by default)."""
METRIC_DOCS = 10
"""Hottest docs of the cluster in `/metrics`: the doc label takes at most this many values."""
Json = dict[str, Any]
PLURALS = {"read": "reads", "write": "writes", "fetch": "fetches"}


def register(app: web.Application, api: Api) -> None:
    """Add the route and the gauges to the daemon (`Api.app`)."""

    async def top(request: web.Request) -> web.Response:
        text = request.query.get("docs", "20")
        if not text.isdigit() or not 1 <= int(text) <= TOP_DOCS_MAX:
            raise ApiError(400, "bad_docs", f"docs must be an integer in 1..{TOP_DOCS_MAX}")
        return json_response(top_json(api.node, int(text)))

    app.router.add_get("/v1/top", top)
    api.registry.register(TopCollector(api.node))


def _rounded(rates: dict[str, float]) -> dict[str, float]:
    return {dc: round(rate, 3) for dc, rate in sorted(rates.items())}


def hottest_docs(summaries: list[tuple[NodeLoad, float]], limit: int) -> list[Json]:
    """The cluster's `limit` hottest docs: each kind's rates summed over the members' summaries by
    datacenter of origin (each event is counted once, where it entered), and the nodes that follow
    the doc. A doc outside a node's gossiped top counts nothing from that node: the sums are lower
    bounds for all but the hottest docs."""
    docs: dict[str, Json] = {}
    for summary, _age_ms in summaries:
        for doc in summary.docs:
            entry = docs.setdefault(
                doc.doc_id,
                {"reads": {}, "writes": {}, "fetches": {}, "unattributed": 0.0, "followers": []},
            )
            for kind, dc, rate in doc.rates:
                by_dc = entry[PLURALS[kind]]
                by_dc[dc] = by_dc.get(dc, 0.0) + rate
            entry["unattributed"] += doc.unattributed
            if doc.following:
                entry["followers"].append(summary.node_id)

    def total(entry: Json) -> float:
        return sum(sum(entry[plural].values()) for plural in PLURALS.values())

    ranked = sorted(docs.items(), key=lambda item: (-total(item[1]), item[0]))[:limit]
    return [
        {
            "doc_id": doc_id,
            "per_s": round(total(entry), 3),
            "reads_per_s": _rounded(entry["reads"]),
            "writes_per_s": _rounded(entry["writes"]),
            "fetches_per_s": _rounded(entry["fetches"]),
            "unattributed_per_s": round(entry["unattributed"], 3),
            "followers": sorted(entry["followers"]),
        }
        for doc_id, entry in ranked
    ]


def top_json(node: Node, docs_limit: int) -> Json:
    """What `GET /v1/top` answers (see docs/http-api.md#get-v1top)."""
    summaries = node.load_summaries()
    status = node.status()
    lag_ms = {peer.node_id: peer.lag_ms for peer in status.peers if peer.node_id is not None}
    state = {member.node_id: member.state for member in status.members}
    weight = {member.node_id: member.weight for member in status.members}
    weight[status.node_id] = status.weight
    partitions = node.cluster_placement().partitions_per_node
    nodes = [
        {
            "node_id": summary.node_id,
            "dc": summary.dc,
            "state": "self" if summary.node_id == status.node_id else state.get(summary.node_id, "unknown"),
            "load_cores": round(summary.load_cores, 3),
            "partitions": partitions.get(summary.node_id),
            "weight": weight.get(summary.node_id),
            "lag_ms": None if summary.node_id == status.node_id else lag_ms.get(summary.node_id),
            "summary_age_ms": round(age_ms),
            "following": sum(1 for doc in summary.docs if doc.following),
        }
        for summary, age_ms in summaries
    ]
    return {
        "node_id": status.node_id,
        "dc": status.dc,
        "half_life_ms": node.config.replication.load_half_life_ms,
        "weight_configured": status.weight_configured,
        "nodes": nodes,
        "docs": hottest_docs(summaries, docs_limit),
        "moves": {
            "hinted_docs": status.hinted_docs,
            "weight_changes": status.counters.weight_changes,
            "follows_started": status.counters.follows_started,
            "follows_stopped": status.counters.follows_stopped,
        },
    }


class TopCollector(Collector):
    """The load gauges: every member's load (label cardinality: the member table), and the rates of
    the cluster's `METRIC_DOCS` hottest docs (cardinality: those docs, three kinds and the
    datacenters)."""

    def __init__(self, node: Node) -> None:
        self.node = node

    def collect(self) -> Iterator[GaugeMetricFamily]:
        summaries = self.node.load_summaries()
        load = GaugeMetricFamily(
            f"{PREFIX}_node_load_cores",
            "CPU cores each member keeps busy (decayed over load_half_life_ms), from its load summary.",
            labels=["node", "dc"],
        )
        for summary, _age_ms in summaries:
            load.add_metric([summary.node_id, summary.dc], summary.load_cores)
        yield load
        status = self.node.status()
        weight = GaugeMetricFamily(
            f"{PREFIX}_node_weight",
            "Each member's placement weight as its member record says (its configured weight, lowered "
            "by shedding: docs/placement.md#shedding-load).",
            labels=["node", "dc"],
        )
        weight.add_metric([status.node_id, status.dc], status.weight)
        for member in status.members:
            if member.state != "left":
                weight.add_metric([member.node_id, member.dc], member.weight)
        yield weight
        rates = GaugeMetricFamily(
            f"{PREFIX}_hot_doc_rate",
            f"Events per second of the cluster's {METRIC_DOCS} hottest docs, by kind (read, write, "
            "fetch: a forwarded read) and datacenter of origin (decayed over load_half_life_ms).",
            labels=["doc", "kind", "dc"],
        )
        followers = GaugeMetricFamily(
            f"{PREFIX}_hot_doc_followers",
            f"Read followers of each of the cluster's {METRIC_DOCS} hottest docs.",
            labels=["doc"],
        )
        for doc in hottest_docs(summaries, METRIC_DOCS):
            for kind, plural in PLURALS.items():
                for dc, rate in doc[f"{plural}_per_s"].items():
                    rates.add_metric([doc["doc_id"], kind, dc], rate)
            followers.add_metric([doc["doc_id"]], len(doc["followers"]))
        yield rates
        yield followers
