"""A multi-label project (``<Choices choice="multiple">``) against a real Label Studio 1.23.2 and
the backend under gunicorn: annotate label SETS through Label Studio's API, let the annotations'
webhooks start a cycle, then check what Label Studio stores and serves.

Images: single digits of four classes, or two of them overlaid (element-wise max), labeled with
the set of digits they show (``demo.digit_set_pngs``). Own module, own backend process.
"""

from __future__ import annotations

import time

import pytest

from ncalr_backend.service.demo import digit_set_pngs, label_set_from_name

from .conftest import BASIC, TRIGGER_MIN, Backend, wait_for_webhook_auth

pytestmark = pytest.mark.integration

CLASSES = ("0", "1", "4", "7")
ML_CONFIG = ('<View><Image name="image" value="$image"/>'
             '<Choices name="digits" toName="image" choice="multiple" showInLine="true">'
             + "".join(f'<Choice value="{c}"/>' for c in CLASSES) + "</Choices></View>")
N_IMAGES = 100
PROBS_KEY = "choice_probs"
STATE = {}


def _annotate(admin, task, choices=None):
    choices = choices if choices is not None else label_set_from_name(task["data"]["image"])
    return admin.annotate(task["id"], choices, from_name="digits")


def _check_result(r):
    """One multi-label result item: a set of configured labels, most probable first, with the
    probability of each chosen label under PROBS_KEY and the mass on the set as its score."""
    chosen = r["value"]["choices"]
    assert chosen and len(set(chosen)) == len(chosen) and set(chosen) <= set(CLASSES), r
    probs = r[PROBS_KEY]
    assert list(probs) == chosen, r
    assert [probs[c] for c in chosen] == sorted(probs.values(), reverse=True), r
    assert all(0.0 <= v <= 1.0 for v in probs.values())
    assert r["score"] == pytest.approx(sum(probs.values()), abs=1e-4), r
    return chosen


@pytest.fixture(scope="module")
def backend(label_studio, tmp_path_factory):
    """This module's backend. The shared settings train 18 labels for 8 single steps (batch 32),
    after which the network's eval-mode outputs are saturated (one class at probability 1.0 for
    every image): fine for the mechanics the other modules check, but a label SET needs a model
    that has trained a little. Batch 8 gives 3 steps per epoch; width 16 pays for them. One torch
    thread: next to Label Studio on two cores, more threads only oversubscribe."""
    d = tmp_path_factory.mktemp("backend-ml")
    b = Backend(label_studio, d / "model_dir", d / "backend.log", NCALR_BATCH_SIZE=8, NCALR_WIDTH=16,
                NCALR_MAX_EPOCHS=12, NCALR_THREADS=1,
                NCALR_LR=0.05, NCALR_WARM_START="on").start()  # the rate and warm starts this module was written for (by width: 0.025, from scratch)
    yield b
    b.stop()


@pytest.fixture(scope="module")
def ml_project(admin, backend):
    pid = admin.create_project("digit sets (integration)", ML_CONFIG)
    files = digit_set_pngs(N_IMAGES, classes=tuple(int(c) for c in CLASSES), seed=5)
    assert admin.upload_files(pid, [(name, data) for name, data, _ in files]) == N_IMAGES
    ml = admin.connect_ml(pid, backend.url, basic_auth=BASIC)
    assert ml["state"] == "CO", ml
    tasks = admin.tasks(pid)
    assert len(tasks) == N_IMAGES
    wait_for_webhook_auth(admin, pid)
    return {"id": pid, "ml": ml["id"], "tasks": tasks}


def test_setup_accepts_a_multiple_choice_config(backend):
    r = backend.http.post(f"{backend.url}/setup", json={"project": "1.1", "schema": ML_CONFIG})
    assert r.status_code == 200 and r.json()["model_version"], r.text


