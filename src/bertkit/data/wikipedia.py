"""Wikipedia XML dump -> one sentence per line, a blank line between articles (`bertkit prepare-wiki`).

- `xml.etree.ElementTree.iterparse` over the (.bz2) stream, clearing each page after use, so memory
  does not grow with the dump; pages outside the article namespace (ns != 0) and redirects are skipped.
- Markup is removed by wikitextparser (maintained; `parse(text).plain_text()`, one page at a time):
  comments, templates, parser functions, tags, bold/italics, wikilinks -> their text, external links
  -> their label, HTML entities, and tables (`replace_tables=` a function returning "", instead of
  its cell dump). Our own rules remain only where plain_text() keeps what is not prose, each seen on
  the real dump: the contents of <ref>, <math>, <gallery>, ... (it keeps a tag's contents);
  File:/Image:/Category: links (it knows a file only by its extension, and writes "Category:X" out)
  and unlabelled interwiki/interlanguage links ("de:Artikel"); unbalanced '' / ''' runs; __MAGIC__
  words. Inline templates that display their text ({{lang|grc|...}}, {{transl|...}}, {{nowrap|...}})
  give their last argument instead of nothing. Then, line by line: headings, list items and leftover
  table-row lines are dropped, and so is everything from a "See also"/"References"-type section on.
  Measured on the shared dump (105 articles): the hand-written regex stripper this replaces gave
  18,045 sentences / 401,525 words; this gives 18,043 / 401,825. No article loses a word; 33 gain
  some ([[wikt:...|label]] labels, {{lang}} text, {{nowrap}} numbers the regexes dropped). Lines
  holding {{ }} [[ ]] | '' <ref or &nbsp; are the same 3 (two quote "|" as prose, one "|" is in the
  source). The dump takes 3.6-4.2 s against 1.8-2.2 s before. (mwparserfromhell's strip_code,
  tried first, gave 17,952 sentences: text after malformed tables was lost.)
- {{quote}} blocks are kept as a paragraph (as <blockquote> is); {{as of}}, {{Nihongo}}, {{e}}, {{frac}} and
  the one-character templates ({{ndash}}, {{nbsp}}, {{'s}}, ...) give what they print, not a hole.
- {{convert}} and {{val}} give their value and input unit ("9,833,520 km2"); disambiguation pages
  are skipped and counted like redirects; separators left by removed templates ("Achilles (;,
  Akhilleus, )") are cleaned, and sentences of fewer than 2 words ("Thus.") dropped.
- Sentences are split by the rule-based splitter of `bertkit.data.sentences` (see its module doc).
"""

from __future__ import annotations

import bz2
import gzip
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Iterator

import wikitextparser as wtp

from bertkit.cli import sigterm_unwinds  # SIGTERM unwinds, so OUTPUT.tmp is removed
from bertkit.data.sentences import split_sentences  # noqa: F401 - part of this module's interface
from bertkit.tasks.base import DataError

# ---- wikitext -> plain text ---------------------------------------------------------------------
# Elements whose contents are not prose; plain_text() keeps a tag's contents (<ref>'s included).
_DROP_TAGS = frozenset("ref math gallery timeline score graph chem ce hiero imagemap syntaxhighlight source "
                       "pre mapframe templatedata references".split())
# Links that are not prose. plain_text() recognises a file link only by its extension, and writes
# "Category:X" or an interlanguage link "de:Artikel" out as text.
_MEDIA_NAMESPACES = frozenset(["file", "image", "media", "category"])
_INTERWIKI = frozenset(["wikipedia", "wp", "template", "help", "portal", "special", "user", "talk", "wikt",
                        "wiktionary", "s", "commons"])
