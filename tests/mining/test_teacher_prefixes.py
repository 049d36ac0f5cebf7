"""A dense teacher encodes queries and the passage pool after its own instruction prefixes, unless the
profile's ``mine.encode`` sets others."""

from __future__ import annotations

import numpy as np

from model.config import ModelSpec
from model.m3 import M3Model
from tasks.mining.teachers import encode_texts, teacher_prefix
from tests.support.text import TEXTS

SPEC = ModelSpec(
    hidden_size=32,
    intermediate_size=64,
    num_attention_heads=2,
    query_prefix="query: ",
    passage_prefix="passage: ",
)


def test_a_teacher_encodes_each_side_with_its_prefix_unless_mine_overrides_it(tok_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model = M3Model.from_spec(SPEC, tok_dir, device="cpu")
    folder = model.save_pretrained(tmp_path / "teacher")
    kw = {"batch_size": 4, "max_length": 64}
    for side in ("query", "passage"):
        expected = model.encode(TEXTS, prompt=side, **kw)["dense_vecs"]
        for kind in ("m3", "sentence-transformers"):  # the folder read as M3 or as sentence-transformers
            got = encode_texts(folder, kind, TEXTS, prompt=side, **kw)
            np.testing.assert_allclose(got, expected, atol=1e-5)
    # mine.encode.query_prefix: "" encodes the raw text
    raw = encode_texts(folder, "m3", TEXTS, prompt="query", prefix="", **kw)
    np.testing.assert_allclose(raw, model.encode(TEXTS, **kw)["dense_vecs"], atol=1e-5)


def test_a_sentence_transformers_teacher_uses_its_prompts(tok_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    folder = M3Model.from_spec(SPEC, tok_dir, device="cpu").export_sentence_transformers(tmp_path / "st")
    st = SentenceTransformer(str(folder), device="cpu")
    assert teacher_prefix(st, "query") == "query: " and teacher_prefix(st, "passage") == "passage: "
    assert teacher_prefix(st, "passage", override="p: ") == "p: " and teacher_prefix(st, None) == ""
