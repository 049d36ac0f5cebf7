"""Bounds on rendering one wiki page, so a pathological page is quarantined instead of sinking its
file (issue 26: 100,000 unclosed ``{{`` ran the renderer into ``RecursionError`` after 18 s).

Two bounds, both raising :class:`RenderLimit`, which the reader turns into a ``Quarantined`` item:

- nesting: brackets (``{{``, ``[[``) nested deeper than :data:`MAX_DEPTH`. MediaWiki itself stops
  expanding at 100 levels (``$wgMaxPPExpandDepth``), so no article needs more. This bound is on the
  markup alone, so the same page is quarantined on every machine;
- time: a per-page budget, checked between the renderer's steps and per template and link. It is
  the backstop for input no bound foresaw; as it is a clock, where it cuts can depend on the
  machine, so its default is generous (a 2 MB page, MediaWiki's largest, renders in well under 1 s).
"""

from __future__ import annotations

import time

from .common import excerpt

MAX_DEPTH = 100  # MediaWiki's own expansion depth limit
DEFAULT_PAGE_SECONDS = 10.0

NESTING = "wikitext_too_deep"  # the quarantine reasons
TIMEOUT = "render_timeout"


class RenderLimit(Exception):
    """A page the renderer gives up on: ``reason`` is the quarantine reason, ``excerpt`` the markup
    where it gave up (bounded, printable)."""

    def __init__(self, reason: str, detail: str, excerpt: str = ""):
        super().__init__(detail)
        self.reason, self.detail, self.excerpt = reason, detail, excerpt

    def __reduce__(self):  # plain data across processes
        return (RenderLimit, (self.reason, self.detail, self.excerpt))


def too_deep(what: str, text: str, at: int) -> RenderLimit:
    """The nesting error for ``what`` (``templates``, ``links``) found at character ``at``."""
    return RenderLimit(
        NESTING,
        f"{what} nested deeper than {MAX_DEPTH} levels (MediaWiki expands at most {MAX_DEPTH}), "
        f"at character {at:,} of {len(text):,}",
        excerpt(text[at : at + 80]),
    )


class Budget:
    """A page's time budget (wall clock, monotonic); ``check`` raises once it is spent."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.deadline = time.monotonic() + seconds

    def check(self, step: str) -> None:
        if time.monotonic() > self.deadline:
            raise RenderLimit(TIMEOUT, f"rendering took longer than {self.seconds:g} s (at {step})")
