"""``m3 retry FLOW_RUN_ID``: run a failed pipeline (or stage) flow run again, resuming where it failed.

Resuming needs nothing from Prefect: every stage looks up its stage-cache key first, so the stages
that finished before the failure come back from the store and only the failed one and those after
it run (docs/architecture.md, "Stage cache").

A run of a deployment is retried the way the Prefect UI's "Retry" button does it: the same flow run
goes back to ``Scheduled`` (named ``AwaitingRetry``) and its work pool's worker runs it again. A run
started outside a deployment (``m3 run``) has no worker to pick it up, so its parameters are run
again here, in a new flow run.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

log = logging.getLogger(__name__)

TERMINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def _root_run(client, run):
    """A stage subflow's run → the pipeline run that started it (retrying a child alone is not possible)."""
    while run.parent_task_run_id:
        parent_task = client.read_task_run(run.parent_task_run_id)
        run = client.read_flow_run(parent_task.flow_run_id)
    return run


def _flow_function(name: str):
    """The flow a run of ``name`` ran: the pipeline, or a stage's flow from the pipeline's one list."""
    from flows.pipeline import STAGES, pipeline

    table = {"pipeline": pipeline, **{stage.name: stage.flow for stage in STAGES}}
    if name not in table:
        raise ValueError(f"flow {name!r} is not an m3 flow; known: {', '.join(table)}")
    return table[name]


def retry(
    flow_run_id: str, *, local: bool = False, wait: bool = True, timeout: float = 3600
) -> dict[str, Any]:
    """Retry the flow run (its pipeline run, for a stage subflow); return what happened."""
    from prefect import get_client
    from prefect.exceptions import ObjectNotFound
    from prefect.states import Scheduled

    try:
        run_uuid = uuid.UUID(flow_run_id)
    except ValueError:
        raise ValueError(f"{flow_run_id!r} is not a flow run id (a UUID)") from None
    with get_client(sync_client=True) as client:
        try:
            run = client.read_flow_run(run_uuid)
        except ObjectNotFound:  # its message is "None": say what is wrong instead
            raise ValueError(
                f"no flow run {flow_run_id} on the Prefect API {client.api_url}; "
                "retry it against the server that ran it (PREFECT_API_URL)"
            ) from None
        except Exception as exc:
            raise ValueError(
                f"cannot read flow run {flow_run_id} from the Prefect API {client.api_url}: "
                f"{type(exc).__name__}: {exc}"
            ) from None
        run = _root_run(client, run)
        state = run.state.type.value if run.state else "UNKNOWN"
        if state not in TERMINAL:
            raise ValueError(f"flow run {run.id} ({run.name}) is {state}: only a finished run can be retried")
        flow_name = client.read_flow(run.flow_id).name
        if run.deployment_id and not local:
            # What the UI's Retry button sends (prefect-ui-library retryFlowRun): not forced, so the
            # server's orchestration rules decide, exactly as for a click.
            result: Any = client.set_flow_run_state(
                run.id, Scheduled(name="AwaitingRetry", message="Retry from m3 retry"), force=False
            )
            if result.status.value != "ACCEPT":
                raise ValueError(f"the Prefect API refused to reschedule {run.id}: {result.details}")
            out: dict[str, Any] = {"flow_run_id": str(run.id), "name": run.name, "mode": "worker"}
            if not wait:
                out["state"] = "SCHEDULED"
                return out
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                time.sleep(2)
                now = client.read_flow_run(run.id)
                if now.state and now.state.type.value in TERMINAL and now.run_count > run.run_count:
                    out.update(state=now.state.type.value, message=now.state.message, run_count=now.run_count)
                    return out
            raise TimeoutError(
                f"flow run {run.id} did not finish within {timeout:.0f} s (is a worker running?)"
            )
        params = dict(run.parameters or {})
    fn = _flow_function(flow_name)
    log.info("re-running %s with the parameters of %s: %s", flow_name, run.id, params)
    new_state = fn(**params, return_state=True)
    return {
        "flow_run_id": str(new_state.state_details.flow_run_id),
        "retry_of": str(run.id),
        "name": run.name,
        "mode": "local",
        "state": new_state.type.value,
        "message": new_state.message,
        "result": new_state.result(raise_on_failure=False) if new_state.is_completed() else None,
    }
