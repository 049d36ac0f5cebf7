"""A store holding one fine-tuned model's whole chain, written through the real store API in seconds:
sources → corpus (with ``stats.json``) → queries → train-set, a ``model.init`` start checkpoint (a real
tiny model folder with instruction prefixes) and the ``model`` with its card, as the finetune stage
writes it; :func:`commit_report` adds an evaluation of it."""

from __future__ import annotations

import json
from pathlib import Path

from m3.store import Store
from m3.store.manifest import Producer
from tasks.training import TrainConfig
from tasks.training.card import render_card
from tasks.training.card_facts import card_facts, train_languages
from tasks.training.resumable_run import folder_files
from tests.support.models import tiny_m3

PREFIXES = ("query: ", "passage: ")
INIT = "acme/tiny-m3"  # a hub id: the card's front matter names it as base_model
SOURCE_IDENTITY = "5e" * 32
# Documents kept per source and language, as tasks/ingest counts them in stats.json.
KEPT = {"wikipedia": {"en": 7, "ko": 5}, "mc4": {"de": 4}}
TRAIN_LANGS = ["en", "en", "en", "ko", "ko", "de"]
TRAIN = TrainConfig(functions=["dense", "sparse", "multivec"], group_size=2, max_steps=3, lr=2e-5)
SUMMARY = {
    "steps": 3,
    "epochs": 1.0,
    "examples": 6,
    "final_loss": 0.4321,
    "tokens_per_s": 1234.5,
    "seconds": 2.0,
}


def _file(root: Path, name: str, text: str) -> Path:
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def _stats() -> dict:
    langs = sorted({lang for per in KEPT.values() for lang in per})
    by_source_lang = {
        s: {lang: {"read": n + 1, "kept": n} for lang, n in per.items()} for s, per in KEPT.items()
    }
    by_lang = {lang: {"kept": sum(per.get(lang, 0) for per in KEPT.values())} for lang in langs}
    kept = sum(n for per in KEPT.values() for n in per.values())
    return {
        "totals": {"read": kept + 5, "kept": kept},
        "by_lang": by_lang,
        "by_source_lang": by_source_lang,
    }


def build_model_store(root: Path) -> tuple[Store, dict[str, str]]:
    """The store and the manifest id of each artifact by ref (``model/tiny``, ``corpus/tiny``, ...)."""
    store = Store(str(root / "store"), cache_dir=root / "cache")
    files = root / "files"
    ids: dict[str, str] = {}

    def commit(kind, name, paths, parents=(), stage="", metrics=None, config=None):
        m = store.commit(
            kind,
            name,
            paths,
            parents=[ids[p] for p in parents],
            producer=Producer(stage=stage, flow=stage, config=config or {}),
            metrics=metrics or {},
            ref=f"{kind}/{name}",
        )
        ids[f"{kind}/{name}"] = m.id
        return m

    for source in KEPT:
        commit("source", f"tiny.{source}", {"raw": _file(files, source, source)}, stage="register-source")
    commit(
        "corpus",
        "tiny",
        {"stats.json": _file(files, "stats.json", json.dumps(_stats()))},
        [f"source/tiny.{s}" for s in KEPT],
        "ingest",
    )
    commit(
        "queries",
        "tiny",
        {"part-0.parquet": _file(files, "q", "q")},
        ["corpus/tiny"],
        "synthesize",
        {"queries": 9, "train": 6, "test": 3, "backend": "ict"},
    )
    rows = [
        {"query": f"q{i}", "pos": [f"p{i}"], "neg": [f"n{i}"], "query_id": f"q{i}", "lang": lang}
        for i, lang in enumerate(TRAIN_LANGS)
    ]
    train = _file(files, "train.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    commit(
        "train-set",
        "tiny",
        {"train.jsonl": train},
        ["queries/tiny"],
        "mine",
        {"queries": len(rows), "negatives": len(rows), "teacher": "bm25"},
    )
    model = tiny_m3()
    model.set_prefixes(*PREFIXES)
    start = model.save_pretrained(root / "start")
    commit(
        "checkpoint",
        "tiny-init",
        folder_files(start),
        stage="init",
        metrics={
            "init": INIT,
            "source_kind": "hub",
            "source_identity": SOURCE_IDENTITY,
            "model_type": "xlm-roberta",
            "layers": 1,
            "hidden_size": 32,
            "parameters": 12345,
            "pooling": "cls",
            "heads": {"sparse_linear.pt": "initialised", "colbert_linear.pt": "initialised"},
            "max_length": 128,
        },
    )
    # The finetune stage's folder: the trained model (here: the start, unchanged) and its card.
    trained = model.save_pretrained(root / "trained")
    parents = [ids["checkpoint/tiny-init"], ids["train-set/tiny"]]
    facts = card_facts(
        store, "tiny", parents, trained, TRAIN.model_dump(mode="json"), SUMMARY, train_languages(train)
    )
    (trained / "README.md").write_text(render_card(facts), encoding="utf-8")
    commit(
        "model",
        "tiny",
        folder_files(trained),
        ["checkpoint/tiny-init", "train-set/tiny"],
        "finetune",
        SUMMARY,
        {"train": TRAIN.model_dump(mode="json")},
    )
    return store, ids


def commit_report(store: Store, ids: dict[str, str], root: Path, name: str, model: str, table: dict) -> str:
    """A ``report`` of ``model`` (a ref in ``ids``) whose nDCG@10 table is ``table`` (system → column →
    score, as tasks/evaluate/report.py writes ``metrics.tables``)."""
    metrics = {
        "model": ids[model],
        "queries": 3,
        "passages": 12,
        "tables": {"ndcg_cut_10": table},
        "avg": {"ndcg_cut_10": {s: row["avg"] for s, row in table.items()}},
        "datasets": [{"name": "ict-en"}, {"name": "ict-ko"}],
    }
    report = store.commit(
        "report",
        name,
        {"report.md": _file(root / "files", f"{name}.md", "| x |")},
        parents=[ids[model], ids["queries/tiny"]],
        producer=Producer(stage="evaluate"),
        metrics=metrics,
        ref=f"report/{name}",
    )
    return report.id
