"""The whole ingest stage (read, clean, filter, deduplicate, write) on every corpus file in
shared/data, with the default configuration: no crash, exact books, clean text, right languages.

Runs once per session (module fixture) through :func:`run_ingest`, the code the Prefect flow runs
on Dask, with two worker processes of a process pool as the scheduler.
"""

from __future__ import annotations

import json
import multiprocessing
import re
from collections import Counter
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tasks.ingest import IngestConfig
from tasks.ingest.quality import QualityConfig, quality_issue
from tasks.ingest.shards import FileJob, check_identity, run_ingest
from tasks.language import detect_language
from tests.support.paths import SHARED_DATA

DATA = SHARED_DATA
pytestmark = pytest.mark.skipif(not DATA.is_dir(), reason=f"shared test data not found at {DATA}")

# Every corpus-format file in shared/data, by folder (the others hold queries, qrels, bitext).
FOLDERS = {
    "gensim-wiki": ("mediawiki", "wikipedia"),
    "dumpster-dive-ltgwiki": ("mediawiki", "wikipedia"),
    "wikipedia2vec-enwiki": ("mediawiki", "wikipedia"),
    "wikiclean-pages": ("mediawiki", "wikipedia"),
    "xztextfilter-wiki-truncated": ("mediawiki", "wikipedia"),
    "hf-datasets-c4-mc4-dummy": ("mc4", "mc4"),
    "dolma-ccnet-jsonl": ("mc4", "ccnet"),
    "resiliparse-warc": ("warc", "ccnews"),
    "dolma-warc": ("warc", "ccnews"),
}
DUMP_LANGS = ("ja", "el", "uk", "vi", "bn", "hy", "mr")
# Template braces, links, refs, table markup (rows, cells, attributes) and file links. A bare "||"
# is not markup by itself: Marathi verse ends with it and code uses it.
LEFTOVERS = re.compile(
    r"\{\{|\}\}|\[\[|\]\]|<ref|wikitable|cellspacing=|^[\s:]*(?:\{\||\|\}|\|-|\|\+)|^\|(?!\|).*\|\||^!.*!!"
    r"|(?:File|Image|Datei|Файл|Αρχείο|ファイル|Tập tin|চিত্র|Պատկեր|चित्र)"
    r":[^\s|]+\.(?:jpe?g|png|svg|gif)\s*\|",
    re.MULTILINE | re.IGNORECASE,
)


def shared_files() -> list[tuple[Path, str, str]]:
    out = []
    for folder, (fmt, source) in FOLDERS.items():
        for path in sorted((DATA / folder).iterdir()):
            if path.is_file() and not path.name.endswith(".md"):
                out.append((path, fmt, source))
    return out


def pool_submit(pool: Executor):
    """``run_ingest``'s ``submit(fn, *args)`` on a process pool; finished futures passed as arguments
    are resolved first (Dask does the same for the futures a task is given)."""

    def submit(fn, *args):
        return pool.submit(fn, *(a.result() if isinstance(a, Future) else a for a in args))

    return submit


@pytest.fixture(scope="module")
def stage(tmp_path_factory):
    """~100 MB of XML, WARC and JSON through the whole stage: a minute or more on 2 cores, so the
    files are read by two processes at once (the work is spread over ~9 dumps of 2-4 MB)."""
    tmp = tmp_path_factory.mktemp("shared")
    jobs = [
        FileJob(str(p), fmt, source, None, f"{p.parent.name}/{p.name}", str(tmp / "shards" / f"s{i:03d}"))
        for i, (p, fmt, source) in enumerate(shared_files())
    ]
    # the largest files first, so that the two workers finish at about the same time
    jobs.sort(key=lambda j: -Path(j.path).stat().st_size)
    with ProcessPoolExecutor(max_workers=2, mp_context=multiprocessing.get_context("spawn")) as pool:
        result = run_ingest(jobs, IngestConfig(), tmp / "corpus", pool_submit(pool))
    rows = []
    for f in sorted((tmp / "corpus").rglob("*.parquet")):
        rows.extend(pq.read_table(f).to_pylist())
    return result, rows


def test_folders_hold_only_known_corpus_files():
    names = {p.name for p, _, _ in shared_files()}
    assert len(names) == 49  # 28 wikiclean + 7 xz + 3 gensim + 1 + 1 wiki, 3 + 2 JSON, 4 WARCs
    assert {"clipped.warc.gz", "bgwiki-latest-pages-articles-shortened.xml.bz2"} <= names


@pytest.mark.slow
def test_every_file_ingests_and_the_books_balance_exactly(stage):
    result, rows = stage
    stats = result["stats"]
    assert len(stats["files"]) == len(shared_files())
    for group in (stats["files"],):
        for f in group:
            assert check_identity(f["stats"]), f
    for key in ("by_source", "by_lang"):
        for name, books in stats[key].items():
            assert check_identity(books), (key, name, books)
    for source, langs in stats["by_source_lang"].items():
        for lang, books in langs.items():
            assert check_identity(books), (source, lang, books)
    totals = stats["totals"]
    assert check_identity(totals)
    assert totals["read"] == sum(f["stats"]["read"] for f in stats["files"])
    assert totals["kept"] == len(rows) == sum(result["rows"].values())
    assert totals["quarantined"] == len(result["quarantine"])
    reasons = Counter((q["file"].split("/")[-1], q["reason"]) for q in result["quarantine"])
    assert reasons[("clipped.warc.gz", "truncated")] == 1
    for lang in DUMP_LANGS:  # each truncated dump records its cut
        assert reasons[(f"{lang}wiki-truncated-100k.xml.xz", "truncated")] == 1
    assert len({r["id"] for r in rows}) == len(rows)
    # every filter and duplicate kind that fired is named
    assert any(k.startswith("filtered:gopher:") for k in totals)
    assert any(k.startswith("duplicates:") for k in totals)


