"""Hostile request bodies and ids on the Flask app (found by review, 2026-11-30), without Label
Studio: each gets a 4xx that says what to fix, or is read the way Label Studio means it."""

from __future__ import annotations

import os

import pytest

from ncalr_backend.service.app import MAX_ID, project_id_from

CONFIG = ('<View><Image name="image" value="$image"/><Choices name="label" toName="image">'
          '<Choice value="a"/><Choice value="b"/></Choices></View>')


@pytest.fixture(scope="module")
def client(tmp_path_factory):  # one app per process: label-studio-ml's Flask app is a module global
    from model import NCALRBackend
    from ncalr_backend.service.app import create_app
    from ncalr_backend.service.settings import Settings

    import importlib

    import label_studio_ml.api

    importlib.reload(label_studio_ml.api)  # a fresh module-global Flask app for this file's app
    s = Settings.from_env({"MODEL_DIR": str(tmp_path_factory.mktemp("app")), "LABEL_STUDIO_URL": "http://ls.test", "LABEL_STUDIO_API_KEY": "k"})
    c = create_app(NCALRBackend, s, autostart=False).test_client()
    c.model_dir = s.model_dir
    return c


@pytest.mark.parametrize("value, pid", [
    (7, 7), ("7", 7), ("7.1712345678", 7), ({"id": 7}, 7), ({"id": "7.1"}, 7), (MAX_ID, MAX_ID),
    (0, None), (-3, None), ("-3.1", None), (True, None), (None, None), ("", None), ("x", None), (7.5, 7),
    ("9" * 300, None), (MAX_ID + 1, None), (str(MAX_ID + 1), None), ("\u0661\u0662", None), ("+7", None),
    ([7], None), ({"id": None}, None),
])
def test_project_ids_are_database_integers(value, pid):
    assert project_id_from(value) == pid


def test_a_config_with_an_xml_declaration_connects_like_label_studio_accepts_it(client):
    for decl in ('<?xml version="1.0" encoding="UTF-8"?>', "\ufeff<?xml version='1.0'?>\n", ""):
        r = client.post("/setup", json={"schema": decl + CONFIG, "project": "1.123"})
        assert r.status_code == 200, (decl, r.get_json())
        r = client.post("/predict", json={"tasks": [{"id": 1, "data": {"image": "/data/upload/1/x.png"}}],
                                          "label_config": decl + CONFIG, "project": "1.123"})
        assert r.status_code == 200 and r.get_json()["results"][0]["result"] == [], r.get_json()


def test_versions_needs_an_object_body_and_a_real_project(client):
    r = client.post("/versions", json=[1])
    assert r.status_code == 400 and "JSON object" in r.get_json()["error"]
    assert client.post("/versions", json={"project": 1}).status_code == 200
    assert client.get("/versions?project=1").status_code == 200
    for bad in ("9" * 300, "0", "abc"):
        r = client.get(f"/versions?project={bad}")
        assert r.status_code == 400 and "project" in r.get_json()["error"]


def test_a_malformed_annotations_deleted_is_refused_before_the_review_list_reads_it(client):
    from ncalr_backend.service.auth import SECRET_HEADER, project_key
    from ncalr_backend.service.store import ProjectStore

    store = ProjectStore(client.model_dir, 1)
    store.root.mkdir(parents=True, exist_ok=True)
    (store.root / "review.json").write_text("{}")  # a project with a suspected-label-errors list
    secret = project_key((client.model_dir / "webhook_key_secret").read_text().strip(), 1)
    for bad in (5, "x", [5], [{"no_id": 1}], None):
        r = client.post("/webhook", headers={SECRET_HEADER: secret},
                        json={"action": "ANNOTATIONS_DELETED", "project": {"id": 1}, "annotations": bad})
        assert r.status_code == 400 and "ANNOTATIONS_DELETED" in r.get_json()["error"], (bad, r.get_json())


