"""Suspected label errors (service/review.py) on the in-process fake client: entries and scores,
the review tab, taking reviewed tasks off the list, and keeping them off until their label changes."""

from __future__ import annotations

import json

import numpy as np

from ncalr_backend.service import review
from ncalr_backend.service.cycle import run_project_cycle
from ncalr_backend.service.store import ProjectStore
from tests.service.test_cycle import ENGINE, FakeLS, settings  # noqa: F401  (the fixture)

WRONG = {3, 6}  # tasks labeled against their image (odd ids are dark = "a", even light = "b")
# one thread: which labels get flagged must not depend on the load average (threads=0 follows it)
# a small learning rate: at 0.05 this tiny set (16 flat images, 2 batches per epoch) trained chaotically, and
# whether the two wrong labels stood out depended on the CPU's floating-point path (failed on an AVX-512 Xeon)
TRAIN = ENGINE.replace(max_epochs=20, tpt_window=4, train_acc_threshold=0.99, seed=1, threads=1, lr=0.003)


def truthful_except(wrong):
    return lambda i: [("b" if i % 2 else "a") if i in wrong else ("a" if i % 2 else "b")]


def _listed(ls):
    return {t["id"]: t["data"][review.KEY_SCORE] for t in ls.tasks if t["data"].get(review.KEY_SCORE)}


def test_wrong_labels_are_listed_most_suspect_first_and_reviewers_take_them_off(settings):
    ls = FakeLS(n=40, n_labeled=16, choices=truthful_except(WRONG))
    rep = run_project_cycle(settings, 1, "t", engine_config=TRAIN, client=ls)
    st = ProjectStore(settings.model_dir, 1)
    cycle_dir = st.latest()["path"]
    out = json.loads((cycle_dir / "label_errors.json").read_text())
    entries = out["entries"]
    # one entry per labeled task, most suspect first, scores in [0, 1] by their definition
    assert sorted(e["task"] for e in entries) == list(range(1, 17))
    assert [e["score"] for e in entries] == sorted((e["score"] for e in entries), reverse=True)
    top2 = {e["task"] for e in entries[:2]}
    assert top2 == WRONG, entries[:4]
    for e in entries[:2]:
        assert e["suggested"] != e["label"] and e["flagged"] and e["score"] > 0.5
    assert rep["label_errors"]["flagged"] == len(out["flags"]) >= 2
    # Label Studio: the flagged tasks carry the keys, nothing else does; one tab, as specified
    listed = _listed(ls)
    assert set(listed) == {e["task"] for e in out["flags"]} and WRONG <= set(listed)
    assert all(t["data"]["image"] for t in ls.tasks)  # the task's own data is kept
    (view,) = ls.views.values()
    assert view["data"]["title"] == review.VIEW_TITLE
    assert view["data"]["ordering"] == [f"-tasks:data.{review.KEY_SCORE}"]
    assert view["data"]["filters"]["items"][0]["operator"] == "greater"
    assert ls.patches[-1]["model_version"] == rep["model_version"]  # the unlabeled queue went on as always

    # a reviewer corrects task 3 and confirms task 6 as it is (re-submits the same choice)
    t3 = next(t for t in ls.tasks if t["id"] == 3)
    t3["annotations"][0]["result"][0]["value"]["choices"] = ["a"]
    t3["annotations"][0]["updated_at"] = "2025"
    assert sorted(review.clear(ls, st, 1, [3, 6, 7])) == [3, 6]  # 7 was never listed: nothing to do
    assert not ({3, 6} & set(_listed(ls)))
    reviewed = review.ReviewState(st).read()["reviewed"]
    assert set(reviewed) == {"3", "6"}

    # the next cycle: task 6 is still suspect to the model but was confirmed at this label: not listed
    run_project_cycle(settings, 1, "t2", engine_config=TRAIN, client=ls)
    flags = {e["task"] for e in json.loads((st.latest()["path"] / "label_errors.json").read_text())["flags"]}
    assert 3 not in _listed(ls) and 6 not in _listed(ls)  # reviewed at their current labels
    assert ProjectStore(settings.model_dir, 1).state()["review"]["suppressed_as_reviewed"] >= (1 if 6 in flags else 0)
    assert len(ls.views) == 1  # the same tab, kept

    # ... until its label changes: relabeled to "b" (still wrong), it may be listed again
    t6 = next(t for t in ls.tasks if t["id"] == 6)
    t6["annotations"][0]["id"] = 999  # another annotation wins now
    run_project_cycle(settings, 1, "t3", engine_config=TRAIN, client=ls)
    e6 = next(e for e in json.loads((st.latest()["path"] / "label_errors.json").read_text())["entries"]
              if e["task"] == 6)
    assert (6 in _listed(ls)) == e6["flagged"]


