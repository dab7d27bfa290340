"""Trust (docs/security.md) against the real Label Studio and the backend under gunicorn, in the
default set-up: no basic auth, so the webhook secret alone authenticates Label Studio's webhooks.

One project, tests in file order: the secret lands on Label Studio's webhook; forged webhooks
change nothing; /predict before any model; "Start training" without basic auth; a crafted image
URL never reaches its listener; a second backend on the same MODEL_DIR is refused; a task deleted
mid-cycle; reordered choices; Label Studio stopped mid-cycle; SIGTERM mid-cycle; the backend
disconnected, then another backend connected in its place, then this one connected again.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from ncalr_backend.service.demo import DIGITS_CONFIG, BackendProcess, digit_pngs, label_from_name

from .conftest import SECRET_HEADER, TRIGGER_MIN, Backend, _tail, wait_for_webhook_auth

pytestmark = pytest.mark.integration
N_IMAGES = 60
STATE = {}


class Listener:
    """Where a crafted image URL points: it must never be reached."""

    def __init__(self):
        self.hits = []
        outer = self

        class H(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                outer.hits.append({"path": self.path, "headers": dict(self.headers)})
                self.send_response(200)
                self.end_headers()

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()


@pytest.fixture(scope="module")
def listener():
    lst = Listener()
    yield lst
    lst.server.shutdown()
    lst.server.server_close()


@pytest.fixture(scope="module")
def backend(label_studio, tmp_path_factory):
    """No basic auth (the default). Training long enough (16 px, width 16, a 60-epoch terminal
    window: a few seconds) that a test can act while a cycle trains; short retry delays; one
    torch thread."""
    d = tmp_path_factory.mktemp("backend-trust")
    b = Backend(label_studio, d / "model_dir", d / "backend.log", BASIC_AUTH_USER="", BASIC_AUTH_PASS="",
                IMAGE_SIZE=16, NCALR_WIDTH=16, NCALR_MAX_EPOCHS=80, NCALR_TPT_WINDOW=60, NCALR_THREADS=1,
                NCALR_WARM_START="on",  # the tests below check when a cycle warm-starts (auto: off at width 16)
                CYCLE_RETRY_DELAYS="3,6,12,24,48,96").start()
    b.http.auth = None
    yield b
    b.stop()


@pytest.fixture(scope="module")
def project(admin, backend, listener, label_studio):
    pid = admin.create_project("digits (trust)")
    files = digit_pngs(N_IMAGES, seed=7)
    assert admin.upload_files(pid, [(n, d) for n, d, _ in files]) == N_IMAGES
    ls_host = label_studio.url.split("//", 1)[1]
    # the reproduced key leak: urllib.parse sees Label Studio's host, urllib3 the listener's
    crafted = f"http://127.0.0.1:{listener.port}\\@{ls_host}/data/upload/x.png"
    assert admin.import_tasks(pid, [{"image": crafted}]) == 1
    ml = admin.connect_ml(pid, backend.url)
    assert ml["state"] == "CO", ml
    tasks = admin.tasks(pid)
    return {"id": pid, "ml": ml["id"], "tasks": tasks, "crafted": [t["id"] for t in tasks if "\\@" in t["data"]["image"]]}


def _post(backend, body, secret=None):
    headers = {SECRET_HEADER: secret} if secret else {}
    return requests.post(f"{backend.url}/webhook", json=body, headers=headers, timeout=30)


def _wait_stage(backend, pid, cycle, stage, timeout=120):
    return backend.wait(pid, lambda s: (s.get("in_progress") or {}).get("cycle") == cycle
                        and (s["in_progress"] or {}).get("stage") == stage, timeout, what=f"cycle {cycle} at {stage}")


def test_label_studio_webhook_gets_the_generated_secret(admin, backend, project):
    secret = backend.secret
    assert len(secret) >= 40
    assert (backend.model_dir / "webhook_key_secret").stat().st_mode & 0o077 == 0  # owner only
    hooks = wait_for_webhook_auth(admin, project["id"], basic=False, secret=backend.key(project["id"]))
    assert "Authorization" not in hooks[0]["headers"]  # no basic auth in this set-up
    assert secret not in json.dumps(hooks)  # the project's own key, never the secret itself
    log = _tail(backend.log_path, 400)
    assert secret not in log and backend.key(project["id"]) not in log  # never logged


def test_forged_webhooks_get_401_and_change_nothing(backend, project, listener):
    pid = project["id"]
    before = backend.status(pid)
    forged = [
        {"action": "ANNOTATION_CREATED", "project": {"id": pid}, "annotation": {"id": 1}},
        {"action": "ANNOTATIONS_DELETED", "project": {"id": pid}, "annotations": [{"id": 1}]},
        {"action": "TASKS_CREATED", "project": {"id": pid},
         "tasks": [{"id": 1, "data": {"image": f"http://127.0.0.1:{listener.port}/steal.png"}}]},
        {"action": "START_TRAINING", "project": {"id": 987654}},  # not a project of this Label Studio
        {"action": "PROJECT_UPDATED", "project": {"id": pid}},
    ]
    for body in forged:
        # nothing, a wrong value, the secret itself (what every webhook carried before), and another
        # project's key (readable by that project's members in Label Studio)
        for secret in (None, "wrong-" + backend.key(pid), backend.secret, backend.key(pid + 1)):
            r = _post(backend, body, secret)
            assert r.status_code == 401, (body, r.text)
            assert SECRET_HEADER in r.json()["error"] and "nothing was changed" in r.json()["error"]
    assert requests.post(f"{backend.url}/train", json={"project": 987654}, timeout=30).status_code == 401
    after = backend.status(pid)
    assert after["new_annotations"] == before["new_annotations"]
    assert after["webhooks_seen"] == before["webhooks_seen"]  # none of the forged ones was taken
    assert not after["scheduler"]["waiting"] and not after["scheduler"]["running"]
    # reading never creates state for a project nobody connected
    assert requests.get(f"{backend.url}/status", params={"project": 987654}, timeout=10).status_code == 200
    assert not (backend.model_dir / "projects" / "987654").exists()
    assert listener.hits == []
    # the real secret is accepted (counted, far below the threshold)
    r = _post(backend, forged[0], backend.key(pid))
    assert r.status_code == 201 and r.json()["counted"] == 1


def test_predict_before_any_model_is_accepted_by_label_studio_without_an_error(admin, backend, project, label_studio):
    pid = project["id"]
    ids = [t["id"] for t in project["tasks"][:5]]
    log_before = label_studio.log_path.read_text(errors="replace")
    admin.req("POST", "/api/dm/actions", params={"id": "retrieve_tasks_predictions", "project": pid},
              json={"selectedItems": {"all": False, "included": ids}})
    log_new = label_studio.log_path.read_text(errors="replace")[len(log_before):]
    assert "incorrect response" not in log_new, log_new[-2000:]
    preds = admin.req("GET", "/api/predictions/", params={"task": ids[0]}).json()
    assert [(p["model_version"], p["result"]) for p in preds] == [("ncalr-untrained", [])]
    STATE["placeholder_tasks"] = ids


def test_start_training_without_basic_auth_and_the_crafted_url_never_fetched(admin, backend, project, listener):
    pid = project["id"]
    digits = [t for t in project["tasks"] if "digit_" in t["data"]["image"]]
    for t in digits[:12]:  # below the trigger: only the button starts the cycle
        admin.annotate(t["id"], label_from_name(t["data"]["image"]))
    s = backend.wait(pid, lambda s: s["new_annotations"] == 1 + 12, 30, "the annotation webhooks to count")
    assert s["webhooks_seen"].get("ANNOTATION_CREATED") == 12 + 1  # Label Studio's 12 and the test's 1
    admin.start_training(project["ml"])  # Label Studio posts START_TRAINING without our header
    s = backend.wait_cycle(pid, 1, timeout=300)
    rep = s["latest_report"]
    failures = {f["task"]: f["reason"] for f in rep["image_failures"]}
    assert set(project["crafted"]) <= set(failures) and "backslash" in failures[project["crafted"][0]]
    assert listener.hits == []
    assert admin.project(pid)["model_version"] == s["model_version"]
    versions = admin.req("GET", f"/api/projects/{pid}/model-versions/").json()
    assert "ncalr-untrained" not in versions  # the placeholders went with the first live version
    STATE["labeled"] = 12


def test_a_second_backend_on_the_same_model_dir_is_refused(backend, tmp_path):
    other = BackendProcess(backend.env, log_path=tmp_path / "second.log")
    with pytest.raises(Exception):
        other.start(timeout=60)
    other.stop(kill=True)
    log = (tmp_path / "second.log").read_text(errors="replace")
    assert "is in use by another backend process" in log and "REDIS_URL" in log, log[-3000:]
    assert backend.status(1)  # the first one is unharmed


def test_a_task_deleted_mid_cycle_is_skipped_and_reported(admin, backend, project):
    pid = project["id"]
    n = backend.status(pid)["last_completed"]
    pool = [t for t in project["tasks"] if not t["annotations"] and "digit_" in t["data"]["image"]]
    victim = pool[-1]["id"]
    admin.start_training(project["ml"])
    _wait_stage(backend, pid, n + 1, "train")
    admin.req("DELETE", f"/api/tasks/{victim}/")
    s = backend.wait_cycle(pid, n + 1, timeout=300)
    rep = json.loads((backend.model_dir / "projects" / str(pid) / "cycles" / f"{n + 1:04d}" / "report.json").read_text())
    assert rep["skipped_deleted_tasks"] == [victim], rep.get("skipped_deleted_tasks")
    assert rep["predictions_created"] == rep["num_pool"] - 1
    assert rep["warm_start"] is True  # same config: the previous cycle's weights
    assert admin.project(pid)["model_version"] == s["model_version"]


def test_reordered_choices_never_warm_start_a_permuted_head(admin, backend, project):
    pid = project["id"]
    n = backend.status(pid)["last_completed"]
    cfg = DIGITS_CONFIG
    choices = [f'    <Choice value="{k}"/>\n' for k in range(10)]
    assert "".join(choices) in cfg
    reordered = cfg.replace("".join(choices), "".join(reversed(choices)))
    assert reordered != cfg
    admin.req("PATCH", f"/api/projects/{pid}/", json={"label_config": reordered})
    admin.start_training(project["ml"])
    backend.wait_cycle(pid, n + 1, timeout=300)
    rep = json.loads((backend.model_dir / "projects" / str(pid) / "cycles" / f"{n + 1:04d}" / "report.json").read_text())
    assert rep["warm_start"] is False
    assert "choices changed" in _tail(backend.log_path, 300)


def test_label_studio_down_mid_cycle_the_cycle_retries_and_completes(admin, backend, project, label_studio):
    pid = project["id"]
    n = backend.status(pid)["last_completed"]
    admin.start_training(project["ml"])
    _wait_stage(backend, pid, n + 1, "train")
    label_studio.stop()
    try:
        s = backend.wait(pid, lambda s: (s["scheduler"].get("attempt") or 0) >= 1 and s["scheduler"]["waiting"],
                         120, "the failed cycle to be scheduled again")
        assert "not reachable" in s["last_error"]
    finally:
        label_studio.start(timeout=300)
    s = backend.wait(pid, lambda s: (s.get("last_completed") or 0) > n and not s["scheduler"]["running"]
                     and not s["scheduler"]["waiting"], 300, "the retried cycle")
    assert s["pending"] is None and s["in_progress"] is None
    versions = admin.req("GET", f"/api/projects/{pid}/model-versions/").json()
    assert admin.project(pid)["model_version"] == s["model_version"] in versions
    assert len([v for v in versions if v.startswith(f"ncalr-{pid}-")]) <= 2  # live + previous, no half version


def test_sigterm_mid_cycle_stops_cleanly_and_the_cycle_reruns_on_start(admin, backend, project):
    pid = project["id"]
    n = backend.status(pid)["last_completed"]
    admin.start_training(project["ml"])
    _wait_stage(backend, pid, n + 1, "train")
    mark = len(backend.log_path.read_text(errors="replace"))
    t0 = time.time()
    backend.stop()  # SIGTERM
    assert time.time() - t0 < 30
    log = backend.log_path.read_text(errors="replace")[mark:]
    assert "terminate called" not in log and "SIGABRT" not in log and "was sent SIG" not in log, log[-3000:]
    assert "interrupted" in log, log[-3000:]
    state = json.loads((backend.model_dir / "projects" / str(pid) / "state.json").read_text())
    assert state["in_progress"]["cycle"] == n + 1 or state["pending"]
    backend.start()
    s = backend.wait(pid, lambda s: (s.get("last_completed") or 0) > n and not s["scheduler"]["running"]
                     and not s["scheduler"]["waiting"] and not s["in_progress"], 300, "the re-run cycle")
    assert s["latest_report"]["reason"] == "recovered"
    assert admin.project(pid)["model_version"] == s["model_version"]


def test_after_the_backend_is_disconnected_its_webhook_starts_no_cycle(admin, backend, project, label_studio):
    """Label Studio 1.23.2 keeps the webhook it made for an ML backend when the backend is
    disconnected (checked here), so annotations keep arriving; the backend runs no cycle for them,
    writes nothing to the project and says why in /status."""
    pid = project["id"]
    before = backend.status(pid)
    version = admin.project(pid)["model_version"]
    admin.req("DELETE", f"/api/ml/{project['ml']}")
    assert admin.req("GET", "/api/ml/", params={"project": pid}).json() == []
    hooks = admin.req("GET", "/api/webhooks/", params={"project": pid}).json()
    assert [h["url"] for h in hooks] == [f"{backend.url}/webhook"]  # still there, still sending
    seen = before["webhooks_seen"].get("ANNOTATION_CREATED", 0)
    todo = [t for t in admin.tasks(pid) if not t["is_labeled"] and t["id"] not in project["crafted"]][:TRIGGER_MIN]
    assert len(todo) == TRIGGER_MIN
    for t in todo:  # the trigger threshold
        admin.annotate(t["id"], label_from_name(t["data"]["image"]))
    s = backend.wait(pid, lambda s: s.get("skipped") and s["webhooks_seen"].get("ANNOTATION_CREATED", 0) >= seen + TRIGGER_MIN
                     and not s["scheduler"]["running"] and not s["scheduler"]["waiting"], 120, "the skipped cycle")
    assert "no ML backend connected" in s["skipped"]["reason"]
    assert (s["last_completed"], s["model_version"]) == (before["last_completed"], before["model_version"])
    assert admin.project(pid)["model_version"] == version


class OtherBackend:
    """Another team's ML backend: the least Label Studio needs to connect one (GET /health, POST
    /setup), and it takes the webhooks Label Studio then sends it."""

    def __init__(self):
        self.requests = []
        outer = self

        class H(BaseHTTPRequestHandler):
            def _answer(self, body: dict):
                n = int(self.headers.get("Content-Length") or 0)
                outer.requests.append((self.command, self.path, self.rfile.read(n) if n else b""))
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):  # noqa: N802
                self._answer({"status": "UP", "model_class": "Other"})

            def do_POST(self):  # noqa: N802
                self._answer({"model_version": "other-model-1"} if self.path.startswith("/setup") else {})

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()


def test_a_project_that_connected_another_backend_in_our_place_gets_no_cycle(admin, backend, project):
    """After the test above (this backend disconnected), the project connects another ML backend.
    Our webhook, with our secret, still reaches us; a cycle must not train for it, nor switch the
    project to our predictions over the other backend's. Then this backend is connected again
    (Label Studio keeps the old webhook, it does not make a second) and cycles run again."""
    pid = project["id"]
    other = OtherBackend()
    try:
        ml = admin.connect_ml(pid, other.url, title="another model")
        assert ml.get("id"), ml
        hooks = admin.req("GET", "/api/webhooks/", params={"project": pid}).json()
        assert sorted(h["url"] for h in hooks) == sorted([f"{backend.url}/webhook", f"{other.url}/webhook"])
        assert [h["headers"].get(SECRET_HEADER) for h in hooks if h["url"] == f"{backend.url}/webhook"] == \
            [backend.key(pid)]  # ours still carries its key: that is how the cycle tells them apart
        before = backend.status(pid)
        version = admin.project(pid)["model_version"]
        assert _post(backend, {"action": "START_TRAINING", "project": {"id": pid}}, backend.key(pid)).status_code == 201
        s = backend.wait(pid, lambda s: "another ML backend" in ((s.get("skipped") or {}).get("reason") or "")
                         and not s["scheduler"]["running"] and not s["scheduler"]["waiting"], 120, "the skipped cycle")
        assert other.url in s["skipped"]["reason"]
        assert (s["last_completed"], s["model_version"]) == (before["last_completed"], before["model_version"])
        assert admin.project(pid)["model_version"] == version
        admin.req("DELETE", f"/api/ml/{ml['id']}")
    finally:
        other.server.shutdown()
        other.server.server_close()
    ours = admin.connect_ml(pid, backend.url)
    assert ours["state"] == "CO", ours
    hooks = admin.req("GET", "/api/webhooks/", params={"project": pid}).json()
    assert [h["url"] for h in hooks].count(f"{backend.url}/webhook") == 1
    assert _post(backend, {"action": "START_TRAINING", "project": {"id": pid}}, backend.key(pid)).status_code == 201
    s = backend.wait(pid, lambda s: (s.get("last_completed") or 0) > (before["last_completed"] or 0)
                     and not s["scheduler"]["running"] and not s["scheduler"]["waiting"], 300, "the cycle once reconnected")
    assert s.get("skipped") is None
    assert admin.project(pid)["model_version"] == s["model_version"] != before["model_version"]
    # found by review: Label Studio makes no webhook when a backend's URL is edited, so our webhook
    # keeps the old address; the edited backend (the same service, reached another way) is still
    # ours and gets its cycles
    moved = backend.url.replace("127.0.0.1", "localhost")
    assert moved != backend.url
    r = admin.req("PATCH", f"/api/ml/{ours['id']}", json={"url": moved, "project": pid})  # as the Settings form sends it
    assert r.json()["url"] == moved
    hooks = admin.req("GET", "/api/webhooks/", params={"project": pid}).json()
    assert f"{moved}/webhook" not in [h["url"] for h in hooks]  # no webhook at the new address
    done = s["last_completed"]
    assert _post(backend, {"action": "START_TRAINING", "project": {"id": pid}}, backend.key(pid)).status_code == 201
    s = backend.wait(pid, lambda s: (s.get("last_completed") or 0) > done
                     and not s["scheduler"]["running"] and not s["scheduler"]["waiting"], 300, "the cycle after the edit")
    assert s.get("skipped") is None and admin.project(pid)["model_version"] == s["model_version"]