def test_a_webhook_is_counted_when_the_project_mirror_is_damaged(client):
    """The hint goes into a new mirror (mirror.py sets the damaged one aside); the annotation is
    counted. It used to be a 500, and the annotation went uncounted."""
    from ncalr_backend.service.auth import SECRET_HEADER, project_key
    from ncalr_backend.service.store import ProjectStore

    store = ProjectStore(client.model_dir, 2)
    store.root.mkdir(parents=True, exist_ok=True)
    (store.root / "mirror.sqlite").write_bytes(b"not SQLite " * 500)
    secret = project_key((client.model_dir / "webhook_key_secret").read_text().strip(), 2)
    r = client.post("/webhook", headers={SECRET_HEADER: secret},
                    json={"action": "ANNOTATION_CREATED", "project": {"id": 2, "task_number": 50},
                          "task": {"id": 9}, "annotation": {"id": 1, "task": 9, "result": []}})
    assert r.status_code == 201, r.get_json()
    assert store.state()["new_annotations"] == 1
    assert (store.root / "mirror.sqlite.corrupt").exists()


def test_annotations_created_from_predictions_are_counted_and_a_skip_is_no_review(client, monkeypatch):
    """Found by review: ANNOTATIONS_CREATED (Data Manager: "Create annotations from predictions", a list
    under "annotation") was answered "unknown action" and never counted; a skip (a cancelled
    ANNOTATION_CREATED) of a listed suspect took it off the list as if reviewed."""
    from ncalr_backend.service.auth import SECRET_HEADER, project_key
    from ncalr_backend.service.store import ProjectStore

    secret = (client.model_dir / "webhook_key_secret").read_text().strip()
    post = lambda body: client.post("/webhook", headers={SECRET_HEADER: project_key(secret, body["project"]["id"])},  # noqa: E731
                                    json=body)
    r = post({"action": "ANNOTATIONS_CREATED", "project": {"id": 3, "task_number": 1000},
              "annotation": [{"id": 10 + i, "task": 100 + i} for i in range(4)] + [{"id": 20, "task": 120,
                                                                                      "was_cancelled": True}]})
    assert r.status_code == 201 and ProjectStore(client.model_dir, 3).state()["new_annotations"] == 4
    r = post({"action": "ANNOTATIONS_CREATED", "project": {"id": 3}, "annotation": {"id": 1}})
    assert r.status_code == 400 and "ANNOTATIONS_CREATED" in r.get_json()["error"]

    backend = client.application.extensions["ncalr"]
    requested = []
    monkeypatch.setattr(backend.reviews, "request", lambda pid, tids: requested.append((pid, list(tids))))
    import ncalr_backend.service.review as review
    monkeypatch.setattr(review.ReviewState, "watched_tasks", lambda self: {"7"})
    store = ProjectStore(client.model_dir, 5)
    store.root.mkdir(parents=True, exist_ok=True)
    (store.root / "review.json").write_text("{}")
    post({"action": "ANNOTATION_CREATED", "project": {"id": 5}, "task": {"id": 7},
          "annotation": {"id": 70, "task": 7, "was_cancelled": True}})
    assert requested == []  # skipped: still a suspect
    post({"action": "ANNOTATION_CREATED", "project": {"id": 5}, "task": {"id": 7}, "annotation": {"id": 71, "task": 7}})
    assert requested == [(5, [7])]  # answered: reviewed


def test_model_dir_lock_waits_for_a_reloads_old_worker_but_refuses_a_second_backend(tmp_path):
    """Found by review: a gunicorn reload (HUP) starts the new worker while the old one still stops
    its cycle; the lock was tried once, the new worker failed to boot and gunicorn halted."""
    import threading

    from ncalr_backend.service.app import lock_model_dir

    first = lock_model_dir(tmp_path, wait_s=0)
    released = threading.Event()

    def let_go():  # the old worker lets go after a second
        released.set()
        first.close()

    threading.Timer(1.0, let_go).start()
    second = lock_model_dir(tmp_path, wait_s=10)
    assert released.is_set() and f"pid {os.getpid()}" in (tmp_path / ".backend.lock").read_text()
    with pytest.raises(RuntimeError, match="in use by another backend process"):
        lock_model_dir(tmp_path, wait_s=0.5)  # nobody lets go: a second backend
    second.close()


def test_a_config_with_a_lone_surrogate_is_a_400_that_says_so(client):
    """Found by review: JSON may carry "\\ud800", which no UTF-8 text holds; lxml's input encoding
    raised UnicodeEncodeError and /setup and /predict answered 500."""
    bad = CONFIG.replace('value="a"', 'value="a\ud800"')
    for path, body in (("/setup", {"schema": bad, "project": 1}),
                       ("/predict", {"tasks": [{"id": 1, "data": {}}], "project": 1, "label_config": bad})):
        r = client.post(path, json=body)
        assert r.status_code == 400, (path, r.status_code, r.get_json())
        assert "not text" in r.get_json()["error"]