@pytest.mark.slow
def test_no_wiki_markup_left_in_real_pages(stage):
    _, rows = stage
    wiki = [r for r in rows if r["source"] == "wikipedia"]
    assert len(wiki) > 2000
    bad = [(r["title"], LEFTOVERS.search(r["text"]).group()) for r in wiki if LEFTOVERS.search(r["text"])]
    assert not bad, bad[:5]


@pytest.mark.slow
def test_language_ids_of_the_dumps(stage):
    _, rows = stage
    for lang in DUMP_LANGS:
        pages = [r for r in rows if r["url"].startswith(f"https://{lang}.wikipedia.org/")]
        assert len(pages) >= 100, lang
        assert {r["lang"] for r in pages} == {lang}
        # the declared language agrees with what py3langid reads in the cleaned text
        agree = sum(detect_language(r["text"])[0] == lang for r in pages)
        assert agree / len(pages) >= 0.95, (lang, agree, len(pages))


@pytest.mark.slow
def test_quality_filters_keep_most_articles_and_count_every_drop(stage):
    result, _ = stage
    by_lang = result["stats"]["by_lang"]
    for lang in DUMP_LANGS:
        books = by_lang[lang]
        quality = sum(v for k, v in books.items() if k.startswith(("filtered:gopher:", "filtered:c4:")))
        assert quality / (books["kept"] + quality) < 0.2, (lang, books)  # encyclopedic text mostly passes


# --- the quality rules themselves (per script) --------------------------------------------------


def test_cjk_and_thai_are_measured_in_characters():
    cfg = QualityConfig()
    ja = "琵琶湖は滋賀県にある日本最大の湖である。古くから水運に利用され、周辺には多くの港町が栄えた。"
    ja += "湖の周囲には寺社や城跡が点在し、観光地としても知られている。近年は水質の改善が進められている。"
    ja += "湖から流れ出る川は瀬田川と呼ばれ、下流で宇治川、淀川と名を変えて大阪湾に注ぐ。"
    assert quality_issue(ja, "ja", cfg) is None  # no spaces at all, yet not "too few words"
    assert quality_issue(ja[:40], "ja", cfg) == "gopher:word_count"  # 40 characters is too short
    thai = "กรุงเทพมหานครเป็นเมืองหลวงของประเทศไทย มีประชากรมากที่สุดในประเทศ "
    thai += "แม่น้ำเจ้าพระยาไหลผ่านใจกลางเมือง เป็นเส้นทางคมนาคมสำคัญมาแต่โบราณ "
    thai += "พระบรมมหาราชวังสร้างขึ้นในสมัยรัชกาลที่หนึ่ง และเป็นสถานที่ท่องเที่ยวที่มีชื่อเสียง"
    assert quality_issue(thai + thai, "th", cfg) == "gopher:dup_ngram"  # the same text twice
    assert quality_issue(thai, "th", cfg) is None  # no sentence marks in Thai: that rule is off
    ko = " ".join(
        [
            "한강은 대한민국의 중부를 흐르는 큰 강이다.",
            "강원도의 산에서 시작하여 서울을 가로질러 서해로 흘러간다.",
            "강변에는 넓은 공원과 자전거 길이 있어 많은 시민이 산책을 즐긴다.",
            "여름에는 수영장과 야외 공연이 열리고, 가을에는 불꽃 축제가 밤하늘을 밝힌다.",
            "조선 시대에는 한강을 따라 배가 오가며 곡식과 소금을 실어 날랐다.",
            "오늘날에는 서른 개가 넘는 다리가 강의 남쪽과 북쪽을 이어 준다.",
            "겨울에 강물이 얼면 철새들이 찾아와 강 하구의 습지에서 먹이를 구한다.",
            "도시의 역사와 함께한 이 강은 지금도 서울 사람들의 삶 한가운데에 있다.",
        ]
    )
    assert quality_issue(ko, "ko", cfg) is None  # Hangul words are short: Korean bounds apply


def test_repetitive_and_boilerplate_text_is_flagged():
    cfg = QualityConfig()
    spam = "\n".join(["The best of the watches and the deals that you have to see with us!"] * 30)
    assert quality_issue(spam, "en", cfg) in {"gopher:dup_lines", "gopher:top_ngram", "gopher:dup_ngram"}
    nav = "\n".join(f"Home Products Catalogue Item {i} Contact Imprint Login" for i in range(30))
    assert quality_issue(nav, "en", cfg) in {"gopher:stop_words", "c4:punct_lines", "gopher:top_ngram"}
    lorem = "Lorem ipsum dolor sit amet, consectetur adipiscing elit. " * 20
    assert quality_issue(lorem, None, cfg) is not None
    ja_spam = "激安セール開催中！今すぐクリック！" * 40
    assert quality_issue(ja_spam, "ja", cfg) in {"gopher:top_ngram", "gopher:dup_ngram"}
    assert quality_issue(spam, "en", QualityConfig(enabled=False)) is None


@pytest.mark.slow
def test_stats_file_round_trips(stage, tmp_path):
    from tasks.ingest.shards import write_books

    result, _ = stage
    files = write_books(result, tmp_path)
    stats = json.loads(files["stats.json"].read_text())
    assert stats["identity"] == "read = kept + filtered + duplicates + quarantined"
    lines = files["quarantine.jsonl"].read_text().splitlines()
    assert len(lines) == stats["totals"]["quarantined"]
    assert all({"reason", "source", "file"} <= set(json.loads(x)) for x in lines)
    assert not any("path" in json.loads(x) for x in lines)  # relative names, no local paths
    assert str(DATA) not in files["quarantine.jsonl"].read_text()
