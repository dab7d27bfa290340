"""The admin dashboard in a real browser: headless Chromium (Debian's ``chromium`` driven by
Selenium through ``/usr/bin/chromedriver``) against the real backend under gunicorn and a real
Label Studio 1.23.2, during and after cycles.

Screenshots go to the pytest tmp dir and to ``test-output/dashboard/`` (ignored by git).
"""

from __future__ import annotations

import base64
import os
import shutil
import time
from pathlib import Path

import pytest
import requests

from ncalr_backend.service.demo import digit_pngs, label_from_name
from ncalr_backend.service.progress import STAGES

from .conftest import BASIC, TRIGGER_MIN, Backend, _tail, wait_for_webhook_auth

pytestmark = pytest.mark.integration

N_IMAGES = 200
OUT = Path(os.environ.get("NCALR_TEST_OUTPUT", Path(__file__).resolve().parents[2] / "test-output")) / "dashboard"
STATE = {}


@pytest.fixture(scope="module")
def shots(tmp_path_factory):
    d = tmp_path_factory.mktemp("dashboard-screenshots")
    OUT.mkdir(parents=True, exist_ok=True)

    def save(driver, name):
        driver.save_screenshot(str(d / f"{name}.png"))
        shutil.copy(d / f"{name}.png", OUT / f"{name}.png")
        return d / f"{name}.png"
    return save


@pytest.fixture(scope="module")
def dash_backend(label_studio, tmp_path_factory):
    d = tmp_path_factory.mktemp("dashboard-backend")
    # enough epochs that a cycle is observable for several seconds; one torch thread (shared machine)
    b = Backend(label_studio, d / "model_dir", d / "backend.log", NCALR_THREADS=1, NCALR_MAX_EPOCHS=20,
                NCALR_TRAIN_ACC_THRESHOLD=0.95, NCALR_TPT_WINDOW=3).start()
    yield b
    b.stop()


@pytest.fixture(scope="module")
def project(admin, dash_backend):
    pid = admin.create_project("digits (dashboard)")
    assert admin.upload_files(pid, [(n, data) for n, data, _ in digit_pngs(N_IMAGES, seed=5)]) == N_IMAGES
    ml = admin.connect_ml(pid, dash_backend.url, basic_auth=BASIC)
    assert ml["state"] == "CO", ml
    wait_for_webhook_auth(admin, pid)
    return {"id": pid, "tasks": admin.tasks(pid)}


def _with_auth(driver):
    token = base64.b64encode(f"{BASIC[0]}:{BASIC[1]}".encode()).decode()
    driver.execute_cdp_cmd("Network.enable", {})
    driver.execute_cdp_cmd("Network.setExtraHTTPHeaders", {"headers": {"Authorization": f"Basic {token}"}})


def _progress(driver, pid):
    return driver.execute_script(
        "var el = document.querySelector('div.progress[data-project=\"' + arguments[0] + '\"]');"
        "if (!el) return null;"
        "var cur = el.querySelector('tr.stage.current .count');"
        "return {status: el.getAttribute('data-status'), stage: el.getAttribute('data-stage'),"
        " cycle: el.getAttribute('data-cycle'), count: cur ? cur.textContent : null,"
        " text: el.textContent};", str(pid))


def _label_next(admin, pid, n):
    for _ in range(n):
        task = admin.next_task(pid)
        admin.annotate(task["id"], label_from_name(task["data"]["image"]))


# ------------------------------------------------------------------------------ auth
def test_dashboard_needs_basic_auth(dash_backend, browser, shots):
    for path in ("/", "/dashboard/progress?project=1", "/dashboard/thumb/1/1.png"):
        r = requests.get(f"{dash_backend.url}{path}", timeout=10)
        assert r.status_code == 401 and r.headers["WWW-Authenticate"].startswith("Basic"), path
        assert requests.get(f"{dash_backend.url}{path}", auth=(BASIC[0], "wrong"), timeout=10).status_code == 401
    browser.get(dash_backend.url + "/")  # no credentials: a 401 (Chromium waits at its login prompt)
    assert "ncalr-backend" not in browser.page_source and browser.title != "ncalr-backend dashboard"
    _with_auth(browser)
    browser.get(dash_backend.url + "/")
    assert browser.title == "ncalr-backend dashboard"
    assert dash_backend.http.get(f"{dash_backend.url}/health").json()["status"] == "UP"  # LS's check: JSON