def test_a_webhook_naming_a_task_id_no_database_holds_is_counted(client):
    """Found by review: a task id of 2**64 passed as a hint, SQLite refused it (OverflowError) and
    the webhook answered 500 with its annotation uncounted. Such a hint is ignored now."""
    from ncalr_backend.service.auth import SECRET_HEADER, project_key
    from ncalr_backend.service.mirror import hinted_task_ids
    from ncalr_backend.service.store import ProjectStore

    assert hinted_task_ids("ANNOTATION_CREATED", {"task": {"id": 2 ** 64}, "annotation": {"task": MAX_ID}}) == [MAX_ID]
    secret = project_key((client.model_dir / "webhook_key_secret").read_text().strip(), 31)
    before = ProjectStore(client.model_dir, 31).state().get("new_annotations", 0)
    r = client.post("/webhook", headers={SECRET_HEADER: secret},
                    json={"action": "ANNOTATION_CREATED", "project": {"id": 31, "task_number": 50},
                          "task": {"id": 2 ** 64}, "annotation": {"id": 1, "task": 2 ** 64, "result": []}})
    assert r.status_code == 201, r.get_json()
    assert ProjectStore(client.model_dir, 31).state()["new_annotations"] == before + 1


def test_start_training_without_the_secret_says_what_to_set(client):
    """Without PUBLIC_URL (and basic auth) Label Studio's Start training button is refused: the 401
    says what to set instead of only pointing at the webhook header the button cannot send."""
    r = client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": 5}})
    assert r.status_code == 401 and "PUBLIC_URL" in r.get_json()["error"], r.get_json()
    r = client.post("/webhook", json={"action": "ANNOTATION_CREATED", "project": {"id": 5}})
    assert r.status_code == 401 and "PUBLIC_URL" not in r.get_json()["error"]


def test_whoami_proves_the_secret_to_whoever_asks_and_refuses_odd_challenges(client):
    """GET /ncalr/whoami?c=<32 hex> answers HMAC(secret, challenge): how the backend recognises its
    own URL among a project's ML backends without PUBLIC_URL (auth.is_this_backend)."""
    from ncalr_backend.service import auth as auth_mod

    secret = auth_mod.load_or_create_secret(client.model_dir)
    r = client.get(auth_mod.WHOAMI_PATH + "?c=" + "ab" * 16)
    assert r.status_code == 200 and r.get_json() == {"proof": auth_mod.whoami_proof(secret, "ab" * 16)}
    assert r.headers["Cache-Control"] == "no-store" and secret not in r.get_data(as_text=True)
    for bad in ("", "?c=", "?c=AB" + "ab" * 15, "?c=" + "ab" * 17, "?c=%00" + "a" * 31):
        r = client.get(auth_mod.WHOAMI_PATH + bad)
        assert r.status_code == 400 and "32 lower-case hex" in r.get_json()["error"], bad


def test_a_webhook_is_checked_against_the_key_of_the_project_it_acts_on(client, monkeypatch):
    """The project id is parsed once (store.project_id_from) and that one value picks the key and
    the project counted: every form Label Studio sends ({"id": 7}, {"id": "7"}, "7.<ts>") needs
    project 7's key, and project 7's key does not pass for project 8 in any form."""
    from ncalr_backend.service.auth import SECRET_HEADER, project_key
    from ncalr_backend.service.store import ProjectStore

    secret = (client.model_dir / "webhook_key_secret").read_text().strip()
    body = lambda project: {"action": "ANNOTATION_CREATED", "project": project,  # noqa: E731
                            "task": {"id": 3}, "annotation": {"id": 4, "task": 3}}
    for n, project in enumerate(({"id": 7, "task_number": 9999}, {"id": "7", "task_number": 9999}, "7.1700000000"), 1):
        r = client.post("/webhook", headers={SECRET_HEADER: project_key(secret, 7)}, json=body(project))
        assert r.status_code == 201 and ProjectStore(client.model_dir, 7).state()["new_annotations"] == n, r.get_json()
    for project in ({"id": 8}, {"id": "8"}, "8.1700000000"):
        r = client.post("/webhook", headers={SECRET_HEADER: project_key(secret, 7)}, json=body(project))
        assert r.status_code == 401 and "each project's" in r.get_json()["error"]
    r = client.post("/webhook", headers={SECRET_HEADER: project_key(secret, 7)}, json={"action": "PROJECT_UPDATED"})
    assert r.status_code == 401 and "names no project" in r.get_json()["error"]
    assert ProjectStore(client.model_dir, 8).state().get("new_annotations", 0) == 0


