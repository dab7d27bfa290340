"""The web service: label-studio-ml's Flask app with this backend's routes.

``create_app(model_class)`` builds it (``_wsgi.py`` does, for gunicorn). label-studio-ml's
``init_app`` provides the Flask app and its routes; the handlers are replaced where the SDK does not
fit Label Studio 1.23 (see model.py for the list of gaps), and ``GET /versions`` and ``GET /status``
are added. Webhooks are validated, counted or turned into requests to the scheduler, and answered
in milliseconds; nothing trains in a request.

ONE gunicorn worker process: the embedded cycle scheduler lives in the process, and two processes
would each run their own (threads are fine and are what keeps /webhook fast). With ``REDIS_URL``
set the scheduler is in Redis and more web processes are safe.
"""

from __future__ import annotations

import atexit
import fcntl
import json
import logging
import os
import re
import signal
import socket
import sqlite3
import threading
import time
import uuid
from contextlib import nullcontext
from pathlib import Path
from typing import List, Optional

from flask import jsonify, request
from werkzeug.exceptions import HTTPException

from ncalr_backend.service import dashboard
from ncalr_backend.service.auth import SECRET_HEADER, WHOAMI_PATH, Auth
from ncalr_backend.service import review
from ncalr_backend.service.labelconfig import LabelConfigError
from ncalr_backend.service.labelstudio import make_client
from ncalr_backend.service.progress import read_progress
from ncalr_backend.service.scheduler import make_scheduler
from ncalr_backend.service import placement
from ncalr_backend.service.predictions import UNTRAINED_VERSION
from ncalr_backend.service.settings import Settings
from ncalr_backend.service.urls import redact_urls
from ncalr_backend.service.mirror import TaskMirror, hinted_task_ids
from ncalr_backend.service.store import MAX_ID, ProjectStore, db_id, project_id_from, read_json  # noqa: F401

log = logging.getLogger("ncalr_backend.wsgi")

# ANNOTATIONS_CREATED: Label Studio's Data Manager action "Create annotations from predictions"
# (a list under "annotation"); it used to be answered "unknown action" and never counted
COUNTED = ("ANNOTATION_CREATED", "ANNOTATIONS_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED")
IGNORED_FOR_TRAINING = ("PROJECT_UPDATED",)


MODEL_DIR_LOCK_WAIT_S = 30.0  # a gunicorn reload (HUP) starts the new worker while the old one still
#                               stops its cycle (up to ~20 s): wait that long before calling it a second backend


def lock_model_dir(model_dir: Path, wait_s: float = MODEL_DIR_LOCK_WAIT_S):
    """Hold ``MODEL_DIR/.backend.lock`` for this process's life, or raise saying who holds it: two
    embedded-mode processes on one MODEL_DIR would race on state.json and cycle numbers. A holder
    that lets go within ``wait_s`` (the old worker of a gunicorn reload) is waited for."""
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    f = open(model_dir / ".backend.lock", "a+")
    deadline, warned = time.monotonic() + wait_s, False
    while True:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() < deadline:
                if not warned:
                    log.warning("MODEL_DIR=%s is held by another process; waiting up to %.0f s (a reload's old "
                                "worker finishing its cycle)", model_dir, wait_s)
                    warned = True
                time.sleep(0.5)
                continue
        f.seek(0)
        holder = f.read().strip() or "unknown"
        f.close()
        raise RuntimeError(f"MODEL_DIR={model_dir} is in use by another backend process ({holder}). Run ONE "
                           "process per MODEL_DIR (gunicorn --workers 1), give each backend its own MODEL_DIR, "
                           "or set REDIS_URL to run cycles in RQ workers with any number of web processes") from None
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
    f.flush()
    return f


class BadRequest(Exception):
    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.message, self.status = message, status


def _error(message: str, status: int):
    return jsonify({"error": message}), status


