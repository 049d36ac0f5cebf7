"""Prompt templates per language for MultiLongDoc-style question synthesis.

The M3 paper (arXiv 2402.03216, section 3, "MultiLongDoc") samples paragraphs of long articles and
has GPT-3.5 write questions about them. The instructions are written in the document's language
where we have a template (models answer in the language they are addressed in far more reliably
than when told to switch), and fall back to English instructions that name the target language.
Every template asks for: N questions, in the document's language, answerable only from the passage,
self-contained (no "this passage"), not copying its sentences, and JSON ``{"questions": [...]}``.
"""

from __future__ import annotations

from dataclasses import dataclass

# ISO 639-1 -> English language name (for the fallback template and for logs).
LANGUAGE_NAMES = {
    "ar": "Arabic", "bn": "Bengali", "br": "Breton", "ca": "Catalan", "cs": "Czech", "da": "Danish",
    "de": "German", "el": "Greek", "en": "English", "eo": "Esperanto", "es": "Spanish", "fa": "Persian",
    "fi": "Finnish", "fr": "French", "gl": "Galician", "he": "Hebrew", "hi": "Hindi", "hu": "Hungarian",
    "hy": "Armenian", "id": "Indonesian", "it": "Italian", "ja": "Japanese", "kn": "Kannada",
    "ko": "Korean", "ltg": "Latgalian", "mr": "Marathi", "nl": "Dutch", "no": "Norwegian", "pl": "Polish",
    "pt": "Portuguese", "ro": "Romanian", "ru": "Russian", "sv": "Swedish", "sw": "Swahili",
    "te": "Telugu", "th": "Thai", "tr": "Turkish", "uk": "Ukrainian", "vi": "Vietnamese", "zh": "Chinese",
}  # fmt: skip


@dataclass(frozen=True)
class Template:
    system: str
    user: str  # placeholders: {n}, {title}, {passage}


_JSON_EN = 'Answer with JSON only, exactly of the form {{"questions": ["...", "..."]}}.'

_FALLBACK = Template(
    system="You write search questions for a multilingual retrieval benchmark.",
    user=(
        'Below is a passage from an article titled "{title}".\n\n'
        "Write {n} different questions in {language} that a reader could answer using only this "
        'passage. Each question must make sense on its own (name the subject; never say "the '
        'passage" or "the text"), must be written in {language}, and must not copy a sentence '
        "of the passage: paraphrase.\n" + _JSON_EN + "\n\nPassage:\n{passage}"
    ),
)

