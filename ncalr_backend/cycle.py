"""One active-learning cycle for one Label Studio project, end to end.

fetch (tasks + annotations, paginated; images, cached) -> engine (train into the terminal phase,
score, rank) -> write back (one prediction per unlabeled task under a new model_version, in chunks;
every prediction checked) -> switch the project to the new version (+ "Uncertainty sampling") ->
persist (the cycle's directory is moved into place, then ``latest.json`` is switched).

Which annotation wins: a task is labeled when it has at least one annotation that is not
cancelled (skipped). If it has several, a ground-truth annotation wins; among equals the most
recently updated one wins (ties: the highest id). Its first choice of the config's ``<Choices>`` is
the label. A labeled task whose winning annotation has no usable choice (empty, or a value not in
the config) is left out of both training and the queue, and reported.

Multi-label projects (``<Choices choice="multiple">``): the label is the SET of the winning
annotation's choices, a multi-hot row of ``y_lab`` [N, K]. An annotation with no choice, or with
any value not in the config, is unusable (left out and reported with the offending value), never
silently shrunk. Predictions carry the predicted label SET (the engine's set rule,
``multilabel.predict_sets``), most probable first; the result's ``score`` is the softmax mass on
the set and ``result[0]["choice_probs"]`` holds ``{label: probability}`` for the chosen labels.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from .data.images import BrokenImage, ImageCache, decode_image
from .labelconfig import ImageClassConfig, parse_label_config
from .labelstudio import ImageRefused, LabelStudioClient, LabelStudioError
from .settings import Settings
from .store import ProjectStore, atomic_write_json, read_json

log = logging.getLogger(__name__)


class CycleError(RuntimeError):
    """The cycle cannot complete; the message says why (nothing was switched)."""


def utcstamp(t: Optional[float] = None) -> str:
    return datetime.fromtimestamp(t if t is not None else time.time(), timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def model_version_name(project_id: int, cycle: int, t: Optional[float] = None) -> str:
    return f"ncalr-{int(project_id)}-c{cycle:04d}-{utcstamp(t)}"


def make_client(settings: Settings) -> LabelStudioClient:
    settings.require_label_studio()
    from urllib.parse import urlsplit
    return LabelStudioClient(settings.label_studio_url, settings.label_studio_api_key,
                             timeout=settings.http_timeout, allowed_hosts=settings.allowed_image_hosts)


# ---------------------------------------------------------------------------- annotations
def _ts(a: dict) -> str:
    return str(a.get("updated_at") or a.get("created_at") or "")


def winning_annotation(task: dict) -> Optional[dict]:
    """The annotation that labels ``task`` (see the module docstring), or None if unlabeled."""
    anns = [a for a in (task.get("annotations") or []) if isinstance(a, dict) and not a.get("was_cancelled")]
    if not anns:
        return None
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
    pool: List[dict] = field(default_factory=list)
    unusable: List[dict] = field(default_factory=list)    # {"task", "reason"}


def split_tasks(tasks: Sequence[dict], cfg: ImageClassConfig) -> Split:
    s = Split()
    for t in tasks:
        ann = winning_annotation(t)
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
            continue
        y = annotation_label(ann, cfg)
        if y is None:
            s.unusable.append({"task": t["id"], "reason": f"annotation {ann.get('id')} has no choice of "
                                                          f"{cfg.labels} for <Choices name={cfg.choices_name!r}>"})
            continue
        s.labeled.append(t)
        s.labels.append(y)
    return s


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


# ---------------------------------------------------------------------------- images
def load_images(client: LabelStudioClient, cache: ImageCache, tasks: Sequence[dict], cfg: ImageClassConfig,
                size: int, channels: int, workers: int = 8):
    """Arrays for ``tasks`` ([n, C, H, W]) and the per-task failures; failed tasks are left out."""

    def one(task):
        url = (task.get("data") or {}).get(cfg.data_key)
        try:
            if not isinstance(url, str):
                raise ImageRefused(f"task data has no {cfg.data_key!r} string")
            data = cache.get(url, client.download)
            try:
                return decode_image(data, size, channels), None
            except BrokenImage:
                cache.evict(url)
                raise
        except (ImageRefused, BrokenImage, LabelStudioError) as exc:
            return None, str(exc)

    with ThreadPoolExecutor(max_workers=max(1, workers)) as ex:
        results = list(ex.map(one, tasks))
    ok_idx, arrays, failures = [], [], []
    for i, (arr, err) in enumerate(results):
        if arr is None:
            failures.append({"task": tasks[i]["id"], "reason": err})
        else:
            ok_idx.append(i)
            arrays.append(arr)
    x = np.stack(arrays).astype(np.float32) if arrays else np.zeros((0, channels, size, size), np.float32)
    return x, ok_idx, failures


# ---------------------------------------------------------------------------- predictions
# Where a multi-label prediction keeps its per-choice probabilities: an extra key of the result
# item. Label Studio 1.23 stores a prediction's result list as given (the import endpoint and the
# /predict path keep only task/result/score/model_version at the top level, but every key of a
# result item), returns it in /api/predictions/, the task API, exports and the Data Manager's
# "Prediction results" column; its validation looks at from_name/to_name/type/value only.
PROBS_KEY = "choice_probs"


def predicted_sets(probs: np.ndarray, meta: Optional[dict]) -> np.ndarray:
    """The engine's set rule for a multi-label model: bool [n, K]."""
    from .multilabel import predict_sets
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
        "score": round(float(queue_score), 6),
        "model_version": model_version,
    }