# ------------------------------------------------------------------------------ during a cycle
def test_the_stage_advances_during_a_cycle(admin, dash_backend, project, browser, shots):
    pid, tasks = project["id"], project["tasks"]
    for t in tasks[:TRIGGER_MIN - 1]:
        admin.annotate(t["id"], label_from_name(t["data"]["image"]))
    browser.get(dash_backend.url + "/")
    p = _progress(browser, pid)
    assert p and p["status"] == "none" and "No cycle yet" in p["text"], p
    assert f"{TRIGGER_MIN - 1} new annotations" in p["text"]
    t = tasks[TRIGGER_MIN - 1]
    admin.annotate(t["id"], label_from_name(t["data"]["image"]))  # the webhook triggers cycle 1
    # from here on the page refreshes itself (every 2 s); no reload by the test
    seen, shot_taken, deadline = [], False, time.time() + 240
    while time.time() < deadline:
        p = _progress(browser, pid)
        if p and p["status"] == "running":
            if not seen or seen[-1][0] != p["stage"]:
                seen.append((p["stage"], p["count"]))
            if p["stage"] == "train" and not shot_taken and p["count"] and not p["count"].startswith("0/"):
                shots(browser, "01-during-cycle-train")
                shot_taken = True
        if p is None or (seen and p["status"] == "completed"):
            break  # the page reloads itself when the cycle ends
        time.sleep(0.25)
    assert len(seen) >= 2, (seen, _tail(dash_backend.log_path))
    order = [STAGES.index(s) for s, _ in seen]
    assert order == sorted(order), seen  # stages only move forward
    assert any(s == "train" for s, _ in seen), seen
    st = dash_backend.wait_cycle(pid, 1)
    assert st["progress"]["status"] == "completed"
    assert [d["stage"] for d in st["progress"]["done"]] == list(STAGES)
    STATE["seen"] = seen


def test_progress_is_in_the_log_one_line_per_stage(dash_backend):
    log = Path(dash_backend.log_path).read_text(errors="replace")
    for words in ("fetch tasks done", "fetch images done", "train done", "score done", "write back done",
                  "switch done", "commit done"):
        assert words in log, words
    assert f"{N_IMAGES}/{N_IMAGES} tasks" in log and "epochs, terminal phase" in log and "predictions" in log


