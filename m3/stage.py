"""Running one stage against the store: cache key, build in a scratch folder, commit, ref.

A stage's output key is a hash of its input manifest ids, its config and its code version
(docs/architecture.md, "Stage cache"). If the store already holds an artifact for that key the stage is
not run again; this is what makes a rerun cheap and a retry resume at the failed stage.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from m3 import lifecycle, openlineage
from m3.codekey import code_digest
from m3.provenance import git_state, package_versions
from m3.store.errors import ManifestMissing, NotFound
from m3.store.manifest import Manifest, Producer, canonical_json, hash_config
from m3.store.store import Store

log = logging.getLogger(__name__)


@dataclass
class StageOutput:
    """What a stage's build function leaves behind in its scratch folder."""

    files: dict[str, Path]
    metrics: dict[str, Any] = field(default_factory=dict)
    schema: dict[str, Any] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)


class StageFailed(RuntimeError):
    """A stage's build raised: the message names the stage, the artifact it was making and its inputs.

    The original exception is the ``__cause__`` (and ``cause_type``), so a retry policy can still
    tell bad data from a flaky network (see :func:`classify_failure`).
    """

    def __init__(
        self,
        message: str,
        *,
        stage: str = "",
        ref: str = "",
        inputs: Mapping[str, str] | None = None,
        input_refs: Mapping[str, str] | None = None,
        cause_type: str = "",
    ):
        super().__init__(message)
        self.stage, self.ref, self.cause_type = stage, ref, cause_type
        self.inputs = dict(inputs or {})
        self.input_refs = dict(input_refs or {})

    def __reduce__(self):  # keyword-only fields survive pickling (Prefect, Dask)
        return (
            _rebuild_stage_failed,
            (str(self), self.stage, self.ref, self.inputs, self.input_refs, self.cause_type),
        )


def _rebuild_stage_failed(message, stage, ref, inputs, input_refs, cause_type) -> StageFailed:
    return StageFailed(
        message, stage=stage, ref=ref, inputs=inputs, input_refs=input_refs, cause_type=cause_type
    )


# Exception names (any module) that mean "the machine ran out of memory": retrying on the same
# worker shape only fails again, so these are never retried automatically.
_OOM_NAMES = {"MemoryError", "OutOfMemoryError", "KilledWorker"}
# Transient: the network, a throttled object store, a busy lock. Worth a retry with backoff.
_TRANSIENT_NAMES = {
    "ConnectionError",
    "TimeoutError",
    "RefConflict",
    "EndpointConnectionError",
    "ConnectTimeoutError",
    "ReadTimeoutError",
    "ConnectionClosedError",
    "ClientConnectorError",
    "ServerDisconnectedError",
    "ClientOSError",
    "ClientPayloadError",
    "TransportError",
    "CommClosedError",
    "IncompleteReadError",
}
_TRANSIENT_S3_CODES = {
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "RequestTimeout",
    "RequestTimeTooSkewed",
    "InternalError",
    "ServiceUnavailable",
    "503",
    "500",
}
_TRANSIENT_ERRNOS = {4, 11, 16, 104, 110, 111, 113, 101, 32}  # EINTR EAGAIN EBUSY ECONNRESET ETIMEDOUT …
# A parent manifest or blob gone from the store (removed by gc, or by hand) while the stage ran: the
# stage is run once more from its start (``run_stage``), which makes its own intermediates again.
_LOST_NAMES = {"ParentMissing", "MissingBlob", "ManifestMissing"}
# Bad data: decoding, parsing, schema. The same input fails the same way on every attempt.
# bad bytes fail the same way again: a corrupt blob or a damaged store file is data, never retried
_DATA_NAMES = {
    "EOFError",
    "BadGzipFile",
    "LZMAError",
    "error",
    "ArrowException",
    "ParseError",
    "ParserError",
    "CorruptBlob",
    "DamagedFile",
}


def _chain(exc: BaseException | None) -> Iterator[BaseException]:
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)


def _s3_code(exc: BaseException) -> str:
    """botocore's ClientError keeps the S3 error code in ``response["Error"]["Code"]``."""
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", ""))
    return ""


