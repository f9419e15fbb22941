"""`crdtsync batch FILE`: many keys of many docs through `POST /v1/batch` (docs/cli.md#batch)."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import IO, Any

import click

from crdtsync.cli import TIMEOUT_S, Server, _fail, _print_json, json_option, main, server_options

REQUEST_BYTES_MAX = 1024 * 1024
"""A request's body at most (a daemon takes 4 MiB by default, `http.body_bytes_max`)."""
WRITE_INDEX_RE = re.compile(r"^writes\[(\d+)\]")


def read_writes(lines: IO[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, write) of every non-blank line: a JSON object each, else the command fails."""
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            write = json.loads(line)
        except json.JSONDecodeError as exc:
            _fail(f"line {number}: not JSON ({exc})", 2)
        if not isinstance(write, dict):
            _fail(f'line {number}: a write is an object {{"doc": ..., "key": ..., "value": ...}}', 2)
        yield number, write


def chunks(
    writes: Iterator[tuple[int, dict[str, Any]]],
) -> Iterator[tuple[list[int], list[dict[str, Any]]]]:
    """(line numbers, writes) per request: within the route's writes and docs per request and
    REQUEST_BYTES_MAX bytes of body."""
    # The route's module imports the HTTP server (aiohttp): not at `crdtsync` start (cli.py).
    from crdtsync.daemon.batch_http import BATCH_DOCS_MAX, BATCH_WRITES_MAX

    chunk: list[dict[str, Any]] = []
    lines: list[int] = []
    docs: set[Any] = set()
    size = 0
    for number, write in writes:
        encoded = len(json.dumps(write)) + 2
        new_doc = write.get("doc") not in docs
        if chunk and (
            len(chunk) == BATCH_WRITES_MAX
            or (new_doc and len(docs) == BATCH_DOCS_MAX)
            or size + encoded > REQUEST_BYTES_MAX
        ):
            yield lines, chunk
            chunk, lines, docs, size = [], [], set(), 0
        lines.append(number)
        chunk.append(write)
        docs.add(write.get("doc"))
        size += encoded
    if chunk:
        yield lines, chunk


def send(server: Server, lines: list[int], writes: list[dict[str, Any]]) -> dict[str, Any]:
    """One request's answer; a refusal ends the command with the server's message, its
    `writes[i]` named by line number."""
    import httpx  # when it runs, not when `crdtsync serve` starts (cli.py)

    try:
        response = httpx.post(
            server.endpoint("/v1/batch"), json={"writes": writes}, timeout=TIMEOUT_S, **server.options()
        )
    except httpx.HTTPError as exc:
        _fail(f"cannot reach {server.url}: {exc}")
    if response.status_code < 400:
        answer: dict[str, Any] = response.json()
        return answer
    try:
        error = response.json()["error"]
        message = WRITE_INDEX_RE.sub(lambda m: f"line {lines[int(m.group(1))]}", error["message"])
        text = f"{message} ({response.status_code} {error['code']})"
    except (ValueError, KeyError, TypeError, IndexError):
        text = f"POST /v1/batch: HTTP {response.status_code}"
    _fail(f"{text}; nothing from line {lines[0]} on was written")


def _batch(server: Server, as_json: bool, file: IO[str]) -> None:
    """Set or delete many keys of many docs. FILE (- for stdin) holds one write per line:
    {"doc": "models/registry", "key": "llama-3", "value": {"stage": "prod"}} to set a key,
    {"doc": ..., "key": ..., "delete": true} to delete one. Sent in requests of up to 10,000 writes,
    each answered once its writes are stored; a request the node refuses stops the command (the
    requests before it stand)."""
    totals = {"requests": 0, "set": 0, "deleted": 0}
    for lines, writes in chunks(read_writes(file)):
        body = send(server, lines, writes)
        totals["requests"] += 1
        totals["set"] += body["set"]
        totals["deleted"] += body["deleted"]
    if as_json:
        _print_json(totals)
    else:
        click.echo(f"set {totals['set']} keys, deleted {totals['deleted']} in {totals['requests']} requests")


batch: click.Command = click.command(name="batch")(
    server_options(json_option(click.argument("file", type=click.File("r"))(_batch)))
)
main.add_command(batch)
