"""Settings of the LLM question-synthesis backend (the ``synthesize.openai`` profile section).

Nothing here holds a secret: the API key is named (an environment variable or a Prefect Secret
block) and resolved by the flow at run time, so configs, stage cache keys and manifests never
contain it.
"""

from __future__ import annotations

import re
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from m3.strict import StrictModel
from tasks.synthesize.llm.longdoc import (
    DEFAULT_CHARS_PER_TOKEN,
    DEFAULT_CHARS_PER_TOKEN_BY_LANG,
    chars_per_token,
)

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
_BLOCK_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,63}")


class SelectionConfig(StrictModel):
    """Which documents get questions, and which passages of them go to the LLM.

    MultiLongDoc (M3 paper, section 3) samples *long* articles and asks the LLM about paragraphs of
    them; the document stays the retrieval unit, the passage is what the question is about.
    Documents fall into the length buckets of ``longdoc.LENGTH_BUCKETS`` (tokens estimated
    from characters with ``chars_per_token``); ``max_docs_per_bucket`` spreads the selection over
    them as ``max_docs_per_lang`` does over languages.
    """

    min_doc_chars: int = Field(2000, ge=0, description="only documents at least this long")
    max_doc_chars: int | None = Field(None, ge=1, description="skip documents longer than this")
    languages: list[str] | None = Field(None, min_length=1, description="only these languages (None: all)")
    max_docs: int | None = Field(None, ge=1, description="at most this many documents in all")
    max_docs_per_lang: int | None = Field(None, ge=1, description="at most this many per language")
    max_docs_per_bucket: int | None = Field(
        None,
        ge=1,
        description="at most this many per length bucket (tasks.synthesize.llm.longdoc.LENGTH_BUCKETS)",
    )
    chars_per_token: float = Field(
        DEFAULT_CHARS_PER_TOKEN,
        gt=0.0,
        description="characters per token for languages not in chars_per_token_by_lang (estimates "
        "document tokens: length buckets and the document positive's cut)",
    )
    chars_per_token_by_lang: dict[str, float] = Field(
        default_factory=lambda: dict(DEFAULT_CHARS_PER_TOKEN_BY_LANG),
        description="characters per token by language (XLM-R needs far fewer for CJK than for Latin)",
    )
    passages_per_doc: int = Field(1, ge=1, description="passages sampled per document (one request each)")
    passage_chars: int = Field(1500, ge=100, description="passage budget in characters (whole sentences)")
    min_passage_chars: int = Field(300, ge=1, description="shorter passages are never sampled")

    @field_validator("chars_per_token_by_lang")
    @classmethod
    def _positive_ratios(cls, v: dict[str, float]) -> dict[str, float]:
        if any(r <= 0 for r in v.values()):
            raise ValueError("chars_per_token_by_lang: every ratio must be > 0")
        return v

    @model_validator(mode="after")
    def _ranges(self) -> SelectionConfig:
        # an empty range selects nothing, and the stage would pay for a run that asks no question
        if self.max_doc_chars is not None and self.min_doc_chars > self.max_doc_chars:
            raise ValueError(
                f"min_doc_chars ({self.min_doc_chars}) exceeds max_doc_chars ({self.max_doc_chars})"
            )
        if self.min_passage_chars > self.passage_chars:
            raise ValueError(
                f"min_passage_chars ({self.min_passage_chars}) exceeds passage_chars ({self.passage_chars})"
            )
        return self

    def ratio(self, lang: str) -> float:
        """Characters per token of ``lang``."""
        return chars_per_token(lang, self.chars_per_token, self.chars_per_token_by_lang)


class FilterConfig(StrictModel):
    """Question filters; every drop is counted under its reason."""

    min_question_chars: int = Field(8, ge=1)
    max_question_chars: int = Field(300, ge=1)
    copy_ngram: int = Field(
        8, ge=3, description="character n-gram size (spaces/punctuation removed) for the copy check"
    )
    copy_max_overlap: float = Field(
        0.8, ge=0.0, le=1.0, description="drop a question when this share of its n-grams is in the passage"
    )
    check_language: bool = True
    language_min_confidence: float = Field(
        0.6, ge=0.0, le=1.0, description="py3langid must be this sure of another language to drop"
    )

    @model_validator(mode="after")
    def _range(self) -> FilterConfig:
        if self.min_question_chars > self.max_question_chars:
            raise ValueError(
                f"min_question_chars ({self.min_question_chars}) exceeds max_question_chars "
                f"({self.max_question_chars})"
            )
        return self


