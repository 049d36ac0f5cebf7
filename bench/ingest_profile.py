"""Where the MediaWiki ingest spends its time: cProfile over the same pages the throughput bench reads,
each function's own time (and that of the C functions it calls) charged to the phase of its module.

Phases: reading (decompression, decoding), XML (the pull parser and page assembly), wikitext rendering,
cleaning, language id, filters, dedup (the MinHash signature row the stage computes per kept page),
other. The bare XML parse of the same files (``ET.iterparse``, nothing else) is timed beside it.

    .venv/bin/python bench/ingest_profile.py [--all] [--top 25]
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sys
import time
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.ingest_throughput import WIKI_ALL, WIKI_QUICK, wiki_ours  # noqa: E402
from tasks.ingest.dedup import Signer  # noqa: E402
from tasks.ingest.files import open_bytes  # noqa: E402

# module file name -> phase (first match wins); anything else is "other"
PHASES = {
    "files.py": "reading",
    "bz2.py": "reading",
    "lzma.py": "reading",
    "_compression.py": "reading",
    "codecs.py": "reading",
    "mediawiki_xml.py": "XML",
    "mediawiki.py": "XML",
    "ElementTree.py": "XML",
    "wikifast.py": "wikitext rendering",
    "wikitext.py": "wikitext rendering",
    "render_limits.py": "wikitext rendering",
    "clean.py": "cleaning",
    "unicodedata": "cleaning",
    "language.py": "language id",
    "py3langid": "language id",
    "langid": "language id",
    "quality.py": "filters",
    "dedup.py": "dedup",
}


def phase_of(filename: str) -> str | None:
    for key, phase in PHASES.items():
        if key in filename:
            return phase
    return None


def breakdown(stats: pstats.Stats) -> dict[str, float]:
    """Seconds per phase: a Python function's own time goes to its module's phase; a C function's
    (``~`` file) is split among its callers by what each caller spent in it."""
    out: dict[str, float] = defaultdict(float)
    raw = stats.stats  # type: ignore[attr-defined]
    for (filename, _, _), (_, _, tt, _, callers) in raw.items():
        if filename != "~":
            out[phase_of(filename) or "other"] += tt
            continue
        total = sum(c[2] for c in callers.values()) or 1.0
        for (cfile, _, _), c in callers.items():
            out[phase_of(cfile) or "other"] += tt * c[2] / total
    return dict(out)


def bare_xml(paths: list[Path]) -> int:
    pages = 0
    for p in paths:
        with open_bytes(p) as fh:
            try:
                for _, elem in ET.iterparse(fh, events=("end",)):
                    if elem.tag.endswith("page"):
                        pages += 1
                        elem.clear()
            except (ET.ParseError, EOFError, Exception):  # truncated dumps end mid-page
                pass
    return pages


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--all", action="store_true", help="every shared dump, not the 4 quick ones")
    ap.add_argument("--top", type=int, default=25)
    args = ap.parse_args()
    paths = WIKI_ALL if args.all else WIKI_QUICK
    signer = Signer()

    def run() -> tuple[int, int]:
        pages = kept = 0
        for p in paths:
            n, texts = wiki_ours(p)
            pages += n
            kept += len(texts)
            for i, t in enumerate(texts):
                signer.row(t, str(i), unspaced=False)
        return pages, kept

    t0 = time.perf_counter()
    xml_pages = bare_xml(paths)
    t_xml = time.perf_counter() - t0
    t0 = time.perf_counter()
    run()  # unprofiled: the rate
    wall = time.perf_counter() - t0
    prof = cProfile.Profile()
    prof.enable()
    pages, kept = run()
    prof.disable()
    stats = pstats.Stats(prof)
    parts = breakdown(stats)
    total = sum(parts.values())
    print(f"load {os.getloadavg()[0]:.1f}; files: {', '.join(p.name for p in paths)}")
    print(f"bare XML parse (all pages): {xml_pages} pages in {t_xml:.1f} s = {xml_pages / t_xml:.0f} pages/s")
    rate = pages / wall
    print(f"ingest (unprofiled): {pages} article pages, {kept} kept, {wall:.1f} s = {rate:.1f} pages/s")
    print("\n| phase | share of profiled time |\n|---|---:|")
    for name, sec in sorted(parts.items(), key=lambda kv: -kv[1]):
        print(f"| {name} | {100 * sec / total:.1f} % |")
    print()
    stats.sort_stats("tottime").print_stats(args.top)


if __name__ == "__main__":
    main()