def result_for_predict(entry: dict, cfg: ImageClassConfig, model_version: str) -> dict:
    """A /predict result from a stored prediction entry (see ``prediction_entry``)."""
    out = {
        "result": [_result_item(entry, cfg, float(entry["confidence"]))],
        "score": float(entry["score"]) if entry.get("score") is not None else float(entry["confidence"]),
        "model_version": model_version,
    }
    return out


# ---------------------------------------------------------------------------- the cycle
def _drop_orphans(client: LabelStudioClient, store: ProjectStore, project_id: int) -> None:
    """Delete predictions of versions a crash or a failure left half-written (never switched to)."""
    orphans = list(store.state().get("orphan_versions") or [])
    if not orphans:
        return
    current = (store.latest() or {}).get("model_version")
    left = []
    for v in orphans:
        if v == current:
            continue
        try:
            client.delete_model_version(project_id, v)
            log.info("project %s: deleted the predictions of interrupted version %s", project_id, v)
        except LabelStudioError as exc:
            log.warning("project %s: could not delete interrupted version %s: %s", project_id, v, exc)
            left.append(v)
    store.update_state(orphan_versions=left)


def run_project_cycle(settings: Settings, project_id: int, reason: str = "manual",
                      triggered_at: Optional[float] = None, engine_config=None,
                      client: Optional[LabelStudioClient] = None, progress: Optional[Callable] = None) -> dict:
    """Run one cycle for ``project_id``; returns its report. Raises CycleError on failure."""
    from .engine import EngineConfig, load_model, run_cycle  # the engine is heavy: import on use

    t0 = time.time()
    triggered_at = triggered_at or t0
    client = client or make_client(settings)
    store = ProjectStore(settings.model_dir, project_id)
    cycle = store.next_cycle_number()
    version = model_version_name(project_id, cycle, t0)
    store.update_state(in_progress={"cycle": cycle, "reason": reason, "started_at": t0, "model_version": version,
                                    "triggered_at": triggered_at}, cycles_started=cycle)
    work = store.new_workdir(cycle)
    report = {"project": int(project_id), "cycle": cycle, "model_version": version, "reason": reason,
              "triggered_at": triggered_at, "started_at": t0, "status": "running", "timings": {}}
    timings = report["timings"]
    wrote = False
    try:
        _drop_orphans(client, store, project_id)
        # ---- fetch
        t = time.time()
        project = client.get_project(project_id)
        cfg = parse_label_config(project.get("label_config"))
        tasks = client.list_tasks(project_id, settings.page_size)
        timings["fetch_tasks_s"] = time.time() - t
        split = split_tasks(tasks, cfg)
        t = time.time()
        cache = ImageCache(settings.model_dir / "cache")
        x_all, ok_idx, failures = load_images(client, cache, split.labeled + split.pool, cfg,
                                              settings.image_size, settings.image_channels,
                                              settings.download_workers)
        timings["fetch_images_s"] = time.time() - t
        timings["fetch_s"] = timings["fetch_tasks_s"] + timings["fetch_images_s"]
        n_lab = len(split.labeled)
        lab_ok = [i for i in ok_idx if i < n_lab]
        pool_ok = [i - n_lab for i in ok_idx if i >= n_lab]
        pos = {i: k for k, i in enumerate(ok_idx)}
        x_lab = x_all[[pos[i] for i in lab_ok]] if lab_ok else x_all[:0]
        y_lab = label_matrix([split.labels[i] for i in lab_ok], cfg)
        x_pool = x_all[[pos[i + n_lab] for i in pool_ok]] if pool_ok else x_all[:0]
        lab_ids = [split.labeled[i]["id"] for i in lab_ok]
        pool_ids = [split.pool[i]["id"] for i in pool_ok]
        report.update(num_tasks=len(tasks), num_labeled=len(lab_ids), num_pool=len(pool_ids),
                      image_failures=failures, unusable_annotations=split.unusable,
                      multilabel=cfg.multilabel, **label_report(y_lab, cfg))
        for u in split.unusable:
            log.warning("project %s cycle %s: task %s left out: %s", project_id, cycle, u["task"], u["reason"])
        for f in failures:
            log.warning("project %s cycle %s: task %s left out: %s", project_id, cycle, f["task"], f["reason"])
        if len(lab_ids) == 0:
            raise CycleError("no labeled task with a readable image yet: nothing to train on")

        # ---- train + score (the engine)
        ecfg = engine_config or EngineConfig.from_env(prefix="NCALR_")
        init_state = None
        latest = store.latest()
        if getattr(ecfg, "warm_start", False) and latest and (latest["path"] / "model.pt").exists():
            try:
                prev, meta = load_model(latest["path"] / "model.pt")
                # same head size AND the same kind of task (old checkpoints: single-label)
                if (int(meta.get("num_classes", -1)) == cfg.num_classes
                        and bool(meta.get("multilabel", False)) == cfg.multilabel):
                    init_state = prev.state_dict()
            except Exception as exc:  # a stale checkpoint must not stop the cycle
                log.warning("warm start skipped: %s", exc)
        t = time.time()
        res = run_cycle(x_lab, y_lab, x_pool, num_classes=cfg.num_classes, config=ecfg, out_dir=work,
                        init_state=init_state, progress=progress)
        wall = time.time() - t
        timings["train_s"] = float(res.timings.get("train_s", wall))
        timings["score_s"] = float(res.timings.get("score_s", max(0.0, wall - timings["train_s"])))
        timings["engine_s"] = wall

        # ---- predictions: queue score = rank / M (0 = serve first)
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
        for j, tid in enumerate(pool_ids):
            e = prediction_entry(res.probs[j], cfg, None if sets is None else sets[j],
                                 confidence=float(res.confidence[j]))
            qs = float(rank_of[j]) / m
            entries[str(tid)] = {**e, "score": qs, "rank": int(rank_of[j])}
            items.append(prediction_item(tid, e, qs, cfg, version))
        if sets is not None:
            report["predicted_set_sizes"] = {str(int(v)): int(c) for v, c in
                                             zip(*np.unique(sets.sum(1), return_counts=True))}
        atomic_write_json(work / "predictions.json", {"model_version": version, "labels": list(cfg.labels),
                                                       "multilabel": cfg.multilabel, "tasks": entries})
        atomic_write_json(work / "tasks.json", {"labeled": lab_ids, "pool": pool_ids, "multilabel": cfg.multilabel,
                                                "labels": [split.labels[i] for i in lab_ok]})

        # ---- write back, check, switch
        t = time.time()
        wrote = bool(items)
        created = client.import_predictions(project_id, items, settings.prediction_chunk_size) if items else 0
        timings["write_s"] = time.time() - t
        report["predictions_sent"] = len(items)
        report["predictions_created"] = created
        report["write_per_s"] = (len(items) / timings["write_s"]) if timings["write_s"] > 0 and items else None
        if created != len(items):
            raise CycleError(f"Label Studio created {created} of {len(items)} predictions for {version} "
                             "(it drops predictions that do not match the labeling config); "
                             "the project was NOT switched to this version")
        t = time.time()
        if items:
            counts = client.model_versions(project_id)
            if int(counts.get(version, 0)) < len(items):
                raise CycleError(f"Label Studio lists {counts.get(version, 0)} predictions under {version}, "
                                 f"expected {len(items)}; the project was NOT switched")
            patch = {"model_version": version}
            if settings.set_sampling:
                patch["sampling"] = "Uncertainty sampling"
            client.patch_project(project_id, patch)
        timings["switch_s"] = time.time() - t
        done = time.time()
        timings["trigger_to_live_s"] = done - triggered_at
        timings["cycle_s"] = done - t0
        report.update(status="completed", finished_at=done, live=bool(items),
                      engine=res.summary() if hasattr(res, "summary") else {}, settings=settings.public())
        atomic_write_json(work / "report.json", report)
        store.commit(work, cycle, {"model_version": version, "finished_at": done,
                                   "num_classes": cfg.num_classes, "labels": list(cfg.labels),
                                   "multilabel": cfg.multilabel,
                                   "data_key": cfg.data_key, "live": bool(items)})
        store.update_state(in_progress=None, last_completed=cycle, last_model_version=version)
        log.info("project %s cycle %s (%s) completed: %d labeled, %d ranked, %.1fs trigger-to-live",
                 project_id, cycle, version, len(lab_ids), m, timings["trigger_to_live_s"])
        return report
    except Exception as exc:
        report.update(status="failed", error=str(exc) if isinstance(exc, (CycleError, LabelStudioError, ValueError))
                      else f"{exc.__class__.__name__}: {exc}", finished_at=time.time())
        if wrote:  # leave no half-written version behind in Label Studio
            try:
                client.delete_model_version(project_id, version)
            except Exception as exc2:
                log.warning("could not delete the predictions of failed version %s: %s", version, exc2)
                store.update_state(orphan_versions=sorted(set(store.state().get("orphan_versions") or []) | {version}))
        try:
            atomic_write_json(work / "report.json", report)
            store.fail(work, cycle, utcstamp())
        finally:
            store.update_state(in_progress=None, last_failed=cycle, last_error=report["error"])
        log.error("project %s cycle %s failed: %s", project_id, cycle, report["error"],
                  exc_info=not isinstance(exc, (CycleError, LabelStudioError)))
        if isinstance(exc, CycleError):
            raise
        raise CycleError(report["error"]) from exc


