"""Instruction prefixes (multilingual-e5: "query: " / "passage: "): the model applies them by side,
its folder keeps them for our loader, sentence-transformers and FlagEmbedding users, SparseEncoder
refuses the folder instead of adding an untrained head, and a profile's override reaches training."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import yaml

from m3.app.profile import load_profile
from model.config import ModelSpec
from model.init import resolve_init
from model.m3 import M3Model
from tasks.training import TrainConfig, TrainExample
from tasks.training.stage import load_init, pair_examples
from tasks.training.trainer import tokenize_examples
from tests.support.text import TEXTS

SMALL = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2}
E5 = {"query_prefix": "query: ", "passage_prefix": "passage: "}


@pytest.fixture(scope="module")
def e5_like(tok_dir) -> M3Model:
    return M3Model.from_spec(ModelSpec(**SMALL, **E5, seed=2), tok_dir, device="cpu")


def test_a_text_embeds_differently_as_query_and_as_passage(e5_like):
    query = e5_like.encode(TEXTS, prompt="query", return_sparse=True)
    passage = e5_like.encode(TEXTS, prompt="passage", return_sparse=True)
    assert np.abs(query["dense_vecs"] - passage["dense_vecs"]).max() > 1e-3
    # the prefix is put before the text, nothing else: the same as writing it by hand
    by_hand = e5_like.encode(["query: " + t for t in TEXTS], return_sparse=True)
    np.testing.assert_allclose(query["dense_vecs"], by_hand["dense_vecs"], atol=1e-6)
    assert query["lexical_weights"] == by_hand["lexical_weights"]
    # None encodes the text as given
    raw = e5_like.encode(TEXTS)["dense_vecs"]
    assert np.abs(raw - query["dense_vecs"]).max() > 1e-3
    with pytest.raises(ValueError, match="'query', 'passage' or None"):
        e5_like.encode(TEXTS, prompt="document")


def test_the_prefix_counts_toward_max_length_and_mcls(e5_like):
    cut = e5_like.tokenize(TEXTS, 8, prompt="query")
    assert cut == e5_like.tokenize(["query: " + t for t in TEXTS], 8)
    assert max(len(ids) for ids in cut) == 8
    mcls = e5_like.encode(TEXTS, mcls=True, mcls_interval=4, prompt="passage")["dense_vecs"]
    by_hand = e5_like.encode(["passage: " + t for t in TEXTS], mcls=True, mcls_interval=4)["dense_vecs"]
    np.testing.assert_allclose(mcls, by_hand, atol=1e-6)


def test_a_model_without_prefixes_encodes_both_sides_as_before(tok_dir):
    plain = M3Model.from_spec(ModelSpec(**SMALL, seed=2), tok_dir, device="cpu")
    assert plain.prefixes == ("", "")
    before = plain.encode(TEXTS)["dense_vecs"]
    for side in ("query", "passage"):
        np.testing.assert_array_equal(plain.encode(TEXTS, prompt=side)["dense_vecs"], before)


def test_a_saved_folder_keeps_its_prefixes_for_every_loader(e5_like, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    folder = e5_like.save_pretrained(tmp_path / "m3")
    again = M3Model.from_pretrained(folder, device="cpu")
    assert again.prefixes == ("query: ", "passage: ")
    cfg = json.loads((folder / "m3_config.json").read_text())
    assert cfg["query_prefix"] == "query: " and cfg["passage_prefix"] == "passage: "
    # FlagEmbedding reads instructions only from its constructor: the folder says what to pass
    assert cfg["flagembedding_kwargs"] == {
        "query_instruction_for_retrieval": "query: ",
        "passage_instruction_for_retrieval": "passage: ",
    }
    query = e5_like.encode(TEXTS, prompt="query")["dense_vecs"]
    passage = e5_like.encode(TEXTS, prompt="passage")["dense_vecs"]
    for path in (folder, e5_like.export_sentence_transformers(tmp_path / "st")):
        st = SentenceTransformer(str(path), device="cpu")
        assert st.prompts == {"query": "query: ", "document": "passage: "}
        np.testing.assert_allclose(st.encode_query(TEXTS), query, atol=1e-5)
        np.testing.assert_allclose(st.encode_document(TEXTS), passage, atol=1e-5)


def test_sparse_encoder_refuses_an_m3_folder_naming_the_route_that_works(e5_like, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from sentence_transformers import SparseEncoder

    folder = e5_like.save_pretrained(tmp_path / "m3")
    with pytest.raises(
        ValueError, match=r"M3Model\.from_pretrained\(folder\)\.encode\(texts, return_sparse=True\)"
    ):
        SparseEncoder(str(folder), device="cpu")
    # the route it names gives the trained lexical weights
    ours = M3Model.from_pretrained(folder, device="cpu").encode(TEXTS, return_sparse=True, return_dense=False)
    assert ours["lexical_weights"] == e5_like.encode(TEXTS, return_sparse=True)["lexical_weights"]


def _profile_with_model(tmp_path, model: dict):
    data = json.loads(load_profile("minilm-cpu").model_dump_json())
    data["model"] = model
    path = tmp_path / "profile.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_profile(str(path))


def test_a_profile_prefix_override_reaches_the_training_tokens(tok_dir, tmp_path):
    start = M3Model.from_spec(ModelSpec(**SMALL), tok_dir, device="cpu").save_pretrained(tmp_path / "start")
    profile = _profile_with_model(tmp_path, {"init": str(start), **E5})
    model, info = load_init(profile.model, resolve_init(profile.model.init))
    assert info["prefixes"] == {"query": "query: ", "passage": "passage: "}
    checkpoint = M3Model.from_pretrained(model.save_pretrained(tmp_path / "init"), device="cpu")

    pairs = pd.DataFrame(
        {
            "query": ["Ein Satz.", "The history of Paris"],
            "positive": ["A sentence.", "Paris was founded in the 3rd century BC."],
            "kind": ["translation", "title-body"],
        }
    )
    examples = [*pair_examples(pairs), TrainExample(query="Who founded Paris?", pos="Paris", negs=["Rome"])]
    cfg = TrainConfig()
    data = tokenize_examples(checkpoint, examples, cfg)

    def ids(prefix: str, text: str, length: int) -> list[int]:
        return checkpoint.tokenize([prefix + text], length)[0]

    assert data.queries == [ids("query: ", e.query, cfg.q_max_length) for e in examples]
    # (this tiny tokenizer has no ":", so the prefix reads back as "query")
    assert checkpoint.tokenizer.decode(data.queries[2], skip_special_tokens=True).startswith("query Who")
    # a translation's other side is a query too; a body, a positive and a negative are passages
    assert data.passages[data.pos[0]] == ids("query: ", "A sentence.", cfg.max_length)
    assert data.passages[data.pos[1]] == ids("passage: ", pairs["positive"][1], cfg.max_length)
    assert data.passages[data.negs[2][0]] == ids("passage: ", "Rome", cfg.max_length)


def test_a_profile_string_overrides_the_folder_prefix_and_null_keeps_it(e5_like, tmp_path):
    folder = e5_like.save_pretrained(tmp_path / "e5")
    profile = _profile_with_model(tmp_path, {"init": str(folder), "query_prefix": ""})
    model, info = load_init(profile.model, resolve_init(profile.model.init))
    assert model.prefixes == ("", "passage: ") and info["prefixes"]["passage"] == "passage: "
