"""Artifact manifests: immutable, content-addressed descriptions of one artifact version.

A manifest read from the store is untrusted input (anyone who can write to a shared bucket can
write one with a valid self-hash), so the model itself validates what becomes a path: file paths
are relative, normalised and unique, digests and parent ids are hex, kind and name are name
segments. The same checks run when a manifest is made and when one is read back.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from pydantic import BaseModel, Field, field_validator, model_validator

from m3.store.names import validate_relpath, validate_segment

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def check_id(value: str, what: str = "manifest id") -> str:
    """A full manifest id or blob digest (64 lowercase hex digits), or ValueError."""
    if not isinstance(value, str) or not _SHA256.match(value):
        raise ValueError(f"invalid {what} {str(value)[:80]!r}: expected 64 hex digits")
    return value


class FileEntry(BaseModel):
    path: str
    sha256: str
    bytes: int = Field(ge=0)
    rows: int | None = None

    @field_validator("path")
    @classmethod
    def _relative(cls, value: str) -> str:
        return validate_relpath(value)

    @field_validator("sha256")
    @classmethod
    def _digest(cls, value: str) -> str:
        return check_id(value, "blob digest")


class Producer(BaseModel):
    """Who made an artifact: enough to reproduce it or to find the run that did."""

    stage: str = ""
    flow: str = ""
    flow_run_id: str | None = None
    task_run_id: str | None = None
    git_commit: str | None = None
    git_dirty: bool | None = None
    code_version: str = ""
    packages: dict[str, str] = Field(default_factory=dict)
    config: dict[str, Any] = Field(default_factory=dict)
    config_hash: str = ""


class Manifest(BaseModel):
    id: str = ""
    kind: str
    name: str
    files: list[FileEntry] = Field(default_factory=list)
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")
    parents: list[str] = Field(default_factory=list)
    producer: Producer = Field(default_factory=Producer)
    metrics: dict[str, Any] = Field(default_factory=dict)
    created_at: str

    model_config = {"populate_by_name": True}

    @field_validator("kind", "name")
    @classmethod
    def _segment(cls, value: str, info) -> str:
        return validate_segment(value, f"artifact {info.field_name}")

    @field_validator("parents")
    @classmethod
    def _parents(cls, value: list[str]) -> list[str]:
        return [check_id(p, "parent id") for p in value]

    @model_validator(mode="after")
    def _files_disjoint(self) -> Manifest:
        """No two files at one path, and no file where another needs a folder (``a`` and ``a/b``)."""
        paths = [f.path for f in self.files]
        if len(set(paths)) != len(paths):
            raise ValueError("two files at the same path")
        folders = {p.rsplit("/", n)[0] for p in paths for n in range(1, p.count("/") + 1)}
        clash = folders & set(paths)
        if clash:
            raise ValueError(f"file path {sorted(clash)[0]!r} is also a folder of another file")
        return self

    def body(self) -> dict[str, Any]:
        data = self.model_dump(by_alias=True, mode="json")
        data.pop("id", None)
        return data

    def compute_id(self) -> str:
        return hashlib.sha256(canonical_json(self.body())).hexdigest()

    def to_json(self) -> bytes:
        return json.dumps(self.model_dump(by_alias=True, mode="json"), indent=2, sort_keys=True).encode()

    def file(self, path: str) -> FileEntry:
        for entry in self.files:
            if entry.path == path:
                return entry
        raise KeyError(f"artifact {self.id[:12]} ({self.kind}/{self.name}) has no file {path!r}")


def canonical_json(value: Any) -> bytes:
    """Deterministic JSON bytes: the input of every hash in the store."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str).encode()


def hash_config(config: Any) -> str:
    return hashlib.sha256(canonical_json(config)).hexdigest()
