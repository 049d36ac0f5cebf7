"""How one ingest step's files reach the next step, wherever the two run.

A file step writes a shard and its signatures, the dedup steps read every signature file, a finalize
step reads its shards and writes corpus files that the driver commits. A *handle* names one such
file. :class:`SharedFolder` (the default) is for workers that see the driver's filesystem: a handle
is the file's path. :class:`StoreHandoff` is for workers that share nothing with the driver but the
store (a Dask cluster on other machines): a step commits its files as an intermediate artifact (no
ref, under the driver's lease so gc leaves it alone) and a handle is ``<manifest id>/<file>``, which
any worker or the driver reads back through its own verified cache.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


class Handoff(Protocol):
    def local(self, handle: str) -> Path:
        """A local path holding the file ``handle`` names."""
        ...

    def work_dir(self, near: str | Path) -> Path:
        """An empty folder for a step's output; ``near`` is where the driver would put it."""
        ...

    def publish(
        self, kind: str, folder: Path, files: Iterable[str], parents: Iterable[str] = ()
    ) -> dict[str, str]:
        """Make ``files`` (paths under ``folder``) readable by later steps: ``{file: handle}``."""
        ...

    def done(self, folder: Path) -> None:
        """The step's own copy of a published ``work_dir`` may go."""
        ...


@dataclass(frozen=True)
class SharedFolder:
    """Every step sees the same filesystem: files stay where they were written."""

    def local(self, handle: str) -> Path:
        return Path(handle)

    def work_dir(self, near: str | Path) -> Path:
        Path(near).mkdir(parents=True, exist_ok=True)
        return Path(near)

    def publish(
        self, kind: str, folder: Path, files: Iterable[str], parents: Iterable[str] = ()
    ) -> dict[str, str]:
        return {rel: str(folder / rel) for rel in files}

    def done(self, folder: Path) -> None:
        """The step's own copy may go (``work_dir``'s folder, once published)."""


@dataclass(frozen=True)
class StoreHandoff:
    """Files passed through the store: each publish is an artifact of ``kind`` named ``name``, held
    by the lease ``lease`` until the stage commits (then ``m3 gc`` collects it)."""

    store_url: str
    lease: str
    name: str

    def local(self, handle: str) -> Path:
        from m3.store import Store

        manifest_id, rel = handle.split("/", 1)
        return Store(self.store_url).materialize(manifest_id) / rel

    def work_dir(self, near: str | Path) -> Path:
        from m3 import lifecycle

        return Path(tempfile.mkdtemp(prefix="m3-handoff-", dir=lifecycle.run_dir()))

    def publish(
        self, kind: str, folder: Path, files: Iterable[str], parents: Iterable[str] = ()
    ) -> dict[str, str]:
        from m3.store import Store

        rels = list(files)
        manifest = Store(self.store_url).commit(
            kind, self.name, {rel: folder / rel for rel in rels}, parents=parents, lease=self.lease
        )
        return {rel: f"{manifest.id}/{rel}" for rel in rels}

    def done(self, folder: Path) -> None:
        shutil.rmtree(folder, ignore_errors=True)  # the store's copy is the one later steps read
