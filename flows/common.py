"""What every stage flow shares: opening the profile and store, the Dask runner, publishing."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from prefect import get_run_logger
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.runtime import flow_run, task_run
from prefect.states import Completed, State
from prefect_dask import DaskTaskRunner

from m3.profile import DaskSpec, Profile, load_profile
from m3.stage import StageResult
from m3.store import Store
from m3.store.store import default_cache_dir

DEFAULT_STORE = ".m3/store"


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


def resolve_store_url(profile: Profile, store: str | None) -> str:
    import os

    return store or profile.store or os.environ.get("M3_STORE") or DEFAULT_STORE


def open_env(profile: str, store: str | None) -> StageEnv:
    prof = load_profile(profile)
    return StageEnv(prof, Store(resolve_store_url(prof, store), cache_dir=default_cache_dir()))


def dask_runner(spec: DaskSpec) -> DaskTaskRunner:
    """A LocalCluster of the profile's shape, or the scheduler at ``spec.address``."""
    if spec.address:
        return DaskTaskRunner(address=spec.address)
    return DaskTaskRunner(
        cluster_class="distributed.LocalCluster",
        cluster_kwargs={
            "n_workers": spec.n_workers,
            "threads_per_worker": spec.threads_per_worker,
            "memory_limit": spec.memory_limit,
            "processes": True,
            "dashboard_address": ":0",  # a free port: parallel runs must not fight over 8787
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


def publish(env: StageEnv, result: StageResult) -> State | dict[str, Any]:
    """Prefect artifacts for a stage output, under stable keys so versions accumulate.

    Returns the flow's result: a ``Cached`` state when the store already had the artifact, so
    Prefect shows a reused stage as cached.
    """
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
    create_markdown_artifact(body, key=key, description=f"{result.ref} → {m.id[:12]}")
    table = _flatten(m.metrics) or [{"metric": "files", "value": str(len(m.files))}]
    create_table_artifact(table, key=_artifact_key(key, "metrics"), description=f"metrics of {result.ref}")
    out = {
        "stage": result.stage,
        "ref": result.ref,
        "manifest_id": result.manifest_id,
        "cached": result.cached,
    }
    if result.cached:
        return Completed(name="Cached", message=f"{result.ref} reused from the store", data=out)
    return out


def load_table(env: StageEnv, manifest_id: str, kind: str):
    """An artifact's Parquet files as one DataFrame (materialized in the local cache)."""
    from tasks.artifact_io import read_table

    return read_table(env.store.materialize(manifest_id), kind)


def progress_logger(stage: str, every: int = 1):
    """An ``on_progress`` callback that logs training steps through Prefect's logger."""
    log = get_run_logger()

    def report(step: dict[str, Any]) -> None:
        if step.get("step", 0) % every == 0:
            log.info(
                "%s step %s: loss %.4f lr %.2e %.0f tok/s padding %.0f%%",
                stage,
                step.get("step"),
                step.get("loss", float("nan")),
                step.get("lr", float("nan")),
                step.get("tokens_per_s", float("nan")),
                100 * step.get("padding_ratio", 0.0),
            )

    return report
