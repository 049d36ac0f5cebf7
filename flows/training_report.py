"""A training run's progress as Prefect artifacts of the flow run: a progress bar while it trains and
a sampled table of its loss terms, lr and throughput when it is done (the pretrain and finetune flows
hand it to the training stage, :class:`tasks.training.resumable_run.TrainingReport`)."""

from __future__ import annotations

from typing import Any, cast
from uuid import UUID

from prefect.artifacts import create_progress_artifact, create_table_artifact, update_progress_artifact

TABLE_ROWS = 50  # about this many steps of the history go into the loss table


class PrefectTrainingReport:
    """Artifacts keyed ``m3-<stage>-<profile>-progress`` and ``m3-<stage>-<profile>-loss``."""

    def __init__(self, profile: str) -> None:
        self.profile = profile
        self._bars: dict[str, UUID] = {}

    def _key(self, stage: str, what: str) -> str:
        return f"m3-{stage}-{self.profile}-{what}".lower()

    def started(self, stage: str) -> None:
        bar = create_progress_artifact(
            0.0, key=self._key(stage, "progress"), description=f"{stage} training progress"
        )
        self._bars[stage] = cast(UUID, bar)  # sync call: the id itself

    def step(self, stage: str, record: dict[str, Any]) -> None:
        sparse = record.get("sparse_active")
        note = f"{stage}: step {record['step']}/{record['total_steps']}, loss {record['loss']:.4f}"
        if sparse is not None:
            note += f", sparse-active tokens {100 * sparse:.0f}%"
        percent = min(100.0, 100.0 * record["step"] / record["total_steps"])
        update_progress_artifact(self._bars[stage], percent, description=note)

    def finished(self, stage: str, history: list[dict[str, Any]]) -> None:
        update_progress_artifact(self._bars[stage], 100.0)
        create_table_artifact(
            [
                {k: round(v, 5) if isinstance(v, float) else v for k, v in r.items()}
                for r in history[:: max(1, len(history) // TABLE_ROWS)]
            ],
            key=self._key(stage, "loss"),
            description=f"{stage}: loss per function, lr and throughput per step (sampled)",
        )
