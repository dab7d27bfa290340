"""Suspected label errors in Label Studio's own Data Manager (service/review.py), against the real
Label Studio 1.23.2 and the backend under gunicorn, through the API and in the UI (headless
Chromium; screenshots saved under the test output).

Annotators label 36 digits, 8 of them wrongly; "Start training" runs a cycle; the backend lists
suspected label errors in a "Suspected label errors" tab without changing any annotation or the
unlabeled queue; a reviewer corrects one and confirms another, and both leave the list and stay
off it in the next cycle.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

from ncalr_backend.service import review
from ncalr_backend.service.demo import digit_pngs, label_from_name

from .conftest import Backend, _tail, wait_for_webhook_auth

pytestmark = pytest.mark.integration

N_IMAGES = 120
N_LABELED = 36
WRONG_EVERY = 4  # every 4th labeled task gets (true + 1) mod 10
OUT = Path(os.environ.get("NCALR_TEST_OUTPUT", Path(__file__).resolve().parents[2] / "test-output")) / "review"
STATE = {}


@pytest.fixture(scope="module")
def backend(label_studio, tmp_path_factory):
    d = tmp_path_factory.mktemp("backend-review")
    b = Backend(label_studio, d / "model_dir", d / "backend.log", BASIC_AUTH_USER="", BASIC_AUTH_PASS="",
                IMAGE_SIZE=16, NCALR_WIDTH=16, NCALR_MAX_EPOCHS=30, NCALR_TPT_WINDOW=5, NCALR_BATCH_SIZE=16,
                NCALR_TRAIN_ACC_THRESHOLD=0.99, NCALR_THREADS=1, NCALR_LR=0.05, NCALR_WARM_START="on",  # as written for
                TRAIN_TRIGGER_MIN=10000).start()  # cycles only from "Start training": the test says when
    b.http.auth = None
    yield b
    b.stop()


@pytest.fixture(scope="module")
def project(admin, backend):
    pid = admin.create_project("digits (review)")
    assert admin.upload_files(pid, [(n, d) for n, d, _ in digit_pngs(N_IMAGES, seed=11)]) == N_IMAGES
    ml = admin.connect_ml(pid, backend.url)
    assert ml["state"] == "CO", ml
    wait_for_webhook_auth(admin, pid, basic=False, secret=backend.key(pid))
    return {"id": pid, "ml": ml["id"], "tasks": admin.tasks(pid)}


def _view_tasks(admin, pid, view_id):
    """The tab's tasks in the tab's order, as Label Studio's Data Manager API serves them."""
    body = admin.req("GET", "/api/tasks/", params={"project": pid, "view": view_id, "page_size": 100,
                                                   "fields": "all"}).json()
    return body["tasks"]


def _review(backend, pid):
    return json.loads((backend.model_dir / "projects" / str(pid) / "review.json").read_text())


def test_a_cycle_lists_suspected_label_errors_in_a_tab(admin, backend, project):
    pid = project["id"]
    labeled = [t for t in project["tasks"]][:N_LABELED]
    wrong = set()
    for i, t in enumerate(labeled):
        y = label_from_name(t["data"]["image"])
        if i % WRONG_EVERY == 0:
            y, _ = (y + 1) % 10, wrong.add(t["id"])
        admin.annotate(t["id"], y)
    before = {t["id"]: t["annotations"] for t in admin.tasks(pid) if t["annotations"]}
    admin.start_training(project["ml"])
    s = backend.wait_cycle(pid, 1, timeout=400)
    le = s["label_errors"]
    assert le and le["labeled"] == N_LABELED and le["listed"] == le["listed_now"] > 0, le
    cycle_dir = backend.model_dir / "projects" / str(pid) / "cycles" / "0001"
    flags = json.loads((cycle_dir / "label_errors.json").read_text())["flags"]
    st = _review(backend, pid)
    view = st["view"]
    tasks = _view_tasks(admin, pid, view)
    ids = [t["id"] for t in tasks]
    # the tab: exactly the flagged tasks, labeled ones only, most suspect first, with the backend's score
    assert set(ids) == {f["task"] for f in flags} == {int(t) for t in st["listed"]}
    scores = [t["data"][review.KEY_SCORE] for t in tasks]
    assert scores == sorted(scores, reverse=True) and all(0 < x <= 1 for x in scores)
    by_task = {f["task"]: f for f in flags}
    assert all(t["data"][review.KEY_SUGGESTED] == by_task[t["id"]]["suggested"] for t in tasks)
    assert all(t["data"][review.KEY_LABEL] == by_task[t["id"]]["label"] for t in tasks)
    # the label shown is the task's annotation, and the suggestion differs from it
    current = {t["id"]: t["annotations"][0]["result"][0]["value"]["choices"][0] for t in tasks}
    assert all(current[t["id"]] == t["data"][review.KEY_LABEL] != t["data"][review.KEY_SUGGESTED] for t in tasks)
    assert all(t["total_annotations"] > 0 for t in tasks)
    caught = wrong & set(ids)
    assert len(caught) >= len(wrong) // 2, (sorted(wrong), ids)  # the engine's signal, on real digits
    # no annotation changed, and the unlabeled queue still follows the backend's ranking
    after = {t["id"]: t["annotations"] for t in admin.tasks(pid) if t["annotations"]}
    assert {k: [a["result"] for a in v] for k, v in after.items()} == {k: [a["result"] for a in v] for k, v in before.items()}
    preds = json.loads((cycle_dir / "predictions.json").read_text())["tasks"]
    first = min(preds, key=lambda t: preds[t]["rank"])
    assert admin.next_task(pid)["id"] == int(first)
    views = admin.req("GET", "/api/dm/views/", params={"project": pid}).json()
    assert [v["data"]["title"] for v in views if v["id"] == view] == [review.VIEW_TITLE]
    STATE.update(view=view, ids=ids, wrong=wrong)


