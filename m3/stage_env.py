"""What every stage shares at run time: the opened profile and store, and the one way to run a stage.

``StageEnv.run`` is the single runner (docs/architecture.md, "Stage runner"): cache key, build,
commit and OpenLineage events (``m3.stage.run_stage``), then the Prefect artifacts and the asset
event (``m3.publish``). Stage builders in ``tasks/<stage>/`` take a ``StageEnv``; flows open it
(``m3.app.env.open_env``). This floor does not know the profile's type: the application composes it
(``m3.app.profile``), and ``StageEnv`` only needs its ``name``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from prefect import get_run_logger
from prefect.runtime import flow_run, task_run
from prefect.states import Completed, State
from prefect.tasks import exponential_backoff

from m3.filestamps import content_stamps
from m3.stage import StageOutput, StageResult, StageSpec, classify_failure, run_stage
from m3.store import Store

_log = logging.getLogger(__name__)


def retry_transient_only(task, task_run, state) -> bool:
    """Prefect ``retry_condition_fn``: retry network/throttling errors, never bad data or OOM.

    A corrupt file or a worker out of memory fails the same way on every attempt; retrying only
    delays the failure message (see ``m3.stage.classify_failure``).
    """
    exc = state.data if isinstance(state.data, BaseException) else None
    if exc is None:
        try:
            exc = state.result(raise_on_failure=False)
        except Exception as err:  # the result itself could not be read: treat that as the error
            exc = err
    kind = classify_failure(exc) if isinstance(exc, BaseException) else "error"
    _log.info(
        "task %s failed (%s): %s", task_run.name, kind, "retrying" if kind == "transient" else "no retry"
    )
    return kind == "transient"


# Task options for work that touches the network or the store: up to 3 retries, 2 s, 4 s, 8 s apart
# (±50% jitter), and only for transient errors.
TRANSIENT_RETRIES: dict[str, Any] = {
    "retries": 3,
    "retry_delay_seconds": exponential_backoff(backoff_factor=2),
    "retry_jitter_factor": 0.5,
    "retry_condition_fn": retry_transient_only,
}


def run_logger(name: str) -> logging.Logger | logging.LoggerAdapter:
    """Prefect's run logger inside a flow or task run (its lines reach the UI), else ``name``'s."""
    from prefect.exceptions import MissingContextError

    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger(name)


def producer_ids() -> dict[str, str | None]:
    return {"flow_run_id": flow_run.get_id(), "task_run_id": task_run.get_id()}


class Named(Protocol):
    """What the runtime needs of a profile: its name (refs are ``<kind>/<name>``)."""

    @property
    def name(self) -> str: ...


P = TypeVar("P", bound=Named)


@dataclass(frozen=True)
class StageEnv(Generic[P]):
    profile: P
    store: Store

    def input_id(self, inputs: dict[str, str] | None, key: str, ref_kind: str) -> str:
        """An input manifest id: passed by the parent pipeline, else the profile's current ref."""
        if inputs and key in inputs:
            return inputs[key]
        ref = f"{ref_kind}/{self.profile.name}"
        try:
            return self.store.resolve(ref)
        except KeyError:
            raise RuntimeError(
                f"input {ref} is not in the store {self.store.url}: run the stage that makes it first"
            ) from None

    def run(
        self, spec: StageSpec, build: Callable[[Path], StageOutput], *, refresh: bool = False
    ) -> StageResult:
        """The one way a stage runs: the cached artifact or a new one (``m3.stage.run_stage``: key,
        build, commit, OpenLineage events), then its Prefect artifacts and asset event."""
        from m3.publish import publish

        result = run_stage(
            self.store,
            spec,
            build,
            refresh=refresh,
            flow=flow_run.get_flow_name() or spec.stage,
            **producer_ids(),
        )
        publish(self.store, self.profile.name, result)
        return result

    def register_files(
        self,
        stage: str,
        kind: str,
        name: str,
        files: dict[str, Path],
        config: dict[str, Any],
        code: str,
        *,
        refresh: bool = False,
    ) -> str:
        """Raw input files (named as the artifact names them) committed as they are, the root of a
        lineage chain. The key holds ``config`` and each file's name, size and sha256
        (``m3.filestamps``: remembered per file, so unchanged files are not hashed again, and a file
        touched with the same bytes keeps its artifact). Returns the manifest id."""
        stamps = content_stamps(files)
        spec = StageSpec(stage, kind, name, {}, {**config, "files": stamps}, (code,))

        def build(_: Path) -> StageOutput:
            return StageOutput(
                files=files,
                metrics={"files": len(files), "bytes": sum(s["bytes"] for s in stamps), **config},
                schema={"origin": {n: str(p) for n, p in files.items()}, **config},
            )

        return self.run(spec, build, refresh=refresh).manifest_id

    def run_lock(self, wait: float | None = None) -> AbstractContextManager[Any]:
        """The profile's run lock on the store (``m3.store.runlock``), held by this flow run while the
        block runs; under a pipeline's (or ``m3 run``'s) lock in this process it just passes."""
        from m3.store.runlock import hold

        name, run_id = flow_run.get_name(), flow_run.get_id()
        run = f"{name} ({run_id})" if run_id else f"{self.profile.name} (no flow run)"
        return hold(self.store.backend, self.profile.name, run, wait, say=run_logger(__name__).warning)

    def table(self, manifest_id: str, kind: str):
        """An artifact's Parquet files as one DataFrame (materialized in the local cache)."""
        from m3.artifact_io import read_table

        return read_table(self.store.materialize(manifest_id), kind)


def flow_result(result: StageResult) -> State | dict[str, Any]:
    """A stage flow's return value: a ``Cached`` state when the store already had the artifact, so
    Prefect shows a reused stage as cached."""
    out = {
        "stage": result.stage,
        "ref": result.ref,
        "manifest_id": result.manifest_id,
        "cached": result.cached,
    }
    if result.cached:
        return Completed(name="Cached", message=f"{result.ref} reused from the store", data=out)
    return out


def progress_logger(stage: str, every: int = 1) -> Callable[[dict[str, Any]], None]:
    """An ``on_progress`` callback that logs training steps through Prefect's logger."""
    log = run_logger(__name__)

    def report(step: dict[str, Any]) -> None:
        if step.get("step", 0) % every == 0:
            sparse = step.get("sparse_active")
            log.info(
                "%s step %s: loss %.4f lr %.2e %.0f tok/s padding %.0f%%%s",
                stage,
                step.get("step"),
                step.get("loss", float("nan")),
                step.get("lr", float("nan")),
                step.get("tokens_per_s", float("nan")),
                100 * step.get("padding_ratio", 0.0),
                "" if sparse is None else f" sparse-active {100 * sparse:.0f}%",
            )

    return report
