"""Entity-level NER scores (CoNLL-2003), a thin wrapper over `seqeval`.

Two ways of reading entities out of a tag sequence are reported, because they differ exactly
on the malformed sequences a model can predict (an `I-X` that does not follow `B-X`/`I-X`):

- `f1` / `precision` / `recall`: seqeval's default mode, which reproduces the official
  `conlleval` script of the CoNLL-2003 shared task (an `I-X` after `O` opens a new entity).
  This is the number papers report, so it is the task's main metric.
- `strict_f1` (and `strict_precision`, `strict_recall`): strict IOB2, where every entity must start
  with `B-X`; an entity opened by `I-X` is counted as wrong. On well-formed IOB2 predictions the
  two agree exactly. For BIOES tags (`scheme="BIOES"`) strict mode also needs every entity to end
  with `E-X` or be one `S-X`.

conlleval knows no `S-` tag (it reads BIOES `S-PER S-PER` as one entity), so BIOES tags are
scored by it, and written for it, as IOB2 (`bioes_to_iob2`): the conlleval numbers of a BIOES
model are those of its tags in IOB2, as the CoNLL-2003 benchmark reads them.

Worked example: gold `B-PER I-PER O B-LOC`, predicted `I-PER I-PER O B-LOC` ->
conlleval f1 = 1.0 (the `I-PER I-PER` run is read as one PER), strict f1 = 2/3
(the PER entity is lost: precision 1/1, recall 1/2).
"""

from __future__ import annotations

import warnings
from typing import Sequence


def bioes_to_iob2(tags: Sequence[str]) -> list[str]:
    """`S-X` -> `B-X`, `E-X` -> `I-X` (BIOES `B-PER E-PER S-LOC` -> IOB2 `B-PER I-PER B-LOC`)."""
    return [{"S": "B-", "E": "I-"}[tag[0]] + tag[2:] if tag[:2] in ("S-", "E-") else tag for tag in tags]


def ner_scores(gold: Sequence[Sequence[str]], predicted: Sequence[Sequence[str]],
               scheme: str = "IOB2") -> dict[str, float]:
    """Entity-level micro precision/recall/F1 (conlleval and strict `scheme`, IOB2 or BIOES),
    per-type F1 and token accuracy. `gold[i]` and `predicted[i]` are the tag lists of sentence i
    and must have equal lengths."""
    if len(gold) != len(predicted):
        raise ValueError(f"ner_scores: {len(gold)} gold sentences but {len(predicted)} predicted")
    for i, (g, p) in enumerate(zip(gold, predicted)):
        if len(g) != len(p):
            raise ValueError(f"ner_scores: sentence {i} has {len(g)} gold tags but {len(p)} predicted")
    # Imported here so that a machine without seqeval can still run every other task.
    from seqeval.metrics import classification_report, f1_score, precision_score, recall_score
    from seqeval.scheme import IOB2, IOBES

    strict = {"IOB2": IOB2, "BIOES": IOBES}[scheme]

    gold_l = [list(s) for s in gold]
    pred_l = [list(s) for s in predicted]
    tokens = sum(len(s) for s in gold_l)
    correct = sum(a == b for g, p in zip(gold_l, pred_l) for a, b in zip(g, p))
    # What conlleval reads: IOB2 (unchanged for IOB2 input; see the module docstring for BIOES).
    gold_c = [bioes_to_iob2(s) for s in gold_l]
    pred_c = [bioes_to_iob2(s) for s in pred_l]
    # With no entities on one side seqeval warns and returns 0, which is the right score here.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = {
            "precision": float(precision_score(gold_c, pred_c)),
            "recall": float(recall_score(gold_c, pred_c)),
            "f1": float(f1_score(gold_c, pred_c)),
            "strict_precision": float(precision_score(gold_l, pred_l, mode="strict", scheme=strict)),
            "strict_recall": float(recall_score(gold_l, pred_l, mode="strict", scheme=strict)),
            "strict_f1": float(f1_score(gold_l, pred_l, mode="strict", scheme=strict)),
            "token_accuracy": correct / tokens if tokens else 0.0,
        }
        report = classification_report(gold_c, pred_c, output_dict=True, zero_division=0)
    for entity_type, row in report.items():
        if not entity_type.endswith(" avg"):
            out[f"f1_{entity_type}"] = float(row["f1-score"])
    return out
