"""A training run as the Prefect UI shows it (``flows/training_report.py``): a progress bar that moves
with the steps and, when the run is done, a sampled table of its loss terms, through a real API server."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.slow  # the session's Prefect API server


def _artifact(client, key: str):
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    (found,) = client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])))
    return found


def test_the_progress_bar_follows_the_steps_and_the_loss_table_samples_the_run(prefect_server):
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.training_report import TABLE_ROWS, PrefectTrainingReport

    total = 4 * TABLE_ROWS
    history = [
        {"step": s, "total_steps": total, "loss": 1 / s, "sparse_active": 0.25, "lr": 1e-4}
        for s in range(1, total + 1)
    ]
    seen: dict[str, object] = {}

    @flow(name="training-report-probe")
    def probe() -> None:
        report = PrefectTrainingReport("Probe")  # artifact keys are lower case
        report.started("finetune")
        report.step("finetune", history[total // 2 - 1])
        with get_client(sync_client=True) as client:
            bar = _artifact(client, "m3-finetune-probe-progress")
        seen["mid"] = (bar.data, bar.description)
        report.finished("finetune", history)

    with temporary_settings(updates={PREFECT_API_URL: prefect_server["url"]}):
        probe()
        with get_client(sync_client=True) as client:
            bar = _artifact(client, "m3-finetune-probe-progress")
            table = _artifact(client, "m3-finetune-probe-loss")
    note = f"finetune: step {total // 2}/{total}, loss 0.0100, sparse-active tokens 25%"
    assert seen["mid"] == (50.0, note)
    assert bar.data == 100.0
    rows = json.loads(table.data) if isinstance(table.data, str) else table.data
    assert len(rows) == TABLE_ROWS and rows[0]["step"] == 1 and rows[1]["step"] == 5
    assert rows[2]["loss"] == round(1 / 9, 5)  # floats rounded for the table
