"""Language codes from wiki database names, URLs and dump / C4 file names (ISO 639-1 through
:func:`tasks.language.normalize_code`; a text without a code goes to :func:`tasks.language.detect_language`).
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from tasks.language import normalize_code

_WIKI_DB = re.compile(r"^([a-z][a-z_-]*?)wiki$")
_WIKI_FILE = re.compile(r"(?:^|[/\\])([a-z][a-z_-]*?)wiki[-_.]")
_C4_FILE = re.compile(r"(?:^|[/\\.-])m?c4-([a-z]{2,3}(?:-latn)?)[.-]", re.IGNORECASE)


def wiki_code_from_dbname(dbname: str | None) -> str | None:
    """``kowiki`` -> ``ko``; ``zh_yuewiki`` -> ``zh-yue`` (the Wikimedia project code)."""
    if not dbname:
        return None
    m = _WIKI_DB.match(dbname.strip().lower())
    return m.group(1).replace("_", "-") if m else None


def wiki_code_from_url(url: str | None) -> str | None:
    """``https://ko.wikipedia.org/wiki/...`` -> ``ko``."""
    if not url:
        return None
    host = urlsplit(url.strip()).hostname or ""
    parts = host.split(".")
    if len(parts) >= 3 and parts[-2] == "wikipedia":
        return parts[0]
    return None


def wiki_code_from_filename(path: str) -> str | None:
    """``.../dewiki-20130602-id1.xml`` -> ``de`` (Wikimedia dump naming)."""
    m = _WIKI_FILE.search(str(path).lower())
    return m.group(1).replace("_", "-") if m else None


def lang_from_c4_filename(path: str) -> str | None:
    """``c4-ko.tfrecord-...json.gz`` / ``mc4-ko-00001.json.gz`` -> ``ko``; English C4 (``c4-train``)
    has no code in the name, so None."""
    m = _C4_FILE.search(str(path).rsplit("/", 1)[-1])
    return normalize_code(m.group(1)) if m else None
