"""A pipeline run's plan: the stages it will run, in order, with the ref each makes and reads.

The pipeline publishes it as a Prefect table artifact when it starts (``flows.pipeline``), so the
lineage page can draw stages that have not started yet as pending, wired to their inputs, and count
a run's progress. Stage subflows started later carry their own state; the plan only fills the gap.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

PLAN_PREFIX, PLAN_SUFFIX = "m3-pipeline-", "-plan"
ROUND_STAGES = ("mine", "finetune")  # run once per ANCE round; their outputs are named per round


def plan_key(profile: str) -> str:
    """The plan artifact's key (Prefect keys: lowercase letters, digits and dashes)."""
    from m3.publish import artifact_key

    return artifact_key(PLAN_PREFIX + profile + PLAN_SUFFIX)


def is_plan_key(key: str | None) -> bool:
    return bool(key) and key.startswith(PLAN_PREFIX) and key.endswith(PLAN_SUFFIX)  # type: ignore[union-attr]


def plan_rows(
    stages: Sequence[Any],
    selected: Sequence[str],
    profile: str,
    rounds: int,
    round_name: Callable[[str, int, int], str],
) -> list[dict[str, Any]]:
    """One row per stage run, in run order: ``{stage, round, kind, ref, inputs}``, where ``inputs``
    are the refs it reads (made earlier in this run, else the profile's own). ``stages`` are the
    pipeline's declared :class:`m3.stage.Stage` list; ``round_name`` names a round's artifacts."""
    made: dict[str, str] = {}
    rows: list[dict[str, Any]] = []

    def add(stage: str, kind: str, round_: int, inputs: dict[str, str]) -> None:
        name = round_name(profile, round_, rounds) if stage in ROUND_STAGES else profile
        ref = f"{kind}/{name}"
        rows.append(
            {"stage": stage, "round": round_, "kind": kind, "ref": ref, "inputs": ",".join(inputs.values())}
        )
        made[kind] = ref

    for st in stages:
        if st.name not in selected:
            continue
        add(st.name, st.kind, 1, {k: made.get(k, f"{k}/{profile}") for k in st.inputs})
        if st.name == "finetune":
            mine = next(s for s in stages if s.name == "mine")
            for k in range(2, rounds + 1):
                teacher = made["model"]
                add(
                    "mine",
                    mine.kind,
                    k,
                    {"queries": made.get("queries", f"queries/{profile}"), "checkpoint": teacher},
                )
                add("finetune", st.kind, k, {"checkpoint": teacher, "train-set": made[mine.kind]})
    return rows
