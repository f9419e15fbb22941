"""The daemon's artifact routes (docs/artifacts.md, docs/http-api.md):

- `PUT /v1/artifacts/{name}[?tag=latest]`: the body (streamed to a spool file, never held in memory)
  becomes a version; answers `version`, `seq`, `bytes_total`, `bytes_new`, `chunks`, `chunks_new`;
- `GET /v1/artifacts/{name}`: the versions, with tags and the nodes that hold each one complete;
- `GET /v1/artifacts/{name}/versions/{version}`: the file, streamed; `latest`, any tag, a version id
  or a sequence number; one `Range: bytes=A-B` range answers 206;
- `DELETE /v1/artifacts/{name}/versions/{version}`;
- `GET /v1/artifacts/{name}/diff?from=A&to=B`: bytes, chunks and tensors changed;
- `GET /v1/artifacts`: the artifacts this node has, its chunk store and transfer counters;
- `POST /v1/artifacts/collect[?grace_s=3600]`: delete the chunks no manifest names (after the grace).

Transfer counters and the chunk store are also metrics (`crdtsync_artifact_*`). The daemon runs
`collect` every `[artifacts] collect_interval_s` with `collect_grace_s`.

A name may not have a segment `versions` or `diff` (they end the name in these paths).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import tempfile
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any, NoReturn

from aiohttp import web
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from crdtsync.artifacts import (
    ArtifactError,
    ArtifactIncompleteError,
    ArtifactNotFoundError,
    ArtifactTooLargeError,
    ArtifactVersion,
)
from crdtsync.artifacts.api import GC_GRACE_S
from crdtsync.artifacts.manifest import DOC_PREFIX
from crdtsync.daemon import jsonvalues
from crdtsync.daemon.http_input import ApiError
from crdtsync.daemon.metrics import PREFIX

if TYPE_CHECKING:
    from prometheus_client import Metric

    from crdtsync.daemon.http import Api
    from crdtsync.node import Node

log = logging.getLogger("crdtsync.artifacts")

PATH = "/v1/artifacts/{rest:.+}"
RESERVED_SEGMENTS = frozenset({"versions", "diff", "collect"})
NAMES_MAX = 1000
SPOOL_READ_BYTES = 1024 * 1024
PUTS_IN_FLIGHT_MAX = 4
"""PUT bodies spooled at once (each up to `bytes_per_version_max` on disk): more answer 503."""
RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")


def register(app: web.Application, api: Api) -> None:
    """Add the routes to the daemon's application (`Api.app`)."""
    api.node.artifacts.transfer.config = api.config.artifacts
    spool_dir = os.path.join(api.node.artifacts.directory, "incoming")
    if os.path.isdir(spool_dir):  # bodies of PUTs a crash cut short: nothing names them
        for leftover in os.listdir(spool_dir):
            os.unlink(os.path.join(spool_dir, leftover))
    routes = ArtifactRoutes(api)
    app.router.add_get("/v1/artifacts", routes.overview)
    app.router.add_post("/v1/artifacts/collect", routes.collect)
    app.router.add_route("*", PATH, routes.route)
    api.registry.register(ArtifactCollector(api.node))
    app.cleanup_ctx.append(routes.collecting)


def _fail(status: int, code: str, message: str) -> NoReturn:
    raise ApiError(status, code, message)


def version_json(version: ArtifactVersion) -> dict[str, Any]:
    return {
        "version": version.version,
        "seq": version.seq,
        "bytes_total": version.bytes_total,
        "chunks": version.chunks,
        "format": version.format,
        "created_ms": version.created_ms,
        "node": version.node,
        "dc": version.dc,
        "tags": list(version.tags),
        "complete_on": list(version.complete_on),
    }


