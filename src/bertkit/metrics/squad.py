"""SQuAD evaluation, following the semantics of the official v1.1 and v2.0 scripts.

Both scripts normalise answers the same way (lowercase, drop ASCII punctuation, drop the articles
a/an/the, collapse whitespace) and take the best score over the gold answers of a question. They
differ in two details that change numbers, so both are kept:

- v1.1 F1 is 0 whenever prediction and gold share no token, even if both normalise to "".
- v2.0 drops gold answers that normalise to "", gives a question with no gold answer left the gold
  [""], and scores an empty-vs-empty pair as 1 (that is how "no answer" is rewarded). Whether a
  question is answerable (HasAns/NoAns) is decided before that: by having any gold answer.

v2.0 also takes `na_probs` (per-question "no answer" scores; we write BERT's null odds there): a
question whose score is above `na_prob_thresh` counts as answered "no answer" whatever its text,
and the best-threshold search reports the EM/F1 that the best such cut-off would reach.

    >>> normalize_answer("The  Denver Broncos!")
    'denver broncos'
    >>> round(squad_v1_evaluate({"q": ["Denver Broncos"]}, {"q": "the Broncos"})["f1"], 2)
    66.67
"""

from __future__ import annotations

import collections
import re
import string
from typing import Mapping, Sequence

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(text: str) -> str:
    """Lowercase, remove punctuation, remove articles, collapse whitespace (in the official order)."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def _tokens(text: str) -> list[str]:
    return normalize_answer(text).split()


def exact_match(prediction: str, gold: str) -> int:
    """1 if both normalise to the same string, else 0 (same in v1.1 and v2.0)."""
    return int(normalize_answer(prediction) == normalize_answer(gold))


def f1_v1(prediction: str, gold: str) -> float:
    """Token-overlap F1 as the v1.1 script computes it (no overlap -> 0, even for two empties)."""
    pred_toks, gold_toks = _tokens(prediction), _tokens(gold)
    common = collections.Counter(pred_toks) & collections.Counter(gold_toks)
    num_same = sum(common.values())
    if num_same == 0:
        return 0.0
    precision = num_same / len(pred_toks)
    recall = num_same / len(gold_toks)
    return 2 * precision * recall / (precision + recall)


def f1_v2(prediction: str, gold: str) -> float:
    """Token-overlap F1 as the v2.0 script computes it: an empty side scores 1 only against empty."""
    pred_toks, gold_toks = _tokens(prediction), _tokens(gold)
    if not pred_toks or not gold_toks:
        return float(pred_toks == gold_toks)
    common = collections.Counter(pred_toks) & collections.Counter(gold_toks)
    num_same = sum(common.values())
    if num_same == 0:
        return 0.0
    precision = num_same / len(pred_toks)
    recall = num_same / len(gold_toks)
    return 2 * precision * recall / (precision + recall)


def _check_ids(golds: Mapping[str, Sequence[str]], predictions: Mapping[str, str]) -> None:
    missing = [qid for qid in golds if qid not in predictions]
    if missing:
        # The official scripts print a warning and score the question 0; a silent zero hides bugs
        # in the caller, so this is an error naming the first missing ids.
        raise ValueError(f"{len(missing)} question ids have no prediction, e.g. {missing[:3]}")


def squad_v1_evaluate(golds: Mapping[str, Sequence[str]], predictions: Mapping[str, str]) -> dict[str, float]:
    """The v1.1 script: {"exact_match", "f1"} in percent, each the max over gold answers, averaged.

    `golds`: question id -> gold answer texts (at least one); `predictions`: id -> text.
    """
    _check_ids(golds, predictions)
    if not golds:
        raise ValueError("no questions to evaluate")
    em = f1 = 0.0
    for qid, answers in golds.items():
        if not answers:
            raise ValueError(f"question {qid!r} has no gold answer; v1.1 evaluation needs at least one")
        pred = predictions[qid]
        em += max(exact_match(pred, a) for a in answers)
        f1 += max(f1_v1(pred, a) for a in answers)
    return {"exact_match": 100.0 * em / len(golds), "f1": 100.0 * f1 / len(golds)}


def squad_v2_raw_scores(golds: Mapping[str, Sequence[str]],
                        predictions: Mapping[str, str]) -> tuple[dict[str, int], dict[str, float]]:
    """Per-question (exact, f1) before any no-answer threshold. Gold answers that normalise to ""
    are dropped and a question left without one gets the gold [""]."""
    _check_ids(golds, predictions)
    exact: dict[str, int] = {}
    f1: dict[str, float] = {}
    for qid, answers in golds.items():
        kept = [a for a in answers if normalize_answer(a)] or [""]
        pred = predictions[qid]
        exact[qid] = max(exact_match(pred, a) for a in kept)
        f1[qid] = max(f1_v2(pred, a) for a in kept)
    return exact, f1


def apply_no_answer_threshold(scores: Mapping[str, float], na_probs: Mapping[str, float],
                              has_answer: Mapping[str, bool], threshold: float) -> dict[str, float]:
    """Questions with na_prob > threshold are answered "no answer": 1 if unanswerable, else 0."""
    return {qid: (float(not has_answer[qid]) if na_probs[qid] > threshold else s) for qid, s in scores.items()}


def best_threshold(predictions: Mapping[str, str], scores: Mapping[str, float],
                   na_probs: Mapping[str, float], has_answer: Mapping[str, bool]) -> tuple[float, float]:
    """(best score in percent, its threshold) over all cut-offs of `na_probs`.

    Start from "every question answered no-answer" (score = number of unanswerable questions) and
    walk the questions by increasing na_prob, switching each one to its predicted text: an
    answerable one gains its score, an unanswerable one loses 1 if a non-empty text was predicted.
    The threshold kept is the na_prob of the question whose switch gave the strict maximum (0.0 if
    no switch improves), as in the official script.
    """
    current = best = float(sum(1 for qid in scores if not has_answer[qid]))
    best_thresh = 0.0
    for qid in sorted(na_probs, key=lambda k: na_probs[k]):
        if qid not in scores:
            continue
        if has_answer[qid]:
            current += scores[qid]
        elif predictions[qid]:
            current -= 1
        if current > best:
            best = current
            best_thresh = na_probs[qid]
    return 100.0 * best / len(scores), best_thresh


def squad_v2_evaluate(golds: Mapping[str, Sequence[str]], predictions: Mapping[str, str],
                      na_probs: Mapping[str, float] | None = None,
                      na_prob_thresh: float = 1.0) -> dict[str, float]:
    """The v2.0 script. `golds`: id -> gold texts ([] for unanswerable); `predictions`: id -> text
    ("" = no answer); `na_probs`: id -> no-answer score (the official --na-prob-file; when None every
    question gets 0, i.e. the predicted text alone decides, and no best threshold is searched).

    Returns exact_match, f1, total; HasAns_exact/HasAns_f1/HasAns_total and NoAns_* when such
    questions exist; with na_probs also best_exact, best_exact_thresh, best_f1, best_f1_thresh.
    ("exact_match" is the official script's "exact", renamed to match v1.1's key.)
    """
    if not golds:
        raise ValueError("no questions to evaluate")
    # HasAns/NoAns and the threshold's "no answer" credit go by whether the question has gold
    # answers at all (the script's bool(qa['answers'])), not by what survives normalisation: a
    # question answered only "." is answerable, scored against [""] but still in HasAns.
    has_answer = {qid: bool(answers) for qid, answers in golds.items()}
    exact_raw, f1_raw = squad_v2_raw_scores(golds, predictions)
    probs = dict(na_probs) if na_probs is not None else {qid: 0.0 for qid in golds}
    missing = [qid for qid in golds if qid not in probs]
    if missing:
        raise ValueError(f"{len(missing)} question ids have no na_prob, e.g. {missing[:3]}")
    exact = apply_no_answer_threshold(exact_raw, probs, has_answer, na_prob_thresh)
    f1 = apply_no_answer_threshold(f1_raw, probs, has_answer, na_prob_thresh)

    def summary(qids: list[str], prefix: str = "") -> dict[str, float]:
        return {f"{prefix}exact" if prefix else "exact_match": 100.0 * sum(exact[q] for q in qids) / len(qids),
                f"{prefix}f1": 100.0 * sum(f1[q] for q in qids) / len(qids),
                f"{prefix}total": float(len(qids))}

    out = summary(list(golds))
    has_ids = [q for q in golds if has_answer[q]]
    no_ids = [q for q in golds if not has_answer[q]]
    if has_ids:
        out.update(summary(has_ids, "HasAns_"))
    if no_ids:
        out.update(summary(no_ids, "NoAns_"))
    if na_probs is not None:
        out["best_exact"], out["best_exact_thresh"] = best_threshold(predictions, exact_raw, probs, has_answer)
        out["best_f1"], out["best_f1_thresh"] = best_threshold(predictions, f1_raw, probs, has_answer)
    return out
