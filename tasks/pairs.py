"""Weak-supervision pairs for contrastive pretraining (M3 paper §3.1, stage 2): title–body pairs of the
corpus, and translation pairs from bitext (the paper's pretraining data includes NLLB and CCMatrix
translation pairs; they are what aligns languages in one dense space).

Nothing evaluated is trained on (``EvaluationGuard``): documents of the held-out split (the split
the synthesize stage makes, by document) give no title–body pair, a pair with a side equal to any
text of the profile's evaluation-only sets is dropped, and so is every bitext language one of those
sets evaluates.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from pydantic import Field, field_validator, model_validator

from m3.strict import StrictModel
from tasks.text import join_sentences, pack_sentences, split_sentences

PAIR_COLUMNS = ["query", "positive", "lang", "kind", "doc_id"]
TRANSLATION = "translation"  # the kind of a bitext pair: both sides are sentences, encoded alike


class PairsConfig(StrictModel):
    body_max_chars: int = Field(1000, ge=50, description="the body is cut at a sentence boundary")
    min_body_chars: int = Field(100, ge=1)
    min_title_chars: int = Field(2, ge=1)
    translation: list[str] = Field(
        default_factory=list,
        description="bitext specs tatoeba:DIR[:LANG,...] (all languages of DIR without LANGs): each "
        "sentence with its English translation is a pair, the sentence as the query",
    )
    exclude_languages: list[str] = Field(
        default_factory=list,
        description="bitext languages never trained on (e.g. close varieties of an evaluated language); "
        "languages that evaluate.datasets evaluates are always left out",
    )
    max_pairs_per_language: int | None = Field(
        None, ge=1, description="a seeded sample of at most this many pairs per bitext language"
    )
    seed: int = Field(0, ge=0, description="the per-language sample")

    @field_validator("translation")
    @classmethod
    def _specs(cls, v: list[str]) -> list[str]:
        for spec in v:
            fmt, _, rest = spec.partition(":")
            if fmt != "tatoeba" or not rest or rest.count(":") > 1:
                raise ValueError(f"translation spec {spec!r}: expected tatoeba:DIR[:LANG,LANG...]")
        return v

    @model_validator(mode="after")
    def _body(self) -> PairsConfig:
        if self.min_body_chars > self.body_max_chars:
            raise ValueError(
                f"min_body_chars ({self.min_body_chars}) exceeds body_max_chars ({self.body_max_chars})"
            )
        return self


def title_body_pairs(corpus: pd.DataFrame, config: PairsConfig | None = None) -> tuple[pd.DataFrame, dict]:
    """One (title, opening of the body) pair per document with a usable title."""
    cfg = config or PairsConfig()
    rows, skipped = [], {"no_title": 0, "short_body": 0}
    for doc in corpus.itertuples(index=False):
        title = (doc.title or "").strip()
        if len(title) < cfg.min_title_chars:
            skipped["no_title"] += 1
            continue
        packed = pack_sentences(split_sentences(doc.text, doc.lang), cfg.body_max_chars)
        body = join_sentences(packed[0]) if packed else ""
        if len(body) < cfg.min_body_chars:
            skipped["short_body"] += 1
            continue
        rows.append(
            {"query": title, "positive": body, "lang": doc.lang, "kind": "title-body", "doc_id": doc.id}
        )
    stats = {"docs": len(corpus), "pairs": len(rows), **{f"skipped:{k}": v for k, v in skipped.items()}}
    return pd.DataFrame(rows, columns=PAIR_COLUMNS), stats


def normalise(text: str) -> str:
    """The form texts are compared in: white space folded, case folded."""
    return " ".join(text.split()).casefold()


@dataclass
class EvaluationGuard:
    """What training must not see: every text of the evaluation-only sets, normalised, the languages
    their Tatoeba sets evaluate, and the held-out documents (``heldout_fraction``/``split_seed``:
    the synthesize stage's split, :func:`tasks.docsplit.split_of`)."""

    texts: set[str] = field(default_factory=set)
    languages: set[str] = field(default_factory=set)
    heldout_fraction: float | None = None
    split_seed: int = 0

    def held_out(self, doc_id: str) -> bool:
        from tasks.docsplit import split_of

        return (
            self.heldout_fraction is not None
            and split_of(doc_id, self.heldout_fraction, self.split_seed) == "test"
        )

    def overlaps(self, *texts: str) -> bool:
        return any(normalise(t) in self.texts for t in texts)


def evaluation_guard(
    specs: Iterable[str], base_dir: str | Path, heldout_fraction: float | None = None, split_seed: int = 0
) -> EvaluationGuard:
    """The guard of a profile's ``evaluate.datasets`` (read with the evaluation loaders) and its
    held-out split."""
    from tasks.eval_data import load_datasets, resolve_spec_paths

    guard = EvaluationGuard(heldout_fraction=heldout_fraction, split_seed=split_seed)
    for spec in specs:
        for ds in load_datasets(resolve_spec_paths(spec, str(base_dir))):
            guard.texts.update(normalise(t) for t in ds.queries["query"])
            guard.texts.update(normalise(t) for t in ds.corpus["passage"])
            if spec.startswith("tatoeba:"):
                guard.languages.add(ds.query_lang or ds.name)
    guard.texts.discard("")
    return guard


def _bitext_specs(specs: Iterable[str], base_dir: str | Path) -> list[tuple[Path, list[str]]]:
    """(folder, languages) of each translation spec, relative folders resolved from ``base_dir``."""
    from tasks.bitext import tatoeba_languages

    out = []
    for spec in specs:
        _, _, rest = spec.partition(":")
        folder, _, langs = rest.partition(":")
        d = Path(folder) if Path(folder).is_absolute() else Path(base_dir) / folder
        if not d.is_dir():
            raise FileNotFoundError(f"translation spec {spec!r}: {d} is not a folder")
        out.append((d, [x for x in langs.split(",") if x] or tatoeba_languages(d)))
    return out


def bitext_files(config: PairsConfig, base_dir: str | Path) -> list[Path]:
    """Every file the translation pairs are read from (their lineage)."""
    from tasks.bitext import tatoeba_files

    return [
        f
        for d, langs in _bitext_specs(config.translation, base_dir)
        for lang in langs
        for f in tatoeba_files(d, lang)
    ]


def translation_pairs(
    config: PairsConfig, base_dir: str | Path, guard: EvaluationGuard | None = None
) -> tuple[pd.DataFrame, dict]:
    """(sentence, English translation) pairs of the configured bitext, kind ``translation``; the
    guard's languages and texts, ``exclude_languages`` and repeated pairs are left out and counted."""
    from tasks.bitext import read_tatoeba

    guard = guard or EvaluationGuard()
    rows: list[dict] = []
    stats: Counter = Counter()
    seen: set[tuple[str, str]] = set()
    for d, langs in _bitext_specs(config.translation, base_dir):
        for lang in langs:
            if lang in guard.languages:
                stats["skipped:evaluated_language"] += 1
                continue
            if lang in config.exclude_languages:
                stats["skipped:excluded_language"] += 1
                continue
            kept = []
            for i, (src, eng) in enumerate(zip(*read_tatoeba(d, lang), strict=True)):
                src, eng = src.strip(), eng.strip()
                if not src or not eng:
                    stats["skipped:empty"] += 1
                elif guard.overlaps(src, eng):
                    stats["skipped:evaluation_text"] += 1
                elif (src, eng) in seen:
                    stats["skipped:repeated"] += 1
                else:
                    seen.add((src, eng))
                    kept.append(
                        {
                            "query": src,
                            "positive": eng,
                            "lang": lang,
                            "kind": TRANSLATION,
                            "doc_id": f"tatoeba:{lang}:{i}",
                        }
                    )
            if config.max_pairs_per_language is not None and len(kept) > config.max_pairs_per_language:
                stats["skipped:over_language_cap"] += len(kept) - config.max_pairs_per_language
                kept = random.Random(f"{config.seed}:{lang}").sample(kept, config.max_pairs_per_language)
            stats["translation_languages"] += 1
            rows.extend(kept)
    stats["translation_pairs"] = len(rows)
    return pd.DataFrame(rows, columns=PAIR_COLUMNS), dict(stats)


def pretraining_pairs(
    corpus: pd.DataFrame, config: PairsConfig, base_dir: str | Path, guard: EvaluationGuard
) -> tuple[pd.DataFrame, dict]:
    """Title–body pairs of the training documents and translation pairs; any pair with a side the
    guard holds is dropped."""
    held = corpus["id"].map(guard.held_out).astype(bool) if len(corpus) else pd.Series([], dtype=bool)
    titles, stats = title_body_pairs(corpus[~held.to_numpy()], config)
    stats["docs"] = len(corpus)
    stats["skipped:held_out_document"] = int(held.sum())
    keep = [not guard.overlaps(q, p) for q, p in zip(titles["query"], titles["positive"], strict=True)]
    stats["skipped:evaluation_text"] = len(keep) - sum(keep)
    titles = titles[keep]
    stats["pairs"] = len(titles)
    if config.translation:
        bitext, more = translation_pairs(config, base_dir, guard)
        titles = pd.concat([titles, bitext], ignore_index=True)
        skipped = stats["skipped:evaluation_text"] + more.get("skipped:evaluation_text", 0)
        stats = {**more, **stats, "skipped:evaluation_text": skipped}
        stats["pairs"] = len(titles)
    stats["pairs_per_kind"] = titles["kind"].value_counts().to_dict()
    return titles.reset_index(drop=True), stats
