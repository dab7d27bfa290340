"""Issue 13 against the real Label Studio 1.23.2: the task mirror's delta read sees every kind of
change Label Studio makes, and a cycle that writes only the head of the order keeps "Label All
Tasks" in NCAL-R order while ranked tasks remain, with a pre-annotation for every task opened."""

from __future__ import annotations

import time

import pytest

from ncalr_backend.service.demo import digit_pngs, label_from_name
from ncalr_backend.service.labelstudio import LabelStudioClient
from ncalr_backend.service import mirror as mirror_mod
from ncalr_backend.service.mirror import TaskMirror, trim_task
from ncalr_backend.service.store import ProjectStore, read_json

from .conftest import BASIC, Backend, wait_for_webhook_auth

pytestmark = pytest.mark.integration
SHORT_OVERLAP_S = 5.0  # the mirror's overlap in these tests (60 s in the product): what they check is
#                        that a delta sees every change, not how far back it looks, and CI waits it out


def _view(tasks):
    """What the snapshot uses of each task, comparable across reads."""
    out = {}
    for t in tasks:
        tt = trim_task(t)
        out[tt["id"]] = (tt["data"].get("image"), sorted((a["id"], bool(a.get("was_cancelled")),
                                                          str(a.get("result"))) for a in tt["annotations"]))
    return out


def test_the_mirror_delta_sees_annotations_created_updated_deleted_skipped_and_tasks_added_and_removed(
        admin, label_studio, tmp_path, monkeypatch):
    monkeypatch.setattr(mirror_mod, "OVERLAP_S", SHORT_OVERLAP_S)
    pid = admin.create_project("mirror (integration)")
    files = digit_pngs(40, seed=3)
    assert admin.upload_files(pid, [(n, b) for n, b, _ in files]) == 40
    client = LabelStudioClient(label_studio.url, label_studio.token)
    time.sleep(SHORT_OVERLAP_S + 1.5)  # the delta re-reads what changed within OVERLAP_S of the last sync's start
    mirror = TaskMirror(tmp_path)
    rep = mirror.sync(client, pid, admin.project(pid)["task_number"], page_size=7)  # 6 cursor pages
    assert rep.mode == "full" and rep.tasks == 40
    tasks = admin.tasks(pid)
    assert _view(mirror.tasks()) == _view(tasks)

    a = [admin.annotate(t["id"], label_from_name(t["data"]["image"])) for t in tasks[:4]]
    admin.req("PATCH", f"/api/annotations/{a[1]['id']}/", json={"result": [
        {"from_name": "digit", "to_name": "image", "type": "choices", "value": {"choices": ["0"]}}]})
    admin.delete_annotation(a[2]["id"])
    admin.annotate(tasks[10]["id"], "1", cancelled=True)  # a skip
    admin.req("DELETE", f"/api/tasks/{tasks[20]['id']}/")
    assert admin.upload_files(pid, [(n, b) for n, b, _ in digit_pngs(2, seed=4)]) == 2
    client.import_prediction_chunk(pid, [{"task": tasks[30]["id"], "result": [], "score": 0.5,
                                          "model_version": "other"}])  # bulk: no updated_at move, no change
    rep = mirror.sync(client, pid, admin.project(pid)["task_number"], page_size=7)
    assert rep.mode == "delta" and rep.tasks == 41, rep
    assert rep.changed <= 10  # the changed tasks (and the overlap window), not the project
    assert _view(mirror.tasks()) == _view(admin.tasks(pid))


@pytest.fixture(scope="module")
def head_backend(label_studio, tmp_path_factory):
    """A backend that writes only the first 8 ranks, and never starts a cycle by itself."""
    d = tmp_path_factory.mktemp("head-backend")
    b = Backend(label_studio, d / "model_dir", d / "backend.log", WRITE_BACK_TOP=8, TRAIN_TRIGGER_MIN=100000).start()
    yield b
    b.stop()


def _first_cycle(admin, backend, name: str, seed: int):
    """60 digit tasks, 12 labeled, one cycle that writes ranks 0-7 of the 48 it ranks and goes live:
    (project id, ML backend, version, its predictions.json, {task: rank})."""
    pid = admin.create_project(name)
    files = digit_pngs(60, seed=seed)
    assert admin.upload_files(pid, [(n, b) for n, b, _ in files]) == 60
    ml = admin.connect_ml(pid, backend.url, basic_auth=BASIC)
    wait_for_webhook_auth(admin, pid)
    for t in admin.tasks(pid)[:12]:
        admin.annotate(t["id"], label_from_name(t["data"]["image"]))
    admin.start_training(ml["id"])
    backend.wait_cycle(pid, 1)
    latest = ProjectStore(backend.model_dir, pid).latest()
    version = latest["model_version"]
    preds = read_json(latest["path"] / "predictions.json")
    assert preds["written_ranks"] == 8 and len(preds["tasks"]) == 48
    assert admin.req("GET", f"/api/projects/{pid}/model-versions/").json().get(version) == 8
    assert admin.project(pid)["model_version"] == version
    return pid, ml, version, preds, {int(t): e["rank"] for t, e in preds["tasks"].items()}