# ------------------------------------------------------------------------------ after cycles
def test_after_cycles_history_plots_and_next_tasks(admin, dash_backend, project, browser, shots):
    pid = project["id"]
    for cycle in (2, 3):  # annotators follow the queue; each TRIGGER_MIN labels trigger the next cycle
        _label_next(admin, pid, TRIGGER_MIN)
        dash_backend.wait_cycle(pid, cycle)
    browser.get(dash_backend.url + "/")
    sec = f"section#project-{pid}"
    rows = browser.execute_script(
        f"return [...document.querySelectorAll('{sec} table.history tr.cycle')]"
        ".map(r => [r.getAttribute('data-cycle'), r.className, r.querySelector('.status').textContent]);")
    assert sorted(int(c) for c, _, _ in rows) == [1, 2, 3], rows
    assert all("ok" in cls and status == "completed" for _, cls, status in rows), rows
    plots = browser.execute_script(
        f"return [...document.querySelectorAll('{sec} .plots svg.plot')].map(s => ({{"
        "cls: s.getAttribute('class'), marks: s.querySelectorAll('polyline.series, circle.pt, rect.bar').length,"
        "w: s.getBoundingClientRect().width, h: s.getBoundingClientRect().height}));")
    by = {next(c for c in p["cls"].split() if c not in ("plot", "hist", "nc")): p for p in plots}
    for name in ("learning-curve", "hist-cmap", "hist-ff", "hist-score", "nc-acc", "nc-nc1", "nc-nc2", "nc-nc3",
                 "nc-nc4", "seli-etf"):
        assert name in by, (name, list(by))
        assert "empty" not in by[name]["cls"] and by[name]["marks"] > 0, by[name]
        assert by[name]["w"] > 100 and by[name]["h"] > 100, by[name]
    # the learning curve has one estimate per cycle that has a successor (cycles 1 and 2)
    assert by["learning-curve"]["marks"] >= 2
    est = browser.execute_script(
        f"return [...document.querySelectorAll('{sec} table.history tr.cycle')].map(r => r.children[8].textContent);")
    assert sum("%" in x for x in est) == 2, est
    thumbs = browser.execute_script(
        f"var imgs = [...document.querySelectorAll('{sec} li.next-task img.thumb')];"
        "return imgs.map(i => [i.complete, i.naturalWidth, i.naturalHeight]);")
    deadline = time.time() + 15
    while not (thumbs and all(c and w > 0 for c, w, _ in thumbs)) and time.time() < deadline:
        time.sleep(0.5)
        thumbs = browser.execute_script(
            f"return [...document.querySelectorAll('{sec} li.next-task img.thumb')]"
            ".map(i => [i.complete, i.naturalWidth, i.naturalHeight]);")
    assert len(thumbs) >= 5 and all(c and w == 64 and h == 64 for c, w, h in thumbs), thumbs
    why = browser.execute_script(f"return [...document.querySelectorAll('{sec} li.next-task .why')]"
                                 ".map(x => x.textContent);")
    assert all("fused" in w and "CMAP" in w and "FF" in w for w in why), why
    # the first next task is what Label Studio serves next
    first = browser.execute_script(f"return document.querySelector('{sec} li.next-task').getAttribute('data-task');")
    assert int(first) == admin.next_task(pid)["id"]
    browser.set_window_size(1400, browser.execute_script("return document.body.scrollHeight") + 40)
    shots(browser, "02-after-3-cycles")
    browser.set_window_size(1400, 1000)


def test_a_failed_cycle_shows_its_reason(admin, dash_backend, project, browser, shots):
    """A cycle that fails (here: Label Studio's project config changed to one the backend refuses)
    shows as failed with its reason in the progress section and the history."""
    pid = project["id"]
    old = admin.project(pid)["label_config"]
    bad = old.replace("</View>", '<Image name="image2" value="$image"/></View>')  # two <Image>s: refused
    r = admin.req("PATCH", f"/api/projects/{pid}/", ok=None, json={"label_config": bad})
    if r.status_code not in (200, 201):
        pytest.skip(f"Label Studio refused the config change: {r.status_code}")
    try:
        dash_backend.http.post(f"{dash_backend.url}/webhook", json={"action": "START_TRAINING",
                                                                    "project": {"id": pid}})
        dash_backend.wait(pid, lambda s: (s.get("last_failed") or 0) >= 4 and not s["scheduler"]["running"], 120,
                          "cycle 4 to fail")
    finally:
        admin.req("PATCH", f"/api/projects/{pid}/", ok=None, json={"label_config": old})
    browser.get(dash_backend.url + "/")
    p = _progress(browser, pid)
    assert p["status"] == "failed" and "failed" in p["text"] and "Image" in p["text"], p
    row = browser.execute_script(
        f"var r = document.querySelector('section#project-{pid} table.history tr.cycle[data-cycle=\"4\"]');"
        "return r ? [r.className, r.querySelector('.status').textContent] : null;")
    assert row and "failed" in row[0] and len(row[1]) > len("failed: "), row
    shots(browser, "03-failed-cycle")
