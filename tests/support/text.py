"""Texts shared by the model and training tests: a small multilingual corpus (``corpus``, ``BASE``),
awkward inputs for tokenization (``TEXTS``), and learnable query/passage pairs (``PAIRS``)."""

from __future__ import annotations

import random

BASE = {
    "en": [
        "The river flows quietly through the old town.",
        "Scientists measured the temperature of the ocean.",
        "A small library opened next to the train station.",
        "Children played football in the park after school.",
        "The museum shows paintings from the last century.",
    ],
    "ko": [
        "강물이 오래된 마을을 조용히 흐른다.",
        "과학자들이 바다의 온도를 측정했다.",
        "기차역 옆에 작은 도서관이 문을 열었다.",
        "아이들이 방과 후에 공원에서 축구를 했다.",
        "박물관은 지난 세기의 그림을 보여준다.",
    ],
    "ja": [
        "川は古い町を静かに流れている。",
        "科学者たちは海の温度を測定した。",
        "駅の隣に小さな図書館が開館した。",
        "子供たちは放課後に公園でサッカーをした。",
        "博物館は前世紀の絵画を展示している。",
    ],
    "ar": [
        "يتدفق النهر بهدوء عبر المدينة القديمة.",
        "قاس العلماء درجة حرارة المحيط.",
        "افتتحت مكتبة صغيرة بجوار محطة القطار.",
        "لعب الأطفال كرة القدم في الحديقة بعد المدرسة.",
        "يعرض المتحف لوحات من القرن الماضي.",
    ],
    "de": [
        "Der Fluss fließt ruhig durch die Altstadt.",
        "Wissenschaftler haben die Temperatur des Ozeans gemessen.",
        "Neben dem Bahnhof wurde eine kleine Bibliothek eröffnet.",
        "Die Kinder spielten nach der Schule Fußball im Park.",
        "Das Museum zeigt Gemälde aus dem letzten Jahrhundert.",
    ],
}


def corpus() -> list[str]:
    """A few hundred lines: the base sentences plus shuffled recombinations within each language."""
    rng = random.Random(0)
    lines = [s for sents in BASE.values() for s in sents]
    for sents in BASE.values():
        words = [w for s in sents for w in s.split()]
        for _ in range(60):
            lines.append(" ".join(rng.choices(words, k=6)))
    return lines


TEXTS = [
    "The river flows quietly through the old town. The river flows.",
    "강물이",
    "科学者たちは海の温度を測定した。駅の隣に小さな図書館が開館した。子供たちは放課後に公園でサッカーをした。",
    "قاس العلماء درجة حرارة المحيط.",
    "Der Fluss",
    "",
]


# Pseudo-words drawn from four scripts: a query is one sentence of its paragraph (ICT-style), so the
# task is learnable from shared tokens in each language.
ALPHABETS = {
    "en": "abcdefghijklmnopqrstuvwxyz",
    "ko": "가나다라마바사아자차카타파하거너더러머버서어저처",
    "ja": "あいうえおかきくけこさしすせそたちつてとなにぬねの",
    "ar": "ابتثجحخدذرزسشصضطظعغفقكلمنهوي",
}


def make_pairs(n: int, seed: int = 0) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    lexicon = {
        lang: ["".join(rng.choice(a) for _ in range(rng.randint(2, 5))) for _ in range(300)]
        for lang, a in ALPHABETS.items()
    }
    pairs = []
    for k in range(n):
        words = lexicon[list(ALPHABETS)[k % len(ALPHABETS)]]
        sents = [" ".join(rng.choice(words) for _ in range(rng.randint(5, 8))) + "." for _ in range(3)]
        pairs.append((rng.choice(sents), " ".join(sents)))
    return pairs


PAIRS = make_pairs(256)