def test_label_sets_train_a_cycle_whose_predictions_are_sets(admin, backend, ml_project):
    t0 = time.time()
    pid, tasks = ml_project["id"], ml_project["tasks"]
    # the first TRIGGER_MIN - 2 get their true set (1 or 2 choices) ...
    labeled = tasks[:TRIGGER_MIN]
    for t in labeled[:TRIGGER_MIN - 2]:
        _annotate(admin, t)
    # ... one gets a value that is not in the config (Label Studio stores it as given), one no choice:
    # both count as annotations, both are reported as unusable and left out, neither is lost
    _annotate(admin, labeled[TRIGGER_MIN - 2], ["1", "9"])
    s = backend.status(pid)
    assert s["new_annotations"] == TRIGGER_MIN - 1 and s["last_completed"] is None
    _annotate(admin, labeled[TRIGGER_MIN - 1], [])  # the TRIGGER_MIN-th annotation's webhook starts cycle 1
    s = backend.wait_cycle(pid, 1, timeout=300)
    rep = s["latest_report"]
    version = s["model_version"]
    assert rep["multilabel"] is True and rep["num_labeled"] == TRIGGER_MIN - 2
    bad = {u["task"]: u["reason"] for u in rep["unusable_annotations"]}
    assert set(bad) == {labeled[TRIGGER_MIN - 2]["id"], labeled[TRIGGER_MIN - 1]["id"]}, bad
    assert "'9'" in bad[labeled[TRIGGER_MIN - 2]["id"]] and "no choice" in bad[labeled[TRIGGER_MIN - 1]["id"]]
    truth = [label_set_from_name(t["data"]["image"]) for t in labeled[:TRIGGER_MIN - 2]]
    assert rep["class_counts"] == {c: sum(c in ls for ls in truth) for c in CLASSES}
    assert rep["label_set_sizes"] == {str(k): sum(len(ls) == k for ls in truth)
                                      for k in (1, 2) if any(len(ls) == k for ls in truth)}
    unlabeled = [t["id"] for t in tasks[TRIGGER_MIN:]]
    assert rep["num_pool"] == len(unlabeled) == rep["predictions_created"]
    assert admin.req("GET", f"/api/projects/{pid}/model-versions/").json().get(version) == len(unlabeled)
    project = admin.project(pid)
    assert project["model_version"] == version and project["sampling"] == "Uncertainty sampling"

    # what Label Studio stored: one prediction per unlabeled task, a label set with its probabilities
    now = {t["id"]: t for t in admin.tasks(pid)}
    scores, sizes = {}, []
    for tid in unlabeled:
        preds = [p for p in now[tid]["predictions"] if p["model_version"] == version]
        assert len(preds) == 1, (tid, now[tid]["predictions"])
        assert len(preds[0]["result"]) == 1
        sizes.append(len(_check_result(preds[0]["result"][0])))
        assert 0.0 <= preds[0]["score"] < 1.0
        scores[tid] = preds[0]["score"]
    for t in labeled:
        assert not [p for p in now[t["id"]]["predictions"] if p["model_version"] == version]
    assert max(sizes) >= 2, sizes
    assert len(set(scores.values())) == len(scores)

    # Label Studio's own next-task API serves the backend's queue order; annotate as served
    ranked = sorted(scores, key=scores.get)
    served = []
    for _ in range(3):
        task = admin.next_task(pid)
        served.append(task["id"])
        _annotate(admin, task)
    assert served == ranked[:3], (served, ranked[:5])
    STATE.update(version=version, ranked=ranked, sizes=sizes, seconds=time.time() - t0)


def test_predict_serves_label_sets(admin, backend, ml_project):
    pid, version = ml_project["id"], STATE["version"]
    tasks = {t["id"]: t for t in admin.tasks(pid)}
    stored = {}
    for tid in STATE["ranked"]:
        p = [p for p in tasks[tid]["predictions"] if p["model_version"] == version][0]
        stored[tid] = p
    multi = [tid for tid in STATE["ranked"] if len(stored[tid]["result"][0]["value"]["choices"]) >= 2][:2]
    single = [tid for tid in STATE["ranked"] if len(stored[tid]["result"][0]["value"]["choices"]) == 1][:1]
    # a labeled task was not ranked: /predict classifies it on the fly with the same model and set rule
    fresh = ml_project["tasks"][0]["id"]
    asked = multi + single + [fresh]
    r = backend.http.post(f"{backend.url}/predict", json={
        "tasks": [tasks[t] for t in asked], "project": f"{pid}.1700000000", "label_config": ML_CONFIG})
    assert r.status_code == 200, r.text
    res = r.json()["results"]
    assert len(res) == len(asked) and all(x["model_version"] == version for x in res)
    for tid, x in zip(asked[:-1], res[:-1]):  # ranked tasks: exactly what the cycle wrote
        assert x["result"][0]["value"] == stored[tid]["result"][0]["value"]
        assert x["result"][0][PROBS_KEY] == stored[tid]["result"][0][PROBS_KEY]
        assert x["score"] == pytest.approx(stored[tid]["score"], abs=1e-6)
    assert [len(x["result"][0]["value"]["choices"]) >= 2 for x in res[:len(multi)]] == [True] * len(multi)
    _check_result(res[-1]["result"][0])
    assert 0.0 <= res[-1]["score"] <= 1.0
    # Label Studio asking /predict by itself (Data Manager > "Retrieve predictions") stores the
    # result items with their per-choice probabilities too
    asked = [t["id"] for t in ml_project["tasks"][:2]]  # labeled: no prediction of the version yet
    admin.req("POST", "/api/dm/actions", params={"id": "retrieve_tasks_predictions", "project": pid},
              json={"selectedItems": {"all": False, "included": asked}})
    for tid in asked:
        got = [p for p in admin.req("GET", "/api/predictions/", params={"task": tid}).json()
               if p["model_version"] == version]
        assert len(got) == 1, got
        _check_result(got[0]["result"][0])


def test_new_tasks_get_label_set_predictions_without_retraining(admin, backend, ml_project):
    pid, version = ml_project["id"], STATE["version"]
    before = backend.status(pid)["scheduler"]["cycles_run"]
    known = {t["id"] for t in admin.tasks(pid)}
    new = [(f"new_{n}", d) for n, d, _ in digit_set_pngs(3, classes=tuple(int(c) for c in CLASSES), seed=77)]
    assert admin.upload_files(pid, new) == 3  # TASKS_CREATED
    new_ids = [t["id"] for t in admin.tasks(pid) if t["id"] not in known]
    deadline = time.time() + 60
    while time.time() < deadline:
        preds = {tid: [p for p in admin.req("GET", "/api/predictions/", params={"task": tid}).json()
                       if p["model_version"] == version] for tid in new_ids}
        if all(preds.values()):
            break
        time.sleep(0.5)
    assert all(len(p) == 1 for p in preds.values()), preds
    for p in preds.values():
        _check_result(p[0]["result"][0])
        assert 0.0 <= p[0]["score"] <= 1.0
    assert backend.status(pid)["scheduler"]["cycles_run"] == before
