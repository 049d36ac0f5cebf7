"""Which stages a run runs: ``--from``, ``--only`` and ``--refresh`` checked against the order."""

from __future__ import annotations

from collections.abc import Sequence


def select_stages(
    names: Sequence[str], from_stage: str | None, only: list[str] | None, refresh: list[str] | None
) -> list[str]:
    """The stages of ``names`` (the pipeline order) to run. Refused, with one line naming the known
    stages or the selection: an unknown name; ``--only`` a stage before ``--from`` (the two together
    narrow the run, so every ``--only`` stage must lie in the ``--from`` range); ``--refresh`` a
    stage that does not run (it would do nothing, and the user meant it to)."""
    for name in [from_stage, *(only or []), *(refresh or [])]:
        if name is not None and name not in names:
            raise ValueError(f"unknown stage {name!r}; stages: {', '.join(names)}")
    start = list(names).index(from_stage) if from_stage else 0
    if only:
        before = [s for s in names[:start] if s in only]
        if before:
            raise ValueError(
                f"--only {before[0]} comes before --from {from_stage} "
                f"(--from {from_stage} runs {', '.join(names[start:])})"
            )
        selected = [s for s in names if s in only]
    else:
        selected = list(names[start:])
    idle = [s for s in dict.fromkeys(refresh or []) if s not in selected]
    if idle:
        raise ValueError(
            f"--refresh {idle[0]}: stage {idle[0]} does not run (selected: {', '.join(selected)}); "
            f"add --only {idle[0]} or start earlier with --from"
        )
    return selected
