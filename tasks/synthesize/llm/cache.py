"""LLM replies kept in the artifact store, one JSON object per request, written as they arrive.

Layout: ``llm-cache/<2 hex>/<64 hex>.json`` under the store root, where the name is
sha256(model, messages, sampling parameters, attempt). Entries are created with the store's
create-if-absent primitive, so a killed run leaves only complete entries and two concurrent runs
never overwrite each other. A rerun or a resumed run finds every reply it already paid for.

Only usable replies are kept: the stage checks a reply's shape and parses its questions before it
puts it here, and scrubs the API key out of it; a malformed reply is asked again on a rerun. An
entry the stage cannot use (written by an older version, say) is replaced, not trusted.

The endpoint URL is not part of the key: the same model name behind another URL (a proxy, a
second replica) is the same model. ``m3 gc`` does not touch this area (it is paid-for data, not
an artifact); delete it by hand to forget replies.
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

from m3.store.backend import Backend

logger = logging.getLogger(__name__)

PREFIX = "llm-cache"


def request_key(model: str, messages: list[dict[str, str]], params: dict[str, Any], attempt: int = 0) -> str:
    """The cache key of one request; ``attempt`` > 0 names a deliberate re-ask after a bad reply."""
    body = {"model": model, "messages": messages, "params": params, "attempt": attempt}
    canonical = json.dumps(body, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


class ResponseCache:
    def __init__(self, backend: Backend):
        self.backend = backend

    @staticmethod
    def path(key: str) -> str:
        if len(key) != 64 or any(c not in "0123456789abcdef" for c in key):
            raise ValueError(f"not a cache key: {key!r}")
        return f"{PREFIX}/{key[:2]}/{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        try:
            data = self.backend.read_bytes(self.path(key))
        except FileNotFoundError:
            return None
        try:
            record = json.loads(data)
        except ValueError:
            logger.warning("llm-cache entry %s is not JSON; ignoring it", key[:12])
            return None
        return record if isinstance(record, dict) and record.get("key") == key else None

    def put(self, key: str, record: dict[str, Any], *, replace: bool = False) -> bool:
        """Store a reply; False if an entry was already there (the first one wins) unless
        ``replace``: then an unusable entry is overwritten."""
        body = json.dumps({**record, "key": key}, ensure_ascii=False, sort_keys=True).encode("utf-8")
        if replace:
            self.backend.put_atomic(self.path(key), body)
            return True
        return self.backend.create_exclusive(self.path(key), body)

    def keys(self) -> list[str]:
        return [
            p.rsplit("/", 1)[-1].removesuffix(".json")
            for p in self.backend.walk_files(PREFIX)
            if p.endswith(".json") and ".tmp-" not in p
        ]
