"""Wikitext -> plain article text, with mwparserfromhell.

The goal is the text a reader sees: prose, list items, link labels and section headings (each on
its own line, so passage splitting can use them). Everything that is page furniture or
machine-readable is dropped: templates (infoboxes, navboxes, citation templates), tables, refs,
files/images with their captions, categories, interlanguage links, magic words, comments.
A few inline templates that wrap prose (``{{lang|..}}``, ``{{nowrap|..}}``) keep their text,
otherwise a sentence would lose its words.

mwparserfromhell leaves markup it cannot parse (unbalanced brackets, broken tables) as plain
text, so a regex pass afterwards removes whatever markup survived.
"""

from __future__ import annotations

import logging
import re
from abc import ABC, abstractmethod
from collections.abc import Iterable

import mwparserfromhell
from mwparserfromhell.nodes import (
    Comment,
    ExternalLink,
    Heading,
    HTMLEntity,
    Tag,
    Template,
    Text,
    Wikilink,
)
from mwparserfromhell.wikicode import Wikicode

from .clean import Substitutions, join_sections, substitute
from .render_limits import DEFAULT_PAGE_SECONDS, Budget

logger = logging.getLogger(__name__)

# Common names of the File (6), Media (-2) and Category (14) namespaces. The siteinfo of a dump
# adds its own localised names; this list covers bare <page> files that come without siteinfo.
_DROP_NAMESPACE_NAMES = {
    "en (canonical)": ["File", "Image", "Media", "Category"],
    "de": ["Datei", "Bild", "Kategorie"],
    "fr": ["Fichier", "Catégorie"],
    "es": ["Archivo", "Imagen", "Categoría"],
    "it": ["Immagine", "Categoria"],
    "pt, gl": ["Ficheiro", "Arquivo", "Imagem", "Imaxe"],
    "nl": ["Bestand", "Afbeelding", "Categorie"],
    "pl": ["Plik", "Grafika", "Kategoria"],
    "ca": ["Fitxer", "Imatge"],
    "eo": ["Dosiero", "Kategorio"],
    "br": ["Restr", "Skeudenn", "Rummad"],
    "sv, da, no": ["Fil", "Kategori"],
    "ru, uk, bg": ["Файл", "Изображение", "Категория", "Категорія", "Зображення", "Картинка"],
    "el": ["Αρχείο", "Εικόνα", "Κατηγορία"],
    "ja": ["ファイル", "画像", "カテゴリ"],
    "zh": ["文件", "檔案", "图像", "圖像", "分类", "分類"],
    "ko": ["파일", "그림", "분류"],
    "ar": ["ملف", "صورة", "تصنيف"],
}
DEFAULT_DROP_NAMESPACES = frozenset(n.casefold() for names in _DROP_NAMESPACE_NAMES.values() for n in names)

# Extension / HTML tags whose content is not article prose.
_DROP_TAGS = frozenset(
    {
        "ref", "references", "table", "gallery", "math", "chem", "ce", "syntaxhighlight", "source",
        "score", "timeline", "graph", "mapframe", "maplink", "imagemap", "templatestyles",
        "templatedata", "inputbox", "categorytree", "includeonly", "style", "script", "indicator",
        "section", "hiero", "charinsert",
    }
)  # fmt: skip
_BLOCK_TAGS = frozenset(
    {"p", "div", "blockquote", "center", "poem", "pre", "li", "dd", "dt", "ul", "ol", "dl", "h1", "h2", "h3",
     "h4", "h5", "h6"}
)  # fmt: skip
_BREAK_TAGS = frozenset({"br", "hr"})

# Inline templates that carry prose: name -> which positional parameter(s) to keep.
_KEEP_TEMPLATE_PARAMS: dict[str, tuple[int, ...]] = {
    "lang": (2,),
    "nowrap": (1,),
    "nobr": (1,),
    "nihongo": (1,),
    "ill": (1,),
    "interlanguage link": (1,),
    "convert": (1, 2),
    "cvt": (1, 2),
    "sic": (1,),
}

_INTERLANGUAGE = re.compile(r"^[a-z]{2,3}(?:-[a-z]+)*$|^simple$")
_MAGIC_WORD = re.compile(r"__[^\W_]\w*?__")

