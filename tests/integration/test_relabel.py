"""RELABEL_SHARE against the real Label Studio 1.23.2: the most suspect labeled tasks go back into
the queue for another annotator (one more annotation needed, served before every ranked task, never
to their own annotator), when the second annotation disagrees the model breaks the tie, and the
task's overlap then goes back to 1."""

from __future__ import annotations

import json

import pytest

from ncalr_backend.service.demo import digit_pngs, label_from_name

from .conftest import Backend, wait_for_webhook_auth

pytestmark = pytest.mark.integration

N_IMAGES = 100
N_LABELED = 24


@pytest.fixture(scope="module")
def backend(label_studio, tmp_path_factory):
    d = tmp_path_factory.mktemp("backend-relabel")
    # a trigger of 8 annotations and a share of 0.5: at most 4 tasks wait for re-annotation at a time
    b = Backend(label_studio, d / "model_dir", d / "backend.log", BASIC_AUTH_USER="", BASIC_AUTH_PASS="",
                IMAGE_SIZE=16, NCALR_WIDTH=16, NCALR_MAX_EPOCHS=30, NCALR_TPT_WINDOW=5, NCALR_BATCH_SIZE=16,
                NCALR_TRAIN_ACC_THRESHOLD=0.99, NCALR_THREADS=1, TRAIN_TRIGGER_MIN=8, TRAIN_TRIGGER_FRACTION=0.0,
                RELABEL_SHARE=0.5, NCALR_LR=0.05, NCALR_WARM_START="on").start()  # as written for (by width: 0.025, from scratch)
    b.http.auth = None
    yield b
    b.stop()


def test_suspect_labels_go_back_to_the_queue_for_another_annotator(admin, backend):
    pid = admin.create_project("digits (relabel)")
    assert admin.upload_files(pid, [(n, d) for n, d, _ in digit_pngs(N_IMAGES, seed=13)]) == N_IMAGES
    ml = admin.connect_ml(pid, backend.url)
    wait_for_webhook_auth(admin, pid, basic=False, secret=backend.key(pid))
    tasks = admin.tasks(pid)
    for i, t in enumerate(tasks[:N_LABELED]):
        y = label_from_name(t["data"]["image"])
        admin.annotate(t["id"], (y + 1) % 10 if i % 4 == 0 else y)
    # the annotations trigger cycles on the way (every 8; those during a cycle fold into one)
    backend.wait(pid, lambda s: not s["scheduler"]["running"] and not s["scheduler"]["waiting"]
                 and (s.get("last_completed") or 0) >= 1 and s["webhooks_seen"].get("ANNOTATION_CREATED") == N_LABELED,
                 300, "the annotation-triggered cycles")
    n = backend.status(pid)["last_completed"]
    admin.start_training(ml["id"])
    s = backend.wait_cycle(pid, n + 1, timeout=400)
    cycle_dir = backend.model_dir / "projects" / str(pid) / "cycles" / f"{n + 1:04d}"
    rep = json.loads((cycle_dir / "report.json").read_text())
    sent = set(rep["relabel"]["new"]) | set(rep["relabel"]["waiting"])
    assert 1 <= len(sent) <= 4, rep["relabel"]
    by_id = {t["id"]: t for t in admin.tasks(pid)}
    ranked = json.loads((cycle_dir / "predictions.json").read_text())["tasks"]
    min_ranked = min(e["score"] for e in ranked.values())
    for t in sent:  # one more annotation needed: unlabeled again, in Label Studio's own fields
        assert by_id[t]["is_labeled"] is False and by_id[t]["overlap"] == by_id[t]["total_annotations"] + 1
        preds = [p for p in admin.req("GET", "/api/predictions/", params={"task": t}).json()
                 if p["model_version"] == s["model_version"]]
        # Label Studio imported it with an empty result: the queue place, and no suggestion to anchor on
        assert len(preds) == 1 and preds[0]["score"] < min_ranked and preds[0]["result"] == []
    # the dashboard's "Next in the queue" leads with them as Label Studio serves them, thumbnails too
    dash = json.loads((cycle_dir / "dashboard.json").read_text())["next_tasks"]
    lead = [t["task"] for t in dash if t.get("relabel")]
    assert set(lead) == sent and [t["task"] for t in dash[:len(lead)]] == lead, dash[:6]
    page = backend.http.get(f"{backend.url}/", timeout=30)
    assert page.status_code == 200 and page.text.count("second opinion") == len(sent), page.text[:500]
    thumb = backend.http.get(f"{backend.url}/dashboard/thumb/{pid}/{lead[0]}.png", timeout=30)
    assert thumb.status_code == 200 and thumb.content[:8] == b"\x89PNG\r\n\x1a\n"
    # Label Studio never serves a task to its own annotator again: this admin labeled them all, so
    # its next task is the backend's first ranked pool task; another annotator would get these first
    first = min(ranked, key=lambda k: ranked[k]["rank"])
    nxt = admin.next_task(pid)
    assert nxt["id"] == int(first) and nxt["id"] not in sent
    # the second annotation arrives and disagrees with the first: the model's favourite wins
    t = sorted(sent)[0]
    first_label = by_id[t]["annotations"][0]["result"][0]["value"]["choices"][0]
    rel = json.loads((backend.model_dir / "projects" / str(pid) / "review.json").read_text())["relabel"][str(t)]
    other = max((c for c in rel["probs"] if c != first_label), key=lambda c: rel["probs"][c])
    second = admin.create_user("second.annotator@example.com")
    admin.annotate(t, int(other), completed_by=second)  # another annotator: Label Studio counts distinct ones
    assert next(x for x in admin.tasks(pid) if x["id"] == t)["is_labeled"] is True  # 2 annotators, overlap 2
    m = backend.status(pid)["last_completed"]
    admin.start_training(ml["id"])
    backend.wait_cycle(pid, m + 1, timeout=400)
    latest = backend.model_dir / "projects" / str(pid) / "cycles" / f"{m + 1:04d}"
    got = json.loads((latest / "tasks.json").read_text())
    label = dict(zip(got["labeled"], got["labels"]))[t]
    want = max((first_label, other), key=lambda c: rel["probs"][c])
    assert str(label) == want, (label, first_label, other, rel["probs"])
    # answered: Label Studio's overlap goes back to 1, and the task stays labeled with both annotations
    assert t in json.loads((latest / "report.json").read_text())["relabel"]["answered"]
    task = next(x for x in admin.tasks(pid) if x["id"] == t)
    assert (task["overlap"], task["is_labeled"], task["total_annotations"]) == (1, True, 2), task
