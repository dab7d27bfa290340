"""What a model says about a task, in the one shape the cycle, placement and ``/predict`` share.

The chain is written once: softmax probabilities -> (multi-label) the engine's set rule ->
``prediction_entry`` (label or label set, confidence, per-choice probabilities) -> either a bulk
import item (``prediction_item``) or a ``/predict`` result (``result_for_predict``), with a queue
score: the cycle's rank / M (``queue_predictions``), or for a task the cycle did not rank, the
place of ranked tasks of similar confidence (``PlacementIndex``).

Where a multi-label prediction keeps its per-choice probabilities: an extra key of the result
item. Label Studio 1.23 stores a prediction's result list as given (the import endpoint and the
/predict path keep only task/result/score/model_version at the top level, but every key of a
result item), returns it in /api/predictions/, the task API, exports and the Data Manager's
"Prediction results" column; its validation looks at from_name/to_name/type/value only.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence

import numpy as np

from ncalr_backend.service.errors import CycleError
from ncalr_backend.service.labelconfig import ImageClassConfig

PROBS_KEY = "choice_probs"
UNTRAINED_VERSION = "ncalr-untrained"  # what /predict answers under before the first cycle


def predicted_sets(probs: np.ndarray, meta: Optional[dict]) -> np.ndarray:
    """The engine's set rule for a multi-label model: bool [n, K]."""
    from ncalr_backend.engine.multilabel import predict_sets
    return predict_sets(np.asarray(probs), float((meta or {}).get("set_threshold", 0.3)))


def prediction_entry(p: np.ndarray, cfg: ImageClassConfig, label_set: Optional[np.ndarray] = None,
                     confidence: Optional[float] = None) -> dict:
    """What a prediction says about one image, from its softmax ``p`` [K].

    Single-label: ``{"label", "confidence"}`` (argmax, max probability). Multi-label (``label_set``
    a bool [K] row of the set rule): ``{"label": most probable, "labels": the set, most probable
    first, "probs": {label: probability}, "confidence": the softmax mass on the set}``;
    ``confidence`` overrides the computed one (the cycle passes the engine's).
    """
    p = np.asarray(p, dtype=np.float64)
    if not cfg.multilabel:
        c = float(p.max()) if confidence is None else float(confidence)
        return {"label": cfg.labels[int(p.argmax())], "confidence": c}
    ks = np.flatnonzero(np.asarray(label_set, dtype=bool))
    if len(ks) == 0:  # the set rule always keeps the argmax; be safe anyway
        ks = np.asarray([int(p.argmax())])
    ks = ks[np.argsort(-p[ks], kind="stable")]
    c = float(p[ks].sum()) if confidence is None else float(confidence)
    return {"label": cfg.labels[int(ks[0])], "labels": [cfg.labels[int(k)] for k in ks],
            "probs": {cfg.labels[int(k)]: round(float(p[k]), 6) for k in ks}, "confidence": c}


def entries_from_probs(probs: np.ndarray, cfg: ImageClassConfig, sets: Optional[np.ndarray] = None,
                       confidence: Optional[np.ndarray] = None) -> List[dict]:
    """``prediction_entry`` for every row of ``probs`` [n, K] (``sets`` [n, K] bool in multi-label
    mode, ``confidence`` [n] to override the computed confidences)."""
    return [prediction_entry(probs[j], cfg, None if sets is None else sets[j],
                             None if confidence is None else float(confidence[j]))
            for j in range(len(probs))]


def classify(model, meta: Optional[dict], x: np.ndarray, cfg: ImageClassConfig) -> List[dict]:
    """Entries for images ``x`` [n, C, H, W] from a served model (placement and ``/predict``)."""
    from ncalr_backend.engine import predict_proba  # the engine is heavy: import on use
    probs = predict_proba(model, x)
    sets = predicted_sets(probs, meta) if cfg.multilabel else None
    return entries_from_probs(probs, cfg, sets)


def _result_item(entry: dict, cfg: ImageClassConfig, score: float) -> dict:
    item = {"from_name": cfg.choices_name, "to_name": cfg.image_name, "type": "choices",
            "value": {"choices": list(entry.get("labels") or [entry["label"]])}, "score": score}
    if entry.get("probs") is not None:
        item[PROBS_KEY] = dict(entry["probs"])
    return item


def prediction_item(task_id: int, entry: dict, queue_score: float, cfg: ImageClassConfig,
                    model_version: str) -> dict:
    """One prediction for the bulk import from a ``prediction_entry`` (label or label set, its
    confidence and, multi-label, the per-choice probabilities kept under ``PROBS_KEY``)."""
    return {
        "task": int(task_id),
        "result": [_result_item(entry, cfg, round(float(entry["confidence"]), 6))],
        # not rounded: Label Studio keeps a double and orders "Label All Tasks" by it; rounded to 6
        # digits, rank / M made ties of neighbouring ranks past a million ranked tasks
        "score": float(queue_score),
        "model_version": model_version,
    }