def test_with_basic_auth_a_webhook_needs_its_key_too_and_start_training_gets_its_key_repaired(client, monkeypatch):
    """Found by review: with basic auth on every webhook passed on basic auth alone, whose
    credentials sit on every using project's webhook (readable by its members), and a webhook
    still carrying the old shared secret was never repaired. Now an annotation event needs its
    project's key besides basic auth (refused, and the key repaired, without it); Label Studio's
    Start training button (basic auth, no custom header) is taken, and the key repaired too."""
    import base64
    import dataclasses

    from ncalr_backend.service.auth import SECRET_HEADER, project_key

    backend = client.application.extensions["ncalr"]
    basic = dataclasses.replace(backend.settings, basic_auth_user="u", basic_auth_pass="p")
    monkeypatch.setattr(backend, "settings", basic)
    monkeypatch.setattr(backend.auth, "settings", basic)
    repaired = []
    monkeypatch.setattr(backend.auth, "resync_soon", lambda pid, host: repaired.append(pid))
    auth = {"Authorization": "Basic " + base64.b64encode(b"u:p").decode()}
    body = {"action": "ANNOTATION_CREATED", "project": {"id": 12, "task_number": 9999}, "annotation": {"id": 1, "task": 2}}
    r = client.post("/webhook", headers={**auth, SECRET_HEADER: "the-old-shared-secret"}, json=body)
    assert r.status_code == 401 and repaired == [12]
    assert client.post("/webhook", headers=auth, json=body).status_code == 401
    key = {SECRET_HEADER: project_key(backend.auth.secret, 12)}
    assert client.post("/webhook", headers={**auth, **key}, json=body).status_code == 201
    assert client.post("/webhook", headers=key, json=body).status_code == 401  # and basic auth still
    repaired.clear()
    start = {"action": "START_TRAINING", "project": {"id": 13}}
    assert client.post("/webhook", headers=auth, json=start).status_code == 201 and repaired == [13]
    assert client.post("/webhook", headers={**auth, SECRET_HEADER: project_key(backend.auth.secret, 13)},
                       json=start).status_code == 201 and repaired == [13]  # the right key: nothing to repair


def test_bodies_are_capped_before_anyone_is_authenticated(client):
    """Found by review: any body up to 64 MB was parsed before the key was checked, so anyone who
    reached the port froze the process (the parse holds the GIL) and took 1.5 GB per request.
    Without a project's key a body takes at most 1 MB; bigger ones (a keyed webhook, /predict) are
    parsed one at a time; deep nesting is a 400, not a 500."""
    from ncalr_backend.service.app import SMALL_BODY
    from ncalr_backend.service.auth import SECRET_HEADER

    big = b'{"action": "START_TRAINING", "project": {"id": 1}, "pad": "' + b"x" * (SMALL_BODY + 10) + b'"}'
    r = client.post("/webhook", data=big, content_type="application/json")
    assert r.status_code == 413 and "at most" in r.get_json()["error"]
    r = client.post("/webhook", data=big, content_type="application/json", headers={SECRET_HEADER: "wrong"})
    assert r.status_code == 413  # any header value raised the cap to 64 MB (found by review, 2026-12-05)
    r = client.post("/webhook", data=big, content_type="application/json", headers={SECRET_HEADER: "ab" * 32})
    assert r.status_code == 401  # a key's shape: parsed (a keyed webhook may be large), then refused by its key
    for path in ("/webhook", "/setup"):
        r = client.post(path, data="[" * 100_000 + "]" * 100_000, content_type="application/json")
        assert r.status_code == 400 and "nested too deeply" in r.get_json()["error"], path
    r = client.post("/predict", data=b'{"tasks": [], "pad": "' + b"x" * (SMALL_BODY + 10) + b'"}',
                    content_type="application/json")
    assert r.status_code == 400 and "label" in r.get_json()["error"].lower()  # read: its config is missing


