"""`node.artifacts`: put, list, get, diff and delete versions of large files (docs/artifacts.md).

A put chunks the file on a worker thread (streamed), appends the chunks the store lacks, makes them
durable, and only then writes the manifest into the artifact's doc and flushes it: a version is
acknowledged (put returns) once its chunks and its manifest are durable, and no manifest names a
chunk this node does not hold. The manifest replicates like
any doc; a node that lacks chunks of a version fetches them from the nodes that hold it complete
(`transfer`) before it serves it, and answers `ArtifactIncompleteError` naming how much is missing
when no holder can give them, never a truncated file.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pycrdt import Doc, Map

from crdtsync.artifacts import manifest
from crdtsync.artifacts.chunking import ChunkSizes, chunk_file
from crdtsync.artifacts.manifest import (
    TABLE_ENTRIES_PER_PIECE,
    ArtifactError,
    ArtifactLimits,
    ArtifactNotFoundError,
    ArtifactTooLargeError,
    ManifestError,
    VersionRecord,
)
from crdtsync.artifacts.store import ChunkStore, ChunkWriter, CollectResult
from crdtsync.artifacts.tensors import ArtifactDiff, diff_tables
from crdtsync.artifacts.transfer import Transfer, TransferError

if TYPE_CHECKING:
    from crdtsync.node import Node

GC_GRACE_S = 3600.0
"""Unreferenced chunks younger than this are kept: a put in another process, a transfer, a manifest
still on its way."""
READ_BATCH_BYTES = 4 * 1024 * 1024
PREFETCH_ARTIFACTS_MAX = 1000
"""The artifacts one `prefetch` looks at (in name order)."""


class ArtifactIncompleteError(ArtifactError):
    """This node lacks chunks of the version: nothing was written."""

    def __init__(self, message: str, chunks_missing: int, bytes_missing: int) -> None:
        super().__init__(message)
        self.chunks_missing = chunks_missing
        self.bytes_missing = bytes_missing


@dataclass(frozen=True, slots=True)
class PutResult:
    name: str
    version: str
    seq: int
    bytes_total: int
    bytes_new: int
    chunks: int
    chunks_new: int


@dataclass(frozen=True, slots=True)
class ArtifactVersion:
    name: str
    version: str
    seq: int
    bytes_total: int
    chunks: int
    format: str
    created_ms: int
    node: str
    dc: str
    tags: tuple[str, ...]
    complete_on: tuple[str, ...]
    """The nodes that said they hold every chunk of it."""


@dataclass(slots=True)
class _Chunked:
    table: list[bytes] = field(default_factory=list)
    bytes_total: int = 0
    chunks: int = 0
    chunks_new: int = 0
    format: str = "bytes"


class Artifacts:
    """The artifacts of one node; created by `Node.artifacts`."""

    def __init__(
        self,
        node: Node,
        directory: str | None,
        *,
        limits: ArtifactLimits | None = None,
        sizes: ChunkSizes | None = None,
    ) -> None:
        self._node = node
        self._temporary = (
            None if directory is not None else tempfile.TemporaryDirectory(prefix="crdtsync-chunks-")
        )
        self.directory = directory if directory is not None else self._temporary.name  # type: ignore[union-attr]
        self.limits = limits or ArtifactLimits()
        self.sizes = sizes or ChunkSizes()
        self.store = ChunkStore(self.directory)
        self.transfer = Transfer(node, self.store)
        self.transfer.holders_of = self._holders_of
        self.manifests_refused = 0
        """Replicated manifest records ignored for breaking the format or the limits."""

    def close(self) -> None:
        self.transfer.close()
        self.store.close()
        if self._temporary is not None:
            self._temporary.cleanup()

    # ------------------------------------------------------------------ put

    async def put(self, name: str, path: str, *, tag: str = "latest") -> PutResult:
        """Publish the file at `path` as a new version of `name` (or the existing version with the
        same bytes), tag it, and return once its chunks and manifest are durable here."""
        doc_id = manifest.doc_id(name)
        manifest.check_tag(tag)
        writer = self.store.writer()
        try:
            chunked = await asyncio.to_thread(self._chunk_into, path, writer)
            version = manifest.version_id(chunked.table, chunked.bytes_total)
            doc = await self._node.open(doc_id)
            try:
                seq = self._record(doc, version, chunked)
                doc.get("tags", type=Map)[tag] = version
                doc.get("complete", type=Map)[f"{version} {self._node.config.node_id}"] = self._node.config.dc
                await self._node.flush()
            finally:
                self._node.release(doc_id)
        finally:
            writer.close()
        return PutResult(
            name, version, seq, chunked.bytes_total, writer.bytes_new, chunked.chunks, chunked.chunks_new
        )

    def _chunk_into(self, path: str, writer: ChunkWriter) -> _Chunked:
        """On a worker thread: every chunk of the file and its table pieces into `writer`, durable."""
        limits = self.limits
        size = os.path.getsize(path)
        if size > limits.bytes_per_version_max:
            raise ArtifactTooLargeError(
                f"{path} is {size} bytes, over bytes_per_version_max {limits.bytes_per_version_max}"
            )
        chunked = _Chunked(format=_format_of(path))
        entries: list[tuple[bytes, int]] = []
        for chunk, data in chunk_file(path, self.sizes):
            chunked.chunks += 1
            if chunked.chunks > limits.chunks_per_version_max:
                raise ArtifactTooLargeError(
                    f"{path} cuts into more than chunks_per_version_max {limits.chunks_per_version_max} chunks"
                )
            chunked.chunks_new += writer.add(chunk.chunk_id, data)
            chunked.bytes_total += chunk.length
            entries.append((chunk.chunk_id, chunk.length))
            if len(entries) == TABLE_ENTRIES_PER_PIECE:
                chunked.table.append(_add_piece(writer, entries))
                entries = []
        if entries:
            chunked.table.append(_add_piece(writer, entries))
        writer.commit()
        return chunked

    def _record(self, doc: Doc[Any], version: str, chunked: _Chunked) -> int:
        versions = doc.get("versions", type=Map)
        records = self._records(doc)
        if version in versions:
            return next(record.seq for record in records if record.version == version)
        if len(records) >= self.limits.versions_per_artifact_max:
            raise ArtifactTooLargeError(
                f"the artifact has {len(records)} versions, versions_per_artifact_max "
                f"{self.limits.versions_per_artifact_max}: delete some first"
            )
        seq = max((record.seq for record in records), default=0) + 1
        record = VersionRecord(
            version=version,
            seq=seq,
            bytes_total=chunked.bytes_total,
            chunks=chunked.chunks,
            table=tuple(chunked.table),
            format=chunked.format,
            created_ms=int(time.time() * 1000),
            node=self._node.config.node_id,
            dc=self._node.config.dc,
        )
        versions[version] = record.to_doc()
        return seq

    # ------------------------------------------------------------------ read the manifests

    def _records(self, doc: Doc[Any]) -> list[VersionRecord]:
        records = []
        for version, value in doc.get("versions", type=Map).to_py().items():
            try:
                records.append(manifest.parse_record(version, value, self.limits))
            except ManifestError:
                self.manifests_refused += 1
        records.sort(key=lambda record: (record.seq, record.version))
        return records

    async def _snapshot(self, name: str) -> tuple[list[VersionRecord], dict[str, str], dict[str, list[str]]]:
        doc_id = manifest.doc_id(name)
        had_doc = self._node.has_doc(doc_id)
        if not had_doc and self._node.holds(doc_id):
            raise ArtifactNotFoundError(f"no artifact {name!r} on this node")
        doc = await self._node.open(doc_id)  # a doc placed elsewhere is followed from a holder
        try:
            records = self._records(doc)
            tags = {k: v for k, v in doc.get("tags", type=Map).to_py().items() if isinstance(v, str)}
            complete: dict[str, list[str]] = {}
            for key in doc.get("complete", type=Map).to_py():
                version, _, node_id = key.partition(" ")
                complete.setdefault(version, []).append(node_id)
        finally:
            self._node.release(doc_id)
        if not had_doc and not records and not tags:
            raise ArtifactNotFoundError(f"no artifact {name!r} on this node or its holders")
        return records, tags, complete

    async def ls(self, name: str) -> list[ArtifactVersion]:
        """The versions of `name` this node knows of, oldest first."""
        records, tags, complete = await self._snapshot(name)
        return [_version(name, record, tags, complete) for record in records]

    async def resolve(self, name: str, ref: str) -> ArtifactVersion:
        """The version `ref` names: a tag (`latest`), a version id, or a sequence number."""
        versions = await self.ls(name)
        tags = {tag for version in versions for tag in version.tags}
        if ref in tags:
            return next(version for version in versions if ref in version.tags)
        found = [v for v in versions if v.version == ref or (ref.isdigit() and v.seq == int(ref))]
        if len(found) > 1:
            ids = ", ".join(v.version for v in found)
            raise ArtifactError(
                f"{name}: {ref} names {len(found)} versions published concurrently ({ids}): use an id"
            )
        if not found:
            raise ArtifactNotFoundError(f"{name} has no version or tag {ref!r}")
        return found[0]

    async def _resolved(self, name: str, ref: str) -> VersionRecord:
        wanted = await self.resolve(name, ref)
        records, _, _ = await self._snapshot(name)
        return next(record for record in records if record.version == wanted.version)

    # ------------------------------------------------------------------ get

    def entries(self, record: VersionRecord) -> Iterator[tuple[bytes, int]]:
        """(chunk id, length) of every chunk of the version, in file order (blocking: the table)."""
        for piece in record.table:
            yield from manifest.decode_piece(self.store.read(piece))

    def _lacking(self, record: VersionRecord) -> list[tuple[bytes, int]]:
        """The chunks of the version this node lacks, each once, with their lengths (its table
        pieces, with length 0, when it lacks some of those)."""
        pieces = self.store.missing(record.table)
        if pieces:
            return [(piece, 0) for piece in pieces]
        lengths = dict(self.entries(record))
        return [(chunk, lengths[chunk]) for chunk in self.store.missing(lengths)]

    def _check_complete(self, name: str, record: VersionRecord) -> None:
        lacking = self._lacking(record)
        if lacking and lacking[0][1] == 0:
            raise ArtifactIncompleteError(
                f"{name} version {record.version}: this node lacks {len(lacking)} of the {len(record.table)} "
                f"pieces of its chunk table ({record.chunks} chunks, {record.bytes_total} bytes)",
                record.chunks,
                record.bytes_total,
            )
        if lacking:
            bytes_missing = sum(length for _, length in lacking)
            raise ArtifactIncompleteError(
                f"{name} version {record.version}: this node lacks {len(lacking)} of its {record.chunks} "
                f"chunks ({bytes_missing} of {record.bytes_total} bytes)",
                len(lacking),
                bytes_missing,
            )

    async def fetch(self, name: str, version: str = "latest") -> int:
        """Make this node hold every chunk of the version: those it lacks come from the nodes that
        hold it complete, its own datacenter first (`transfer`); then it is listed complete here
        too. Returns the chunk bytes fetched. ArtifactIncompleteError naming what no holder gave."""
        record = await self._resolved(name, version)
        holders = list((await self.resolve(name, record.version)).complete_on)
        fetched = self.transfer.counters.bytes_fetched
        writer = self.store.writer()
        try:
            for _ in range(2):  # the table's pieces first, then the chunks they name
                lacking = await asyncio.to_thread(self._lacking, record)
                if not lacking:
                    break
                try:
                    await self.transfer.fetch(lacking, holders, writer, name, record.version)
                except TransferError as exc:
                    raise ArtifactIncompleteError(
                        f"{name} version {record.version}: {exc}", exc.chunks_missing, exc.bytes_missing
                    ) from None
            await asyncio.to_thread(self._check_complete, name, record)
            if self._node.config.node_id not in holders:
                await self._mark_complete(name, record.version)
        finally:
            writer.close()
        return self.transfer.counters.bytes_fetched - fetched

    async def _holders_of(self, name: str, version: str) -> list[str]:
        """The nodes complete for the version ([] when this node does not know it)."""
        try:
            return list((await self.resolve(name, version)).complete_on)
        except ArtifactError:
            return []

    async def _mark_complete(self, name: str, version: str) -> None:
        doc_id = manifest.doc_id(name)
        doc = await self._node.open(doc_id)
        try:
            doc.get("complete", type=Map)[f"{version} {self._node.config.node_id}"] = self._node.config.dc
            await self._node.flush()
        finally:
            self._node.release(doc_id)

    async def get(
        self, name: str, out: str, *, version: str = "latest", fetch: bool = True
    ) -> ArtifactVersion:
        """Write the version to the new file `out` (written whole or not at all), fetching the chunks
        this node lacks first unless `fetch` is False."""
        record = await self._resolved(name, version)
        if fetch:
            await self.fetch(name, record.version)
        await asyncio.to_thread(self._write_file, name, record, out)
        return await self.resolve(name, record.version)

    def _write_file(self, name: str, record: VersionRecord, out: str) -> None:
        self._check_complete(name, record)
        partial = f"{out}.part-{os.getpid()}"
        try:
            with open(partial, "xb") as target:
                for chunk, _ in self.entries(record):
                    target.write(self.store.read(chunk))
                target.flush()
                os.fsync(target.fileno())
            os.replace(partial, out)
        except BaseException:
            if os.path.exists(partial):
                os.unlink(partial)
            raise

    async def open_range(
        self, name: str, ref: str, start: int = 0, end: int | None = None
    ) -> tuple[ArtifactVersion, AsyncIterator[bytes]]:
        """The version and an iterator over its bytes [start, end), once this node holds all of it
        (fetched first, as `get`)."""
        record = await self._resolved(name, ref)
        stop = record.bytes_total if end is None else min(end, record.bytes_total)
        if not 0 <= start <= stop:
            raise ArtifactError(
                f"range {start}..{stop} is outside the {record.bytes_total} bytes of the version"
            )
        await self.fetch(name, record.version)
        return await self.resolve(name, record.version), self._stream(record, start, stop)

    async def _stream(self, record: VersionRecord, start: int, stop: int) -> AsyncIterator[bytes]:
        spans = _spans(self.entries(record), start, stop)
        while True:
            batch = await asyncio.to_thread(self._read_batch, spans)
            if not batch:
                return
            yield batch

    def _read_batch(self, spans: Iterator[tuple[bytes, int, int]]) -> bytes:
        parts: list[bytes] = []
        size = 0
        for chunk, lo, hi in spans:
            parts.append(self.store.read(chunk)[lo:hi])
            size += hi - lo
            if size >= READ_BATCH_BYTES:
                break
        return b"".join(parts)

    # ------------------------------------------------------------------ diff, delete, collect

    async def diff(self, name: str, old: str, new: str) -> ArtifactDiff:
        """Bytes, chunks and (for safetensors) tensors that changed from `old` to `new`."""
        before, after = await self._resolved(name, old), await self._resolved(name, new)
        for record in (before, after):
            lacking = self.store.missing(record.table)
            if lacking:
                raise ArtifactIncompleteError(
                    f"{name} version {record.version}: this node lacks its chunk table", record.chunks, 0
                )
        return await asyncio.to_thread(diff_tables, self, before, after)

    async def delete(self, name: str, version: str) -> None:
        """Remove the version from the manifest (everywhere, as it replicates) and every tag that
        names it; `latest` moves to the newest version left. Its chunks go at the next `collect`."""
        record = await self._resolved(name, version)
        doc_id = manifest.doc_id(name)
        doc = await self._node.open(doc_id)
        try:
            del doc.get("versions", type=Map)[record.version]
            tags = doc.get("tags", type=Map)
            for tag, value in list(tags.to_py().items()):
                if value == record.version:
                    del tags[tag]
            complete = doc.get("complete", type=Map)
            for key in [key for key in complete if key.startswith(record.version + " ")]:
                del complete[key]
            left = self._records(doc)
            if left and "latest" not in tags:
                tags["latest"] = left[-1].version
            await self._node.flush()
        finally:
            self._node.release(doc_id)

    async def prefetch(self, tag: str = "latest") -> list[tuple[str, str]]:
        """As its datacenter's fetcher (its first relay), fetch the version `tag` names of every
        artifact (at most `PREFETCH_ARTIFACTS_MAX`) that no node of this datacenter holds complete:
        the datacenter's gets then find it inside it, and the version has a copy here. Returns the
        (name, version) fetched; a version no holder can give is left for the next call."""
        if not self.transfer.is_fetcher():
            return []
        status = self._node.status()
        dc_of = {member.node_id: member.dc for member in status.members}
        dc_of[self._node.config.node_id] = self._node.config.dc
        fetched = []
        for doc_id in self._node.doc_ids(prefix=manifest.DOC_PREFIX, limit=PREFETCH_ARTIFACTS_MAX):
            name = doc_id.removeprefix(manifest.DOC_PREFIX)
            try:
                wanted = await self.resolve(name, tag)
                if not any(dc_of.get(node_id) == self._node.config.dc for node_id in wanted.complete_on):
                    await self.fetch(name, wanted.version)
                    fetched.append((name, wanted.version))
            except ArtifactError:
                continue
        return fetched

    async def collect(self, grace_s: float = GC_GRACE_S) -> CollectResult:
        """Delete the chunks no manifest on this node names, unused for `grace_s` seconds."""
        referenced: set[bytes] = set()
        for doc_id in self._node.doc_ids(prefix=manifest.DOC_PREFIX):
            doc = await self._node.open(doc_id)
            try:
                records = self._records(doc)
            finally:
                self._node.release(doc_id)
            for record in records:
                referenced.update(record.table)
                if not self.store.missing(record.table):
                    referenced.update(chunk for chunk, _ in self.entries(record))
        return await asyncio.to_thread(self.store.collect, referenced, grace_s)


def _add_piece(writer: ChunkWriter, entries: list[tuple[bytes, int]]) -> bytes:
    from crdtsync.artifacts.chunking import chunk_id

    piece = manifest.encode_piece(entries)
    piece_id = chunk_id(piece)
    writer.add(piece_id, piece)
    return piece_id


def _format_of(path: str) -> str:
    from crdtsync.artifacts.chunking import safetensors_tensors

    with open(path, "rb") as file:
        size = file.seek(0, 2)
        return "safetensors" if safetensors_tensors(file, size) is not None else "bytes"


def _spans(entries: Iterator[tuple[bytes, int]], start: int, stop: int) -> Iterator[tuple[bytes, int, int]]:
    """(chunk, from, to) slices of the chunks that cover [start, stop)."""
    offset = 0
    for chunk, length in entries:
        lo, hi = max(start - offset, 0), min(stop - offset, length)
        if lo < hi:
            yield chunk, lo, hi
        offset += length
        if offset >= stop:
            return


def _version(
    name: str, record: VersionRecord, tags: dict[str, str], complete: dict[str, list[str]]
) -> ArtifactVersion:
    return ArtifactVersion(
        name=name,
        version=record.version,
        seq=record.seq,
        bytes_total=record.bytes_total,
        chunks=record.chunks,
        format=record.format,
        created_ms=record.created_ms,
        node=record.node,
        dc=record.dc,
        tags=tuple(sorted(tag for tag, version in tags.items() if version == record.version)),
        complete_on=tuple(sorted(complete.get(record.version, []))),
    )
