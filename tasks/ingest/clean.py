"""Text normalisation shared by every reader.

All sources end up in one corpus, so they must agree on one form: NFC (so the same word has the
same code points whatever the source), no control characters (they break tokenizers and JSON
tooling), single spaces and at most one blank line between paragraphs (so paragraph splitting
downstream sees clean ``\\n\\n`` boundaries).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Sequence

# (pattern, replacement) steps applied in order by :func:`substitute`; a replacement is a string or
# a function of the match, as for ``re.sub``.
Substitutions = Sequence[tuple[re.Pattern[str], str | Callable[[re.Match[str]], str]]]

_NEWLINES = re.compile(r"\r\n?|[\u2028\u2029\x85\x0b\x0c]")
# Cc = control characters; keep \n and \t. Also drop the BOM / zero-width no-break space and
# unassigned surrogates, which only appear as encoding debris.
_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1f\x7f-\x84\x86-\x9f\ufeff\ud800-\udfff]")
_SPACES = re.compile(r"[ \u00a0\u2000-\u200a\u202f\u205f]+")
_BLANK_RUNS = re.compile(r"\n{3,}")
_BEFORE_NFC: Substitutions = ((_NEWLINES, "\n"), (_CONTROL, ""))


_LEADING_SPACES = re.compile(r"^ +", re.MULTILINE)
# A run of trailing spaces and tabs, matched from its first character only: the look-behind fails at
# once inside a run, so a long run that does not end its line is read once, not once per character.
_TRAILING_BLANKS = re.compile(r"(?<![ \t])[ \t]+$", re.MULTILINE)


def _strip_lines(text: str) -> str:
    """Each line without its leading spaces and trailing spaces and tabs. (The expression
    ``^[ ]+|[ \\t]+$`` did the same, but tried every tab of a run that does not end its line: a
    document with 200,000 tabs in a row took minutes.)"""
    return _TRAILING_BLANKS.sub("", _LEADING_SPACES.sub("", text))


def substitute(text: str, steps: Substitutions) -> str:
    """``text`` with every ``(pattern, replacement)`` of ``steps`` substituted, in order."""
    for pattern, replacement in steps:
        text = pattern.sub(replacement, text)
    return text


def clean_text(text: str) -> str:
    """Return ``text`` NFC-normalised, without control characters, with collapsed whitespace."""
    if not text:
        return ""
    text = unicodedata.normalize("NFC", substitute(text, _BEFORE_NFC))
    return _BLANK_RUNS.sub("\n\n", _strip_lines(_SPACES.sub(" ", text))).strip()


def join_sections(sections: list[tuple[int, str, str]]) -> str:
    """Join (level, heading, body) sections; a heading is kept only if its body or a deeper
    sub-section under it has text, so empty "References"/"See also" headings disappear."""
    keep = [bool(body.strip()) for _, _, body in sections]
    for i in range(len(sections) - 1, 0, -1):
        if keep[i]:
            continue
        for j in range(i + 1, len(sections)):
            if sections[j][0] <= sections[i][0]:
                break
            if keep[j]:
                keep[i] = True
                break
    out: list[str] = []
    for i, (_level, title, body) in enumerate(sections):
        if not keep[i]:
            continue
        if i > 0 and title:
            out.append("\n\n" + title + "\n")
        out.append(body.strip("\n"))
    return "".join(out)
