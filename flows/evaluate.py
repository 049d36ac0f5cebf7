"""evaluate: a model on held-out ICT queries or named evaluation sets → ``report``; champion upkeep.

Two flows, Prefect wiring only (the work: ``tasks.evaluate.stage``):

- ``evaluate`` (pipeline stage): the model of a profile on its held-out ICT queries, every M3 mode
  against BM25, then the champion comparison (``model/champion``) and promotion when it wins.
- ``evaluate-model`` (deployments ``evaluate-nightly`` and ``evaluate-after-finetune``): any model
  ref on any dataset specs (``tasks.evaluate.data``), the same tables, optionally the same promotion.
"""

from __future__ import annotations

from typing import Any

from prefect import flow
from prefect.states import Completed, State

from m3.app.env import open_env
from m3.stage import declare
from m3.stage_env import flow_result
from tasks.evaluate.champion import CHAMPION_REF
from tasks.evaluate.stage import build_evaluation, build_model_evaluation


def _with(out: State | dict[str, Any], **extra: Any) -> State | dict[str, Any]:
    """A stage flow's result with ``extra`` keys added (a Cached state stays one)."""
    if isinstance(out, State):
        return Completed(name=out.name, message=out.message, data={**out.data, **extra})
    return {**out, **extra}


@declare("report", needs=("model", "queries"), reads=("corpus",), sections=("evaluate",))
@flow(name="evaluate")
def evaluate(
    profile: str = "demo",
    store: str | None = None,
    refresh: bool = False,
    inputs: dict[str, str] | None = None,
    promote_champion: bool = True,
) -> State | dict[str, Any]:
    """The profile's model on its held-out ICT queries; champion comparison and promotion."""
    env = open_env(profile, store)
    with env.run_lock():
        result, decision = build_evaluation(env, refresh, inputs, promote_champion)
    return _with(flow_result(result), champion=decision)


@flow(name="evaluate-model")
def evaluate_model(
    model: str = CHAMPION_REF,
    datasets: list[str] | None = None,
    profile: str = "demo",
    store: str | None = None,
    modes: list[str] | None = None,
    max_queries: int | None = None,
    promote_champion: bool = False,
    refresh: bool = False,
    mcls: bool | None = None,
    mcls_interval: int | None = None,
) -> State | dict[str, Any]:
    """A stored model (ref or id) on dataset specs (default: the profile's held-out ICT queries):
    the paper's tables as a ``report`` artifact whose parents are the model and the data; with
    ``promote_champion`` the model becomes ``model/champion`` when it wins on the primary metric.
    ``mcls`` / ``mcls_interval`` override the profile's ``evaluate.mcls`` (MCLS passage encoding)."""
    env = open_env(profile, store)
    result, decision, metrics = build_model_evaluation(
        env, model, datasets, modes, max_queries, promote_champion, refresh, mcls, mcls_interval
    )
    return _with(
        flow_result(result), champion=decision, avg=metrics["avg"], table_markdown=metrics["table_markdown"]
    )
