"""Retrieval evaluation sets behind one interface: ``load_datasets(spec) -> list[EvalDataset]``.

One :class:`EvalDataset` is one column of the paper's tables: a query set in one language, the corpus
it searches and graded judgements (qrels). Specs name a format and its files:

==========================================  ===================================================
``beir:DIR``                                BEIR layout: corpus.jsonl, queries.jsonl, qrels/SPLIT.tsv
``miracl:TOPICS:QRELS:CORPUS``              topics TSV (``qid\\tquery``) + TREC qrels + corpus JSONL
``mrtydi:TOPICS:QRELS:CORPUS``              the same layout (Mr.TyDi topics are often gzipped)
``mldr:DIR[:SPLIT]``                        MLDR: corpus.jsonl + SPLIT.jsonl with positive_passages
``xquad-r:FILE``                            XQuAD-R SQuAD JSON; candidates are sentences (LAReQA)
``tatoeba:DIR:LANG[,LANG...]``              LASER Tatoeba bitext; query in LANG, corpus English
``hf:DATASET_ID[:CONFIG]``                  a BEIR-shaped Hugging Face dataset (online only)
==========================================  ===================================================

Every loader goes through :func:`finalize`, which never lets an inconsistent file produce a silently
wrong number: malformed lines raise :class:`DataError` naming file and line; empty queries, judgements
naming unknown queries or passages, and queries left without a relevant passage are dropped and
*counted* (``EvalDataset.warnings``, logged, carried into the report).
"""

from __future__ import annotations

import gzip
import io
import json
import logging
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pandas as pd

logger = logging.getLogger(__name__)

Qrels = dict[str, dict[str, int]]


class DataError(ValueError):
    """An evaluation file that cannot be read as its format; the message names file and line."""


@dataclass
class EvalDataset:
    """One evaluation column: queries (query_id, query), corpus (passage_id, passage), qrels."""

    name: str  # column label, usually the query language
    spec: str  # the spec it was loaded from
    queries: pd.DataFrame
    corpus: pd.DataFrame
    qrels: Qrels
    query_lang: str = ""
    corpus_lang: str = ""
    files: list[Path] = field(default_factory=list)
    warnings: dict[str, int] = field(default_factory=dict)  # problems found (dropped or repaired)
    notes: dict[str, int] = field(default_factory=dict)  # facts worth stating, not problems
    # The corpus is the same kind of text as the queries (bitext): both sides take the query prefix.
    symmetric: bool = False

    @property
    def corpus_side(self) -> Literal["query", "passage"]:
        """Whose instruction prefix the corpus takes: a bitext corpus is encoded as queries.
        (``model.m3.Prompt``, spelled out: the datasets import nothing of the model.)"""
        return "query" if self.symmetric else "passage"

    def summary(self) -> dict:
        return {
            "name": self.name,
            "spec": self.spec,
            "query_lang": self.query_lang,
            "corpus_lang": self.corpus_lang,
            "queries": len(self.queries),
            "passages": len(self.corpus),
            "judgements": sum(len(r) for r in self.qrels.values()),
            "files": [str(p) for p in self.files],
            "warnings": dict(self.warnings),
            "notes": dict(self.notes),
        }


# ------------------------------------------------------------------------------------------ reading
class _CheckedGzip(gzip.GzipFile):
    """A gzip reader whose cut or damaged stream is a :class:`DataError` naming the file. Left as it
    is, a cut stream is an ``EOFError``, which the command line cannot tell from Ctrl-D: ``m3 eval``
    printed "aborted" and exited 130."""

    def read(self, size: int | None = -1) -> bytes:
        try:
            return super().read(size)
        except EOFError:
            raise DataError(f"{self.name}: the gzip stream ends early (the file is cut short)") from None
        except (gzip.BadGzipFile, zlib.error) as exc:
            raise DataError(f"{self.name}: not a valid gzip stream ({exc})") from None

    def read1(self, size: int = -1) -> bytes:
        return self.read(size)


