"""Deduplication across sources: exact and MinHash-LSH near-duplicates, solved on Dask.

Near-duplicates are constructed from real Wikipedia pages (shared/data): copies with changed
case/punctuation/whitespace (exact after normalisation), with a few words edited or a paragraph
appended (near: Jaccard of word 5-grams about 0.9, over the 0.8 threshold), and the same URL
with new text (same id). Distinct real pages must never be merged, and 1 or 2 Dask workers must
give identical corpora and books.
"""

from __future__ import annotations

import functools
import json
import random
import time
import unicodedata
import zlib
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import regex

from tasks.ingest import IngestConfig, InputFile, QualityConfig, _minhash, iter_documents
from tasks.ingest.dedup import (
    DedupConfig,
    Forest,
    Signer,
    components,
    merge_forests,
    normalize_for_hash,
    optimal_bands,
)
from tasks.ingest.shards import FileJob, check_identity, ingest_to_shard, local_submit, run_ingest
from tests.support.paths import SHARED_DATA

DATA = SHARED_DATA
pytestmark = pytest.mark.skipif(not DATA.is_dir(), reason=f"shared test data not found at {DATA}")
UKWIKI = DATA / "xztextfilter-wiki-truncated" / "ukwiki-truncated-100k.xml.xz"
JAWIKI = DATA / "xztextfilter-wiki-truncated" / "jawiki-truncated-100k.xml.xz"


@functools.cache
def real_pages(path: Path, n: int) -> list[dict]:
    """The first n real, long, mutually distinct pages (the reader streams: stop once we have them)."""
    out = []
    for item in iter_documents(InputFile(path, "mediawiki", "wikipedia", None)):
        if isinstance(item, dict) and 3000 < item["n_chars"] < 30000:
            out.append(item)
            if len(out) == n:
                break
    return out


def edit_words(text: str, fraction: float, rng: random.Random) -> str:
    words = text.split(" ")
    for i in rng.sample(range(len(words)), max(1, int(len(words) * fraction))):
        words[i] = words[i][::-1]
    return " ".join(words)


def write_jsonl(path: Path, docs: list[dict]) -> None:
    path.write_text("\n".join(json.dumps(d, ensure_ascii=False) for d in docs), encoding="utf-8")


@functools.cache
def constructed(tmp: str) -> tuple[list[FileJob], dict[str, str]]:
    """Two 'sources' of mC4-style JSON lines; returns the jobs and the expected fate per URL."""
    rng = random.Random(7)
    uk, ja = real_pages(UKWIKI, 24), real_pages(JAWIKI, 8)
    base = [*uk, *ja]
    a, b, fate = [], [], {}
    for i, r in enumerate(base):
        url = f"https://orig.example/{i}"
        a.append({"text": r["text"], "url": url, "timestamp": "2020-01-01T00:00:00Z"})
        fate[url] = "kept"
    for i, r in enumerate(base[:8]):  # exact after normalisation: case, punctuation, spacing
        text = r["text"].upper().replace(".", " . ").replace(",", " ,  ")
        b.append({"text": text, "url": f"https://copy.example/exact/{i}", "timestamp": None})
        fate[f"https://copy.example/exact/{i}"] = "exact"
    for i, r in enumerate(base[8:16], 8):  # near: 1% of words edited, or a paragraph appended
        text = edit_words(r["text"], 0.01, rng) if i % 2 else r["text"] + "\n\nДодатковий абзац з подякою."
        b.append({"text": text, "url": f"https://copy.example/near/{i}", "timestamp": None})
        fate[f"https://copy.example/near/{i}"] = "near"
    for i, r in enumerate(ja[:4]):  # near duplicates in Japanese (character shingles)
        text = r["text"][: int(len(r["text"]) * 0.97)]
        b.append({"text": text, "url": f"https://copy.example/ja/{i}", "timestamp": None})
        fate[f"https://copy.example/ja/{i}"] = "near"
    # the same URL read again by the same source with new text: same id, removed before the text
    # graph (ids are per source, so source b re-serving another page's text is an exact copy)
    a.append({"text": edit_words(uk[23]["text"], 0.5, rng), "url": "https://orig.example/1"})
    b.append({"text": uk[20]["text"], "url": "https://orig.example/0", "timestamp": None})
    for i, r in enumerate(base[16:20], 16):  # heavily edited (40% of words): a different document
        b.append({"text": edit_words(r["text"], 0.4, rng), "url": f"https://copy.example/far/{i}"})
        fate[f"https://copy.example/far/{i}"] = "kept"
    folder = Path(tmp)
    write_jsonl(folder / "a.jsonl", a)
    write_jsonl(folder / "b.jsonl", b)
    jobs = [
        FileJob(str(folder / "a.jsonl"), "mc4", "srca", "uk", "a.jsonl", str(folder / "shards" / "s0")),
        FileJob(str(folder / "b.jsonl"), "mc4", "srcb", "uk", "b.jsonl", str(folder / "shards" / "s1")),
    ]
    return jobs, fate


CONFIG = IngestConfig(quality=QualityConfig(enabled=False), min_lang_confidence=0)


