"""Contrastive pretraining pairs: title–body pairs of the corpus and translation pairs of bitext, with
nothing the profile evaluates on (its texts, its Tatoeba languages) ever trained on."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from pydantic import ValidationError

from tasks.pairs import PairsConfig, evaluation_guard, pretraining_pairs, translation_pairs

# Our own sentences, in LASER's Tatoeba layout: tatoeba.LANG-eng.LANG is line-aligned with .eng.
BITEXT = {
    "nld": [
        ("De kat slaapt op de bank.", "The cat sleeps on the sofa."),
        ("Wij gaan morgen naar de markt.", "We are going to the market tomorrow."),
        ("Het regent al de hele dag.", "It has been raining all day."),
        ("De kat slaapt op de bank.", "The cat sleeps on the sofa."),  # a repeated pair
        ("Zij leest een boek over sterren.", "She is reading a book about stars."),
    ],
    "fra": [
        ("Il pleut depuis ce matin.", "It has been raining all day."),
        ("Le train part à huit heures.", "The train leaves at eight."),
        ("Nous aimons la musique ancienne.", "We love early music."),
    ],
    "ita": [
        ("Il treno parte alle otto.", "The train leaves at eight."),
        ("La biblioteca chiude presto.", "The library closes early."),
    ],
}


def write_bitext(folder: Path, data: dict[str, list[tuple[str, str]]] = BITEXT) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for lang, pairs in data.items():
        (folder / f"tatoeba.{lang}-eng.{lang}").write_text(
            "".join(s + "\n" for s, _ in pairs), encoding="utf-8"
        )
        (folder / f"tatoeba.{lang}-eng.eng").write_text("".join(e + "\n" for _, e in pairs), encoding="utf-8")
    return folder


def test_translation_pairs_take_every_language_once_each(tmp_path):
    d = write_bitext(tmp_path / "bitext")
    pairs, stats = translation_pairs(PairsConfig(translation=[f"tatoeba:{d}"]), tmp_path)
    assert set(pairs["kind"]) == {"translation"}
    assert sorted(set(pairs["lang"])) == ["fra", "ita", "nld"]
    nld = pairs[pairs["lang"] == "nld"]
    assert list(nld["query"]).count("De kat slaapt op de bank.") == 1  # the repeated pair once
    assert stats["skipped:repeated"] == 1 and stats["translation_pairs"] == len(pairs) == 9
    row = nld.iloc[0]
    assert (row["query"], row["positive"], row["doc_id"]) == (*BITEXT["nld"][0], "tatoeba:nld:0")


def test_excluded_and_capped_languages(tmp_path):
    write_bitext(tmp_path / "bitext")
    cfg = PairsConfig(
        translation=["tatoeba:bitext:nld,ita"], exclude_languages=["ita"], max_pairs_per_language=2
    )
    pairs, stats = translation_pairs(cfg, tmp_path)  # a relative folder is read from base_dir
    assert set(pairs["lang"]) == {"nld"} and len(pairs) == 2
    assert stats["skipped:excluded_language"] == 1 and stats["skipped:over_language_cap"] == 2
    again, _ = translation_pairs(cfg, tmp_path)
    assert list(again["query"]) == list(pairs["query"])  # the sample is seeded


def test_nothing_evaluated_is_trained_on(tmp_path):
    """An evaluated Tatoeba language is left out whole, and a pair of another language whose English
    side is an evaluation text (here fra's "It has been raining all day.") is dropped too: Tatoeba's
    English sides repeat across languages, so training on them would leak the evaluation's targets."""
    d = write_bitext(tmp_path / "bitext")
    guard = evaluation_guard([f"tatoeba:{d}:fra"], tmp_path)
    assert guard.languages == {"fra"}
    pairs, stats = translation_pairs(PairsConfig(translation=[f"tatoeba:{d}"]), tmp_path, guard)
    assert "fra" not in set(pairs["lang"]) and stats["skipped:evaluated_language"] == 1
    assert "It has been raining all day." not in set(pairs["positive"])
    assert "The train leaves at eight." not in set(pairs["positive"])  # ita's copy of a fra target
    assert stats["skipped:evaluation_text"] == 2
    assert sorted(pairs["lang"]) == ["ita", "nld", "nld", "nld"]


def test_title_body_pairs_with_evaluation_text_are_dropped(tmp_path):
    d = write_bitext(tmp_path / "bitext")
    body = "A long body of text about rivers and the towns along them. " * 4
    corpus = pd.DataFrame(
        {
            "id": ["d1", "d2"],
            "title": ["The train leaves at eight.", "Rivers"],  # d1's title is an evaluation text
            "text": [body, body],
            "lang": ["en", "en"],
        }
    )
    cfg = PairsConfig(translation=[f"tatoeba:{d}:nld"])
    pairs, stats = pretraining_pairs(corpus, cfg, tmp_path, evaluation_guard([f"tatoeba:{d}:fra"], tmp_path))
    assert list(pairs[pairs["kind"] == "title-body"]["doc_id"]) == ["d2"]
    assert stats["pairs_per_kind"] == {"translation": 3, "title-body": 1}
    assert stats["skipped:evaluation_text"] == 1 + 1  # d1's title, nld's copy of a fra target


@pytest.mark.parametrize(
    "spec", ["xquad-r:../shared/data/xquad-r/en.json.gz", "tatoeba:", "tatoeba:DIR:deu:extra"]
)
def test_a_translation_spec_other_than_tatoeba_bitext_is_refused(spec):
    with pytest.raises(ValidationError, match="expected tatoeba:DIR"):
        PairsConfig(translation=[spec])


def test_a_missing_bitext_language_names_those_there(tmp_path):
    d = write_bitext(tmp_path / "bitext")
    with pytest.raises(FileNotFoundError, match="languages in .*: fra ita nld"):
        translation_pairs(PairsConfig(translation=[f"tatoeba:{d}:deu"]), tmp_path)


def test_held_out_documents_give_no_pair(tmp_path):
    """The held-out split is by document (the synthesize stage's ``split_of``): a held-out document's
    title and opening would otherwise be trained on as a pair, and its passages are what the held-out
    queries search."""
    from tasks.docsplit import split_of

    body = "A long body of text about rivers and the towns along them. " * 4
    ids = [f"doc{i}" for i in range(40)]
    corpus = pd.DataFrame({"id": ids, "title": ids, "text": [body] * 40, "lang": ["en"] * 40})
    guard = evaluation_guard([], tmp_path, heldout_fraction=0.3, split_seed=7)
    pairs, stats = pretraining_pairs(corpus, PairsConfig(), tmp_path, guard)
    train = [d for d in ids if split_of(d, 0.3, 7) == "train"]
    assert list(pairs["doc_id"]) == train and 0 < len(train) < 40
    assert stats["skipped:held_out_document"] == 40 - len(train) and stats["docs"] == 40
