"""The passage pool and the training queries of a ``queries`` artifact, as every teacher mines them."""

from __future__ import annotations

import functools

import pandas as pd

from m3.artifact_io import read_table
from m3.store import Store


def split_pool(table: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(passage pool, training queries) of a ``queries`` table, in artifact order.

    The pool is every distinct passage (train and test positives), the same for every teacher.
    """
    passages = table.drop_duplicates("passage_id")[["passage_id", "passage", "doc_id", "lang"]]
    train = table[table["split"] == "train"]
    return passages.reset_index(drop=True), train.reset_index(drop=True)


@functools.lru_cache(maxsize=2)
def load_frames(store_url: str, queries_id: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The pool and training queries of a queries artifact, read once per process."""
    return split_pool(read_table(Store(store_url).materialize(queries_id), "queries"))
