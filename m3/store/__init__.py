"""The versioned, content-addressed artifact store with lineage (design.md, "The store")."""

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
