"""Quality filters: what the compiled kernels count for each Gopher/C4 rule equals its plain
definition (the word regex, ``str.split``/``str.strip`` lines, ``str.casefold``, counted n-grams),
each rule fires on a page made for it, and hostile pages cost linear time."""

from __future__ import annotations

import random
import time
import unicodedata
from collections import Counter

import numpy as np
import pytest
import regex

from tasks.ingest._ngrams import Repetition
from tasks.ingest._textstats import Units, Words, folded_contains, line_stats, paragraph_stats
from tasks.ingest.charclass import flags_for, fold_table
from tasks.ingest.quality import QualityConfig, is_unspaced, quality_issue

WORD = regex.compile(r"\w+(?:['’\-]\w+)*")  # the definition of a word the filters count
JOINERS = "'’-"
TRICKY = [
    "don't rock-'n'-roll it’s well-known x-ray --a- -b 'quoted' o'clock' ’tis a'b'c a-'b a--b a-b- ’’ x’y",
    "foo_bar __ 12-34 3'4 Ⅻ ⅷ ² ½ ① 𝟘𝟙 ǅemal",
    "e\u0301te\u0301 cafe\u0301 na\u0308ive \u0301start",
    "हिन्दी भाषा विश्व की एक प्रमुख भाषा है। বাংলা ভাষা। தமிழ் மொழி.",
    "I love it 😀 👍🏽 👨‍👩‍👧 #tag ... … zero\u200bwidth join\u200dner soft\u00adhyphen",
    "abc \ud800 def \udfff ghi \ud83d\ude00 lone surrogates",
    "日本語の文章は空白で単語を区切りません。ภาษาไทย 한국어 문장",
    "tab\tsep\r\nCRLF\u2028sep\u2029para\x85next\x0bvt\x0cff\u00a0nbsp\u3000ideo",
    "",
    " ",
    "-",
    "a",
    "'a'",
    "a-",
]


def fuzz(count: int, seed: int = 0) -> list[str]:
    """Random texts over an alphabet of joiners, spaces, newlines and several scripts."""
    pool = "abcXYZ019 \n\n\t'’-.…#•*)」。ßſKİΣσς\u0301\u093f日本ไทย😀\u200d\u00a0_²"
    rng = random.Random(seed)
    return ["".join(rng.choice(pool) for _ in range(rng.randint(0, 300))) for _ in range(count)]


def first_use(items: list) -> list[int]:
    numbers: dict = {}
    return [numbers.setdefault(x, len(numbers)) for x in items]


def cases(texts: list[str]) -> pytest.MarkDecorator:
    return pytest.mark.parametrize("text", texts, ids=[f"text{i}" for i in range(len(texts))])


@cases(TRICKY + fuzz(300))
def test_words_are_what_the_word_regex_finds(text):
    words = Words(text, flags_for(text), JOINERS)
    found = WORD.findall(text)
    assert words.count == len(found)
    assert words.lens.tolist() == [len(w) for w in found]
    assert words.ids.tolist() == first_use(found)
    assert words.chars == sum(map(len, found))
    assert words.with_letter == sum(bool(regex.search(r"\p{L}", w)) for w in found)
    longest = 4
    assert words.folded(longest, fold_table()) == {w.casefold() for w in found if len(w) <= longest}


@cases(TRICKY + fuzz(100, seed=1))
def test_units_of_unspaced_text_are_letters_digits_and_marks(text):
    units = Units(text, flags_for(text))
    chars = [c for c in text if not c.isspace() and unicodedata.category(c)[0] in "LNM"]
    assert units.count == len(chars)
    assert units.ids.tolist() == first_use(chars)
    assert units.distinct() == "".join(dict.fromkeys(chars))
    assert units.visible == sum(not c.isspace() for c in text)
    assert units.letters == sum(bool(regex.fullmatch(r"\p{L}", c)) for c in text)


def dup_counts(items: list[str]) -> tuple[int, int, int, int]:
    firsts = dict.fromkeys(items)
    return len(items), len(firsts), sum(map(len, items)), sum(map(len, firsts))