HINT_WAIT_S = 2.0  # seconds a webhook waits to note its task hint while a sync writes the mirror
SMALL_BODY = 1 << 20  # bytes: any body without a project's key (Start training, /setup, /train, /versions)
BIG_BODY = 64 << 20  # a webhook with its key (TASKS_CREATED of a large import), /predict (Retrieve predictions)
# the shape of a project's webhook key (auth.project_key: HMAC-SHA256 in hex). The key itself is checked
# after the body is parsed (the project id that names it is in the body); any other header value gets
# SMALL_BODY (found by review, 2026-12-05: any value at all had raised the cap to 64 MB)
KEY_SHAPE = re.compile(r"[0-9a-f]{64}")
# /predict: Label Studio 1.23 sends every task selected for "Retrieve predictions" in one request
# (data_manager/actions/basic.py -> ml/models.py predict_tasks, no batching), each task serialized
# whole (TaskSimpleSerializer: id, data, meta, annotations, predictions, two timestamps, a dozen
# counters and ids): about 460 bytes at the least (no annotation, no prediction, a 1-character
# image value), never under 400. So a body within BIG_BODY holds at most BIG_BODY // 400 real
# tasks, and no request from Label Studio is refused by this cap. Each task costs its answer (~300
# bytes of objects and JSON) whatever it holds, so a body of empty objects ("{}," is 3 bytes) made
# one request hold ~10 GB at 64 MB (found by review, 2026-12-05); this cap bounds that part to
# ~50 MB. The parse itself stays bounded by BIG_BODY and _big_parse (docs/security.md).
LS_TASK_MIN_BYTES = 400
MAX_PREDICT_TASKS = BIG_BODY // LS_TASK_MIN_BYTES  # 167,772
_big_parse = threading.Lock()  # bodies over SMALL_BODY are parsed one at a time: memory, and the GIL


def _json_body(limit: int = SMALL_BODY) -> dict:
    """The request's JSON object, read before anyone is authenticated (the project id that says whose
    key to check is in it): at most ``limit`` bytes (413 beyond), the big ones one at a time, deep
    nesting a 400, never a 500 or a process that parses 64 MB of junk for every caller at once."""
    if not request.is_json:
        raise BadRequest("the body must be a JSON object (Content-Type: application/json)")
    n = request.content_length
    if n is not None and n > limit:
        raise BadRequest(f"the body is {n} bytes; this request takes at most {limit}", 413)
    raw = request.stream.read(limit + 1)
    if len(raw) > limit:
        raise BadRequest(f"the body is over {limit} bytes, the most this request takes", 413)
    try:
        with _big_parse if len(raw) > SMALL_BODY else nullcontext():
            data = json.loads(raw)
    except RecursionError:
        raise BadRequest("the body's JSON is nested too deeply")
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise BadRequest("the body must be a JSON object (Content-Type: application/json)")
    return data



def _annotation_count(action: str, data: dict) -> int:
    if action == "ANNOTATIONS_DELETED":
        anns = data.get("annotations")
        if not isinstance(anns, list) or not anns or not all(isinstance(a, dict) and "id" in a for a in anns):
            raise BadRequest("ANNOTATIONS_DELETED needs 'annotations': a non-empty list of {\"id\": ...}")
        return len(anns)
    if action == "ANNOTATIONS_CREATED":
        anns = data.get("annotation")
        if not isinstance(anns, list) or not all(isinstance(a, dict) and "id" in a for a in anns):
            raise BadRequest("ANNOTATIONS_CREATED needs 'annotation': a list of {\"id\": ...}")
        return sum(1 for a in anns if not a.get("was_cancelled"))
    ann = data.get("annotation")
    if not isinstance(ann, dict) or "id" not in ann:
        raise BadRequest(f"{action} needs 'annotation': an object with an 'id'")
    if action == "ANNOTATION_CREATED" and ann.get("was_cancelled"):
        return 0  # a skipped task adds no label
    return 1