def test_predict_takes_at_most_as_many_tasks_as_label_studio_can_send(client, monkeypatch):
    """Found by review (2026-12-05): /predict took any number of tasks within its 64 MB body, and each
    costs its answer whatever it holds, so a body of empty objects ("{}," is 3 bytes) held ~10 GB.
    It now takes at most MAX_PREDICT_TASKS, refused with a 413 that names the limit and what to do
    before any task is looked at; the cap is above what Label Studio 1.23 can send within the body
    cap (its smallest task, serialized as MLApi sends it, times the cap is over BIG_BODY). A task
    without a usable id costs only its own answer."""
    import json

    from model import NCALRBackend
    from ncalr_backend.service import app as app_module

    cap = getattr(app_module, "MAX_PREDICT_TASKS", 167_772)
    # Label Studio 1.23.2's smallest task as /predict gets it: TaskSimpleSerializer (every Task field
    # but precomputed_agreement and allow_skip, with annotations and predictions), json= in requests
    smallest = {"id": 1, "annotations": [], "predictions": [], "data": {"image": "x"}, "meta": {},
                "created_at": "2025-01-01T00:00:00.000000Z", "updated_at": "2025-01-01T00:00:00.000000Z",
                "is_labeled": False, "overlap": 1, "inner_id": 1, "total_annotations": 0, "cancelled_annotations": 0,
                "total_predictions": 0, "comment_count": 0, "unresolved_comment_count": 0,
                "last_comment_updated_at": None, "project": 1, "updated_by": None, "file_upload": None,
                "comment_authors": []}
    assert len(json.dumps(smallest)) * cap > app_module.BIG_BODY
    asked = []
    real = NCALRBackend.predict
    monkeypatch.setattr(NCALRBackend, "predict", lambda self, tasks, **kw: asked.append(len(tasks)) or real(
        self, tasks, **kw))
    head = b'{"project": 1, "label_config": ' + json.dumps(CONFIG).encode() + b', "tasks": ['
    r = client.post("/predict", data=head + b"{}," * cap + b"{}]}", content_type="application/json")
    assert r.status_code == 413
    err = r.get_json()["error"]
    assert f"at most {cap} tasks" in err and f"has {cap + 1}" in err
    assert "Retrieve predictions" in err and asked == []
    r = client.post("/predict", data=head + b"{}," * (cap - 1) + b"{}]}", content_type="application/json")
    assert r.status_code == 200 and len(r.get_json()["results"]) == cap and asked == [cap]
    odd = [{}, {"id": None}, {"id": "x"}, {"id": [1]}, {"id": {"a": 1}}, {"id": True}, {"id": -1}, {"id": 1.5},
           {"id": 10 ** 30}, {"id": 4, "data": None}, {"id": 5, "data": {"image": 7}}]
    r = client.post("/predict", json={"project": 1, "label_config": CONFIG, "tasks": odd})
    assert r.status_code == 200 and len(r.get_json()["results"]) == len(odd)


def test_label_studios_own_versions_call_gets_the_answer_it_understands(client):
    """Found by review: Label Studio 1.23 asks GET /versions without the project (MLApi.get_versions
    drops it), and our 400 was an error in its UI; on 404 it shows the version /setup reported."""
    assert client.get("/versions").status_code == 404
    assert client.post("/versions", json={}).status_code == 404


