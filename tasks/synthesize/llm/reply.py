"""Checking a chat-completion body before anything uses or keeps it.

The ``openai`` client builds its response objects without validating them, so a server (or a
proxy in front of it) that answers 200 with the wrong shape would reach the parser, the budget and
the cache as ints, lists or nulls. This reads the raw body instead and accepts exactly what the
rest of the stage relies on; anything else is a :class:`ReplyError` with a reason, failing that
one request (never the stage) and never cached.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

# Finish reasons of a reply that ended on its own or at max_tokens (OpenAI, vLLM, llama.cpp,
# Ollama, TGI). Others (content_filter, tool_calls, abort, ...) mean the content is not an answer.
FINISHED = frozenset({"stop", "length", "eos", "eos_token", "stop_sequence", "end_turn"})
_MAX_TOKENS_SANE = 2**31  # a usage above this is not a count


class ReplyError(Exception):
    """A 200 reply the stage cannot use. ``usage``: its token counts when those were readable."""

    def __init__(self, reason: str, detail: str, *, retryable: bool = False):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.retryable = retryable
        self.usage: tuple[int, int] | None = None


@dataclass(frozen=True)
class Reply:
    content: str | None
    finish_reason: str | None
    usage: tuple[int, int] | None  # (prompt, completion) tokens; None: the server sent none
    model: str | None


def reply_byte_limit(max_tokens: int) -> int:
    """The most bytes a reply of ``max_tokens`` tokens can honestly take: a token is a few
    characters, each at most a 6-byte ``\\uXXXX`` escape, and the questions are JSON inside a JSON
    string (escaped twice); plus room for the envelope. A bigger body is not read."""
    return 256 * 1024 + 64 * max_tokens


def _short(value: Any) -> str:
    return repr(value)[:60]


def _count(usage: dict, name: str) -> int:
    v = usage.get(name)
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < _MAX_TOKENS_SANE:
        raise ReplyError("reply_bad_usage", f"usage.{name} is {_short(v)}, not a token count")
    return v


def _usage(data: dict) -> tuple[int, int] | None:
    usage = data.get("usage")
    if usage is None:
        return None
    if not isinstance(usage, dict):
        raise ReplyError("reply_bad_usage", f"usage is a {type(usage).__name__}")
    return _count(usage, "prompt_tokens"), _count(usage, "completion_tokens")


def _choice(data: dict) -> tuple[str | None, str | None]:
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices:
        error = data.get("error")
        hint = f" (error: {_short(error)})" if error is not None else ""
        what = "missing" if choices is None else "empty" if choices == [] else f"a {type(choices).__name__}"
        raise ReplyError("reply_no_choices", f"choices is {what}{hint}")
    choice = choices[0]
    if not isinstance(choice, dict):
        raise ReplyError("reply_no_message", f"choices[0] is a {type(choice).__name__}")
    message = choice.get("message")
    if not isinstance(message, dict):
        what = "missing" if message is None else f"a {type(message).__name__}"
        raise ReplyError("reply_no_message", f"choices[0].message is {what}")
    content = message.get("content")
    if content is not None and not isinstance(content, str):
        raise ReplyError("reply_bad_content", f"message.content is a {type(content).__name__}, not text")
    finish = choice.get("finish_reason")
    if finish is not None and (not isinstance(finish, str) or finish not in FINISHED):
        raise ReplyError("reply_bad_finish_reason", f"finish_reason is {_short(finish)}")
    return content, finish


def read_reply(body: bytes) -> Reply:
    """The parts of a chat-completion body the stage uses, checked; raises ReplyError."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        # Most often a body cut in transit: worth another request.
        raise ReplyError("bad_response", f"body is not JSON ({type(exc).__name__})", retryable=True) from None
    if not isinstance(data, dict):
        raise ReplyError("reply_not_object", f"body is a JSON {type(data).__name__}")
    usage = _usage(data)
    try:
        content, finish = _choice(data)
    except ReplyError as exc:
        exc.usage = usage
        raise
    model = data.get("model")
    return Reply(content, finish, usage, model if isinstance(model, str) and model else None)