def test_entries_by_hand():
    from types import SimpleNamespace

    from ncalr_backend.service.labelconfig import parse_label_config
    from tests.service.test_cycle import CFG, MULTI_CFG
    snap = SimpleNamespace(cfg=parse_label_config(CFG), lab_ids=[10, 11], lab_labels=[0, 1],
                           lab_fingerprints=["1:0", "2:1"])
    rep = SimpleNamespace(prob_mean=np.array([[0.9, 0.1], [0.7, 0.3]]), suspicion=np.array([-1.0, 1.0]),
                          suggested=np.array([0, 0]), suspect_label=np.array([0, 1]), flagged=np.array([False, True]))
    e = review.label_error_entries(SimpleNamespace(label_report=rep), snap)
    assert [(x["task"], x["label"], x["suggested"], x["score"], x["flagged"]) for x in e] == [
        (11, "b", "a", 0.7, True), (10, "a", "a", 0.1, False)]
    ml = SimpleNamespace(cfg=parse_label_config(MULTI_CFG), lab_ids=[5], lab_labels=[[0, 2]], lab_fingerprints=["7:[0, 2]"])
    rep = SimpleNamespace(prob_mean=np.array([[0.45, 0.5, 0.05]]), suspicion=np.array([2.0]),
                          suggested=np.array([[True, True, False]]), suspect_label=np.array([2]),
                          flagged=np.array([True]))
    (x,) = review.label_error_entries(SimpleNamespace(label_report=rep), ml)
    # the suspect label "7" has p = 0.05 in a set of 2: score 1 - 2 x 0.05
    assert (x["label"], x["suggested"], x["suspect"], x["score"]) == (["0", "7"], ["0", "1"], "7", 0.9)


def test_relabel_share_sends_the_most_suspect_back_and_the_model_breaks_ties(settings):
    """RELABEL_SHARE=0.5 with a trigger of 4: two of the most suspect labeled tasks go back into the
    queue (one more annotation needed, served before every ranked task); when the second annotation
    disagrees, the label the model found more likely wins, whatever came last."""
    s = settings.__class__(**{**settings.__dict__, "relabel_share": 0.5, "train_trigger_min": 4})
    ls = FakeLS(n=40, n_labeled=16, choices=truthful_except(WRONG))
    rep = run_project_cycle(s, 1, "t", engine_config=TRAIN, client=ls)
    sent = rep["relabel"]["new"]
    assert len(sent) == 2 and set(sent) == WRONG  # the two most suspect: the wrong ones
    front = sorted((it for it in ls.imported if it["model_version"] == rep["model_version"]), key=lambda it: it["score"])
    assert {it["task"] for it in front[:2]} == set(sent)
    assert [it["score"] for it in front[:2]] == [0.0, round(1 / 26, 6)]  # 24 ranked + 2: i / 26 first
    assert all(0 <= it["score"] <= 1 for it in front)
    # each carries the model's suggestion (Label Studio refuses an empty result on import)
    assert all(it["result"][0]["value"]["choices"] for it in front[:2])
    assert sorted(it["score"] for it in front[2:]) == [round((r + 2) / 26, 6) for r in range(24)]
    for t in ls.tasks:
        if t["id"] in sent:
            assert (t["overlap"], t["is_labeled"]) == (2, False)
    rel = review.ReviewState(ProjectStore(s.model_dir, 1)).read()["relabel"]
    assert set(rel) == {str(t) for t in sent}
    # task 3 (dark: truly "a", labeled "b") gets a second annotation, also "b", newer: still "b".
    # task 6 (light: truly "b", labeled "a") gets "b": the model favours "b", so "b" wins.
    for tid, choice in ((3, "b"), (6, "b")):
        t = next(t for t in ls.tasks if t["id"] == tid)
        t["annotations"].append({"id": 500 + tid, "was_cancelled": False, "updated_at": "2030", "result": [
            {"from_name": "digit", "to_name": "image", "type": "choices", "value": {"choices": [choice]}}]})
    probs6 = rel["6"]["probs"]
    assert probs6["1"] > probs6["0"]  # the model's own view of task 6: "b"
    run_project_cycle(s, 1, "t2", engine_config=TRAIN, client=ls)
    tasks = json.loads((ProjectStore(s.model_dir, 1).latest()["path"] / "tasks.json").read_text())
    labels = dict(zip(tasks["labeled"], tasks["labels"]))
    assert labels[6] == 1 and labels[3] == 1
    # an annotation the model disagrees with does not win just by coming last
    t3 = next(t for t in ls.tasks if t["id"] == 3)
    t3["annotations"][-1]["result"][0]["value"]["choices"] = ["a"]
    t3["annotations"][0]["updated_at"] = "2031"  # the first ("b") is now the newest
    run_project_cycle(s, 1, "t3", engine_config=TRAIN, client=ls)
    tasks = json.loads((ProjectStore(s.model_dir, 1).latest()["path"] / "tasks.json").read_text())
    assert rel["3"]["probs"]["0"] > rel["3"]["probs"]["1"]  # the model saw task 3 as "a" (it is dark)
    assert dict(zip(tasks["labeled"], tasks["labels"]))[3] == 0  # "a" wins, though "b" is newer


