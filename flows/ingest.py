"""ingest: raw source files → the ``corpus`` artifact on Dask.

One task per input file (read, clean, filter, sign), one per LSH band (bucket), a tree of merges
(the duplicate-cluster graph across all partitions), one per shard (write without duplicates).
The books (``stats.json``: per source, language and source x language, with
``read = kept + filtered + duplicates + quarantined``) and the quarantine (``quarantine.jsonl``:
file, location, reason) are files of the same ``corpus`` artifact, so they can never describe a
different version of the data than the one they sit next to.
"""

from __future__ import annotations

import functools
import shutil
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pyarrow.compute as pc
import pyarrow.parquet as pq
from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows.common import TRANSIENT_RETRIES, StageEnv, dask_runner, flow_result, open_env
from m3.profile import SourceSpec
from m3.stage import StageOutput, StageSpec, declare
from m3.store import Store
from tasks.artifact_io import schema_dict
from tasks.ingest import IngestConfig
from tasks.ingest.shards import FileJob, ingest_to_shard, run_ingest, write_books
from tasks.ingest.sources import fetch_source


def register_source(env: StageEnv, source: SourceSpec, refresh: bool) -> str:
    """The raw files of a source as a ``source`` artifact: the root of every lineage chain.

    The cache key is each file's path, size and mtime, so an unchanged dump is not re-hashed.
    """
    if source.online is not None:
        # Online: resumable, checksum-verified downloads into the store's cache; the files then
        # become content-addressed blobs of the source artifact like local ones.
        folder = env.store.cache_dir / "downloads" / f"{env.profile.name}.{source.name}"
        fetched = fetch_source(source.online, folder)
        paths = sorted(res.path for _, res in fetched)
    else:
        paths = env.profile.source_files(source)
    stamp = [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in paths]
    names = [p.name for p in paths]
    if len(set(names)) != len(names):
        names = [f"{i:04d}-{p.name}" for i, p in enumerate(paths)]
    spec = StageSpec(
        "register-source",
        "source",
        f"{env.profile.name}.{source.name}",
        inputs={},
        config={"files": stamp, "format": source.format, "lang": source.lang},
        code=(__file__,),
    )

    def build(_: Path) -> StageOutput:
        files = dict(zip(names, paths, strict=True))
        return StageOutput(
            files=files,
            metrics={"files": len(paths), "bytes": sum(p.stat().st_size for p in paths)},
            schema={"format": source.format, "origin": {n: str(p) for n, p in files.items()}},
        )

    return env.run(spec, build, refresh=refresh).manifest_id


def stored_file_to_shard(
    store_url: str, job: FileJob, config: IngestConfig, languages: list[str] | None
) -> dict[str, Any]:
    """Worker side of one file: fetch the source artifact (``job.path`` is ``<manifest id>/<file>``)."""
    source_id, rel = job.path.split("/", 1)
    folder = Store(store_url).materialize(source_id)
    return ingest_to_shard(replace(job, path=str(folder / rel)), config, languages)


@task(name="ingest-step", cache_policy=NO_CACHE, **TRANSIENT_RETRIES)
def ingest_step(fn: Callable[..., Any], args: list[Any]) -> Any:
    """One step of :func:`tasks.ingest.shards.run_ingest` (read a file, bucket a band, merge, write)."""
    return fn(*args)


def _prefect_submit(fn: Callable[..., Any], *args: Any) -> Any:
    name = getattr(fn, "__name__", None) or getattr(getattr(fn, "func", None), "__name__", "step")
    return ingest_step.with_options(task_run_name=name.replace("_", "-")).submit(fn, list(args))


@flow(name="ingest-files")
def ingest_files(
    store_url: str, jobs: list[FileJob], config: IngestConfig, out_dir: str, languages: list[str] | None
) -> dict[str, Any]:
    """Read, deduplicate and write on Dask: one task per file, per LSH band, per merge, per shard."""
    return run_ingest(
        jobs,
        config,
        out_dir,
        _prefect_submit,
        languages,
        file_step=functools.partial(stored_file_to_shard, store_url),
    )


def _merge(env: StageEnv, result: dict[str, Any], scratch: Path) -> StageOutput:
    log = get_run_logger()
    stats = result["stats"]
    for f in stats["files"]:
        log.info("%s/%s: %s", f["source"], f["file"], f["stats"])
    totals = stats["totals"]
    if not totals["kept"]:
        raise RuntimeError("ingest: no document survived reading and filtering; check the sources")
    out = scratch / "out"
    files: dict[str, Path] = {rel: out / rel for rel in result["rows"]}
    files.update(write_books(result, scratch))
    per_lang = {lang: books["kept"] for lang, books in stats["by_lang"].items() if books["kept"]}
    chars = 0
    for rel in result["rows"]:
        chars += int(pc.sum(pq.read_table(out / rel, columns=["n_chars"]).column("n_chars")).as_py() or 0)
    metrics = {
        "docs": totals["kept"],
        "docs_per_lang": per_lang,
        "chars": chars,
        "identity": stats["identity"],
        "dedup": stats["dedup"],
        **totals,
    }
    return StageOutput(files=files, metrics=metrics, schema=schema_dict("corpus"), rows=result["rows"])


@declare("corpus", sections=("sources", "ingest"))
@flow(name="ingest")
def ingest(
    profile: str = "demo",
    store: str | None = None,
    refresh: bool = False,
    inputs: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Read every source of the profile into one cleaned, partitioned ``corpus`` artifact.

    ``inputs`` is accepted for symmetry with the other stages; ingest's inputs are the profile's files.
    """
    env = open_env(profile, store)
    log = get_run_logger()
    sources = {s.name: (s, register_source(env, s, refresh)) for s in env.profile.sources}
    spec = StageSpec(
        "ingest",
        "corpus",
        env.profile.name,
        inputs={f"source:{name}": mid for name, (_, mid) in sources.items()},
        config={
            "ingest": env.profile.ingest.model_dump(mode="json"),
            "sources": [s.model_dump(mode="json", exclude={"paths"}) for s, _ in sources.values()],
            "languages": env.profile.languages,
        },
        code=(__file__,),
    )

    def build(scratch: Path) -> StageOutput:
        jobs = []
        for name, (source, mid) in sources.items():
            for entry in env.store.manifest(mid).files:
                jobs.append(
                    FileJob(
                        path=f"{mid}/{entry.path}",
                        fmt=source.format,
                        source=name,
                        lang=source.lang,
                        rel=entry.path,
                        out=str(scratch / "shards" / f"shard-{len(jobs):05d}"),
                        bytes=entry.bytes,
                    )
                )
        log.info("ingesting %d files from %d sources on Dask", len(jobs), len(sources))
        cfg = env.profile.ingest
        dask = env.profile.dask
        if cfg.dask_scheduler:
            dask = dask.model_copy(update={"address": cfg.dask_scheduler})
        result = ingest_files.with_options(task_runner=dask_runner(dask))(
            env.store.url, jobs, cfg, str(scratch / "out"), env.profile.languages
        )
        shutil.rmtree(scratch / "shards", ignore_errors=True)
        return _merge(env, result, scratch)

    result = env.run(spec, build, refresh=refresh)
    log.info("corpus %s: %s", "reused" if result.cached else "built", result.manifest_id)
    return flow_result(result)
