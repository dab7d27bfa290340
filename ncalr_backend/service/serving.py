"""``/predict``: pre-annotations from the completed cycle of a project whose version Label Studio
serves (``ProjectStore.served``: the latest cycle, unless that one had nothing to rank and never went live).

A task the cycle ranked gets its stored prediction (label or label set, confidence) with its
NCAL-R queue score, whether or not the cycle wrote it to Label Studio (a cycle writes the head of
the order, ``WRITE_BACK_TOP``; Label Studio asks /predict for a task opened without a prediction). A task the cycle did not see (created after it) is classified on the fly by
the same model and placed like TASKS_CREATED places it (``predictions.PlacementIndex``).

A task that cannot be classified now (image missing or broken, a download that failed or ran past
the deadline, no credentials, a model that failed to load or to run) gets an empty placeholder
under ``UNTRAINED_VERSION``, never under the live version: Label Studio stores whatever /predict
answers (ml/models.py ``predict_tasks``) and afterwards skips every task that has a prediction of
the version /setup reports, so a placeholder under the live version made "Retrieve predictions"
never ask again and placement (``placement._has_version``) never place the task until the next
cycle. Under ``UNTRAINED_VERSION`` the manual "Retrieve predictions" action asks for it again (it
skips only tasks with a prediction of the /setup version; each failed ask adds one more
placeholder row, all deleted by the next cycle, ``writeback.prune_versions``); opening the task
and the Data Manager's automatic retrieval do not (Label Studio 1.23.2 calls /predict there only
for tasks without any prediction: tasks/api.py, data_manager/api.py). TASKS_CREATED placement
still places it, and "Label All Tasks" (which serves tasks with a live-version prediction first)
serves it after them, as score 1.0 did.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import List, Optional

from ncalr_backend.data.images import ImageCache
from ncalr_backend.service.labelconfig import ImageClassConfig
from ncalr_backend.service.labelstudio import make_client
from ncalr_backend.service.predictions import (UNTRAINED_VERSION, PlacementIndex, classify, model_input,
                                               result_for_predict)
from ncalr_backend.service.settings import Settings
from ncalr_backend.service.snapshot import load_images
from ncalr_backend.service.store import ProjectStore

log = logging.getLogger(__name__)
PREDICT_CHUNK = 256  # unranked tasks decoded and classified at a time: memory ~ CHUNK x C x S^2 x 4 bytes
MAX_LOGGED_FAILURES = 20  # per request; the rest are counted in one line
PREDICT_DEADLINE_S = 75.0  # no new chunk after this: answer before Label Studio's 100 s ML_TIMEOUT_PREDICT

__all__ = ["UNTRAINED_VERSION", "ServedCycle", "current_version", "predict_tasks"]


SERVED_CACHED = 4  # projects whose served cycle (its predictions and, once used, its model) stay loaded


def _read_predictions(path: Path) -> tuple:
    """``(predictions.json as a dict, transient)``: a missing or damaged file reads as ``{}`` (it
    stays so until the next cycle); a read that failed otherwise (too many open files, a network
    filesystem's hiccup) as ``{}`` with ``transient`` True, so that it is not kept."""
    try:
        with open(path, encoding="utf-8") as f:
            preds = json.load(f)
    except FileNotFoundError:
        return {}, False
    except (ValueError, RecursionError):
        log.error("/predict: %s cannot be read as JSON: the tasks its cycle ranked are classified again", path)
        return {}, False
    except OSError as exc:
        log.warning("/predict: %s could not be read (%s); tried again on the next request", path, exc)
        return {}, True
    return (preds if isinstance(preds, dict) else {}), False


class ServedCycle:
    """The completed cycle of one project whose version Label Studio serves (``ProjectStore.served``:
    the latest one, unless that had nothing to rank and never went live), loaded once (reloaded
    when another goes live). The ``SERVED_CACHED`` projects asked for last keep theirs loaded
    (their predictions, and their model once a task needed it: ~43 MB at width 64); another
    project's is read again on its next request (found by review, 2026-12-05: every project's
    stayed loaded for the process's life)."""

    _cache: "OrderedDict[tuple, ServedCycle]" = OrderedDict()
    _cache_lock = threading.Lock()

    def __init__(self, path: Path, pointer: dict):
        self.path = path
        self.pointer = pointer
        self.version = pointer["model_version"]
        preds, self.transient = _read_predictions(path / "predictions.json")
        self.entries = preds.get("tasks", {})
        self.entries = self.entries if isinstance(self.entries, dict) else {}
        self.labels = list(preds.get("labels") or pointer.get("labels") or [])
        self.multilabel = bool(preds.get("multilabel", pointer.get("multilabel", False)))
        self._model = None
        self._meta = None
        self._index: Optional[PlacementIndex] = None
        self._lock = threading.Lock()

    @classmethod
    def latest(cls, model_dir: Path, project_id: int) -> Optional["ServedCycle"]:
        latest = ProjectStore(model_dir, project_id).served()
        if not latest:
            return None
        key = (str(model_dir), project_id)
        with cls._cache_lock:
            cur = cls._cache.get(key)
            if cur is not None and cur.path == latest["path"]:
                cls._cache.move_to_end(key)
                return cur
        # read outside the lock: another project's request does not wait for this file
        cur = cls(latest["path"], latest)
        if cur.transient:  # this request degrades (its ranked tasks are classified again); the next reads again
            return cur
        with cls._cache_lock:
            had = cls._cache.get(key)
            if had is not None and had.path == cur.path:
                cur = had  # read meanwhile by another request: one copy (and one model) stays
            cls._cache[key] = cur
            cls._cache.move_to_end(key)
            while len(cls._cache) > SERVED_CACHED:  # the least recently asked-for goes; a request
                cls._cache.popitem(last=False)    # still using it keeps its own reference
        return cur

    def serves(self, cfg: ImageClassConfig) -> bool:
        """Whether this cycle's model answers for ``cfg`` (same labels in the same order, same kind)."""
        return self.labels == list(cfg.labels) and self.multilabel == cfg.multilabel

    def placement(self) -> PlacementIndex:
        with self._lock:
            if self._index is None:
                self._index = PlacementIndex(self.entries)
            return self._index

    def model_and_meta(self):
        with self._lock:
            if self._model is None:
                from ncalr_backend.engine import load_model
                self._model, self._meta = load_model(self.path / "model.pt")
            return self._model, self._meta


def current_version(settings: Settings, project_id: Optional[int]) -> str:
    if project_id is None:
        return UNTRAINED_VERSION
    served = ProjectStore(settings.model_dir, project_id).served()  # the version Label Studio serves
    return served["model_version"] if served else UNTRAINED_VERSION


def predict_tasks(settings: Settings, cfg: ImageClassConfig, tasks: List[dict], project_id: Optional[int]
                  ) -> List[dict]:
    """One result per task; an empty ``result`` under ``UNTRAINED_VERSION`` where nothing can be
    said (before the first cycle, after the labeling config changed, or a task that cannot be
    classified now): Label Studio accepts that without logging an error, and the next live cycle
    deletes those placeholders (``writeback.prune_versions``)."""
    served = ServedCycle.latest(settings.model_dir, project_id) if project_id is not None else None
    if served is None or not served.serves(cfg):
        return [unclassified() for _ in tasks]
    results: List[Optional[dict]] = [None] * len(tasks)
    missing = []
    for i, t in enumerate(tasks):
        entry = served.entries.get(str(t.get("id")))
        if entry is not None:
            results[i] = result_for_predict(entry, cfg, served.version)
        else:
            missing.append(i)
    if missing:
        _predict_on_the_fly(settings, [tasks[i] for i in missing], missing, results, cfg, served)
    # nothing to say now: a placeholder that is NOT of the live version (see the module docstring),
    # so that Label Studio asks again and placement still places the task
    return [r if r is not None else unclassified() for r in results]


def unclassified() -> dict:
    """The answer for a task /predict cannot classify now: an empty result under
    ``UNTRAINED_VERSION`` (Label Studio accepts an empty result without an error), score 1.0."""
    return {"result": [], "score": 1.0, "model_version": UNTRAINED_VERSION}


def _predict_on_the_fly(settings: Settings, tasks, positions, results, cfg: ImageClassConfig, served: ServedCycle):
    try:
        client = make_client(settings)
    except Exception as exc:  # no Label Studio credentials: nothing to download with
        log.warning("/predict cannot fetch images: %s", exc)
        return
    try:
        model, meta = served.model_and_meta()
    except Exception as exc:  # noqa: BLE001 - a damaged model.pt: the ranked tasks keep their answers
        log.error("/predict: the model of %s cannot be loaded (%s: %s); tasks it did not rank get no "
                  "prediction", served.version, exc.__class__.__name__, exc)
        return
    size, channels = model_input(meta, settings)
    cache, index, failed = ImageCache(settings.model_dir / "cache", read_only=True), served.placement(), []
    start = time.monotonic()
    client.deadline = start + PREDICT_DEADLINE_S  # a download in flight ends there too, not 10 x HTTP_TIMEOUT later
    for lo in range(0, len(tasks), PREDICT_CHUNK):  # Label Studio's "Retrieve predictions" sends every selected task
        if lo and time.monotonic() - start > PREDICT_DEADLINE_S:
            log.warning("/predict: %d of %d unranked tasks left without a prediction after %.0f s (Label Studio "
                        "stops waiting at ML_TIMEOUT_PREDICT, 100 s by default, and then keeps none of the "
                        "answers); Label Studio asks for them again, the next cycle ranks them",
                        len(tasks) - lo, len(tasks), time.monotonic() - start)
            break
        x, ok_idx, failures = load_images(client, cache, tasks[lo:lo + PREDICT_CHUNK], cfg, size, channels,
                                          min(4, settings.download_workers))
        failed += failures
        if not ok_idx:
            continue
        try:
            entries = classify(model, meta, x, cfg)
        except Exception:  # noqa: BLE001 - e.g. out of GPU memory while a cycle trains: these tasks get
            # no prediction, the other chunks and every ranked task keep theirs (not a 500 for all)
            log.exception("/predict: the model of %s failed on %d tasks; they get no prediction",
                          served.version, len(ok_idx))
            continue
        for i, entry in zip(ok_idx, entries):
            entry["score"] = index.place(entry["confidence"])
            results[positions[lo + i]] = result_for_predict(entry, cfg, served.version)
    for f in failed[:MAX_LOGGED_FAILURES]:
        log.warning("/predict: task %s: %s", f["task"], f["reason"])
    if len(failed) > MAX_LOGGED_FAILURES:
        log.warning("/predict: %d more tasks without a readable image", len(failed) - MAX_LOGGED_FAILURES)
