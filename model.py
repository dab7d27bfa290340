"""The Label Studio ML backend class: thin glue between label-studio-ml and ncalr_backend.

* ``predict`` serves pre-annotations from the latest COMPLETED cycle of the project (label +
  confidence, and the task's NCAL-R queue score when the cycle ranked it; tasks the cycle did not
  see are classified on the fly by the same model and placed like TASKS_CREATED places them).
  Multi-label projects (``<Choices choice="multiple">``) get the predicted label SET (the engine's
  set rule), the softmax mass on it as the result's score and ``{label: probability}`` under
  ``result[0]["choice_probs"]``.
* Training never happens here or in a request: webhooks request cycles from the scheduler
  (``ncalr_backend.scheduler``), which runs ``ncalr_backend.cycle.run_project_cycle``.

label-studio-ml 1.0.9 gaps against Label Studio 1.23 and how this class / ``_wsgi.py`` close them:
1. START_TRAINING missing from TRAIN_EVENTS -> listed below, starts a cycle.
2. ANNOTATION_DELETED vs ANNOTATIONS_DELETED -> the plural is counted.
3. PROJECT_UPDATED retrains (and the backend's own PATCH emits it) -> ignored, never trains.
4. one process per webhook, RQ drops events -> our own coalescing scheduler.
5. fit() gets no data -> the cycle fetches everything from the Label Studio API.
6. get_local_path sends only "Token" auth -> our client handles Token and PAT (Bearer + refresh).
7. tracebacks in 500 responses -> _wsgi.py answers {"error": ...} without internals.
8. /versions POST-only -> GET and POST.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import List, Optional

from label_studio_ml.model import LabelStudioMLBase

from ncalr_backend.labelconfig import ImageClassConfig, parse_label_config
from ncalr_backend.settings import Settings
from ncalr_backend.store import ProjectStore, read_json

log = logging.getLogger(__name__)

UNTRAINED_VERSION = "ncalr-untrained"


def project_id_from(value) -> Optional[int]:
    """Label Studio sends projects as "<id>.<created_ts>", an int, or a dict with "id"."""
    if isinstance(value, dict):
        value = value.get("id")
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, int):
        return value if value > 0 else None
    try:
        pid = int(str(value).split(".")[0])
    except (TypeError, ValueError):
        return None
    return pid if pid > 0 else None


class _Served:
    """The latest completed cycle of one project, loaded once (reloaded when a new one completes)."""

    def __init__(self, path: Path, pointer: dict):
        self.path = path
        self.pointer = pointer
        self.version = pointer["model_version"]
        preds = read_json(path / "predictions.json", {}) or {}
        self.entries = preds.get("tasks", {})
        self.labels = list(preds.get("labels") or pointer.get("labels") or [])
        self.multilabel = bool(preds.get("multilabel", pointer.get("multilabel", False)))
        self._model = None
        self._meta = None
        self._lock = threading.Lock()

    def model(self):
        return self.model_and_meta()[0]

    def model_and_meta(self):
        with self._lock:
            if self._model is None:
                from ncalr_backend.engine import load_model
                self._model, self._meta = load_model(self.path / "model.pt")
            return self._model, self._meta


class NCALRBackend(LabelStudioMLBase):
    TRAIN_EVENTS = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED", "START_TRAINING")

    _served = {}
    _served_lock = threading.Lock()

    def __init__(self, label_config=None, train_output=None, settings: Optional[Settings] = None, **kwargs):
        super().__init__(label_config=label_config, train_output=train_output, **kwargs)
        self.settings = settings or Settings.from_env()

    # ------------------------------------------------------------------ setup
    @staticmethod
    def check_config(label_config: str) -> ImageClassConfig:
        """Raise LabelConfigError with what the backend needs unless the config is Image + Choices."""
        return parse_label_config(label_config)

    def current_version(self, project_id: Optional[int]) -> str:
        if project_id is None:
            return UNTRAINED_VERSION
        latest = ProjectStore(self.settings.model_dir, project_id).latest()
        return latest["model_version"] if latest else UNTRAINED_VERSION

    # ---------------------------------------------------------------- predict
    @classmethod
    def served(cls, model_dir: Path, project_id: int) -> Optional[_Served]:
        latest = ProjectStore(model_dir, project_id).latest()
        if not latest:
            return None
        with cls._served_lock:
            cur = cls._served.get((str(model_dir), project_id))
            if cur is None or cur.path != latest["path"]:
                cur = _Served(latest["path"], latest)
                cls._served[(str(model_dir), project_id)] = cur
            return cur

    def predict(self, tasks: List[dict], project_id: Optional[int] = None, **kwargs) -> List[dict]:
        """One result per task (an empty ``result`` where nothing can be said), or [] before any cycle."""
        cfg = parse_label_config(self.label_config)
        if project_id is None:
            return []
        served = self.served(self.settings.model_dir, project_id)
        if served is None or served.labels != list(cfg.labels) or served.multilabel != cfg.multilabel:
            return []
        from ncalr_backend.cycle import result_for_predict
        results: List[Optional[dict]] = [None] * len(tasks)
        missing = []
        for i, t in enumerate(tasks):
            entry = served.entries.get(str(t.get("id")))
            if entry is not None:
                results[i] = result_for_predict(entry, cfg, served.version)
            else:
                missing.append(i)
        if missing:
            self._predict_on_the_fly([tasks[i] for i in missing], missing, results, cfg, served)
        # nothing to say (image missing or broken): score 1.0 puts such a task at the END of the queue
        return [r if r is not None else {"result": [], "score": 1.0, "model_version": served.version}
                for r in results]

    def _predict_on_the_fly(self, tasks, positions, results, cfg: ImageClassConfig, served: _Served):
        try:
            from ncalr_backend.cycle import (load_images, make_client, placement_score, predicted_sets,
                                             prediction_entry, result_for_predict)
            from ncalr_backend.data.images import ImageCache
            from ncalr_backend.engine import predict_proba
            client = make_client(self.settings)
        except Exception as exc:  # no Label Studio credentials: nothing to download with
            log.warning("/predict cannot fetch images: %s", exc)
            return
        x, ok_idx, failures = load_images(client, ImageCache(self.settings.model_dir / "cache"), tasks, cfg,
                                          self.settings.image_size, self.settings.image_channels,
                                          min(4, self.settings.download_workers))
        for f in failures:
            log.warning("/predict: task %s: %s", f["task"], f["reason"])
        if not ok_idx:
            return
        model, meta = served.model_and_meta()
        probs = predict_proba(model, x)
        sets = predicted_sets(probs, meta) if cfg.multilabel else None
        for k, i in enumerate(ok_idx):
            entry = prediction_entry(probs[k], cfg, None if sets is None else sets[k])
            entry["score"] = placement_score(entry["confidence"], served.entries)
            results[positions[i]] = result_for_predict(entry, cfg, served.version)

    # -------------------------------------------------------------------- fit
    def fit(self, tasks, workdir=None, **kwargs):
        """Training runs in cycles, never here: request one from the scheduler instead."""
        from _wsgi import get_scheduler  # noqa: WPS433 (only when the SDK calls fit)
        data = kwargs.get("data") or {}
        pid = project_id_from(data.get("project"))
        if pid is None:
            return {}
        return get_scheduler().request_cycle(pid, kwargs.get("event") or "fit")
