"""`POST /v1/backup` and `POST /v1/restore` (docs/http-api.md#post-v1backup): a consistent copy of
the node's SQLite store streamed out, and a backup file streamed in (to a temporary file, never held
in memory, at most RESTORE_BYTES_MAX) and merged into the node as CRDT updates."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import sqlite3
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web

from crdtsync.daemon.http_input import ApiError, json_response
from crdtsync.store import StoreCommitError

if TYPE_CHECKING:
    from crdtsync.daemon.http import Api

RESTORE_BYTES_MAX = 1 << 30
TRANSFERS_DIR = "transfers"
"""Under the data dir: the copies a backup streams out and the uploads a restore merges. A daemon
killed in the middle of either leaves its file there, and the next start removes it (the data dir
is this daemon's alone: the store locks it), where the system's temp dir kept it forever."""


def register(app: web.Application, api: Api) -> None:
    """Add the routes to the daemon's application (`Api.app`)."""
    routes = BackupRoutes(api)
    app.router.add_post("/v1/backup", routes.backup)
    app.router.add_post("/v1/restore", routes.restore)


class BackupRoutes:
    def __init__(self, api: Api) -> None:
        self.api = api
        data_dir = api.config.node.data_dir
        self.transfers: str | None = None
        """Where transfers are spooled (None without a data dir: the system's temp dir)."""
        if data_dir is not None:
            transfers = Path(data_dir) / TRANSFERS_DIR
            shutil.rmtree(transfers, ignore_errors=True)  # what a killed daemon left
            transfers.mkdir(parents=True, exist_ok=True)
            self.transfers = str(transfers)

    async def backup(self, request: web.Request) -> web.StreamResponse:
        handle, path = tempfile.mkstemp(prefix="backup-", suffix=".db", dir=self.transfers)
        os.close(handle)
        os.unlink(path)
        try:
            try:
                await self.api.node.backup(path)
            except RuntimeError as exc:
                raise ApiError(409, "no_store", str(exc)) from None
            response = web.StreamResponse(headers={"Content-Type": "application/vnd.sqlite3"})
            await response.prepare(request)
            source = await asyncio.to_thread(open, path, "rb")
            try:
                while chunk := await asyncio.to_thread(source.read, 1 << 20):
                    await response.write(chunk)
            finally:
                source.close()
            await response.write_eof()
            return response
        finally:
            for leftover in (path, f"{path}-wal", f"{path}-shm"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(leftover)

    async def restore(self, request: web.Request) -> web.Response:
        handle, path = tempfile.mkstemp(prefix="restore-", suffix=".db", dir=self.transfers)
        try:
            size = 0
            with os.fdopen(handle, "wb") as target:
                async for chunk in request.content.iter_chunked(1 << 20):
                    size += len(chunk)
                    if size > RESTORE_BYTES_MAX:
                        raise ApiError(413, "too_large", f"backup over {RESTORE_BYTES_MAX} bytes")
                    target.write(chunk)
            if size == 0:
                raise ApiError(400, "empty_body", "send the backup file as the request body")
            self.api.store_guard.check()
            from crdtsync.store.sqlite import StoreError

            try:
                docs = await self.api.node.restore(path)
            except StoreError as exc:
                raise ApiError(400, "bad_backup", str(exc)) from None
            except (sqlite3.Error, ValueError) as exc:
                # A file with a backup's header can be corrupt anywhere after it: SQLite, or the
                # UTF-8 decoding of a text column, refuses it with its own error.
                raise ApiError(400, "bad_backup", f"the backup is corrupt: {exc}") from None
            try:
                await self.api.node.flush()
            except StoreCommitError as exc:
                raise self.api.store_guard.refusal(exc) from None
            return json_response({"docs": docs})
        finally:
            for leftover in (path, f"{path}-wal", f"{path}-shm"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(leftover)