# Inline templates that display their last argument as running text ({{lang|grc|ἀναρχία}},
# {{nowrap|29° N}}); plain_text() drops every template, which left holes in sentences.
_TEXT_TEMPLATES = frozenset(["lang", "transl", "transliteration", "nowrap", "nobr", "small", "smaller"])
# Quantities: {{convert|9,833,520|km2|sqmi}} in "the United States with {{convert...}} of total area"
# (436 in the shared dump) and {{val|6.241|e=18}} (10); dropping them left "with of total area".
_VALUE_TEMPLATES = frozenset(["convert", "cvt", "val"])
# {{e|24}} (3 in the shared dump) and {{frac|3}}/{{sfrac|1|4}} (9) print a number too; dropped, they
# left "The mass of the Earth is approximately 5.98 kg" and "the angle of cos−1(−) ≈ 109.47°".
_NUMBER_TEMPLATES = frozenset(["e", "frac", "sfrac"])
# {{as of|2011}} prints "As of 2011" (30 in the shared dump); dropped, it left sentences that begin
# ", 50.7% of Alaska's population ..." and "diagnosed with ASD, a 30% increase" without their year.
_MONTHS = ("January February March April May June July August September October November December").split()
_DIGIT_BEFORE_FRACTION = re.compile(r"(\d)(?=\{\{\s*s?frac\s*\|)", re.I)  # "1{{sfrac|1|4}}" is "1 1/4", not "11/4"
# Templates that print one character between words or digits: dropped, they glued them together,
# "(1775{{ndash}}1783)" -> "(17751783)", "15{{nbsp}}September" -> "15September", "''Eagle''{{'s}}
# footpads" -> "Eagle footpads" (31 in the shared dump).
_CHARACTER_TEMPLATES = {"nbsp": "\u00a0", "ndash": "–", "mdash": "—", "mdashb": "—", "snd": " – ", "snds": " – ",
                        "spaced ndash": " – ", "spaced en dash": " – ", "spaced mdash": " — ", "'s": "'s", "'": "'",
                        "' \"": "'\"", "\" '": "\"'"}
# Block quotations: plain_text() keeps a <blockquote>'s text but dropped the same quotation written as
# {{quote|...}} (34 in the shared dump, about 3,600 words: Lincoln's letters, Swift, Schopenhauer). The
# text is text=/quote= or the first argument; the author and source after it are not prose.
_QUOTE_TEMPLATES = frozenset(["quote", "quotation", "blockquote", "cquote", "quote box", "bq"])
# {{Nihongo|English|kanji|romaji}} prints "English (kanji, romaji)"; dropped, 46 Japanese terms of Aikido
# went with their English words ("is a modern Japanese martial art", "refers to the act of receiving").
_NIHONGO_TEMPLATES = frozenset(["nihongo"])
_LEFTOVER_QUOTES = re.compile(r"'{2,}")  # an unbalanced bold/italic run, which plain_text() keeps
_MAGIC = re.compile(r"__[A-Z]+__")
_HEADING = re.compile(r"^(=+)\s*(.*?)\s*\1\s*$")
_END_SECTIONS = frozenset(["see also", "references", "external links", "further reading", "notes",
                           "bibliography", "sources", "footnotes", "notes and references", "citations"])
_EMPTY_PARENS = re.compile(r"\(\s*[,;:]?\s*\)")
# What a removed pronunciation/{{lang}}/<math> leaves of its separators: "Achilles (;, Akhilleus, )",
# "Rosenbaum,; – March", "such as,,, and", "Thus,." (53 lines of the shared dump's output).
_SEPARATORS_AFTER_OPEN = re.compile(r"\((?:\s*[,;:])*\s*")
_SEPARATORS_BEFORE_CLOSE = re.compile(r"(?:\s*[,;:])*\s*\)")
_COMMA_RUN = re.compile(r",(?:\s*,)*\s*([,;:]|\.(?!\.))")  # ",." -> "." but ",..." (an elision) stays


def _is_non_prose_link(link: wtp.WikiLink) -> bool:
    target = link.title.strip()
    if target.startswith(":") or ":" not in target:
        return False
    prefix = target.split(":", 1)[0].strip().lower()
    if prefix in _MEDIA_NAMESPACES:
        return True
    # [[wikt:pro forma|pro-forma]] reads as prose; an unlabelled [[de:Artikel]] or [[wikt:word]] does not.
    return link.text is None and (prefix in _INTERWIKI or (len(prefix) <= 3 and prefix.isalpha()))