def read_corpus(folder: Path) -> list[dict]:
    rows = []
    for f in sorted(folder.rglob("*.parquet")):
        rows.extend(pq.read_table(f).to_pylist())
    return rows


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("dedup")


def test_near_duplicates_of_real_pages(work):
    _, fate = constructed(str(work))
    result = reference(str(work))
    kept = {r["url"] for r in read_corpus(work / "ref")}
    assert kept == {u for u, f in fate.items() if f == "kept"}
    totals = result["stats"]["totals"]
    assert totals["duplicates:exact"] == 9
    assert totals["duplicates:near"] == 12
    assert totals["duplicates:same_id"] == 1
    for group in ("by_source", "by_lang"):
        assert all(check_identity(b) for b in result["stats"][group].values())
    assert result["stats"]["by_source"]["srca"].get("duplicates:exact", 0) == 0  # first occurrence wins
    assert result["stats"]["dedup"]["largest_cluster"] == 2


def test_largest_file_starts_first_and_the_result_does_not_depend_on_it(work):
    """run_ingest submits the biggest input first (it bounds the makespan on several workers), and
    the corpus and books come out as if the files ran in the jobs' order."""
    jobs, _ = constructed(str(work))
    out = work / "lpt"
    jobs = [
        FileJob(**{**j.__dict__, "out": str(out / "shards" / Path(j.out).name), "bytes": size})
        for j, size in zip(jobs, (10, 10_000), strict=True)  # the second job is the big one
    ]
    order = []

    def recording_submit(fn, *args):
        if fn is ingest_to_shard:
            order.append(args[0].rel)
        return local_submit(fn, *args)

    result = run_ingest(jobs, CONFIG, out / "corpus", recording_submit)
    assert order == ["b.jsonl", "a.jsonl"]
    ref = reference(str(work))
    assert result["stats"] == ref["stats"] and result["rows"].keys() == ref["rows"].keys()
    assert list(result["rows"].values()) == list(ref["rows"].values())
    strip = lambda rows: sorted((r["id"], r["text"]) for r in rows)  # noqa: E731
    assert strip(read_corpus(out / "corpus")) == strip(read_corpus(work / "ref"))


@functools.cache
def reference(tmp: str) -> dict:
    jobs, _ = constructed(tmp)
    return run_ingest(jobs, CONFIG, Path(tmp) / "ref", local_submit)


def test_files_handed_on_through_the_store_give_the_same_corpus_bytes(work, tmp_path):
    """The flow's path (workers that share only the store with the driver): the input files come
    from a source artifact, each step commits its files as an intermediate artifact under the
    stage's lease and the next step reads them back. The corpus files are byte for byte those of a
    run on a shared folder, the driver's output folder is never written, and nothing gets a ref."""
    import hashlib
    from dataclasses import replace

    from m3.store import Store
    from tasks.ingest.handoff import StoreHandoff
    from tasks.ingest.stage import stored_file_to_shard

    ref = reference(str(work))
    jobs, _ = constructed(str(work))
    store = Store(str(tmp_path / "store"), cache_dir=tmp_path / "cache")
    source = store.commit("source", "t", {Path(j.path).name: Path(j.path) for j in jobs})
    jobs = [replace(j, path=f"{source.id}/{Path(j.path).name}") for j in jobs]
    with store.lease("ingest test: shards being written", manifests=[source.id]) as lease:
        handoff = StoreHandoff(store.url, lease.id, "t")
        step = functools.partial(stored_file_to_shard, handoff)
        result = run_ingest(jobs, CONFIG, tmp_path / "out", local_submit, file_step=step, handoff=handoff)
    assert result["stats"] == ref["stats"] and result["rows"] == ref["rows"]
    digest = lambda p: hashlib.sha256(Path(p).read_bytes()).hexdigest()  # noqa: E731
    assert {rel: digest(p) for rel, p in result["files"].items()} == {
        rel: digest(work / "ref" / rel) for rel in ref["rows"]
    }
    assert not (tmp_path / "out").exists()
    kinds = {store.manifest(m).kind for m in store.manifest_ids()}
    assert kinds == {"source", "ingest-shard", "ingest-signatures", "corpus-part"}
    assert store.refs() == []  # intermediate artifacts: gc takes them once the lease is gone


@pytest.mark.slow  # two LocalClusters of worker processes: ~40 s on 2 shared cores
def test_same_result_on_one_or_two_dask_workers(work):
    from distributed import Client, LocalCluster

    ref = reference(str(work))
    cfg = CONFIG.model_copy(update={"dedup": DedupConfig(lsh_partitions=2, bands_per_task=2)})
    for workers in (1, 2):
        jobs, _ = constructed(str(work))
        out = work / f"dask{workers}"
        jobs = [FileJob(**{**j.__dict__, "out": str(out / "shards" / Path(j.out).name)}) for j in jobs]
        with (
            LocalCluster(
                n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0"
            ) as cluster,
            Client(cluster) as client,
        ):
            result = run_ingest(jobs, cfg, out / "corpus", client.submit)
            used = {w for ws in client.who_has().values() for w in ws}
        assert read_corpus(out / "corpus") == read_corpus(work / "ref"), workers
        assert result["stats"]["totals"] == ref["stats"]["totals"]
        assert result["stats"]["by_source_lang"] == ref["stats"]["by_source_lang"]
        assert result["rows"] == ref["rows"]
        assert len(used) <= workers