# Fallback patterns for markup mwparserfromhell could not parse.
_RE_TEMPLATE = re.compile(r"\{\{[^{}]*\}\}")
_RE_REF = re.compile(r"<ref\b[^>]*/>|<ref\b[^>]*>.*?</ref\s*>", re.IGNORECASE | re.DOTALL)
_RE_LINK = re.compile(r"\[\[([^\[\]]*)\]\]")
_RE_EXT_LINK = re.compile(r"\[(?:https?:)?//[^\s\]]+\s*([^\]]*)\]")
_RE_HTML_TAG = re.compile(r"</?[a-zA-Z][\w:-]*(?:[\s/][^<>]*)?>")
_RE_CUT_REF = re.compile(r"</?ref\b[^<>\n]*>?", re.IGNORECASE)  # a ref tag broken by a typo
_RE_STRAY = re.compile(r"\{\{|\}\}|\[\[|\]\]|\{\||\|\}|'{2,}")
_RE_TABLE_LINE = re.compile(r"^\s*(?:\{\||\|\}|\|-|\|\+)")
# The fallback's last steps, after links: external links keep their label, other markup goes.
_FALLBACK_MARKUP: Substitutions = (
    (_RE_EXT_LINK, r"\1"),
    (_RE_HTML_TAG, ""),
    (_RE_CUT_REF, ""),
    (_RE_STRAY, ""),
)


def _local_ns_prefix(title: str) -> str | None:
    """Namespace prefix of a link target (``File:x.jpg`` -> ``file``), None for a plain title."""
    if ":" not in title:
        return None
    return title.split(":", 1)[0].strip().replace("_", " ").casefold()


class BaseWikitextCleaner(ABC):
    """What every wikitext engine shares: ``drop_namespaces`` (added to
    :data:`DEFAULT_DROP_NAMESPACES`) are the link prefixes to drop, interlanguage links are dropped
    too, and empty wikitext is empty text. A page gets ``page_seconds`` to render (``self.budget``,
    checked by the engine between its steps); over it, or nested past MediaWiki's depth limit, the
    call raises :class:`~tasks.ingest.render_limits.RenderLimit` (the reader quarantines the page)."""

    def __init__(self, drop_namespaces: Iterable[str] = (), page_seconds: float = DEFAULT_PAGE_SECONDS):
        self.drop_namespaces = DEFAULT_DROP_NAMESPACES | {n.casefold() for n in drop_namespaces}
        self.page_seconds = page_seconds
        self.budget = Budget(page_seconds)

    def __call__(self, wikitext: str) -> str:
        """Return clean text; headings of sections left empty (e.g. "References") are dropped."""
        if not wikitext:
            return ""
        self.budget = Budget(self.page_seconds)  # one budget per page
        return self._clean(wikitext)

    @abstractmethod
    def _clean(self, wikitext: str) -> str:
        """Clean text of non-empty ``wikitext``."""

    def _drops_prefix(self, prefix: str) -> bool:
        """A link with this namespace prefix (casefolded) is dropped: a file, category or
        interlanguage link."""
        return prefix in self.drop_namespaces or bool(_INTERLANGUAGE.match(prefix))


