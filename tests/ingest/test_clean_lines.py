"""``clean_text``'s compiled passes give what the regular expressions they replaced gave (issue 28),
and a long run of tabs inside a line costs one pass, not one per tab (issue 26)."""

from __future__ import annotations

import random
import re
import time

from tasks.ingest._textclean import collapse_spaces, normalize_breaks
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