def test_the_tab_in_the_label_studio_ui(label_studio, project, browser, tmp_path):
    """Log in as a reviewer would, open the project's Data Manager on the tab, look at it."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    pid, view, ids = project["id"], STATE["view"], STATE["ids"]
    browser.get(f"{label_studio.url}/user/login/")
    browser.find_element(By.NAME, "email").send_keys(label_studio.username)
    browser.find_element(By.NAME, "password").send_keys(label_studio.password)
    browser.find_element(By.CSS_SELECTOR, "button[type=submit], input[type=submit]").click()
    WebDriverWait(browser, 60).until(lambda d: "/user/login" not in d.current_url)
    browser.get(f"{label_studio.url}/projects/{pid}/data?tab={view}")
    rows_js = ("return Array.from(document.querySelectorAll('[class*=\"table__row\"]'))"
               ".filter(r => !String(r.className).includes('header'))"
               ".map(r => r.innerText.split('\\n').map(s => s.trim()).filter(Boolean))")

    def rows(d):
        r = d.execute_script(rows_js)
        return r if r and len(r) >= len(ids) else False

    try:
        got = WebDriverWait(browser, 90).until(rows)
        try:  # thumbnails load lazily: give them a moment before the screenshot
            WebDriverWait(browser, 15).until(lambda d: d.execute_script(
                "const im = Array.from(document.images).filter(i => i.closest('[class*=\"table__row\"]'));"
                "return im.length >= Math.min(8, arguments[0]) && im.every(i => i.complete && i.naturalWidth > 0);",
                len(ids)))
        except Exception:
            pass
    finally:
        OUT.mkdir(parents=True, exist_ok=True)
        browser.save_screenshot(str(tmp_path / "review-tab.png"))
        shutil.copy(tmp_path / "review-tab.png", OUT / "review-tab.png")
        (OUT / "review-tab.html").write_text(browser.page_source)
    text = browser.find_element(By.TAG_NAME, "body").text
    assert review.VIEW_TITLE in text
    assert review.KEY_SCORE in text and review.KEY_LABEL in text and review.KEY_SUGGESTED in text  # the columns
    shown = [int(r[0]) for r in got if r and r[0].isdigit()]
    assert shown[:len(ids)] == ids, (shown, ids)  # the tab's rows, most suspect first


def test_corrected_and_confirmed_tasks_leave_the_list_and_stay_off(admin, backend, project, label_studio):
    pid, view = project["id"], STATE["view"]
    ids = STATE["ids"]
    tasks = {t["id"]: t for t in admin.tasks(pid)}
    corrected, confirmed = ids[0], ids[-1]
    # the reviewer corrects the most suspect one to the model's suggestion ...
    ann = tasks[corrected]["annotations"][0]
    sug = _review(backend, pid)["listed"][str(corrected)]["suggested"]
    admin.req("PATCH", f"/api/annotations/{ann['id']}/", json={"result": [
        {**ann["result"][0], "value": {"choices": [sug]}}]})
    # ... and re-submits another unchanged: "it is right as it is"
    ann2 = tasks[confirmed]["annotations"][0]
    admin.req("PATCH", f"/api/annotations/{ann2['id']}/", json={"result": ann2["result"]})
    deadline = time.time() + 30
    while time.time() < deadline:
        left = [t["id"] for t in _view_tasks(admin, pid, view)]
        if corrected not in left and confirmed not in left:
            break
        time.sleep(0.5)
    assert corrected not in left and confirmed not in left, (left, _tail(backend.log_path))
    reviewed = _review(backend, pid)["reviewed"]
    assert {str(corrected), str(confirmed)} <= set(reviewed)
    # their annotations are what the reviewer left, nothing else changed them
    tasks = {t["id"]: t for t in admin.tasks(pid)}
    assert tasks[corrected]["annotations"][0]["result"][0]["value"]["choices"] == [sug]
    assert tasks[confirmed]["annotations"][0]["result"] == ann2["result"]
    # the next cycle: neither comes back (reviewed at their current label)
    n = backend.status(pid)["last_completed"]
    admin.start_training(project["ml"])
    backend.wait_cycle(pid, n + 1, timeout=400)
    left = {t["id"] for t in _view_tasks(admin, pid, view)}
    assert corrected not in left and confirmed not in left
    views = [v for v in admin.req("GET", "/api/dm/views/", params={"project": pid}).json()
             if v["data"].get("title") == review.VIEW_TITLE]
    assert [v["id"] for v in views] == [view]  # one tab, kept current
