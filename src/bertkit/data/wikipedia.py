"""Wikipedia XML dump -> one sentence per line, a blank line between articles (`bertkit prepare-wiki`).

No maintained wikitext parser is installed (mwparserfromhell would be the one to add), so this is
a careful streaming extractor of our own:
- `xml.etree.ElementTree.iterparse` over the (.bz2) stream, clearing each page after use, so memory
  does not grow with the dump;
- pages outside the article namespace (ns != 0) and redirects are skipped;
- markup removed: comments, <ref>s and other non-prose tags (math, gallery, timeline, ...),
  templates `{{...}}` and tables `{|...|}` (nested), files/images/categories/interwiki links,
  `[[target|text]]` -> text, `[url text]` -> text, bold/italics, headings, lists, and everything
  after "See also"/"References"/"External links"-type sections;
- sentences split by a rule-based splitter (`split_sentences`): a boundary is [.!?] (plus closing
  quotes/brackets) followed by whitespace and an upper-case letter, digit or opening quote, unless
  the word before is a known abbreviation or a single initial; CJK 。！？ always end a sentence.
  It is a heuristic, not a trained segmenter (pysbd would be the library to add for that).
"""

from __future__ import annotations

import bz2
import gzip
import html
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Iterator

from bertkit.tasks.base import DataError

ABBREVIATIONS = frozenset("""
mr mrs ms dr prof sr jr st mt ft vs etc e.g i.e cf al approx ca c no nos vol vols fig figs p pp
jan feb mar apr jun jul aug sep sept oct nov dec gen col lt sgt capt cmdr adm gov rep sen rev
inc ltd co corp bros dept est u.s u.k u.n a.d b.c op ed eds trans univ assn
""".split())
_BOUNDARY = re.compile(r"""([.!?]+["'”’)\]]*)\s+(?=["'“‘(\[]?[A-Z0-9À-ÖØ-Þ])""")
_CJK_BOUNDARY = re.compile(r"(?<=[。！？])")


def split_sentences(text: str) -> list[str]:
    """Rule-based sentence splitter (see the module doc). Returns stripped non-empty sentences."""
    text = " ".join(text.split())
    if not text:
        return []
    out: list[str] = []
    start = 0
    for m in _BOUNDARY.finditer(text):
        before = text[start:m.start()].rsplit(" ", 1)[-1].lower().lstrip("(\"'")
        if m.group(1).startswith(".") and (before in ABBREVIATIONS or (len(before) == 1 and before.isalpha())):
            continue
        out.append(text[start:m.end(1)])
        start = m.end()
    out.append(text[start:])
    return [s.strip() for part in out for s in _CJK_BOUNDARY.split(part) if s.strip()]


# ---- wikitext -> plain text ---------------------------------------------------------------------
_COMMENT = re.compile(r"<!--.*?(-->|$)", re.S)
_DROP_TAGS = "ref|math|gallery|timeline|score|graph|chem|ce|hiero|imagemap|syntaxhighlight|source|pre|mapframe|templatedata|references"
_DROP_ELEMENT = re.compile(rf"<({_DROP_TAGS})\b[^>]*?/>|<({_DROP_TAGS})\b[^>]*>.*?</\2\s*>", re.S | re.I)
_TAG = re.compile(r"</?[a-zA-Z][^>]*>")
_LINK = re.compile(r"\[\[([^\[\]]*)\]\]")
_EXT_LINK = re.compile(r"\[(?:https?:|ftp:|//)[^\s\]]*\s*([^\]]*)\]")
_BOLD_ITALIC = re.compile(r"'{2,}")
_MAGIC = re.compile(r"__[A-Z]+__")
_HEADING = re.compile(r"^(=+)\s*(.*?)\s*\1\s*$")
_NON_ARTICLE_LINK = ("file", "image", "category", "media", "wikipedia", "wp", "template", "help",
                     "portal", "special", "user", "talk", "wikt", "wiktionary", "s", "commons")
_END_SECTIONS = frozenset(["see also", "references", "external links", "further reading", "notes",
                           "bibliography", "sources", "footnotes", "notes and references", "citations"])
_EMPTY_PARENS = re.compile(r"\(\s*[,;:]?\s*\)")


def _remove_nested(text: str, open_s: str, close_s: str) -> str:
    """Remove `open_s ... close_s` regions, nesting respected (templates, tables); an unclosed
    region runs to the end of the text, as MediaWiki renders it."""
    out: list[str] = []
    depth = 0
    i = 0
    last = 0
    n_open, n_close = len(open_s), len(close_s)
    while i < len(text):
        if text.startswith(open_s, i):
            if depth == 0:
                out.append(text[last:i])
            depth += 1
            i += n_open
        elif depth and text.startswith(close_s, i):
            depth -= 1
            i += n_close
            if depth == 0:
                last = i
        else:
            i += 1
    if depth == 0:
        out.append(text[last:])
    return "".join(out)


_MEDIA_LINK_START = re.compile(r"\[\[\s*(?:file|image|media|category)\s*:", re.I)


def _remove_media_links(text: str) -> str:
    """Drop [[File:...]]/[[Image:...]]/[[Category:...]] whole. Their captions hold links and stray
    single brackets ("[above]"), which defeat the innermost-link regex, so count [[ ]] depth."""
    out: list[str] = []
    last = 0
    while (m := _MEDIA_LINK_START.search(text, last)) is not None:
        out.append(text[last:m.start()])
        depth, i = 1, m.end()
        while i < len(text) and depth:
            if text.startswith("[[", i):
                depth, i = depth + 1, i + 2
            elif text.startswith("]]", i):
                depth, i = depth - 1, i + 2
            else:
                i += 1
        last = i
    out.append(text[last:])
    return "".join(out)


