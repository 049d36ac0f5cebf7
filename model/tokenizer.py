"""Train a small SentencePiece unigram tokenizer with the XLM-RoBERTa special-token layout.

XLM-R (and so BGE-M3) uses a SentencePiece unigram model whose ids are shifted by the fairseq offset:
``<s>``=0, ``<pad>``=1, ``</s>``=2, ``<unk>``=3, then SentencePiece piece ``i`` (for ``i >= 3``) at id
``i + 1``, and ``<mask>`` last. We train SentencePiece with its default control ids (``<unk>``=0,
``<s>``=1, ``</s>``=2, no pad), then build the shifted vocabulary for a HF ``XLMRobertaTokenizer`` so
the saved folder loads offline with ``AutoTokenizer.from_pretrained`` (from ``tokenizer.json``; the raw
``sentencepiece.bpe.model`` is saved next to it for reference).
"""

from __future__ import annotations

import io
import logging
import tempfile
from collections.abc import Iterable
from pathlib import Path

import sentencepiece as spm
from pydantic import Field

from m3.strict import StrictModel

logger = logging.getLogger(__name__)

SPECIAL_TOKENS = ("<s>", "<pad>", "</s>", "<unk>")  # ids 0..3, as in XLM-R
MASK_TOKEN = "<mask>"
SPM_FILENAME = "sentencepiece.bpe.model"  # the name XLMRobertaTokenizer expects


class TokenizerConfig(StrictModel):
    """Knobs for :func:`train_tokenizer` (the profile composes this)."""

    vocab_size: int = Field(8000, ge=16)
    seed: int = Field(0, ge=0)
    character_coverage: float = Field(0.9999, gt=0.0, le=1.0)
    input_sentence_size: int = Field(1_000_000, ge=1)  # lines SentencePiece samples for training
    max_lines: int = Field(2_000_000, ge=1)  # lines streamed to the temp file (bounds disk)
    max_sentence_length: int = Field(16384, ge=256)  # bytes; longer lines are cut
    num_threads: int = Field(1, ge=1)  # 1 keeps the EM reduction order, hence the model, deterministic


def _iter_lines(texts: Iterable[str], max_lines: int, max_bytes: int) -> Iterable[str]:
    n = 0
    for text in texts:
        if not text:
            continue
        for line in text.splitlines():
            line = line.strip()
            if not line:
                continue
            raw = line.encode("utf-8")
            if len(raw) > max_bytes:
                line = raw[:max_bytes].decode("utf-8", errors="ignore")
            yield line
            n += 1
            if n >= max_lines:
                return


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    result, shift = 0, 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def _proto_fields(buf: bytes) -> Iterable[tuple[int, int, bytes | int]]:
    """Yield (field, wire_type, value) of a serialized protobuf message (enough for ModelProto)."""
    pos = 0
    while pos < len(buf):
        key, pos = _read_varint(buf, pos)
        field, wire = key >> 3, key & 7
        value: bytes | int
        if wire == 0:
            value, pos = _read_varint(buf, pos)
        elif wire == 1:
            value, pos = buf[pos : pos + 8], pos + 8
        elif wire == 2:
            size, pos = _read_varint(buf, pos)
            value, pos = buf[pos : pos + size], pos + size
        elif wire == 5:
            value, pos = buf[pos : pos + 4], pos + 4
        else:  # groups (3/4) are not used by sentencepiece_model.proto
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield field, wire, value


def precompiled_charsmap(model_bytes: bytes) -> bytes | None:
    """Extract ``normalizer_spec.precompiled_charsmap`` from a SentencePiece model.

    transformers' own extractor needs the ``protobuf`` package; the two fields we need (ModelProto
    field 3 = NormalizerSpec, its field 2 = precompiled_charsmap) are simple to read directly, which
    keeps the HF normalizer identical to SentencePiece's (nmt_nfkc) without another dependency.
    """
    for field, wire, value in _proto_fields(model_bytes):
        if field == 3 and wire == 2 and not isinstance(value, int):  # wire type 2 always carries bytes
            for sub_field, sub_wire, sub_value in _proto_fields(value):
                if sub_field == 2 and sub_wire == 2 and not isinstance(sub_value, int):
                    return bytes(sub_value) or None
    return None


