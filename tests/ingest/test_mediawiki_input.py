"""The MediaWiki reader feeds the XML parser a UTF-8 file's own bytes (issue 28): what the parser reads
is still exactly the file decoded with replacement characters, wherever the pieces are cut and
whatever invalid bytes stand where."""

from __future__ import annotations

import random

from tasks.ingest import IngestConfig, InputFile, QualityConfig, ingest_file
from tasks.ingest.mediawiki import CHUNK_BYTES, _Input

READER = IngestConfig(quality=QualityConfig(enabled=False), min_lang_confidence=0)


def fed_text(data: bytes, cuts: list[int]) -> str:
    source = _Input("utf-8")
    out = []
    for start, end in zip([0, *cuts], [*cuts, len(data)], strict=True):
        fed = source.feed(data[start:end])
        out.append(fed.decode("utf-8") if isinstance(fed, bytes) else fed)
    return "".join(out) + source.final()


def test_what_is_fed_is_the_file_decoded_with_replacement():
    rng = random.Random(28)
    alphabet = [
        b"a",
        b" ",
        "ü".encode(),
        "€".encode(),
        "😀".encode(),
        b"\xff",
        b"\xc3",
        b"\xed\xa0\x80",
        b"\x80",
        # leads whose second byte has a narrower range, cut or complete; overlong; beyond U+10FFFF
        b"\xe0",
        b"\xe0\x80",
        b"\xe0\xa0\x80",
        b"\xed",
        b"\xed\x9f\xbf",
        b"\xf0\x8f",
        b"\xf0\x9f",
        b"\xf4\x8f\xbf\xbf",
        b"\xf4\x90",
        b"\xc0\xaf",
        b"plain ASCII, a word or more",
    ]
    for _ in range(20000):
        data = b"".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))
        cuts = sorted(rng.sample(range(len(data) + 1), min(len(data) + 1, rng.randint(0, 6))))
        assert fed_text(data, cuts) == data.decode("utf-8", "replace"), (data, cuts)


def test_valid_utf8_is_fed_as_its_own_bytes():
    data = "Grüße, € und 😀".encode()
    source = _Input("utf-8")
    assert source.feed(data[:3]) == data[:2]  # "ü" is cut: its first byte waits
    assert source.feed(data[3:]) == data[2:]


def page(i: int, text: str) -> str:
    return (
        f"<page><title>P{i}</title><ns>0</ns><id>{i}</id><revision><id>{i}</id><model>wikitext</model>"
        f'<text xml:space="preserve">{text}</text></revision></page>\n'
    )


def test_an_invalid_byte_near_the_first_pieces_end_is_a_replacement_character(tmp_path):
    prose = "Ein Satz über Ähren und Öl, mit [[Link|Bezeichnung]] und €. " * 300
    pages = "".join(page(i, prose) for i in range(2 * CHUNK_BYTES // len(prose.encode()) + 2))
    data = bytearray(f'<mediawiki xml:lang="de">{pages}</mediawiki>'.encode())
    bad = data.index(b"Satz", CHUNK_BYTES - 100)
    data[bad + 1] = 0xFF  # "S\xfftz": not UTF-8
    path = tmp_path / "dewiki-bad-pages-articles.xml"
    path.write_bytes(bytes(data))
    result = ingest_file(InputFile(path, "mediawiki", "wikipedia", None), READER)
    assert not result.quarantine and len(result.records) == pages.count("<page>")
    assert sum(r["text"].count("S\ufffdtz") for r in result.records) == 1
    assert all("Ein Satz über Ähren und Öl, mit Bezeichnung und €." in r["text"] for r in result.records)
