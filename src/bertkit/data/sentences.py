"""Rule-based sentence splitting for corpora whose lines are paragraphs (`pretrain-data
--split-sentences`, `prepare-wiki`). Kept apart from wikipedia.py so that building records never
needs the wikitext parser.

A boundary is [.!?] (plus closing quotes/brackets) followed by whitespace and an upper-case letter,
digit or opening quote, unless the word before is a known abbreviation or a single initial; CJK
。！？ always end a sentence. It is a heuristic, not a trained segmenter (pysbd would be the
library to add for that).
"""

from __future__ import annotations

import re

ABBREVIATIONS = frozenset("""
mr mrs ms dr prof sr jr st mt ft vs etc e.g i.e cf al approx ca c no nos vol vols fig figs p pp
jan feb mar apr jun jul aug sep sept oct nov dec gen col lt sgt capt cmdr adm gov rep sen rev
inc ltd co corp bros dept est u.s u.k u.n a.d b.c op ed eds trans univ assn
brig bvt maj lieut pvt cpl hon messrs rt
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