def test_task_ids_and_counts_of_a_webhook_are_database_integers(client):
    """Found by review: TASKS_CREATED ids went through int() (True, 7.9, "1_000", 1e400 -> 500) and
    were queued, recorded before the payload was refused; a huge task_number was a 500 and stayed
    in state.json."""
    from ncalr_backend.service.auth import SECRET_HEADER, project_key
    from ncalr_backend.service.store import ProjectStore

    secret = project_key((client.model_dir / "webhook_key_secret").read_text().strip(), 13)
    seen = lambda: ProjectStore(client.model_dir, 13).state().get("webhooks_seen") or {}  # noqa: E731
    before = seen()
    for bad in (True, 7.9, "12", -5, 0, MAX_ID + 1, 10 ** 30):
        r = client.post("/webhook", headers={SECRET_HEADER: secret},
                        json={"action": "TASKS_CREATED", "project": {"id": 13}, "tasks": [{"id": 4}, {"id": bad}]})
        assert r.status_code == 400 and "task ids" in r.get_json()["error"], bad
    r = client.post("/webhook", headers={SECRET_HEADER: secret}, data='{"action": "TASKS_CREATED", "project": '
                    '{"id": 13}, "tasks": [{"id": 1e400}]}', content_type="application/json")
    assert r.status_code == 400
    assert seen() == before  # nothing recorded of a refused payload
    for n in (9 ** 4000, 10 ** 30, True, -1):
        r = client.post("/webhook", headers={SECRET_HEADER: secret},
                        json={"action": "ANNOTATION_CREATED", "project": {"id": 13, "task_number": n},
                              "task": {"id": 4}, "annotation": {"id": 9, "task": 4, "result": []}})
        assert r.status_code == 201, (n, r.get_json())
    assert ProjectStore(client.model_dir, 13).state().get("num_tasks") in (None, 0)


def test_a_webhook_is_counted_at_once_while_a_sync_holds_the_mirror(client, monkeypatch):
    """Found by review: while a sync held the mirror's write lock (a full read of a large project),
    a webhook waited up to 30 s to note its task hint, then answered 500 with the annotation
    uncounted (Label Studio does not send it again). The hint only saves a read: the webhook now
    waits ``HINT_WAIT_S`` at most and counts the annotation either way."""
    import sqlite3
    import time

    from ncalr_backend.service import app as app_mod
    from ncalr_backend.service.auth import SECRET_HEADER, project_key
    from ncalr_backend.service.mirror import TaskMirror
    from ncalr_backend.service.store import ProjectStore

    monkeypatch.setattr(app_mod, "HINT_WAIT_S", 0.3)
    st = ProjectStore(client.model_dir, 6)
    TaskMirror(st.root).mark([1])  # the mirror exists
    secret = project_key((client.model_dir / "webhook_key_secret").read_text().strip(), 6)
    sync = sqlite3.connect(st.root / "mirror.sqlite", isolation_level=None)
    sync.execute("BEGIN IMMEDIATE")  # what a sync holds while it writes
    try:
        t0 = time.monotonic()
        r = client.post("/webhook", headers={SECRET_HEADER: secret},
                        json={"action": "ANNOTATION_CREATED", "project": {"id": 6, "task_number": 100},
                              "task": {"id": 5}, "annotation": {"id": 9, "task": 5, "result": []}})
        waited = time.monotonic() - t0
    finally:
        sync.execute("ROLLBACK")
        sync.close()
    assert r.status_code == 201, r.get_json()
    assert st.state()["new_annotations"] == 1
    assert waited < 10  # not the 30 s of SQLite's default wait
    assert TaskMirror(st.root).state()["hints"] == 1  # task 5's hint was dropped, the count was not


def test_a_damaged_review_file_never_costs_an_annotation_its_count(client):
    """Found by review: review.json of the wrong shape made ANNOTATION_CREATED a 500 before it was
    counted (Label Studio does not send a webhook twice: the event was lost)."""
    from ncalr_backend.service.auth import SECRET_HEADER, project_key
    from ncalr_backend.service.store import ProjectStore

    st = ProjectStore(client.model_dir, 4)
    st.root.mkdir(parents=True, exist_ok=True)
    secret = project_key((client.model_dir / "webhook_key_secret").read_text().strip(), 4)
    for damaged in ('["x"]', '{"listed": {"5": "x"}}', '{"listed": [], "reviewed": 3, "relabel": {"5": 1}}'):
        (st.root / "review.json").write_text(damaged)
        before = st.state()["new_annotations"]
        r = client.post("/webhook", headers={SECRET_HEADER: secret},
                        json={"action": "ANNOTATION_CREATED", "project": {"id": 4, "task_number": 100},
                              "task": {"id": 5}, "annotation": {"id": 9, "task": 5, "result": []}})
        assert r.status_code == 201 and st.state()["new_annotations"] == before + 1, (damaged, r.get_json())


def test_a_setup_refusal_puts_only_printable_ascii_in_the_status_line(client):
    """Found by review: a Choices attribute holding DEL (&#127;) went into the status line, which
    gunicorn refuses (a 500 instead of the 400 that says what to fix)."""
    bad = CONFIG.replace('toName="image">', 'toName="image" choice="&#127;x">')
    r = client.post("/setup", json={"schema": bad, "project": 1})
    assert r.status_code == 400
    assert all(" " <= c <= "~" for c in r.status), r.status


