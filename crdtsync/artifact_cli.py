"""`crdtsync artifact put|ls|get|diff|rm`: large files on a running node (docs/artifacts.md)."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from urllib.parse import quote

import click

from crdtsync import cli
from crdtsync.cli import Server, _fail, _print_json, _request, _stream, json_option, server_options

UPLOAD_PIECE_BYTES = 1024 * 1024


def _artifact() -> None:
    """Large files (checkpoints, model files, datasets) as versions of content-defined chunks.

    NAME is the artifact's name (segments of A-Z a-z 0-9 . _ ~ @ - separated by /); VERSION is a tag
    (latest), a version id or a sequence number.
    """


artifact: click.Group = click.group(name="artifact")(_artifact)


def _path(name: str) -> str:
    return "/v1/artifacts/" + quote(name, safe="/")


def _size(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


@artifact.command()
@server_options
@json_option
@click.option("--tag", default="latest", show_default=True, help="Tag the new version with this.")
@click.argument("name")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
def put(server: Server, as_json: bool, tag: str, name: str, file: str) -> None:
    """Publish FILE as a new version of NAME (streamed, with a progress bar on a terminal)."""
    import httpx  # when it runs, not when `crdtsync serve` starts (cli.py)

    size = os.path.getsize(file)
    started = time.monotonic()
    with click.progressbar(length=size, label="upload", file=sys.stderr) as bar:

        def pieces() -> Iterator[bytes]:
            with open(file, "rb") as source:
                while data := source.read(UPLOAD_PIECE_BYTES):
                    bar.update(len(data))
                    yield data

        headers = {"Content-Length": str(size)}
        try:
            response = httpx.put(
                server.endpoint(_path(name)),
                params={"tag": tag},
                content=pieces(),
                headers={**server.options()["headers"], **headers},
                verify=server.options()["verify"],
                timeout=None,
            )
        except httpx.HTTPError as exc:
            _fail(f"cannot reach {server.url}: {exc}")
    if response.status_code >= 400:
        cli._fail_with(response, "PUT", _path(name))
    body = response.json()
    if as_json:
        _print_json(body)
        return
    seconds = time.monotonic() - started
    click.echo(
        f"{name} version {body['version']} (#{body['seq']}, {tag}): {_size(body['bytes_total'])}, "
        f"{_size(body['bytes_new'])} new in {body['chunks_new']} of {body['chunks']} chunks, {seconds:.1f} s"
    )


@artifact.command(name="ls")
@server_options
@json_option
@click.argument("name", required=False)
def ls(server: Server, as_json: bool, name: str | None) -> None:
    """The versions of NAME this node knows, where each is complete; without NAME, the artifacts
    this node has, its chunk store and its transfer counters."""
    if name is None:
        overview = _request("GET", server, "/v1/artifacts").json()
        if as_json:
            _print_json(overview)
            return
        for artifact_name in overview["artifacts"]:
            click.echo(artifact_name)
        store, transfer = overview["store"], overview["transfer"]
        click.echo(
            f"store: {store['chunks']} chunks, {_size(store['bytes_stored'])} in {store['pack_files']} packs; "
            f"fetched {_size(transfer['bytes_fetched'])} ({_size(transfer['bytes_fetched_wan'])} across the WAN), "
            f"served {_size(transfer['bytes_served'])}, refused {transfer['chunks_refused']} chunks"
        )
        return
    body = _request("GET", server, _path(name)).json()
    if as_json:
        _print_json(body)
        return
    rows = [("SEQ", "VERSION", "SIZE", "CHUNKS", "TAGS", "FROM", "COMPLETE ON")]
    for version in body["versions"]:
        rows.append(
            (
                str(version["seq"]),
                version["version"],
                _size(version["bytes_total"]),
                str(version["chunks"]),
                ",".join(version["tags"]) or "-",
                f"{version['node']}@{version['dc']}",
                ",".join(version["complete_on"]) or "-",
            )
        )
    cli._table(rows)


@artifact.command()
@server_options
@click.option("--version", "ref", default="latest", show_default=True, help="Tag, version id or number.")
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="The new file to write.")
@click.argument("name")
def get(server: Server, ref: str, out: str, name: str) -> None:
    """Write a version of NAME to --out (whole or not at all)."""
    import httpx

    if os.path.exists(out):
        _fail(f"{out} already exists; choose a new file", 2)
    partial = f"{out}.part"
    path = f"{_path(name)}/versions/{quote(ref, safe='')}"
    try:
        with _stream("GET", server, path) as response, open(partial, "wb") as target:
            total = int(response.headers.get("Content-Length", "0"))
            with click.progressbar(length=total, label="download", file=sys.stderr) as bar:
                for data in response.iter_bytes():
                    target.write(data)
                    bar.update(len(data))
            version = response.headers.get("X-Artifact-Version", "?")
        os.replace(partial, out)
    except httpx.HTTPError as exc:
        _fail(f"get from {server.url} failed: {exc}")
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
    click.echo(f"{name} version {version} written to {out} ({_size(os.path.getsize(out))})")


@artifact.command()
@server_options
@json_option
@click.argument("name")
@click.argument("old")
@click.argument("new", default="latest")
def diff(server: Server, as_json: bool, name: str, old: str, new: str) -> None:
    """Bytes and tensors changed from version OLD to NEW (default latest) of NAME."""
    body = _request("GET", server, f"{_path(name)}/diff", params={"from": old, "to": new}).json()
    if as_json:
        _print_json(body)
        return
    click.echo(
        f"{body['from']} -> {body['to']}: {_size(body['bytes_changed'])} changed in "
        f"{body['chunks_changed']} chunks ({_size(body['bytes_from'])} -> {_size(body['bytes_to'])})"
    )
    counts = (body["tensors_changed_count"], body["tensors_added_count"], body["tensors_removed_count"])
    if any(counts) or body["tensors_unchanged_count"]:
        click.echo(
            f"tensors: {counts[0]} changed, {counts[1]} added, {counts[2]} removed, "
            f"{body['tensors_unchanged_count']} unchanged"
        )
        for label, key in (
            ("changed", "tensors_changed"),
            ("added", "tensors_added"),
            ("removed", "tensors_removed"),
        ):
            for tensor in body[key]:
                click.echo(f"  {label:8} {tensor}")


@artifact.command()
@server_options
@click.argument("name")
@click.argument("version")
def rm(server: Server, name: str, version: str) -> None:
    """Delete VERSION of NAME (everywhere, as the manifest replicates)."""
    body = _request("DELETE", server, f"{_path(name)}/versions/{quote(version, safe='')}").json()
    click.echo(f"{name} version {body['deleted']} deleted")
