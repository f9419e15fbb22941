"""The `crdtsync` command: run a daemon (`serve`), a local demo (`demo`), and talk to a running one."""

from __future__ import annotations

import asyncio
import functools
import json
import os
import ssl
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn

import click

from crdtsync import __version__
from crdtsync.cli_waits import (
    after_option,
    durable,
    wait_ms_option,
    wait_params,
    write_acks_option,
    write_wait_ms_option,
)
from crdtsync.daemon import jsonvalues
from crdtsync.daemon.logs import LOG_FORMATS, LOG_LEVELS
from crdtsync.store.base import DURABILITIES

if TYPE_CHECKING:
    # The client commands import httpx when they run: `crdtsync serve` does without it, and with
    # click and rich installed httpx brings its own command line (rich, pygments: 50 ms).
    import httpx

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
    node with the other commands (`--url`, default the local node at http://127.0.0.1:7480; `--token`
    when the node has tokens, `--cacert` for a self-signed HTTPS certificate).
    """


# ---------------------------------------------------------------------------------------------- serve


@main.command()
@click.option(
    "--config", "config_path", type=click.Path(dir_okay=False), help="TOML config file (flags win over it)."
)
@click.option("--node-id", help="This node's name, unique in the cluster and stable across restarts.")
@click.option("--dc", help="Datacenter label (default: default).")
@click.option(
    "--listen", help="Where the replication socket binds, tcp://HOST:PORT (default tcp://127.0.0.1:7400)."
)
@click.option(
    "--advertise",
    help="The address peers reach this node at, tcp://HOST:PORT (default: --listen; required when it is 0.0.0.0).",
)
@click.option(
    "--peer",
    "peers",
    multiple=True,
    help="A seed: another member's listen address, tcp://HOST:PORT (repeat for more); gossip finds the rest.",
)
@click.option("--publish", help="Where the PUB socket binds (default: an ephemeral port on the listen host).")
@click.option(
    "--publish-advertise",
    help="The PUB endpoint peers subscribe to (default: the bound one with the advertised host).",
)
@click.option("--http", "http_listen", help="HTTP API address, HOST:PORT (default 127.0.0.1:7480).")
@click.option(
    "--data-dir", type=click.Path(file_okay=False), help="Directory of the SQLite store (default: memory)."
)
@click.option(
    "--durability",
    type=click.Choice(DURABILITIES),
    help="What a write waits for (default fsync).",
)
@click.option("--log-level", type=click.Choice(LOG_LEVELS), help="Default info.")
@click.option("--log-format", type=click.Choice(LOG_FORMATS), help="Default kv (key=value lines).")
@click.option(
    "--set",
    "assignments",
    multiple=True,
    metavar="SECTION.KEY=VALUE",
    help="Any other config key, e.g. --set replication.ae_interval_ms=2000 --set http.body_bytes_max=1048576.",
)
@click.option(
    "--plaintext",
    is_flag=True,
    help='Unencrypted, unauthenticated replication links (same as --set security.mode="plaintext"); '
    "only for tests and networks where every host that can reach the ports is trusted.",
)
def serve(config_path: str | None, assignments: tuple[str, ...], plaintext: bool, **flags: Any) -> None:
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
        chosen = [*assignments, *(['security.mode="plaintext"'] if plaintext else [])]
        config = load_config(config_path, flags, chosen)
    except ConfigError as exc:
        _fail(f"configuration: {exc}", 2)
    configure(config.log.level, config.log.format)
    try:
        asyncio.run(run_server(config))
    except ConfigError as exc:
        _fail(f"configuration: {exc}", 2)
    except (StoreError, OSError) as exc:
        _fail(str(exc))


@main.command()
@click.option("--name", required=True, help="Who or what holds the token (1..64 of A-Z a-z 0-9 . _ -).")
@click.option(
    "--scope",
    type=click.Choice(["read", "write"]),
    required=True,
    help="read: GET only (docs, status, metrics, watch); write: everything.",
)
@click.option("--json", "as_json", is_flag=True, help="Print name, scope, token and sha256 as JSON.")
def token(name: str, scope: str, as_json: bool) -> None:
    """Make a new random bearer token and the [[token]] entry that grants it.

    Add the entry to the daemon's tokens file (http.tokens_file) and restart the daemon; give the
    token to the client (--token or $CRDTSYNC_TOKEN). The tokens file holds only the token's SHA-256,
    and the token is not shown again.
    """
    import secrets

    from crdtsync.daemon.config import TOKEN_NAME_RE, token_digest, token_entry

    if not TOKEN_NAME_RE.match(name):
        _fail(f"--name {name!r}: use 1..64 of A-Z a-z 0-9 . _ -", 2)
    secret = secrets.token_urlsafe(32)
    if as_json:
        _print_json({"name": name, "scope": scope, "token": secret, "sha256": token_digest(secret).hex()})
        return
    click.echo(f"token for {name} ({scope} scope); give it to the client, it is not shown again:")
    click.echo(f"  {secret}")
    click.echo("")
    click.echo("add to the tokens file (http.tokens_file), then restart the daemon:")
    click.echo("")
    click.echo(token_entry(name, "write" if scope == "write" else "read", secret), nl=False)


@main.command()
@click.option(
    "--out", required=True, type=click.Path(dir_okay=False), help="Key file to create (must not exist)."
)
@click.option("--name", default="node", show_default=True, help="Node name written in the file's comment.")
def keygen(out: str, name: str) -> None:
    """Create a CurveZMQ key pair for a node's replication links.

    Point the node's `security.key_file` at --out (keep it secret, mode 0600) and give the printed
    public key to the peers: each lists it in its `security.peer_keys` under this node's listen address.
    """
    from crdtsync.transport.curve import write_key_file

    try:
        public = write_key_file(out, name)
    except FileExistsError:
        _fail(f"{out} already exists; choose a new file", 2)
    except OSError as exc:
        _fail(f"cannot write {out}: {exc}")
    click.echo(f"wrote the key pair of {name} to {out}")
    click.echo(f"public key: {public}")


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
@click.option(
    "--view",
    type=click.Choice(["auto", "rich", "plain"]),
    default="auto",
    show_default=True,
    help="rich: a live table and event log; plain: timestamped lines; auto: rich on a terminal, else plain.",
)
@click.option("--plain", is_flag=True, help="The same as --view plain (lines, for logs and CI).")
def demo(work_dir: str | None, base_port: int, seconds: float | None, view: str, plain: bool) -> None:
    """Start 3 daemons on 127.0.0.1, write to all of them, kill -9 one, restart it, watch them converge.

    The daemons keep running until Ctrl-C (or --seconds), with their URLs printed.
    """
    if plain and view == "rich":
        _fail("--plain and --view rich contradict each other", 2)
    from crdtsync.daemon.demo import run_demo

    sys.exit(run_demo(work_dir, base_port, seconds, "plain" if plain else view))


# ---------------------------------------------------------------------------------------------- client

url_option = click.option(
    "--url",
    default=lambda: os.environ.get("CRDTSYNC_URL", DEFAULT_URL),
    show_default="$CRDTSYNC_URL or " + DEFAULT_URL,
    help="The node's HTTP API.",
)
token_option = click.option(
    "--token",
    envvar="CRDTSYNC_TOKEN",
    show_envvar=True,
    help="Bearer token, when the node has tokens (see `crdtsync token`).",
)
cacert_option = click.option(
    "--cacert",
    envvar="CRDTSYNC_CACERT",
    show_envvar=True,
    type=click.Path(dir_okay=False),
    help="PEM CA certificate to verify an https --url with (e.g. the node's self-signed certificate).",
)
# Typed here: artifact_cli and batch_cli import it from this module while it imports them (mypy
# cannot infer it through that cycle).
json_option: Callable[[Callable[..., None]], Callable[..., None]] = click.option(
    "--json", "as_json", is_flag=True, help="Print the raw JSON answer (for scripts)."
)


@dataclass(frozen=True)
class Server:
    """Where and how a client command talks to a node: --url, --token, --cacert."""

    url: str
    token: str | None = None
    cacert: str | None = None

    def endpoint(self, path: str) -> str:
        return self.url.rstrip("/") + path

    def options(self) -> dict[str, Any]:
        """httpx keyword arguments: the bearer token header and the TLS verification."""
        headers: dict[str, str] = {}
        if self.token is not None:
            if not self.token.isascii() or not self.token.isprintable() or " " in self.token:
                _fail("--token: a token is printable ASCII without spaces", 2)
            headers["Authorization"] = f"Bearer {self.token}"
        verify: ssl.SSLContext | bool = True
        if self.cacert is not None:
            try:
                verify = ssl.create_default_context(cafile=self.cacert)
            except (OSError, ssl.SSLError) as exc:
                _fail(f"--cacert {self.cacert}: not a readable PEM certificate: {exc}", 2)
        return {"headers": headers, "verify": verify}


def server_options(command: Callable[..., None]) -> Callable[..., None]:
    """Add --url, --token and --cacert to a client command, which receives them as `server`."""

    @functools.wraps(command)
    def with_server(url: str, token: str | None, cacert: str | None, **kwargs: Any) -> None:
        command(server=Server(url, token, cacert), **kwargs)

    # wraps() copied the command's click parameters; a list of our own keeps the command's intact.
    with_server.__click_params__ = list(getattr(command, "__click_params__", []))  # type: ignore[attr-defined]
    decorated: Callable[..., None] = url_option(token_option(cacert_option(with_server)))
    return decorated


def _request(method: str, server: Server, path: str, **kwargs: Any) -> httpx.Response:
    import httpx

    try:
        response = httpx.request(
            method, server.endpoint(path), timeout=TIMEOUT_S, **server.options(), **kwargs
        )
    except httpx.HTTPError as exc:
        _fail(f"cannot reach {server.url}: {exc}")
    if response.status_code >= 400:
        _fail_with(response, method, path)
    return response


@contextmanager
def _stream(
    method: str, server: Server, path: str, params: dict[str, Any] | None = None
) -> Iterator[httpx.Response]:
    """A streamed answer without a timeout; an error answer ends the command like `_request`'s."""
    import httpx

    with httpx.stream(
        method, server.endpoint(path), params=params, timeout=None, **server.options()
    ) as response:
        if response.status_code >= 400:
            response.read()
            _fail_with(response, method, path)
        yield response


