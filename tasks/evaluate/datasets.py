"""The evaluation sets of the pipeline stage: its held-out ICT queries (one set per language), the
MLDR-style long-document sets built from their whole documents, and the profile's evaluation-only
sets (``evaluate.datasets``)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import regex

from m3.store import Store
from tasks.eval_data import EvalDataset, _bump, load_datasets, resolve_spec_paths
from tasks.eval_data.formats import write_mldr
from tasks.evaluate.config import EvalConfig
from tasks.evaluate.runs import qrels_from_queries

logger = logging.getLogger(__name__)

LONG_DOCS = "long-docs"  # the report's folder holding the MLDR-format long-document sets


def held_out(table: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A queries artifact's held-out (split=test) queries and the pool they search: every query's
    passage, once (training queries' passages stay in the pool as distractors)."""
    passages = table.drop_duplicates("passage_id")[["passage_id", "passage", "doc_id", "lang"]]
    return table[table["split"] == "test"], passages


def _languages(queries_test: pd.DataFrame, per_language: bool) -> list[str | None]:
    """One set per held-out language (sorted), or one set (None) over all of them."""
    return sorted(queries_test["lang"].unique()) if per_language else [None]


def _of_language(frame: pd.DataFrame, lang: str | None) -> pd.DataFrame:
    return frame if lang is None else frame[frame["lang"] == lang]


def _held_out_set(
    kind: str, lang: str | None, queries: pd.DataFrame, corpus: pd.DataFrame, qrels: dict, **extra
) -> EvalDataset:
    """One column of the report: the held-out queries of ``lang`` ("all" for None) over ``corpus``."""
    return EvalDataset(
        name=lang or "all",
        spec=f"{kind}:{lang or 'all'}",
        queries=queries[["query_id", "query"]].reset_index(drop=True),
        corpus=corpus,
        qrels=qrels,
        query_lang=lang or "",
        corpus_lang=lang or "",
        **extra,
    )


def datasets_from_ict(
    queries_test: pd.DataFrame, passages: pd.DataFrame, per_language: bool = True
) -> list[EvalDataset]:
    """The pipeline's held-out ICT queries as evaluation sets: one per language (its own pool)."""
    out = []
    for lang in _languages(queries_test, per_language):
        q = _of_language(queries_test, lang)
        corpus = _of_language(passages, lang)[["passage_id", "passage"]].reset_index(drop=True)
        out.append(_held_out_set("ict", lang, q, corpus, qrels_from_queries(q)))
    return out


def long_document_datasets(
    queries_test: pd.DataFrame,
    documents: pd.DataFrame,
    per_language: bool = True,
    drop_query_sentences: bool = True,
) -> list:
    """MLDR-style long-document sets (the M3 paper's MLDR protocol) from the held-out queries.

    Per language: the corpus is the *whole* documents (``documents``: the corpus artifact's ``id``,
    ``lang``, ``text``) that the held-out queries were made from, the queries are those queries, and
    each query's one relevant item is its source document (``doc_id``), as MLDR judges questions
    generated from one article. Queries whose document is missing from ``documents`` are dropped and
    counted (``warnings["queries_without_document"]``).

    An ICT query (``backend == "ict"``) *is* a sentence of its document, which the passage-level
    evaluation removes from the query's context (tasks.synthesize.IctConfig.remove_prob). With
    ``drop_query_sentences`` the same rule holds here: every occurrence of a held-out ICT query is cut
    from its document (counted in ``notes["query_sentences_removed"]``; one not found verbatim stays
    and is counted in ``warnings["query_sentences_not_found"]``), otherwise retrieval would be a
    verbatim string match. Questions from an LLM (MLDR's own kind of query) are never touched.
    """
    docs = documents.drop_duplicates("id").set_index("id")
    out = []
    for lang in _languages(queries_test, per_language):
        q = _of_language(queries_test, lang)
        known = q["doc_id"].isin(docs.index)
        warnings: dict[str, int] = {}
        notes: dict[str, int] = {}
        _bump(warnings, "queries_without_document", int((~known).sum()))
        q = q[known]
        if q.empty:
            logger.warning("long documents %s: no held-out query has its document in the corpus", lang)
            continue
        doc_ids = list(dict.fromkeys(q["doc_id"]))  # first-seen order: deterministic files
        texts = {d: str(docs.at[d, "text"]) for d in doc_ids}
        if drop_query_sentences and "backend" in q:
            ict = q[q["backend"] == "ict"]
            for did, group in ict.groupby("doc_id", sort=False):
                text = texts[did]
                for sentence in sorted(set(group["query"]), key=len, reverse=True):
                    found = text.count(sentence) if sentence.strip() else 0
                    _bump(notes, "query_sentences_removed", found)
                    _bump(warnings, "query_sentences_not_found", int(found == 0))  # left in, counted
                    text = text.replace(sentence, "") if found else text
                if text != texts[did]:  # the gaps the cut sentences leave
                    texts[did] = regex.sub(r"[ \t]{2,}", " ", text)
        corpus = pd.DataFrame({"passage_id": doc_ids, "passage": [texts[d] for d in doc_ids]})
        qrels = {qid: {did: 1} for qid, did in zip(q["query_id"], q["doc_id"], strict=True)}
        out.append(_held_out_set("long", lang, q, corpus, qrels, warnings=warnings, notes=notes))
    return out