def classify_failure(exc: BaseException) -> str:
    """``"transient"``, ``"oom"``, ``"lost"``, ``"data"`` or ``"error"`` for an exception (its cause
    chain too; ``cause_type`` where a failure crossed a process without its cause).

    ``transient`` is worth a task retry, ``lost`` (a parent removed from the store meanwhile) one
    rerun of the stage (:func:`run_stage`): bad data and out-of-memory fail again the same way, and
    any other error (a bug) needs a person.
    """
    for e in _chain(exc):
        names = {c.__name__ for c in type(e).__mro__}
        if names & _OOM_NAMES or (isinstance(e, RuntimeError) and "out of memory" in str(e).lower()):
            return "oom"
        if getattr(e, "cause_type", None) in _OOM_NAMES:
            return "oom"
    for e in _chain(exc):
        if {c.__name__ for c in type(e).__mro__} & _LOST_NAMES or getattr(
            e, "cause_type", None
        ) in _LOST_NAMES:
            return "lost"
    for e in _chain(exc):
        names = {c.__name__ for c in type(e).__mro__}
        if names & _TRANSIENT_NAMES or _s3_code(e) in _TRANSIENT_S3_CODES:
            return "transient"
        permanent = isinstance(e, FileNotFoundError | PermissionError)
        if isinstance(e, OSError) and not permanent and e.errno in _TRANSIENT_ERRNOS:
            return "transient"
        if names & _DATA_NAMES or isinstance(e, ValueError | UnicodeError | KeyError):
            return "data"
    return "error"


@dataclass(frozen=True)
class StageResult:
    stage: str
    kind: str
    ref: str
    manifest_id: str
    cached: bool


@dataclass(frozen=True)
class Stage:
    """One pipeline stage, declared once, next to the flow that makes its data (``@declare``).

    ``needs`` are the artifact kinds it cannot run without and ``reads`` those it uses when the
    run has them (a checkpoint teacher for mining); both order the pipeline (:func:`pipeline_order`)
    and say what the pipeline hands the stage. ``sections`` are the profile sections it is configured
    by. The stage's deployments, ``--from``/``--only`` checks and docs all derive from this.
    """

    name: str
    kind: str
    needs: tuple[str, ...] = ()
    reads: tuple[str, ...] = ()
    sections: tuple[str, ...] = ()
    flow: Any = None

    @property
    def inputs(self) -> tuple[str, ...]:
        return (*self.needs, *self.reads)


def declare(kind: str, *, needs=(), reads=(), sections=()):
    """Decorator for a stage's Prefect flow: attaches its :class:`Stage` as ``flow.stage``."""

    def wrap(flow_fn):
        flow_fn.stage = Stage(flow_fn.name, kind, tuple(needs), tuple(reads), tuple(sections), flow_fn)
        return flow_fn

    return wrap


def pipeline_order(flows) -> tuple[Stage, ...]:
    """The declared stages in an order where every stage comes after the stages making its inputs.

    Ties keep the order given. A kind made twice or an input no stage makes is a declaration error.
    """
    stages = [f.stage for f in flows]
    makers: dict[str, str] = {}
    for st in stages:
        if st.kind in makers:
            raise ValueError(f"stages {makers[st.kind]} and {st.name} both make {st.kind!r}")
        makers[st.kind] = st.name
    for st in stages:
        for kind in st.inputs:
            if kind not in makers:
                raise ValueError(f"stage {st.name} reads {kind!r}, which no stage makes")
    ordered: list[Stage] = []
    pending = list(stages)
    while pending:
        ready = [st for st in pending if all(makers[k] in {o.name for o in ordered} for k in st.inputs)]
        if not ready:
            raise ValueError(f"the stages {', '.join(s.name for s in pending)} depend on each other")
        ordered.append(ready[0])
        pending.remove(ready[0])
    return tuple(ordered)


@dataclass(frozen=True)
class StageSpec:
    """The identity of one stage output: what it reads, how it is configured, which code.

    ``code`` names the module(s) whose import closure is the stage's code (``m3.codekey``): the
    module that defines the build function, ``__file__`` where the spec is written (a dotted name
    works too, but a deployment loads a flow file under another ``__name__``).
    """

    stage: str
    kind: str
    name: str
    inputs: Mapping[str, str]
    config: Mapping[str, Any]
    code: tuple[str, ...]

    @property
    def ref(self) -> str:
        return f"{self.kind}/{self.name}"

    def key(self) -> str:
        body = {
            "stage": self.stage,
            "kind": self.kind,
            "inputs": dict(sorted(self.inputs.items())),
            "config": hash_config(self.config),
            "code": code_digest(*self.code),
        }
        return hashlib.sha256(canonical_json(body)).hexdigest()[:32]


def lookup(store: Store, spec: StageSpec) -> str | None:
    return store.cache_lookup(spec.stage, spec.key())