# ---------------------------------------------------------------------------- new tasks
def placement_score(confidence: float, entries: dict, k: int = 5) -> float:
    """Queue score for a task the latest cycle did not rank (created after it).

    The median queue score of the ``k`` ranked tasks whose confidence is closest: an uncertain new
    image lands among the uncertain ranked ones, until the next cycle ranks everything with NCAL-R.
    Used by both TASKS_CREATED placement and /predict, so both give a task the same place.
    """
    if not entries:
        return float(min(1.0, max(0.0, 1.0 - confidence)))
    conf = np.asarray([e["confidence"] for e in entries.values()], dtype=np.float64)
    score = np.asarray([e["score"] for e in entries.values()], dtype=np.float64)
    near = np.argsort(np.abs(conf - confidence), kind="stable")[:k]
    return float(np.median(score[near]))


def place_new_tasks(settings: Settings, project_id: int, tasks: Sequence, client: Optional[LabelStudioClient] = None
                    ) -> dict:
    """Give tasks created after the latest cycle a queue place from the current model (no training).

    ``tasks``: the TASKS_CREATED payload's tasks (``{"id", "data"}``) or bare ids. A task that
    already has a prediction of the current version (Label Studio may have asked /predict for it
    meanwhile, which gives the same place) is left alone. Note: reading a task through
    ``GET /api/tasks/<id>/`` makes Label Studio call /predict itself, so the data comes from the
    webhook payload (or the paginated list) instead.
    """
    from .engine import load_model, predict_proba

    store = ProjectStore(settings.model_dir, project_id)
    latest = store.latest()
    if not latest or not latest.get("live"):
        return {"placed": 0, "reason": "no completed cycle yet: the next cycle ranks them"}
    client = client or make_client(settings)
    known = (read_json(latest["path"] / "predictions.json", {}) or {}).get("tasks", {})
    given = [t if isinstance(t, dict) else {"id": int(t)} for t in tasks]
    given = [t for t in given if str(t["id"]) not in known]
    if not given:
        return {"placed": 0}
    project = client.get_project(project_id)
    cfg = parse_label_config(project.get("label_config"))
    if (list(cfg.labels) != list(latest.get("labels", []))
            or cfg.multilabel != bool(latest.get("multilabel", False))):
        return {"placed": 0, "reason": "labeling config changed since the latest cycle"}
    if any(not isinstance(t.get("data"), dict) for t in given):
        wanted = {int(t["id"]) for t in given}
        given = [t for t in client.iter_tasks(project_id, settings.page_size) if t["id"] in wanted]
    version = latest["model_version"]
    todo = []
    for t in given:
        if winning_annotation(t) is not None:
            continue
        existing = client.get_json("/api/predictions/", params={"task": int(t["id"])})
        if any(p.get("model_version") == version for p in existing):
            continue
        todo.append(t)
    x, ok_idx, failures = load_images(client, ImageCache(settings.model_dir / "cache"), todo, cfg,
                                      settings.image_size, settings.image_channels, settings.download_workers)
    if not ok_idx:
        return {"placed": 0, "failures": failures}
    model, meta = load_model(latest["path"] / "model.pt")
    probs = predict_proba(model, x)
    sets = predicted_sets(probs, meta) if cfg.multilabel else None
    items = []
    for k, i in enumerate(ok_idx):
        e = prediction_entry(probs[k], cfg, None if sets is None else sets[k])
        items.append(prediction_item(todo[i]["id"], e, placement_score(e["confidence"], known), cfg, version))
    created = client.import_predictions(project_id, items, settings.prediction_chunk_size)
    if created != len(items):
        raise CycleError(f"Label Studio created {created} of {len(items)} predictions for new tasks")
    log.info("project %s: placed %d new tasks under %s", project_id, created, version)
    return {"placed": created, "failures": failures, "model_version": version}