def test_a_reviewers_correction_is_on_disk_before_the_webhook_answers(client, monkeypatch):
    """Found by review: the review was queued in memory only and lost on one failed clear or a
    restart (Label Studio does not send a webhook twice). It is in review_todo.json, with the
    annotation the reviewer changed, before the 201; a deletion names no annotation."""
    from ncalr_backend.service import review
    from ncalr_backend.service.auth import SECRET_HEADER, project_key
    from ncalr_backend.service.store import ProjectStore

    backend = client.application.extensions["ncalr"]
    monkeypatch.setattr(backend.reviews, "_wake", lambda pid, delay: None)  # no Label Studio here: only the queue
    st = ProjectStore(client.model_dir, 6)
    with review.ReviewState(st).locked() as d:
        d["listed"] = {"5": {"score": 0.9, "label": "a", "suggested": "b", "fingerprint": "9:0"},
                       "8": {"score": 0.8, "label": "a", "suggested": "b", "fingerprint": "12:0"}}
    secret = project_key((client.model_dir / "webhook_key_secret").read_text().strip(), 6)
    post = lambda body: client.post("/webhook", headers={SECRET_HEADER: secret}, json=body)  # noqa: E731
    r = post({"action": "ANNOTATION_UPDATED", "project": {"id": 6}, "task": {"id": 5},
              "annotation": {"id": 9, "task": 5, "result": []}})
    assert r.status_code == 201
    r = post({"action": "ANNOTATIONS_DELETED", "project": {"id": 6}, "annotations": [{"id": 12}]})
    assert r.status_code == 201
    r = post({"action": "ANNOTATION_CREATED", "project": {"id": 6}, "task": {"id": 77},
              "annotation": {"id": 70, "task": 77, "result": []}})  # not listed: nothing queued
    todo = review.ReviewTodo(st).read()
    assert {t: e["annotations"] for t, e in todo.items()} == {"5": [9], "8": []}


def test_a_project_setting_that_turns_the_order_off_is_reported_not_undone(client):
    """Found by review: turning "Use predictions to prelabel tasks" off (Label Studio empties the
    project's model_version), selecting another version or another sampling silently made "Label All
    Tasks" serve another order. PROJECT_UPDATED carries both: /status and the dashboard say what to
    change; the backend's own switch of a cycle in progress is no drift; nothing is PATCHed."""
    from ncalr_backend.service.auth import SECRET_HEADER, project_key
    from ncalr_backend.service.store import ProjectStore

    st = ProjectStore(client.model_dir, 9)
    work = st.root / "work-1"
    work.mkdir(parents=True)
    st.commit(work, 1, {"model_version": "ncalr-9-c0001-a"})
    secret = project_key((client.model_dir / "webhook_key_secret").read_text().strip(), 9)

    def update(**project):
        r = client.post("/webhook", headers={SECRET_HEADER: secret},
                        json={"action": "PROJECT_UPDATED", "project": {"id": 9, **project}})
        assert r.status_code == 200 and r.get_json()["status"] == "ignored"
        return client.get("/status?project=9").get_json()["serving_drift"]

    drift = update(model_version="", show_collab_predictions=False, sampling="Uncertainty sampling")
    assert "Use predictions to prelabel tasks" in drift and "ncalr-9-c0001-a" in drift
    assert update(model_version="ncalr-9-c0001-a", sampling="Sequential sampling").count("Sequential") == 1
    html = client.get("/").get_data(as_text=True)
    assert 'class="error drift"' in html and "Sequential sampling" in html
    assert update(model_version="<b>x</b>", sampling="Uncertainty sampling") is not None
    assert "<b>x</b>" not in client.get("/").get_data(as_text=True)  # escaped
    st.update_state(in_progress={"cycle": 2, "model_version": "ncalr-9-c0002-b"})  # the backend's own switch
    assert update(model_version="ncalr-9-c0002-b", sampling="Uncertainty sampling") is None
    st.update_state(in_progress=None)
    assert update(model_version="ncalr-9-c0001-a", sampling="Uncertainty sampling") is None
