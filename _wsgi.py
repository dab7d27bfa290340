"""The WSGI app gunicorn serves: ``gunicorn --workers 1 --threads 8 _wsgi:app``.

label-studio-ml's ``init_app`` provides the Flask app and its routes; this module replaces the
handlers where the SDK does not fit Label Studio 1.23 (see model.py for the list of gaps) and adds
``GET /versions`` and ``GET /status``.

ONE gunicorn worker process: the embedded cycle scheduler lives in the process, and two processes
would each run their own (threads are fine and are what keeps /webhook fast). With ``REDIS_URL``
set the scheduler is in Redis and more web processes are safe.
"""

from __future__ import annotations

import base64
import hmac
import logging
import os
import threading
import time
import uuid

from flask import jsonify, request
from werkzeug.exceptions import HTTPException

from label_studio_ml.api import init_app

from model import NCALRBackend, UNTRAINED_VERSION, project_id_from
from ncalr_backend.labelconfig import LabelConfigError
from ncalr_backend.scheduler import make_scheduler
from ncalr_backend.settings import Settings

logging.basicConfig(level=os.environ.get("LOG_LEVEL", "INFO").upper(),
                    format="%(asctime)s %(levelname)s %(name)s: %(message)s")
log = logging.getLogger("ncalr_backend.wsgi")

SETTINGS = Settings.from_env()
# Validate the engine's settings at start (a typo in NCALR_* fails here, not in the first cycle);
# this also imports torch once, before the first webhook.
from ncalr_backend.config import EngineConfig  # noqa: E402

ENGINE_CONFIG = EngineConfig.from_env(prefix="NCALR_")
app = init_app(model_class=NCALRBackend, model_dir=str(SETTINGS.model_dir))
app.json.sort_keys = False
app.config["MAX_CONTENT_LENGTH"] = 64 * 1024 * 1024
# The SDK logs every request's headers and body at DEBUG, basic-auth credentials included: drop that.
for _key, _funcs in list(app.before_request_funcs.items()):
    app.before_request_funcs[_key] = [f for f in _funcs if f.__name__ != "log_request_info"]
for _key, _funcs in list(app.after_request_funcs.items()):
    app.after_request_funcs[_key] = [f for f in _funcs if f.__name__ != "log_response_info"]

COUNTED = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_DELETED")
IGNORED_FOR_TRAINING = ("PROJECT_UPDATED",)

_scheduler = None
_scheduler_lock = threading.Lock()


def get_scheduler():
    global _scheduler
    with _scheduler_lock:
        if _scheduler is None:
            _scheduler = make_scheduler(SETTINGS)
            if not SETTINGS.redis_url:  # warm the engine import (torch) off the request path
                threading.Thread(target=__import__, args=("ncalr_backend.engine",), daemon=True).start()
            try:
                recovered = _scheduler.recover()
                if recovered:
                    log.warning("re-running interrupted cycles for projects %s", recovered)
            except Exception as exc:
                log.error("recovery of interrupted cycles failed: %s", exc)
        return _scheduler


class BadRequest(Exception):
    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.message, self.status = message, status


def _error(message: str, status: int):
    return jsonify({"error": message}), status


# ---------------------------------------------------------------------------- errors (gap 7)
@app.errorhandler(BadRequest)
def _bad_request(exc: BadRequest):
    return _error(exc.message, exc.status)


@app.errorhandler(HTTPException)
def _http_error(exc: HTTPException):
    return _error(exc.description or exc.name, exc.code or 500)


def _internal(exc: Exception):
    rid = uuid.uuid4().hex[:12]
    log.error("request %s %s failed (id %s)", request.method, request.path, rid, exc_info=exc)
    return jsonify({"error": "internal error; see the backend log", "request_id": rid}), 500


for _cls in (Exception, FileNotFoundError, AssertionError, IndexError):
    app.register_error_handler(_cls, _internal)
try:  # the SDK registers a handler that echoes the message
    from rq.exceptions import NoSuchJobError
    app.register_error_handler(NoSuchJobError, _internal)
except ImportError:  # pragma: no cover
    pass


# ---------------------------------------------------------------------------- basic auth
def _auth_ok() -> bool:
    if not SETTINGS.basic_auth_user:
        return True
    auth = request.authorization
    if auth is None or auth.type != "basic":
        return False
    return (hmac.compare_digest((auth.username or "").encode(), SETTINGS.basic_auth_user.encode())
            and hmac.compare_digest((auth.password or "").encode(), SETTINGS.basic_auth_pass.encode()))


