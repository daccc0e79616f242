"""GLUE metrics as the benchmark defines them (Wang et al. 2019, table 1):
CoLA Matthews correlation; SST-2, QNLI, RTE, WNLI, MNLI accuracy; MRPC and QQP F1 (of the
positive class) and accuracy; STS-B Pearson and Spearman correlation. Scores are fractions in
[0, 1] (x100 for the leaderboard's percentages).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np


def accuracy(predictions: Sequence[int], labels: Sequence[int]) -> float:
    p, y = np.asarray(predictions), np.asarray(labels)
    return float((p == y).mean()) if len(y) else 0.0


def f1_binary(predictions: Sequence[int], labels: Sequence[int], positive: int = 1) -> float:
    """F1 of the positive class; 0 when there are no true positives (as scikit-learn reports)."""
    p, y = np.asarray(predictions) == positive, np.asarray(labels) == positive
    tp = int((p & y).sum())
    if tp == 0:
        return 0.0
    precision, recall = tp / int(p.sum()), tp / int(y.sum())
    return 2 * precision * recall / (precision + recall)


def macro_f1(predictions: Sequence[int], labels: Sequence[int], num_classes: int | None = None) -> float:
    """Unweighted mean of per-class F1 over the classes present in labels or predictions."""
    p, y = np.asarray(predictions), np.asarray(labels)
    classes = range(num_classes) if num_classes else sorted(set(p.tolist()) | set(y.tolist()))
    return float(np.mean([f1_binary(p, y, c) for c in classes])) if len(y) else 0.0


def multilabel_scores(predictions: Sequence[Sequence[float]], labels: Sequence[Sequence[float]]) -> dict[str, float]:
    """Multi-label scores from 0/1 matrices [N,C]: micro precision/recall/F1 over all (text, label)
    decisions, macro F1 over the labels present in labels or predictions (as macro_f1), and
    exact_match, the share of texts whose label set is predicted exactly (scikit-learn's
    accuracy_score on such matrices)."""
    p, y = np.asarray(predictions, dtype=bool), np.asarray(labels, dtype=bool)
    if not len(y):
        return {"micro_f1": 0.0, "micro_precision": 0.0, "micro_recall": 0.0, "macro_f1": 0.0, "exact_match": 0.0}
    tp, fp, fn = (p & y).sum(0), (p & ~y).sum(0), (~p & y).sum(0)  # [C] each
    present = (tp + fp + fn) > 0
    per_label = 2 * tp[present] / (2 * tp[present] + fp[present] + fn[present])
    TP, FP, FN = int(tp.sum()), int(fp.sum()), int(fn.sum())
    return {"micro_f1": 2 * TP / (2 * TP + FP + FN) if TP else 0.0,
            "micro_precision": TP / (TP + FP) if TP else 0.0,
            "micro_recall": TP / (TP + FN) if TP else 0.0,
            "macro_f1": float(per_label.mean()) if present.any() else 0.0,
            "exact_match": float((p == y).all(1).mean())}


def matthews_corrcoef(predictions: Sequence[int], labels: Sequence[int]) -> float:
    """Binary MCC = (tp*tn - fp*fn) / sqrt((tp+fp)(tp+fn)(tn+fp)(tn+fn)); 0 when undefined."""
    p, y = np.asarray(predictions) == 1, np.asarray(labels) == 1
    tp, tn = float((p & y).sum()), float((~p & ~y).sum())
    fp, fn = float((p & ~y).sum()), float((~p & y).sum())
    denom = math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return (tp * tn - fp * fn) / denom if denom else 0.0


def varies(values: Sequence[float]) -> bool:
    """Whether a series has two or more distinct values, which a correlation needs."""
    v = np.asarray(values, dtype=np.float64)
    return len(v) > 1 and bool((v != v[0]).any())


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson's r; 0.0 when either series is constant (r is 0/0 there: scipy returns NaN), the
    convention of matthews_corrcoef and scikit-learn's MCC. A degenerate model (one score for
    every pair) then counts as uncorrelated: a NaN would be kept as the best checkpoint's score,
    since no later `value > nan` is true, and written to metrics.json as a bare NaN."""
    from scipy.stats import pearsonr

    return float(pearsonr(x, y)[0]) if varies(x) and varies(y) else 0.0


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rho; 0.0 when either series is constant, as pearson."""
    from scipy.stats import spearmanr

    return float(spearmanr(x, y)[0]) if varies(x) and varies(y) else 0.0


def glue_metrics(kind: str, predictions: Sequence, labels: Sequence) -> dict[str, float]:
    """kind: "mcc" | "acc" | "acc_f1" | "corr". Adds the mean of the pair where GLUE reports two."""
    if kind == "mcc":
        return {"mcc": matthews_corrcoef(predictions, labels), "accuracy": accuracy(predictions, labels)}
    if kind == "acc":
        return {"accuracy": accuracy(predictions, labels)}
    if kind == "acc_f1":
        acc, f1 = accuracy(predictions, labels), f1_binary(predictions, labels)
        return {"accuracy": acc, "f1": f1, "acc_and_f1": (acc + f1) / 2}
    if kind == "corr":
        p, s = pearson(predictions, labels), spearman(predictions, labels)
        return {"pearson": p, "spearman": s, "corr": (p + s) / 2}
    raise ValueError(f"unknown GLUE metric kind {kind!r}")
