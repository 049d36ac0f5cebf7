"""Profiles: one YAML file naming the sources, stage settings, Dask cluster and store of a run.

``--profile demo`` reads ``data_specs/profiles/demo.yaml``; a path reads that file. Source paths
are resolved relative to the profile file, so a profile works from any working directory.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from m3.store.names import validate_segment
from model.config import ModelSpec
from model.tokenizer import TokenizerConfig
from tasks.evaluate.config import EvalConfig
from tasks.ingest import IngestConfig
from tasks.ingest.sources import FORMAT_OF, OnlineSpec, load_spec
from tasks.mine import MineConfig
from tasks.pairs import PairsConfig
from tasks.retromae import RetroMAEConfig
from tasks.synthesize import SynthesizeConfig
from tasks.training import TrainConfig

PROFILES_DIR = Path(__file__).resolve().parent.parent / "data_specs" / "profiles"


class ProfileError(ValueError):
    """A profile that cannot be found or does not validate; the message names the problem."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SourceSpec(_Strict):
    """A group of input files of one format: local ``paths`` (globs), or an ``online`` spec
    (Wikipedia / mC4 / CC-News, inline or ``spec: NAME`` from data_specs/sources/) downloaded
    resumably, verified against published checksums and cached in the store."""

    name: str
    format: Literal["mediawiki", "mc4", "warc"] | None = None
    paths: list[str] = Field(default_factory=list)
    lang: str | None = None
    online: OnlineSpec | None = None
    spec: str | None = Field(None, description="data_specs/sources/NAME.yaml (or a YAML path)")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return validate_segment(v, "source name")

    @model_validator(mode="after")
    def _origin(self) -> SourceSpec:
        given = [k for k in ("paths", "online", "spec") if getattr(self, k)]
        if len(given) != 1:
            raise ValueError(f"give exactly one of paths, online or spec (got {given or 'none'})")
        if self.spec:
            self.online = load_spec(self.spec)
        if self.online is not None:
            implied = FORMAT_OF[self.online.kind]
            if self.format not in (None, implied):
                raise ValueError(f"a {self.online.kind} source is format {implied}, not {self.format}")
            self.format = implied
        elif self.format is None:
            raise ValueError("a local source needs a format (mediawiki, mc4 or warc)")
        return self


class DaskSpec(_Strict):
    """Where data stages run: an existing scheduler (``address``), a cluster class started for the
    run (``cluster_class`` + ``cluster_kwargs``, e.g. ``dask_kubernetes.operator.KubeCluster`` or
    ``dask_jobqueue.SLURMCluster``), or by default a LocalCluster of this shape."""

    address: str | None = None
    cluster_class: str | None = Field(None, description="import path of a dask cluster class")
    cluster_kwargs: dict[str, Any] = Field(default_factory=dict)
    n_workers: int = 2
    threads_per_worker: int = 1
    memory_limit: str = "3GiB"

    @model_validator(mode="after")
    def _one_target(self) -> DaskSpec:
        if self.address and self.cluster_class:
            raise ValueError("give either dask.address or dask.cluster_class, not both")
        if self.cluster_class and "." not in self.cluster_class:
            raise ValueError(
                f"dask.cluster_class must be an import path like pkg.Class, not {self.cluster_class!r}"
            )
        return self


class Profile(_Strict):
    name: str
    description: str = ""
    store: str | None = None
    languages: list[str] | None = None
    sources: list[SourceSpec] = Field(min_length=1)
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    synthesize: SynthesizeConfig = Field(default_factory=SynthesizeConfig)
    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig)
    model: ModelSpec = Field(default_factory=ModelSpec)
    retromae: RetroMAEConfig | None = Field(
        None, description="RetroMAE stage before contrastive pretraining; null: none"
    )
    pairs: PairsConfig = Field(default_factory=PairsConfig)
    pretrain: TrainConfig | None = Field(
        default_factory=TrainConfig,
        description="contrastive pretraining on title-body pairs; null: the starting model is the checkpoint",
    )
    mine: MineConfig = Field(default_factory=MineConfig)
    finetune: TrainConfig = Field(default_factory=TrainConfig)
    evaluate: EvalConfig = Field(default_factory=EvalConfig)
    dask: DaskSpec = Field(default_factory=DaskSpec)
    base_dir: str = Field(default=".", description="folder that relative source paths start from")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return validate_segment(v, "profile name")

    @model_validator(mode="after")
    def _something_trains_a_fresh_model(self) -> Profile:
        if self.model.init is None and self.pretrain is None and self.retromae is None:
            raise ValueError(
                "pretrain: null needs model.init (a pretrained encoder) or retromae: a fresh model "
                "would reach fine-tuning untrained"
            )
        return self

    def source_files(self, source: SourceSpec) -> list[Path]:
        """The files a source names, sorted; every pattern must match at least one readable file."""
        if source.online is not None:
            raise ProfileError(
                f"source {source.name!r} is online: its files come from the ingest flow's download"
            )
        found: list[Path] = []
        for pattern in source.paths:
            full = pattern if os.path.isabs(pattern) else os.path.join(self.base_dir, pattern)
            matches = sorted(glob.glob(full)) if glob.has_magic(full) else [full]
            if not matches:
                raise ProfileError(f"source {source.name!r}: no file matches {pattern!r}")
            for m in matches:
                path = Path(m)
                if not path.is_file() or not os.access(path, os.R_OK):
                    raise ProfileError(f"source {source.name!r}: cannot read {path}")
                found.append(path.resolve())
        return sorted(dict.fromkeys(found))


def available_profiles() -> list[str]:
    return sorted(p.stem for p in PROFILES_DIR.glob("*.yaml"))


def load_profile(name_or_path: str) -> Profile:
    """A profile by name (``data_specs/profiles/NAME.yaml``) or by file path."""
    path = Path(name_or_path)
    if not (path.suffix in {".yaml", ".yml"} or os.sep in name_or_path):
        path = PROFILES_DIR / f"{name_or_path}.yaml"
        if not path.is_file():
            raise ProfileError(
                f"unknown profile {name_or_path!r}; known: {', '.join(available_profiles()) or 'none'}"
            )
    if not path.is_file():
        raise ProfileError(f"profile file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ProfileError(f"cannot read profile {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ProfileError(f"profile {path} must be a mapping at the top level")
    data["base_dir"] = str((path.resolve().parent / str(data.get("base_dir", "."))).resolve())
    try:
        return Profile.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        hint = _nearest_key(first["loc"]) if first["type"] == "extra_forbidden" else ""
        raise ProfileError(f"profile {path}: {where}: {first['msg']}{hint}") from exc


def _nearest_key(loc: tuple) -> str:
    """'; did you mean X?' for an unknown key, from the fields of the config model it was given to."""
    import difflib
    import typing

    model: Any = Profile
    for part in loc[:-1]:
        if isinstance(part, int) or model is None:
            continue
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return ""
        kinds = [
            a for a in (field.annotation, *typing.get_args(field.annotation)) if hasattr(a, "model_fields")
        ]
        args = [x for a in typing.get_args(field.annotation) for x in typing.get_args(a)]
        kinds += [a for a in args if hasattr(a, "model_fields")]
        model = kinds[0] if kinds else None
    names = list(getattr(model, "model_fields", {}))
    close = difflib.get_close_matches(str(loc[-1]), names, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(names)}"