def _fail_with(response: httpx.Response, method: str, path: str) -> NoReturn:
    try:
        error = response.json()["error"]
        message = f"{error['message']} ({response.status_code} {error['code']})"
    except (ValueError, KeyError, TypeError):
        message = f"{method} {path}: HTTP {response.status_code}"
    _fail(message)


def _print_json(value: Any) -> None:
    """Every JSON the command prints: numbers as people write them (`4`, not `4.0`; see jsonvalues)."""
    click.echo(jsonvalues.dumps(value, indent=2, sort_keys=True))


@main.command()
@server_options
@json_option
def status(server: Server, as_json: bool) -> None:
    """Show the node's state, its peers, the members it knows of and (with several) the datacenters."""
    body = _request("GET", server, "/v1/status").json()
    if as_json:
        _print_json(body)
        return
    role = f"relay of dc {body['dc']}" if body["relay"] else "not a relay"
    click.echo(
        f"node {body['node_id']} (dc {body['dc']}), up {body['uptime_s']:.0f} s, {body['docs']} docs, "
        f"store {body['store']} ({body['durability']}), root {body['merkle_root'][:12]}, {role}"
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
    if body["members"]:
        click.echo("")
        members = [("MEMBER", "DC", "STATE", "FOR", "LAST SEEN", "RELAY")]
        for member in body["members"]:
            members.append(
                (
                    member["node_id"],
                    member["dc"],
                    member["state"],
                    f"{member['state_for_ms'] / 1000:.1f} s",
                    f"{member['last_seen_ago_ms'] / 1000:.1f} s ago",
                    "yes" if member["relay"] else "no",
                )
            )
        _table(members)
    if len(body["datacenters"]) > 1:
        click.echo("")
        dcs = [("DC", "MEMBERS", "ALIVE", "RELAYS", "BEHIND", "LAG")]
        for dc in body["datacenters"]:
            dcs.append(
                (
                    dc["dc"],
                    str(dc["members"]),
                    str(dc["alive"]),
                    ",".join(dc["relays"]) or "-",
                    str(dc["behind_updates"]),
                    f"{dc['lag_ms'] / 1000:.1f} s",
                )
            )
        _table(dcs)


def _table(rows: Sequence[tuple[str, ...]]) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


@main.command()
@server_options
@json_option
@click.option("--prefix", default="", help="Only doc ids starting with this.")
@click.option("--limit", type=int, default=100, show_default=True, help="Page size.")
@click.option("--after", default="", help="Start after this doc id (the previous page's `next`).")
def docs(server: Server, as_json: bool, prefix: str, limit: int, after: str) -> None:
    """List the docs the node holds."""
    body = _request(
        "GET", server, "/v1/docs", params={"prefix": prefix, "limit": limit, "after": after}
    ).json()
    if as_json:
        _print_json(body)
        return
    for doc_id in body["docs"]:
        click.echo(doc_id)
    if body["next"]:
        click.echo(f"(more: --after {body['next']})", err=True)


@main.command()
@server_options
@json_option
@after_option
@wait_ms_option
@click.argument("doc")
@click.argument("key", required=False)
def get(
    server: Server, as_json: bool, after_token: str | None, wait_ms: int | None, doc: str, key: str | None
) -> None:
    """Show a doc's data, or one KEY of it."""
    path = f"/v1/docs/{doc}" + (f"/keys/{key}" if key else "")
    body = _request("GET", server, path, params=wait_params("min_state", after_token, wait_ms)).json()
    if as_json:
        _print_json(body)
    else:
        _print_json(body["value"] if key else body["data"])


@main.command()
@server_options
@json_option
@write_acks_option
@write_wait_ms_option
@click.argument("doc")
@click.argument("key")
@click.argument("value")
def put(
    server: Server, as_json: bool, write_acks: str | None, wait_ms: int | None, doc: str, key: str, value: str
) -> None:
    """Set KEY of DOC to VALUE, a JSON value (e.g. '{"stage": "canary"}', '4', '"text"')."""
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError as exc:
        _fail(f"VALUE is not JSON ({exc}); quote strings: '\"text\"'", 2)
    params = wait_params("write_acks", write_acks, wait_ms)
    body = _request("PUT", server, f"/v1/docs/{doc}/keys/{key}", json=parsed, params=params).json()
    if as_json:
        _print_json(body)
    else:
        click.echo(
            f"set {doc} {key} ({durable(body)}; state vector {body['state_vector']}; token {body['token']})"
        )


@main.command(name="del")
@server_options
@json_option
@write_acks_option
@write_wait_ms_option
@click.argument("doc")
@click.argument("key")
def delete(
    server: Server, as_json: bool, write_acks: str | None, wait_ms: int | None, doc: str, key: str
) -> None:
    """Delete KEY from DOC."""
    params = wait_params("write_acks", write_acks, wait_ms)
    body = _request("DELETE", server, f"/v1/docs/{doc}/keys/{key}", params=params).json()
    if as_json:
        _print_json(body)
    else:
        click.echo(
            f"deleted {doc} {key} ({durable(body)}; state vector {body['state_vector']}; "
            f"token {body['token']})"
        )


@main.command()
@server_options
@json_option
@after_option
@wait_ms_option
@click.argument("doc")
@click.option("--count", type=int, default=0, help="Stop after this many changes (default: until Ctrl-C).")
def watch(
    server: Server, as_json: bool, after_token: str | None, wait_ms: int | None, doc: str, count: int
) -> None:
    """Stream DOC's data every time it changes (the current state first)."""
    import httpx

    seen = 0
    try:
        with _stream(
            "GET", server, f"/v1/docs/{doc}/watch", wait_params("min_state", after_token, wait_ms)
        ) as response:
            for line in response.iter_lines():
                if not line.startswith("data: "):
                    continue
                event = json.loads(line[len("data: ") :])
                click.echo(jsonvalues.dumps(event if as_json else event["data"], sort_keys=True), nl=True)
                seen += 1
                if count and seen >= count:
                    return
    except httpx.HTTPError as exc:
        _fail(f"cannot watch {doc} at {server.url}: {exc}")
    except KeyboardInterrupt:
        pass


@main.command()
@server_options
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="File to write (must not exist).")
def backup(server: Server, out: str) -> None:
    """Write a consistent copy of the node's store to --out while it keeps serving. The copy is
    written to OUT.partial and renamed to OUT only once whole and checked: an interrupted backup
    never stands at OUT."""
    import httpx

    from crdtsync.store.sqlite import StoreError, check_backup_file

    if os.path.exists(out):
        _fail(f"{out} already exists; choose a new file", 2)
    partial = f"{out}.partial"
    size = 0
    try:
        with _stream("POST", server, "/v1/backup") as response, open(partial, "wb") as target:
            for chunk in response.iter_bytes():
                target.write(chunk)
                size += len(chunk)
            target.flush()
            os.fsync(target.fileno())
        check_backup_file(partial)
        os.link(partial, out)  # fails if OUT appeared meanwhile: never overwrite a file
    except (httpx.HTTPError, StoreError, OSError) as exc:
        _fail(f"backup from {server.url} failed: {exc}; nothing was written to {out}")
    finally:
        with suppress(FileNotFoundError):
            os.unlink(partial)
    click.echo(f"backup written to {out} ({size} bytes)")


@main.command()
@server_options
@json_option
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
def restore(server: Server, as_json: bool, file: str) -> None:
    """Merge a backup FILE into the node (CRDT merge: nothing newer is overwritten)."""
    with open(file, "rb") as source:
        body = _request("POST", server, "/v1/restore", content=source.read()).json()
    if as_json:
        _print_json(body)
    else:
        click.echo(f"merged {body['docs']} docs from {file}; anti-entropy spreads them to the peers")


from crdtsync.artifact_cli import artifact  # noqa: E402  (it uses the helpers above)

main.add_command(artifact)

import crdtsync.batch_cli  # noqa: E402, F401  (adds `batch` to main; it uses the helpers above)
from crdtsync import placement_cli as _placement_cli  # noqa: E402, F401  (adds `placement` to main)
from crdtsync import top_cli as _top_cli  # noqa: E402, F401  (adds `top` to main)

if __name__ == "__main__":
    main()
