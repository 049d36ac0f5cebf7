"""Checks that run before Prefect starts, so a bad command is refused in seconds with one line.

``m3 run`` starts a Prefect server and a Dask cluster before its first stage; a store it cannot
write to used to fail only then (20 s in, with a traceback), and a read-only command on a mistyped
store printed an empty listing. Here a store is checked the way the command will use it, writing
nothing: the profile itself is checked where it loads (``m3.profile.load_profile``) and the stage
selection by ``flows.pipeline.select_stages``.
"""

from __future__ import annotations

from m3.store import Store
from m3.store.backend import Backend


def check_writable_store(url: str) -> None:
    """``m3 run``'s store: a writable folder, or one it may create (a missing local folder is
    made by the first commit), or an existing S3 bucket. StoreUnavailable otherwise."""
    Backend(url).check_root(write=True)


def existing_store(url: str) -> Store:
    """The store of a read-only command (``artifacts``, ``lineage``, ``gc``, ``eval``): its first
    read fails with StoreUnavailable when the folder, bucket or prefix is not there."""
    store = Store(url)
    store.backend.require_existing()
    return store


def checked_now(store: Store) -> Store:
    """``store``, checked at once: for a command that reads only later (the web page, per request)."""
    store.backend.check_root()
    return store
