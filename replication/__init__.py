"""Data: chunk store, file manifests, signed dataset records.

The catalog, transfers, access trends and the replica policy land next
(see docs/datasets.md).  The layers above use only the names exported here.
"""

from .chunks import (
    CHUNK_SIZE,
    HASH_SIZE,
    ChunkCorrupt,
    ChunkError,
    ChunkMismatch,
    ChunkMissing,
    ChunkStore,
    QuotaExceeded,
    chunk_hash,
    read_chunks,
    split_file,
)
from .dataset import (
    DATASET_TAG,
    MAX_FILES,
    MAX_RECORD,
    DatasetError,
    DatasetName,
    DatasetNameError,
    DatasetRecord,
    ReplicationPolicy,
    add_files,
    can_replace,
    change_policy,
    close_dataset,
    may_write_scope,
    parse_dataset_name,
    parse_file_address,
    replace_refusal,
)
from .manifest import FileManifest, ManifestError, check_file_name, write_file

__all__ = [
    "CHUNK_SIZE",
    "DATASET_TAG",
    "HASH_SIZE",
    "MAX_FILES",
    "MAX_RECORD",
    "ChunkCorrupt",
    "ChunkError",
    "ChunkMismatch",
    "ChunkMissing",
    "ChunkStore",
    "DatasetError",
    "DatasetName",
    "DatasetNameError",
    "DatasetRecord",
    "FileManifest",
    "ManifestError",
    "QuotaExceeded",
    "ReplicationPolicy",
    "add_files",
    "can_replace",
    "change_policy",
    "check_file_name",
    "chunk_hash",
    "close_dataset",
    "may_write_scope",
    "parse_dataset_name",
    "parse_file_address",
    "read_chunks",
    "replace_refusal",
    "split_file",
    "write_file",
]
