"""Line-aligned bitext in LASER's Tatoeba layout (Artetxe & Schwenk, 2019): ``tatoeba.LANG-eng.LANG``
and ``tatoeba.LANG-eng.eng`` hold a sentence and its English translation on the same line.

One reader serves both uses: translation pairs for contrastive pretraining (``tasks.pairs``) and the
Tatoeba evaluation set (``tasks.eval_data.formats``).
"""

from __future__ import annotations

from pathlib import Path


class BitextError(ValueError):
    """A bitext that cannot be read as line-aligned pairs; the message names the files."""


def tatoeba_languages(directory: str | Path) -> list[str]:
    """The languages a Tatoeba folder pairs with English (those with both files)."""
    d = Path(directory)
    langs = {f.name.split(".")[1].split("-")[0] for f in d.glob("tatoeba.*-eng.eng")}
    return sorted(lang for lang in langs if (d / f"tatoeba.{lang}-eng.{lang}").is_file())


def tatoeba_files(directory: str | Path, lang: str) -> tuple[Path, Path]:
    """The (LANG side, English side) files of one language; a missing one is an error naming what is
    there."""
    d = Path(directory)
    src, eng = d / f"tatoeba.{lang}-eng.{lang}", d / f"tatoeba.{lang}-eng.eng"
    if not src.is_file() or not eng.is_file():
        have = " ".join(tatoeba_languages(d)) or "none"
        raise FileNotFoundError(
            f"{src if not src.is_file() else eng} does not exist; languages in {d}: {have}"
        )
    return src, eng


def read_tatoeba(directory: str | Path, lang: str) -> tuple[list[str], list[str]]:
    """The LANG sentences and their English translations, line i with line i."""
    src, eng = tatoeba_files(directory, lang)
    lines = [p.read_text(encoding="utf-8-sig").splitlines() for p in (src, eng)]
    if len(lines[0]) != len(lines[1]):
        raise BitextError(f"{src} has {len(lines[0])} lines but {eng} has {len(lines[1])}: not line-aligned")
    return lines[0], lines[1]
