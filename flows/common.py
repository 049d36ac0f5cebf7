"""What every stage flow shares: opening the profile and store, the Dask runner, publishing."""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.runtime import flow_run, task_run
from prefect.states import Completed, State
from prefect.tasks import exponential_backoff
from prefect_dask import DaskTaskRunner

from m3.openlineage import store_uri
from m3.profile import DaskSpec, Profile, load_profile
from m3.stage import StageOutput, StageResult, StageSpec, classify_failure, run_stage
from m3.store import Store
from m3.store.store import default_cache_dir

DEFAULT_STORE = ".m3/store"
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
TRANSIENT_RETRIES = {
    "retries": 3,
    "retry_delay_seconds": exponential_backoff(backoff_factor=2),
    "retry_jitter_factor": 0.5,
    "retry_condition_fn": retry_transient_only,
}


@dataclass(frozen=True)
class StageEnv:
    profile: Profile
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
        """The one way a flow runs a stage: the cached artifact or a new one (``m3.stage.run_stage``:
        key, build, commit, OpenLineage events), then its Prefect artifacts and asset event."""
        result = run_stage(
            self.store,
            spec,
            build,
            refresh=refresh,
            flow=flow_run.get_flow_name() or spec.stage,
            **producer_ids(),
        )
        publish(self, result)
        return result


def resolve_store_url(profile: Profile, store: str | None) -> str:
    import os

    return store or profile.store or os.environ.get("M3_STORE") or DEFAULT_STORE


def open_env(profile: str, store: str | None) -> StageEnv:
    prof = load_profile(profile)
    return StageEnv(prof, Store(resolve_store_url(prof, store), cache_dir=default_cache_dir()))


def dask_runner(spec: DaskSpec) -> DaskTaskRunner:
    """The scheduler at ``spec.address``, the profile's cluster class, or a LocalCluster of its shape."""
    if spec.address:
        return DaskTaskRunner(address=spec.address)
    if spec.cluster_class:
        return DaskTaskRunner(cluster_class=spec.cluster_class, cluster_kwargs=dict(spec.cluster_kwargs))
    from m3 import lifecycle

    return DaskTaskRunner(
        cluster_class=lifecycle.local_cluster,  # a LocalCluster the run closes when it is stopped
        cluster_kwargs={
            "n_workers": spec.n_workers,
            "threads_per_worker": spec.threads_per_worker,
            "memory_limit": spec.memory_limit,
            "processes": True,
            "dashboard_address": ":0",  # a free port: parallel runs must not fight over 8787
            "local_directory": str(lifecycle.run_dir() / "dask"),  # spill/scratch: gone with the run
        },
    )


def producer_ids() -> dict[str, str | None]:
    return {"flow_run_id": flow_run.get_id(), "task_run_id": task_run.get_id()}


def _artifact_key(*parts: str) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower()).strip("-")


def _flatten(metrics: dict[str, Any], prefix: str = "") -> list[dict[str, str]]:
    rows = []
    for key, value in metrics.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            rows.extend(_flatten(value, f"{name}."))
        elif not isinstance(value, list):
            rows.append({"metric": name, "value": str(value)})
    return rows


def publish(env: StageEnv, result: StageResult) -> None:
    """Prefect artifacts for a stage output, under stable keys so versions accumulate, and the asset
    materialization event of a newly built one."""
    m = env.store.manifest(result.manifest_id)
    store_url = env.store.url.rstrip("/")
    parents = "\n".join(
        f"- [`{p[:12]}`]({store_url}/manifests/{p}.json) {env.store.manifest(p).kind}/"
        f"{env.store.manifest(p).name}"
        for p in m.parents
    )
    files = "\n".join(
        f"| `{f.path}` | {f.bytes:,} | {'' if f.rows is None else f.rows} |" for f in m.files[:50]
    )
    more = f"\n\n… and {len(m.files) - 50} more files" if len(m.files) > 50 else ""
    metrics_json = json.dumps(m.metrics, indent=2, ensure_ascii=False, default=str)
    body = (
        f"# {result.stage}: `{result.ref}`\n\n"
        f"- manifest: [`{m.id}`]({store_url}/manifests/{m.id}.json)\n"
        f"- {'reused from the store (stage cache hit)' if result.cached else 'built in this run'}\n"
        f"- producer: flow run `{m.producer.flow_run_id}`, git `{m.producer.git_commit}`"
        f"{' (dirty)' if m.producer.git_dirty else ''}, config `{m.producer.config_hash[:12]}`\n\n"
        f"## Parents\n{parents or '- (raw input)'}\n\n"
        f"## Files\n| path | bytes | rows |\n|---|---|---|\n{files}{more}\n\n"
        f"## Metrics\n```json\n{metrics_json[:6000]}\n```\n"
    )
    key = _artifact_key("m3", result.stage, env.profile.name)
    if not result.cached:
        record_asset_materialization(env, m)
    create_markdown_artifact(body, key=key, description=f"{result.ref} → {m.id[:12]}")
    table = _flatten(m.metrics) or [{"metric": "files", "value": str(len(m.files))}]
    create_table_artifact(table, key=_artifact_key(key, "metrics"), description=f"metrics of {result.ref}")


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


def asset_key(store_url: str, kind: str, name: str) -> str:
    """The Prefect asset key of a ref: the store's URI + ``/refs/KIND/NAME`` (stable across versions)."""
    return f"{store_uri(store_url)}/refs/{kind}/{name}"


def record_asset_materialization(env: StageEnv, m) -> None:
    """A ``prefect.asset.materialization`` event for a newly built artifact, its parents as upstream.

    Prefect Cloud draws its asset graph from these; the open-source server stores them as events.
    ``M3_PREFECT_ASSETS=0`` turns them off.
    """
    if os.environ.get("M3_PREFECT_ASSETS", "1").lower() in {"0", "off", "false", "no"}:
        return
    from prefect.assets import Asset, AssetProperties, add_asset_metadata, materialize

    def asset(kind: str, name: str, description: str | None = None) -> Asset:
        props = AssetProperties(name=f"{kind}/{name}", description=description)
        return Asset(key=asset_key(env.store.url, kind, name), properties=props)

    target = asset(m.kind, m.name, f"m3 {m.kind} artifact (profile {env.profile.name})")
    upstream = []
    for pid in m.parents:
        pm = env.store.manifest(pid)
        upstream.append(asset(pm.kind, pm.name))

    @materialize(target, by="m3", asset_deps=upstream, name=f"materialize-{m.kind}")
    def record() -> str:
        add_asset_metadata(
            target,
            {
                "manifest_id": m.id,
                "parents": m.parents,
                "files": len(m.files),
                "bytes": sum(f.bytes for f in m.files),
                "config_hash": m.producer.config_hash,
            },
        )
        return m.id

    try:
        record()
    except Exception as exc:  # events are a side channel: never fail the stage for them
        _log.warning("asset materialization event for %s/%s not recorded: %s", m.kind, m.name, exc)


def load_table(env: StageEnv, manifest_id: str, kind: str):
    """An artifact's Parquet files as one DataFrame (materialized in the local cache)."""
    from tasks.artifact_io import read_table

    return read_table(env.store.materialize(manifest_id), kind)


def progress_logger(stage: str, every: int = 1):
    """An ``on_progress`` callback that logs training steps through Prefect's logger."""
    log = get_run_logger()

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