def _train_spm(input_file: Path, vocab_size: int, cfg: TokenizerConfig) -> bytes:
    """The trained model's bytes. The lines are fed through ``sentence_iterator`` and the model comes
    back through ``model_writer``: given file names (``input=``, ``model_prefix=``) SentencePiece
    records them in the model's ``trainer_spec``, and the artifact would carry this machine's temp
    paths."""
    spm.set_random_generator_seed(cfg.seed)
    model = io.BytesIO()
    with input_file.open(encoding="utf-8") as lines:
        spm.SentencePieceTrainer.train(
            sentence_iterator=(line.rstrip("\n") for line in lines),
            model_writer=model,
            model_type="unigram",
            vocab_size=vocab_size,
            hard_vocab_limit=False,  # tiny corpora: accept fewer pieces instead of failing
            character_coverage=cfg.character_coverage,
            input_sentence_size=cfg.input_sentence_size,
            shuffle_input_sentence=True,
            max_sentence_length=cfg.max_sentence_length,
            num_threads=cfg.num_threads,
            unk_id=0,
            bos_id=1,
            eos_id=2,
            pad_id=-1,
            normalization_rule_name="nmt_nfkc",
            minloglevel=2,
        )
    return model.getvalue()


def train_tokenizer(
    texts: Iterable[str],
    out_dir: Path,
    vocab_size: int = 8000,
    seed: int = 0,
    config: TokenizerConfig | None = None,
) -> Path:
    """Train a unigram SentencePiece model on ``texts`` and save an XLM-R-style HF tokenizer folder.

    ``vocab_size`` counts SentencePiece pieces (the HF tokenizer has one more id, ``<mask>``, plus the
    ``<pad>`` the fairseq offset inserts: ``len(tok) == pieces + 2``). On a small corpus the size is
    shrunk until SentencePiece accepts it. Returns ``out_dir``.
    """
    from transformers import XLMRobertaTokenizer

    cfg = (config or TokenizerConfig()).model_copy(update={"vocab_size": vocab_size, "seed": seed})
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    with tempfile.TemporaryDirectory(prefix="m3-spm-") as tmp:
        corpus = Path(tmp) / "corpus.txt"
        n_lines = 0
        with corpus.open("w", encoding="utf-8") as f:
            for line in _iter_lines(texts, cfg.max_lines, cfg.max_sentence_length):
                f.write(line + "\n")
                n_lines += 1
        if n_lines == 0:
            raise ValueError("train_tokenizer: no non-empty text to train on")

        size = cfg.vocab_size
        while True:
            try:
                model_bytes = _train_spm(corpus, size, cfg)
                break
            except RuntimeError as exc:  # e.g. "Vocabulary size is smaller than required_chars"
                msg = str(exc)
                if "required_chars" in msg:  # too small for the alphabet: grow
                    new_size = size * 2
                elif size > 16:  # too large for the corpus even with a soft limit: shrink
                    new_size = max(16, size // 2)
                else:
                    raise
                logger.warning(
                    "sentencepiece rejected vocab_size=%d (%s); retrying with %d", size, msg, new_size
                )
                if new_size == size or new_size > 4 * cfg.vocab_size:
                    raise
                size = new_size

    sp = spm.SentencePieceProcessor(model_proto=model_bytes)
    n_pieces = sp.get_piece_size()
    # fairseq layout: 4 specials, SentencePiece pieces 3.. shifted by one, <mask> last.
    vocab = [(tok, 0.0) for tok in SPECIAL_TOKENS]
    vocab += [(sp.id_to_piece(i), float(sp.get_score(i))) for i in range(3, n_pieces)]
    vocab.append((MASK_TOKEN, 0.0))

    (out_dir / SPM_FILENAME).write_bytes(model_bytes)
    tok = XLMRobertaTokenizer(
        vocab=vocab,
        # transformers annotates this ``str | None``, but it is the raw charsmap bytes that
        # ``normalizers.Precompiled`` takes (transformers itself passes bytes here).
        _spm_precompiled_charsmap=precompiled_charsmap(model_bytes),  # type: ignore[arg-type]
        model_max_length=512,
    )
    tok.save_pretrained(str(out_dir))
    logger.info("trained tokenizer: %d lines, %d pieces, %d ids -> %s", n_lines, n_pieces, len(tok), out_dir)
    return out_dir
