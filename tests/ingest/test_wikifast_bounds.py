"""The fast wikitext renderer on hostile markup (issue 26): deep nesting is refused in a bounded
time, unclosed tags and links cost one pass, and the compiled scans (issue 28) drop exactly what
the regular expressions they replace dropped."""

from __future__ import annotations

import random
import re
import time

import pytest

from tasks.ingest import _wikimarkup as markup
from tasks.ingest._wikiheadings import headings
from tasks.ingest.render_limits import MAX_DEPTH, NESTING, TIMEOUT, RenderLimit
from tasks.ingest.wikifast import FastWikitextCleaner
from tasks.ingest.wikitext import _DROP_TAGS, _RE_CUT_REF, WikitextCleaner

# The regular expressions the scans replace: what they matched is the specification.
_NAMES = "|".join(sorted(_DROP_TAGS))
REGEX_SELF_CLOSING = re.compile(rf"<(?:{_NAMES})\b[^>]*/>", re.IGNORECASE)
REGEX_ELEMENT = re.compile(rf"<({_NAMES})\b[^>]*>.*?</\1\s*>", re.IGNORECASE | re.DOTALL)
REGEX_HEADING = re.compile(r"^(={1,6})\s*(.+?)\s*\1\s*$", re.MULTILINE)
REGEX_EXT_LINK = re.compile(
    r"\[(?:https?:|ftp:)?//[^\s\]\[]*(?:\s+([^\]\n]*))?\]|\[mailto:[^\s\]]+(?:\s+([^\]\n]*))?\]"
)
REGEX_NOWIKI = re.compile(r"<nowiki\s*>(.*?)</nowiki\s*>|<nowiki\s*/>", re.IGNORECASE | re.DOTALL)
# each pass: the substitution it does
REGEX_PASSES = {
    markup.drop_comments: (re.compile(r"<!--.*?(?:-->|\Z)", re.DOTALL), ""),
    markup.drop_template_args: (re.compile(r"\{\{\{[^{}]*\}\}\}"), ""),
    markup.breaks_to_newlines: (re.compile(r"<br\s*/?>|<hr\s*/?>", re.IGNORECASE), "\n"),
    markup.block_tags_to_newlines: (
        re.compile(
            r"</?(?:p|div|blockquote|center|poem|pre|li|dd|dt|ul|ol|dl|h[1-6])\b[^>]*>", re.IGNORECASE
        ),
        "\n",
    ),
    markup.drop_html_tags: (re.compile(r"</?[a-zA-Z][\w:-]*(?:[\s/][^<>]*)?>"), ""),
    markup.drop_cut_refs: (_RE_CUT_REF, ""),
    markup.drop_bold_italic: (re.compile(r"'{2,}"), ""),
    markup.drop_magic_words: (re.compile(r"__[^\W_]\w*?__"), ""),
    markup.drop_rules: (re.compile(r"^-{4,}\s*$", re.MULTILINE), ""),
    markup.drop_list_marks: (re.compile(r"^[*#:;]+\s*", re.MULTILINE), ""),
    markup.drop_stray: (re.compile(r"\{\{|\}\}|\[\[|\]\]|\{\||\|\}"), ""),
}
TOKENS = [
    "<ref>", "</ref>", "<ref name=a/>", "<REF>", "</Ref >", "<ref ", "<math>", "</math>", "<gallery>",
    "</gallery>", "<references/>", "<section begin=x />", ">", "/", "/>", "<nowiki>", "</nowiki>",
    "<NoWiki >", "<nowiki/>", "[http://x.org", "[//y", "[mailto:a@b", "[ftp://z", " ", "  ", "\n", "\t",
    "]", "[", "label", "<div>", "</div", "<p ", "<br/>", "text", "{", "}", "a", "ſ", "K", "İ", "<!--", "-->",
    "<b>", "</span x>", "<x:y-z>", "<HR />", "{{{1}}}", "{{{", "}}}", "{{", "}}", "[[", "]]", "{|", "|}", "|",
    "'", "''", "'''", "__NOTOC__", "__", "_x", "----", "---", "*", "#:", ";", "=", "\u3000",
]  # fmt: skip


def soup(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(TOKENS) for _ in range(n))


def test_the_scans_drop_exactly_what_the_regular_expressions_dropped():
    rng = random.Random(26)
    for _ in range(3000):
        text = soup(rng, rng.randint(1, 60))
        assert markup.drop_self_closing(text) == REGEX_SELF_CLOSING.sub("", text), text
        assert markup.drop_elements(text) == REGEX_ELEMENT.sub("", text), text
        assert markup.unwrap_nowiki(text) == REGEX_NOWIKI.sub(markup._escape_nowiki, text), text
        want = REGEX_EXT_LINK.sub(lambda m: m.group(1) or m.group(2) or "", text)
        assert markup.external_links(text) == want, text
        for scan, (expression, replacement) in REGEX_PASSES.items():
            assert scan(text) == expression.sub(replacement, text), (scan.__name__, text)
        stray = REGEX_PASSES[markup.drop_stray][0]
        assert markup.drop_stray(text, twice=True) == stray.sub("", stray.sub("", text)), text