# {{convert}} input-unit codes written out as Wikipedia abbreviates them (abbr=on), in plain
# characters; a code not listed here is written as it stands ("km", "mm", "ft/s").
_UNIT_TEXT = {
    "sqmi": "sq mi", "sqft": "sq ft", "sqin": "sq in", "sqyd": "sq yd", "acre": "acres", "cuft": "cu ft",
    "ft3": "cu ft", "cuin": "cu in", "cuyd": "cu yd", "USgal": "US gal", "impgal": "imp gal", "l": "L",
    "C": "°C", "F": "°F", "C-change": "°C", "F-change": "°F", "K-change": "K", "oilbbl": "bbl",
    "LT": "long tons", "ST": "short tons", "MT": "tonnes", "carat": "carats", "PD/sqmi": "per sq mi",
    "PD/km2": "per km2", "PD/ha": "per ha", "PD/acre": "per acre", "nmi": "nmi", "kn": "knots",
}
_UNIT_MULTIPLIERS = {"e3": "thousand", "e6": "million", "e9": "billion", "e12": "trillion",
                     "k": "thousand", "M": "million", "G": "billion", "T": "trillion"}
# Only these codes take a one-letter multiplier (Moilbbl, Tcuft): "km" or "Gm" are units of their own.
_MULTIPLIED = re.compile(r"^(e3|e6|e9|e12|[kMGT](?=oilbbl|cuft|USgal|impgal|bbl|cum))(.+)$")
# {{convert|1|-|2|km}} is a range "1–2 km"; {{convert|6|ft|4|in}} is one length in two units.
_RANGE_WORDS = {"-": "–", "–": "–", "to": " to ", "to(-)": " to ", "and": " and ", "and(-)": " and ",
                "or": " or ", "by": " by ", "x": " × ", "+/-": " ± "}
_MIXED_UNITS = {"ft": "in", "lb": "oz", "st": "lb", "mi": "yd", "yd": "ft", "ch": "ft", "m": "cm"}
_NUMBER = re.compile(r"^[-+−]?[\d,]*\.?\d+(?:e[-+]?\d+)?$")


def _unit_text(code: str) -> str:
    if code in _UNIT_TEXT:
        return _UNIT_TEXT[code]
    multiplied = _MULTIPLIED.match(code)
    if multiplied:
        return f"{_UNIT_MULTIPLIERS[multiplied.group(1)]} {_unit_text(multiplied.group(2))}"
    if "/" in code:
        base, per = code.split("/", 1)
        return f"{_unit_text(base)}/{per}"
    return code


def _with_thousands(number: str) -> str:
    """As {{convert}} shows its input: "52419" -> "52,419" (digits grouped unless already)."""
    whole, dot, fraction = number.partition(".")
    sign = whole[:1] if whole[:1] in "-+−" else ""
    digits = whole[len(sign):]
    if "," in digits or not digits.isdigit():
        return number
    return f"{sign}{int(digits):,}{dot}{fraction}"


def _convert_text(values: list[str]) -> str | None:
    """{{convert|VALUE|UNIT|...}} as its value and input unit ({{convert|9,833,520|km2|sqmi}} ->
    "9,833,520 km2"): the converted figure only restates it. None when the arguments have no
    number first (the template is then dropped, as before)."""
    if len(values) < 2 or not _NUMBER.match(values[0]):
        return None
    text, i = _with_thousands(values[0]), 1
    while i + 1 < len(values) and values[i] in _RANGE_WORDS and _NUMBER.match(values[i + 1]):
        text += _RANGE_WORDS[values[i]] + _with_thousands(values[i + 1])
        i += 2
    if i >= len(values) or _NUMBER.match(values[i]):
        return None
    unit = values[i]
    text += f" {_unit_text(unit)}"
    if (i + 2 < len(values) and _MIXED_UNITS.get(unit) == values[i + 2] and _NUMBER.match(values[i + 1])):
        text += f" {values[i + 1]} {_unit_text(values[i + 2])}"
    return text


