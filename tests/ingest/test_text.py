from tasks.text import bm25_tokens, chunk_passages, join_sentences, split_sentences

SAMPLES = {
    "en": (
        "Dr. Smith moved to Washington in 2019. He arrived at 3.15 p.m. on Monday! "
        'Did J. R. R. Tolkien write "The Hobbit"? Yes.\nA new line starts here',
        [
            "Dr. Smith moved to Washington in 2019.",
            "He arrived at 3.15 p.m. on Monday!",
            'Did J. R. R. Tolkien write "The Hobbit"?',
            "Yes.",
            "A new line starts here",
        ],
    ),
    "zh": (
        "我们试试看！我该去睡觉了。你在干什么啊？他说“好的。”然后走了。",
        ["我们试试看！", "我该去睡觉了。", "你在干什么啊？", "他说“好的。”然后走了。"],
    ),
    "ja": (
        "言う価値のあることがなければ、しゃべるな。彼は手紙を書く。「本当？」と聞いた。東京タワーへ行こう！",
        [
            "言う価値のあることがなければ、しゃべるな。",
            "彼は手紙を書く。",
            "「本当？」と聞いた。",
            "東京タワーへ行こう！",
        ],
    ),
    "ko": (
        "저는 학생입니다. 학교에서 한국어를 공부해요! 정말요? 네.",
        ["저는 학생입니다.", "학교에서 한국어를 공부해요!", "정말요?", "네."],
    ),
    "ar": (
        "هل تتكلم العربية؟ نعم، أتكلم قليلاً. شكراً لك!",
        ["هل تتكلم العربية؟", "نعم، أتكلم قليلاً.", "شكراً لك!"],
    ),
    "hi": (
        "मेरे दादा ओसाका के हैं। भूल गयी? इस दवाई को हर छः घंटे लेना।",
        ["मेरे दादा ओसाका के हैं।", "भूल गयी?", "इस दवाई को हर छः घंटे लेना।"],
    ),
    "th": ("ฉันชอบกินข้าว วันนี้อากาศดีมาก", ["ฉันชอบกินข้าว", "วันนี้อากาศดีมาก"]),
    "de": (
        "Das ist z. B. ein Test. Er kam am 3. Mai an. Gut.",
        ["Das ist z. B. ein Test.", "Er kam am 3. Mai an.", "Gut."],
    ),
}


def test_split_sentences_per_language():
    for lang, (text, expected) in SAMPLES.items():
        assert split_sentences(text, lang) == expected, lang


def test_newlines_are_hard_breaks_and_blank_lines_vanish():
    assert split_sentences("title without stop\n\n  body line one\r\nbody two", "en") == [
        "title without stop",
        "body line one",
        "body two",
    ]
    assert split_sentences("", "en") == []
    assert split_sentences(" \n\t", "zh") == []


def test_no_split_inside_numbers_or_before_lower_case():
    assert split_sentences("Pi is 3.14159 and e is 2.718. That is all.", "en") == [
        "Pi is 3.14159 and e is 2.718.",
        "That is all.",
    ]
    assert split_sentences("Use e.g. this one. ok then.", "en") == ["Use e.g. this one. ok then."]


def test_join_sentences_round_trip():
    for lang in ("zh", "ja"):
        text, sentences = SAMPLES[lang]
        assert join_sentences(sentences) == text
    assert join_sentences(["One.", "Two."]) == "One. Two."


def test_chunk_passages_packs_whole_sentences():
    text = " ".join(f"Sentence number {i} is here." for i in range(40))
    chunks = chunk_passages(text, "en", max_chars=120)
    assert len(chunks) > 1
    assert all(len(c) <= 120 for c in chunks)
    # Nothing lost, nothing cut: re-splitting the chunks gives the original sentences in order.
    assert [s for c in chunks for s in split_sentences(c, "en")] == split_sentences(text, "en")
    # Greedy: no chunk could have taken the next chunk's first sentence.
    for a, b in zip(chunks, chunks[1:], strict=False):
        assert len(a + " " + split_sentences(b, "en")[0]) > 120


def test_chunk_passages_keeps_a_long_sentence_whole():
    long = "Word " * 200 + "end."
    chunks = chunk_passages(f"Short one. {long} Another short.", "en", max_chars=100)
    assert chunks == ["Short one.", long.strip(), "Another short."]


def test_chunk_passages_cjk_has_no_inserted_spaces():
    text, _ = SAMPLES["zh"]
    chunks = chunk_passages(text, "zh", max_chars=14)
    assert "".join(chunks) == text
    assert all(" " not in c for c in chunks)


def test_bm25_tokens_words_keep_combining_marks():
    # Devanagari vowel signs (Mc/Mn) stay inside words; `re`'s \w would split "हिन्दी" apart.
    assert bm25_tokens("हिन्दी भाषा में नमस्ते।", "hi") == ["हिन्दी", "भाषा", "में", "नमस्ते"]
    assert bm25_tokens("هل تتكلم العربية؟", "ar") == ["هل", "تتكلم", "العربية"]


def test_bm25_tokens_nfkc_and_lower_case():
    assert bm25_tokens("Ｔｏｋｙｏ２０２０ The CAFÉ", "en") == ["tokyo2020", "the", "café"]


def test_bm25_tokens_unsegmented_scripts_are_unigrams_plus_bigrams():
    assert bm25_tokens("东京塔", "zh") == ["东", "京", "塔", "东京", "京塔"]
    # The kana long-vowel mark (script Common) stays with its word.
    assert bm25_tokens("タワー", "ja") == ["タ", "ワ", "ー", "タワ", "ワー"]
    # Thai: grapheme clusters, so a vowel/tone mark never becomes a token of its own.
    toks = bm25_tokens("ที่นี่", "th")
    assert toks == ["ที่", "นี่", "ที่นี่"]
    # Mixed script inside one \w run: Latin word kept, Han part n-grammed.
    assert bm25_tokens("iPhone手机", "zh") == ["iphone", "手", "机", "手机"]


def test_bm25_tokens_korean_words_plus_bigrams():
    assert bm25_tokens("학교에서 공부", "ko") == ["학교에서", "학교", "교에", "에서", "공부"]
