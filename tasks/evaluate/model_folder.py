"""``m3 eval``: a model folder (not a stored artifact) on dataset specs, outside any flow."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tasks.eval_data import load_datasets
from tasks.evaluate.config import EvalConfig
from tasks.evaluate.encoders import M3Encoder, SentenceTransformerEncoder
from tasks.evaluate.metrics import evaluate_datasets
from tasks.evaluate.report import summarize


class ModelFileError(ValueError):
    """A model folder's weights file that cannot be read; the message names the file."""


def check_weight_files(folder: str | Path) -> None:
    """Every ``*.safetensors`` file of ``folder`` opens (its header parses and covers the file):
    a cut or damaged one is one line naming it, not the loader's traceback. Reads headers only."""
    from safetensors import SafetensorError, safe_open

    for path in sorted(Path(folder).glob("*.safetensors")):
        try:
            with safe_open(str(path), "pt") as fh:
                fh.keys()
        except SafetensorError as exc:
            raise ModelFileError(f"{path}: not a readable safetensors file ({exc})") from None


def evaluate_model_path(
    model_path: str,
    specs: Sequence[str],
    cfg: EvalConfig | None = None,
    baselines: Sequence[str] = (),
    max_queries: int | None = None,
    modes: Sequence[str] | None = None,
) -> dict[str, Any]:
    """``m3 eval``: a model folder on dataset specs, every mode plus BM25 and baseline models."""
    from model.m3 import M3Model

    cfg = cfg or EvalConfig()
    datasets = [ds for spec in specs for ds in load_datasets(spec, max_queries=max_queries)]
    if Path(model_path).is_dir():
        check_weight_files(model_path)
    model = M3Model.from_pretrained(model_path)
    encoders = [SentenceTransformerEncoder(p, cfg) for p in baselines]
    info = evaluate_datasets(datasets, M3Encoder(model, cfg), cfg, encoders, modes)
    return {"model": str(model_path), **summarize(info, cfg)}
