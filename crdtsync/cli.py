"""The `crdtsync` command: run a daemon (`serve`), a local demo (`demo`), and talk to a running one."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

import click
import httpx

from crdtsync import __version__

DEFAULT_URL = "http://127.0.0.1:7480"
TIMEOUT_S = 30.0


def _fail(message: str, code: int = 1) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="crdtsync")
def main() -> None:
    """crdtsync: leaderless replication of pycrdt documents.

    Run a node with `crdtsync serve`, try three of them with `crdtsync demo`, and talk to a running
    node with the other commands (`--url`, default the local node at http://127.0.0.1:7480).
    """


# ---------------------------------------------------------------------------------------------- serve


@main.command()
@click.option(
    "--config", "config_path", type=click.Path(dir_okay=False), help="TOML config file (flags win over it)."
)
@click.option("--node-id", help="This node's name, unique in the cluster and stable across restarts.")
@click.option("--dc", help="Datacenter label (default: default).")
@click.option(
    "--listen", help="Advertised replication address, tcp://HOST:PORT (default tcp://127.0.0.1:7400)."
)
@click.option(
    "--peer", "peers", multiple=True, help="A peer's listen address, tcp://HOST:PORT; repeat for more."
)
@click.option("--publish", help="Where the PUB socket binds (default: an ephemeral port on the listen host).")
@click.option("--http", "http_listen", help="HTTP API address, HOST:PORT (default 127.0.0.1:7480).")
@click.option(
    "--data-dir", type=click.Path(file_okay=False), help="Directory of the SQLite store (default: memory)."
)
@click.option(
    "--durability",
    type=click.Choice(["fsync", "process", "none"]),
    help="What a write waits for (default fsync).",
)
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), help="Default info.")
@click.option("--log-format", type=click.Choice(["kv", "json"]), help="Default kv (key=value lines).")
@click.option(
    "--set",
    "assignments",
    multiple=True,
    metavar="SECTION.KEY=VALUE",
    help="Any other config key, e.g. --set replication.ae_interval_ms=2000 --set http.body_bytes_max=1048576.",
)
def serve(config_path: str | None, assignments: tuple[str, ...], **flags: Any) -> None:
    """Run a node with its HTTP API until SIGTERM or SIGINT.

    Every key of the config file can also be given as a flag (the named ones, or --set for any
    key); flags win over the file. See config.example.toml.
    """
    from crdtsync.daemon.config import ConfigError, load_config
    from crdtsync.daemon.logs import configure
    from crdtsync.daemon.server import serve as run_server
    from crdtsync.store.sqlite import StoreError

    flags["peers"] = list(flags["peers"])
    try:
        config = load_config(config_path, flags, list(assignments))
    except ConfigError as exc:
        _fail(f"configuration: {exc}", 2)
    configure(config.log.level, config.log.format)
    try:
        asyncio.run(run_server(config))
    except (StoreError, OSError) as exc:
        _fail(str(exc))


@main.command()
@click.option(
    "--dir",
    "work_dir",
    type=click.Path(file_okay=False),
    help="Where the demo keeps its data (default: a temp dir).",
)
@click.option("--base-port", type=int, default=0, help="First of the ports to use (default: free ports).")
@click.option(
    "--seconds", type=float, default=None, help="Stop after this long instead of waiting for Ctrl-C."
)
def demo(work_dir: str | None, base_port: int, seconds: float | None) -> None:
    """Start 3 daemons on 127.0.0.1, write to all of them, kill -9 one, restart it, watch them converge.

    The daemons keep running until Ctrl-C (or --seconds), with their URLs printed.
    """
    from crdtsync.daemon.demo import run_demo

    sys.exit(run_demo(work_dir, base_port, seconds))


# ---------------------------------------------------------------------------------------------- client

url_option = click.option(
    "--url",
    default=lambda: os.environ.get("CRDTSYNC_URL", DEFAULT_URL),
    show_default="$CRDTSYNC_URL or " + DEFAULT_URL,
    help="The node's HTTP API.",
)
json_option = click.option("--json", "as_json", is_flag=True, help="Print the raw JSON answer (for scripts).")


def _request(method: str, url: str, path: str, **kwargs: Any) -> httpx.Response:
    try:
        response = httpx.request(method, url.rstrip("/") + path, timeout=TIMEOUT_S, **kwargs)
    except httpx.HTTPError as exc:
        _fail(f"cannot reach {url}: {exc}")
    if response.status_code >= 400:
        try:
            error = response.json()["error"]
            _fail(f"{error['message']} ({response.status_code} {error['code']})")
        except (ValueError, KeyError, TypeError):
            _fail(f"{method} {path}: HTTP {response.status_code}")
    return response


def _print_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, sort_keys=True))


@main.command()
@url_option
@json_option
def status(url: str, as_json: bool) -> None:
    """Show the node's state and its peers."""
    body = _request("GET", url, "/v1/status").json()
    if as_json:
        _print_json(body)
        return
    click.echo(
        f"node {body['node_id']} (dc {body['dc']}), up {body['uptime_s']:.0f} s, {body['docs']} docs, "
        f"store {body['store']} ({body['durability']}), root {body['merkle_root'][:12]}"
    )
    rows = [("PEER", "ADDRESS", "STATE", "LAST HEARD", "BEHIND", "AE ROUNDS", "DIVERGENCE")]
    for peer in body["peers"]:
        heard = peer["last_heard_ago_ms"]
        ae = peer["anti_entropy"]
        rows.append(
            (
                peer["node_id"] or "?",
                peer["address"],
                peer["state"],
                "-" if heard is None else f"{heard / 1000:.1f} s ago",
                str(peer["behind_updates"]),
                str(ae["rounds"]),
                "-" if ae["divergence"] is None else str(ae["divergence"]),
            )
        )
    _table(rows)


def _table(rows: Sequence[tuple[str, ...]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


@main.command()
@url_option
@json_option
@click.option("--prefix", default="", help="Only doc ids starting with this.")
@click.option("--limit", type=int, default=100, show_default=True, help="Page size.")
@click.option("--after", default="", help="Start after this doc id (the previous page's `next`).")
def docs(url: str, as_json: bool, prefix: str, limit: int, after: str) -> None:
    """List the docs the node holds."""
    body = _request("GET", url, "/v1/docs", params={"prefix": prefix, "limit": limit, "after": after}).json()
    if as_json:
        _print_json(body)
        return
    for doc_id in body["docs"]:
        click.echo(doc_id)
    if body["next"]:
        click.echo(f"(more: --after {body['next']})", err=True)


@main.command()
@url_option
@json_option
@click.argument("doc")
@click.argument("key", required=False)
def get(url: str, as_json: bool, doc: str, key: str | None) -> None:
    """Show a doc's data, or one KEY of it."""
    path = f"/v1/docs/{doc}" + (f"/keys/{key}" if key else "")
    body = _request("GET", url, path).json()
    if as_json:
        _print_json(body)
    else:
        _print_json(body["value"] if key else body["data"])


@main.command()
@url_option
@json_option
@click.argument("doc")
@click.argument("key")
@click.argument("value")
def put(url: str, as_json: bool, doc: str, key: str, value: str) -> None:
    """Set KEY of DOC to VALUE, a JSON value (e.g. '{"stage": "canary"}', '4', '"text"')."""
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as exc:
        _fail(f"VALUE is not JSON ({exc}); quote strings: '\"text\"'", 2)
    body = _request("PUT", url, f"/v1/docs/{doc}/keys/{key}", json=parsed).json()
    if as_json:
        _print_json(body)
    else:
        click.echo(f"set {doc} {key} (durable; state vector {body['state_vector']})")


@main.command(name="del")
@url_option
@json_option
@click.argument("doc")
@click.argument("key")
def delete(url: str, as_json: bool, doc: str, key: str) -> None:
    """Delete KEY from DOC."""
    body = _request("DELETE", url, f"/v1/docs/{doc}/keys/{key}").json()
    if as_json:
        _print_json(body)
    else:
        click.echo(f"deleted {doc} {key} (durable; state vector {body['state_vector']})")


@main.command()
@url_option
@json_option
@click.argument("doc")
@click.option("--count", type=int, default=0, help="Stop after this many changes (default: until Ctrl-C).")
def watch(url: str, as_json: bool, doc: str, count: int) -> None:
    """Stream DOC's data every time it changes (the current state first)."""
    seen = 0
    try:
        with httpx.stream("GET", url.rstrip("/") + f"/v1/docs/{doc}/watch", timeout=None) as response:
            if response.status_code >= 400:
                response.read()
                _fail(f"{response.json()['error']['message']} ({response.status_code})")
            for line in response.iter_lines():
                if not line.startswith("data: "):
                    continue
                event = json.loads(line[len("data: ") :])
                click.echo(json.dumps(event if as_json else event["data"], sort_keys=True), nl=True)
                seen += 1
                if count and seen >= count:
                    return
    except httpx.HTTPError as exc:
        _fail(f"cannot watch {doc} at {url}: {exc}")
    except KeyboardInterrupt:
        pass


@main.command()
@url_option
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="File to write (must not exist).")
def backup(url: str, out: str) -> None:
    """Write a consistent copy of the node's store to --out while it keeps serving."""
    if os.path.exists(out):
        _fail(f"{out} already exists; choose a new file", 2)
    size = 0
    try:
        with httpx.stream("POST", url.rstrip("/") + "/v1/backup", timeout=None) as response:
            if response.status_code >= 400:
                response.read()
                _fail(f"{response.json()['error']['message']} ({response.status_code})")
            with open(out, "xb") as target:
                for chunk in response.iter_bytes():
                    target.write(chunk)
                    size += len(chunk)
    except httpx.HTTPError as exc:
        _fail(f"backup from {url} failed: {exc}")
    click.echo(f"backup written to {out} ({size} bytes)")


@main.command()
@url_option
@json_option
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
def restore(url: str, as_json: bool, file: str) -> None:
    """Merge a backup FILE into the node (CRDT merge: nothing newer is overwritten)."""
    with open(file, "rb") as source:
        body = _request("POST", url, "/v1/restore", content=source.read()).json()
    if as_json:
        _print_json(body)
    else:
        click.echo(f"merged {body['docs']} docs from {file}; anti-entropy spreads them to the peers")


if __name__ == "__main__":
    main()
