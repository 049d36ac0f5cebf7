"""The ingest stage as plain, scheduler-agnostic steps: file -> shard -> dedup -> corpus + books.

Each input file is one partition. :func:`ingest_to_shard` streams its kept records into a Parquet
shard (row groups of ``batch_rows``) and their dedup signatures into a ``.sig`` file, so a worker's
memory is bounded by one batch, never by the file. The dedup reduce (:mod:`.dedup`) only reads
signatures; :func:`finalize_shard` then rewrites each shard without its duplicates, partitioned by
language. :func:`run_ingest` wires the steps through any ``submit(fn, *args) -> future`` (a Dask
client's ``submit`` or a Prefect task's), so the same code runs on 1 worker, 2 or a cluster, and
gives the same result on each; the files between steps go through a :mod:`.handoff` (shared folder,
or the store for workers on other machines).

Accounting, per source and language: ``read = kept + filtered:* + duplicates:* + quarantined``
(``quarantined:<reason>`` breaks the quarantined total down). Quarantine entries name a file by
its name inside the source artifact, never by where a worker happened to read it.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from . import Books, IngestConfig, InputFile, iter_ingest
from .dedup import COL_ID, Forest, Signer, bucket_edges, classify, merge_forests, non_roots, reduce_plan
from .failures import file_failure
from .handoff import Handoff, SharedFolder
from .quality import is_unspaced

logger = logging.getLogger(__name__)

IDENTITY = "read = kept + filtered + duplicates + quarantined"


def _corpus_schema() -> pa.Schema:
    from m3.artifact_io import arrow_schema

    return arrow_schema("corpus")


@dataclass(frozen=True)
class FileJob(InputFile):
    """One input file of one source as the stage schedules it (the unit of parallelism)."""

    path: str  # ``<manifest id>/<file>`` until the worker has fetched it (tasks.ingest.stage)
    rel: str  # the file's name inside its source artifact (for the books)
    out: str  # shard path prefix (``.parquet`` and ``.sig`` are appended)
    bytes: int = 0  # input size: the work estimate run_ingest orders the files by


def ingest_to_shard(job: FileJob, config: IngestConfig, languages: list[str] | None = None) -> dict[str, Any]:
    """Stream one file into ``<out>.parquet`` + ``<out>.sig``; return its books. A failure is
    raised as a :class:`~tasks.ingest.failures.FileFailed` naming the file (it crosses Dask)."""
    schema = _corpus_schema()
    signer = Signer(config.dedup)
    books = Books()
    quarantine: list[dict] = []
    batch: list[dict] = []
    rows = 0
    parquet, sig_path = Path(job.out + ".parquet"), Path(job.out + ".sig")
    parquet.parent.mkdir(parents=True, exist_ok=True)

    def flush(writer: pq.ParquetWriter, sig_fh) -> None:
        nonlocal rows
        if not batch:
            return
        table = pa.Table.from_pylist(batch, schema=schema)
        writer.write_table(table)
        sig = np.stack([signer.row(r["text"], r["id"], is_unspaced(r["text"], r["lang"])) for r in batch])
        sig_fh.write(sig.astype(np.uint64).tobytes())
        rows += len(batch)
        batch.clear()

    try:
        with pq.ParquetWriter(parquet, schema, compression="zstd") as writer, sig_path.open("wb") as sig_fh:
            for rec in iter_ingest(job, config, books, quarantine, languages, name=job.rel):
                batch.append(rec)
                if len(batch) >= config.batch_rows:
                    flush(writer, sig_fh)
            flush(writer, sig_fh)
    except Exception as exc:  # whatever it was, it leaves this worker naming the file
        raise file_failure(exc, job.source, job.rel) from exc
    stats = books.totals()
    logger.info("%s/%s: %s", job.source, job.rel, stats)
    return {
        "source": job.source,
        "file": job.rel,
        "stats": stats,
        "by_lang": books.per_lang(),
        "quarantine": [dict(q, source=job.source) for q in quarantine],  # "file" is job.rel
        "rows": rows,
        "parquet": str(parquet),
        "sig": str(sig_path),
        "sig_width": signer.width,
    }


def finalize_shard(
    shard_no: int, parquet: str, drops: list[tuple[int, str]], out_dir: str, batch_rows: int = 2000
) -> dict[str, Any]:
    """Copy a shard without its duplicate rows into ``out_dir/lang=XX/part-<shard>.parquet``.

    Returns {"rows": {artifact path: rows}, "duplicates": {lang: {"duplicates:<reason>": n}}}.
    """
    schema = _corpus_schema()
    drop = dict(drops)
    writers: dict[str, pq.ParquetWriter] = {}
    written: Counter[str] = Counter()
    dups: dict[str, Counter[str]] = {}
    offset = 0
    try:
        pf = pq.ParquetFile(parquet)
        for rb in pf.iter_batches(batch_size=batch_rows):
            table = pa.Table.from_batches([rb], schema=schema)
            idx = np.arange(offset, offset + len(table))
            offset += len(table)
            langs = table.column("lang").to_pylist()
            keep = np.ones(len(table), dtype=bool)
            for i, row in enumerate(idx.tolist()):
                if row in drop:
                    keep[i] = False
                    dups.setdefault(langs[i], Counter())[f"duplicates:{drop[row]}"] += 1
            table = table.filter(pa.array(keep))
            if not len(table):
                continue
            for lang in sorted(set(table.column("lang").to_pylist())):
                part = table.filter(pc.equal(table.column("lang"), lang))
                rel = f"lang={lang}/part-{shard_no:05d}.parquet"
                if rel not in writers:
                    path = Path(out_dir) / rel
                    path.parent.mkdir(parents=True, exist_ok=True)
                    writers[rel] = pq.ParquetWriter(path, schema, compression="zstd")
                writers[rel].write_table(part)
                written[rel] += len(part)
    finally:
        for w in writers.values():
            w.close()
    return {"rows": dict(written), "duplicates": {k: dict(v) for k, v in dups.items()}}


def finalize_shards(
    shards: list[tuple[int, str, list[tuple[int, str]]]], out_dir: str, batch_rows: int = 2000
) -> list[dict[str, Any]]:
    """:func:`finalize_shard` for several small shards in one task (fewer tasks for small files)."""
    return [finalize_shard(no, parquet, drops, out_dir, batch_rows) for no, parquet, drops in shards]


def _finalize_groups(rows: list[int], limit: int) -> list[list[int]]:
    """Consecutive shards grouped so a group holds at most ``limit`` rows (or one bigger shard)."""
    groups: list[list[int]] = []
    total = 0
    for i, n in enumerate(rows):
        if not groups or total + n > limit:
            groups.append([])
            total = 0
        groups[-1].append(i)
        total += n
    return groups


Submit = Callable[..., Any]  # submit(fn, *args) -> a future with .result()


def _tree_reduce(submit: Submit, futures: list[Any], fan_in: int = 8) -> Any:
    while len(futures) > 1:
        futures = [submit(merge_forests, *futures[i : i + fan_in]) for i in range(0, len(futures), fan_in)]
    return futures[0]


def edges_of(handoff: Handoff, sigs: list[str], *args: Any) -> Forest:
    """:func:`~.dedup.bucket_edges` over the signature files ``sigs`` names (handles)."""
    return bucket_edges([str(handoff.local(h)) for h in sigs], *args)


def classify_of(
    handoff: Handoff, forest: Forest, sigs: list[str], width: int, same_id: np.ndarray
) -> dict[int, list[tuple[int, str]]]:
    """:func:`~.dedup.classify` over the signature files ``sigs`` names (handles)."""
    return classify(forest, [str(handoff.local(h)) for h in sigs], width, same_id)


def finalize_to(
    handoff: Handoff,
    shards: list[tuple[int, str, list[tuple[int, str]]]],
    out_dir: str,
    batch_rows: int = 2000,
) -> list[dict[str, Any]]:
    """:func:`finalize_shards` from shards ``handoff`` names, its corpus files published through it:
    each result gets ``files`` (``{artifact path: handle}``)."""
    folder = handoff.work_dir(out_dir)
    finals = finalize_shards(
        [(no, str(handoff.local(parquet)), drops) for no, parquet, drops in shards], str(folder), batch_rows
    )
    for fin in finals:
        fin["files"] = handoff.publish("corpus-part", folder, sorted(fin["rows"]))
    handoff.done(folder)
    return finals


def run_ingest(
    jobs: Sequence[FileJob],
    config: IngestConfig,
    out_dir: str | Path,
    submit: Submit,
    languages: list[str] | None = None,
    file_step: Callable[..., dict[str, Any]] | None = None,
    handoff: Handoff | None = None,
) -> dict[str, Any]:
    """Ingest ``jobs`` (one task per file), deduplicate across all of them, write the corpus.

    ``file_step(job, config, languages)`` replaces :func:`ingest_to_shard` (e.g. to fetch the file
    from the store first); the ``parquet`` and ``sig`` it returns are handles of ``handoff``
    (default :class:`~.handoff.SharedFolder`: paths every step can open). Returns {"rows": {path: n},
    "files": {path: local file}, "stats": :func:`compose_stats`, "quarantine"}.
    """
    step = file_step or ingest_to_shard
    handoff = handoff or SharedFolder()
    # Largest files first (longest-processing-time-first scheduling, Graham 1969): with files of
    # unequal size a big one started last would leave the other workers idle at the end. The
    # results are still read in the jobs' order, so the output does not depend on it.
    started = {}
    for i in sorted(range(len(jobs)), key=lambda i: -jobs[i].bytes):
        started[i] = submit(step, jobs[i], config, languages)
    shard_futures = [started[i] for i in range(len(jobs))]
    books = [f.result() for f in shard_futures]
    sig_paths = [b["sig"] for b in books]
    width = books[0]["sig_width"] if books else 0
    signer = Signer(config.dedup)
    parts = config.dedup.lsh_partitions
    forest, same_id = Forest.empty(), np.zeros(0, dtype=np.int64)
    if books and any(b["rows"] for b in books):
        id_futures = [submit(edges_of, handoff, sig_paths, width, [COL_ID], p, parts) for p in range(parts)]
        same_id = non_roots(_tree_reduce(submit, id_futures).result())
        edge_futures = [
            submit(edges_of, handoff, sig_paths, width, columns, part, parts, same_id)
            for columns in reduce_plan(signer.bands, config.dedup)
            for part in range(parts)
        ]
        if edge_futures:
            forest = _tree_reduce(submit, edge_futures).result()
    drops = submit(classify_of, handoff, forest, sig_paths, width, same_id).result() if books else {}
    groups = _finalize_groups([b["rows"] for b in books], config.finalize_rows)
    final_futures = [
        submit(
            finalize_to,
            handoff,
            [(i, books[i]["parquet"], drops.get(i, [])) for i in group],
            str(out_dir),
            config.batch_rows,
        )
        for group in groups
    ]
    finals = [fin for f in final_futures for fin in f.result()]
    rows: dict[str, int] = {}
    files: dict[str, str] = {}
    for fin in finals:
        rows.update(fin["rows"])
        files.update({rel: str(handoff.local(h)) for rel, h in fin.pop("files").items()})
    dup = forest.nodes != forest.roots
    cluster_sizes = np.unique(forest.roots, return_counts=True)[1] if len(forest.roots) else np.zeros(0)
    dedup_info = {
        "bands": signer.bands,
        "rows_per_band": signer.rows,
        "threshold": config.dedup.threshold,
        "clusters": int(len(cluster_sizes)),
        "largest_cluster": int(cluster_sizes.max()) if len(cluster_sizes) else 0,
        "removed": int(dup.sum()) + len(same_id),
    }
    stats = compose_stats(books, finals, dedup_info)
    quarantine = [q for b in books for q in b["quarantine"]]
    return {
        "rows": dict(sorted(rows.items())),
        "files": dict(sorted(files.items())),
        "stats": stats,
        "quarantine": quarantine,
    }


def compose_stats(books: list[dict], finals: list[dict], dedup_info: dict[str, Any]) -> dict[str, Any]:
    """Books per source, language and source x language, each satisfying :data:`IDENTITY`."""
    by_sl: dict[tuple[str, str], Counter[str]] = {}
    files = []
    for b, fin in zip(books, finals, strict=True):
        file_counts: Counter[str] = Counter(b["stats"])
        for lang, counts in b["by_lang"].items():
            by_sl.setdefault((b["source"], lang), Counter()).update(counts)
        for lang, counts in fin["duplicates"].items():
            c = by_sl.setdefault((b["source"], lang), Counter())
            for key, n in counts.items():
                c[key] += n
                c["kept"] -= n
                file_counts[key] += n
                file_counts["kept"] -= n
        files.append({"source": b["source"], "file": b["file"], "stats": Books.ordered(file_counts)})

    def total(keys: list[tuple[str, str]]) -> dict[str, int]:
        c: Counter[str] = Counter()
        for k in keys:
            c.update(by_sl[k])
        return Books.ordered(c)

    sources = sorted({s for s, _ in by_sl})
    langs = sorted({lang for _, lang in by_sl})
    out = {
        "identity": IDENTITY,
        "totals": total(list(by_sl)),
        "by_source": {s: total([k for k in by_sl if k[0] == s]) for s in sources},
        "by_lang": {lang: total([k for k in by_sl if k[1] == lang]) for lang in langs},
        "by_source_lang": {
            s: {lang: Books.ordered(by_sl[(s, lang)]) for lang in langs if (s, lang) in by_sl}
            for s in sources
        },
        "files": files,
        "dedup": dedup_info,
    }
    return out


def check_identity(books: dict[str, int]) -> bool:
    """True when ``read == kept + filtered:* + duplicates:* + quarantined``."""
    parts = books["kept"] + books["quarantined"]
    parts += sum(v for k, v in books.items() if k.startswith(("filtered:", "duplicates:")))
    return books["read"] == parts


def local_submit(fn: Callable, *args: Any) -> Any:
    """Run ``fn`` now and wrap its value as a finished future (no scheduler; tests and tools)."""
    from concurrent.futures import Future

    args = tuple(a.result() if isinstance(a, Future) else a for a in args)
    fut: Future = Future()
    fut.set_result(fn(*args))
    return fut


def write_books(result: dict[str, Any], folder: Path) -> dict[str, Path]:
    """stats.json and quarantine.jsonl next to the corpus files."""
    folder.mkdir(parents=True, exist_ok=True)
    stats = folder / "stats.json"
    stats.write_text(json.dumps(result["stats"], indent=2, ensure_ascii=False, default=str))
    quarantine = folder / "quarantine.jsonl"
    with quarantine.open("w", encoding="utf-8") as fh:
        for q in result["quarantine"]:
            fh.write(json.dumps(q, ensure_ascii=False, default=str) + "\n")
    return {"stats.json": stats, "quarantine.jsonl": quarantine}
