"""Artifact manifests: immutable, content-addressed descriptions of one artifact version."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pydantic import BaseModel, Field


class FileEntry(BaseModel):
    path: str
    sha256: str
    bytes: int
    rows: int | None = None


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
