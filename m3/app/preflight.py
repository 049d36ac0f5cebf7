"""Checks that run before Prefect starts, so a bad command is refused in seconds with one line.

``m3 run`` starts a Prefect server and a Dask cluster before its first stage; a store it cannot
write to used to fail only then (20 s in, with a traceback), and a read-only command on a mistyped
store printed an empty listing. Here a store is checked the way the command will use it, writing
nothing: the profile itself is checked where it loads (``m3.app.profile.load_profile``) and the stage
selection by ``flows.pipeline.select_stages``. Also checked: every artifact name the run will make
(:mod:`m3.app.planned_names`), and the folder of the private Prefect server's database.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from m3.store import Store
from m3.store.backend import Backend
from m3.store.names import InvalidName, validate_ref

if TYPE_CHECKING:
    from m3.app.profile import Profile

# What the private Prefect server needs free for its SQLite database (the task runs and logs of a
# pipeline run are a few MiB); a full disk made it restart 28 times, its cause buried in tracebacks.
PREFECT_HOME_MIN_FREE = 64 << 20
MAX_NAME = 128  # characters of an artifact name (m3.store.names)


class PrefectHomeUnusable(ValueError):
    """PREFECT_HOME (or the database folder it holds) cannot take the Prefect server's database."""


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


def check_planned_names(profile: Profile) -> None:
    """Every ref a run of ``profile`` makes is a name the store takes. A profile name that leaves no
    room for a suffix (``.wikipedia``, ``-r2-passages``) is refused now, not at that artifact, after
    Prefect has started or a whole ANCE round has run."""
    from m3.app.planned_names import planned_refs

    refs = sorted(planned_refs(profile), key=lambda ref: -len(ref.split("/", 1)[1]))  # longest first
    for ref in refs:
        kind, name = ref.split("/", 1)
        try:
            validate_ref(ref)
        except InvalidName as exc:
            if len(name) <= MAX_NAME:
                raise
            room = len(profile.name) - (len(name) - MAX_NAME)
            raise InvalidName(
                f"profile name too long ({len(profile.name)} characters): this run would make "
                f"{kind}/<name>{name[len(profile.name) :]}, {len(name)} characters, and the store "
                f"takes at most {MAX_NAME}; use a profile name of at most {room} characters"
            ) from exc


def _sqlite_file(url: str) -> Path | None:
    """The file of a SQLite database URL (``sqlite+aiosqlite:////home/u/.prefect/prefect.db``)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError:
        return None
    if parsed.get_backend_name() != "sqlite" or not parsed.database or parsed.database == ":memory:":
        return None
    return Path(parsed.database).expanduser()


def check_prefect_home() -> None:
    """Where the private Prefect server ``m3`` starts (no ``PREFECT_API_URL``) keeps its database:
    PREFECT_HOME (and the database's own folder, where the connection URL moves it) must be a
    folder, or one that can be made, that is writable and has :data:`PREFECT_HOME_MIN_FREE`."""
    if os.environ.get("PREFECT_API_URL"):
        return  # runs report to that server; nothing is written here
    from prefect.settings import get_current_settings

    settings = get_current_settings()
    home = Path(settings.home).expanduser()
    _check_folder("PREFECT_HOME", home)
    url = settings.server.database.connection_url
    database = _sqlite_file(url.get_secret_value()) if url is not None else None
    if database is None:
        return  # another database server: not ours to check
    if database.parent != home:
        _check_folder("the Prefect database folder", database.parent)
    if database.exists() and not os.access(database, os.W_OK):
        raise PrefectHomeUnusable(f"the Prefect database {database} is not writable")


def _check_folder(what: str, folder: Path) -> None:
    hint = "or set PREFECT_API_URL to a running Prefect server"
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent  # a missing folder is made by the server: check where it goes
    if not existing.is_dir():
        where = "is a file" if existing == folder else f"is under a file ({existing})"
        raise PrefectHomeUnusable(f"{what} {folder} {where}: point it elsewhere, {hint}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PrefectHomeUnusable(f"{what} {folder} is not writable: point it elsewhere, {hint}")
    free = shutil.disk_usage(existing).free
    if free < PREFECT_HOME_MIN_FREE:
        raise PrefectHomeUnusable(
            f"{what} {folder} has {free >> 20} MiB free; the Prefect server m3 starts keeps its "
            f"database there and needs {PREFECT_HOME_MIN_FREE >> 20} MiB: free space, point it elsewhere, "
            + hint
        )
