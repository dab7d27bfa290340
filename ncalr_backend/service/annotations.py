"""Which annotation labels a task, and the labels the engine trains on.

Which annotation wins: a task is labeled when it has at least one annotation that is not
cancelled (skipped). If it has several, a ground-truth annotation wins; among equals the most
recently updated one wins (ties: the highest id). Its first choice of the config's ``<Choices>`` is
the label. A labeled task whose winning annotation has no usable choice (empty, or a value not in
the config) is left out of both training and the queue, and reported.

Multi-label projects (``<Choices choice="multiple">``): the label is the SET of the winning
annotation's choices, a multi-hot row of ``y_lab`` [N, K]. An annotation with no choice, or with
any value not in the config, is unusable (left out and reported with the offending value), never
silently shrunk.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import List, Optional, Sequence

import numpy as np

from ncalr_backend.service.labelconfig import ImageClassConfig


def _ts(a: dict) -> str:
    return str(a.get("updated_at") or a.get("created_at") or "")


def winning_annotation(task: dict, cfg: Optional[ImageClassConfig] = None, prefer: Optional[dict] = None
                       ) -> Optional[dict]:
    """The annotation that labels ``task`` (see the module docstring), or None if unlabeled.

    ``prefer`` ({class index: probability}, single-label): the task was sent for re-annotation
    (``RELABEL_SHARE``); when its annotations disagree, the one whose label the model found more
    likely wins (a ground-truth annotation still wins over all)."""
    anns = [a for a in (task.get("annotations") or []) if isinstance(a, dict) and not a.get("was_cancelled")]
    if not anns:
        return None
    if prefer and cfg is not None and not cfg.multilabel and not any(a.get("ground_truth") for a in anns):
        def likely(a):
            k = annotation_label(a, cfg)
            return (-1.0 if k is None else float(prefer.get(str(k), prefer.get(k, 0.0)))), _ts(a), int(a.get("id") or 0)
        return max(anns, key=likely)
    return max(anns, key=lambda a: (bool(a.get("ground_truth")), _ts(a), int(a.get("id") or 0)))


def annotation_label(ann: dict, cfg: ImageClassConfig) -> Optional[int]:
    for r in ann.get("result") or []:
        if not isinstance(r, dict) or r.get("from_name") != cfg.choices_name:
            continue
        choices = (r.get("value") or {}).get("choices") or []
        if choices:
            return cfg.index(choices[0])
    return None


def annotation_label_set(ann: dict, cfg: ImageClassConfig):
    """Multi-label: ``(sorted class indices, None)`` for the annotation's choices, or
    ``(None, reason)`` when it has no choice or a value that is not in the config."""
    chosen, seen_result = [], False
    for r in ann.get("result") or []:
        if not isinstance(r, dict) or r.get("from_name") != cfg.choices_name:
            continue
        seen_result = True
        choices = (r.get("value") or {}).get("choices") or []
        if not isinstance(choices, list):
            choices = [choices]
        for c in choices:
            k = cfg.index(c) if isinstance(c, str) else None
            if k is None:
                return None, (f"annotation {ann.get('id')} has the choice {c!r}, which is not one of "
                              f"{cfg.labels} of <Choices name={cfg.choices_name!r}>")
            if k not in chosen:
                chosen.append(k)
    if not chosen:
        return None, (f"annotation {ann.get('id')} has no choice for <Choices name={cfg.choices_name!r}>"
                      + ("" if seen_result else " (no result for that control)"))
    return sorted(chosen), None


@dataclass
class Split:
    labeled: List[dict] = field(default_factory=list)     # tasks
    labels: List = field(default_factory=list)            # class index, or (multi-label) sorted index list
    fingerprints: List[str] = field(default_factory=list)  # per labeled task: annotation_fingerprint
    pool: List[dict] = field(default_factory=list)
    unusable: List[dict] = field(default_factory=list)    # {"task", "reason"}


def split_tasks(tasks: Sequence[dict], cfg: ImageClassConfig, prefer: Optional[dict] = None) -> Split:
    """``prefer``: {str(task id): {class: probability}} for tasks sent for re-annotation."""
    s = Split()
    prefer = prefer or {}
    for t in tasks:
        ann = winning_annotation(t, cfg, prefer.get(str(t.get("id"))))
        if ann is None:
            s.pool.append(t)
            continue
        if cfg.multilabel:
            y, why = annotation_label_set(ann, cfg)
            if y is None:
                s.unusable.append({"task": t["id"], "reason": why})
                continue
            s.labeled.append(t)
            s.labels.append(y)
            s.fingerprints.append(annotation_fingerprint(ann, y))
            continue
        y = annotation_label(ann, cfg)
        if y is None:
            s.unusable.append({"task": t["id"], "reason": f"annotation {ann.get('id')} has no choice of "
                                                          f"{cfg.labels} for <Choices name={cfg.choices_name!r}>"})
            continue
        s.labeled.append(t)
        s.labels.append(y)
        s.fingerprints.append(annotation_fingerprint(ann, y))
    return s


def annotation_fingerprint(ann: dict, label) -> str:
    """What a task's label is, as a string that changes exactly when the label does: the winning
    annotation's id and its label (class index or sorted index list). Re-submitting the same
    choice keeps it; another choice, or another annotation winning, changes it."""
    return f"{ann.get('id')}:{json.dumps(label)}"


def task_fingerprint(task: dict, cfg: ImageClassConfig, prefer: Optional[dict] = None) -> Optional[str]:
    """``annotation_fingerprint`` of the task's winning annotation, or None when it has no usable
    one; ``prefer`` as in ``split_tasks`` (a task sent for re-annotation), so that this names the
    annotation a cycle trains on."""
    ann = winning_annotation(task, cfg, prefer)
    if ann is None:
        return None
    y = annotation_label_set(ann, cfg)[0] if cfg.multilabel else annotation_label(ann, cfg)
    return None if y is None else annotation_fingerprint(ann, y)


def label_matrix(labels: Sequence, cfg: ImageClassConfig) -> np.ndarray:
    """``y_lab`` for the engine: [N] int64 class ids, or (multi-label) [N, K] float32 multi-hot 0/1."""
    if not cfg.multilabel:
        return np.asarray(list(labels), dtype=np.int64)
    y = np.zeros((len(labels), cfg.num_classes), dtype=np.float32)
    for i, ks in enumerate(labels):
        y[i, list(ks)] = 1.0
    return y


def label_report(y_lab: np.ndarray, cfg: ImageClassConfig) -> dict:
    """report.json's label counts: per label, every sample carrying it; multi-label adds the
    histogram of label-set sizes."""
    if not cfg.multilabel:
        return {"class_counts": {cfg.labels[k]: int((y_lab == k).sum()) for k in range(cfg.num_classes)}}
    y = np.asarray(y_lab).reshape(-1, cfg.num_classes) > 0
    sizes = y.sum(1)
    return {"class_counts": {cfg.labels[k]: int(y[:, k].sum()) for k in range(cfg.num_classes)},
            "label_set_sizes": {str(int(v)): int(c) for v, c in zip(*np.unique(sizes, return_counts=True))}}