def test_minhash_estimates_jaccard():
    signer = Signer(DedupConfig(num_perm=256))
    rng = np.random.default_rng(0)
    universe = rng.integers(0, 2**62, size=2000, dtype=np.uint64)
    a, b = universe[:1000], universe[500:1500]  # Jaccard 500/1500 = 1/3
    est = float((signer.minhash(np.unique(a)) == signer.minhash(np.unique(b))).mean())
    assert abs(est - 1 / 3) < 0.1


def test_minhash_is_the_same_with_or_without_vector_instructions():
    signer = Signer()
    rng = np.random.default_rng(1)
    for size in (0, 1, 7, 8, 9, 1000):
        values = rng.integers(0, 2**64, size=size, dtype=np.uint64)
        with np.errstate(over="ignore"):
            products = values[:, None] * signer.a[None, :] + signer.b[None, :]
        expected = products.min(axis=0) >> np.uint64(32) if size else np.full(len(signer.a), 2**32 - 1)
        assert (_minhash.minhash(values, signer.a, signer.b, vector=False) == expected).all()
        assert (signer.minhash(values) == expected).all()


NORMALISE = [
    "Hello, World!  THE  end...",
    "Straße ſtraße ΣΊΣΥΦΟΣ İstanbul ﬁne K",
    "tab\tsep\r\nCRLF\u2028sep\u00a0nbsp\u3000ideo\x85",
    "emoji 😀👍🏽 #tag ²½ e\u0301 日本語、テキスト。ภาษาไทย",
    "   ",
    "",
    "¿¡«»—–·•… only punctuation ‽ ⁂",
]


@pytest.mark.parametrize("text", NORMALISE, ids=range(len(NORMALISE)))
def test_hash_normalisation_folds_case_and_drops_punctuation_and_spacing(text):
    def plain(c: str) -> str:
        return " " if unicodedata.category(c)[0] in "PS" and ord(c) < 0x30000 else c

    expected = " ".join("".join(map(plain, text.casefold())).split())
    assert normalize_for_hash(text) == expected


@pytest.mark.parametrize("text", NORMALISE, ids=range(len(NORMALISE)))
@pytest.mark.parametrize("unspaced", [False, True])
def test_shingles_hash_windows_of_token_crcs(text, unspaced):
    signer = Signer(DedupConfig(ngram=2))
    norm = normalize_for_hash(text)
    tokens = list(norm.replace(" ", "")) if unspaced else regex.findall(r"\w+", norm)
    ids = [zlib.crc32(t.encode()) for t in tokens]
    n = min(2 * 3 if unspaced else 2, len(ids))
    mult = [int(m) for m in signer.shingle_mult]
    windows = {sum(ids[i + j] * mult[j] for j in range(n)) % 2**64 for i in range(len(ids) - n + 1)}
    assert set(signer.shingles(text, unspaced).tolist()) == (windows or {0})


def test_a_lone_surrogate_stops_the_row_as_utf8_would():
    with pytest.raises(UnicodeEncodeError):
        Signer().row("text with a lone \ud800 surrogate", "id", unspaced=False)


@pytest.mark.parametrize(
    "text",
    [
        "word " * 200_000,
        "".join(f"w{i} " for i in range(150_000)),
        "ß" * 300_000,
        "語" * 300_000,
        "'-" * 300_000,
    ],
    ids=["one word", "distinct words", "folding", "unspaced", "punctuation"],
)
def test_rows_of_hostile_pages_cost_linear_time(text):
    signer = Signer()
    signer.row(text[:1000], "warm", unspaced=False)
    costs = []
    for part in (text[: len(text) // 4], text):
        start = time.process_time()
        for unspaced in (False, True):
            signer.row(part, "id", unspaced)
        costs.append(time.process_time() - start)
    assert costs[1] < 3.0, costs
    assert costs[1] < 10 * costs[0] + 0.05, costs


def test_band_layout_follows_threshold():
    b_hi, r_hi = optimal_bands(0.9, 128)
    b_lo, r_lo = optimal_bands(0.5, 128)
    assert b_hi * r_hi <= 128 and b_lo * r_lo <= 128
    assert r_hi > r_lo  # a stricter threshold needs more rows per band


def test_components_pick_smallest_member_and_merge_across_partitions():
    f1 = components(np.array([5, 9]), np.array([7, 5]))  # {5, 7, 9}
    f2 = components(np.array([9, 20]), np.array([3, 21]))  # {3, 9}, {20, 21}
    merged = merge_forests(f1, f2, Forest.empty())
    roots = dict(zip(merged.nodes.tolist(), merged.roots.tolist(), strict=True))
    assert roots == {3: 3, 5: 3, 7: 3, 9: 3, 20: 20, 21: 20}
    # order of merging does not matter
    again = merge_forests(f2, f1)
    assert dict(zip(again.nodes.tolist(), again.roots.tolist(), strict=True)) == roots