def test_label_all_tasks_follows_the_written_head_then_predict_gives_every_other_task_its_place(
        admin, head_backend):
    pid, _, version, preds, rank = _first_cycle(admin, head_backend, "head of the order (integration)", seed=5)

    served = []
    for _ in range(8):  # "Label All Tasks" serves the written head in rank order ...
        t = admin.next_task(pid)
        served.append(t["id"])
        admin.annotate(t["id"], label_from_name(t["data"]["image"]))
    assert [rank[i] for i in served] == list(range(8))

    # ... and a task outside the head, opened from the Data Manager, gets its pre-annotation from
    # /predict: Label Studio asks for a task with no prediction and stores the answer
    outside = next(i for i, r in sorted(rank.items(), key=lambda kv: kv[1]) if r >= 20)
    opened = admin.req("GET", f"/api/tasks/{outside}/").json()
    mine = [p for p in admin.req("GET", "/api/predictions/", params={"task": outside}).json()
            if p["model_version"] == version]
    assert len(mine) == 1, opened.get("predictions")
    assert mine[0]["result"] and mine[0]["result"][0]["value"]["choices"] == [preds["tasks"][str(outside)]["label"]]
    assert mine[0]["score"] == pytest.approx(rank[outside] / 48, abs=1e-6)  # its place in the NCAL-R order


def test_after_a_failed_cycle_the_written_head_is_topped_up_and_label_all_tasks_keeps_the_order(
        admin, head_backend):
    """Label Studio serves at random once every task with a prediction of the project's version is
    labeled; a failed cycle (here training diverges twice) leaves the previous version live, and the
    backend writes its next ranks so that "Label All Tasks" goes on in NCAL-R order."""
    pid, ml, version, preds, rank = _first_cycle(admin, head_backend, "head refill (integration)", seed=6)
    for _ in range(8):  # the annotators label the whole written head
        t = admin.next_task(pid)
        assert rank[t["id"]] < 8
        admin.annotate(t["id"], label_from_name(t["data"]["image"]))

    head_backend.stop()
    head_backend.env["NCALR_LR"] = "1e7"  # every cycle from now on diverges (twice), and fails cleanly
    try:
        head_backend.start()
        admin.start_training(ml["id"])
        s = head_backend.wait(pid, lambda s: (s.get("last_failed") or 0) >= 2 and not s["scheduler"]["running"]
                              and (s.get("head") or {}).get("written", 0) > 8, 180, "cycle 2 to fail and refill")
        assert "diverged twice" in s["last_error"], s["last_error"]
        assert s["model_version"] == version and admin.project(pid)["model_version"] == version
        assert s["head"] == {**s["head"], "version": version, "written": 16, "unlabeled": 8, "size": 8,
                             "refilled": 8}
        assert admin.req("GET", f"/api/projects/{pid}/model-versions/").json().get(version) == 16
        served = []
        for _ in range(8):  # "Label All Tasks" goes on with ranks 8..15, each with its pre-annotation
            t = admin.next_task(pid)
            served.append(t["id"])
            mine = [p for p in admin.req("GET", "/api/predictions/", params={"task": t["id"]}).json()
                    if p["model_version"] == version]
            assert len(mine) == 1 and mine[0]["result"][0]["value"]["choices"] == [preds["tasks"][str(t["id"])]["label"]]
            admin.annotate(t["id"], label_from_name(t["data"]["image"]))
        assert [rank[i] for i in served] == list(range(8, 16))
    finally:
        head_backend.stop()
        head_backend.env.pop("NCALR_LR")
        head_backend.start()


def test_the_mirror_sees_annotations_that_remove_duplicated_tasks_moved(admin, label_studio, tmp_path, monkeypatch):
    """Found by review: Label Studio's "Remove Duplicated Tasks" moves the duplicates' annotations
    onto the task it keeps by a bulk update (the kept task's updated_at does not move) and deletes
    them. The mirror reads the duplicates of a deleted task again, so it sees the moved annotation."""
    monkeypatch.setattr(mirror_mod, "OVERLAP_S", SHORT_OVERLAP_S)
    pid = admin.create_project("mirror duplicates (integration)")
    same = {"image": "/data/upload/dup/one.png"}
    assert admin.import_tasks(pid, [same, same, {"image": "/data/upload/dup/other.png"}]) == 3
    a, b, other = sorted(admin.tasks(pid), key=lambda t: t["id"])
    client = LabelStudioClient(label_studio.url, label_studio.token)
    admin.annotate(a["id"], "1")
    time.sleep(1.1)
    admin.annotate(b["id"], "7")  # the newer annotation, on the duplicate that will be removed
    time.sleep(SHORT_OVERLAP_S + 1.5)  # both out of the next delta's overlap window
    mirror = TaskMirror(tmp_path)
    mirror.sync(client, pid, admin.project(pid)["task_number"], page_size=7)
    assert _view(mirror.tasks()) == _view(admin.tasks(pid))
    admin.req("POST", "/api/dm/actions", params={"id": "remove_duplicates", "project": pid},
              json={"selectedItems": {"all": True, "excluded": []}})
    now = admin.tasks(pid)
    assert sorted(t["id"] for t in now) == [a["id"], other["id"]]  # b went; its annotation moved to a
    assert len(next(t for t in now if t["id"] == a["id"])["annotations"]) == 2
    rep = mirror.sync(client, pid, admin.project(pid)["task_number"], page_size=7)
    assert rep.tasks == 2, rep
    assert _view(mirror.tasks()) == _view(now)
