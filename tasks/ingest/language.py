"""Language codes: from wiki database names, file names and, as a last resort, py3langid.

The corpus contract wants ISO 639-1. Wikimedia and py3langid mostly use 639-1 already; the few
codes that are dialects or members of a macrolanguage are folded into the 639-1 macrolanguage,
and codes with no 639-1 equivalent (e.g. ``ace``, ``ltg``) are kept as their ISO 639-3 code,
because inventing a wrong two-letter code would be worse. ``und`` means "could not tell".
"""

from __future__ import annotations

import functools
import re
import threading
from urllib.parse import urlsplit

UNDETERMINED = "und"

# Wikimedia project codes and py3langid labels that are not ISO 639-1 but have a 639-1 parent.
_TO_639_1 = {
    "simple": "en",
    "be-tarask": "be",
    "be-x-old": "be",
    "zh-yue": "zh",
    "zh-classical": "zh",
    "zh-min-nan": "zh",
    "yue": "zh",
    "wuu": "zh",
    "ary": "ar",
    "arz": "ar",
    "uzs": "uz",
    "gug": "gn",
    "sdh": "ku",
    "hbo": "he",
    "nb": "no",
    "zxx": UNDETERMINED,
}

_WIKI_DB = re.compile(r"^([a-z][a-z_-]*?)wiki$")
_WIKI_FILE = re.compile(r"(?:^|[/\\])([a-z][a-z_-]*?)wiki[-_.]")
_C4_FILE = re.compile(r"(?:^|[/\\.-])m?c4-([a-z]{2,3}(?:-latn)?)[.-]", re.IGNORECASE)


def normalize_code(code: str | None) -> str | None:
    """Map a Wikimedia/langid/BCP-47-ish code to ISO 639-1 where one exists."""
    if not code:
        return None
    code = code.strip().lower().replace("_", "-")
    if code in _TO_639_1:
        return _TO_639_1[code]
    base = code.split("-")[0]
    if base in _TO_639_1:
        return _TO_639_1[base]
    return base or None


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


_lock = threading.Lock()


@functools.cache
def _identifier():
    # Imported lazily: loading the model costs ~0.3 s and many runs never need it.
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    return LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)


def detect_language(text: str, max_chars: int = 4000) -> tuple[str, float]:
    """Identify the language of ``text`` with py3langid; returns (ISO 639-1 code, confidence 0..1).

    Only the first ``max_chars`` characters are scored: enough for a stable answer, and it keeps
    the cost per document constant.
    """
    sample = text[:max_chars].strip()
    if not sample:
        return UNDETERMINED, 0.0
    with _lock:
        code, conf = _identifier().classify(sample)
    return normalize_code(code) or UNDETERMINED, round(float(conf), 4)
