"""ingest: raw source files → the ``corpus`` artifact, one Dask task per file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import flow, get_run_logger, task

from flows.common import StageEnv, dask_runner, open_env, producer_ids, publish
from m3.profile import SourceSpec
from m3.stage import StageOutput, StageSpec, run_stage
from m3.store import Store
from tasks.artifact_io import schema_dict, write_jsonl, write_table
from tasks.ingest import IngestConfig, ingest_file

CODE = ("tasks/ingest", "tasks/artifact_io.py", "flows/ingest.py", "data_specs/schemas.yaml")


def register_source(env: StageEnv, source: SourceSpec, refresh: bool) -> str:
    """The raw files of a source as a ``source`` artifact: the root of every lineage chain.

    The cache key is each file's path, size and mtime, so an unchanged dump is not re-hashed.
    """
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
        code=("flows/ingest.py",),
    )

    def build(_: Path) -> StageOutput:
        files = dict(zip(names, paths, strict=True))
        return StageOutput(
            files=files,
            metrics={"files": len(paths), "bytes": sum(p.stat().st_size for p in paths)},
            schema={"format": source.format, "origin": {n: str(p) for n, p in files.items()}},
        )

    return run_stage(env.store, spec, build, refresh=refresh, flow="ingest", **producer_ids()).manifest_id


@task(name="ingest-file", retries=1, retry_delay_seconds=2)
def ingest_file_task(
    store_url: str, source_id: str, rel: str, source: dict[str, Any], config: dict, out: str
) -> dict[str, Any]:
    """Parse one raw file into a corpus shard in the scratch folder; return its books."""
    folder = Store(store_url).materialize(source_id)
    result = ingest_file(
        str(folder / rel), source["format"], source["name"], source["lang"], IngestConfig(**config)
    )
    shard = Path(out)
    pd.DataFrame(result.records).to_pickle(shard)
    return {"source": source["name"], "file": rel, "stats": result.stats, "quarantine": result.quarantine}


@flow(name="ingest-files")
def ingest_files(jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    futures = [ingest_file_task.submit(**job) for job in jobs]
    return [f.result() for f in futures]


def _merge(env: StageEnv, jobs: list[dict], books: list[dict], scratch: Path) -> StageOutput:
    log = get_run_logger()
    frames = [pd.read_pickle(job["out"]) for job in jobs]
    docs = (
        pd.concat([f for f in frames if len(f)], ignore_index=True) if any(len(f) for f in frames) else None
    )
    totals: dict[str, int] = {}
    for b in books:
        for k, v in b["stats"].items():
            totals[k] = totals.get(k, 0) + v
        log.info("%s/%s: %s", b["source"], b["file"], b["stats"])
    if docs is None:
        raise RuntimeError("ingest: no document survived reading and filtering; check the sources")
    before = len(docs)
    docs = docs.drop_duplicates("id", keep="first")
    totals["duplicates:exact_id"] = before - len(docs)
    if env.profile.languages:
        keep = docs["lang"].isin(env.profile.languages)
        totals["filtered:language"] = int((~keep).sum())
        docs = docs[keep]
    totals["corpus_docs"] = len(docs)
    docs = docs.sort_values(["lang", "id"], kind="stable").reset_index(drop=True)
    rows = write_table(docs, "corpus", scratch / "out")
    files = {rel: scratch / "out" / rel for rel in rows}
    quarantine = [dict(q, source=b["source"], file=b["file"]) for b in books for q in b["quarantine"]]
    write_jsonl(quarantine, scratch / "quarantine.jsonl")
    (scratch / "stats.json").write_text(json.dumps({"totals": totals, "files": books}, indent=2, default=str))
    files["quarantine.jsonl"] = scratch / "quarantine.jsonl"
    files["stats.json"] = scratch / "stats.json"
    per_lang = docs.groupby("lang").size().to_dict()
    metrics = {"docs": len(docs), "docs_per_lang": per_lang, "chars": int(docs["n_chars"].sum()), **totals}
    return StageOutput(files=files, metrics=metrics, schema=schema_dict("corpus"), rows=rows)


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
        code=CODE,
    )

    def build(scratch: Path) -> StageOutput:
        jobs = []
        for name, (source, mid) in sources.items():
            for entry in env.store.manifest(mid).files:
                jobs.append(
                    {
                        "store_url": env.store.url,
                        "source_id": mid,
                        "rel": entry.path,
                        "source": {"name": name, "format": source.format, "lang": source.lang},
                        "config": env.profile.ingest.model_dump(mode="json"),
                        "out": str(scratch / f"shard-{len(jobs):05d}.pkl"),
                    }
                )
        log.info("ingesting %d files from %d sources on Dask", len(jobs), len(sources))
        books = ingest_files.with_options(task_runner=dask_runner(env.profile.dask))(jobs)
        return _merge(env, jobs, books, scratch)

    result = run_stage(env.store, spec, build, refresh=refresh, flow="ingest", **producer_ids())
    log.info("corpus %s: %s", "reused" if result.cached else "built", result.manifest_id)
    return publish(env, result)
