"""Readers for the local evaluation formats (see the table in ``tasks.eval_data``)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pandas as pd
import regex

from tasks.bitext import BitextError, read_tatoeba, tatoeba_files
from tasks.eval_data import (
    DataError,
    EvalDataset,
    Qrels,
    _bump,
    corpus_from_jsonl,
    open_text,
    read_jsonl,
    read_topics,
    read_trec_qrels,
)

logger = logging.getLogger(__name__)

_LANG_IN_NAME = regex.compile(r"(?:miracl|mrtydi|mldr)-v[\d.]+-([a-z]{2,3})(?:[-./]|$)")


def _from_rows(
    spec: str,
    lang: str,
    queries: list[tuple[str, str]],
    passages: list[tuple[str, str]],
    qrels: Qrels,
    corpus_lang: str,
    files: list[Path],
    **extra,
) -> EvalDataset:
    """A set read row by row: (query_id, query) and (passage_id, passage) tuples, queries in ``lang``."""
    return EvalDataset(
        name=lang,
        spec=spec,
        queries=pd.DataFrame(queries, columns=["query_id", "query"], dtype=object),
        corpus=pd.DataFrame(passages, columns=["passage_id", "passage"], dtype=object),
        qrels=qrels,
        query_lang=lang,
        corpus_lang=corpus_lang,
        files=files,
        **extra,
    )


def _first_existing(folder: Path, *names: str) -> Path:
    for name in names:
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(f"{folder}: none of {', '.join(names)} exists")


def _lang_from(*paths: str | Path) -> str:
    for p in paths:
        m = _LANG_IN_NAME.search(Path(p).name) or _LANG_IN_NAME.search(str(p))
        if m:
            return m.group(1)
    return ""


# -------------------------------------------------------------------------------------------- BEIR
def load_beir(spec: str, directory: str, split: str = "test") -> EvalDataset:
    """BEIR (Thakur et al., 2021) folder: corpus.jsonl (_id, title, text), queries.jsonl (_id, text),
    qrels/SPLIT.tsv (query-id, corpus-id, score, with a header)."""
    d = Path(directory)
    corpus = corpus_from_jsonl(_first_existing(d, "corpus.jsonl", "corpus.jsonl.gz"))
    qpath = _first_existing(d, "queries.jsonl", "queries.jsonl.gz")
    rows = []
    for n, obj in read_jsonl(qpath):
        if "_id" not in obj:
            raise DataError(f"{qpath}:{n}: query without '_id'")
        rows.append((str(obj["_id"]), obj.get("text") if isinstance(obj.get("text"), str) else ""))
    queries = pd.DataFrame(rows, columns=["query_id", "query"], dtype=object)
    qrels_path = _first_existing(d / "qrels", f"{split}.tsv", f"{split}.tsv.gz")
    lang = _lang_from(d)
    return EvalDataset(
        name=lang or d.name,
        spec=spec,
        queries=queries,
        corpus=corpus,
        qrels=read_trec_qrels(qrels_path),
        query_lang=lang,
        corpus_lang=lang,
        files=[d / "corpus.jsonl", qpath, qrels_path],
    )


# ---------------------------------------------------------------------------------- MIRACL / Mr.TyDi
def load_topics_qrels(spec: str, topics: str, qrels: str, corpus: str, lang: str = "") -> EvalDataset:
    """Topics TSV + TREC qrels (Anserini's MIRACL / Mr.TyDi files) + a corpus JSONL with
    ``docid``/``title``/``text`` (miracl/miracl-corpus, castorini/mr-tydi-corpus)."""
    lang = lang or _lang_from(topics, qrels)
    return EvalDataset(
        name=lang or Path(topics).name,
        spec=spec,
        queries=read_topics(topics),
        corpus=corpus_from_jsonl(corpus),
        qrels=read_trec_qrels(qrels),
        query_lang=lang,
        corpus_lang=lang,
        files=[Path(topics), Path(qrels), Path(corpus)],
    )


# -------------------------------------------------------------------------------------------- MLDR
def load_mldr(spec: str, directory: str, split: str = "test", lang: str = "") -> EvalDataset:
    """MLDR (Chen et al., 2024, the M3 paper's long-document set): ``corpus.jsonl`` (docid, text) and
    ``SPLIT.jsonl`` (query_id, query, positive_passages: [{docid, ...}]), gzipped or not."""
    d = Path(directory)
    corpus = corpus_from_jsonl(_first_existing(d, "corpus.jsonl", "corpus.jsonl.gz"))
    qpath = _first_existing(d, f"{split}.jsonl", f"{split}.jsonl.gz")
    rows, qrels = [], {}
    for n, obj in read_jsonl(qpath):
        if "query_id" not in obj or not isinstance(obj.get("positive_passages"), list):
            raise DataError(f"{qpath}:{n}: MLDR rows need 'query_id' and a 'positive_passages' list")
        qid = str(obj["query_id"])
        rows.append((qid, obj.get("query") if isinstance(obj.get("query"), str) else ""))
        qrels[qid] = {str(p["docid"]): 1 for p in obj["positive_passages"] if "docid" in p}
    lang = lang or _lang_from(d)
    return EvalDataset(
        name=lang or d.name,
        spec=spec,
        queries=pd.DataFrame(rows, columns=["query_id", "query"], dtype=object),
        corpus=corpus,
        qrels=qrels,
        query_lang=lang,
        corpus_lang=lang,
        files=[d / corpus_file for corpus_file in ("corpus.jsonl",)] + [qpath],
    )


def write_mldr(ds: EvalDataset, directory: str | Path, split: str = "test") -> list[Path]:
    """``ds`` in the MLDR layout that :func:`load_mldr` reads: ``corpus.jsonl`` (``docid``, ``text``)
    and ``SPLIT.jsonl`` (``query_id``, ``query``, ``positive_passages: [{docid}]``,
    ``negative_passages: []``), UTF-8, one object per line.

    MLDR judgements are binary, so only relevant (rel > 0) items become positive passages; the
    document text is not repeated inside them (the reader needs the ``docid`` only).
    """
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    corpus_path, queries_path = d / "corpus.jsonl", d / f"{split}.jsonl"
    with open(corpus_path, "w", encoding="utf-8") as fh:
        for pid, text in zip(ds.corpus["passage_id"], ds.corpus["passage"], strict=True):
            fh.write(json.dumps({"docid": str(pid), "text": str(text)}, ensure_ascii=False) + "\n")
    with open(queries_path, "w", encoding="utf-8") as fh:
        for qid, query in zip(ds.queries["query_id"], ds.queries["query"], strict=True):
            positives = [{"docid": str(p)} for p, r in ds.qrels.get(qid, {}).items() if r > 0]
            row = {"query_id": str(qid), "query": str(query), "positive_passages": positives}
            fh.write(json.dumps({**row, "negative_passages": []}, ensure_ascii=False) + "\n")
    return [corpus_path, queries_path]


# ----------------------------------------------------------------------------------------- XQuAD-R
def _json_kind(value: object) -> str:
    """What a parsed JSON value is, in JSON's words: "an array", "a string", "null"..."""
    if isinstance(value, list):
        return "an array"
    if isinstance(value, bool | int | float):
        return "a number" if not isinstance(value, bool) else "a boolean"
    return {str: "a string", dict: "an object", type(None): "null"}.get(type(value), type(value).__name__)


def load_xquad_r(spec: str, path: str) -> EvalDataset:
    """XQuAD-R (Roy et al., 2020, LAReQA): SQuAD JSON whose paragraphs carry ``sentences`` and
    ``sentence_breaks``; every sentence is a candidate and the gold one holds ``answer_start``.

    Candidates are the sentences alone (LAReQA's "sentence only" setting). An answer start falling
    between two sentence spans is given to the next sentence and counted.
    """
    p = Path(path)
    with open_text(p) as fh:
        try:
            data = json.load(fh)
        except json.JSONDecodeError as exc:
            raise DataError(f"{p}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(data, dict) or not isinstance(data.get("data", []), list):
        found = f"'data' is {_json_kind(data['data'])}" if isinstance(data, dict) else _json_kind(data)
        raise DataError(
            f"{p}: expected a JSON object with a 'data' list of articles (SQuAD / XQuAD-R format); "
            f"found {found}"
        )
    lang = p.name.split(".")[0]
    passages: list[tuple[str, str]] = []
    queries: list[tuple[str, str]] = []
    qrels: dict[str, dict[str, int]] = {}
    warnings: dict[str, int] = {}
    for a, article in enumerate(data.get("data", [])):
        paragraphs = article.get("paragraphs", []) if isinstance(article, dict) else None
        if not isinstance(paragraphs, list) or not all(isinstance(g, dict) for g in paragraphs):
            raise DataError(f"{p}: article {a}: expected an object with a 'paragraphs' list of objects")
        for g, para in enumerate(paragraphs):
            sents, breaks = para.get("sentences"), para.get("sentence_breaks")
            if not isinstance(sents, list) or not isinstance(breaks, list) or len(sents) != len(breaks):
                raise DataError(
                    f"{p}: article {a} paragraph {g}: 'sentences' and 'sentence_breaks' missing "
                    "or of different lengths (is this XQuAD-R, not plain XQuAD?)"
                )
            ids = [f"{a}.{g}.{s}" for s in range(len(sents))]
            passages.extend(zip(ids, sents, strict=True))
            for qa in para.get("qas", []):
                if not isinstance(qa, dict) or "id" not in qa or not isinstance(qa.get("answers", []), list):
                    where = f"{p}: article {a} paragraph {g}"
                    raise DataError(f"{where}: a question without an 'id' or an 'answers' list")
                answers = qa.get("answers", [])
                qid = str(qa["id"])
                queries.append((qid, qa.get("question") or ""))
                gold = {}
                for ans in answers:
                    try:
                        start = int(ans["answer_start"])
                    except (KeyError, TypeError, ValueError):
                        raise DataError(f"{p}: question {qid}: an answer has no 'answer_start'") from None
                    hit = [i for i, (b, e) in enumerate(breaks) if b <= start < e]
                    if not hit:
                        hit = [i for i, (b, _) in enumerate(breaks) if b > start][:1]
                        _bump(warnings, "answer_between_sentences")
                    if not hit:
                        _bump(warnings, "answer_outside_paragraph")
                    gold.update({ids[i]: 1 for i in hit})
                qrels[qid] = gold
    if not passages:
        raise DataError(f"{p}: no paragraphs with sentences")
    return _from_rows(spec, lang, queries, passages, qrels, lang, [p], warnings=warnings)


# ----------------------------------------------------------------------------------------- Tatoeba
def load_tatoeba(spec: str, directory: str, lang: str) -> EvalDataset:
    """LASER's Tatoeba test set (Artetxe & Schwenk, 2019): ``tatoeba.LANG-eng.LANG`` and
    ``tatoeba.LANG-eng.eng`` are line-aligned. The query is line i in LANG; the corpus is the English
    side, and line i's translation is the one relevant passage.

    English lines that repeat are merged into one passage (relevant to each of their queries):
    otherwise a model ranking the "other" copy first would be wrongly penalised.
    """
    try:
        q_lines, e_lines = read_tatoeba(directory, lang)
    except BitextError as exc:
        raise DataError(str(exc)) from exc
    src, eng = tatoeba_files(directory, lang)
    pid_of: dict[str, str] = {}
    passages = []
    queries = []
    qrels: Qrels = {}
    merged = 0
    for i, (q, e) in enumerate(zip(q_lines, e_lines, strict=True)):
        key = e.strip()
        if key in pid_of:
            merged += 1
        else:
            pid_of[key] = f"eng.{i}"
            passages.append((pid_of[key], e))
        qid = f"{lang}.{i}"
        queries.append((qid, q))
        qrels[qid] = {pid_of[key]: 1}
    ds = _from_rows(spec, lang, queries, passages, qrels, "eng", [src, eng])
    ds.symmetric = True  # a sentence and its translation: E5 encodes both sides as queries
    _bump(ds.notes, "duplicate_english_lines_merged", merged)
    return ds