TEMPLATES: dict[str, Template] = {
    "en": Template(
        system="You write search questions for a retrieval benchmark.",
        user=(
            'Below is a passage from an article titled "{title}".\n\n'
            "Write {n} different questions in English that a reader could answer using only this "
            'passage. Each question must make sense on its own (name the subject; never say "the '
            'passage" or "the text") and must not copy a sentence of the passage: paraphrase.\n'
            + _JSON_EN
            + "\n\nPassage:\n{passage}"
        ),
    ),
    "de": Template(
        system="Du schreibst Suchfragen für einen Retrieval-Benchmark.",
        user=(
            "Unten steht ein Abschnitt aus dem Artikel „{title}“.\n\n"
            "Schreibe {n} verschiedene Fragen auf Deutsch, die sich nur mit diesem Abschnitt "
            "beantworten lassen. Jede Frage muss für sich allein verständlich sein (nenne das Thema; "
            "schreibe nie „der Abschnitt“ oder „der Text“) und darf keinen Satz des Abschnitts "
            "abschreiben: formuliere um.\n"
            'Antworte nur mit JSON genau in der Form {{"questions": ["...", "..."]}}.\n\n'
            "Abschnitt:\n{passage}"
        ),
    ),
    "fr": Template(
        system="Tu rédiges des questions de recherche pour un banc d'essai de recherche d'information.",
        user=(
            "Voici un passage de l'article « {title} ».\n\n"
            "Écris {n} questions différentes en français auxquelles on peut répondre uniquement à "
            "l'aide de ce passage. Chaque question doit se comprendre seule (nomme le sujet ; "
            "n'écris jamais « le passage » ou « le texte ») et ne doit pas recopier une phrase du "
            "passage : reformule.\n"
            'Réponds uniquement en JSON, exactement sous la forme {{"questions": ["...", "..."]}}.\n\n'
            "Passage :\n{passage}"
        ),
    ),
    "es": Template(
        system="Escribes preguntas de búsqueda para un banco de pruebas de recuperación de información.",
        user=(
            "A continuación hay un pasaje del artículo «{title}».\n\n"
            "Escribe {n} preguntas distintas en español que se puedan responder solo con este pasaje. "
            "Cada pregunta debe entenderse por sí sola (nombra el tema; nunca digas «el pasaje» ni «el "
            "texto») y no debe copiar una oración del pasaje: parafrasea.\n"
            'Responde solo con JSON, exactamente con la forma {{"questions": ["...", "..."]}}.\n\n'
            "Pasaje:\n{passage}"
        ),
    ),
    "ru": Template(
        system="Ты составляешь поисковые вопросы для набора данных по информационному поиску.",
        user=(
            "Ниже приведён фрагмент статьи «{title}».\n\n"
            "Составь {n} разных вопросов на русском языке, на которые можно ответить только с помощью "
            "этого фрагмента. Каждый вопрос должен быть понятен сам по себе (называй предмет; не пиши "
            "«фрагмент» или «текст») и не должен повторять предложение фрагмента дословно: "
            "перефразируй.\n"
            'Ответь только JSON ровно в виде {{"questions": ["...", "..."]}}.\n\nФрагмент:\n{passage}'
        ),
    ),
    "ja": Template(
        system="あなたは検索評価用データセットのための質問を作成します。",
        user=(
            "以下は記事「{title}」の一節です。\n\n"
            "この一節だけを読めば答えられる、異なる質問を日本語で{n}個作成してください。各質問は単独で"
            "意味が通じるようにし（主題を明示し、「この文章」「本文」などと書かないこと）、一節の文を"
            "そのまま写さず言い換えてください。\n"
            '次の形式のJSONのみで答えてください: {{"questions": ["...", "..."]}}\n\n一節:\n{passage}'
        ),
    ),
    "zh": Template(
        system="你为检索评测数据集编写搜索问题。",
        user=(
            "以下是文章《{title}》中的一段。\n\n"
            "请用中文写出{n}个不同的问题，这些问题只凭这段文字就能回答。每个问题都要能单独理解"
            "（写明主题，不要说“这段文字”或“本文”），并且不要照抄原文的句子，要改写。\n"
            '只用JSON回答，格式必须是 {{"questions": ["...", "..."]}}。\n\n段落：\n{passage}'
        ),
    ),
    "ko": Template(
        system="당신은 검색 평가용 데이터셋의 질문을 작성합니다.",
        user=(
            "다음은 「{title}」 문서의 한 단락입니다.\n\n"
            "이 단락만으로 답할 수 있는 서로 다른 질문 {n}개를 한국어로 작성하세요. 각 질문은 그 자체로 "
            '이해될 수 있어야 하며(주제를 명시하고 "이 단락", "본문" 같은 말을 쓰지 마세요), 단락의 '
            "문장을 그대로 베끼지 말고 바꾸어 쓰세요.\n"
            '다음 형식의 JSON으로만 답하세요: {{"questions": ["...", "..."]}}\n\n단락:\n{passage}'
        ),
    ),
    "ar": Template(
        system="أنت تكتب أسئلة بحث لمجموعة بيانات لتقييم الاسترجاع.",
        user=(
            "فيما يلي مقطع من مقالة بعنوان «{title}».\n\n"
            "اكتب {n} أسئلة مختلفة باللغة العربية يمكن الإجابة عنها من هذا المقطع وحده. يجب أن يكون كل سؤال "
            "مفهومًا بمفرده (اذكر الموضوع، ولا تقل «المقطع» أو «النص») "
            "وألا ينسخ جملة من المقطع: أعد الصياغة.\n"
            'أجب بصيغة JSON فقط، بالشكل {{"questions": ["...", "..."]}} تمامًا.\n\nالمقطع:\n{passage}'
        ),
    ),
}


def build_messages(lang: str, title: str, passage: str, n: int) -> list[dict[str, str]]:
    """The chat messages for one passage (deterministic: the cache key is derived from them)."""
    template = TEMPLATES.get(lang)
    if template is None:
        language = LANGUAGE_NAMES.get(lang, lang)
        user = _FALLBACK.user.format(n=n, title=title, passage=passage, language=language)
        system = _FALLBACK.system
    else:
        user = template.user.format(n=n, title=title, passage=passage)
        system = template.system
    return [{"role": "system", "content": system}, {"role": "user", "content": user}]


def output_schema() -> dict:
    """JSON schema of a reply, as sent for structured outputs (strict mode allows no bounds on
    array length, so the count is checked by the parser instead)."""
    return {
        "type": "object",
        "properties": {"questions": {"type": "array", "items": {"type": "string"}}},
        "required": ["questions"],
        "additionalProperties": False,
    }
