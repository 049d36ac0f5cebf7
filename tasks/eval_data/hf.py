"""Hugging Face dataset ids, for users who are online (never used by this project's tests).

Reads the BEIR/MTEB layout that most retrieval sets on the hub follow (e.g. ``mteb/scifact``,
``miracl/...`` mirrors in MTEB format): configs ``corpus`` (``_id``, ``title``, ``text``), ``queries``
(``_id``, ``text``) and ``default`` (qrels: ``query-id``, ``corpus-id``, ``score``), split ``test``.
"""

from __future__ import annotations

import pandas as pd

from tasks.eval_data import DataError, EvalDataset


def load_hf(spec: str, dataset_id: str, split: str = "test") -> EvalDataset:
    try:
        import datasets
    except ImportError:
        raise DataError(
            f"{spec}: Hugging Face datasets need `pip install datasets` and network access"
        ) from None

    def rows(config: str, part: str):
        return datasets.load_dataset(dataset_id, config, split=part)

    corpus = rows("corpus", "corpus")
    queries = rows("queries", "queries")
    qrels_rows = rows("default", split)
    for name, need, got in (
        ("corpus", {"_id", "text"}, corpus.column_names),
        ("queries", {"_id", "text"}, queries.column_names),
        ("qrels", {"query-id", "corpus-id", "score"}, qrels_rows.column_names),
    ):
        if not need <= set(got):
            raise DataError(f"{spec}: {name} has columns {got}, expected {sorted(need)} (BEIR/MTEB layout)")
    titles = corpus["title"] if "title" in corpus.column_names else [""] * len(corpus)
    qrels: dict[str, dict[str, int]] = {}
    for r in qrels_rows:
        qrels.setdefault(str(r["query-id"]), {})[str(r["corpus-id"])] = int(r["score"])
    return EvalDataset(
        name=dataset_id.rsplit("/", 1)[-1],
        spec=spec,
        queries=pd.DataFrame({"query_id": [str(x) for x in queries["_id"]], "query": queries["text"]}),
        corpus=pd.DataFrame(
            {
                "passage_id": [str(x) for x in corpus["_id"]],
                "passage": [f"{t} {x}" if t else x for t, x in zip(titles, corpus["text"], strict=True)],
            }
        ),
        qrels=qrels,
    )
