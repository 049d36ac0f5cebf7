"""Operating the pipeline: deployments and work pools, retries, resuming a failed run.

The slow test deploys the pipeline from prefect.yaml to a real local Prefect server with a real
process worker (all subprocesses), breaks an input, retries the same flow run the way the Prefect
UI's Retry button does, and checks the stages before the failure were not recomputed.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from contextlib import closing
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path
from uuid import uuid4

import httpx
import pytest
import yaml

from m3.stage import StageFailed, StageOutput, StageSpec, classify_failure, run_stage
from m3.store import RefConflict, Store
from tests.support.net import free_port
from tests.support.paths import REPO

BIN = Path(sys.executable).parent


# -- retry policy -------------------------------------------------------------------------------
def _wrapped(exc: BaseException) -> BaseException:
    try:
        try:
            raise exc
        except BaseException as inner:
            raise RuntimeError("while reading a shard") from inner
    except RuntimeError as outer:
        return outer


class ClientError(Exception):  # the shape of botocore's ClientError
    def __init__(self, code: str):
        super().__init__(code)
        self.response = {"Error": {"Code": code}}


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (ConnectionResetError(errno.ECONNRESET, "reset by peer"), "transient"),
        (TimeoutError("read timed out"), "transient"),
        (ClientError("SlowDown"), "transient"),
        (RefConflict("ref moved"), "transient"),
        (_wrapped(ConnectionRefusedError(errno.ECONNREFUSED, "refused")), "transient"),
        (ValueError("Parquet magic bytes not found"), "data"),
        (UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"), "data"),
        (EOFError("Compressed file ended before the end-of-stream marker"), "data"),
        (_wrapped(ValueError("bad row")), "data"),
        (MemoryError(), "oom"),
        (RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"), "oom"),
        (FileNotFoundError(errno.ENOENT, "no such file"), "error"),
        (AttributeError("'NoneType' object has no attribute 'x'"), "error"),
        (ClientError("AccessDenied"), "error"),
    ],
)
def test_failures_are_classified_for_retrying(exc, kind):
    assert classify_failure(exc) == kind


def test_retry_condition_retries_only_transient_failures():
    from prefect import Task
    from prefect.client.schemas.objects import TaskRun
    from prefect.states import Failed

    import flows.ingest
    import flows.mine
    from m3.stage_env import TRANSIENT_RETRIES, retry_transient_only

    run = TaskRun(flow_run_id=None, task_key="k", dynamic_key="0", name="mine-shard-0")
    assert retry_transient_only(None, run, Failed(data=ConnectionResetError(104, "reset"))) is True
    assert retry_transient_only(None, run, Failed(data=ValueError("corrupt parquet"))) is False
    assert retry_transient_only(None, run, Failed(data=MemoryError())) is False
    tasks = [v for v in vars(flows.ingest).values() if isinstance(v, Task)] + [flows.mine.mine_shard]
    assert len(tasks) >= 2
    for task in tasks:  # the Dask tasks that read files from the store use the policy
        assert task.retries == TRANSIENT_RETRIES["retries"] == 3
        assert task.retry_condition_fn is retry_transient_only
        assert task.retry_delay_seconds == [2, 4, 8]  # exponential backoff


def test_a_failed_stage_names_the_artifact_and_the_input_that_broke_it(tmp_path):
    store = Store(str(tmp_path / "store"), cache_dir=tmp_path / "cache")
    raw = tmp_path / "q.parquet"
    raw.write_bytes(b"PAR1 truncated")
    queries = store.commit("queries", "demo", {"q.parquet": raw}, ref="queries/demo")
    spec = StageSpec("mine", "train-set", "demo", {"queries": queries.id}, {"k": 1}, ("m3.stage",))

    def build(_: Path) -> StageOutput:
        raise ValueError("Parquet magic bytes not found in footer")

    with pytest.raises(StageFailed) as info:
        run_stage(store, spec, build)
    err = info.value
    assert str(err).startswith("stage mine failed making train-set/demo from queries=queries/demo")
    assert queries.id[:12] in str(err) and "[data]" in str(err) and "Parquet magic bytes" in str(err)
    assert isinstance(err.__cause__, ValueError) and classify_failure(err) == "data"
    copy = pickle.loads(pickle.dumps(err))  # crosses process boundaries (Dask, Prefect results)
    assert (copy.stage, copy.ref, copy.input_refs) == ("mine", "train-set/demo", {"queries": "queries/demo"})
    assert store.refs()[0].ref == "queries/demo" and len(store.refs()) == 1  # nothing half-written


# -- deployments and work pools -----------------------------------------------------------------
def test_prefect_yaml_has_a_deployment_per_stage_and_the_pipeline():
    config = yaml.safe_load((REPO / "prefect.yaml").read_text())
    deployments = {d["name"]: d for d in config["deployments"]}
    entrypoints = {d["entrypoint"] for d in deployments.values()}
    from flows.pipeline import STAGES

    assert "flows/pipeline.py:pipeline" in entrypoints
    for st in STAGES:  # every declared stage can be deployed on its own
        fn = st.flow.fn
        assert f"{fn.__module__.replace('.', '/')}.py:{fn.__name__}" in entrypoints, st.name
    for d in deployments.values():
        path, func = d["entrypoint"].split(":")
        assert (REPO / path).is_file() and f"def {func}(" in (REPO / path).read_text()
        assert d["work_pool"]["name"] in {"cpu", "gpu"} and "m3" in d["tags"]
    cron = {name: d["schedules"][0]["cron"] for name, d in deployments.items() if d.get("schedules")}
    assert cron["ingest-weekly"].split()[-1] == "1" and cron["evaluate-nightly"].split()[2:] == [
        "*",
        "*",
        "*",
    ]
    assert deployments["pipeline-demo"]["parameters"].keys() >= {"profile", "store", "from_stage", "refresh"}
    assert "serve" in (REPO / "Makefile").read_text()


# The GPU work pools' base job templates, built into jobs by the Kubernetes and Docker workers' own
# code (prefect-kubernetes, prefect-docker) for a flow run whose job variables ask for 4 GPUs. No
# cluster or Docker daemon is involved: nothing is submitted.
GPU_POOLS = {"kubernetes": ("gpu", "gpu-kubernetes.json"), "docker": ("gpu-docker", "gpu-docker.json")}
GPU_JOB_VARIABLES = {"gpu_count": 4, "image": "registry.example.com/m3:cu124", "env": {"M3_STORE": "s3://m3"}}
WORKER_API_URL = "https://prefect.example.com/api"  # the worker's PREFECT_API_URL, passed on to the job


def _gpu_template(kind: str) -> dict:
    return json.loads((REPO / "deploy" / GPU_POOLS[kind][1]).read_text())


def _build_gpu_job(kind: str, template: dict, job_variables: dict):
    """What the worker of `kind` would submit for a new flow run: (job configuration, flow run,
    docker-py's create-container arguments for Docker, else None).

    First the server's checks of `prefect work-pool create --base-job-template` and of a run's job
    variables, then `BaseJobConfiguration.resolve_for_flow_run`'s two steps without the API reads:
    `from_template_and_values` and `prepare_for_flow_run`. For Docker, then the worker's container
    settings and docker-py's conversion of `containers.create(**settings)` into the API request.
    """
    from prefect.client.orchestration import PrefectClient
    from prefect.client.schemas.objects import Flow, FlowRun, WorkPool
    from prefect.server.schemas.actions import validate_base_job_template
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from prefect.utilities.schema_tools import is_valid_schema, validate

    validate_base_job_template(template)  # every {{ placeholder }} is a declared variable
    is_valid_schema(template["variables"], preprocess=False)
    validate(job_variables, template["variables"], raise_on_error=True, ignore_required=True)
    if kind == "kubernetes":
        from prefect_kubernetes.worker import KubernetesWorkerJobConfiguration as config_cls
    else:
        from prefect_docker.worker import DockerWorkerJobConfiguration as config_cls
    flow = Flow(id=uuid4(), name="pipeline")
    flow_run = FlowRun(id=uuid4(), name="gentle-otter", flow_id=flow.id)
    pool = WorkPool(name=GPU_POOLS[kind][0], type=kind, base_job_template=template)
    # The templates use no blocks or Prefect variables, so building the job must not need the API:
    # this client has no server behind it and would fail on any request.
    client = PrefectClient(api="http://127.0.0.1:9/api")
    with temporary_settings({PREFECT_API_URL: WORKER_API_URL}):
        config = asyncio.run(config_cls.from_template_and_values(template, job_variables, client=client))
        config.prepare_for_flow_run(flow_run, flow=flow, work_pool=pool, worker_name="gpu-worker")
    if kind == "kubernetes":
        return config, flow_run, None

    import docker
    from docker.models.containers import _create_container_args
    from prefect_docker.worker import DockerWorker

    # A client for a socket that does not exist, given the API version so that it asks no daemon.
    # The worker only queries the daemon for a local API URL (host.docker.internal mapping).
    with closing(
        docker.DockerClient(
            base_url="unix:///nonexistent/docker.sock", version=docker.constants.DEFAULT_DOCKER_API_VERSION
        )
    ) as docker_client:
        settings = DockerWorker(work_pool_name=pool.name)._build_container_settings(docker_client, config)
        # what docker_client.containers.create(**settings) posts; docker-py checks DeviceRequests here
        create_args = _create_container_args({**settings, "version": docker_client.api._version})
    return config, flow_run, create_args


@pytest.mark.parametrize("kind", ["kubernetes", "docker"])
def test_gpu_work_pool_templates_build_the_workers_gpu_job(kind):
    config, flow_run, create_args = _build_gpu_job(kind, _gpu_template(kind), GPU_JOB_VARIABLES)
    wanted_env = {
        "PREFECT_API_URL": WORKER_API_URL,
        "PREFECT__FLOW_RUN_ID": str(flow_run.id),  # `prefect flow-run execute` reads the run id here
        "M3_STORE": "s3://m3",  # a run's env is merged with the template's default env …
        "DO_NOT_TRACK": "1",  # … not put in its place
    }
    if kind == "kubernetes":
        manifest = config.job_manifest
        assert manifest["kind"] == "Job" and manifest["spec"]["backoffLimit"] == 0
        assert manifest["metadata"]["generateName"] == "gentle-otter-"
        assert manifest["metadata"]["namespace"] == config.namespace == "default"
        pod = manifest["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        assert container["resources"]["limits"]["nvidia.com/gpu"] == 4
        assert "nvidia.com/gpu" not in container["resources"]["requests"]  # a limit alone is the request
        assert container["image"] == "registry.example.com/m3:cu124"
        assert container["args"] == ["prefect", "flow-run", "execute"]
        env = {e["name"]: e["value"] for e in container["env"]}
        assert len(env) == len(container["env"]) and env.items() >= wanted_env.items()
        # backoffLimit 0: an evicted pod's flow run is rescheduled rather than crashed
        assert env["PREFECT_FLOW_RUN_EXECUTE_SIGTERM_BEHAVIOR"] == "reschedule"
        assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
        (shm,) = container["volumeMounts"]
        assert shm["mountPath"] == "/dev/shm" and {v["name"] for v in pod["volumes"]} == {shm["name"]}
        labels = manifest["spec"]["template"]["metadata"]["labels"]
        assert labels["prefect.io/flow-run-id"] == str(flow_run.id)
        assert labels["prefect.io/work-pool-name"] == "gpu"
    else:
        assert create_args["host_config"]["DeviceRequests"] == [
            {"Driver": "nvidia", "Count": 4, "DeviceIDs": [], "Capabilities": [["gpu"]], "Options": {}}
        ]
        assert create_args["host_config"]["ShmSize"] == 8 * 2**30
        assert create_args["host_config"]["AutoRemove"] is True
        assert "Privileged" not in create_args["host_config"]
        assert create_args["image"] == "registry.example.com/m3:cu124"
        assert create_args["command"] == "prefect flow-run execute"
        assert create_args["environment"].items() >= wanted_env.items()
        assert create_args["name"] == "gentle-otter"
        assert create_args["labels"]["io.prefect.flow-run-id"] == str(flow_run.id)


def _broken(kind: str, edit) -> dict:
    template = _gpu_template(kind)
    edit(template)
    return template


def _k8s_pod_spec(template: dict) -> dict:
    return template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]


@pytest.mark.parametrize(
    ("kind", "edit", "job_variables", "error"),
    [
        # the pod spec keys prefect-kubernetes requires (deploy/gpu-kubernetes.json once lacked them)
        (
            "kubernetes",
            lambda t: [_k8s_pod_spec(t).pop(k) for k in ("parallelism", "completions")],
            GPU_JOB_VARIABLES,
            "Job is missing required attributes at the following paths: "
            "/spec/template/spec/completions, /spec/template/spec/parallelism",
        ),
        # a variable whose type the worker's job configuration does not take
        (
            "kubernetes",
            lambda t: t["variables"]["properties"]["pod_watch_timeout_seconds"].update(
                type="string", default="10m"
            ),
            GPU_JOB_VARIABLES,
            "pod_watch_timeout_seconds",
        ),
        # a GPU count declared as a string passes the schema and the worker, not docker-py
        (
            "docker",
            lambda t: t["variables"]["properties"]["gpu_count"].update(type="string", default="1"),
            {**GPU_JOB_VARIABLES, "gpu_count": "4"},
            "DeviceRequest.count must be an integer",
        ),
        # the GPU placeholder no longer matches a declared variable
        (
            "docker",
            lambda t: t["variables"]["properties"].update(gpus=t["variables"]["properties"].pop("gpu_count")),
            {**{k: v for k, v in GPU_JOB_VARIABLES.items() if k != "gpu_count"}, "gpus": 4},
            "undeclared variable\\(s\\): gpu_count",
        ),
    ],
    ids=["k8s-no-completions", "k8s-timeout-string", "docker-gpu-count-string", "docker-gpu-undeclared"],
)
def test_gpu_work_pool_template_mistakes_fail_the_worker_build(kind, edit, job_variables, error):
    with pytest.raises(ValueError, match=error):
        _build_gpu_job(kind, _broken(kind, edit), job_variables)


# -- the deployed pipeline: fail, fix, retry the same flow run ----------------------------------
def _wait(predicate, timeout: float, what: str, every: float = 1.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _stop(*procs: subprocess.Popen) -> None:
    """SIGTERM to every process group at once, then SIGKILL to those still up after 5 s."""
    running = [p for p in procs if p.poll() is None]
    for proc in running:
        os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + 5  # they stop within seconds when idle; nothing is left to save
    for proc in running:
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


def _snapshot(target: Path) -> Path:
    """A copy of the checkout (tracked and untracked, not ignored files, plus the compiled
    extensions `make setup` built beside their sources) for the deployment.

    Stage cache keys hash the stages' code, so the deployed code must not change while the test
    runs (say, edited in the working tree meanwhile): the deployment runs from this copy. The
    extensions are git-ignored build outputs, yet `tasks` cannot be imported without them.
    """
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, capture_output=True, check=True
    ).stdout
    files = [REPO / rel for rel in filter(None, listed.decode().split("\0"))]
    built = []  # each .pyx's extension module, as setup.py builds it beside its source
    for source in (f for f in files if f.suffix == ".pyx"):
        found = [source.with_suffix(x) for x in EXTENSION_SUFFIXES if source.with_suffix(x).is_file()]
        assert found, f"{source.relative_to(REPO)} is not built: run `make setup` first"
        built += found
    for src in files + built:
        if src.is_file():
            rel = src.relative_to(REPO)
            (target / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, target / rel)
    return target


@pytest.fixture(scope="module")
def prefect_stack(tmp_path_factory, prefect_server):
    """A Prefect server (SQLite) and a process worker on the `cpu` pool, as `make serve` runs them.

    Its database starts as a copy of the session server's freshly migrated one (no rows yet): the
    same schema `prefect server start` would create, without running every migration again.
    """
    base = tmp_path_factory.mktemp("ops")
    shutil.copyfile(prefect_server["empty_db"], base / "prefect.db")
    checkout = _snapshot(base / "checkout")
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = dict(os.environ)
    env.update(
        PREFECT_HOME=str(base / "prefect"),
        PREFECT_API_URL=api,
        PREFECT_UI_URL=f"http://127.0.0.1:{port}",
        PREFECT_API_DATABASE_CONNECTION_URL=f"sqlite+aiosqlite:///{base / 'prefect.db'}",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        DO_NOT_TRACK="1",
        PREFECT_WORKER_QUERY_SECONDS="1",  # picks up a scheduled run within a second
        M3_CACHE_DIR=str(base / "cache"),
        M3_OPENLINEAGE=f"file:{base / 'openlineage.jsonl'}",
        PYTHONPATH=str(checkout),  # the snapshot's code, not the editable install's
    )
    logs = base / "logs"
    logs.mkdir()
    procs = []

    def start(name: str, args: list[str]) -> subprocess.Popen:
        out = open(logs / f"{name}.log", "w")  # noqa: SIM115 (closed with the process)
        proc = subprocess.Popen(
            args, env=env, cwd=checkout, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        procs.append(proc)
        return proc

    server = start(
        "server", [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)]
    )

    def healthy():
        assert server.poll() is None, (logs / "server.log").read_text()[-3000:]
        try:
            return httpx.get(f"{api}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    try:
        _wait(healthy, 240, "the Prefect server")
        # The `cpu` pool as `prefect work-pool create cpu --type process` makes it (the process
        # worker's default job template), through the API: no CLI process to start.
        from prefect.workers.process import ProcessWorker

        pool = {"name": "cpu", "type": "process"}
        pool["base_job_template"] = ProcessWorker.get_default_base_job_template()
        httpx.post(f"{api}/work_pools/", json=pool, timeout=60).raise_for_status()
        prefect = [str(BIN / "prefect"), "--no-prompt"]
        deploy = subprocess.run(
            [*prefect, "deploy", "--name", "pipeline-demo"],
            env=env,
            cwd=checkout,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert deploy.returncode == 0, deploy.stdout[-3000:] + deploy.stderr[-3000:]
        start("worker", [str(BIN / "prefect"), "worker", "start", "--pool", "cpu", "--type", "process"])
        yield {"env": env, "api": api, "base": base, "logs": logs, "checkout": checkout}
    finally:
        _stop(*reversed(procs))


def _api(stack, method: str, path: str, body=None):
    """One API call, retried as Prefect's own client retries: the server answers 503 for errors it
    calls retryable (SQLite busy while the worker writes), seen once in CI on create_flow_run."""
    deadline = time.monotonic() + 60
    while True:
        resp = httpx.request(method, stack["api"] + path, json=body, timeout=30)
        if resp.status_code not in (429, 503) or time.monotonic() > deadline:
            resp.raise_for_status()
            return resp.json()
        time.sleep(1)


def _run_deployment(stack, parameters: dict, timeout: float = 600) -> dict:
    dep = _api(stack, "GET", "/deployments/name/pipeline/pipeline-demo")
    run = _api(stack, "POST", f"/deployments/{dep['id']}/create_flow_run", {"parameters": parameters})
    return _wait_final(stack, run["id"], timeout)


def _wait_final(stack, run_id: str, timeout: float, min_runs: int = 1) -> dict:
    def final():
        run = _api(stack, "GET", f"/flow_runs/{run_id}")
        state = run["state"]["type"]
        done = state in {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}
        # a run that crashed loading its flow (say, an import error) never counted a run
        return run if done and (run["run_count"] >= min_runs or state == "CRASHED") else None

    try:
        return _wait(final, timeout, f"flow run {run_id}", every=1)
    except AssertionError:
        print(_worker_log(stack))
        raise


def _worker_log(stack) -> str:
    """The end of the worker's log: where a flow run that could not start says why."""
    return (stack["logs"] / "worker.log").read_text()[-6000:]


def _pipeline_log(stack, run_id: str, until=None, timeout: float = 60) -> str:
    """A flow run's log, every page of it (the API returns at most 200 entries a call); with
    ``until``, read again until it holds (logs reach the API in batches, after the run ends)."""
    deadline = time.monotonic() + timeout
    while True:
        entries: list[dict] = []
        while True:
            body = {"logs": {"flow_run_id": {"any_": [run_id]}}, "sort": "TIMESTAMP_ASC"}
            page = _api(stack, "POST", "/logs/filter", {**body, "limit": 200, "offset": len(entries)})
            entries += page
            if len(page) < 200:
                break
        text = "\n".join(entry["message"] for entry in entries)
        if until is None or until(text) or time.monotonic() > deadline:
            return text
        time.sleep(1)


def _logged(text: str, stage: str, outcome: str) -> bool:
    """Whether the pipeline logged ``stage`` as ``outcome`` (``cached`` / ``built``)."""
    return any(line.split()[:1] == [stage] and line.rstrip().endswith(outcome) for line in text.splitlines())


@pytest.mark.slow
def test_deployed_pipeline_fails_on_a_corrupt_input_and_a_retry_resumes_at_the_failed_stage(prefect_stack):
    stack = prefect_stack
    store_dir = stack["base"] / "store"
    params = {"profile": str(stack["checkout"] / "tests" / "profiles" / "tiny.yaml"), "store": str(store_dir)}

    # 1. the data stages run through the deployment and its worker
    first = _run_deployment(stack, {**params, "only": ["ingest", "synthesize"]})
    assert first["state"]["type"] == "COMPLETED", (first["state"], _worker_log(stack))
    store = Store(str(store_dir), cache_dir=stack["base"] / "cache")
    queries = store.manifest(store.resolve("queries/tiny"))

    # 2. an input goes bad: the queries Parquet files are truncated (in the store and the local cache)
    originals = {}
    for f in queries.files:
        blob = store_dir / "blobs" / "sha256" / f.sha256[:2] / f.sha256
        originals[blob] = blob.read_bytes()
    for blob, data in originals.items():
        os.chmod(blob, 0o644)
        blob.write_bytes(data[: len(data) // 3])
    # the cache holds verified copies, which a damaged store blob does not reach: read from the store
    shutil.rmtree(stack["base"] / "cache", ignore_errors=True)

    failed = _run_deployment(stack, params)
    assert failed["state"]["type"] == "FAILED"
    message = failed["state"]["message"]
    assert "stage mine failed making train-set/tiny from queries=queries/tiny" in message, message
    assert store.resolve("queries/tiny")[:12] in message and "[data]" in message
    shards = _api(stack, "POST", "/task_runs/filter", {"task_runs": {"name": {"like_": "mine-shard"}}})
    # bad data: no automatic retries (the store's verified reads may refuse the input before any shard)
    assert all(t["run_count"] == 1 for t in shards)
    earlier = ("corpus/tiny", "queries/tiny", "checkpoint/tiny")  # pretrain finished before mine failed
    before = {ref: store.ref_history(ref) for ref in earlier}
    with pytest.raises(KeyError):
        store.resolve("train-set/tiny")

    # 3. fix the input, then retry the same flow run (what the UI's Retry button sends)
    for blob, data in originals.items():
        blob.write_bytes(data)
    retry = subprocess.run(
        [sys.executable, "-m", "m3.app.cli", "retry", failed["id"], "--json"],
        env=stack["env"],
        cwd=stack["checkout"],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert retry.returncode == 0, retry.stderr[-4000:]
    out = json.loads(retry.stdout)
    assert out["mode"] == "worker" and out["flow_run_id"] == failed["id"] and out["state"] == "COMPLETED"
    done = _wait_final(stack, failed["id"], 60, min_runs=2)
    assert done["state"]["type"] == "COMPLETED" and done["run_count"] == 2

    # earlier stages came back from the store: same manifests, no new versions, logged as cached
    log = _pipeline_log(stack, failed["id"], until=lambda text: _logged(text, "evaluate", "built"))
    for stage, ref in zip(("ingest", "synthesize", "pretrain"), earlier, strict=True):
        assert store.ref_history(ref) == before[ref], ref  # same manifest, no new version
        assert _logged(log, stage, "cached"), log
    for stage in ("mine", "finetune", "evaluate"):
        assert _logged(log, stage, "built"), log
    report = store.manifest(store.resolve("report/tiny"))
    assert report.metrics["queries"] > 0

    # OpenLineage saw the same story: mine FAILED on queries/tiny, then COMPLETED; pretrain ran once
    events = [json.loads(x) for x in (stack["base"] / "openlineage.jsonl").read_text().splitlines()]
    from tests.support.openlineage import validate_event

    for event in events:
        validate_event(event)
    states = [(e["job"]["name"], e["eventType"]) for e in events]
    assert states.count(("mine", "FAIL")) == 1 and states.count(("mine", "COMPLETE")) == 1
    assert states.count(("pretrain", "START")) == 1
    fail = next(e for e in events if e["eventType"] == "FAIL")
    assert [i["name"] for i in fail["inputs"]] == ["queries/tiny"]

    # Prefect asset materialization events, one per built artifact, with its parents upstream
    from m3.publish import asset_key

    wanted = {asset_key(str(store_dir), kind, "tiny") for kind in ("report", "corpus")}

    def materialized() -> set[str] | None:  # events reach the server's store a little later: poll
        found = _api(
            stack,
            "POST",
            "/events/filter",
            {"filter": {"event": {"prefix": ["prefect.asset.materialization"]}}, "limit": 50},
        )
        ids = {e["resource"]["prefect.resource.id"] for e in found["events"]}
        return ids if wanted <= ids else None

    _wait(materialized, 60, f"asset materialization events of {sorted(wanted)}", every=1)

    # the lineage page on this real run: every artifact, with links to its Prefect runs
    _lineage_page_on_real_run(store, stack)


def _lineage_page_on_real_run(store: Store, stack) -> None:
    from playwright.sync_api import expect, sync_playwright

    from m3.app.ui.server import make_server
    from tests.support.browser import ARTIFACTS, launch_browser

    server = make_server(store, port=0, prefect=(stack["api"], stack["env"]["PREFECT_UI_URL"]))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        with sync_playwright() as p:
            browser = launch_browser(p)
            page = browser.new_page(viewport={"width": 1920, "height": 1000})
            page.goto(url)
            expect(page.locator("body[data-ready='1']")).to_have_count(1)
            drawn = set(page.locator("#graph g.node").evaluate_all("els => els.map(e => e.dataset.id)"))
            assert {e.manifest for e in store.refs()} <= drawn  # every ref's artifact (aliases too)
            page.locator("#graph g.node[data-label='report/tiny']").click()
            expect(page.locator("#manifest-id")).to_have_text(store.resolve("report/tiny"))
            assert set(page.locator("#parents button").all_inner_texts()) == {"model/tiny", "queries/tiny"}
            expect(page.locator("#flow-run-link")).to_have_attribute(
                "href", re.compile(r"/runs/flow-run/[0-9a-f-]{36}$")
            )
            expect(page.locator("#details .state-COMPLETED")).to_have_count(1)
            expect(page.locator("#details img")).to_have_count(1)
            ARTIFACTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "lineage-ui-tiny-run.png"), full_page=True)
            browser.close()
    finally:
        server.shutdown()
        server.server_close()
