"""`crdtsync serve`: a node with the HTTP API, until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import signal

from aiohttp import web

from crdtsync.daemon.config import DaemonConfig, is_loopback, parse_http_listen, tls_context
from crdtsync.daemon.http import Api
from crdtsync.node import Node
from crdtsync.store import StoreCommitError

log = logging.getLogger("crdtsync.daemon")


def warn_about_access(config: DaemonConfig) -> None:
    """Say at start who can use the HTTP API when that is more than the token holders over TLS."""
    host, _ = parse_http_listen(config.http.listen)
    local = is_loopback(host)
    if not config.tokens:
        log.warning(
            "the HTTP API has no tokens (http.tokens_file is not set): anyone who can reach %s can read "
            "and write every doc, back up and restore the store%s",
            config.http.listen,
            " (only this host: it listens on loopback)" if local else "",
        )
    elif not config.http.tls_cert and not local:
        log.warning(
            "the HTTP API listens on %s without TLS (http.tls_cert): bearer tokens and data cross the "
            "network in clear",
            config.http.listen,
        )


FILES_PER_PEER = 6
"""Descriptors a node holds per linked peer: its request and subscription sockets (an event fd and a
TCP connection each) and the peer's two connections to this node's ROUTER and PUB."""
FILES_BASE = 64
SHUTDOWN_REQUESTS_TIMEOUT_S = 2.0
"""At SIGTERM, how long requests in progress get to finish before they are cut: a client that
stalls in the middle of a request body held the stop for aiohttp's 60 s (5 s when its own timeout
gave up first). A write cut here was not acknowledged; one answered before it was."""


def raise_open_files_limit(members_max: int, websockets_max: int = 0, watchers_max: int = 0) -> None:
    """Raise the soft limit on open files to the hard one: a node in a full mesh of `members_max`
    holds about FILES_PER_PEER descriptors per peer, and one per WebSocket connection (up to
    `websockets_max`) and per watch stream (up to `watchers_max`), far past the usual soft limit of
    1024 (Go's runtime does the same at start). Warn when even the hard limit is below that need:
    out of descriptors, the server stops accepting connections, HTTP requests included."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = FILES_PER_PEER * members_max + websockets_max + watchers_max + FILES_BASE
    if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
    if soft != resource.RLIM_INFINITY and soft < needed:
        log.warning(
            "the open files limit is %d: a node linked to %d members with %d WebSocket connections "
            "and %d watch streams needs about %d (raise it with ulimit -n or LimitNOFILE=, or lower "
            "membership.members_max, websocket.connections_max or http.watchers_max)",
            soft,
            members_max,
            websockets_max,
            watchers_max,
            needed,
        )


async def serve(config: DaemonConfig, ready: asyncio.Event | None = None) -> None:
    """Run until SIGTERM/SIGINT: then stop taking requests, flush the store and close sockets."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    if config.node.curve is None:
        log.warning(
            "replication links are in plaintext (security.mode = plaintext): anyone who can reach "
            "the replication ports can read and write every doc"
        )
    raise_open_files_limit(
        config.node.membership.members_max, config.websocket.connections_max, config.http.watchers_max
    )
    if config.node.durability == "none" and config.node.data_dir is not None:
        log.warning("durability is none: acknowledged writes may be lost if the process is killed")
    context = tls_context(config.http)
    warn_about_access(config)
    async with Node(config.node) as node:
        api = Api(node, config)
        runner = web.AppRunner(
            api.app(), access_log=None, handle_signals=False, shutdown_timeout=SHUTDOWN_REQUESTS_TIMEOUT_S
        )
        await runner.setup()
        host, port = parse_http_listen(config.http.listen)
        try:
            site = web.TCPSite(runner, host, port, reuse_address=True, ssl_context=context)
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise OSError(f"cannot listen for HTTP on {config.http.listen}: {exc}") from exc
        log.info(
            "serving",
            extra={
                "node_id": config.node.node_id,
                "dc": config.node.dc,
                "listen": config.node.listen,
                "http": f"{'https' if context else 'http'}://{config.http.listen}",
                "http_tokens": len(config.tokens),
                "data_dir": config.node.data_dir,
                "durability": config.node.durability,
                "peers": config.node.peers,
            },
        )
        if ready is not None:
            ready.set()
        await stop.wait()
        log.info("stopping: flushing the store and closing sockets")
        api.close_streams()
        await runner.cleanup()
        api.forwarding.close()
        try:
            await node.flush()
        except StoreCommitError as exc:
            # Nothing of it was acknowledged; closing tries it once more and logs what is lost.
            log.error("stopping while the store cannot commit: %s", exc)
    log.info("stopped")