def test_a_task_reviewed_while_a_cycle_ran_is_not_listed_again_with_its_old_label(settings):
    """Found by review: the cycle's entries carry the label it read at its snapshot; a reviewer who
    corrected the task meanwhile took it off the list, and the cycle's publish put it back with the
    old label. Reviews newer than the cycle's start now win until the next cycle."""
    import time

    ls = FakeLS(n=12, n_labeled=6)
    store = ProjectStore(settings.model_dir, 1)
    entry = {"task": 3, "flagged": True, "score": 0.9, "suggested": "b", "label": "a", "fingerprint": "103:0"}
    started = time.time()
    with review.ReviewState(store).locked() as st:  # the reviewer's correction, after the cycle began
        st["reviewed"]["3"], st["reviewed_at"]["3"] = "555:1", started + 1.0
    out = review.publish(ls, store, 1, [entry], since=started)
    assert out["listed"] == 0 and 3 not in _listed(ls)
    out = review.publish(ls, store, 1, [entry], since=started + 2.0)  # a later cycle flags it again
    assert out["listed"] == 1 and 3 in _listed(ls)


def test_tasks_a_lost_review_file_left_on_the_tab_are_cleared_by_the_next_cycle(tmp_path):
    """Found by review: publish cleared only what review.json listed; with that file lost or damaged
    (a new MODEL_DIR, a reset volume) earlier suspects kept their score in Label Studio and stayed
    on the tab for good. A cycle now also clears every task its snapshot sees marked."""
    from ncalr_backend.service import review
    from ncalr_backend.service.snapshot import take_snapshot
    from ncalr_backend.service.settings import Settings
    from ncalr_backend.service.store import ProjectStore
    from tests.service.test_cycle import FakeLS

    ls = FakeLS()
    ls.tasks[2]["data"][review.KEY_SCORE] = 0.9  # listed by an earlier MODEL_DIR
    ls.tasks[2]["data"][review.KEY_LABEL] = "a"
    s = Settings.from_env({"MODEL_DIR": str(tmp_path), "IMAGE_SIZE": "8", "IMAGE_CHANNELS": "1",
                           "LABEL_STUDIO_URL": "http://ls.test", "LABEL_STUDIO_API_KEY": "k"})
    snap = take_snapshot(ls, s, 1)
    assert snap.marked == [ls.tasks[2]["id"]]
    store = ProjectStore(tmp_path, 1)
    review.publish(ls, store, 1, [], marked=snap.marked)
    assert ls.tasks[2]["data"][review.KEY_SCORE] is None and ls.tasks[2]["data"][review.KEY_LABEL] is None
    assert take_snapshot(ls, s, 1).marked == []


