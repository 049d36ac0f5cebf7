"""Running one stage against the store: cache key, build in a scratch folder, commit, ref.

A stage's output key is a hash of its input manifest ids, its config and its code version
(design.md, "Stage cache"). If the store already holds an artifact for that key the stage is
not run again; this is what makes a rerun cheap and a retry resume at the failed stage.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from m3.provenance import code_version, git_state, package_versions
from m3.store.manifest import Producer, canonical_json, hash_config
from m3.store.store import Store

log = logging.getLogger(__name__)


@dataclass
class StageOutput:
    """What a stage's build function leaves behind in its scratch folder."""

    files: dict[str, Path]
    metrics: dict[str, Any] = field(default_factory=dict)
    schema: dict[str, Any] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class StageResult:
    stage: str
    kind: str
    ref: str
    manifest_id: str
    cached: bool


@dataclass(frozen=True)
class StageSpec:
    """The identity of one stage output: what it reads, how it is configured, which code."""

    stage: str
    kind: str
    name: str
    inputs: Mapping[str, str]
    config: Mapping[str, Any]
    code: tuple[str, ...]

    @property
    def ref(self) -> str:
        return f"{self.kind}/{self.name}"

    def key(self) -> str:
        body = {
            "stage": self.stage,
            "kind": self.kind,
            "inputs": dict(sorted(self.inputs.items())),
            "config": hash_config(self.config),
            "code": code_version(*self.code),
        }
        return hashlib.sha256(canonical_json(body)).hexdigest()[:32]


def lookup(store: Store, spec: StageSpec) -> str | None:
    return store.cache_lookup(spec.stage, spec.key())


def run_stage(
    store: Store,
    spec: StageSpec,
    build: Callable[[Path], StageOutput],
    *,
    refresh: bool = False,
    flow: str = "",
    flow_run_id: str | None = None,
    task_run_id: str | None = None,
) -> StageResult:
    """Return the cached artifact for ``spec`` or build, commit and cache a new one."""
    key = spec.key()
    if not refresh:
        cached = store.cache_lookup(spec.stage, key)
        if cached:
            store.set_ref(spec.ref, cached)
            return StageResult(spec.stage, spec.kind, spec.ref, cached, cached=True)
    commit, dirty = git_state()
    producer = Producer(
        stage=spec.stage,
        flow=flow,
        flow_run_id=flow_run_id,
        task_run_id=task_run_id,
        git_commit=commit,
        git_dirty=dirty,
        code_version=code_version(*spec.code),
        packages=package_versions(),
        config=dict(spec.config),
        config_hash=hash_config(spec.config),
    )
    scratch = Path(tempfile.mkdtemp(prefix=f"m3-{spec.stage}-"))
    try:
        out = build(scratch)
        manifest = store.commit(
            spec.kind,
            spec.name,
            out.files,
            parents=list(spec.inputs.values()),
            producer=producer,
            metrics=out.metrics,
            schema=out.schema,
            rows=out.rows,
            ref=spec.ref,
        )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    store.cache_record(spec.stage, key, manifest.id)
    return StageResult(spec.stage, spec.kind, spec.ref, manifest.id, cached=False)
