"""Rule-based sentence splitting for corpora whose lines are paragraphs (`pretrain-data
--split-sentences`, `prepare-wiki`). Kept apart from wikipedia.py so that building records never
needs the wikitext parser.

A boundary is [.!?] (plus closing quotes/brackets) followed by whitespace and an upper-case letter,
digit or opening quote, unless the word before is a known abbreviation or a single initial, or is
dotted initials ("R.S. Owens", "J.R.R. Tolkien", "U.S. Army") or a company suffix ("Inc.") and the
next word is not a usual sentence opener ("Washington, D.C. He ..." does end), or is an
enumeration index ("1. Lincoln; 2. Washington"); CJK 。！？ always end a sentence. It is a
heuristic, not a trained segmenter (pysbd would be the library to add for that).
"""

from __future__ import annotations

import re

ABBREVIATIONS = frozenset("""
mr mrs ms dr prof sr jr st mt ft vs e.g i.e cf al approx ca c no nos vol vols fig figs p pp
jan feb mar apr jun jul aug sep sept oct nov dec gen col lt sgt capt cmdr adm gov rep sen rev
inc ltd co corp bros dept est u.s u.k u.n a.d b.c op ed eds trans univ assn
brig bvt maj lieut pvt cpl hon messrs rt cir supp app
""".split())
# Words that may end a sentence as well as abbreviate ("Apple Inc. In 2001 he left."): a boundary
# only when the next word is a usual sentence opener. Dotted initials ("R.S.", "U.S.") get the
# same rule. "etc." is no abbreviation here: on the shared dump all 5 "etc. Capital" ended a sentence.
SENTENCE_FINAL_ABBREVIATIONS = frozenset("inc ltd co corp bros jr sr".split())
_NEVER_FINAL_INITIALS = frozenset(["e.g", "i.e"])
# Words that open most sentences; after dotted initials ("R.S. Owens" vs "Washington, D.C. He")
# they decide whether the period ends the sentence.
SENTENCE_OPENERS = frozenset("""
a an the he she it they we i you his her its their our my this that these those there here in on at
after before during when while however but and as one some many most for from by with although
though since following later then also both each other another no not what who which where if
because until today despite about
""".split())
_BOUNDARY = re.compile(r"""([.!?]+["'”’)\]]*)\s+(?=["'“‘(\[]?[A-Z0-9À-ÖØ-Þ])""")
_CJK_BOUNDARY = re.compile(r"(?<=[。！？])")
_DOTTED_INITIALS = re.compile(r"^(?:[a-z]\.)+[a-z]$")  # "r.s", "j.r.r", "d.c" (the final "." is the boundary's)
_LIST_INDEX = re.compile(r"^\d{1,2}$")
# A unit after a number is no initial or abbreviation: "the average elevation of Andorra is 1,996 m.
# These are ..." was one line (10 such joins in the shared dump's output: "m" 8, "ft" 1, "g" 1).
# Only before a capital: "6 ft. 4 in." goes on.
_UNITS = frozenset("m g s ft".split())
_NUMBER = re.compile(r"^\d[\d,.]*(?:[–-]\d[\d,.]*)?$")  # "1,996", "200–350"


def _is_list_index(text: str, m: re.Match, number: int) -> bool:
    """ "rated as 1. Lincoln; 2. George Washington; and 3. Franklin D. Roosevelt": a small number
    is an enumeration index, not a sentence end, when the number before or after it is also there."""
    return (re.search(rf"(?:^|\s){number - 1}\.\s", text[max(0, m.start() - 200):m.start()]) is not None
            or re.search(rf"\s{number + 1}\.\s", text[m.end() - 1:m.end() + 200]) is not None)


def _not_a_boundary(text: str, m: re.Match, start: int) -> bool:
    if not m.group(1).startswith("."):
        return False
    words = text[start:m.start()].rsplit(" ", 2)
    if (len(words) >= 2 and words[-1] in _UNITS and _NUMBER.match(words[-2])
            and text[m.end():m.end() + 1].isupper()):
        return False
    before = words[-1].lower().lstrip("(\"'")
    next_word = text[m.end():].split(" ", 1)[0].strip("\"'“‘([").lower()
    dotted = _DOTTED_INITIALS.match(before) and before not in _NEVER_FINAL_INITIALS
    if before in SENTENCE_FINAL_ABBREVIATIONS or dotted:
        return next_word not in SENTENCE_OPENERS
    if before in ABBREVIATIONS or (len(before) == 1 and before.isalpha()):
        return True
    return bool(_LIST_INDEX.match(before)) and m.group(1) == "." and _is_list_index(text, m, int(before))


def split_sentences(text: str) -> list[str]:
    """Rule-based sentence splitter (see the module doc). Returns stripped non-empty sentences."""
    text = " ".join(text.split())
    if not text:
        return []
    out: list[str] = []
    start = 0
    for m in _BOUNDARY.finditer(text):
        if _not_a_boundary(text, m, start):
            continue
        out.append(text[start:m.end(1)])
        start = m.end()
    out.append(text[start:])
    return [s.strip() for part in out for s in _CJK_BOUNDARY.split(part) if s.strip()]
