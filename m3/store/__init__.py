"""The versioned, content-addressed store with lineage (docs/architecture.md, "The store contract")."""

from m3.store.errors import CorruptBlob, DamagedFile, MissingBlob, NotFound, RefConflict, StoreError
from m3.store.manifest import FileEntry, Manifest, Producer
from m3.store.names import InvalidName
from m3.store.refs import RefEntry
from m3.store.store import Store

__all__ = [
    "CorruptBlob",
    "DamagedFile",
    "FileEntry",
    "InvalidName",
    "Manifest",
    "MissingBlob",
    "NotFound",
    "Producer",
    "RefConflict",
    "RefEntry",
    "Store",
    "StoreError",
]
