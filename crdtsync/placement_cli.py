"""`crdtsync placement [DOC]`: where a doc lives, or the partitions per node, on a running node."""

from __future__ import annotations

import click

from crdtsync.cli import Server, _print_json, _request, _table, json_option, main, server_options


@main.command()
@server_options
@json_option
@click.argument("doc", required=False)
def placement(server: Server, as_json: bool, doc: str | None) -> None:
    """Where DOC lives (its partition and replicas per datacenter, in preference order); without DOC,
    the partitions per node and the imbalance per datacenter (under the default rule)."""
    body = _request("GET", server, f"/v1/placement/{doc}" if doc else "/v1/placement").json()
    if as_json:
        _print_json(body)
        return
    if doc:
        rule = f"prefix {body['prefix']!r}" if body["prefix"] else "the default rule"
        click.echo(f"doc {body['doc']}: partition {body['partition']}, rf {body['rf']} ({rule})")
        rows = [("DC", "REPLICAS (PREFERENCE ORDER)")]
        for dc, replicas in body["replicas"].items():
            rows.append((dc, ", ".join(f"{r['node_id']} ({r['state']})" for r in replicas) or "-"))
        _table(rows)
    else:
        click.echo(
            f"{body['partitions']} partitions, default rf {body['rf']}, placement version {body['version']}"
        )
        rows = [("NODE", "PARTITIONS")]
        rows += [(node_id, str(count)) for node_id, count in body["partitions_per_node"].items()]
        _table(rows)
        imbalance = ", ".join(f"{dc} {value:.3f}" for dc, value in body["imbalance"].items())
        click.echo(f"imbalance (max/mean per node): {imbalance}")
        click.echo(
            f"hints on this node: {body['hinted_docs']} docs waiting to be handed to a holder, "
            f"{body['hinted_bytes']} bytes of writes no holder confirmed yet, {body['hints_overdue']} overdue"
        )
    if not body["enforced"]:
        click.echo('note: rf "all": every node holds every doc')