def test_writing_the_keys_reads_each_task_just_before_writing_it(tmp_path):
    """Found by review: Label Studio's PATCH replaces a task's whole data, and the keys were written
    from one read of every task made before the loop, so another client's edit to a task's data
    while the loop ran was overwritten. Tasks are now read a few at a time, right before they are
    written, and a task that already holds the values is not written."""
    ls = FakeLS(n=40, n_labeled=30)
    ids = [t["id"] for t in ls.tasks[:25]]
    late = ids[-1]  # in the last chunk
    real = ls.request

    def request(method, path, json=None, **kw):
        out = real(method, path, json=json, **kw)
        if len(ls.task_patches) == 1:  # another client edits a later task while the loop runs
            next(t for t in ls.tasks if t["id"] == late)["data"]["note"] = "checked by Ana"
        return out

    ls.request = request
    values = {t: {"score": 0.5, "label": "a", "suggested": "b"} for t in ids}
    assert review._write_keys(ls, 1, values) == []
    t = next(t for t in ls.tasks if t["id"] == late)
    assert t["data"]["note"] == "checked by Ana" and t["data"][review.KEY_SCORE] == 0.5
    assert len(ls.task_patches) == 25
    assert review._write_keys(ls, 1, values) == [] and len(ls.task_patches) == 25  # nothing to change
    assert review._write_keys(ls, 1, {ids[0]: None, 10 ** 6: None}) == [10 ** 6]
    assert len(ls.task_patches) == 26 and ls.tasks[0]["data"][review.KEY_SCORE] is None


def test_a_task_nobody_else_annotates_is_given_back_after_a_few_cycles(settings):
    """Found by review: with a single annotator a task sent for re-annotation is never served again
    (Label Studio's rule), so it stayed unlabeled with overlap 2 for good, and waiting tasks used up
    the share: nothing else was ever sent. After RELABEL_WAIT_CYCLES cycles without the extra
    annotation it is labeled again with what it has, and never sent again."""
    s = settings.__class__(**{**settings.__dict__, "relabel_share": 0.5, "train_trigger_min": 4})
    ls = FakeLS(n=40, n_labeled=16, choices=truthful_except(WRONG))
    first = run_project_cycle(s, 1, "t", engine_config=TRAIN, client=ls)
    sent = set(first["relabel"]["new"])
    assert sent == WRONG
    by_id = {t["id"]: t for t in ls.tasks}
    for k in range(1, review.RELABEL_WAIT_CYCLES + 1):
        rep = run_project_cycle(s, 1, f"t{k}", engine_config=TRAIN, client=ls)
        if k < review.RELABEL_WAIT_CYCLES:
            assert set(rep["relabel"]["waiting"]) == sent and rep["relabel"]["given_back"] == []
            assert all((by_id[t]["overlap"], by_id[t]["is_labeled"]) == (2, False) for t in sent)
    assert set(rep["relabel"]["given_back"]) == sent and not set(rep["relabel"]["waiting"]) & sent
    assert all((by_id[t]["overlap"], by_id[t]["is_labeled"]) == (1, True) for t in sent)
    queued = {it["task"] for it in ls.imported if it["model_version"] == rep["model_version"]}
    assert not queued & sent  # not served first any more (they are labeled)
    rep = run_project_cycle(s, 1, "after", engine_config=TRAIN, client=ls)
    assert not set(rep["relabel"]["new"]) & sent and not set(rep["relabel"]["waiting"]) & sent
    rel = review.ReviewState(ProjectStore(s.model_dir, 1)).read()["relabel"]
    assert all(rel[str(t)]["expired"] == first["cycle"] + review.RELABEL_WAIT_CYCLES for t in sent)


