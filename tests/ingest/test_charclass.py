"""The character tables the compiled filters and MinHash read: each entry is what the per-character
predicates say (the ``regex`` module's classes, ``unicodedata`` categories, ``str.isspace``,
``str.casefold``), and learning a text learns what its case folding holds too."""

from __future__ import annotations

import unicodedata

import pytest
import regex

from tasks.ingest._charflags import (
    FOLD_SHIFT,
    KNOWN_BIT,
    LETTER_BIT,
    PUNCT_BIT,
    SPACE_BIT,
    UNIT_BIT,
    WORD_BIT,
    unlearned,
)
from tasks.ingest.charclass import flags_for, fold_table

SAMPLES = (
    "aZ09_ \t\n\r\x0b\x0c\x1c\x85\xa0\u3000\u2028'’-.#…ßſKİΣσς\u0301\u093f\u200d\u200c\u00ad\ufeff"
    "日本語ไทย한😀👍🏽²½①Ⅻ𝟘\ue000\U000f0000\U00030000\U0001d400\U000e0001\u0378\ud800\udfff¿«»•₿"
)


@pytest.mark.parametrize("char", SAMPLES, ids=[f"U+{ord(c):04X}" for c in SAMPLES])
def test_an_entry_is_what_the_predicates_say(char):
    bits = int(flags_for(char)[ord(char)])
    major = unicodedata.category(char)[0]
    assert bits & KNOWN_BIT
    assert bool(bits & WORD_BIT) == bool(regex.fullmatch(r"\w", char))
    assert bool(bits & LETTER_BIT) == bool(regex.fullmatch(r"\p{L}", char))
    assert bool(bits & SPACE_BIT) == char.isspace()
    assert bool(bits & UNIT_BIT) == (major in "LNM" and not char.isspace())
    assert bool(bits & PUNCT_BIT) == (major in "PS" and ord(char) < 0x30000)
    packed = int(fold_table()[ord(char)])
    folded = [(packed >> (FOLD_SHIFT * i)) & (2**FOLD_SHIFT - 1) for i in range(3)]
    assert "".join(map(chr, folded[:1] + [p for p in folded[1:] if p])) == char.casefold()


def test_learning_a_text_learns_its_case_folding():
    text = "ﬓ ŉ ǰ ẞ ﬀ ΐ"  # each folds to two or three other code points
    table = flags_for(text)
    assert unlearned(text, table) == [] and unlearned(text.casefold(), table) == []
