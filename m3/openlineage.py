"""OpenLineage run events for each stage, so Marquez or DataHub users see the same lineage graph.

Off by default. ``M3_OPENLINEAGE`` switches it on and picks the transport:

- ``file:PATH`` (or a path ending in ``.jsonl``): one JSON event per line, appended
- ``http://HOST:PORT`` / ``https://…``: the OpenLineage HTTP API (``/api/v1/lineage``, e.g. Marquez)
- ``env``: the client's own configuration (``OPENLINEAGE_URL``, ``OPENLINEAGE_CONFIG``, …)

Each built stage emits START, then COMPLETE or FAIL (OpenLineage spec 2-0-2 run cycle). A dataset is
an artifact ref: namespace = the store's URL, name = ``KIND/NAME``, with the manifest id as its
``version`` facet; the job is the stage, its parent run the Prefect flow run. A cache hit runs
nothing and emits nothing. Emitting never fails a stage: problems are logged.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import traceback
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from m3.store.manifest import Manifest
    from m3.store.store import Store


class StageSpecLike(Protocol):
    """What an event names of a stage run (``m3.stage.StageSpec`` has it; not imported: that module
    sends these events)."""

    @property
    def stage(self) -> str: ...

    @property
    def inputs(self) -> Mapping[str, str]: ...

    @property
    def ref(self) -> str: ...


log = logging.getLogger(__name__)

ENV = "M3_OPENLINEAGE"
ENV_NAMESPACE = "M3_OPENLINEAGE_NAMESPACE"
PRODUCER = "urn:m3-pipeline:stage-runner"  # a URI naming this code as the events' producer
_clients: dict[str, Any] = {}


def store_uri(url: str) -> str:
    """A store URL as a URI: ``s3://bucket/prefix`` as is, a local folder as ``file:///abs/path``."""
    if "://" in url and not url.startswith("file://"):
        return url.rstrip("/")
    path = url.removeprefix("file://")
    return "file://" + os.path.abspath(os.path.expanduser(path))


def enabled() -> bool:
    return os.environ.get(ENV, "").strip().lower() not in {"", "0", "off", "false", "no"}


def client():
    """The OpenLineage client for the transport ``M3_OPENLINEAGE`` names (one per setting)."""
    setting = os.environ.get(ENV, "").strip()
    if setting in _clients:
        return _clients[setting]
    from openlineage.client import OpenLineageClient

    if setting == "env":
        made = OpenLineageClient()
    elif setting.startswith(("http://", "https://")):
        from openlineage.client.transport.http import HttpConfig, HttpTransport

        made = OpenLineageClient(transport=HttpTransport(HttpConfig(url=setting, timeout=5.0)))
    else:
        from openlineage.client.transport.file import FileConfig, FileTransport

        path = setting.removeprefix("file:")
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        made = OpenLineageClient(transport=FileTransport(FileConfig(log_file_path=path, append=True)))
    _clients[setting] = made
    return made


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


class StageRun:
    """The OpenLineage view of one ``run_stage`` call; every method is a no-op when disabled."""

    def __init__(self, store: Store, spec: StageSpecLike, *, flow: str = "", flow_run_id: str | None = None):
        self.store, self.spec, self.flow, self.flow_run_id = store, spec, flow, flow_run_id
        self.run_id = str(uuid.uuid4())
        self.on = enabled()
        self.namespace = os.environ.get(ENV_NAMESPACE, "m3")

    # -- building events ------------------------------------------------------------------------
    def _dataset_ns(self) -> str:
        return store_uri(self.store.url)

    def _inputs(self) -> list:
        from openlineage.client.event_v2 import InputDataset
        from openlineage.client.facet_v2 import dataset_version_dataset as dv

        out = []
        for mid in self.spec.inputs.values():
            try:
                m = self.store.manifest(mid)
                name = f"{m.kind}/{m.name}"
            except Exception:  # a broken input is still an input; name it by id
                name = f"manifest/{mid}"
            out.append(
                InputDataset(
                    namespace=self._dataset_ns(),
                    name=name,
                    facets={"version": dv.DatasetVersionDatasetFacet(datasetVersion=mid)},
                )
            )
        return out

    def _outputs(self, manifest: Manifest | None) -> list:
        from openlineage.client.event_v2 import OutputDataset
        from openlineage.client.facet_v2 import dataset_version_dataset as dv
        from openlineage.client.facet_v2 import output_statistics_output_dataset as stats

        facets: dict[str, Any] = {}
        output_facets: dict[str, Any] = {}
        if manifest is not None:
            facets["version"] = dv.DatasetVersionDatasetFacet(datasetVersion=manifest.id)
            rows = [f.rows for f in manifest.files if f.rows is not None]
            output_facets["outputStatistics"] = stats.OutputStatisticsOutputDatasetFacet(
                rowCount=sum(rows) if rows else None,
                size=sum(f.bytes for f in manifest.files),
                fileCount=len(manifest.files),
            )
        return [
            OutputDataset(
                namespace=self._dataset_ns(), name=self.spec.ref, facets=facets, outputFacets=output_facets
            )
        ]

    def event(self, state: str, manifest: Manifest | None = None, error: BaseException | None = None):
        from openlineage.client.event_v2 import Job, Run, RunEvent, RunState
        from openlineage.client.facet_v2 import error_message_run, job_type_job, parent_run

        run_facets: dict[str, Any] = {}
        if self.flow_run_id:
            run_facets["parent"] = parent_run.ParentRunFacet(
                run=parent_run.Run(runId=str(uuid.UUID(self.flow_run_id))),
                job=parent_run.Job(namespace="prefect", name=self.flow or "flow"),
            )
        if error is not None:
            run_facets["errorMessage"] = error_message_run.ErrorMessageRunFacet(
                message=str(error)[:4000],
                programmingLanguage="python",
                stackTrace="".join(traceback.format_exception(error))[-8000:],
            )
        job_facets: dict[str, Any] = {
            "jobType": job_type_job.JobTypeJobFacet(processingType="BATCH", integration="M3", jobType="STAGE")
        }
        return RunEvent(
            eventType=getattr(RunState, state),
            eventTime=_now(),
            run=Run(runId=self.run_id, facets=run_facets),
            job=Job(namespace=self.namespace, name=self.spec.stage, facets=job_facets),
            inputs=self._inputs(),
            outputs=self._outputs(manifest),
            producer=PRODUCER,
        )

    # -- emitting -------------------------------------------------------------------------------
    def _emit(self, state: str, manifest: Manifest | None = None, error: BaseException | None = None) -> None:
        if not self.on:
            return
        try:
            client().emit(self.event(state, manifest, error))
        except Exception as exc:  # lineage is a side channel: never fail the stage for it
            log.warning("OpenLineage %s event for %s not sent: %s", state, self.spec.ref, exc)

    def start(self) -> None:
        self._emit("START")

    def complete(self, manifest: Manifest) -> None:
        self._emit("COMPLETE", manifest)

    def fail(self, error: BaseException) -> None:
        self._emit("FAIL", error=error)


def stage_run(
    store: Store, spec: StageSpecLike, *, flow: str = "", flow_run_id: str | None = None
) -> StageRun:
    return StageRun(store, spec, flow=flow, flow_run_id=flow_run_id)
