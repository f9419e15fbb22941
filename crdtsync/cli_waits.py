"""The CLI's options for what a command waits for (docs/consistency.md): reads that answer only once
the node holds a causal token (`--after`), writes that answer only once replicas hold them
(`--write-acks`), each bounded by `--wait-ms`."""

from __future__ import annotations

from typing import Any

import click

after_option = click.option(
    "--after",
    "after_token",
    metavar="TOKEN",
    help="Answer only once the node holds everything TOKEN names (the token a write or read printed): "
    "waits up to --wait-ms, then fails with not_yet_covered. See docs/consistency.md.",
)
wait_ms_option = click.option(
    "--wait-ms",
    type=click.IntRange(0),
    default=None,
    help="How long --after may wait (default: the node's, 2000 ms).",
)

write_acks_option = click.option(
    "--write-acks",
    metavar="N|dc|all",
    default=None,
    help="Answer only once N replicas of the doc, or every alive node holding it in this datacenter "
    "(dc) or in all (all), hold the write durably: waits up to --wait-ms, then fails with "
    "write_acks_timeout naming those that confirmed. See docs/consistency.md.",
)
write_wait_ms_option = click.option(
    "--wait-ms",
    type=click.IntRange(0),
    default=None,
    help="How long --write-acks may wait (default: the node's, 2000 ms).",
)


def durable(body: dict[str, Any]) -> str:
    """Where the write is durable: this node, or the nodes that confirmed it (--write-acks)."""
    acks = body.get("write_acks")
    return "durable" if acks is None else f"durable on {', '.join(acks['confirmed'])}"


def wait_params(name: str, value: str | None, wait_ms: int | None) -> dict[str, Any]:
    """The query of a request that waits: `name` (min_state, write_acks) when given, and wait_ms."""
    params: dict[str, Any] = {} if value is None else {name: value}
    if wait_ms is not None:
        params["wait_ms"] = wait_ms
    return params
