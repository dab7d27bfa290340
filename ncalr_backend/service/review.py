"""Suspected label errors, for reviewers, in Label Studio's own Data Manager.

Each cycle the engine scores every labeled task (``engine/label_errors.py``: the epoch-averaged
probability of the given label, with confident-learning per-class thresholds for the flags). This
module turns that into what a reviewer sees in Label Studio Community 1.23, as it is:

* ``label_error_entries``: one entry per labeled task (``label_errors.json`` in the cycle
  directory, ``report.json["label_errors"]``, the dashboard, ``/status``): task, given label, the
  model's suggestion, a score in [0, 1] (1 - the epoch-averaged probability of the given label;
  multi-label: of the given label most likely wrong, times the set size) and the flag.
* ``publish``: every flagged task gets three keys in its task data, ``ncalr_suspicion`` (the
  score, > 0), ``ncalr_label`` (the label it is about) and ``ncalr_suggested`` (the model's
  suggestion), and a Data Manager tab "Suspected label
  errors" filters on ``ncalr_suspicion > 0``, labeled tasks only, most suspect first. Why task data
  and not a prediction under a review version: the Data Manager can filter on a prediction's
  version but sorts by the score of the project's own version only, and task data is the only
  other per-task field it can filter and sort on numerically (``meta`` has no column). Writing
  task data changes no annotation and fires no webhook; the unlabeled queue is unaffected (it is
  driven by the predictions of the project's version, and these tasks are labeled anyway). A task
  that leaves the list gets ``null`` in the keys (never removed: a tab whose filter column
  disappears from every task shows all tasks).
* ``clear``: an annotation created, updated or deleted on a listed task (the reviewer corrected
  it, or re-submitted it to confirm it) takes it off the list at once, and the task's current
  label is remembered as reviewed: later cycles do not list it again unless its label changes
  (``annotations.annotation_fingerprint``).

State: ``MODEL_DIR/projects/<id>/review.json`` (the view's id, what is set on which task, the
reviewed fingerprints), changed under a file lock (web processes and RQ workers share it).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Optional

import numpy as np

from ncalr_backend.atomic import atomic_write_json
from ncalr_backend.service.annotations import annotation_id, label_fingerprint, task_fingerprint, winning_annotation
from ncalr_backend.service.labelconfig import ImageClassConfig, parse_label_config
from ncalr_backend.service.labelstudio import LabelStudioClient, LabelStudioError
from ncalr_backend.service.store import ProjectStore, finite_num, list_projects, locked_file, read_json

log = logging.getLogger(__name__)

VIEW_TITLE = "Suspected label errors"
KEY_SCORE = "ncalr_suspicion"
KEY_SUGGESTED = "ncalr_suggested"
KEY_LABEL = "ncalr_label"  # the label the score is about, as plain text (the annotation column is raw JSON)
_thread_lock = threading.RLock()
_todo_lock = threading.Lock()  # review_todo.json's: never waits behind a publish holding _thread_lock


# ---------------------------------------------------------------------------- entries
def label_error_entries(res, snap) -> List[dict]:
    """One entry per labeled task of the cycle, most suspect first (see the module docstring).
    Empty when the engine gave no label report (an engine without it, or no labels)."""
    rep = getattr(res, "label_report", None)
    if rep is None or not len(snap.lab_ids):
        return []
    cfg: ImageClassConfig = snap.cfg
    p = np.asarray(rep.prob_mean, dtype=np.float64)
    engine_score = (getattr(rep, "signals", None) or {}).get("p_mean")
    order = np.argsort(-np.asarray(rep.suspicion, dtype=np.float64), kind="stable")
    out = []
    for i in order:
        given = snap.lab_labels[i]
        if cfg.multilabel:
            ks = list(given)
            suspect = int(rep.suspect_label[i])
            # the engine's suspicion (per epoch min(1, |S| min p), then averaged) when it gave it, so
            # the list sorts as the engine ranks; from the averaged probabilities otherwise
            score = (float(engine_score[i]) if engine_score is not None
                     else 1.0 - min(1.0, len(ks) * float(p[i, suspect])))
            sug = [cfg.labels[k] for k in np.flatnonzero(np.asarray(rep.suggested[i], dtype=bool))]
            label, suggested = [cfg.labels[k] for k in ks], sug
            extra = {"suspect": cfg.labels[suspect]}
        else:
            score = 1.0 - float(p[i, int(given)])
            label, suggested = cfg.labels[int(given)], cfg.labels[int(rep.suggested[i])]
            extra = {}
        out.append({"task": int(snap.lab_ids[i]), "label": label, "suggested": suggested,
                    "score": round(max(0.0, score), 4), "flagged": bool(rep.flagged[i]),
                    "fingerprint": snap.lab_fingerprints[i], **extra})
    return out


def summary(entries: List[dict], top: int = 20) -> dict:
    flagged = [e for e in entries if e["flagged"]]
    return {"labeled": len(entries), "flagged": len(flagged),
            "top": [{k: e[k] for k in ("task", "label", "suggested", "score", "suspect") if k in e}
                    for e in flagged[:top]]}


# ---------------------------------------------------------------------------- state
class ReviewState:
    """``review.json``: ``view`` (the tab's id), ``listed`` {task: {score, suggested, fingerprint}}
    (what Label Studio shows now), ``reviewed`` {task: fingerprint}, ``reviewed_at`` {task: when},
    ``keys_written`` (the tab's filter column exists)."""

    def __init__(self, store: ProjectStore):
        self.store = store
        self.path = store.root / "review.json"

    @contextmanager
    def locked(self):
        """Read-modify-write under a lock shared by threads and processes; saved on exit."""
        with locked_file(self.store.root / ".review.lock", _thread_lock):
            self.set_aside_if_damaged()
            data = self.read()
            yield data
            atomic_write_json(self.path, data)  # reviewers' decisions: fsynced like state.json

    def read(self) -> dict:
        """review.json, each entry of the type its readers expect: a damaged file (not an object, a
        key of another type, an entry whose values are of another type) reads as empty there rather
        than failing every webhook that touches a listed task (a 500, its count lost) or every
        cycle's publish. What is dropped is logged; a file that is not a JSON object at all is set
        aside by ``locked`` before it is written over (it holds reviewers' decisions)."""
        d = read_json(self.path, {})
        return _by_value(_checked(d if isinstance(d, dict) else {}, self.path), self.store)

    def set_aside_if_damaged(self) -> None:
        """A review.json that is not a JSON object (truncated, not UTF-8) is renamed to
        ``review.json.corrupt-<time>`` before anything writes over it: reviewers' decisions are not a
        cache that Label Studio can give back, so the damaged file is kept for a person to read."""
        try:
            with open(self.path, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            return  # (any other OSError is raised: a read that failed is no damage)
        try:
            if isinstance(json.loads(raw.decode("utf-8")), dict):
                return
        except (ValueError, RecursionError):  # not UTF-8, not JSON, nested too deeply
            pass
        aside = self.path.with_name(f"review.json.corrupt-{time.time_ns()}")
        os.replace(self.path, aside)
        log.error("project %s: review.json was damaged (not a JSON object); set aside as %s, the reviewers' "
                  "decisions in it are not read (a later cycle may list reviewed tasks again)",
                  self.store.project_id, aside)

    def listed_tasks(self) -> Dict[str, dict]:
        return self.read()["listed"]

    def watched_tasks(self) -> set:
        """The tasks whose reviews matter now: those listed, and those a publish is listing at this
        moment (``publishing``, in review.json while its writes run): a correction made during the
        publish is queued like one of a listed task (found by review: its webhook was dropped, and
        the task stayed listed with the label it no longer had)."""
        d = self.read()
        return set(d["listed"]) | {str(t) for t in d["publishing"]}


LABEL_FORMAT = "values"  # review.json names classes by their choice value (fingerprints, re-annotation probabilities)


def _by_value(d: dict, store: ProjectStore) -> dict:
    """A review.json written before 2026-12-05 named classes by their index in the config of its
    time; translated here with the latest cycle's labels (the config it was written under, as far as
    the backend knows), once: the next write saves it by value (``LABEL_FORMAT``)."""
    if d.get("label_format") == LABEL_FORMAT:
        return d
    d["label_format"] = LABEL_FORMAT
    labels = list((store.latest() or {}).get("labels") or [])

    def value(k):
        return labels[k] if isinstance(k, int) and not isinstance(k, bool) and 0 <= k < len(labels) else None

    def fingerprint(fp):
        ann, sep, raw = str(fp).partition(":")
        try:
            k = json.loads(raw)
        except ValueError:
            return fp
        v = sorted(value(i) for i in k) if isinstance(k, list) and all(value(i) is not None for i in k) else value(k)
        return label_fingerprint(ann, v) if v is not None and sep else fp
    d["reviewed"] = {t: fingerprint(fp) for t, fp in d["reviewed"].items()}
    d["listed"] = {t: {**e, "fingerprint": fingerprint(e["fingerprint"])} if e.get("fingerprint") else e
                   for t, e in d["listed"].items()}
    d["relabel"] = {t: {**e, "probs": {value(int(k)): p for k, p in (e.get("probs") or {}).items()
                                       if _is_id(k) and value(int(k)) is not None}}
                    for t, e in d["relabel"].items()}
    return d


def _is_id(k) -> bool:
    return isinstance(k, str) and k.isascii() and k.isdigit() and 0 < len(k) <= 18


def _is_num(v) -> bool:
    return finite_num(v) is not None


def _checked(d: dict, path) -> dict:
    """``d`` with every entry of the types its readers expect (see ``ReviewState.read``)."""
    d = dict(d)
    dropped = []

    def keep(key, ok):
        v = d.get(key)
        if not isinstance(v, dict):
            if v is not None:
                dropped.append(key)
            return {}
        out = {k: e for k, e in v.items() if _is_id(k) and ok(e)}
        dropped.extend(f"{key}[{k}]" for k in v if k not in out)
        return out
    d["listed"] = keep("listed", lambda e: isinstance(e, dict) and _is_num(e.get("score"))
                       and all(isinstance(e.get(k), (str, type(None))) for k in ("label", "suggested", "fingerprint")))
    d["relabel"] = keep("relabel", lambda e: isinstance(e, dict) and isinstance(e.get("annotations"), int)
                        and not isinstance(e.get("annotations"), bool) and isinstance(e.get("probs", {}), dict)
                        and all(isinstance(k, str) for k in e.get("probs", {}))
                        and all(_is_num(p) for p in e.get("probs", {}).values())
                        and (e.get("cycle") is None or _is_num(e["cycle"]))
                        and (e.get("expired") is None or _is_num(e["expired"]))
                        and (e.get("answered") is None or _is_num(e["answered"])))
    d["reviewed"] = keep("reviewed", lambda e: isinstance(e, str))
    d["reviewed_at"] = keep("reviewed_at", _is_num)
    view = d.get("view")
    if not (view is None or (isinstance(view, int) and not isinstance(view, bool) and view > 0) or _is_id(view)):
        dropped.append("view")
        d["view"] = None
    d.setdefault("view", None)
    pub = d.get("publishing")
    d["publishing"] = [t for t in pub if isinstance(t, int) and not isinstance(t, bool)] if isinstance(pub, list) else []
    if not isinstance(d.get("keys_written"), bool):
        d["keys_written"] = False
    if dropped:
        log.error("%s: entries of the wrong type ignored (a damaged or hand-edited file): %s", path,
                  ", ".join(dropped[:20]) + (f" and {len(dropped) - 20} more" if len(dropped) > 20 else ""))
    return d


# ---------------------------------------------------------------------------- Label Studio
WRITE_CHUNK = 10  # tasks read just before they are written


def _write_keys(client: LabelStudioClient, project_id: int, values: Dict[int, Optional[dict]],
                done: Optional[Dict[int, Optional[dict]]] = None,
                current: Optional[Callable[[int, dict], bool]] = None, stale: Optional[List[int]] = None
                ) -> List[int]:
    """Set (or null) the three keys on each task; returns the tasks that no longer exist.

    ``current(task id, task as read now)``: whether the task still has the label its values are
    about; one that does not (relabeled since the cycle's snapshot) gets its keys nulled instead
    and goes into ``stale``.

    Label Studio's PATCH replaces a task's whole ``data`` and has no compare-and-set, so whatever
    another client writes into a task's data between our read and our write is lost. The window is
    kept short: tasks are read ``WRITE_CHUNK`` at a time, right before they are written (one read
    of every task up front left a window as long as the whole loop), and a task whose keys already
    hold these values is not written at all. ``done`` (optional) gets each task that holds its new
    values, as it goes: what a failure half-way through had already changed."""
    if not values:
        return []
    gone = []
    ids = list(values)
    for s in range(0, len(ids), WRITE_CHUNK):
        chunk = ids[s:s + WRITE_CHUNK]
        tasks = {int(t["id"]): t for t in client.get_tasks(project_id, chunk, resolve_uri=False)}
        for tid in chunk:
            v, t = values[tid], tasks.get(int(tid))
            if t is None:
                gone.append(int(tid))
                continue
            was_stale = v is not None and current is not None and not current(int(tid), t)
            if was_stale:
                v = None
            data = dict(t.get("data") or {})
            want = {KEY_SCORE: None if v is None else v["score"], KEY_LABEL: None if v is None else v.get("label"),
                    KEY_SUGGESTED: None if v is None else v["suggested"]}
            if not all(k in data and data[k] == w for k, w in want.items()):
                data.update(want)
                client.request("PATCH", f"/api/tasks/{int(tid)}/", json={"data": data})
            if was_stale and stale is not None:  # after its keys are nulled: a failed PATCH keeps it listed
                stale.append(int(tid))
            if done is not None:
                done[int(tid)] = v
    return gone


# Data Manager columns the tab hides, so that the task, its image, its current label, the score and
# the suggestion fit on one screen (a reviewer can show them again under "Columns")
HIDDEN = ["tasks:inner_id", "tasks:completed_at", "tasks:annotations_results", "tasks:total_annotations", "tasks:cancelled_annotations",
          "tasks:total_predictions", "tasks:annotators", "tasks:annotations_ids", "tasks:predictions_score",
          "tasks:predictions_model_versions", "tasks:predictions_results", "tasks:file_upload",
          "tasks:storage_filename", "tasks:created_at", "tasks:updated_at", "tasks:updated_by",
          "tasks:avg_lead_time", "tasks:draft_exists"]


def view_payload(project_id: int) -> dict:
    return {"project": int(project_id), "data": {
        "title": VIEW_TITLE, "type": "list", "target": "tasks",
        "hiddenColumns": {"explore": HIDDEN, "labeling": HIDDEN},
        "filters": {"conjunction": "and", "items": [
            {"filter": f"filter:tasks:data.{KEY_SCORE}", "operator": "greater", "type": "Number", "value": 0},
            {"filter": "filter:tasks:total_annotations", "operator": "greater", "type": "Number", "value": 0}]},
        "ordering": [f"-tasks:data.{KEY_SCORE}"],
        "columnsDisplayType": {f"tasks:data.{KEY_SCORE}": "Number"}}}


def ensure_view(client: LabelStudioClient, project_id: int, view_id: Optional[int]) -> int:
    """Create the tab, or put it back as it should be (a reviewer may have changed its filters)."""
    body = view_payload(project_id)
    if view_id is not None:
        try:
            client.request("PATCH", f"/api/dm/views/{int(view_id)}/", json=body)
            return int(view_id)
        except LabelStudioError as exc:
            if exc.status != 404:
                raise
    for v in client.get_json("/api/dm/views/", params={"project": int(project_id)}):
        if (v.get("data") or {}).get("title") == VIEW_TITLE:  # ours, from an earlier MODEL_DIR
            client.request("PATCH", f"/api/dm/views/{int(v['id'])}/", json=body)
            return int(v["id"])
    return int(client.request("POST", "/api/dm/views/", json=body).json()["id"])


def publish(client: LabelStudioClient, store: ProjectStore, project_id: int, entries: List[dict],
            since: Optional[float] = None, marked: Optional[Iterable[int]] = None,
            cfg: Optional[ImageClassConfig] = None) -> dict:
    """Make Label Studio list this cycle's flagged tasks (not those reviewed at their current
    label), and no other; keep the tab. Writes only what changed. ``since``: when the cycle
    started; a task reviewed after that was judged on a label this cycle may not have seen, so it
    is not listed again now (the next cycle decides on its current label). ``marked``: the tasks
    whose data in Label Studio carries the tab's score (the cycle's snapshot): any of them this
    state does not list is cleared too, so a lost or damaged ``review.json`` (a new MODEL_DIR, a
    reset volume) cannot leave stale tasks on the tab for good. ``cfg`` (the cycle's label config):
    each task about to be written is checked to still have the label the cycle scored (its
    fingerprint, read just before the write); one relabeled since the snapshot is not listed, as
    its correction's webhook (for a task not listed then) took nothing off the list. Reviews the
    webhooks queued (``ReviewTodo``) are applied first; those still queued are not listed."""
    try:
        clear_pending(client, store, project_id)
    except Exception as exc:  # noqa: BLE001 - Label Studio away: those tasks stay queued, and unlisted below
        log.warning("project %s: reviewed tasks still queued to come off the list: %s", project_id, exc)
    queued = set(ReviewTodo(store).read())
    with ReviewState(store).locked() as st:
        reviewed = st["reviewed"]
        newer = {t for t, at in st["reviewed_at"].items() if since is not None and at >= since} | queued
        flagged = [e for e in entries if e["flagged"]]
        target = {str(e["task"]): {"score": max(e["score"], 1e-4), "suggested": _label_text(e["suggested"]),
                                   "label": _label_text(e["label"]), "fingerprint": e["fingerprint"]}
                  for e in flagged if reviewed.get(str(e["task"])) != e["fingerprint"]
                  and str(e["task"]) not in newer}
        listed = st["listed"]
        changes: Dict[int, Optional[dict]] = {int(t): None for t in listed if t not in target}
        changes.update({int(t): None for t in (marked or ()) if str(t) not in target and str(t) not in listed})
        # a listed task the snapshot did not see marked lost its keys (a publish that failed half-way
        # is not saved to review.json): what review.json says it shows is then not what it shows
        seen = None if marked is None else {int(t) for t in marked}
        changes.update({int(t): v for t, v in target.items()
                        if not _shown_as(listed.get(t) if seen is None or int(t) in seen else None, v)})
        done: Dict[int, Optional[dict]] = {}  # tasks that hold their new values now
        stale: List[int] = []  # relabeled since the snapshot: cleared, not listed
        relabel = st["relabel"]

        def current(tid: int, task: dict) -> bool:
            prefer = (relabel.get(str(tid)) or {}).get("probs") or None  # as the cycle's split
            try:
                return cfg is None or task_fingerprint(task, cfg, prefer) == target[str(tid)]["fingerprint"]
            except Exception:  # noqa: BLE001 - one task Label Studio answers oddly: not listed, the rest go on
                log.exception("project %s: cannot read task %s's label; not listed", project_id, tid)
                return False
        failure: Optional[Exception] = None
        newly = sorted(int(t) for t in target if t not in listed and int(t) in changes)
        if newly:  # while the writes run, webhooks queue reviews of these too (``watched_tasks``)
            atomic_write_json(ReviewState(store).path, {**st, "publishing": newly})
        st["publishing"] = []
        try:
            gone = _write_keys(client, project_id, changes, done, current, stale)
        except Exception as exc:  # noqa: BLE001 - saved below, then raised: review.json must say what is shown
            failure, gone = exc, []
        gone = gone + stale  # both: not listed, their keys null
        # review.json = what Label Studio shows: a task not rewritten keeps the values it was written
        # with, one a failure kept from being written (or cleared) keeps its old ones
        shown = {}
        for t, v in target.items():
            if int(t) in gone:
                continue
            if int(t) not in changes:
                shown[t] = {**v, "score": listed[t]["score"]}
            elif int(t) in done:
                shown[t] = v
            elif t in listed:
                shown[t] = listed[t]
        shown.update({t: v for t, v in listed.items() if (t not in target or int(t) in stale)
                      and int(t) in changes and int(t) not in done and int(t) not in gone})
        st["listed"] = shown
        if failure is None and (st["listed"] or st["keys_written"]):
            st["keys_written"] = True
            try:
                st["view"] = ensure_view(client, project_id, st["view"])
            except Exception as exc:  # noqa: BLE001 - the keys are written and recorded; the view comes next cycle
                failure = exc
        out = {"listed": len(st["listed"]), "written": len(done), "view": st["view"],
               "suppressed_as_reviewed": sum(1 for e in flagged if reviewed.get(str(e["task"])) == e["fingerprint"]),
               "reviewed_during_cycle": sum(1 for e in flagged if str(e["task"]) in newer
                                            and reviewed.get(str(e["task"])) != e["fingerprint"]),
               "relabeled_since_snapshot": sorted(stale), "gone": len(gone) - len(stale)}
    if failure is not None:
        raise failure
    log.info("project %s: %d suspected label errors listed in Label Studio (tab %s; %d task data writes)",
             project_id, out["listed"], out["view"], out["written"])
    return out


def clear(client: LabelStudioClient, store: ProjectStore, project_id: int, tasks: Dict[int, Iterable[int]]
          ) -> List[int]:
    """Take tasks off the list (an annotation of theirs was created, updated or deleted) and
    remember a task's current label as reviewed when the annotation that now labels it is one the
    webhooks named (``tasks``: {task: ids of the annotations created or updated}; a deletion names
    none): a reviewer who deletes the annotation the list was about, or adds one that another (a
    ground truth) still outranks, has not confirmed the label that now wins, so a later cycle may
    list it. Every task named gets ``reviewed_at`` (not listed again by a cycle that started
    before), also one a publish took off the list before this ran. Returns the tasks taken off."""
    named = {str(int(t)): {int(a) for a in anns} for t, anns in tasks.items()}
    if not named:
        return []
    cfg = parse_label_config(client.get_project(project_id).get("label_config"))
    failure: Optional[Exception] = None
    with ReviewState(store).locked() as st:
        ids = [int(t) for t in named]  # listed when their webhook came (a publish may have unlisted them since)
        current = {int(t["id"]): t for t in client.get_tasks(project_id, ids, resolve_uri=False)}
        listed = [t for t in ids if str(t) in st["listed"]]
        done: Dict[int, Optional[dict]] = {t: None for t in ids if str(t) not in st["listed"]}  # nothing to null
        try:
            _write_keys(client, project_id, {t: None for t in listed}, done)
        except Exception as exc:  # noqa: BLE001 - saved below, then raised: review.json must say what is shown
            failure = exc
        # as publish: a failure half-way (Label Studio away) keeps the tasks it did not reach listed,
        # and records the reviewer's decision for those it did (a deleted task: nothing to record)
        ids = [t for t in ids if t in done or t not in current]
        for t in ids:
            prefer = ((st.get("relabel") or {}).get(str(t)) or {}).get("probs") or None  # as the cycle's split
            task = current.get(t)
            try:
                win = winning_annotation(task, cfg, prefer) if task is not None else None
                fp = task_fingerprint(task, cfg, prefer) if win is not None else None
            except Exception:  # noqa: BLE001 - one odd task must not keep the others' reviews queued
                log.exception("project %s: cannot read task %s's label; off the list, no review recorded",
                              project_id, t)
                win = fp = None
            if fp is not None and annotation_id(win) in named[str(t)]:
                st["reviewed"][str(t)] = fp
            st["reviewed_at"][str(t)] = time.time()
            st["listed"].pop(str(t), None)
    if failure is not None:
        raise failure
    off = sorted(t for t in ids if t in listed)
    if off:
        log.info("project %s: %d task(s) reviewed, off the suspected-label-errors list: %s", project_id, len(off), off)
    return off


class ReviewTodo:
    """``review_todo.json``: the reviews webhooks reported and ``clear`` has not yet applied
    ({task: {"at": when last reported, "annotations": [ids created or updated]}}). Written (fsynced)
    by the webhook before it answers, so a reviewer's decision survives a failed clear (Label
    Studio away), a restart, a crash: the background clearer retries, and every cycle's
    ``publish`` applies what is left first and never lists a task still here. Its own lock, held
    for one small read-modify-write: never behind a publish's Label Studio calls."""

    def __init__(self, store: ProjectStore):
        self.store = store
        self.path = store.root / "review_todo.json"

    @contextmanager
    def _locked(self):
        with locked_file(self.store.root / ".review_todo.lock", _todo_lock):
            data = self.read()
            before = dict(data)
            yield data
            if data != before:
                atomic_write_json(self.path, data)

    def read(self) -> Dict[str, dict]:
        d = read_json(self.path, {})
        if not isinstance(d, dict):
            return {}
        return {t: {"at": float(e["at"]), "annotations": [a for a in e.get("annotations") or []
                                                          if isinstance(a, int) and not isinstance(a, bool)]}
                for t, e in d.items() if _is_id(t) and isinstance(e, dict) and _is_num(e.get("at"))
                and isinstance(e.get("annotations", []), list)}

    def add(self, tasks: Dict[int, Iterable[int]]) -> None:
        now = time.time()
        with self._locked() as d:
            for t, anns in tasks.items():
                e = d.get(str(int(t))) or {"annotations": []}
                d[str(int(t))] = {"at": now, "annotations": sorted(set(e["annotations"]) | {int(a) for a in anns})}

    def done(self, seen: Dict[str, dict]) -> None:
        """Forget what ``seen`` (an earlier ``read``) held, unless reported again since."""
        with self._locked() as d:
            for t, e in seen.items():
                if t in d and d[t]["at"] <= e["at"]:
                    del d[t]


def clear_pending(client: LabelStudioClient, store: ProjectStore, project_id: int) -> List[int]:
    """Apply the reviews queued in ``ReviewTodo`` (``clear``); each is forgotten once applied (a
    failure half-way keeps those it did not reach)."""
    todo = ReviewTodo(store)
    seen = todo.read()
    if not seen:
        return []
    applied: List[int] = []
    try:
        applied = clear(client, store, project_id, {int(t): e["annotations"] for t, e in seen.items()})
    except Exception:
        st = ReviewState(store).read()  # what clear recorded before it failed
        todo.done({t: e for t, e in seen.items() if t not in st["listed"] and st["reviewed_at"].get(t, -1) >= e["at"]})
        raise
    todo.done(seen)
    return applied


def tasks_of_annotations(store: ProjectStore, annotation_ids: Iterable[int]) -> List[int]:
    """Listed tasks whose winning annotation is one of ``annotation_ids`` (ANNOTATIONS_DELETED
    names annotations only)."""
    ann = {str(int(a)) for a in annotation_ids}
    return [int(t) for t, v in ReviewState(store).listed_tasks().items()
            if str(v.get("fingerprint", "")).split(":", 1)[0] in ann]


# A listed task is written again when its score moved by at least this much (or its label or the
# suggestion changed). Every cycle moves every score a little; rewriting each listed task for that
# cost one PATCH per listed task per cycle (the tidy step that delays the next cycle grew with the
# labeled set: 5 s at 80 labels, 11 s at 560, docs/bench/live/head-idle) and reopened the window in
# which a PATCH can overwrite another client's edit of the task's data. The tab's order is right to
# within this step.
SCORE_STEP = 0.05


def _shown_as(shown: Optional[dict], want: dict) -> bool:
    """Whether what Label Studio shows for a listed task (``shown``, from review.json) is close
    enough to ``want`` to leave it unwritten."""
    if not shown or shown.get("score") is None:
        return False
    return (shown.get("label") == want["label"] and shown.get("suggested") == want["suggested"]
            and abs(float(shown["score"]) - float(want["score"])) < SCORE_STEP)


def _label_text(label) -> str:
    return ", ".join(label) if isinstance(label, list) else str(label)


class ReviewClearer:
    """Applies the reviews webhooks queued (``ReviewTodo``) in the background: the webhook answers
    at once. A failure (Label Studio away) is retried after ``RETRY_S`` (each delay once, then the
    last one again), and the next cycle's publish applies what is still queued."""

    RETRY_S = (5.0, 30.0, 120.0, 600.0)

    def __init__(self, settings, client_factory):
        self.settings = settings
        self.client_factory = client_factory
        self._cv = threading.Condition()
        self._due: Dict[int, float] = {}  # project -> when to (re)try
        self._tries: Dict[int, int] = {}
        self._thread: Optional[threading.Thread] = None

    def request(self, project_id: int, tasks: Dict[int, Iterable[int]]) -> int:
        """Queue ``tasks`` ({task: annotation ids created or updated}) durably, then wake the clearer."""
        tasks = {int(t): list(a) for t, a in tasks.items()}
        if not tasks:
            return 0
        ReviewTodo(ProjectStore(self.settings.model_dir, project_id)).add(tasks)
        self._wake(int(project_id), 0.0)
        return len(tasks)

    def resume(self) -> int:
        """At start: wake the clearer for every project whose review_todo.json holds reviews (a
        stop or a crash left them queued); returns how many projects."""
        n = 0
        for pid in list_projects(self.settings.model_dir):
            try:
                if ReviewTodo(ProjectStore(self.settings.model_dir, pid)).read():
                    self._wake(pid, 0.0)
                    n += 1
            except OSError as exc:
                log.warning("project %s: cannot read its queued reviews: %s", pid, exc)
        return n

    def _wake(self, pid: int, delay: float) -> None:
        with self._cv:
            due = time.monotonic() + delay
            self._due[pid] = min(self._due.get(pid, due), due)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="ncalr-review", daemon=True)
                self._thread.start()
            self._cv.notify_all()

    def _loop(self):
        while True:
            with self._cv:
                while True:
                    if not self._due:
                        if not self._cv.wait(60) and not self._due:
                            # said under the lock: a request from now on starts a new thread (between this
                            # return and the thread's end is_alive() is still True, and the request waited)
                            self._thread = None
                            return
                        continue
                    pid, at = min(self._due.items(), key=lambda kv: kv[1])
                    wait = at - time.monotonic()
                    if wait <= 0:
                        del self._due[pid]
                        break
                    self._cv.wait(wait)
            try:
                clear_pending(self.client_factory(), ProjectStore(self.settings.model_dir, pid), pid)
                self._tries.pop(pid, None)
            except Exception as exc:  # Label Studio away: kept in review_todo.json, tried again
                n = self._tries.get(pid, 0)
                self._tries[pid] = n + 1
                delay = self.RETRY_S[min(n, len(self.RETRY_S) - 1)]
                log.warning("project %s: could not take reviewed tasks off the list (kept, trying again in %.0f s; "
                            "the next cycle applies them too): %s", pid, delay, exc)
                self._wake(pid, delay)


# ---------------------------------------------------------------------------- re-annotation
# A task sent for re-annotation that no other annotator took within this many cycles (each one a
# trigger's worth of the team's annotations) goes back to what it was: with a single annotator it
# never can be taken (Label Studio never serves a task to its own annotator again), and waiting
# tasks use up the share, so nothing else would ever be sent.
RELABEL_WAIT_CYCLES = 3


@dataclass
class RelabelPlan:
    """Labeled tasks to put back into the queue for another annotator (``RELABEL_SHARE``)."""
    new: Dict[int, dict]  # task -> {"probs": {class: p}, "annotations": count now}
    pending: List[int]  # sent earlier, still waiting for their extra annotation
    items: List[dict]  # queue predictions (the model's suggestion), served before every ranked task
    expired: List[int] = field(default_factory=list)  # waited RELABEL_WAIT_CYCLES: given back
    cycle: Optional[int] = None  # the cycle that made the plan
    answered: List[int] = field(default_factory=list)  # got their extra annotation: overlap set back


def relabel_plan(settings, snap, res, entries: List[dict], store: ProjectStore, version: str,
                 cycle: Optional[int] = None) -> Optional[RelabelPlan]:
    """The most suspect labels, up to ``RELABEL_SHARE`` x the trigger threshold at a time (those
    still waiting count), as measured in docs/quality/README.md (relabeling). Single-label only.
    A task still waiting ``RELABEL_WAIT_CYCLES`` cycles after it was sent is given back
    (``expired``) and not sent again. With the feature off (``RELABEL_SHARE`` 0, or the project
    now multi-label) nothing new is sent and every task still waiting is given back at once (found
    by review, 2026-12-05: they were left needing a second annotator for good, so with one
    annotator the project never completed); None when there is nothing to do."""
    share = float(getattr(settings, "relabel_share", 0.0) or 0.0)
    rep = getattr(res, "label_report", None)
    off = share <= 0 or snap.cfg.multilabel
    st = ReviewState(store).read()
    sent = st.get("relabel") or {}
    if not sent and (off or rep is None or not entries):
        return None
    k = 0 if off else int(round(share * settings.trigger_threshold(snap.num_tasks)))
    pending, expired, answered = [], [], []
    for t, r in sent.items():
        if r.get("expired") is not None or r.get("answered") is not None or int(t) not in snap.annotation_counts:
            continue  # given back or set back earlier, or deleted
        if snap.annotation_counts[int(t)] > int(r["annotations"]):
            answered.append(int(t))  # it got its extra annotation: its overlap goes back (request_relabel)
            continue
        waited = None if cycle is None else int(cycle) - int(r.get("cycle") or 0)
        (expired if off or (waited is not None and waited >= RELABEL_WAIT_CYCLES) else pending).append(int(t))
    if (off or rep is None or not entries) and not (pending or expired or answered):
        return None
    index = {int(t): i for i, t in enumerate(snap.lab_ids)}
    new = {}
    for e in ([] if rep is None else entries):
        if len(pending) + len(new) >= k:
            break
        t = e["task"]
        if str(t) in sent or st["reviewed"].get(str(t)) == e["fingerprint"] or t not in index:
            continue
        p = np.asarray(rep.prob_mean[index[t]], dtype=np.float64)
        new[t] = {"probs": {snap.cfg.labels[c]: round(float(v), 6) for c, v in enumerate(p)},  # by value (as fingerprints)
                  "annotations": int(snap.annotation_counts.get(t, 1))}
    queue = pending + list(new)
    # each gets a queue prediction with an EMPTY result: it keeps the task's place in the queue, and
    # the second annotator is not shown the model's suggestion (a re-annotation is worth its cost as
    # an independent opinion; a pre-filled choice anchors it). Label Studio 1.23.2's import accepts
    # an empty result (label_studio_sdk's validate_prediction; the integration test imports them)
    by_task = {e["task"]: e for e in entries}
    items = [{"task": int(t), "result": [], "score": float(i), "model_version": version}
             for i, t in enumerate(queue) if t in by_task and t in index]
    return RelabelPlan(new=new, pending=pending, items=items, expired=expired, cycle=cycle, answered=answered)


def queue_first(preds, plan: RelabelPlan) -> None:
    """Put the plan's tasks before every ranked one. Label Studio refuses scores outside [0, 1],
    so with q of them the M ranked tasks move from rank / M to (rank + q) / (M + q), and the i-th
    re-annotation gets i / (M + q); the order among the ranked tasks is unchanged."""
    q, m = len(plan.items), len(preds.items)
    if not q:
        return
    # unrounded, as prediction_item's (rounding to 6 digits tied neighbours past 10^6 tasks, and at
    # 10^7 put every re-annotation and rank 0 at 0.0: found by review, 2026-12-02)
    for it in preds.items:
        it["score"] = (preds.entries[str(it["task"])]["rank"] + q) / (m + q)
    for e in preds.entries.values():
        e["score"] = (e["rank"] + q) / (m + q)
    for it in plan.items:
        it["score"] = it["score"] / (m + q)
    preds.items.extend(plan.items)


def request_relabel(client: LabelStudioClient, store: ProjectStore, project_id: int, plan: RelabelPlan) -> dict:
    """Make each new task need one more annotation (``overlap`` + 1, unlabeled again), so "Label
    All Tasks" serves it to an annotator who has not annotated it yet (Label Studio never serves a
    task to its own annotator again), and remember the model's probabilities for the tie-break.
    A task that got its extra annotation (``plan.answered``) has its ``overlap`` set back to what
    it was (labeled: it has more annotations than that), so a task once re-annotated is not left
    needing two annotations for good (one deleted later would send it back to the queue)."""
    done, back, reset = [], [], []
    state = ReviewState(store)
    with state.locked() as st:
        rel = st.setdefault("relabel", {})
        # recorded (durably) before it is sent: a process killed between a PATCH and the save at the
        # end left a task that only another annotator can take, unrecorded, so never given back
        # (with one annotator, unlabeled for good). Recorded but not sent costs nothing: it is given
        # back, as it was, after RELABEL_WAIT_CYCLES.
        rel.update({str(t): {**info, "cycle": plan.cycle} for t, info in plan.new.items()})
        if plan.new:
            atomic_write_json(state.path, st)
        for t, info in plan.new.items():
            try:
                client.request("PATCH", f"/api/tasks/{int(t)}/",
                               json={"overlap": int(info["annotations"]) + 1, "is_labeled": False})
            except LabelStudioError as exc:
                log.warning("project %s: cannot send task %s for re-annotation: %s", project_id, t, exc)
                rel.pop(str(t), None)
                continue
            done.append(int(t))
        # both set the overlap back to what it was, labeled: a task that waited RELABEL_WAIT_CYCLES
        # for another annotator (given back, never sent again), and one that got its extra annotation
        for tasks, key, out, what in ((plan.expired, "expired", back, "give task %s back"),
                                      (plan.answered, "answered", reset, "set task %s's overlap back")):
            for t in tasks:
                r = rel.get(str(t))
                if r is None:
                    continue
                try:
                    client.request("PATCH", f"/api/tasks/{int(t)}/",
                                   json={"overlap": max(1, int(r["annotations"])), "is_labeled": True})
                except LabelStudioError as exc:
                    if exc.status != 404:
                        log.warning("project %s: cannot " + what + ": %s", project_id, t, exc)
                        continue
                r[key] = plan.cycle
                out.append(int(t))
    if done or plan.pending or back:
        log.info("project %s: %d task(s) sent for re-annotation, %d still waiting, %d given back after %d "
                 "cycles without another annotator%s", project_id, len(done), len(plan.pending), len(back),
                 RELABEL_WAIT_CYCLES, " (a project with one annotator cannot re-annotate)" if back else "")
    return {"sent": done, "waiting": plan.pending, "given_back": back, "answered": reset}
