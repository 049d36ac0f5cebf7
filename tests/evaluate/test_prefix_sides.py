"""Evaluation encodes queries and corpora after the model's instruction prefixes: queries as queries,
a corpus as passages, and a bitext corpus (Tatoeba) as queries too (both sides are sentences)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from model.config import ModelSpec
from model.m3 import M3Model
from tasks.eval_data import EvalDataset, load_datasets
from tasks.evaluate.config import EvalConfig
from tasks.evaluate.encoders import M3Encoder, SentenceTransformerEncoder
from tests.support.paths import SHARED_DATA
from tests.support.text import TEXTS

E5 = {"query_prefix": "query: ", "passage_prefix": "passage: "}


@pytest.fixture(scope="module")
def e5_like(tok_dir) -> M3Model:
    spec = ModelSpec(hidden_size=32, intermediate_size=64, num_attention_heads=2, **E5)
    return M3Model.from_spec(spec, tok_dir, device="cpu")


def test_a_bitext_corpus_is_encoded_as_queries_and_others_as_passages():
    (tatoeba,) = load_datasets(f"tatoeba:{SHARED_DATA / 'tatoeba'}:fra", max_queries=5)
    frame = pd.DataFrame({"query_id": ["q"], "query": ["x"]})
    other = EvalDataset(
        "en", "x", frame, pd.DataFrame({"passage_id": ["p"], "passage": ["y"]}), {"q": {"p": 1}}
    )
    assert tatoeba.corpus_side == "query" and other.corpus_side == "passage"


def test_the_m3_encoder_puts_each_side_s_prefix_first(e5_like):
    cfg = EvalConfig()
    enc = M3Encoder(e5_like, cfg)
    kw = {"batch_size": cfg.encode_batch_size}

    def ours(side, length):
        return e5_like.encode(TEXTS, prompt=side, max_length=length, **kw)["dense_vecs"]

    np.testing.assert_allclose(
        enc.encode(TEXTS, query=True)["dense_vecs"], ours("query", cfg.query_max_length)
    )
    np.testing.assert_allclose(enc.encode(TEXTS, query=False)["dense_vecs"], ours("passage", cfg.max_length))
    as_query = enc.encode(TEXTS, query=False, prompt="query")["dense_vecs"]  # a bitext corpus
    np.testing.assert_allclose(as_query, ours("query", cfg.max_length))


def test_a_sentence_transformers_baseline_uses_its_prompts(e5_like, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = e5_like.export_sentence_transformers(tmp_path / "st")
    base = SentenceTransformerEncoder(str(folder), EvalConfig())
    for query, side in ((True, "query"), (False, "passage")):
        expected = e5_like.encode(TEXTS, prompt=side)["dense_vecs"]
        np.testing.assert_allclose(base.encode(TEXTS, query=query)["dense_vecs"], expected, atol=1e-5)
