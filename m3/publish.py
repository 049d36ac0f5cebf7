"""A stage output in Prefect: markdown and table artifacts under stable keys, and the asset event.

Lineage leaves through two channels, both from ``StageEnv.run``: OpenLineage events
(``m3.openlineage``, from ``m3.stage.run_stage``) and these Prefect artifacts and
``prefect.asset.materialization`` events (docs/architecture.md, "Lineage").
"""

from __future__ import annotations

import json
import logging
import os
import re
from typing import Any

from prefect.artifacts import create_markdown_artifact, create_table_artifact

from m3.openlineage import store_uri
from m3.stage import StageResult
from m3.store import Store
from m3.store.manifest import Manifest

_log = logging.getLogger(__name__)


def artifact_key(*parts: str) -> str:
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


def publish(store: Store, profile: str, result: StageResult) -> None:
    """Prefect artifacts for a stage output of ``profile``, under stable keys so versions accumulate,
    and the asset materialization event of a newly built one."""
    m = store.manifest(result.manifest_id)
    store_url = store.url.rstrip("/")
    parents = "\n".join(
        f"- [`{p[:12]}`]({store_url}/manifests/{p}.json) {store.manifest(p).kind}/{store.manifest(p).name}"
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
    key = artifact_key("m3", result.stage, profile)
    if not result.cached:
        record_asset_materialization(store, profile, m)
    create_markdown_artifact(body, key=key, description=f"{result.ref} → {m.id[:12]}")
    table = _flatten(m.metrics) or [{"metric": "files", "value": str(len(m.files))}]
    create_table_artifact(table, key=artifact_key(key, "metrics"), description=f"metrics of {result.ref}")


def asset_key(store_url: str, kind: str, name: str) -> str:
    """The Prefect asset key of a ref: the store's URI + ``/refs/KIND/NAME`` (stable across versions)."""
    return f"{store_uri(store_url)}/refs/{kind}/{name}"


def record_asset_materialization(store: Store, profile: str, m: Manifest) -> None:
    """A ``prefect.asset.materialization`` event for a newly built artifact, its parents as upstream.

    Prefect Cloud draws its asset graph from these; the open-source server stores them as events.
    ``M3_PREFECT_ASSETS=0`` turns them off.
    """
    if os.environ.get("M3_PREFECT_ASSETS", "1").lower() in {"0", "off", "false", "no"}:
        return
    from prefect.assets import Asset, AssetProperties, add_asset_metadata, materialize

    def asset(kind: str, name: str, description: str | None = None) -> Asset:
        props = AssetProperties(name=f"{kind}/{name}", description=description)
        return Asset(key=asset_key(store.url, kind, name), properties=props)

    target = asset(m.kind, m.name, f"m3 {m.kind} artifact (profile {profile})")
    upstream: list[Asset | str] = []
    for pid in m.parents:
        pm = store.manifest(pid)
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