def test_a_listed_task_is_written_again_only_when_what_the_tab_shows_would_change(tmp_path):
    """Every cycle moves every score a little, and rewriting each listed task for that cost one
    PATCH per listed task per cycle (the tidy step that delays the next cycle grew with the labeled
    set). A listed task is written again when its score moved by SCORE_STEP or more, or its label
    or the suggestion changed; review.json keeps the score Label Studio shows."""
    ls = FakeLS(n=20, n_labeled=10)
    store = ProjectStore(tmp_path, 1)

    def entries(scores, suggested=None):
        return [{"task": t, "flagged": True, "score": s, "label": "a", "suggested": (suggested or {}).get(t, "b"),
                 "fingerprint": f"{100 + t}:0"} for t, s in scores.items()]

    def shown():
        return {t["id"]: t["data"].get(review.KEY_SCORE) for t in ls.tasks if t["data"].get(review.KEY_SCORE)}

    assert review.SCORE_STEP == 0.05
    review.publish(ls, store, 1, entries({1: 0.90, 2: 0.80, 3: 0.70}))
    n = len(ls.task_patches)
    assert n == 3 and shown() == {1: 0.90, 2: 0.80, 3: 0.70}
    # small moves: nothing is written, Label Studio and review.json keep the first scores
    out = review.publish(ls, store, 1, entries({1: 0.92, 2: 0.755, 3: 0.70}))
    assert len(ls.task_patches) == n and out["written"] == 0 and shown() == {1: 0.90, 2: 0.80, 3: 0.70}
    assert {t: v["score"] for t, v in review.ReviewState(store).listed_tasks().items()} == {"1": 0.90, "2": 0.80, "3": 0.70}
    # drift is measured from what is shown: 0.92 then 0.955 is 0.055 away from the 0.90 shown
    review.publish(ls, store, 1, entries({1: 0.955, 2: 0.80, 3: 0.70}))
    assert len(ls.task_patches) == n + 1 and shown()[1] == 0.955
    # a new suggestion is written whatever the score; a task off the list is cleared
    review.publish(ls, store, 1, entries({1: 0.955, 2: 0.80}, suggested={2: "c"}))
    assert len(ls.task_patches) == n + 3 and 3 not in shown()
    assert next(t for t in ls.tasks if t["id"] == 2)["data"][review.KEY_SUGGESTED] == "c"


def test_a_listed_task_that_lost_its_keys_is_written_again(tmp_path):
    """Found by review: a publish that fails half-way (Label Studio answers 503 on one PATCH) has
    already nulled some keys but does not save review.json; the next cycle, flagging the task again
    at nearly the same score, trusted review.json and wrote nothing, so the task was listed but not
    on the tab. The snapshot's ``marked`` (tasks whose data carries the score) now decides."""
    ls = FakeLS(n=20, n_labeled=10)
    store = ProjectStore(tmp_path, 1)
    e = [{"task": t, "flagged": True, "score": s, "label": "a", "suggested": "b", "fingerprint": f"{t}:0"}
         for t, s in ((1, 0.9), (2, 0.8))]
    review.publish(ls, store, 1, e)
    next(t for t in ls.tasks if t["id"] == 1)["data"][review.KEY_SCORE] = None  # nulled, review.json not saved
    n = len(ls.task_patches)
    review.publish(ls, store, 1, e, marked=[2])
    assert len(ls.task_patches) == n + 1
    assert next(t for t in ls.tasks if t["id"] == 1)["data"][review.KEY_SCORE] == 0.9


def test_after_a_publish_fails_half_way_review_json_says_what_label_studio_shows(tmp_path):
    """Found by review: review.json was saved only when the whole publish went through, so a task
    rewritten before a failure (a 503 on a later PATCH) showed the new suggestion in Label Studio
    while review.json kept the old one, and with SCORE_STEP the next cycles never wrote it again.
    What was written before the failure is recorded, then the failure is raised."""
    import pytest

    ls = FakeLS(n=20, n_labeled=10)
    store = ProjectStore(tmp_path, 1)

    def entries(sug):
        return [{"task": t, "flagged": True, "score": s, "label": "a", "suggested": sug, "fingerprint": f"{t}:0"}
                for t, s in ((1, 0.9), (2, 0.8))]

    review.publish(ls, store, 1, entries("b"))
    calls = _fail_patch(ls, 2, RuntimeError("HTTP 503"))
    with pytest.raises(RuntimeError, match="503"):
        review.publish(ls, store, 1, entries("c"))
    shown = {t["id"]: t["data"].get(review.KEY_SUGGESTED) for t in ls.tasks if t["id"] in (1, 2)}
    recorded = {int(t): v["suggested"] for t, v in review.ReviewState(store).listed_tasks().items()}
    assert recorded == shown and sorted(shown.values()) == ["b", "c"]
    del ls.request  # FakeLS's own again
    n = len(ls.task_patches)
    review.publish(ls, store, 1, entries("c"))  # only the task the failure left behind is written
    assert len(ls.task_patches) == n + 1
    assert {t["data"].get(review.KEY_SUGGESTED) for t in ls.tasks if t["id"] in (1, 2)} == {"c"}