def _val_text(values: list[str], named: dict[str, str]) -> str | None:
    """{{val|6.241|e=18|u=C}} -> "6.241×10^18 C"; {{val|1.00794|0.00007}} -> "1.00794 ± 0.00007";
    {{val|1.00794|(7)}} -> "1.00794(7)"."""
    if not values:
        return None
    text = named.get("p", "") + values[0]
    if len(values) >= 3:
        text += f" +{values[1].lstrip('+')} −{values[2].lstrip('-−')}"
    elif len(values) == 2:
        text += values[1] if values[1].startswith("(") else f" ± {values[1]}"
    if named.get("e"):
        text += f"×10^{named['e']}"
    unit = named.get("u") or named.get("ul")
    if unit:
        text += f" {unit}"
    per = named.get("up") or named.get("upl")
    if per:
        text += f"/{per}"
    return text + named.get("s", "")


def _as_of_text(values: list[str], named: dict[str, str]) -> str | None:
    """{{as of|2013|6|8}} -> "As of 8 June 2013"; lc=y writes "as of", df=US "June 8, 2013", alt= replaces it."""
    if named.get("alt"):
        return named["alt"]
    if not values:
        return None
    year, month, day = (values + ["", ""])[:3]
    if month.isdigit() and 1 <= int(month) <= 12:
        month = _MONTHS[int(month) - 1]
    date = " ".join(p for p in (day, month, year) if p)
    if day and month and named.get("df", "").lower() == "us":
        date = f"{month} {day}, {year}"
    if named.get("bare", "").lower() in ("y", "yes"):
        return date
    text = f"{'since' if named.get('since') else 'as of'} {date}"
    return text if named.get("lc", "").lower() in ("y", "yes") else text[0].upper() + text[1:]


# Templates whose text is built from their arguments (read as plain text by _arguments).
_ARGUMENT_TEMPLATES = _QUOTE_TEMPLATES | _NIHONGO_TEMPLATES | _NUMBER_TEMPLATES | _VALUE_TEMPLATES | {"as of"}


def _arguments(template: wtp.Template) -> tuple[list[str], dict[str, str]]:
    """A template's positional and named arguments as plain text."""
    positional = [_plain_text(a.value).strip() for a in template.arguments if a.positional]
    named = {a.name.strip(): _plain_text(a.value).strip() for a in template.arguments if not a.positional}
    return positional, named


def _template_text(template: wtp.Template) -> str | None:
    """Replacement of a template in plain_text(): None (dropped) unless it displays running text."""
    name = template.normal_name().lower()
    if name in _CHARACTER_TEMPLATES:
        return _CHARACTER_TEMPLATES[name]
    if name in _TEXT_TEMPLATES:
        positional = [a for a in template.arguments if a.positional]
        return _plain_text(positional[-1].value) if positional else None
    if name not in _ARGUMENT_TEMPLATES:
        return None
    values, named = _arguments(template)
    if name in _QUOTE_TEMPLATES:
        quotation = named.get("text") or named.get("quote") or (values[0] if values else "")
        return f"\n\n{quotation}\n\n"  # a paragraph of its own, as the page shows it
    if name in _NIHONGO_TEMPLATES:
        english, kanji, romaji = (values + [""] * 3)[:3]
        if not english:  # {{nihongo||銃剣|jūken}} -> "jūken (銃剣)"
            english, romaji = romaji, ""
        inside = ", ".join(p for p in (kanji, romaji) if p)
        return f"{english} ({inside})" if english and inside else english or kanji or None
    if name == "as of":
        return _as_of_text(values, named)
    if name in _NUMBER_TEMPLATES:
        if not values:
            return None
        if name == "e":
            return f"×10^{values[0]}"  # as {{val|..|e=}} is written
        # {{frac|3}} = 1/3, {{frac|3|2}} = 3/2, {{frac|1|1|4}} = 1 1/4
        if len(values) == 1:
            return f"1/{values[0]}"
        return "/".join(values) if len(values) == 2 else f"{values[0]} {values[1]}/{values[2]}"
    return _convert_text(values) if name in ("convert", "cvt") else _val_text(values, named)