def open_text(path: str | Path) -> io.TextIOBase:
    """A text handle, gunzipping ``.gz`` files; UTF-8 with a BOM tolerated."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"evaluation file {path} does not exist")
    if path.suffix == ".gz":
        return io.TextIOWrapper(_CheckedGzip(path, "rb"), encoding="utf-8-sig")
    return open(path, encoding="utf-8-sig")  # noqa: SIM115 - returned to the caller


def read_jsonl(path: str | Path) -> Iterator[tuple[int, dict]]:
    """(line number, object) per non-blank line; a bad line is a DataError naming it."""
    with open_text(path) as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{n}: not valid JSON ({exc.msg})") from None
            if not isinstance(obj, dict):
                raise DataError(f"{path}:{n}: expected a JSON object")
            yield n, obj


def read_tsv(path: str | Path, min_cols: int, max_cols: int | None = None) -> Iterator[tuple[int, list[str]]]:
    """Tab- (or, for TREC qrels, whitespace-) separated rows with a column-count check."""
    with open_text(path) as fh:
        for n, line in enumerate(fh, 1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            cols = line.split("\t") if "\t" in line else line.split()
            if len(cols) < min_cols or (max_cols is not None and len(cols) > max_cols):
                want = f"{min_cols}" if max_cols == min_cols else f"{min_cols}..{max_cols or 'n'}"
                raise DataError(f"{path}:{n}: expected {want} columns, found {len(cols)}: {line[:80]!r}")
            yield n, cols


def read_trec_qrels(path: str | Path) -> Qrels:
    """TREC qrels ``qid iter docid rel`` (MIRACL, Mr.TyDi) or BEIR's ``query-id corpus-id score``
    TSV with a header; relevance must be an integer."""
    qrels: Qrels = {}
    for n, cols in read_tsv(path, 3, 4):
        if n == 1 and not cols[-1].lstrip("-").isdigit():
            continue  # header (BEIR: query-id corpus-id score)
        qid, docid, rel = (cols[0], cols[2], cols[3]) if len(cols) == 4 else (cols[0], cols[1], cols[2])
        try:
            qrels.setdefault(qid, {})[docid] = int(rel)
        except ValueError:
            raise DataError(f"{path}:{n}: relevance {rel!r} is not an integer") from None
    return qrels


def read_topics(path: str | Path) -> pd.DataFrame:
    """``qid<TAB>query`` topics (Anserini's MIRACL / Mr.TyDi files); a query may hold spaces."""
    rows = []
    with open_text(path) as fh:
        for n, line in enumerate(fh, 1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            qid, tab, query = line.partition("\t")
            if not tab:
                raise DataError(f"{path}:{n}: expected 'qid<TAB>query', found {line[:80]!r}")
            rows.append((qid.strip(), query))
    return pd.DataFrame(rows, columns=["query_id", "query"], dtype=object)


def corpus_from_jsonl(path: str | Path, id_keys=("_id", "docid", "id"), title_sep: str = " ") -> pd.DataFrame:
    """Corpus JSONL (BEIR ``_id/title/text``, MIRACL ``docid/title/text``, MLDR ``docid/text``).

    The passage text is ``title + sep + text`` when a title exists, as BEIR and the MIRACL baselines
    index it.
    """
    ids, texts = [], []
    for n, obj in read_jsonl(path):
        pid = next((obj[k] for k in id_keys if k in obj), None)
        if pid is None:
            raise DataError(f"{path}:{n}: no passage id (one of {', '.join(id_keys)})")
        text = obj.get("text")
        if not isinstance(text, str):
            raise DataError(f"{path}:{n}: 'text' must be a string")
        title = obj.get("title") or ""
        ids.append(str(pid))
        texts.append(f"{title}{title_sep}{text}" if title else text)
    return pd.DataFrame({"passage_id": ids, "passage": texts}, dtype=object)


# ------------------------------------------------------------------------------------- consistency
def _bump(warnings: dict[str, int], key: str, n: int = 1) -> None:
    if n:
        warnings[key] = warnings.get(key, 0) + n


def finalize(ds: EvalDataset, strict: bool = False) -> EvalDataset:
    """Check a loaded dataset and drop (counted) what would make its numbers wrong.

    Errors: duplicate query or passage ids (which one would the qrels mean?), no usable query.
    Counted and dropped: empty queries, qrels for unknown queries, judgements naming unknown
    passages, queries without qrels or without any relevant (rel > 0) passage in the corpus. With
    ``strict`` any counted problem is an error instead.
    """
    where = ds.spec
    for frame, col in ((ds.queries, "query_id"), (ds.corpus, "passage_id")):
        dup = frame[col][frame[col].duplicated()]
        if len(dup):
            raise DataError(f"{where}: {len(dup)} duplicate {col}s (first: {dup.iloc[0]!r})")
    w = ds.warnings
    q = ds.queries.copy()
    q["query"] = q["query"].fillna("").astype(str)
    empty = q["query"].str.strip() == ""
    _bump(w, "empty_queries", int(empty.sum()))
    q = q[~empty]
    known_q = set(q["query_id"])
    all_q = set(ds.queries["query_id"])
    known_p = set(ds.corpus["passage_id"])
    qrels: Qrels = {}
    for qid, rels in ds.qrels.items():
        if qid not in known_q:
            if qid not in all_q:
                _bump(w, "qrels_unknown_query")
            continue
        kept = {}
        for pid, rel in rels.items():
            if pid in known_p:
                kept[pid] = rel
            else:
                _bump(w, "qrels_unknown_passage")
        if any(r > 0 for r in kept.values()):
            qrels[qid] = kept
        else:
            _bump(w, "queries_without_relevant_passage")
    no_qrels = ~q["query_id"].isin(set(ds.qrels))
    _bump(w, "queries_without_qrels", int(no_qrels.sum()))
    q = q[q["query_id"].isin(set(qrels))].reset_index(drop=True)
    if strict and w:
        raise DataError(f"{where}: inconsistent data: {w}")
    for key, n in w.items():
        logger.warning("%s: %d %s", where, n, key.replace("_", " "))
    if q.empty:
        raise DataError(f"{where}: no query with a relevant passage in the corpus is left ({w or 'empty'})")
    ds.queries = q
    ds.qrels = qrels
    ds.corpus = ds.corpus.reset_index(drop=True)
    return ds


# ---------------------------------------------------------------------------------------- dispatch
FORMATS = ("beir", "miracl", "mrtydi", "mldr", "xquad-r", "tatoeba", "hf")


def _split_spec(spec: str) -> tuple[str, list[str]]:
    fmt, sep, rest = spec.partition(":")
    if not sep or fmt not in FORMATS:
        raise DataError(
            f"dataset spec {spec!r}: expected FORMAT:ARGS with FORMAT one of {', '.join(FORMATS)}"
        )
    # Windows drive letters aside, ':' separates arguments; a path holding ':' can be given via
    # a symlink. os.sep-free args are fine.
    return fmt, rest.split(":")


def resolve_spec_paths(spec: str, base_dir: str) -> str:
    """A dataset spec (``FORMAT:PATH[:...]``) with a relative PATH made absolute from ``base_dir``."""
    fmt, sep, rest = spec.partition(":")
    path, sep2, tail = rest.partition(":")
    if not sep or not path or Path(path).is_absolute() or not (Path(base_dir) / path).exists():
        return spec
    return f"{fmt}:{(Path(base_dir) / path).resolve()}{sep2}{tail}"


def load_datasets(spec: str, strict: bool = False, max_queries: int | None = None) -> list[EvalDataset]:
    """Load the evaluation set(s) a spec names (one per language for multi-language specs).

    ``max_queries`` keeps the first N usable queries of each (for quick checks; the report says so).
    """
    from tasks.eval_data import formats

    fmt, args = _split_spec(spec)
    if fmt == "beir":
        out = [formats.load_beir(spec, *args)]
    elif fmt in ("miracl", "mrtydi"):
        out = [formats.load_topics_qrels(spec, *args)]
    elif fmt == "mldr":
        out = [formats.load_mldr(spec, *args)]
    elif fmt == "xquad-r":
        out = [formats.load_xquad_r(spec, *args)]
    elif fmt == "tatoeba":
        if len(args) != 2:
            raise DataError(f"dataset spec {spec!r}: expected tatoeba:DIR:LANG[,LANG...]")
        out = [
            formats.load_tatoeba(f"tatoeba:{args[0]}:{lang}", args[0], lang) for lang in args[1].split(",")
        ]
    else:
        from tasks.eval_data.hf import load_hf

        out = [load_hf(spec, *args)]
    done = [finalize(ds, strict=strict) for ds in out]
    if max_queries is not None:
        for ds in done:
            if len(ds.queries) > max_queries:
                ds.queries = ds.queries.iloc[:max_queries].reset_index(drop=True)
                keep = set(ds.queries["query_id"])
                ds.qrels = {q: r for q, r in ds.qrels.items() if q in keep}
                ds.notes["truncated_to_max_queries"] = max_queries
    return done
