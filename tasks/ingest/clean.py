"""Text normalisation shared by every reader.

All sources end up in one corpus, so they must agree on one form: NFC (so the same word has the
same code points whatever the source), no control characters (they break tokenizers and JSON
tooling), single spaces and at most one blank line between paragraphs (so paragraph splitting
downstream sees clean ``\\n\\n`` boundaries). The character passes are compiled
(:mod:`._textclean`): as regular expressions they were the largest cost of ingesting a page.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from ._textclean import collapse_spaces, nfc, normalize_breaks

# (pattern, replacement) steps applied in order by :func:`substitute`; a replacement is a string or
# a function of the match, as for ``re.sub``.
Substitutions = Sequence[tuple[re.Pattern[str], str | Callable[[re.Match[str]], str]]]


def substitute(text: str, steps: Substitutions) -> str:
    """``text`` with every ``(pattern, replacement)`` of ``steps`` substituted, in order."""
    for pattern, replacement in steps:
        text = pattern.sub(replacement, text)
    return text


def clean_text(text: str) -> str:
    """Return ``text`` NFC-normalised, without control characters, with collapsed whitespace."""
    if not text:
        return ""
    text = nfc(normalize_breaks(text))
    return collapse_spaces(text).strip()


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
