"""The ``synthesize`` stage: queries for corpus passages, from one of two backends.

- ``ict``: the offline Inverse Cloze Task stand-in (``ict.py``) that the demo uses;
- ``llm/``: LLM questions about long documents through any OpenAI-compatible server (the paper's
  MultiLongDoc recipe): settings, client, reply checks, cache, budget, prompts, parsing, filters.

``SynthesizeConfig`` (in ``ict.py``, with the ICT knobs it extends) picks between them; the flow is
``flows/synthesize.py``.
"""
