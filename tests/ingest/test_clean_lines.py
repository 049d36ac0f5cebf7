"""Line trimming in ``clean_text`` is the expression it replaced, without its quadratic cost on a
long run of tabs inside a line (issue 26)."""

from __future__ import annotations

import random
import re
import time

from tasks.ingest.clean import _strip_lines, clean_text

REGEX_EDGE_SPACES = re.compile(r"^[ ]+|[ \t]+$", re.MULTILINE)  # what it replaced: the specification


def test_lines_are_trimmed_as_the_expression_trimmed_them():
    rng = random.Random(26)
    tokens = [" ", "  ", "\t", "\n", "a", "b c", "\t \t", "\n\n", "\u00a0"]
    for _ in range(20_000):
        text = "".join(rng.choice(tokens) for _ in range(rng.randint(0, 24)))
        assert _strip_lines(text) == REGEX_EDGE_SPACES.sub("", text), repr(text)


def test_a_run_of_tabs_is_one_pass():
    start = time.thread_time()
    assert clean_text("a" + "\t" * 200_000 + "b \t\n  c") == "a" + "\t" * 200_000 + "b\nc"
    assert time.thread_time() - start < 1.0  # 20,000 tabs took 3.7 s, 200,000 minutes
