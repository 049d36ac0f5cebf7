"""``clean_text``'s compiled passes give what the regular expressions they replaced gave, NFC by
pieces is NFC of the whole (issue 28), and a long run of tabs inside a line costs one pass, not one
per tab (issue 26)."""

from __future__ import annotations

import random
import re
import time
import unicodedata

from tasks.ingest._textclean import collapse_spaces, nfc, normalize_breaks
from tasks.ingest.clean import clean_text

# What the passes replaced: the specification, applied in this order.
REGEX_BREAKS = ((re.compile(r"\r\n?|[\u2028\u2029\x85\x0b\x0c]"), "\n"),)
REGEX_CONTROL = ((re.compile(r"[\x00-\x08\x0e-\x1f\x7f-\x84\x86-\x9f\ufeff\ud800-\udfff]"), ""),)
REGEX_SPACES = (
    (re.compile(r"[ \u00a0\u2000-\u200a\u202f\u205f]+"), " "),
    (re.compile(r"^ +", re.MULTILINE), ""),
    (re.compile(r"[ \t]+$", re.MULTILINE), ""),
    (re.compile(r"\n{3,}"), "\n\n"),
)
TOKENS = [
    " ", "  ", "\t", "\n", "\n\n\n", "\r", "\r\n", "a", "b c", "é", "\u00a0", "\u2000", "\u200a", "\u200b",
    "\u202f", "\u205f", "\u3000", "\u2028", "\u2029", "\x85", "\x0b", "\x0c", "\x00", "\x1c", "\x1f", "\x7f",
    "\x84", "\x86", "\x9f", "\ufeff", "\ud800", "\udfff", "😀", "\t \t",
]  # fmt: skip


def regex(text: str, steps) -> str:
    for pattern, replacement in steps:
        text = pattern.sub(replacement, text)
    return text


def test_the_passes_are_the_expressions_they_replaced():
    rng = random.Random(28)
    for _ in range(30_000):
        text = "".join(rng.choice(TOKENS) for _ in range(rng.randint(0, 30)))
        broken = regex(text, REGEX_BREAKS + REGEX_CONTROL)
        assert normalize_breaks(text) == broken, repr(text)
        assert collapse_spaces(broken) == regex(broken, REGEX_SPACES), repr(broken)


def test_text_without_breaks_or_controls_is_returned_as_it_is():
    text = "Plain text,\nclean lines\tand tabs. Καλημέρα"
    assert normalize_breaks(text) is text


def test_a_run_of_tabs_is_one_pass():
    start = time.thread_time()
    assert clean_text("a" + "\t" * 200_000 + "b \t\n  c") == "a" + "\t" * 200_000 + "b\nc"
    assert clean_text("a" + " \t" * 200_000 + "b") == "a" + " \t" * 200_000 + "b"
    assert time.thread_time() - start < 1.0  # 20,000 tabs took 3.7 s, 200,000 minutes


def test_nfc_pieces_are_cut_where_nothing_composes_across():
    """The pieces are cut before characters below U+0300: each is a starter NFC keeps, and none is
    the second character of a canonical composition (so nothing before it can combine with it)."""
    seconds = set()
    for code in range(0x110000):
        parts = unicodedata.decomposition(chr(code)).split()
        if len(parts) == 2 and not parts[0].startswith("<"):
            seconds.add(int(parts[1], 16))
    assert min(seconds) >= 0x300
    for code in range(0x300):
        assert unicodedata.combining(chr(code)) == 0 and unicodedata.normalize("NFC", chr(code)) == chr(code)


def test_nfc_by_pieces_is_nfc_of_the_whole():
    tokens = [
        "e", "\u0301", "\u0323", "a", " ", "\n", "\u1100", "\u1161", "\u11a8", "\uac00", "\u0344", "\u212b",
        "\u0958", "\u093c", "\u0bc6", "\u0bbe", "\u3099", "\u304b", "\u1f71", "\u0439", "\u0438", "\u0306",
        "\U0001d157", "\U0001d165", "x" * 7, "\u03b1" * 90,
    ]  # fmt: skip
    rng = random.Random(28)
    for _ in range(3000):
        text = "".join(rng.choice(tokens) for _ in range(rng.randint(0, 600)))
        assert nfc(text) == unicodedata.normalize("NFC", text), repr(text)
    plain = "Καλημέρα κόσμε\n" * 200
    assert nfc(plain) is plain
