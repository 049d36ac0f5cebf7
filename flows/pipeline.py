"""pipeline: every stage in order, each a subflow; earlier outputs come from the store."""

from __future__ import annotations

import functools
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact
from prefect.runtime import flow_run

from flows.evaluate import evaluate
from flows.finetune import finetune
from flows.ingest import ingest
from flows.mine import mine
from flows.pretrain import pretrain
from flows.synthesize import synthesize
from m3.app.env import open_env
from m3.run_plan import plan_key, plan_rows
from m3.selection import select_stages as choose_stages
from m3.stage import pipeline_order
from m3.stage_env import StageEnv
from tasks.mining.stage import round_name

# Each stage is declared once, on its flow (``@declare``: kind, inputs, config sections); the
# order, the stage names and what each stage is handed all come from those declarations.
STAGES = pipeline_order([ingest, synthesize, pretrain, mine, finetune, evaluate])
STAGE_NAMES = tuple(s.name for s in STAGES)
select_stages = functools.partial(choose_stages, STAGE_NAMES)  # the CLI checks before Prefect starts


@flow(name="pipeline")
def pipeline(
    profile: str = "demo",
    store: str | None = None,
    from_stage: str | None = None,
    only: list[str] | None = None,
    refresh: list[str] | None = None,
    lock_wait: float | None = None,
) -> dict[str, Any]:
    """ingest → synthesize → pretrain → mine → finetune → evaluate on one profile.

    Stages not selected (``from_stage``/``only``) are taken from the profile's refs in the store.
    One run of a profile at a time on a store: a second one waits up to ``lock_wait`` seconds for
    the first (None: ``M3_RUN_LOCK_WAIT`` or an hour; ``m3.store.runlock``), then reuses its work.
    """
    env = open_env(profile, store)
    with env.run_lock(lock_wait):
        return _pipeline(env, profile, from_stage, only, refresh)


def _pipeline(
    env: StageEnv, profile: str, from_stage: str | None, only: list[str] | None, refresh: list[str] | None
) -> dict[str, Any]:
    log = get_run_logger()
    selected = select_stages(from_stage, only, refresh)
    refresh = refresh or []
    create_table_artifact(  # the lineage page draws the stages not started yet from it
        plan_rows(STAGES, selected, env.profile.name, env.profile.mine.rounds, round_name),
        key=plan_key(env.profile.name),
        description="the stages this run will run, in order: the ref each makes and the refs it reads",
    )
    outputs: dict[str, str] = {}
    done = []
    for st in STAGES:
        name, kind = st.name, st.kind
        if name not in selected:
            try:
                outputs[kind] = env.store.resolve(f"{kind}/{env.profile.name}")
            except KeyError:
                continue  # only needed if a selected stage reads it; that stage reports it
            continue
        inputs = {k: outputs[k] for k in st.inputs if k in outputs}
        state = st.flow(
            profile=profile, store=env.store.url, refresh=name in refresh, inputs=inputs, return_state=True
        )
        if not state.is_completed():
            # Everything before this stage is committed and in the stage cache: a retry of this
            # flow run (Prefect UI "Retry", `m3 retry`) or `m3 run --from` resumes right here.
            log.error(
                "stage %s failed: %s — earlier stages are in the store %s; retry this run "
                "(Prefect UI 'Retry' or `m3 retry %s`) to resume at %s",
                name,
                state.message,
                env.store.url,
                flow_run.get_id(),
                name,
            )
        result = state.result()
        outputs[kind] = result["manifest_id"]
        done.append(result)
        _log_stage(log, name, result)
        if name == "finetune" and env.profile.mine.rounds > 1:
            rounds = _ance_rounds(env, profile, outputs, "mine" in refresh, "finetune" in refresh)
            done.extend(rounds)
            outputs["model"] = rounds[-1]["manifest_id"]
    return {"store": env.store.url, "profile": env.profile.name, "stages": done, "outputs": outputs}


def _log_stage(log, name: str, result: dict[str, Any]) -> None:
    log.info(
        "%-10s %-22s %s %s",
        name,
        result["ref"],
        result["manifest_id"][:12],
        "cached" if result["cached"] else "built",
    )


def _ance_rounds(
    env, profile: str, outputs: dict[str, str], refresh_mine: bool, refresh_finetune: bool
) -> list[dict[str, Any]]:
    """Iterative ANCE (Xiong et al. 2021, "Approximate Nearest Neighbor Negative Contrastive Learning",
    arXiv 2007.00808): round k >= 2 mines hard negatives with round k-1's model and fine-tunes on from
    that model. Each round's train-set and model are artifacts (``<kind>/<profile>-r<k>``) whose parents
    are the round before, so a failed round's retry finds every earlier round in the stage cache.
    ``train-set/<profile>`` and ``model/<profile>`` then name the last round's."""
    log = get_run_logger()
    done = []
    for k in range(2, env.profile.mine.rounds + 1):
        teacher = outputs["model"]
        mined = mine(
            profile=profile,
            store=env.store.url,
            refresh=refresh_mine,
            inputs={"queries": outputs["queries"], "checkpoint": teacher},
            round=k,
        )
        _log_stage(log, f"mine r{k}", mined)
        trained = finetune(
            profile=profile,
            store=env.store.url,
            refresh=refresh_finetune,
            inputs={"checkpoint": teacher, "train-set": mined["manifest_id"]},
            round=k,
        )
        _log_stage(log, f"finetune r{k}", trained)
        outputs["train-set"], outputs["model"] = mined["manifest_id"], trained["manifest_id"]
        done.extend([{**mined, "round": k}, {**trained, "round": k}])
    for kind in ("train-set", "model"):
        ref = f"{kind}/{env.profile.name}"
        head = env.store.head(ref)
        if head is None or head.manifest != outputs[kind]:
            env.store.set_ref(ref, outputs[kind])
    return done
