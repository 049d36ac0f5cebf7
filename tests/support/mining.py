"""Mining pools from real Tatoeba text (shared/data): the true positive of every query is known."""

from __future__ import annotations

import pandas as pd
import regex

from tests.support.paths import SHARED_DATA

TATOEBA = SHARED_DATA / "tatoeba"


def unique_lines(name: str) -> list[str]:
    lines = (TATOEBA / name).read_text(encoding="utf-8").splitlines()
    return list(dict.fromkeys(line.strip() for line in lines if line.strip()))


def to_query(text: str) -> str:
    return regex.sub(r"[^\w\s']+", "", text).lower().strip()


def tatoeba_pools(n_per_lang: int | None = None, n_dups: int = 30) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(queries, passages): real Tatoeba sentences (English, German) four to a pseudo-document, each
    queried by itself lower-cased without punctuation, plus ``n_dups`` copies of positives per
    language under other documents (every other one with odd whitespace)."""
    passages, queries = [], []
    for lang, name in (("en", "tatoeba.deu-eng.eng"), ("de", "tatoeba.deu-eng.deu")):
        lines = unique_lines(name)[:n_per_lang]
        for i, text in enumerate(lines):
            pid, doc = f"{lang}:{i}", f"{lang}:d{i // 4}"
            passages.append({"passage_id": pid, "passage": text, "doc_id": doc, "lang": lang})
            queries.append(
                {
                    "query_id": f"q:{pid}",
                    "query": to_query(text),
                    "doc_id": doc,
                    "lang": lang,
                    "passage_id": pid,
                    "passage": text,
                }
            )
        for j in range(n_dups):  # copies of positives, in other documents
            text = lines[j * 3]
            if j % 2:
                text = "  " + text.replace(" ", "   ") + " "
            passages.append(
                {"passage_id": f"{lang}:dup{j}", "passage": text, "doc_id": f"{lang}:x{j}", "lang": lang}
            )
    return pd.DataFrame(queries), pd.DataFrame(passages)


def queries_with_test_split(queries: pd.DataFrame, passages: pd.DataFrame, backend: str) -> pd.DataFrame:
    """A queries artifact's table: ``queries`` as the train split, and every passage none of them is
    about as a test-split row (query ``-``), so the passage pool holds all of ``passages``."""
    extra = passages[~passages["passage_id"].isin(queries["passage_id"])]
    return pd.concat(
        [
            queries.assign(backend=backend, model="", split="train"),
            extra.assign(
                query_id="t:" + extra["passage_id"], query="-", backend=backend, model="", split="test"
            ),
        ],
        ignore_index=True,
    )