def _link_text(m: re.Match[str]) -> str:
    inner = m.group(1)
    target, _, label = inner.partition("|")
    prefix = target.split(":", 1)[0].strip().lower() if ":" in target else ""
    # Files, categories and interlanguage links ("de:Artikel") are not prose.
    if prefix in _NON_ARTICLE_LINK or (prefix and len(prefix) <= 3 and prefix.isalpha() and "|" not in inner):
        return ""
    if label:
        return label.rsplit("|", 1)[-1]
    return target.lstrip(":")


def wikitext_to_paragraphs(wikitext: str) -> list[str]:
    """Plain-text paragraphs of an article (headings, lists, tables and trailing sections dropped)."""
    text = _COMMENT.sub("", wikitext)
    text = _DROP_ELEMENT.sub("", text)
    text = _remove_nested(text, "{{", "}}")
    text = _remove_nested(text, "{|", "|}")
    text = _remove_media_links(text)
    # Innermost links first, so that a link inside a file caption goes with its file link.
    while True:
        new = _LINK.sub(_link_text, text)
        if new == text:
            break
        text = new
    text = _EXT_LINK.sub(r"\1", text)
    text = _TAG.sub("", text)
    text = _BOLD_ITALIC.sub("", text)
    text = _MAGIC.sub("", text)
    text = html.unescape(text).replace("\u00a0", " ")
    paragraphs: list[str] = []
    current: list[str] = []
    for raw in text.split("\n"):
        line = raw.strip()
        heading = _HEADING.match(line)
        if heading:
            if heading.group(2).strip().lower() in _END_SECTIONS:
                break
        if not line or heading or line[0] in "*#;:|!{}" or line.startswith("----"):
            if current:
                paragraphs.append(" ".join(current))
                current = []
            continue
        current.append(line)
    if current:
        paragraphs.append(" ".join(current))
    cleaned = []
    for p in paragraphs:
        p = _EMPTY_PARENS.sub("", p)
        p = re.sub(r"\s+([,.;:])", r"\1", " ".join(p.split()))
        if len(p.split()) >= 3:  # stray fragments ("thumb", leftover labels) are not prose
            cleaned.append(p)
    return cleaned


# ---- the dump -----------------------------------------------------------------------------------
@dataclass
class WikiStats:
    pages: int = 0
    articles: int = 0  # written
    redirects: int = 0
    other_namespaces: int = 0
    empty: int = 0  # articles with no prose left after cleaning
    sentences: int = 0


def _open_dump(path: Path) -> IO[bytes]:
    if path.suffix == ".bz2":
        return bz2.open(path, "rb")  # type: ignore[return-value]
    if path.suffix == ".gz":
        return gzip.open(path, "rb")  # type: ignore[return-value]
    return open(path, "rb")


def iter_articles(path: str | Path, stats: WikiStats | None = None) -> Iterator[tuple[str, list[str]]]:
    """(title, sentences) for every article page of the dump, streamed."""
    path = Path(path)
    stats = stats if stats is not None else WikiStats()
    with _open_dump(path) as f:
        context = ET.iterparse(f, events=("start", "end"))
        root = None
        try:
            for event, elem in context:
                if root is None:
                    root = elem
                    if elem.tag.rsplit("}", 1)[-1] != "mediawiki":
                        raise DataError(f"{path}: root element <{elem.tag}> is not <mediawiki>; expected a "
                                        f"Wikipedia XML export (pages-articles dump)")
                if event != "end" or elem.tag.rsplit("}", 1)[-1] != "page":
                    continue
                stats.pages += 1
                fields = {child.tag.rsplit("}", 1)[-1]: child for child in elem}
                title = (fields["title"].text or "") if "title" in fields else ""
                ns = (fields["ns"].text or "0").strip() if "ns" in fields else "0"
                revision = fields.get("revision")
                text_el = None
                if revision is not None:
                    text_el = next((c for c in revision if c.tag.rsplit("}", 1)[-1] == "text"), None)
                wikitext = (text_el.text or "") if text_el is not None else ""
                if ns != "0":
                    stats.other_namespaces += 1
                elif "redirect" in fields or wikitext.lstrip()[:9].upper() == "#REDIRECT":
                    stats.redirects += 1
                else:
                    sentences = [s for p in wikitext_to_paragraphs(wikitext) for s in split_sentences(p)]
                    if sentences:
                        stats.articles += 1
                        stats.sentences += len(sentences)
                        yield title, sentences
                    else:
                        stats.empty += 1
                root.clear()  # drop finished pages: memory stays flat over a multi-GB dump
        except ET.ParseError as err:
            line, col = err.position
            raise DataError(f"{path}:{line}: malformed XML at column {col} ({err.msg if hasattr(err, 'msg') else err})") from None
        except (OSError, EOFError) as err:
            raise DataError(f"{path}: cannot read the dump ({err}); is it a complete .xml/.bz2 file?") from None


def prepare_wiki(dump: str | Path, output: str | Path) -> WikiStats:
    """Write the dump's articles as one sentence per line with a blank line between articles."""
    stats = WikiStats()
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(output.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as out:
        first = True
        for _, sentences in iter_articles(dump, stats):
            if not first:
                out.write("\n")
            out.write("\n".join(sentences) + "\n")
            first = False
    tmp.replace(output)
    return stats