def write_long_document_sets(datasets: Sequence, folder: Path, split: str = "test") -> list:
    """Write each set in MLDR's layout under ``folder/NAME/`` and load it back with the MLDR reader
    (``tasks.eval_data``'s ``mldr:DIR:SPLIT:LANG``), so what is evaluated is exactly what is on disk.

    The returned sets name their folder relative to ``folder``'s parent (``mldr:long-docs/en``).
    """
    folder = Path(folder)
    loaded = []
    for ds in datasets:
        d = folder / ds.name
        write_mldr(ds, d, split)
        spec = f"mldr:{d}:{split}" + (f":{ds.query_lang}" if ds.query_lang else "")
        (back,) = load_datasets(spec)
        back.spec = f"mldr:{folder.name}/{ds.name}"
        back.warnings = {**ds.warnings, **back.warnings}
        back.notes = {**ds.notes, **back.notes}
        loaded.append(back)
    return loaded


def long_document_sets(scratch: Path, queries_test, documents, cfg: EvalConfig) -> list:
    """The MLDR-style sets of the held-out documents, written under ``scratch/long-docs/LANG/``
    (MLDR's ``corpus.jsonl`` + ``test.jsonl``) and read back through the MLDR reader."""
    built = long_document_datasets(queries_test, documents, cfg.per_language, cfg.long_drop_query_sentences)
    if not built:
        raise RuntimeError("evaluate.long_documents: no held-out query has its document in the corpus")
    return write_long_document_sets(built, scratch / LONG_DOCS)


def evaluation_sets(specs: Sequence[str], base_dir: str) -> list[tuple[str, list[EvalDataset]]]:
    """The profile's evaluation-only sets: each spec (paths relative to ``base_dir`` resolved) with
    its sets, named ``FORMAT:NAME`` (columns "xquad-r:de", "tatoeba:deu", apart from held-out "de")."""
    out = []
    for spec in (resolve_spec_paths(s, base_dir) for s in specs):
        got = load_datasets(spec)
        for ds in got:
            ds.name = f"{spec.split(':', 1)[0]}:{ds.name}"
        out.append((spec, got))
    return out


def eval_data_files(files: Sequence[Path]) -> dict[str, Path]:
    """An evaluation set's raw files as an artifact names them: the file name, ``PARENT/NAME`` when an
    earlier file has that name."""
    named: dict[str, Path] = {}
    for p in sorted({Path(f).resolve() for f in files}):
        named[p.name if p.name not in named else f"{p.parent.name}/{p.name}"] = p
    return named


def corpus_of(store: Store, queries_id: str) -> str:
    """The corpus manifest the queries artifact was made from (its ``corpus`` parent)."""
    parents = [p for p in store.manifest(queries_id).parents if store.manifest(p).kind == "corpus"]
    if len(parents) != 1:
        raise RuntimeError(
            f"evaluate.long_documents needs the corpus the queries {queries_id[:12]} were made from, "
            f"but that artifact has {len(parents)} corpus parents"
        )
    return parents[0]
