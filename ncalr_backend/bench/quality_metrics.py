"""Metrics of the quality benchmark: learning-curve area, rank correlation, long-tail groups, sets.

Pure functions of arrays (no engine, no plotting); each is checked by hand in
``tests/bench/test_quality_bench.py``.
"""
from __future__ import annotations

import numpy as np

GROUPS = ("many", "medium", "few")


def aulc(fractions: list[float] | np.ndarray, acc: list[float] | np.ndarray) -> float:
    """Normalised area under the learning curve: trapezoids / budget range (mean curve height)."""
    x = np.asarray(fractions, dtype=np.float64)
    y = np.asarray(acc, dtype=np.float64)
    if len(x) == 1:
        return float(y[0])
    return float(np.trapezoid(y, x) / (x[-1] - x[0]))


def _std(v) -> float:
    v = np.asarray(v, dtype=np.float64)
    return float(v.std(ddof=1)) if len(v) > 1 else 0.0


def spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if len(a) < 3 or a.std() == 0 or b.std() == 0:
        return None
    ra = np.argsort(np.argsort(a)).astype(np.float64)
    rb = np.argsort(np.argsort(b)).astype(np.float64)
    return float(np.corrcoef(ra, rb)[0, 1])


def frequency_groups(counts) -> dict[str, list[int]]:
    """many / medium / few classes from the pool's class counts: ranked most frequent first (ties:
    lower class index first), the top round(C/3) are 'many', the bottom round(C/3) 'few', the rest
    'medium' (3 / 4 / 3 on ten classes)."""
    counts = np.asarray(counts)
    C = len(counts)
    order = sorted(range(C), key=lambda c: (-counts[c], c))
    k = max(1, int(round(C / 3))) if C >= 3 else 1
    return {"many": sorted(order[:k]), "medium": sorted(order[k:C - k]), "few": sorted(order[C - k:])}


def per_class_accuracy(y_true, y_pred, num_classes: int) -> np.ndarray:
    """[C] share of each class's test items predicted as that class (NaN for a class with none)."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    out = np.full(num_classes, np.nan)
    for c in range(num_classes):
        sel = y_true == c
        if sel.any():
            out[c] = float((y_pred[sel] == c).mean())
    return out


def group_accuracy(per_class: np.ndarray, groups: dict) -> dict:
    """Mean per-class accuracy over each group's classes (None when a group has no class)."""
    pc = np.asarray(per_class, dtype=np.float64)
    out = {}
    for g, cls in groups.items():
        v = pc[list(cls)] if len(cls) else np.array([])
        v = v[np.isfinite(v)]
        out[g] = float(v.mean()) if len(v) else None
    return out


def set_metrics(true_sets, pred_sets) -> dict:
    """Exact-set-match accuracy, micro-F1 (TP, FP, FN pooled over all labels) and macro-F1 (mean of
    the per-label F1 over the labels that occur in the truth or the prediction) of predicted sets."""
    t = np.asarray(true_sets).astype(bool)
    p = np.asarray(pred_sets).astype(bool)
    tp = (t & p).sum(0).astype(np.float64)
    fp = (~t & p).sum(0).astype(np.float64)
    fn = (t & ~p).sum(0).astype(np.float64)
    den = 2 * tp + fp + fn
    micro = float(2 * tp.sum() / den.sum()) if den.sum() else 1.0
    used = den > 0
    macro = float((2 * tp[used] / den[used]).mean()) if used.any() else 1.0
    return {"exact_match": float((t == p).all(1).mean()), "micro_f1": micro, "macro_f1": macro}


def _round(v, digits: int = 4):
    """Per-epoch history values are stored to 4 decimals (results.json stays a few hundred kB)."""
    return round(float(v), digits) if isinstance(v, (float, np.floating)) else v