def run_stage(
    store: Store,
    spec: StageSpec,
    build: Callable[[Path], StageOutput],
    *,
    refresh: bool = False,
    flow: str = "",
    flow_run_id: str | None = None,
    task_run_id: str | None = None,
) -> StageResult:
    """Return the cached artifact for ``spec`` or build, commit and cache a new one.

    A build or commit that fails because a parent went from the store meanwhile (``lost``: removed
    by gc?) runs once more from its start, in a fresh scratch folder, if the stage's own inputs are
    still there (the lost parent was one of its intermediates, which the rerun makes again)."""
    key = spec.key()
    if not refresh:
        cached = store.cache_lookup(spec.stage, key)
        if cached:
            try:
                store.set_ref(spec.ref, cached)
                return StageResult(spec.stage, spec.kind, spec.ref, cached, cached=True)
            except ManifestMissing:  # collected between the lookup and the ref: make it again
                log.warning(
                    "stage %s: cached %s went from the store meanwhile; building it", spec.stage, cached
                )
    commit, dirty = git_state()
    producer = Producer(
        stage=spec.stage,
        flow=flow,
        flow_run_id=flow_run_id,
        task_run_id=task_run_id,
        git_commit=commit,
        git_dirty=dirty,
        code_version=code_digest(*spec.code),
        packages=package_versions(),
        config=dict(spec.config),
        config_hash=hash_config(spec.config),
    )
    lineage = openlineage.stage_run(store, spec, flow=flow, flow_run_id=flow_run_id)
    lineage.start()
    for attempt in (1, 2):
        try:
            manifest = _build_and_commit(store, spec, build, producer)
            break
        except Exception as exc:
            kind = classify_failure(exc)
            if attempt == 1 and kind == "lost" and _inputs_present(store, spec):
                log.warning(
                    "%s — a parent went from the store (gc?): running the stage again from its start", exc
                )
                continue
            if isinstance(exc, StageFailed):
                log.error("%s", exc)
            lineage.fail(exc)
            raise
    store.cache_record(spec.stage, key, manifest.id)
    lineage.complete(manifest)
    return StageResult(spec.stage, spec.kind, spec.ref, manifest.id, cached=False)


def _build_and_commit(
    store: Store, spec: StageSpec, build: Callable[[Path], StageOutput], producer: Producer
) -> Manifest:
    """One attempt: build in a fresh scratch folder (gone with the run), then commit. A build error
    comes back as a :class:`StageFailed`; the commit's own errors (store unavailable, ref conflict,
    a parent gone) as they are."""
    scratch = Path(tempfile.mkdtemp(prefix=f"m3-{spec.stage}-", dir=lifecycle.run_dir()))
    try:
        try:
            out = build(scratch)
        except Exception as exc:
            raise _stage_failed(store, spec, exc) from exc
        return store.commit(
            spec.kind,
            spec.name,
            out.files,
            parents=list(spec.inputs.values()),
            producer=producer,
            metrics=out.metrics,
            schema=out.schema,
            rows=out.rows,
            ref=spec.ref,
        )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _inputs_present(store: Store, spec: StageSpec) -> bool:
    """Whether every input manifest of the stage is still stored (without them a rerun fails again)."""
    try:
        return all(store.backend.exists(f"manifests/{mid}.json") for mid in spec.inputs.values())
    except Exception:
        return False


def _stage_failed(store: Store, spec: StageSpec, exc: Exception) -> StageFailed:
    """A StageFailed whose message says what was being built, from which inputs, and what broke."""
    if isinstance(exc, StageFailed):
        return exc
    input_refs: dict[str, str] = {}
    for key, mid in spec.inputs.items():
        try:
            m = store.manifest(mid)
            input_refs[key] = f"{m.kind}/{m.name}"
        except NotFound:  # gone since the stage started: the likely cause, named
            input_refs[key] = "? (no longer in the store: removed by gc?)"
        except Exception:  # the input itself may be what is broken
            input_refs[key] = "?"
    inputs = ", ".join(f"{k}={input_refs[k]} ({mid[:12]})" for k, mid in sorted(spec.inputs.items()))
    kind = classify_failure(exc)
    message = (
        f"stage {spec.stage} failed making {spec.ref} from {inputs or 'no input artifacts'}"
        f" [{kind}]: {type(exc).__name__}: {exc}"
    )
    return StageFailed(
        message,
        stage=spec.stage,
        ref=spec.ref,
        inputs=spec.inputs,
        input_refs=input_refs,
        cause_type=type(exc).__name__,
    )