class ArtifactRoutes:
    def __init__(self, api: Api) -> None:
        self.api = api
        self.node = api.node
        self.puts_in_flight = 0

    async def route(self, request: web.Request) -> web.StreamResponse:
        rest: str = request.match_info["rest"]
        name, _, tail = rest.partition("/versions/")
        try:
            if tail:
                if "/" in tail:
                    _fail(400, "bad_version", f"a version reference has no slash: {tail!r:.80}")
                return await self._one_version(request, self._name(name), tail)
            if rest.endswith("/diff") and request.method == "GET":
                return await self.diff(request, self._name(rest.removesuffix("/diff")))
            name = self._name(rest)
            if request.method == "PUT":
                return await self.put(request, name)
            if request.method == "GET":
                versions = await self.node.artifacts.ls(name)
                return self._json({"name": name, "versions": [version_json(v) for v in versions]})
            _fail(405, "method_not_allowed", f"{request.method} is not allowed on an artifact")
        except ArtifactNotFoundError as exc:
            _fail(404, "no_such_artifact", str(exc))
        except ArtifactTooLargeError as exc:
            _fail(413, "too_large", str(exc))
        except ArtifactIncompleteError as exc:
            from crdtsync.daemon import causal_http

            details = {"chunks_missing": exc.chunks_missing, "bytes_missing": exc.bytes_missing}
            raise causal_http.RequestError(409, "incomplete", str(exc), details) from None
        except ArtifactError as exc:
            _fail(400, "bad_artifact_request", str(exc))

    async def collecting(self, app: web.Application) -> AsyncIterator[None]:
        """The daemon's collection and prefetch timers, for the life of the application."""
        config = self.api.config.artifacts
        tasks = []
        if config.collect_interval_s > 0:
            tasks.append(
                asyncio.create_task(self._collect_every(config.collect_interval_s, config.collect_grace_s))
            )
        if config.prefetch_interval_s > 0:
            tasks.append(asyncio.create_task(self._prefetch_every(config.prefetch_interval_s)))
        yield
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _prefetch_every(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)  # a timer: prefetching is periodic
            try:
                fetched = await self.node.artifacts.prefetch()
            except Exception:
                log.exception("artifact prefetch failed; it runs again in %.0f s", interval_s)
                continue
            for name, version in fetched:
                log.info("prefetched %s version %s for this datacenter", name, version)

    async def _collect_every(self, interval_s: float, grace_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)  # a timer: collection is periodic, not a wait for a condition
            try:
                result = await self.node.artifacts.collect(grace_s)
            except Exception:
                log.exception("artifact chunk collection failed; it runs again in %.0f s", interval_s)
                continue
            if result.chunks_deleted:
                log.info(
                    "collected %d unreferenced chunks (%d bytes), %d packs compacted",
                    result.chunks_deleted,
                    result.bytes_deleted,
                    result.packs_compacted,
                )

    async def overview(self, request: web.Request) -> web.Response:
        artifacts = self.node.artifacts
        names = [
            doc_id.removeprefix(DOC_PREFIX)
            for doc_id in self.node.doc_ids(prefix=DOC_PREFIX, limit=NAMES_MAX)
        ]
        store = artifacts.store.stats()
        return self._json(
            {
                "artifacts": names,
                "store": {
                    "chunks": store.chunks,
                    "bytes_stored": store.bytes_stored,
                    "pack_files": store.pack_files,
                    "pack_bytes": store.pack_bytes,
                    "corrupt_dropped": store.corrupt_dropped,
                },
                "transfer": artifacts.transfer.counters.as_dict(),
                "manifests_refused": artifacts.manifests_refused,
            }
        )

    async def collect(self, request: web.Request) -> web.Response:
        text = request.query.get("grace_s", str(GC_GRACE_S))
        try:
            grace_s = float(text)
        except ValueError:
            grace_s = -1.0
        if not 0.0 <= grace_s <= 1e9:
            _fail(400, "bad_grace", f"grace_s must be a number of seconds in 0..1e9, got {text!r:.40}")
        result = await self.node.artifacts.collect(grace_s)
        return self._json(
            {
                "chunks_deleted": result.chunks_deleted,
                "bytes_deleted": result.bytes_deleted,
                "packs_compacted": result.packs_compacted,
            }
        )

    @staticmethod
    def _name(name: str) -> str:
        if RESERVED_SEGMENTS & set(name.split("/")):
            _fail(
                400,
                "bad_artifact_name",
                f"artifact name {name!r:.80} uses a reserved segment (versions, diff)",
            )
        return name

    @staticmethod
    def _json(body: Any, status: int = 200) -> web.Response:
        return web.json_response(body, status=status, dumps=jsonvalues.dumps)

    async def _one_version(self, request: web.Request, name: str, ref: str) -> web.StreamResponse:
        if request.method in ("GET", "HEAD"):
            return await self.get(request, name, ref)
        if request.method == "DELETE":
            version = await self.node.artifacts.resolve(name, ref)
            await self.node.artifacts.delete(name, version.version)
            return self._json({"name": name, "deleted": version.version})
        _fail(405, "method_not_allowed", f"{request.method} is not allowed on a version")

    async def put(self, request: web.Request, name: str) -> web.Response:
        if self.puts_in_flight >= PUTS_IN_FLIGHT_MAX:
            _fail(
                503,
                "too_many_puts",
                f"{PUTS_IN_FLIGHT_MAX} artifact PUTs are in progress on this node: retry later",
            )
        self.puts_in_flight += 1
        try:
            return await self._put(request, name)
        finally:
            self.puts_in_flight -= 1

    async def _put(self, request: web.Request, name: str) -> web.Response:
        artifacts = self.node.artifacts
        limit = artifacts.limits.bytes_per_version_max
        if request.content_length is not None and request.content_length > limit:
            _fail(
                413,
                "too_large",
                f"body of {request.content_length} bytes is over bytes_per_version_max {limit}",
            )
        spool_dir = os.path.join(artifacts.directory, "incoming")
        os.makedirs(spool_dir, exist_ok=True)
        fd, spool = tempfile.mkstemp(dir=spool_dir)
        try:
            with os.fdopen(fd, "wb") as file:
                size = 0
                while data := await request.content.read(SPOOL_READ_BYTES):
                    size += len(data)
                    if size > limit:
                        _fail(413, "too_large", f"body over bytes_per_version_max {limit} bytes")
                    await asyncio.to_thread(file.write, data)
            result = await artifacts.put(name, spool, tag=request.query.get("tag", "latest"))
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(spool)
        body = {
            "name": name,
            "version": result.version,
            "seq": result.seq,
            "bytes_total": result.bytes_total,
            "bytes_new": result.bytes_new,
            "chunks": result.chunks,
            "chunks_new": result.chunks_new,
        }
        return self._json(body, status=201)

    async def get(self, request: web.Request, name: str, ref: str) -> web.StreamResponse:
        version = await self.node.artifacts.resolve(name, ref)
        start, end, partial = _range(request.headers.get("Range"), version.bytes_total)
        _, stream = await self.node.artifacts.open_range(name, version.version, start, end)
        response = web.StreamResponse(status=206 if partial else 200)
        response.content_type = "application/octet-stream"
        response.content_length = end - start
        response.headers["X-Artifact-Version"] = version.version
        response.headers["Accept-Ranges"] = "bytes"
        if partial:
            response.headers["Content-Range"] = f"bytes {start}-{end - 1}/{version.bytes_total}"
        await response.prepare(request)
        if request.method == "GET":
            async for data in stream:
                await response.write(data)
        await response.write_eof()
        return response

    async def diff(self, request: web.Request, name: str) -> web.Response:
        old, new = request.query.get("from"), request.query.get("to", "latest")
        if old is None:
            _fail(400, "bad_diff", "diff needs from=VERSION (and to=VERSION, default latest)")
        diff = await self.node.artifacts.diff(name, old, new)
        return self._json(
            {
                "name": name,
                "from": diff.old,
                "to": diff.new,
                "bytes_from": diff.bytes_old,
                "bytes_to": diff.bytes_new_total,
                "bytes_changed": diff.bytes_changed,
                "chunks_changed": diff.chunks_changed,
                "tensors_changed": list(diff.tensors_changed),
                "tensors_added": list(diff.tensors_added),
                "tensors_removed": list(diff.tensors_removed),
                "tensors_changed_count": diff.tensors_changed_count,
                "tensors_added_count": diff.tensors_added_count,
                "tensors_removed_count": diff.tensors_removed_count,
                "tensors_unchanged_count": diff.tensors_unchanged_count,
            }
        )


