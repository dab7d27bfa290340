"""Which annotation labels a task, and the labels the engine trains on.

Which annotation wins: a task is labeled when it has at least one annotation that is not
cancelled (skipped). If it has several, a ground-truth annotation wins; among equals the most
recently updated one wins (ties: the highest id). Its first choice of the config's ``<Choices>`` is
the label. A labeled task whose winning annotation has no usable choice (empty, a value not in
the config, several choices in a single-choice project, or a result that is not the shape Label
Studio's labeling screen writes: Label Studio stores any list of results the API is sent) is left
out of both training and the queue, and reported with the reason; it never fails the cycle.

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

    ``prefer`` ({choice value: probability}, single-label): the task was sent for re-annotation
    (``RELABEL_SHARE``); when its annotations disagree, the one whose label the model found more
    likely wins (a ground-truth annotation still wins over all)."""
    anns = [a for a in (task.get("annotations") or []) if isinstance(a, dict) and not a.get("was_cancelled")]
    if not anns:
        return None
    if prefer and cfg is not None and not cfg.multilabel and not any(a.get("ground_truth") for a in anns):
        def likely(a):
            k = annotation_label(a, cfg)
            return (-1.0 if k is None else float(prefer.get(cfg.labels[k], 0.0))), _ts(a), int(a.get("id") or 0)
        return max(anns, key=likely)
    return max(anns, key=lambda a: (bool(a.get("ground_truth")), _ts(a), _id(a)))


def annotation_id(a: dict) -> Optional[int]:
    """The annotation's id, or None when it has none that is an integer (a payload may hold anything)."""
    i = a.get("id")
    return i if isinstance(i, int) and not isinstance(i, bool) else None


def _id(a: dict) -> int:  # for ordering: an annotation without an id sorts first
    return annotation_id(a) or 0


def _chosen(ann: dict, cfg: ImageClassConfig):
    """The one reading of an annotation's answer for the config's ``<Choices>``: ``(sorted class
    indices, None)``, or ``(None, reason)`` when it has no choice, a value that is not in the config
    (the offending one is named), or results of another shape than the labeling screen writes
    (``value`` an object, ``choices`` a list of strings)."""
    who = f"annotation {ann.get('id')!r}"
    result = ann.get("result")
    if not isinstance(result, list):
        return None, f"{who} has a result that is not a list"
    chosen, seen_result = [], False
    for r in result:
        if not isinstance(r, dict) or r.get("from_name") != cfg.choices_name:
            continue
        seen_result = True
        value = r.get("value")
        choices = value.get("choices") if isinstance(value, dict) else None
        if choices is None:
            continue  # nothing chosen in this result
        if not isinstance(choices, list):
            return None, (f"{who} has 'choices' of type {type(choices).__name__} for "
                          f"<Choices name={cfg.choices_name!r}>, not a list of choice values")
        for c in choices:
            k = cfg.index(c) if isinstance(c, str) else None
            if k is None:
                return None, (f"{who} has the choice {c!r:.80}, which is not one of "
                              f"{list(cfg.labels)[:20]}{' ...' if cfg.num_classes > 20 else ''} of "
                              f"<Choices name={cfg.choices_name!r}>")
            if k not in chosen:
                chosen.append(k)
    if not chosen:
        return None, (f"{who} has no choice for <Choices name={cfg.choices_name!r}>"
                      + ("" if seen_result else " (no result for that control)"))
    return sorted(chosen), None


def annotation_label_checked(ann: dict, cfg: ImageClassConfig):
    """Single-label: ``(class index, None)``, or ``(None, reason)``: ``_chosen``'s reasons, and
    more than one choice (a config changed from multiple to single choice, or an API client)."""
    ks, why = _chosen(ann, cfg)
    if ks is None:
        return None, why
    if len(ks) > 1:
        return None, (f"annotation {ann.get('id')!r} has {len(ks)} choices "
                      f"({', '.join(repr(cfg.labels[k]) for k in ks[:5])}) for the single-choice "
                      f"<Choices name={cfg.choices_name!r}>")
    return ks[0], None


def annotation_label(ann: dict, cfg: ImageClassConfig) -> Optional[int]:
    """The class index of a single-label annotation, or None (``annotation_label_checked``)."""
    return annotation_label_checked(ann, cfg)[0]


def annotation_label_set(ann: dict, cfg: ImageClassConfig):
    """Multi-label: ``(sorted class indices, None)`` for the annotation's choices, or
    ``(None, reason)`` when it has no choice or a value that is not in the config."""
    return _chosen(ann, cfg)


@dataclass
class Split:
    labeled: List[dict] = field(default_factory=list)     # tasks
    labels: List = field(default_factory=list)            # class index, or (multi-label) sorted index list
    fingerprints: List[str] = field(default_factory=list)  # per labeled task: annotation_fingerprint
    pool: List[dict] = field(default_factory=list)
    unusable: List[dict] = field(default_factory=list)    # {"task", "reason"}


def split_tasks(tasks: Sequence[dict], cfg: ImageClassConfig, prefer: Optional[dict] = None) -> Split:
    """``prefer``: {str(task id): {choice value: probability}} for tasks sent for re-annotation."""
    s = Split()
    prefer = prefer or {}
    for t in tasks:
        try:
            ann = winning_annotation(t, cfg, prefer.get(str(t.get("id"))))
            if ann is None:
                s.pool.append(t)
                continue
            y, why = annotation_label_set(ann, cfg) if cfg.multilabel else annotation_label_checked(ann, cfg)
        except Exception as exc:  # noqa: BLE001 - one task's odd data must never fail every cycle
            y, why = None, f"its annotations could not be read ({exc.__class__.__name__}: {exc})"
        if y is None:
            s.unusable.append({"task": t.get("id"), "reason": why})
            continue
        s.labeled.append(t)
        s.labels.append(y)
        s.fingerprints.append(annotation_fingerprint(ann, y, cfg))
    return s


def annotation_fingerprint(ann: dict, label, cfg: ImageClassConfig) -> str:
    """What a task's label is, as a string that changes exactly when the label does: the winning
    annotation's id and its label, by value (the choice, or the sorted set of choices). Re-submitting
    the same choice keeps it; another choice, or another annotation winning, changes it. By value,
    not by class index: a choice inserted or the choices reordered in the config must not turn one
    label into another (found by review, 2026-12-05: a reviewed "cat" read as "dog" after "ant" was
    added first, and a changed label read as reviewed)."""
    return label_fingerprint(ann.get("id"), sorted(cfg.labels[k] for k in label) if cfg.multilabel
                             else cfg.labels[label])


def label_fingerprint(annotation_id, value) -> str:
    """The fingerprint's text: the annotation's id and its label value(s) (``annotation_fingerprint``)."""
    return f"{annotation_id}:{json.dumps(value)}"


def task_fingerprint(task: dict, cfg: ImageClassConfig, prefer: Optional[dict] = None) -> Optional[str]:
    """``annotation_fingerprint`` of the task's winning annotation, or None when it has no usable
    one; ``prefer`` as in ``split_tasks`` (a task sent for re-annotation), so that this names the
    annotation a cycle trains on."""
    ann = winning_annotation(task, cfg, prefer)
    if ann is None:
        return None
    y = annotation_label_set(ann, cfg)[0] if cfg.multilabel else annotation_label(ann, cfg)
    return None if y is None else annotation_fingerprint(ann, y, cfg)


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
