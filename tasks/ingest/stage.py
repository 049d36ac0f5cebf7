"""The ``ingest`` stage: the profile's raw source files → one cleaned, partitioned ``corpus``.

Each source is first registered as a ``source`` artifact (the root of every lineage chain); the
corpus build then hands one job per stored file to ``run_files`` (the flow's Dask subflow, which
runs :func:`tasks.ingest.shards.run_ingest`). The books (``stats.json``: per source, language and
source x language, with ``read = kept + filtered + duplicates + quarantined``) and the quarantine
(``quarantine.jsonl``: file, location, reason) are files of the same ``corpus`` artifact, so they
never describe another version of the data than the one they sit next to.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import pyarrow.compute as pc
import pyarrow.parquet as pq

from m3.app.profile import SourceSpec
from m3.artifact_io import schema_dict
from m3.stage import StageOutput, StageResult, StageSpec
from m3.stage_env import StageEnv, run_logger
from m3.store import Store
from tasks.ingest import Format, IngestConfig
from tasks.ingest.handoff import StoreHandoff
from tasks.ingest.shards import FileJob, ingest_to_shard, write_books
from tasks.ingest.sources import fetch_source

# (jobs, out_dir, handoff) -> run_ingest's result: the flow runs the files on its Dask runner.
RunFiles = Callable[[list[FileJob], str, StoreHandoff], dict[str, Any]]


def register_source(env: StageEnv, source: SourceSpec, refresh: bool) -> str:
    """The raw files of a source as a ``source`` artifact, keyed by their bytes
    (``StageEnv.register_files``)."""
    if source.online is not None:
        # Online: resumable, checksum-verified downloads into the store's cache; the files then
        # become content-addressed blobs of the source artifact like local ones.
        folder = env.store.cache_dir / "downloads" / f"{env.profile.name}.{source.name}"
        paths = sorted(res.path for _, res in fetch_source(source.online, folder))
    else:
        paths = env.profile.source_files(source)
    names = [p.name for p in paths]
    if len(set(names)) != len(names):
        names = [f"{i:04d}-{p.name}" for i, p in enumerate(paths)]
    return env.register_files(
        "register-source",
        "source",
        f"{env.profile.name}.{source.name}",
        dict(zip(names, paths, strict=True)),
        {"format": source.format, "lang": source.lang},
        __file__,
        refresh=refresh,
    )


def stored_file_to_shard(
    handoff: StoreHandoff, job: FileJob, config: IngestConfig, languages: list[str] | None
) -> dict[str, Any]:
    """Worker side of one file: fetch the source artifact (``job.path`` is ``<manifest id>/<file>``),
    write its shard in this worker's own scratch and hand the shard and its signatures on through the
    store (``parquet`` and ``sig`` become handles): nothing is left on the worker for a later step."""
    source_id, rel = job.path.split("/", 1)
    folder = Store(handoff.store_url).materialize(source_id)
    work = handoff.work_dir(job.out)
    try:
        books = ingest_to_shard(
            replace(job, path=str(folder / rel), out=str(work / "shard")), config, languages
        )
        parents = [source_id]
        books["parquet"] = handoff.publish("ingest-shard", work, ["shard.parquet"], parents)["shard.parquet"]
        books["sig"] = handoff.publish("ingest-signatures", work, ["shard.sig"], parents)["shard.sig"]
    finally:
        handoff.done(work)
    return books


def corpus_output(result: dict[str, Any], scratch: Path) -> StageOutput:
    """The corpus artifact from ``run_ingest``'s result: shards, books and quarantine, metrics."""
    log = run_logger(__name__)
    stats = result["stats"]
    for f in stats["files"]:
        log.info("%s/%s: %s", f["source"], f["file"], f["stats"])
    totals = stats["totals"]
    if not totals["kept"]:
        raise RuntimeError("ingest: no document survived reading and filtering; check the sources")
    files: dict[str, Path] = {rel: Path(local) for rel, local in result["files"].items()}
    files.update(write_books(result, scratch))
    per_lang = {lang: books["kept"] for lang, books in stats["by_lang"].items() if books["kept"]}
    chars = 0
    for rel in result["rows"]:
        chars += int(pc.sum(pq.read_table(files[rel], columns=["n_chars"]).column("n_chars")).as_py() or 0)
    metrics = {
        "docs": totals["kept"],
        "docs_per_lang": per_lang,
        "chars": chars,
        "identity": stats["identity"],
        "dedup": stats["dedup"],
        **totals,
    }
    return StageOutput(files=files, metrics=metrics, schema=schema_dict("corpus"), rows=result["rows"])


def build_corpus(env: StageEnv, refresh: bool, run_files: RunFiles) -> StageResult:
    """Register every source, then read, deduplicate and write them into ``corpus/<profile>``."""
    log = run_logger(__name__)
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
        jobs: list[FileJob] = []
        for name, (source, mid) in sources.items():
            for entry in env.store.manifest(mid).files:
                jobs.append(
                    FileJob(
                        path=f"{mid}/{entry.path}",
                        fmt=cast(Format, source.format),  # SourceSpec sets it when it loads
                        source=name,
                        lang=source.lang,
                        rel=entry.path,
                        out=str(scratch / "shards" / f"shard-{len(jobs):05d}"),
                        bytes=entry.bytes,
                    )
                )
        log.info("ingesting %d files from %d sources on Dask", len(jobs), len(sources))
        # The steps hand their files on through the store (workers may share nothing else with this
        # process); the lease keeps gc off those intermediate artifacts until the corpus commits.
        with env.store.lease(
            f"ingest {spec.ref}: shards being written", manifests=spec.inputs.values()
        ) as lease:
            result = run_files(
                jobs, str(scratch / "out"), StoreHandoff(env.store.url, lease.id, env.profile.name)
            )
        return corpus_output(result, scratch)

    result = env.run(spec, build, refresh=refresh)
    log.info("corpus %s: %s", "reused" if result.cached else "built", result.manifest_id)
    return result