def _range(header: str | None, size: int) -> tuple[int, int, bool]:
    """[start, end) of one `Range: bytes=A-B` (or `A-`, `-N`) header, and whether it was a range."""
    if header is None:
        return 0, size, False
    match = RANGE_RE.match(header.strip())
    if match is None or match.groups() == ("", ""):
        _fail(416, "bad_range", f"Range {header!r:.80} is not one range bytes=A-B, bytes=A- or bytes=-N")
    first, last = match.groups()
    if first == "":
        start, end = max(size - int(last), 0), size
    else:
        start, end = int(first), size if last == "" else min(int(last) + 1, size)
    if start >= size or start >= end:
        _fail(416, "bad_range", f"Range {header!r:.80} is outside the {size} bytes of the version")
    return start, end, True


class ArtifactCollector(Collector):
    """The chunk store and the transfer counters of `node.artifacts`."""

    def __init__(self, node: Node) -> None:
        self.node = node

    def collect(self) -> Iterator[Metric]:
        artifacts = self.node.artifacts
        for name, value in artifacts.transfer.counters.as_dict().items():
            counter = CounterMetricFamily(
                f"{PREFIX}_artifact_{name}", f"Chunk transfer: {name.replace('_', ' ')}."
            )
            counter.add_metric([], value)
            yield counter
        stats = artifacts.store.stats()
        for name, value in (
            ("chunks", stats.chunks),
            ("bytes_stored", stats.bytes_stored),
            ("pack_bytes", stats.pack_bytes),
        ):
            gauge = GaugeMetricFamily(
                f"{PREFIX}_artifact_store_{name}", f"Chunk store: {name.replace('_', ' ')}."
            )
            gauge.add_metric([], value)
            yield gauge
        corrupt = CounterMetricFamily(
            f"{PREFIX}_artifact_store_corrupt_dropped",
            "Stored chunks whose bytes no longer matched their id.",
        )
        corrupt.add_metric([], stats.corrupt_dropped)
        yield corrupt
