"""LLM question synthesis through OpenAI-compatible APIs (the ``openai`` backend of ``synthesize``).

Modules: ``config`` (settings), ``client`` (async requests, limits, retries), ``cache`` (replies in
the store), ``budget``, ``prompts``, ``parse``, ``filters``, ``secret`` (key redaction), ``longdoc``
(document positives, length buckets) and ``synthesize`` (the recipe end to end). Importing this
package does not import ``openai``.
"""

from tasks.synthesize.llm.config import BudgetConfig, FilterConfig, OpenAIConfig, SelectionConfig

__all__ = ["BudgetConfig", "FilterConfig", "OpenAIConfig", "SelectionConfig"]
