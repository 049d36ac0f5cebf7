"""What a model card says, read from the store and the saved folder (rendered by ``tasks.training.card``).

The model's parents are walked with the store's lineage (``m3.store.lineage``): the start model, the
trained tokenizer of a model from scratch, the corpus (its ``stats.json``), the queries, the
pretraining pairs and the train-set are all found there by kind.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from m3.artifact_io import read_jsonl
from m3.store import Store
from m3.store.lineage import lineage
from tasks.training.card import CardFacts

CORPUS_STATS = "stats.json"  # tasks/ingest: documents read/kept per source and language


def model_facts(folder: Path) -> dict[str, Any]:
    """The saved folder's ``m3_config.json`` over the architecture of its HF ``config.json``."""
    hf = _json(folder / "config.json")
    keys = ("model_type", "hidden_size", "num_hidden_layers", "vocab_size")
    arch: dict[str, Any] = {k: hf[k] for k in keys if k in hf}
    return {**arch, **_json(folder / "m3_config.json")}


def chain_nodes(store: Store, parents: Iterable[str]) -> list[dict[str, Any]]:
    """The lineage of every parent, each artifact once, oldest first."""
    seen: dict[str, dict[str, Any]] = {}
    for parent in parents:
        for node in lineage(store, parent):
            seen.setdefault(node["id"], node)
    return sorted(seen.values(), key=lambda n: n["created_at"])


def train_languages(train_file: Path) -> dict[str, int]:
    """Queries per language of a train-set's ``train.jsonl`` (rows without ``lang`` are not counted)."""
    counts = Counter(str(r["lang"]) for r in read_jsonl(train_file) if r.get("lang"))
    return dict(sorted(counts.items()))


def card_facts(
    store: Store,
    name: str,
    parents: Sequence[str],
    folder: Path,
    training: Mapping[str, Any],
    summary: Mapping[str, Any],
    languages: Mapping[str, int] | None = None,
) -> CardFacts:
    """The card of model ``model/<name>`` saved in ``folder``, made from ``parents`` (manifest ids)
    with the ``training`` config (``TrainConfig`` as JSON) and its ``summary``; ``languages``: the
    train-set's queries per language (None: not counted)."""
    nodes = chain_nodes(store, parents)
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for node in nodes:
        by_kind.setdefault(node["kind"], []).append(node)
    start = next(
        (n for n in nodes if n["kind"] == "checkpoint" and {"init", "source_kind"} <= set(n["metrics"])), None
    )
    train_set = next((n for n in nodes if n["kind"] == "train-set" and n["id"] in parents), None)
    return CardFacts(
        name=name,
        model=model_facts(folder),
        parents=list(parents),
        start={**start["metrics"], **_node(start)} if start else {},
        tokenizer=_node(by_kind["tokenizer"][-1]) if "tokenizer" in by_kind else {},
        chain=[{**_node(n), "stage": n["producer"]["stage"], "parents": n["parents"]} for n in nodes],
        corpora=[{**_node(n), "stats": _corpus_stats(store, n)} for n in by_kind.get("corpus", [])],
        queries=[{**_node(n), "metrics": n["metrics"]} for n in by_kind.get("queries", [])],
        pairs=[{**_node(n), "metrics": n["metrics"]} for n in by_kind.get("pairs", [])],
        train_set={**_node(train_set), "metrics": train_set["metrics"]} if train_set else {},
        train_languages=dict(languages or {}),
        training=dict(training),
        summary=dict(summary),
    )


def _node(node: Mapping[str, Any]) -> dict[str, Any]:
    return {"kind": node["kind"], "name": node["name"], "id": node["id"]}


def _corpus_stats(store: Store, node: Mapping[str, Any]) -> dict[str, Any]:
    if not any(f["path"] == CORPUS_STATS for f in node["files"]):
        return {}
    return json.loads(store.read_file_bytes(node["id"], CORPUS_STATS))


def _json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