class BudgetConfig(StrictModel):
    """Hard caps for one run: the stage stops cleanly at the first one reached and keeps its work.

    Cache hits are free and never count. Token and cost caps are checked against the worst case of
    each request (estimated prompt tokens + ``max_tokens``) so concurrent requests cannot overshoot.
    """

    max_requests: int | None = Field(None, ge=0, description="HTTP requests sent, retries included")
    max_tokens: int | None = Field(None, ge=0, description="prompt + completion tokens")
    max_cost_usd: float | None = Field(None, ge=0.0)
    price_input_per_mtok: float = Field(0.0, ge=0.0, description="USD per million prompt tokens")
    price_output_per_mtok: float = Field(0.0, ge=0.0, description="USD per million completion tokens")


class OpenAIConfig(StrictModel):
    """An OpenAI-compatible chat-completions endpoint (OpenAI, vLLM, Ollama, llama.cpp server)."""

    base_url: str = "https://api.openai.com/v1"
    model: str = "gpt-4o-mini"
    api_key_env: str | None = Field(
        "OPENAI_API_KEY", description="environment variable holding the key (its name, not the key)"
    )
    api_key_secret: str | None = Field(
        None, description="Prefect Secret block holding the key; wins over api_key_env"
    )
    questions_per_passage: int = Field(3, ge=1, le=20)
    pairing: Literal["document", "passage"] = Field(
        "document",
        description="the positive of a question: document (M3's MultiLongDoc: title + text of the whole "
        "document, cut to positive_max_tokens) or passage (the passage the LLM was shown)",
    )
    positive_max_tokens: int = Field(
        8192,
        ge=16,
        description="document pairing: cut the positive to about this many tokens (the fine-tuning "
        "max_length), i.e. positive_max_tokens x chars_per_token(lang) characters at a sentence end",
    )
    temperature: float = Field(0.7, ge=0.0, le=2.0)
    max_tokens: int = Field(512, ge=16, description="completion tokens per request")
    seed: int | None = 0
    structured_output: Literal["json_schema", "json_object", "none"] = Field(
        "json_schema",
        description="response_format sent: json_schema (structured outputs), json_object, or none "
        "(the prompt asks for JSON); the reply is parsed strictly either way",
    )
    parse_retries: int = Field(1, ge=0, le=5, description="new requests after an unparsable reply")
    # Operations
    concurrency: int = Field(8, ge=1)
    requests_per_minute: float | None = Field(None, gt=0)
    tokens_per_minute: float | None = Field(None, gt=0)
    timeout_s: float = Field(60.0, gt=0)
    max_retries: int = Field(6, ge=0, description="retries per request on 429, 5xx, timeouts, drops")
    backoff_base_s: float = Field(1.0, ge=0.0)
    backoff_max_s: float = Field(60.0, ge=0.0)
    max_retry_after_s: float = Field(
        120.0, ge=0.0, description="a longer Retry-After (e.g. a daily quota) fails the request instead"
    )
    selection: SelectionConfig = Field(default_factory=SelectionConfig)
    filters: FilterConfig = Field(default_factory=FilterConfig)
    budget: BudgetConfig = Field(default_factory=BudgetConfig)

    def positive_max_chars(self, lang: str) -> int:
        """The character cap of a document positive in ``lang``: positive_max_tokens at the
        selection's chars-per-token estimate."""
        return int(self.positive_max_tokens * self.selection.ratio(lang))

    @field_validator("base_url")
    @classmethod
    def _no_credentials_in_url(cls, v: str) -> str:
        parts = urlsplit(v)
        if parts.scheme not in {"http", "https"} or not parts.netloc:
            raise ValueError(f"base_url must be an http(s) URL, got {v!r}")
        if parts.username or parts.password or parts.query:
            # The URL goes into the stage config and the manifest: it must not carry secrets.
            raise ValueError("base_url must not carry credentials or a query; name the key in api_key_env")
        return v.rstrip("/")

    @model_validator(mode="after")
    def _names_not_keys(self) -> OpenAIConfig:
        # A key pasted here by mistake would end up in the stage config and the manifest.
        if self.api_key_env is not None and not _ENV_NAME.fullmatch(self.api_key_env):
            raise ValueError("api_key_env must be the NAME of an environment variable, not a key")
        if self.api_key_secret is not None and (
            not _BLOCK_NAME.fullmatch(self.api_key_secret) or self.api_key_secret.startswith("sk-")
        ):
            raise ValueError("api_key_secret must be the NAME of a Prefect Secret block, not a key")
        if self.backoff_base_s > self.backoff_max_s:
            raise ValueError(
                f"backoff_base_s ({self.backoff_base_s}) exceeds backoff_max_s ({self.backoff_max_s})"
            )
        return self