def test_when_taking_reviewed_tasks_off_fails_half_way_the_tasks_it_reached_are_recorded(tmp_path):
    """Found by review: a 503 on the second PATCH of a clear left task 1's keys nulled in Label
    Studio while review.json still listed it and never recorded the reviewer's decision (the
    review.json write was skipped by the exception), so it came back at the next cycle."""
    import pytest

    ls = FakeLS(n=20, n_labeled=10)
    store = ProjectStore(tmp_path, 1)
    review.publish(ls, store, 1, [{"task": t, "flagged": True, "score": s, "label": "a", "suggested": "b",
                                   "fingerprint": f"{t}:0"} for t, s in ((1, 0.9), (2, 0.8))])
    calls = _fail_patch(ls, 2, RuntimeError("HTTP 503"))
    with pytest.raises(RuntimeError, match="503"):
        review.clear(ls, store, 1, [1, 2])
    first = int(calls[0].rstrip("/").rsplit("/", 1)[1])  # the task whose keys were cleared
    st = review.ReviewState(store).read()
    shown = {t["id"]: t["data"].get(review.KEY_SUGGESTED) for t in ls.tasks if t["id"] in (1, 2)}
    assert shown[first] is None and set(st["listed"]) == {str(3 - first)}  # the other one is still listed
    assert str(first) in st["reviewed"]
    del ls.request  # FakeLS's own again
    assert review.clear(ls, store, 1, [3 - first]) == [3 - first]
    assert review.ReviewState(store).read()["listed"] == {}


def test_a_task_sent_for_re_annotation_is_recorded_before_it_is_sent(tmp_path):
    """Found by review: review.json was saved only after every PATCH, so a process killed after
    Label Studio raised a task's overlap left it unrecorded: never given back, and with one annotator
    unlabeled for good. Recorded first, a task that was not sent is given back as it was."""
    import pytest

    ls = FakeLS(n=20, n_labeled=10)
    store = ProjectStore(tmp_path, 1)
    plan = review.RelabelPlan(new={1: {"probs": {"a": 0.2, "b": 0.8}, "annotations": 1},
                                   2: {"probs": {"a": 0.3, "b": 0.7}, "annotations": 1}},
                              pending=[], items=[], cycle=4)
    calls = _fail_patch(ls, 2, SystemExit("killed"))  # the process goes: nothing after that PATCH runs
    with pytest.raises(SystemExit):
        review.request_relabel(ls, store, 1, plan)
    assert len(calls) == 2 and set(review.ReviewState(store).read()["relabel"]) == {"1", "2"}
    del ls.request  # FakeLS's own again
    out = review.request_relabel(ls, store, 1, review.RelabelPlan(new={}, pending=[], items=[], expired=[1, 2], cycle=7))
    assert sorted(out["given_back"]) == [1, 2]


def _fail_patch(ls, at: int, exc: BaseException) -> list:
    """Make the ``at``-th PATCH through ``ls`` raise ``exc``; returns the PATCHed paths as they come
    (``del ls.request`` restores the fake's own)."""
    real, calls = ls.request, []

    def request(method, path, json=None, **kw):
        if method == "PATCH":
            calls.append(path)
            if len(calls) == at:
                raise exc
        return real(method, path, json=json, **kw)
    ls.request = request
    return calls


def test_review_json_is_synced_to_disk(tmp_path, monkeypatch):
    """review.json holds what reviewers decided (the tasks they took off the list): its writes are
    fsynced before the rename, as state.json's are (a power loss must not bring back an empty file)."""
    import ncalr_backend.atomic as atomic
    synced = []
    real = atomic.os.fsync
    monkeypatch.setattr(atomic.os, "fsync", lambda fd: (synced.append(fd), real(fd)))
    state = review.ReviewState(ProjectStore(tmp_path, 1))
    with state.locked() as st:
        st["reviewed"]["7"] = "fingerprint"
    assert len(synced) == 1
    assert json.loads(state.path.read_text())["reviewed"] == {"7": "fingerprint"}