def result_for_predict(entry: dict, cfg: ImageClassConfig, model_version: str) -> dict:
    """A /predict result from a stored prediction entry (see ``prediction_entry``)."""
    return {
        "result": [_result_item(entry, cfg, float(entry["confidence"]))],
        "score": float(entry["score"]) if entry.get("score") is not None else float(entry["confidence"]),
        "model_version": model_version,
    }


class PlacementIndex:
    """Queue places for tasks the latest cycle did not rank (created after it), in O(log M) each.

    A new task gets the median queue score of the ``k`` ranked tasks whose confidence is closest to
    its own: an uncertain new image lands among the uncertain ranked ones, until the next cycle
    ranks everything with NCAL-R. Used by both TASKS_CREATED placement and /predict, so both give a
    task the same place. The ranked tasks are sorted by confidence once; each lookup is a binary
    search plus a walk over ``k`` neighbours (the old way sorted all M entries per task)."""

    def __init__(self, entries: dict, k: int = 5):
        self.k = k
        rows = sorted(((float(e["confidence"]), float(e["score"]), int(e.get("rank", 0)))
                       for e in entries.values()), key=lambda r: (r[0], r[2]))
        self.conf = np.asarray([r[0] for r in rows], dtype=np.float64)
        self.score = np.asarray([r[1] for r in rows], dtype=np.float64)

    def place(self, confidence: float) -> float:
        m = len(self.conf)
        if m == 0:
            return float(min(1.0, max(0.0, 1.0 - confidence)))
        hi = int(np.searchsorted(self.conf, confidence))
        lo = hi - 1
        near = []
        while len(near) < min(self.k, m):  # merge outwards from the insertion point, nearest first
            if lo >= 0 and (hi >= m or confidence - self.conf[lo] <= self.conf[hi] - confidence):
                near.append(lo)
                lo -= 1
            else:
                near.append(hi)
                hi += 1
        return float(np.median(self.score[near]))


@dataclass
class QueuePredictions:
    """The cycle's predictions: one per ranked pool task, queue score = rank / M (0 = serve first)."""
    entries: dict  # str(task id) -> prediction entry + "score" (rank / M) + "rank"
    items: List[dict]  # the bulk-import items, in pool order
    predicted_set_sizes: Optional[dict] = None  # multi-label: {set size: count}

    def head(self, k: int) -> List[dict]:
        """The items Label Studio gets: the ranked tasks of rank < ``k`` (the head of the queue)
        and every item that is not a ranked pool task (re-annotations queued first)."""
        out = []
        for it in self.items:
            e = self.entries.get(str(it["task"]))
            if e is None or e["rank"] < k:
                out.append(it)
        return out


def queue_predictions(res, cfg: ImageClassConfig, pool_ids: Sequence[int], version: str) -> QueuePredictions:
    """Turn the engine's result for the pool into queue predictions; checks what it relies on."""
    m = len(pool_ids)
    ranking = np.asarray(res.ranking, dtype=np.int64)
    if m and sorted(ranking.tolist()) != list(range(m)):
        raise CycleError("the engine's ranking is not a permutation of the pool")
    rank_of = np.empty(m, dtype=np.int64)
    rank_of[ranking] = np.arange(m)
    sets = None
    if cfg.multilabel and m:
        if not getattr(res, "multilabel", False):
            raise CycleError("the engine did not train in multi-label mode for a multi-label project")
        sets = np.asarray(res.pred_sets, dtype=bool)
        if sets.shape != (m, cfg.num_classes):
            raise CycleError(f"the engine's predicted label sets have shape {sets.shape}, "
                             f"expected {(m, cfg.num_classes)}")
    entries, items = {}, []
    for j, (tid, e) in enumerate(zip(pool_ids, entries_from_probs(res.probs[:m], cfg, sets, res.confidence))):
        qs = float(rank_of[j]) / m
        entries[str(tid)] = {**e, "score": qs, "rank": int(rank_of[j])}
        items.append(prediction_item(tid, e, qs, cfg, version))
    sizes = None
    if sets is not None:
        sizes = {str(int(v)): int(c) for v, c in zip(*np.unique(sets.sum(1), return_counts=True))}
    return QueuePredictions(entries=entries, items=items, predicted_set_sizes=sizes)


def model_input(meta: dict, settings) -> tuple:
    """(image size, channels) a saved model was trained on, from its metadata: images for it are
    decoded that way even after IMAGE_SIZE / IMAGE_CHANNELS changed (the next cycle follows the
    settings); the settings only for a model saved without them."""
    size, channels = meta.get("image_size", settings.image_size), meta.get("in_channels", settings.image_channels)
    if not isinstance(size, int) or not isinstance(channels, int) or channels not in (1, 3) or size < 4:
        raise ValueError(f"model metadata has no usable input shape (image_size={size!r}, in_channels={channels!r})")
    return size, channels
