"""Language codes: ISO 639-1 for a code from any source, and py3langid for a text without one.

The corpus contract wants ISO 639-1. Wikimedia and py3langid mostly use 639-1 already; the few
codes that are dialects or members of a macrolanguage are folded into the 639-1 macrolanguage,
and codes with no 639-1 equivalent (e.g. ``ace``, ``ltg``) are kept as their ISO 639-3 code,
because inventing a wrong two-letter code would be worse. ``und`` means "could not tell".
Ingestion labels documents with it; the LLM question filter checks a question's language with it.
"""

from __future__ import annotations

import functools
import threading

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
