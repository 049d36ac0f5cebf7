"""The versioned, content-addressed store with lineage (docs/architecture.md, "The store contract")."""

from m3.store.manifest import FileEntry, Manifest, Producer
from m3.store.names import InvalidName
from m3.store.store import NotFound, RefConflict, RefEntry, Store, StoreError

__all__ = [
    "FileEntry",
    "InvalidName",
    "Manifest",
    "NotFound",
    "Producer",
    "RefConflict",
    "RefEntry",
    "Store",
    "StoreError",
]