@cases(TRICKY + fuzz(200, seed=2) + ["\n\n\n", "a\n\n\nb\n\n\n\nc", " x \n\n x "])
def test_line_and_paragraph_counts_follow_split_and_strip(text):
    flags = flags_for(text)
    lines = [ln for ln in map(str.strip, text.split("\n")) if ln]
    bullets, closers, marks = "•·-*", "\"')」", ".。…"
    got = line_stats(text, flags, bullets, ("...", "…"), closers, marks)
    assert got[:4] == dup_counts(lines)
    assert got[4] == sum(ln[0] in bullets for ln in lines)
    assert got[5] == sum(ln.endswith(("...", "…")) for ln in lines)
    assert got[6] == sum(ln.rstrip(closers).endswith(tuple(marks)) for ln in lines)
    paras = [p for p in map(str.strip, text.split("\n\n")) if p]
    assert paragraph_stats(text, flags) == dup_counts(paras)


SEARCHES = [
    ("LOREM IPſUM dolor", "lorem ipsum"),  # long s folds to s
    ("Straße", "strasse"),  # one code point folds to two
    ("STRAẞE", "ss"),
    ("ΣΊΣΥΦΟΣ", "σίσυφοσ"),  # no final sigma in case folding
    ("İstanbul", "i̇stanbul"),
    ("lorem lorem ipsu lorem ipsum", "lorem ipsum"),  # a partial match first
    ("aaab", "aab"),
    ("abc", ""),
    ("abc", "abcd"),
] + [(t, n) for t in fuzz(100, seed=3) for n in ("ss", "σ", "a b")]


@pytest.mark.parametrize(("text", "needle"), SEARCHES, ids=[f"search{i}" for i in range(len(SEARCHES))])
def test_folded_search_is_casefold_then_find(text, needle):
    for limit in (0, 3, 100_000):
        expected = needle in text[:limit].casefold()
        assert folded_contains(text, limit, needle, flags_for(text), fold_table()) == expected


MULT = 2 * np.random.default_rng(0).integers(1, 2**63, size=64, dtype=np.uint64) + 1


def gram_hash(gram: tuple[int, ...]) -> int:
    return sum((t + 1) * int(MULT[j % 64]) for j, t in enumerate(gram)) % 2**64


def counted(ids: list[int], lens: list[int], n: int) -> tuple[float, float]:
    """(top, dup) fractions by counting the n-gram tuples themselves; the top one is the most
    frequent, the one of smallest hash among equally frequent ones."""
    total = sum(lens)
    grams = [tuple(ids[i : i + n]) for i in range(len(ids) - n + 1)]
    counts = Counter(grams)
    if not grams or not total:
        return 0.0, 0.0
    best = min(counts, key=lambda g: (-counts[g], gram_hash(g)))
    top = 0.0
    if counts[best] >= 2:
        first = grams.index(best)
        top = counts[best] * sum(lens[first : first + n]) / total
    covered = [False] * len(ids)
    for i, g in enumerate(grams):
        if counts[g] >= 2:
            covered[i : i + n] = [True] * n
    return top, sum(x for x, c in zip(lens, covered, strict=True) if c) / total


@pytest.mark.parametrize("seed", range(60))
def test_repeated_ngram_shares_match_counting_them(seed):
    rng = random.Random(seed)
    size = rng.randint(0, 80)
    ids = [rng.randint(0, rng.choice([1, 3, 10])) for _ in range(size)]
    lens = [1] * size if seed % 2 else [rng.randint(1, 5) for _ in range(size)]
    grams = Repetition(
        np.array(ids, dtype=np.uint64), None if seed % 2 else np.array(lens, dtype=np.int64), MULT
    )
    # growing n (the rules' order), then a smaller n again (the sums start over)
    for n in [1, 2, 3, 5, 8, 2, 4, 1]:
        assert (grams.top_fraction(n), grams.dup_fraction(n)) == counted(ids, lens, n), n


def test_kernels_refuse_a_table_that_does_not_know_the_text():
    text = "an ordinary sentence"
    flags_for(text)
    blank = np.zeros_like(flags_for(""))
    for kernel in (
        lambda f: Words(text, f, JOINERS),
        lambda f: Units(text, f),
        lambda f: line_stats(text, f, "", (), "", ""),
    ):
        with pytest.raises(ValueError, match="not learnt"):
            kernel(blank)
        with pytest.raises(ValueError, match="entries"):
            kernel(np.zeros(10, dtype=np.uint8))