@app.before_request
def _check_auth():
    if not _auth_ok():
        resp, status = _error("authentication required", 401)
        resp.headers["WWW-Authenticate"] = 'Basic realm="ncalr-backend"'
        return resp, status


def _basic_header() -> str:
    token = base64.b64encode(f"{SETTINGS.basic_auth_user}:{SETTINGS.basic_auth_pass}".encode()).decode()
    return f"Basic {token}"


_webhook_auth_done = set()


def _ensure_webhook_auth(project_id: int):
    """Label Studio creates the backend's webhook without headers; with basic auth on, add them."""
    from ncalr_backend.cycle import make_client
    try:
        client = make_client(SETTINGS)
    except Exception:
        return
    for delay in (0.5, 2, 5, 15):
        time.sleep(delay)
        try:
            urls = {b["url"].rstrip("/") + "/webhook" for b in client.list_ml_backends(project_id)
                    if b.get("basic_auth_user") == SETTINGS.basic_auth_user}
            hooks = [h for h in client.list_webhooks(project_id) if h.get("url", "").rstrip("/") in urls]
            for h in hooks:
                if (h.get("headers") or {}).get("Authorization") != _basic_header():
                    client.patch_webhook(h["id"], {"headers": {**(h.get("headers") or {}),
                                                               "Authorization": _basic_header()}})
                    log.info("project %s: added basic auth to webhook %s", project_id, h["id"])
            if hooks:
                return
        except Exception as exc:
            log.warning("project %s: cannot update the webhook's auth header yet: %s", project_id, exc)
    _webhook_auth_done.discard(project_id)


# ---------------------------------------------------------------------------- routes
def _json_body() -> dict:
    data = request.get_json(silent=True)
    if not isinstance(data, dict):
        raise BadRequest("the body must be a JSON object (Content-Type: application/json)")
    return data


def health():
    return jsonify({"status": "UP", "model_class": "NCALRBackend", "scheduler": "rq" if SETTINGS.redis_url
                    else "embedded"})


def setup():
    data = _json_body()
    schema = data.get("schema")
    try:
        NCALRBackend.check_config(schema)
    except LabelConfigError as exc:
        # Label Studio shows only the HTTP status line of an error: put the reason there too.
        reason = " ".join(str(exc).split())[:400].encode("latin-1", "replace").decode("latin-1")
        resp = jsonify({"error": str(exc)})
        resp.status = f"400 {reason}"
        return resp
    pid = project_id_from(data.get("project"))
    if pid is not None and SETTINGS.basic_auth_user and pid not in _webhook_auth_done:
        _webhook_auth_done.add(pid)
        threading.Thread(target=_ensure_webhook_auth, args=(pid,), daemon=True).start()
    model = NCALRBackend(label_config=schema, settings=SETTINGS)
    return jsonify({"model_version": model.current_version(pid)})


def predict():
    data = _json_body()
    tasks = data.get("tasks")
    if not isinstance(tasks, list) or not all(isinstance(t, dict) for t in tasks):
        raise BadRequest("'tasks' must be a list of task objects")
    label_config = data.get("label_config")
    try:
        NCALRBackend.check_config(label_config)
    except LabelConfigError as exc:
        raise BadRequest(str(exc))
    pid = project_id_from(data.get("project"))
    if pid is None:
        raise BadRequest("'project' must be the project id (or '<id>.<timestamp>')")
    model = NCALRBackend(label_config=label_config, settings=SETTINGS)
    results = model.predict(tasks, project_id=pid)
    return jsonify({"results": results, "model_version": model.current_version(pid)})


def _annotation_count(action: str, data: dict) -> int:
    if action == "ANNOTATIONS_DELETED":
        anns = data.get("annotations")
        if not isinstance(anns, list) or not anns or not all(isinstance(a, dict) and "id" in a for a in anns):
            raise BadRequest("ANNOTATIONS_DELETED needs 'annotations': a non-empty list of {\"id\": ...}")
        return len(anns)
    ann = data.get("annotation")
    if not isinstance(ann, dict) or "id" not in ann:
        raise BadRequest(f"{action} needs 'annotation': an object with an 'id'")
    if action == "ANNOTATION_CREATED" and ann.get("was_cancelled"):
        return 0  # a skipped task adds no label
    return 1


