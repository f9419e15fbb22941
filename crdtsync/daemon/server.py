"""`crdtsync serve`: a node with the HTTP API, until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import logging
import signal

from aiohttp import web

from crdtsync.daemon.config import DaemonConfig, parse_http_listen
from crdtsync.daemon.http import Api
from crdtsync.node import Node

log = logging.getLogger("crdtsync.daemon")


async def serve(config: DaemonConfig, ready: asyncio.Event | None = None) -> None:
    """Run until SIGTERM/SIGINT: then stop taking requests, flush the store and close sockets."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    if config.node.durability == "none" and config.node.data_dir is not None:
        log.warning("durability is none: acknowledged writes may be lost if the process is killed")
    async with Node(config.node) as node:
        api = Api(node, config)
        runner = web.AppRunner(api.app(), access_log=None, handle_signals=False)
        await runner.setup()
        host, port = parse_http_listen(config.http.listen)
        try:
            site = web.TCPSite(runner, host, port, reuse_address=True)
            await site.start()
        except OSError as exc:
            await runner.cleanup()
            raise OSError(f"cannot listen for HTTP on {config.http.listen}: {exc}") from exc
        log.info(
            "serving",
            extra={
                "node_id": config.node.node_id,
                "dc": config.dc,
                "listen": config.node.listen,
                "http": f"http://{config.http.listen}",
                "data_dir": config.node.data_dir,
                "durability": config.node.durability,
                "peers": config.node.peers,
            },
        )
        if ready is not None:
            ready.set()
        await stop.wait()
        log.info("stopping: flushing the store and closing sockets")
        await runner.cleanup()
        await node.flush()
    log.info("stopped")
