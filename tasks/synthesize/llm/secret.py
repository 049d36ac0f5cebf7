"""Keeping the API key out of everything the stage writes.

The key lives only in memory, inside the HTTP client. Every error text that leaves this package
(failure lists, logs, exceptions) goes through :meth:`Redactor.clean` first, because servers do
echo credentials back (a 401 body naming the key it rejected, a proxy dumping request headers);
so does the content of every 200 reply, before it is parsed or cached (a model or proxy can echo
the key there too), and every cache record, field by field (:meth:`Redactor.clean_obj`).
"""

from __future__ import annotations

import logging
from typing import TypeVar

REDACTED = "[REDACTED]"
T = TypeVar("T")


class Redactor:
    """Replaces each secret, and any long enough piece of one, in text.

    ``secret``: the API key; ``more``: any other secret the stage was configured with (a proxy
    token, say). Empty or missing ones are ignored."""

    def __init__(self, secret: str | None, *more: str | None, min_piece: int = 8):
        self._secrets = sorted({s for s in (secret, *more) if s}, key=len, reverse=True)
        # Pieces cover a key echoed truncated ("sk-abcdefgh...") or with its prefix dropped.
        pieces = {s[i : i + min_piece] for s in self._secrets for i in range(0, len(s) - min_piece + 1)}
        self._pieces = sorted(pieces, key=len, reverse=True)

    def clean(self, text: object) -> str:
        out = str(text)
        for secret in self._secrets:
            out = out.replace(secret, REDACTED)
        for piece in self._pieces:
            if piece in out:
                out = out.replace(piece, REDACTED)
        return out

    def clean_obj(self, obj: T) -> T:
        """``obj`` (JSON-like: dicts, lists, strings, numbers) with every string cleaned, keys too:
        what goes to the store is scrubbed field by field, so the JSON stays valid."""
        if isinstance(obj, str):
            return self.clean(obj)  # type: ignore[return-value]
        if isinstance(obj, dict):
            return {self.clean_obj(k): self.clean_obj(v) for k, v in obj.items()}  # type: ignore[return-value]
        if isinstance(obj, list | tuple):
            return [self.clean_obj(v) for v in obj]  # type: ignore[return-value]
        return obj

    def __repr__(self) -> str:  # never print the secret, even by accident
        return f"Redactor(<{len(self._secrets)} secrets>)"


class RedactingFilter(logging.Filter):
    """A logging filter that scrubs the secret from every record it sees (belt and braces)."""

    def __init__(self, redactor: Redactor):
        super().__init__()
        self.redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a broken format string is not ours to fix here
            return True
        cleaned = self.redactor.clean(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True