SENTENCES = [
    "The river runs through the old town and the mill that stands beside it.",
    "Farmers bring their grain to be ground before the winter comes.",
    "In spring the water is high, and the wheel turns faster than in summer.",
    "The mill was built in the twelfth century by monks from a nearby abbey.",
    "Its stones were brought by boat from a quarry far to the north.",
    "Today it is a museum that is open to visitors on weekends.",
    "A small shop sells flour that is still ground with the original stones.",
    "Children from the local school visit it every year with their teachers.",
    "The town council has to decide each year how to pay for its repairs.",
    "Many people say that the sound of the wheel is the sound of the town.",
]
GOOD = "\n".join(SENTENCES)
NO_STOP_WORDS = "\n".join(
    s.replace("the ", "this ")
    .replace("The ", "This ")
    .replace(" and ", " plus ")
    .replace(" that ", " which ")
    .replace(" to ", " for ")
    .replace(" of ", " from ")
    .replace(" be ", " get ")
    .replace(" with ", " among ")
    .replace(" have ", " hold ")
    for s in SENTENCES
)


@pytest.mark.parametrize(
    ("text", "rule"),
    [
        (GOOD, None),
        (" ".join(SENTENCES[:2]), "gopher:word_count"),
        (GOOD.replace("the ", "thé "), None),
        ("\n".join(" ".join(["a"] * 12) + "." for _ in range(8)), "gopher:mean_word_length"),
        (GOOD + "\n" + "# " * 40, "gopher:symbol_ratio"),
        ("\n".join("• " + s for s in SENTENCES), "gopher:bullet_lines"),
        (
            "\n".join(s + ".." for s in SENTENCES[:6]) + "\n" + "\n".join(SENTENCES[6:]),
            "gopher:ellipsis_lines",
        ),
        (GOOD + "\n" + " ".join(str(i) for i in range(1000, 1200)), "gopher:alpha_ratio"),
        (NO_STOP_WORDS, "gopher:stop_words"),
        ("\n".join(SENTENCES + SENTENCES[:5]), "gopher:dup_lines"),
        (
            "\n\n".join(SENTENCES) + "\n\n" + ("Fine.\n" + " \n" * 900 + "Done.\n\n") * 2,
            "gopher:dup_paragraphs",
        ),
        (GOOD + "\n" + "and the mill " * 60 + ".", "gopher:top_ngram"),
        ("\n".join(SENTENCES) + " " + " ".join(SENTENCES), "gopher:dup_ngram"),
        (GOOD + "\nLOREM IPſUM dolor sit amet.", "c4:lorem_ipsum"),
        ("\n".join(s.rstrip(".") for s in SENTENCES), "c4:punct_lines"),
    ],
)
def test_each_rule_fires_on_a_page_made_for_it(text, rule):
    assert quality_issue(text, "en", QualityConfig()) == rule


def test_unspaced_by_language_or_by_rare_spaces():
    assert is_unspaced("any text at all", "ja")
    assert is_unspaced("日本語" * 30, None) and is_unspaced("日本語" * 30, "en")
    assert not is_unspaced("a few words with spaces " * 5, None)
    assert not is_unspaced("日本語", None)  # too short to tell: spaced


HOSTILE = {
    "joiners": "'-’" * 300_000,
    "joined word": "a-" * 300_000,
    "blank lines": " \n" * 300_000,
    "one line many times": "the same line here.\n" * 50_000,
    "distinct lines": "".join(f"line {i} of many.\n" for i in range(60_000)),
    "folding expands": "ß" * 300_000 + " lorem ipsum",
    "one word repeated": "word " * 200_000,
    "no spaces": "語" * 300_000,
}


def every_kernel(text: str) -> None:
    """Each compiled count the filters make, on the whole text (no rule stops early)."""
    flags = flags_for(text)
    words, units = Words(text, flags, JOINERS), Units(text, flags)
    line_stats(text, flags, "•", ("...",), ")", ".")
    paragraph_stats(text, flags)
    folded_contains(text, len(text), "lorem ipsum", flags, fold_table())
    words.folded(4, fold_table())
    for grams in (Repetition(words.ids, words.lens, MULT), Repetition(units.ids, None, MULT)):
        for n in (2, 3, 4, 5, 10, 30):
            grams.top_fraction(n)
            grams.dup_fraction(n)


@pytest.mark.parametrize("case", HOSTILE)
def test_hostile_pages_cost_linear_time(case):
    text = HOSTILE[case]
    every_kernel(text[:1000])  # learn the characters first
    costs = []
    for part in (text[: len(text) // 4], text):
        start = time.process_time()
        every_kernel(part)
        quality_issue(part, "en", QualityConfig())
        costs.append(time.process_time() - start)
    assert costs[1] < 3.0, costs  # about 1 MB of text
    assert costs[1] < 10 * costs[0] + 0.05, costs  # four times the text: about four times the time
