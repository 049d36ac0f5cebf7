"""synthesize: corpus → ``queries`` (ICT or LLM questions; the work: ``tasks.synthesize.stage``).

The LLM backend's API key may live in a Prefect Secret block, so it is looked up here, at the edge.
"""

from __future__ import annotations

import functools
import os
from typing import Any, cast

from prefect import flow

from m3.app.env import open_env
from m3.stage import declare
from m3.stage_env import flow_result
from tasks.synthesize.llm.config import OpenAIConfig
from tasks.synthesize.stage import build_queries


def resolve_api_key(cfg: OpenAIConfig) -> str | None:
    """The API key from the Prefect Secret block or environment variable the profile names.

    Errors name where the key was looked for, never a value. None when neither is configured
    (local servers such as vLLM or Ollama without auth).
    """
    if cfg.api_key_secret:
        from prefect.blocks.system import Secret

        try:
            return cast(Secret, Secret.load(cfg.api_key_secret)).get()
        except ValueError:
            raise RuntimeError(
                f"Prefect Secret block {cfg.api_key_secret!r} does not exist "
                "(create it with prefect.blocks.system.Secret(value=...).save(name))"
            ) from None
    if cfg.api_key_env:
        key = os.environ.get(cfg.api_key_env)
        if not key:
            raise RuntimeError(
                f"environment variable {cfg.api_key_env} is not set; it must hold the API key "
                "(or set synthesize.openai.api_key_env: null for a server without auth)"
            )
        return key
    return None


@declare("queries", needs=("corpus",), sections=("synthesize",))
@flow(name="synthesize")
def synthesize(
    profile: str = "demo",
    store: str | None = None,
    refresh: bool = False,
    inputs: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Queries for corpus passages: ICT pseudo-queries (offline) or LLM questions (``openai``)."""
    env = open_env(profile, store)
    with env.run_lock():
        api_key = functools.partial(resolve_api_key, env.profile.synthesize.openai)
        return flow_result(build_queries(env, env.profile.synthesize, refresh, inputs, api_key))