class WikitextCleaner(BaseWikitextCleaner):
    """Render wikitext to plain text with mwparserfromhell, a regex pass where it fails."""

    def _clean(self, wikitext: str) -> str:
        try:
            code = mwparserfromhell.parse(wikitext)
        except Exception as exc:  # noqa: BLE001 - the parser is fallible on pathological input
            logger.debug("mwparserfromhell failed (%s); using the regex fallback", exc)
            return self._fallback(wikitext)
        self.budget.check("parsing")  # the parser itself (C) cannot be stopped midway

        # Split the top level at headings: (level, heading text, body text).
        sections: list[tuple[int, str, list[str]]] = [(0, "", [])]
        for node in code.nodes:
            self.budget.check("rendering")
            if isinstance(node, Heading):
                title = self._fallback("".join(self._render(node.title))).replace("\n", " ").strip()
                sections.append((node.level, title, []))
            else:
                sections[-1][2].extend(self._render_node(node))
        bodies = [self._fallback("".join(parts)) for _, _, parts in sections]

        return join_sections(
            [(lvl, title, body) for (lvl, title, _), body in zip(sections, bodies, strict=True)]
        )

    # -- rendering ----------------------------------------------------------------------------
    def _render(self, code: Wikicode | None) -> list[str]:
        out: list[str] = []
        if code is None:
            return out
        for node in code.nodes:
            out.extend(self._render_node(node))
        return out

    def _render_node(self, node) -> list[str]:
        if isinstance(node, Text):
            return [_MAGIC_WORD.sub("", str(node.value))]
        if isinstance(node, Wikilink):
            return self._render_link(node)
        if isinstance(node, ExternalLink):
            return self._render(node.title) if node.title is not None else []
        if isinstance(node, Template):
            return self._render_template(node)
        if isinstance(node, Tag):
            return self._render_tag(node)
        if isinstance(node, Heading):  # a heading nested in a tag: its own line
            return ["\n", *self._render(node.title), "\n"]
        if isinstance(node, HTMLEntity):
            try:
                return [node.normalize()]
            except (ValueError, OverflowError):
                return []
        if isinstance(node, Comment):
            return []
        return []  # Argument ({{{x}}}) and anything unknown

    def _render_link(self, node: Wikilink) -> list[str]:
        target = str(node.title).strip()
        if not target.startswith(":"):
            prefix = _local_ns_prefix(target)
            if prefix is not None and self._drops_prefix(prefix):
                return []
        if node.text is not None:
            label = self._render(node.text)
            if "".join(label).strip():
                return label
            # pipe trick: [[Paris (France)|]] shows "Paris"
            target = re.sub(r"\s*\([^)]*\)\s*$", "", target)
        target = target.lstrip(":")
        if "#" in target and not target.startswith("#"):
            target = target.split("#", 1)[0]
        return [target.lstrip("#").replace("_", " ")]

    def _render_template(self, node: Template) -> list[str]:
        name = str(node.name).strip().replace("_", " ").casefold()
        positions = _KEEP_TEMPLATE_PARAMS.get(name)
        if positions is None and name.startswith("lang-"):
            positions = (1,)
        if positions is None:
            return []
        out: list[str] = []
        for pos in positions:
            if node.has(str(pos)):
                if out:
                    out.append(" ")
                out.extend(self._render(node.get(str(pos)).value))
        return out

    def _render_tag(self, node: Tag) -> list[str]:
        name = str(node.tag).strip().casefold()
        if name in _DROP_TAGS:
            return []
        if name in _BREAK_TAGS:
            return ["\n"]
        if name == "nowiki":
            return [str(node.contents)] if node.contents is not None else []
        if node.contents is None or (node.wiki_markup and name in ("li", "dt", "dd")):
            return []  # list/indent markers (* # : ;) and empty tags; the item text follows
        inner = self._render(node.contents)
        if name in _BLOCK_TAGS:
            return ["\n", *inner, "\n"]
        return inner

    # -- fallback -----------------------------------------------------------------------------
    def _fallback(self, text: str) -> str:
        """Remove markup that survived parsing (or all markup, if parsing failed)."""
        if not any(c in text for c in "{}[]<'|"):
            return text
        text = _RE_REF.sub("", text)
        for _ in range(10):  # innermost templates first; nested ones need several passes
            text, n = _RE_TEMPLATE.subn("", text)
            if not n:
                break
        lines, depth = [], 0
        for line in text.split("\n"):
            stripped = line.lstrip()
            if stripped.startswith("{|"):
                depth += 1
            if depth == 0 and not _RE_TABLE_LINE.match(line):
                lines.append(line)
            if stripped.startswith("|}") and depth:
                depth -= 1
        text = "\n".join(lines)
        return substitute(text, ((_RE_LINK, self._fallback_link), *_FALLBACK_MARKUP))

    def _fallback_link(self, m: re.Match) -> str:
        target, _, label = m.group(1).partition("|")
        prefix = _local_ns_prefix(target)
        if not target.startswith(":") and prefix is not None and self._drops_prefix(prefix):
            return ""
        return (label.rsplit("|", 1)[-1] if label else target).lstrip(":")


def wikitext_to_text(wikitext: str, drop_namespaces: Iterable[str] = ()) -> str:
    """Convenience wrapper: render one page's wikitext (not yet whitespace-normalised)."""
    return WikitextCleaner(drop_namespaces)(wikitext)