class Backend:
    """The routes' state: settings, the model class, the scheduler (started on first use)."""

    def __init__(self, model_class, settings: Settings):
        self.model_class = model_class
        self.settings = settings
        self._scheduler = None
        self._scheduler_lock = threading.Lock()
        self.auth = Auth(settings)
        self.reviews = review.ReviewClearer(settings, lambda: make_client(settings))
        self._webhooks_seen: dict = {}  # project -> {action: count} received by this process
        self._webhooks_lock = threading.Lock()

    def saw_webhook(self, project_id: Optional[int], action: str) -> None:
        if project_id is None:
            return
        with self._webhooks_lock:
            seen = self._webhooks_seen.setdefault(project_id, {})
            seen[action] = seen.get(action, 0) + 1

    def webhooks_seen(self, project_id: int) -> dict:
        with self._webhooks_lock:
            return dict(self._webhooks_seen.get(project_id, {}))

    # ------------------------------------------------------------------ scheduler
    def scheduler(self):
        with self._scheduler_lock:
            if self._scheduler is None:
                if not self.settings.redis_url:
                    self._lock_file = lock_model_dir(self.settings.model_dir)  # one process per MODEL_DIR
                self._scheduler = make_scheduler(self.settings)
                if not self.settings.redis_url:  # warm the engine import (torch) off the request path
                    threading.Thread(target=__import__, args=("ncalr_backend.engine",), daemon=True).start()
                try:
                    recovered = self._scheduler.recover()
                    if recovered:
                        log.warning("re-running interrupted cycles for projects %s", recovered)
                except Exception as exc:
                    log.error("recovery of interrupted cycles failed: %s", exc)
                if self.settings.redis_url:
                    self._scheduler.start_reaper()
                atexit.register(self.shutdown)
                self._cancel_on_sigterm()
            return self._scheduler

    def _cancel_on_sigterm(self) -> None:
        """SIGTERM (gunicorn's graceful stop, docker stop) interrupts a running cycle at once: the
        cycle stops at its next training batch and stays marked for the next start. The handler
        gunicorn installed runs after ours (it stops the worker gracefully)."""
        if threading.current_thread() is not threading.main_thread():
            return
        prev = signal.getsignal(signal.SIGTERM)

        def on_term(signum, frame):
            if self._scheduler is not None:
                self._scheduler.stop(timeout=0)
            if callable(prev):
                prev(signum, frame)
            else:
                raise SystemExit(0)  # atexit's shutdown waits for the cycle to end

        signal.signal(signal.SIGTERM, on_term)

    def shutdown(self, timeout: float = 20.0) -> None:
        """On exit (gunicorn's SIGTERM ends the worker through sys.exit): interrupt a running cycle
        at its next batch and wait for it, so the process never dies under torch's threads."""
        if self._scheduler is not None:
            if not self._scheduler.stop(timeout=timeout):
                log.warning("the cycle did not stop within %.0f s", timeout)

    # ------------------------------------------------------------------ auth (auth.py)
    def check_auth(self):
        if not self.auth.basic_ok(request.authorization):
            resp, status = _error("authentication required", 401)
            resp.headers["WWW-Authenticate"] = 'Basic realm="ncalr-backend"'
            return resp, status

    def authentic_or_401(self, action: str, pid: Optional[int]):
        """None when the state-changing request is authentic (auth.py), else the 401 answer."""
        if self.auth.webhook_ok(request.headers, pid, action):
            if pid is not None and self.settings.basic_auth_user and not self.auth.key_ok(request.headers, pid):
                self.auth.resync_soon(pid, request.host)  # authentic by basic auth: still give the webhook its key
            return None
        if action in ("START_TRAINING", "train") and pid is not None and self.auth.project_has_us(pid):
            return None  # Label Studio's "Start training" button: no custom header, checked with Label Studio
        if pid is not None:
            self.auth.resync_soon(pid, request.host)
        hint = ""
        if action in ("START_TRAINING", "train"):
            hint = ("" if self.settings.basic_auth_user else
                    " Label Studio's Start training button carries no such header: it is accepted for a project with "
                    "an ML backend whose URL reaches this backend (asked at " + WHOAMI_PATH + "); if Label Studio "
                    "knows this backend by an address it cannot reach itself, set PUBLIC_URL to that address, or "
                    "turn basic auth on." if not self.settings.public_url else
                    " Start training is accepted without it only for a project with an ML backend at PUBLIC_URL.")
        if pid is None:
            hint += " The body names no project ('project': {\"id\": N}), and each project has its own key."
        return _error(f"webhook not authenticated: the {SECRET_HEADER} header is missing or wrong (each project's "
                      "webhook carries its own key). Label Studio's webhook for this backend gets it automatically "
                      "(see docs/security.md); nothing was changed." + hint, 401)

    # ------------------------------------------------------------------ routes
    def whoami(self):
        """GET WHOAMI_PATH?c=<32 hex>: the proof that this process holds the webhook secret
        (auth.whoami_proof); how the backend recognises its own URL among a project's ML backends."""
        try:
            proof = self.auth.whoami(request.args.get("c", ""))
        except ValueError as exc:
            return _error(f"c: {exc}", 400)
        resp = jsonify({"proof": proof})
        resp.headers["Cache-Control"] = "no-store"
        return resp

    def health(self):
        return jsonify({"status": "UP", "model_class": self.model_class.__name__,
                        "scheduler": "rq" if self.settings.redis_url else "embedded"})

    def setup(self):
        data = _json_body(4 * SMALL_BODY)  # a labeling config
        schema = data.get("schema")
        try:
            self.model_class.check_config(schema)
        except LabelConfigError as exc:
            # Label Studio shows only the HTTP status line of an error: put the reason there too,
            # printable ASCII only (gunicorn refuses a status line with DEL or C1 bytes: a 500)
            reason = "".join(c if " " <= c <= "~" else "?" for c in " ".join(str(exc).split())[:400])
            resp = jsonify({"error": str(exc)})
            resp.status = f"400 {reason}"
            return resp
        pid = project_id_from(data.get("project"))
        if pid is not None:  # Label Studio creates the webhook without our headers: add them
            self.auth.resync_soon(pid, request.host)
        model = self.model_class(label_config=schema, settings=self.settings)
        return jsonify({"model_version": model.current_version(pid)})

    def predict(self):
        data = _json_body(BIG_BODY)  # Retrieve predictions sends every selected task
        tasks = data.get("tasks")
        if not isinstance(tasks, list):
            raise BadRequest("'tasks' must be a list of task objects")
        if len(tasks) > MAX_PREDICT_TASKS:  # before any work per task (see MAX_PREDICT_TASKS)
            raise BadRequest(f"/predict takes at most {MAX_PREDICT_TASKS} tasks per request; this one has "
                             f"{len(tasks)}. Select fewer tasks for \"Retrieve predictions\" (Label Studio sends every "
                             "selected task in one request), or leave them to the next cycle, which ranks every "
                             "unlabeled task", 413)
        if not all(isinstance(t, dict) for t in tasks):
            raise BadRequest("'tasks' must be a list of task objects")
        label_config = data.get("label_config")
        try:
            self.model_class.check_config(label_config)
        except LabelConfigError as exc:
            raise BadRequest(str(exc))
        pid = project_id_from(data.get("project"))
        if pid is None:
            raise BadRequest("'project' must be the project id (or '<id>.<timestamp>')")
        model = self.model_class(label_config=label_config, settings=self.settings)
        results = model.predict(tasks, project_id=pid)
        return jsonify({"results": results, "model_version": model.current_version(pid)})

    def webhook(self):
        """Validate, count or request, answer in milliseconds. Never trains in the request."""
        data = _json_body(BIG_BODY if KEY_SHAPE.fullmatch(request.headers.get(SECRET_HEADER) or "") else SMALL_BODY)
        action = data.get("action")
        if not isinstance(action, str) or not action:
            raise BadRequest("missing 'action' (e.g. ANNOTATION_CREATED, START_TRAINING)")
        project = data.get("project")
        pid = project_id_from(project)
        if pid is None and action in COUNTED + ("START_TRAINING", "TASKS_CREATED", "TASKS_DELETED"):
            # before authentication: which project's key to check is this id (nothing changes either way)
            raise BadRequest(f"{action} needs 'project': an object with a positive integer 'id'")
        denied = self.authentic_or_401(action, pid)
        if denied is not None:
            return denied
        if action in IGNORED_FOR_TRAINING:
            self.saw_webhook(pid, action)
            if pid is not None:
                self.note_serving_drift(pid, data.get("project"))
            return jsonify({"status": "ignored", "action": action,
                            "reason": "project updates never start training"})
        if action not in COUNTED + ("START_TRAINING", "TASKS_CREATED", "TASKS_DELETED"):
            return jsonify({"status": "ignored", "action": action, "reason": "unknown action"})
        if pid is None:
            raise BadRequest(f"{action} needs 'project': an object with a positive integer 'id'")
        ids = None
        if action == "TASKS_CREATED":  # checked before anything is recorded of it
            tasks = data.get("tasks")
            if not isinstance(tasks, list) or not all(isinstance(t, dict) and "id" in t for t in tasks):
                raise BadRequest("TASKS_CREATED needs 'tasks': a list of {\"id\": ...}")
            ids = [db_id(t["id"]) for t in tasks]  # only the ids: the placement reads the tasks itself
            if None in ids:
                raise BadRequest(f"TASKS_CREATED: task ids must be integers from 1 to {MAX_ID}")
        self.saw_webhook(pid, action)
        hints = hinted_task_ids(action, data)
        if hints and not self.settings.redis_url:
            # the next cycle re-reads these tasks (mirror.py). With RQ the mirror belongs to the
            # workers, which may be other machines: they rely on updated_at and the count check alone.
            # A hint only saves a read: when the mirror is busy (a long sync holds its write lock)
            # or its disk refuses the write, the event is still counted, without waiting for it
            try:
                TaskMirror(ProjectStore(self.settings.model_dir, pid).root).mark(hints, timeout=HINT_WAIT_S)
            except (sqlite3.Error, OSError) as exc:
                log.warning("project %s: %s's task hint was not recorded (%s); the next sync finds the "
                            "change by Label Studio's updated_at and the task count", pid, action, exc)
        if action == "TASKS_DELETED":
            return jsonify({"status": "ok", "action": action, "project": pid, "hinted": len(hints)}), 201
        sched = self.scheduler()
        if action == "START_TRAINING":
            out = sched.request_cycle(pid, "START_TRAINING")
        elif action == "TASKS_CREATED":
            out = sched.request_placement(pid, ids)
        else:
            n = _annotation_count(action, data)  # validates the payload before anything reads it
            num_tasks = project.get("task_number") if isinstance(project, dict) else None
            num_tasks = num_tasks if db_id(num_tasks) is not None or num_tasks == 0 else None
            out = sched.count_annotations(pid, n, num_tasks) if n else {"counted": 0}
            try:  # after the count: a damaged review.json must not cost the annotation its count
                self.review_changed(pid, action, data)
            except Exception:  # noqa: BLE001
                log.exception("project %s: could not check the review list after %s", pid, action)
        return jsonify({"status": "ok", "action": action, "project": pid, **out}), 201

    def note_serving_drift(self, pid: int, project) -> None:
        """PROJECT_UPDATED carries the project's ``model_version`` and ``sampling``: when a user's
        change turns the NCAL-R order off ("Use predictions to prelabel tasks" off, another version,
        another sampling), say so in ``state.json: serving_drift`` (/status, the dashboard) and the
        log; never PATCH it back behind the user (``placement.serving_drift``). The backend's own
        switch (a cycle in progress, before its commit) is no drift; the next live cycle clears it."""
        try:
            store = ProjectStore(self.settings.model_dir, pid)
            served = store.served()  # the version the backend switched Label Studio to last
            if not served or not isinstance(project, dict):
                return
            s = store.state()
            going = (s.get("in_progress") or {}).get("model_version")
            live = going if going and project.get("model_version") == going else served.get("model_version")
            msg = placement.serving_drift(project, str(live or ""), expect_sampling=self.settings.set_sampling)
            if msg != s.get("serving_drift"):
                store.update_state(serving_drift=msg)
                if msg:
                    log.warning("project %s: %s", pid, msg)
                else:
                    log.info("project %s: Label Studio serves the NCAL-R order again", pid)
        except Exception:  # noqa: BLE001 - a note for operators: never fails the webhook
            log.exception("project %s: could not check the project's serving settings", pid)

    def review_changed(self, pid: int, action: str, data: dict) -> None:
        """An annotation created, updated or deleted on a task listed as a suspected label error:
        take it off the list in the background (review.py)."""
        store = ProjectStore(self.settings.model_dir, pid)
        if not (store.root / "review.json").exists():
            return

        def aid(a: dict) -> List[int]:  # the annotation a reviewer created or updated
            return [a["id"]] if db_id(a.get("id")) is not None else []
        if action == "ANNOTATIONS_DELETED":  # names no annotation that could now label the task
            anns = [a.get("id") for a in data.get("annotations") or [] if isinstance(a, dict)]
            todo = {t: [] for t in review.tasks_of_annotations(store, [a for a in anns if db_id(a) is not None])}
        elif action == "ANNOTATIONS_CREATED":
            anns = [a for a in data.get("annotation") or [] if isinstance(a, dict) and not a.get("was_cancelled")]
            listed = review.ReviewState(store).watched_tasks()
            todo = {}
            for a in anns:
                if db_id(a.get("task")) is not None and str(a["task"]) in listed:
                    todo.setdefault(a["task"], []).extend(aid(a))
        elif action == "ANNOTATION_CREATED" and isinstance(data.get("annotation"), dict) \
                and data["annotation"].get("was_cancelled"):
            return  # a skip is no review: the listed label stays as it was, and stays listed
        else:
            task = data.get("task") if isinstance(data.get("task"), dict) else {}
            ann = data.get("annotation") if isinstance(data.get("annotation"), dict) else {}
            tid = task.get("id", ann.get("task"))
            todo = ({tid: aid(ann)} if db_id(tid) is not None and str(tid) in review.ReviewState(store).watched_tasks()
                    else {})
        if todo:
            self.reviews.request(pid, todo)

    def train(self):
        """Deprecated /train (Label Studio < 1.4.1): treated like START_TRAINING."""
        pid = project_id_from(_json_body().get("project"))
        if pid is None:
            raise BadRequest("'project' must be the project id")
        denied = self.authentic_or_401("train", pid)
        if denied is not None:
            return denied
        return jsonify(self.scheduler().request_cycle(pid, "train")), 201

    def versions(self):
        """GET or POST (gap 8): the project's completed model versions that went live (a cycle with
        nothing to rank wrote no prediction under its version), newest last. Label Studio 1.23
        asks with a GET whose project it drops (``MLApi.get_versions``): without a project the answer
        is 404, on which Label Studio shows the version /setup reported (``MLBackendVersionsAPI``);
        a 400 there was an error in its UI."""
        body = _json_body() if request.method == "POST" else None
        given = request.args.get("project") or (body or {}).get("project")
        if given is None:
            return _error("no project given: ask /versions?project=<id> (Label Studio then shows the version "
                          "/setup reported)", 404)
        pid = project_id_from(given)
        if pid is None:
            raise BadRequest("'project' must be a project id")
        st = ProjectStore(self.settings.model_dir, pid)
        vers = []
        for d in sorted((st.root / "cycles").glob("[0-9]*")):
            rep = read_json(d / "report.json")
            if (isinstance(rep, dict) and isinstance(rep.get("model_version"), str) and rep["model_version"]
                    and rep.get("live") is not False):  # a cycle with nothing to rank wrote no prediction
                vers.append(rep["model_version"])  # a damaged report is skipped
        return jsonify({"versions": vers or [UNTRAINED_VERSION]})

    def is_training(self):
        pid = project_id_from(request.args.get("project"))
        if pid is None:
            raise BadRequest("'project' is required")
        s = self.scheduler().status(pid)
        return jsonify({"is_training": bool(s.get("running")), **s})

    def status(self):
        """Per-project state for operators and tests: scheduler, counters, latest cycle, last error.
        Each part is read on its own: a damaged file of the project leaves that part null and names
        it in ``unreadable`` (the exception goes to the log), never a 500. Task URLs in failure
        reasons are cut to scheme://host/path (``urls.redact_urls``)."""
        pid = project_id_from(request.args.get("project"))
        if pid is None:
            raise BadRequest("'project' is required")
        st = ProjectStore(self.settings.model_dir, pid)
        unreadable = []

        def part(name, fn):
            try:
                return fn()
            except Exception:  # noqa: BLE001 - whatever a damaged file holds
                log.exception("/status: project %s: cannot read its %s", pid, name)
                unreadable.append(name)
                return None

        s = part("state", st.state) or {}
        latest = part("latest", st.latest)
        served = part("served", st.served)  # the latest cycle, unless it had nothing to rank and never went live
        report = read_json(latest["path"] / "report.json") if latest else None
        report = report if isinstance(report, dict) and report else None

        def label_errors():
            le, review_state = report.get("label_errors"), s.get("review")
            if not le:
                return None
            return {**(le if isinstance(le, dict) else {}), **(review_state if isinstance(review_state, dict) else {}),
                    "listed_now": len(review.ReviewState(st).listed_tasks())}

        def latest_report():
            out = {k: report.get(k) for k in (
                "cycle", "model_version", "live", "reason", "num_tasks", "num_labeled", "num_pool", "skipped",
                "predictions_created", "timings", "image_failures", "unusable_annotations",
                "multilabel", "class_counts", "label_set_sizes", "predicted_set_sizes",
                "triggered_at", "finished_at")}
            if isinstance(out["image_failures"], list):  # task URLs: no user info, query or fragment
                out["image_failures"] = [{**f, "reason": redact_urls(f.get("reason"))} if isinstance(f, dict) else f
                                         for f in out["image_failures"]]
            return out

        def progress():
            p = read_progress(self.settings.model_dir, pid)
            if isinstance(p, dict) and p.get("error") is not None:
                p["error"] = redact_urls(str(p["error"]))
            return p

        out = {"project": pid, "scheduler": part("scheduler", lambda: self.scheduler().status(pid)),
               "new_annotations": s.get("new_annotations"), "pending": s.get("pending"),
               "in_progress": s.get("in_progress"), "last_error": redact_urls(s.get("last_error")),
               "last_failed": s.get("last_failed"), "last_completed": s.get("last_completed"),
               "skipped": s.get("skipped"),  # the latest cycle request not run: this backend is not connected
               # a user's setting that turns the NCAL-R order off (PROJECT_UPDATED; the next live cycle clears it)
               "serving_drift": s.get("serving_drift") if isinstance(s.get("serving_drift"), str) else None,
               # the live version's written head as the last refill check found it (after a failed cycle)
               "head": (s["head"] if s.get("head") and served  # a dict or absent (STATE_TYPES)
                        and s["head"].get("version") == served.get("model_version") else None),
               # the version Label Studio serves (what /setup reports and /predict tags with)
               "model_version": served.get("model_version") if served else None,
               "webhooks_seen": self.webhooks_seen(pid),
               "label_errors": part("label_errors", label_errors) if report else None,
               "progress": part("progress", progress),
               "latest_report": part("report", latest_report) if report else None}
        if unreadable:
            out["unreadable"] = unreadable
        resp = jsonify(out)
        resp.headers["Cache-Control"] = "no-store"
        return resp


