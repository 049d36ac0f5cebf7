"""Keeping the API key out of everything the stage writes.

The key lives only in memory, inside the HTTP client. Every error text that leaves this package
(failure lists, logs, exceptions) goes through :meth:`Redactor.clean` first, because servers do
echo credentials back (a 401 body naming the key it rejected, a proxy dumping request headers).
"""

from __future__ import annotations

import logging

REDACTED = "[REDACTED]"


class Redactor:
    """Replaces the secret, and any long enough piece of it, in text."""

    def __init__(self, secret: str | None, min_piece: int = 8):
        self._secret = secret or ""
        # Pieces cover a key echoed truncated ("sk-abcdefgh...") or with its prefix dropped.
        n = len(self._secret)
        self._pieces = (
            sorted(
                {self._secret[i : i + min_piece] for i in range(0, n - min_piece + 1)},
                key=len,
                reverse=True,
            )
            if n >= min_piece
            else []
        )

    def clean(self, text: object) -> str:
        out = str(text)
        if not self._secret:
            return out
        out = out.replace(self._secret, REDACTED)
        for piece in self._pieces:
            if piece in out:
                out = out.replace(piece, REDACTED)
        return out

    def __repr__(self) -> str:  # never print the secret, even by accident
        return "Redactor(<secret>)" if self._secret else "Redactor(None)"


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
