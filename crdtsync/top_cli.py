"""`crdtsync top`: a live view of the cluster's load, like `top` (docs/cli.md#top): every member's
load and lag, the hottest docs with their rates and followers, and moves in flight, from
`GET /v1/top` of one node, redrawn every `--interval` seconds until Ctrl-C; `--json` prints one
snapshot."""

from __future__ import annotations

import time
from typing import Any

import click

from crdtsync.cli import Server, _print_json, _request, json_option, main, server_options

INTERVAL_S_MIN = 0.2
CLEAR = "\x1b[H\x1b[2J"
"""Home the cursor and clear the screen (ANSI): each frame replaces the last, as `top` does."""


def _rates(by_dc: dict[str, float]) -> str:
    return " ".join(f"{dc}:{rate:.1f}" for dc, rate in by_dc.items()) or "-"


def _own_weight(body: dict[str, Any]) -> str:
    """This node's weight, and its configured one when shedding lowered it."""
    now = body["nodes"][0]["weight"] if body["nodes"] else None
    configured = body["weight_configured"]
    if now is None or now == configured:
        return f"{configured:g}"
    return f"{now:g}, configured {configured:g}: shed load"


def render(body: dict[str, Any]) -> list[str]:
    """The lines of one frame."""
    nodes = body["nodes"]
    total = sum(node["load_cores"] for node in nodes)
    mean = total / len(nodes) if nodes else 0.0
    peak = max((node["load_cores"] for node in nodes), default=0.0)
    half_life_s = body["half_life_ms"] / 1000
    lines = [
        f"crdtsync top: seen from {body['node_id']} (dc {body['dc']}), rates decayed over {half_life_s:g} s",
        f"nodes {len(nodes)}, load {total:.2f} cores (max/mean {peak / mean if mean else 0.0:.2f}), "
        f"moves in flight: {body['moves']['hinted_docs']} docs being handed off here "
        f"(this node's weight {_own_weight(body)})",
        "",
    ]
    rows: list[tuple[str, ...]] = [
        ("NODE", "DC", "STATE", "LOAD", "WEIGHT", "PARTITIONS", "LAG", "FOLLOWING", "SUMMARY AGE")
    ]
    for node in nodes:
        lag = "-" if node["lag_ms"] is None else f"{node['lag_ms'] / 1000:.1f} s"
        rows.append(
            (
                node["node_id"],
                node["dc"],
                node["state"],
                f"{node['load_cores']:.2f}",
                "-" if node["weight"] is None else f"{node['weight']:g}",
                "-" if node["partitions"] is None else str(node["partitions"]),
                lag,
                str(node["following"]),
                f"{node['summary_age_ms'] / 1000:.0f} s",
            )
        )
    lines += _lines(rows)
    lines.append("")
    rows = [("DOC", "PER S", "READS/S BY DC", "WRITES/S", "FETCHES/S", "FOLLOWERS")]
    for doc in body["docs"]:
        rows.append(
            (
                doc["doc_id"],
                f"{doc['per_s']:.1f}",
                _rates(doc["reads_per_s"]),
                _rates(doc["writes_per_s"]),
                _rates(doc["fetches_per_s"]),
                str(len(doc["followers"])),
            )
        )
    lines += _lines(rows) if body["docs"] else ["no reads or writes counted yet"]
    return lines


def _lines(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip() for row in rows
    ]


@main.command()
@server_options
@json_option
@click.option(
    "--interval", "interval_s", type=float, default=2.0, show_default=True, help="Seconds between frames."
)
@click.option(
    "--docs",
    "docs_limit",
    type=click.IntRange(1, 100),
    default=20,
    show_default=True,
    help="Hottest docs shown.",
)
@click.option("--once", is_flag=True, help="Print one frame and exit (as text).")
def top(server: Server, as_json: bool, interval_s: float, docs_limit: int, once: bool) -> None:
    """A live view of the cluster's load: nodes with their load and lag, the hottest docs with their
    rates per datacenter and followers, moves in flight (Ctrl-C to stop)."""
    if interval_s < INTERVAL_S_MIN:
        raise click.BadParameter(f"at least {INTERVAL_S_MIN} s", param_hint="--interval")
    path = f"/v1/top?docs={docs_limit}"
    if as_json:
        _print_json(_request("GET", server, path).json())
        return
    try:
        while True:
            frame = render(_request("GET", server, path).json())
            if once:
                click.echo("\n".join(frame))
                return
            click.echo(CLEAR + "\n".join(frame), nl=True)
            time.sleep(interval_s)  # the refresh period of a live view, not a synchronisation
    except KeyboardInterrupt:
        pass
