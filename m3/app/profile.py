"""Profiles: one YAML file naming the sources, stage settings, Dask cluster and store of a run.

``--profile demo`` reads ``data_specs/profiles/demo.yaml``; a path reads that file. Source paths
are resolved relative to the profile file, so a profile works from any working directory.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from m3.store.names import validate_segment
from m3.strict import StrictModel
from model.config import ModelSpec
from model.tokenizer import TokenizerConfig
from tasks.evaluate.config import EvalConfig
from tasks.ingest import IngestConfig
from tasks.ingest.sources import SourceSpec
from tasks.mining.config import MineConfig
from tasks.pairs import PairsConfig
from tasks.synthesize.ict import SynthesizeConfig
from tasks.training import TrainConfig
from tasks.training.retromae import RetroMAEConfig

if TYPE_CHECKING:
    from tasks.training.stage import PretrainSections

PROFILES_DIR = Path(__file__).resolve().parents[2] / "data_specs" / "profiles"


class ProfileError(ValueError):
    """A profile that cannot be found or does not validate; the message names the problem."""


MIN_WORKER_MEMORY = 256 * 2**20  # a Dask worker process alone takes ~150 MB: less is killed at once


def check_memory_limit(v: Any) -> Any:
    """``v`` if dask can read it as a worker memory limit that a worker can live in, else
    ValueError. Parsed the way ``distributed.worker_memory.parse_memory_limit`` does (a number
    <= 1 is a fraction of the machine's memory; a string goes through ``dask.utils.parse_bytes``),
    so a bad unit is refused when the profile loads, not inside the first Dask stage."""
    from dask.utils import parse_bytes

    if v is None or v == "auto":
        return v
    if isinstance(v, bool) or not isinstance(v, str | int | float):
        raise ValueError(f"expected a size such as '4GiB', a fraction, 'auto' or null, got {v!r}")
    try:
        number = float(v)
    except ValueError:
        number = None
    if number is not None and number <= 1:
        if number <= 0:
            raise ValueError(f"must be > 0 (null: no limit), got {v!r}")
        return v  # a fraction of the machine's memory
    try:
        size = parse_bytes(v) if number is None else int(number)
    except (ValueError, OverflowError) as exc:
        raise ValueError(f"{v!r} is not a size: {exc} (use e.g. 4GiB, 500MB, 0.5, auto)") from None
    if size < MIN_WORKER_MEMORY:
        raise ValueError(f"{v!r} is {size} bytes, below the 256MiB a Dask worker needs")
    return v


class DaskSpec(StrictModel):
    """Where data stages run: an existing scheduler (``address``), a cluster class started for the
    run (``cluster_class`` + ``cluster_kwargs``, e.g. ``dask_kubernetes.operator.KubeCluster`` or
    ``dask_jobqueue.SLURMCluster``), or by default a LocalCluster of this shape."""

    address: str | None = None
    cluster_class: str | None = Field(None, description="import path of a dask cluster class")
    cluster_kwargs: dict[str, Any] = Field(default_factory=dict)
    n_workers: int = Field(2, ge=1, description="0 or fewer never gets a worker: the run would wait forever")
    threads_per_worker: int = Field(1, ge=1)
    memory_limit: str | int | float | None = Field(
        "3GiB",
        description="per worker, as dask reads it: a size (4GiB, 500MB, bytes), a fraction of this "
        "machine's memory (0 < x <= 1), 'auto' (an equal share), or null (no limit)",
    )

    @field_validator("memory_limit", mode="before")
    @classmethod
    def _memory_limit(cls, v: Any) -> Any:
        return check_memory_limit(v)

    @model_validator(mode="after")
    def _one_target(self) -> DaskSpec:
        if self.address and self.cluster_class:
            raise ValueError("give either dask.address or dask.cluster_class, not both")
        if self.cluster_class and "." not in self.cluster_class:
            raise ValueError(
                f"dask.cluster_class must be an import path like pkg.Class, not {self.cluster_class!r}"
            )
        if self.cluster_class and self.cluster_class.rsplit(".", 1)[-1] == "LocalCluster":
            # the same shape as the default cluster, so the same bounds (other classes, e.g. an
            # adaptive KubeCluster, legitimately start with n_workers 0 and name memory otherwise)
            kw = self.cluster_kwargs
            for key in ("n_workers", "threads_per_worker"):
                if key in kw and (not isinstance(kw[key], int) or isinstance(kw[key], bool) or kw[key] < 1):
                    raise ValueError(f"cluster_kwargs.{key} must be an integer >= 1, got {kw[key]!r}")
            if "memory_limit" in kw:
                try:
                    check_memory_limit(kw["memory_limit"])
                except ValueError as exc:
                    raise ValueError(f"cluster_kwargs.memory_limit: {exc}") from None
        return self


class Profile(StrictModel):
    name: str
    description: str = ""
    store: str | None = None
    languages: list[str] | None = Field(None, min_length=1, description="null: every language")
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
        description="contrastive pretraining on title-body and translation pairs; "
        "null: the starting model is the checkpoint",
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

    def pretrain_sections(self) -> PretrainSections:
        """What the pretrain stage reads: its own sections, where paths start, and what it must keep
        out of training (the synthesize stage's held-out documents, the evaluation sets)."""
        from tasks.training.stage import PretrainSections

        return PretrainSections(
            model=self.model,
            tokenizer=self.tokenizer,
            retromae=self.retromae,
            pairs=self.pairs,
            pretrain=self.pretrain,
            base_dir=self.base_dir,
            heldout_fraction=self.synthesize.heldout_fraction,
            split_seed=self.synthesize.seed,
            evaluation_only=list(self.evaluate.datasets),
        )


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
        msg = " ".join(str(first["msg"]).removeprefix("Value error, ").split())  # one line
        raise ProfileError(f"profile {path}: {where or 'top level'}: {msg}{hint}") from exc


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