def webhook():
    """Validate, count or request, answer in milliseconds. Never trains in the request."""
    data = _json_body()
    action = data.get("action")
    if not isinstance(action, str) or not action:
        raise BadRequest("missing 'action' (e.g. ANNOTATION_CREATED, START_TRAINING)")
    if action in IGNORED_FOR_TRAINING:
        return jsonify({"status": "ignored", "action": action, "reason": "project updates never start training"})
    if action not in COUNTED + ("START_TRAINING", "TASKS_CREATED"):
        return jsonify({"status": "ignored", "action": action, "reason": "unknown action"})
    project = data.get("project")
    pid = project_id_from(project)
    if pid is None:
        raise BadRequest(f"{action} needs 'project': an object with a positive integer 'id'")
    sched = get_scheduler()
    if action == "START_TRAINING":
        out = sched.request_cycle(pid, "START_TRAINING")
    elif action == "TASKS_CREATED":
        tasks = data.get("tasks")
        if not isinstance(tasks, list) or not all(isinstance(t, dict) and "id" in t for t in tasks):
            raise BadRequest("TASKS_CREATED needs 'tasks': a list of {\"id\": ...}")
        ids = []
        for t in tasks:
            try:
                ids.append({"id": int(t["id"]), "data": t.get("data") if isinstance(t.get("data"), dict) else None,
                            "annotations": []})
            except (TypeError, ValueError):
                raise BadRequest("TASKS_CREATED: task ids must be integers")
        out = sched.request_placement(pid, ids)
    else:
        n = _annotation_count(action, data)
        num_tasks = project.get("task_number") if isinstance(project, dict) else None
        num_tasks = num_tasks if isinstance(num_tasks, int) and num_tasks >= 0 else None
        out = sched.count_annotations(pid, n, num_tasks) if n else {"counted": 0}
    return jsonify({"status": "ok", "action": action, "project": pid, **out}), 201


def train():
    """Deprecated /train (Label Studio < 1.4.1): treated like START_TRAINING."""
    data = _json_body()
    pid = project_id_from(data.get("project"))
    if pid is None:
        raise BadRequest("'project' must be the project id")
    return jsonify(get_scheduler().request_cycle(pid, "train")), 201


def versions():
    """GET or POST (gap 8): the project's completed model versions, newest last."""
    pid = project_id_from(request.args.get("project") or (request.get_json(silent=True) or {}).get("project"))
    if pid is None:
        raise BadRequest("'project' is required")
    from ncalr_backend.store import ProjectStore, read_json
    st = ProjectStore(SETTINGS.model_dir, pid)
    vers = []
    for d in sorted((st.root / "cycles").glob("[0-9]*")):
        rep = read_json(d / "report.json", {}) or {}
        if rep.get("model_version"):
            vers.append(rep["model_version"])
    return jsonify({"versions": vers or [UNTRAINED_VERSION]})


def is_training():
    pid = project_id_from(request.args.get("project"))
    if pid is None:
        raise BadRequest("'project' is required")
    s = get_scheduler().status(pid)
    return jsonify({"is_training": bool(s.get("running")), **s})


def status():
    """Per-project state for operators and tests: scheduler, counters, latest cycle, last error."""
    pid = project_id_from(request.args.get("project"))
    if pid is None:
        raise BadRequest("'project' is required")
    from ncalr_backend.store import ProjectStore, read_json
    st = ProjectStore(SETTINGS.model_dir, pid)
    s = st.state()
    latest = st.latest()
    report = read_json(latest["path"] / "report.json", {}) if latest else None
    return jsonify({"project": pid, "scheduler": get_scheduler().status(pid),
                    "new_annotations": s.get("new_annotations"), "pending": s.get("pending"),
                    "in_progress": s.get("in_progress"), "last_error": s.get("last_error"),
                    "last_failed": s.get("last_failed"), "last_completed": s.get("last_completed"),
                    "model_version": latest["model_version"] if latest else None,
                    "latest_report": {k: report.get(k) for k in (
                        "cycle", "model_version", "reason", "num_tasks", "num_labeled", "num_pool",
                        "predictions_created", "timings", "image_failures", "unusable_annotations", "multilabel",
                        "class_counts", "label_set_sizes", "predicted_set_sizes",
                        "triggered_at", "finished_at")} if report else None})


app.view_functions["health"] = health
app.view_functions["metrics"] = lambda: jsonify({})
app.view_functions["_setup"] = setup
app.view_functions["_predict"] = predict
app.view_functions["webhook"] = webhook
app.view_functions["_train"] = train
app.view_functions["_is_training"] = is_training
app.view_functions["get_version"] = versions
app.add_url_rule("/versions", "get_version_get", versions, methods=["GET"])
app.add_url_rule("/status", "status", status, methods=["GET"])

# Start the scheduler (and re-run interrupted cycles) as soon as the worker process imports the app.
if os.environ.get("NCALR_NO_AUTOSTART", "").lower() not in ("1", "true", "yes"):
    get_scheduler()