def _plain_text(wikitext: str) -> str:
    """wikitextparser's plain_text(), after blanking what it would keep but is not prose."""
    parsed = wtp.parse(_DIGIT_BEFORE_FRACTION.sub(r"\1 ", wikitext))
    drop = [t for t in parsed.get_tags() if t.name.lower() in _DROP_TAGS]
    drop += [w for w in parsed.wikilinks if _is_non_prose_link(w)]
    # Innermost (later-starting) first: blanking an inner element keeps the outer one's span valid.
    for element in sorted(drop, key=lambda e: e.span[0], reverse=True):
        element.string = ""
    return parsed.plain_text(replace_templates=_template_text, replace_tables=lambda table: "")


def wikitext_to_paragraphs(wikitext: str) -> list[str]:
    """Plain-text paragraphs of an article (headings, lists, tables and trailing sections dropped)."""
    text = _MAGIC.sub("", _LEFTOVER_QUOTES.sub("", _plain_text(wikitext))).replace("\u00a0", " ")
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
        p = _SEPARATORS_BEFORE_CLOSE.sub(")", _SEPARATORS_AFTER_OPEN.sub("(", p))
        p = _EMPTY_PARENS.sub("", _COMMA_RUN.sub(r"\1", p))
        p = re.sub(r"\s+([,.;:])", r"\1", " ".join(p.split()))
        if len(p.split()) >= 3:  # stray fragments ("thumb", leftover labels) are not prose
            cleaned.append(p)
    return cleaned


# ---- the dump -----------------------------------------------------------------------------------
# Disambiguation pages are lists of links ("Ada may refer to:" + one line per meaning), not prose;
# WikiExtractor-style pipelines skip them. The shared dump has 8 ({{disambiguation}} x7, {{geodis}}).
_DISAMBIGUATION_TEMPLATE = re.compile(
    r"\{\{\s*(?:disambig(?:uation)?|disamb|dab|dis|hndis|geodis|numberdis|letter-number combination "
    r"disambiguation|[\w -]+ disambiguation|set index(?: article)?|sia)\s*(?:\||\}\})", re.I)
_MAY_REFER_TO = re.compile(r"\bmay (?:also )?refer to:\s*$", re.M)
_MIN_SENTENCE_WORDS = 2  # "Thus." (a removed <math> formula) or "Symbolically:" are no sentences


def is_disambiguation(title: str, wikitext: str) -> bool:
    """A disambiguation (or set index) page: by its template, its "(disambiguation)" title, or a
    line ending in "may refer to:"."""
    return (title.rstrip().endswith("(disambiguation)") or bool(_DISAMBIGUATION_TEMPLATE.search(wikitext))
            or bool(_MAY_REFER_TO.search(wikitext)))


def _is_sentence(text: str) -> bool:
    return sum(any(c.isalnum() for c in word) for word in text.split()) >= _MIN_SENTENCE_WORDS


@dataclass
class WikiStats:
    pages: int = 0
    articles: int = 0  # written
    redirects: int = 0
    disambiguation: int = 0
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
                elif is_disambiguation(title, wikitext):
                    stats.disambiguation += 1
                else:
                    sentences = [s for p in wikitext_to_paragraphs(wikitext) for s in split_sentences(p)
                                 if _is_sentence(s)]
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
    """Write the dump's articles as one sentence per line with a blank line between articles.

    The text goes to OUTPUT.tmp, renamed to OUTPUT when complete; an error, Ctrl-C or SIGTERM
    removes it. SIGKILL cannot be caught: the next run truncates a stale OUTPUT.tmp it finds."""
    stats = WikiStats()
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(output.name + ".tmp")
    try:
        with sigterm_unwinds(), open(tmp, "w", encoding="utf-8") as out:
            first = True
            for _, sentences in iter_articles(dump, stats):
                if not first:
                    out.write("\n")
                out.write("\n".join(sentences) + "\n")
                first = False
    except BaseException:
        tmp.unlink(missing_ok=True)  # a truncated or malformed dump leaves no partial output
        raise
    tmp.replace(output)
    return stats
