"""The store's exceptions. Every message is one line fit for a user: it names the store, the
artifact and the file, so ``m3`` can print it as it is (exit status 2)."""

from __future__ import annotations


class StoreError(RuntimeError):
    """Base class of store errors with a message fit for a user."""


class NotFound(StoreError, KeyError):
    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class RefConflict(StoreError):
    """Another writer moved the ref first (compare-and-swap lost)."""


class DamagedFile(StoreError):
    """A manifest, ref or other store file that does not parse or does not match its name.

    Never trusted and never guessed at: listing and gc skip it with a warning, and a command that
    needs it refuses with this message. ``m3 verify --repair`` drops it from its refs.
    """

    def __init__(self, location: str, problem: str):
        self.location, self.problem = location, problem
        super().__init__(
            " ".join(f"{location} is damaged ({problem}); `m3 verify` lists what depends on it".split())
        )

    def __reduce__(self):  # crosses Dask and process pools: rebuilt from its own fields
        return (type(self), (self.location, self.problem))


class CorruptBlob(StoreError):
    """A blob whose bytes do not hash to the digest its manifest names: refused, never used."""

    def __init__(
        self, artifact: str, path: str, location: str, expected: tuple[str, int], found: tuple[str, int]
    ):
        self.artifact, self.path, self.location = artifact, path, location
        self.expected, self.found = expected, found
        super().__init__(
            f"artifact {artifact}, file {path}: blob {location} is corrupt: expected sha256 "
            f"{expected[0]} ({expected[1]:,} B), found sha256 {found[0]} ({found[1]:,} B); "
            "refusing to use it (`m3 verify --repair` drops it, so a rerun rebuilds it)"
        )

    def __reduce__(self):  # crosses Dask and process pools: rebuilt from its own fields
        return (type(self), (self.artifact, self.path, self.location, self.expected, self.found))


class MissingBlob(StoreError):
    """A manifest names a blob that is not in the store (removed by hand, or by a gc that raced):
    damage, not an unknown name."""


class ManifestMissing(NotFound):
    """No manifest file for this id: never written, or removed (by gc, once nothing held it)."""


class ParentMissing(NotFound):
    """A commit names a parent manifest that is no longer in the store."""
