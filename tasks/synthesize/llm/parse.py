"""Strict parsing of a model reply into questions.

Accepted: one JSON object ``{"questions": [str, ...]}`` and nothing else, optionally inside a single
Markdown code fence (models without structured outputs add one). Anything more lenient, such as
scraping questions out of free text, would turn a broken reply into unvetted training data.
"""

from __future__ import annotations

import json
import re

import jsonschema

from tasks.synthesize.llm.prompts import output_schema

_FENCE = re.compile(r"\A```(?:json|JSON)?\s*\n(.*)\n\s*```\Z", re.DOTALL)
_VALIDATOR = jsonschema.Draft202012Validator(output_schema())


class ParseError(ValueError):
    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def parse_questions(content: str | None, finish_reason: str | None = None) -> list[str]:
    """The questions of a reply, or ParseError with reason ``empty_reply``, ``truncated``,
    ``malformed_json`` or ``schema_invalid``."""
    if content is None or not content.strip():
        raise ParseError("empty_reply", f"no content (finish_reason={finish_reason})")
    text = content.strip()
    fenced = _FENCE.match(text)
    if fenced:
        text = fenced.group(1).strip()
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        # A reply cut at max_tokens is malformed for a known reason: say so.
        reason = "truncated" if finish_reason == "length" else "malformed_json"
        raise ParseError(reason, f"{exc.msg} at char {exc.pos}") from None
    errors = sorted(_VALIDATOR.iter_errors(data), key=lambda e: list(e.path))
    if errors:
        raise ParseError("schema_invalid", errors[0].message[:200])
    return list(data["questions"])
