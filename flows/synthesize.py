"""synthesize: corpus → ``queries`` (ICT or LLM questions; the work: ``tasks.synthesize.stage``)."""

from __future__ import annotations

from typing import Any

from prefect import flow

from m3.app.env import open_env
from m3.stage import declare
from m3.stage_env import flow_result
from tasks.synthesize.stage import build_queries


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
        return flow_result(build_queries(env, refresh, inputs))