HEADING_TOKENS = ["=", "==", "===", "=======", " ", "  ", "\t", "\n", "\n\n", "a", "b c", "\u00a0", " \n "]


def test_headings_are_what_the_regular_expression_found():
    rng = random.Random(26)
    for _ in range(20_000):
        text = "".join(rng.choice(HEADING_TOKENS) for _ in range(rng.randint(1, 24)))
        want = [(m.start(), m.end(), len(m.group(1)), m.group(2)) for m in REGEX_HEADING.finditer(text)]
        assert headings(text) == want, repr(text)


HOSTILE = {
    "unclosed <ref>": "<ref>x " * 40_000,
    "<ref without >": "<ref " * 40_000,
    "<ref … then one >": "<ref " * 40_000 + ">",
    "unclosed <nowiki>": "<nowiki>" * 30_000,
    "unclosed <math> among </ref>": "<math>x</ref>" * 20_000,
    "[http:// without ]": "[http://x.org a " * 20_000,
    "<div without >": "<div " * 40_000,
    "unclosed {{{": "{{{a" * 100,
    "= and 200,000 spaces": "=" + " " * 200_000 + "x\n",  # cubic: 2,000 spaces took 16 s
    "lines of = and spaces": ("= " + " " * 1000 + "x\n") * 200,
    "[mailto: runs, then spaces": "[mailto:a" * 20_000 + " " * 20_000 + "x",  # 4,000 took 1 s, quadratic
    "<a without >": "<a " * 40_000,
    "runs of _ and '": "_" * 200_000 + "'" * 200_000 + "__a" * 50_000,
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_unclosed_markup_is_one_pass(case):
    """Each of these took seconds (quadratic) before; a 2 MB page of it took hours."""
    text = HOSTILE[case]
    start = time.thread_time()
    FastWikitextCleaner()(text)
    assert time.thread_time() - start < 1.0, case


@pytest.mark.parametrize(
    ("text", "what"),
    [("{{" * 100_000, "templates"), ("[[" * 100_000, "links"), ("{{a}}{{" * 30_000, "templates")],
    ids=["{{ x 100,000", "[[ x 100,000", "{{a}}{{ x 30,000"],
)
def test_nesting_past_mediawikis_limit_is_refused_at_once(text, what):
    start = time.thread_time()
    with pytest.raises(RenderLimit) as info:
        FastWikitextCleaner()(text)
    assert time.thread_time() - start < 0.5
    assert info.value.reason == NESTING and what in info.value.detail
    assert info.value.excerpt and len(info.value.excerpt) <= 80


def test_nesting_up_to_the_limit_still_renders():
    kept = "{{lang|fr|" * MAX_DEPTH + "bonjour" + "}}" * MAX_DEPTH  # a prose template, nested
    assert FastWikitextCleaner()(f"Il a dit {kept}.") == "Il a dit bonjour."
    unclosed = "Text {{ before. " * MAX_DEPTH + "After."  # unclosed ones: braces dropped, text kept
    assert FastWikitextCleaner()(unclosed).endswith("After.")
    labels = "[[a|" * MAX_DEPTH + "label" + "]]" * MAX_DEPTH
    assert FastWikitextCleaner()(labels) == "label"


def test_a_page_over_its_time_budget_is_refused():
    # 100 nested labels around 2 MB (MediaWiki's largest page): every level scans its whole inner
    # text, seconds of work even compiled (200 kB once were; compiled, that is 0.1 s)
    page = "[[a|" * (MAX_DEPTH - 1) + "word [[b]] " * 190_000 + "]]" * (MAX_DEPTH - 1)
    start = time.monotonic()
    with pytest.raises(RenderLimit) as info:
        FastWikitextCleaner(page_seconds=0.2)(page)
    assert info.value.reason == TIMEOUT and "0.2 s" in info.value.detail
    assert time.monotonic() - start < 2.0  # the check runs between levels, well before the end
    assert FastWikitextCleaner(page_seconds=0.2)("Short [[page]].") == "Short page."  # a fresh budget


def test_the_mwparserfromhell_engine_survives_deep_nesting():
    assert WikitextCleaner()("{{" * 100_000) == ""  # its tokenizer stops at depth 100 by itself
