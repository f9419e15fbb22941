"""Large files (checkpoints, model files, datasets) as versions of content-defined chunks, their
manifests in CRDT docs: `node.artifacts` (docs/artifacts.md)."""

from crdtsync.artifacts.api import ArtifactIncompleteError, Artifacts, ArtifactVersion, PutResult
from crdtsync.artifacts.chunking import ChunkSizes
from crdtsync.artifacts.manifest import (
    ArtifactError,
    ArtifactLimits,
    ArtifactNotFoundError,
    ArtifactTooLargeError,
    ManifestError,
)
from crdtsync.artifacts.store import ChunkCorruptError, ChunkMissingError, ChunkStoreError, CollectResult
from crdtsync.artifacts.tensors import ArtifactDiff
from crdtsync.artifacts.transfer import ArtifactsConfig, TransferCounters

__all__ = [
    "ArtifactDiff",
    "ArtifactError",
    "ArtifactIncompleteError",
    "ArtifactLimits",
    "ArtifactNotFoundError",
    "ArtifactTooLargeError",
    "ArtifactVersion",
    "Artifacts",
    "ArtifactsConfig",
    "ChunkCorruptError",
    "ChunkMissingError",
    "ChunkSizes",
    "ChunkStoreError",
    "CollectResult",
    "ManifestError",
    "PutResult",
    "TransferCounters",
]