def create_app(model_class, settings: Optional[Settings] = None, autostart: bool = True):
    """The Flask app gunicorn serves; ``autostart`` starts the scheduler (and re-runs interrupted
    cycles) as soon as the worker process builds the app."""
    from label_studio_ml.api import init_app

    settings = settings or Settings.from_env()
    if autostart:  # a serving backend (gunicorn): without its own URL and key every webhook would be
        settings.require_label_studio()  # refused (no secret added to Label Studio's webhook) and every cycle fail
    # Validate the engine's settings at start (a typo in NCALR_* fails here, not in the first cycle);
    # this also imports torch once, before the first webhook.
    from ncalr_backend.engine.config import EngineConfig
    EngineConfig.from_env(prefix="NCALR_")

    app = init_app(model_class=model_class, model_dir=str(settings.model_dir))
    app.json.sort_keys = False
    app.config["MAX_CONTENT_LENGTH"] = 64 * 1024 * 1024
    # The SDK logs every request's headers and body at DEBUG, basic-auth credentials included: drop that.
    for key, funcs in list(app.before_request_funcs.items()):
        app.before_request_funcs[key] = [f for f in funcs if f.__name__ != "log_request_info"]
    for key, funcs in list(app.after_request_funcs.items()):
        app.after_request_funcs[key] = [f for f in funcs if f.__name__ != "log_response_info"]

    backend = Backend(model_class, settings)
    app.extensions["ncalr"] = backend

    # errors (gap 7): a JSON {"error"} without internals
    app.register_error_handler(BadRequest, lambda exc: _error(exc.message, exc.status))
    app.register_error_handler(HTTPException, lambda exc: _error(exc.description or exc.name, exc.code or 500))

    def internal(exc: Exception):
        rid = uuid.uuid4().hex[:12]
        log.error("request %s %s failed (id %s)", request.method, request.path, rid, exc_info=exc)
        return jsonify({"error": "internal error; see the backend log", "request_id": rid}), 500

    for cls in (Exception, FileNotFoundError, AssertionError, IndexError):
        app.register_error_handler(cls, internal)
    try:  # the SDK registers a handler that echoes the message
        from rq.exceptions import NoSuchJobError
        app.register_error_handler(NoSuchJobError, internal)
    except ImportError:  # pragma: no cover
        pass

    @app.after_request
    def no_sniffing(resp):  # every answer is what its Content-Type says (thumbnails, JSON, HTML)
        resp.headers.setdefault("X-Content-Type-Options", "nosniff")
        return resp

    app.before_request(backend.check_auth)
    app.view_functions["health"] = backend.health
    app.view_functions["metrics"] = lambda: jsonify({})
    app.view_functions["_setup"] = backend.setup
    app.view_functions["_predict"] = backend.predict
    app.view_functions["webhook"] = backend.webhook
    app.view_functions["_train"] = backend.train
    app.view_functions["_is_training"] = backend.is_training
    app.view_functions["get_version"] = backend.versions
    app.add_url_rule("/versions", "get_version_get", backend.versions, methods=["GET"])
    app.add_url_rule("/status", "status", backend.status, methods=["GET"])
    app.add_url_rule(WHOAMI_PATH, "ncalr_whoami", backend.whoami, methods=["GET"])
    dashboard.register(app, backend)  # GET / (the page), /dashboard/progress, /dashboard/thumb/...
    if autostart:
        backend.scheduler()
        backend.reviews.resume()  # reviews a stop or a crash left queued (review_todo.json)
    return app
