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


def _anns(ls, *tids):
    """{task: its annotations' ids}: what a reviewer's webhooks name when they re-submit or correct them."""
    return {t["id"]: [a["id"] for a in t.get("annotations") or []] for t in ls.tasks if t["id"] in tids} | \
        {t: [] for t in tids if t not in {x["id"] for x in ls.tasks}}


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
    # 7 was never listed (and no annotation of it named): nothing to take off, nothing reviewed
    assert sorted(review.clear(ls, st, 1, _anns(ls, 3, 6) | {7: []})) == [3, 6]
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
    assert [it["score"] for it in front[:2]] == [0.0, 1 / 26]  # 24 ranked + 2: i / 26 first
    assert all(0 <= it["score"] <= 1 for it in front)
    # each with an empty result: the second annotator is not shown the model's suggestion
    assert all(it["result"] == [] for it in front[:2])
    assert sorted(it["score"] for it in front[2:]) == [(r + 2) / 26 for r in range(24)]
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
    assert probs6["b"] > probs6["a"]  # the model's own view of task 6: "b" (by choice value)
    rep2 = run_project_cycle(s, 1, "t2", engine_config=TRAIN, client=ls)
    tasks = json.loads((ProjectStore(s.model_dir, 1).latest()["path"] / "tasks.json").read_text())
    labels = dict(zip(tasks["labeled"], tasks["labels"]))
    assert labels[6] == 1 and labels[3] == 1
    # answered: each task's overlap goes back to 1 (labeled, with its two annotations), once
    assert sorted(rep2["relabel"]["answered"]) == [3, 6]
    assert all((t["overlap"], t["is_labeled"]) == (1, True) for t in ls.tasks if t["id"] in (3, 6))
    rel = review.ReviewState(ProjectStore(s.model_dir, 1)).read()["relabel"]
    assert rel["3"]["answered"] == rel["6"]["answered"] == rep2["cycle"]
    rep3 = run_project_cycle(s, 1, "t3", engine_config=TRAIN, client=ls)
    assert rep3["relabel"]["answered"] == [] and not {3, 6} & set(rep3["relabel"]["waiting"] + rep3["relabel"]["new"])
    # an annotation the model disagrees with does not win just by coming last
    t3 = next(t for t in ls.tasks if t["id"] == 3)
    t3["annotations"][-1]["result"][0]["value"]["choices"] = ["a"]
    t3["annotations"][0]["updated_at"] = "2031"  # the first ("b") is now the newest
    run_project_cycle(s, 1, "t3", engine_config=TRAIN, client=ls)
    tasks = json.loads((ProjectStore(s.model_dir, 1).latest()["path"] / "tasks.json").read_text())
    assert rel["3"]["probs"]["a"] > rel["3"]["probs"]["b"]  # the model saw task 3 as "a" (it is dark)
    assert dict(zip(tasks["labeled"], tasks["labels"]))[3] == 0  # "a" wins, though "b" is newer


def test_a_task_reviewed_while_a_cycle_ran_is_not_listed_again_with_its_old_label(settings):
    """Found by review: the cycle's entries carry the label it read at its snapshot; a reviewer who
    corrected the task meanwhile took it off the list, and the cycle's publish put it back with the
    old label. Reviews newer than the cycle's start now win until the next cycle."""
    import time

    ls = FakeLS(n=12, n_labeled=6)
    store = ProjectStore(settings.model_dir, 1)
    entry = {"task": 3, "flagged": True, "score": 0.9, "suggested": "b", "label": "a", "fingerprint": '103:"a"'}
    started = time.time()
    with review.ReviewState(store).locked() as st:  # the reviewer's correction, after the cycle began
        st["reviewed"]["3"], st["reviewed_at"]["3"] = '555:"b"', started + 1.0
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


def test_turning_relabeling_off_gives_the_waiting_tasks_back_at_once(settings):
    """Found by review: with RELABEL_SHARE back at 0 (or the project switched to multiple choice) the
    plan returned nothing before it looked at the tasks still waiting, so they kept needing a second
    annotator for good (with one annotator the project never completed). The next cycle now gives
    them back (labeled, overlap as it was) and sends nothing new."""
    s = settings.__class__(**{**settings.__dict__, "relabel_share": 0.5, "train_trigger_min": 4})
    ls = FakeLS(n=40, n_labeled=16, choices=truthful_except(WRONG))
    sent = set(run_project_cycle(s, 1, "t", engine_config=TRAIN, client=ls)["relabel"]["new"])
    by_id = {t["id"]: t for t in ls.tasks}
    assert sent == WRONG and all((by_id[t]["overlap"], by_id[t]["is_labeled"]) == (2, False) for t in sent)
    off = settings.__class__(**{**settings.__dict__, "relabel_share": 0.0, "train_trigger_min": 4})
    rep = run_project_cycle(off, 1, "off", engine_config=TRAIN, client=ls)
    assert set(rep["relabel"]["given_back"]) == sent and rep["relabel"]["new"] == [] and rep["relabel"]["waiting"] == []
    assert all((by_id[t]["overlap"], by_id[t]["is_labeled"]) == (1, True) for t in sent)
    rep = run_project_cycle(off, 1, "off2", engine_config=TRAIN, client=ls)
    assert "relabel" not in rep  # nothing waits any more: nothing to do


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
        review.clear(ls, store, 1, _anns(ls, 1, 2))
    first = int(calls[0].rstrip("/").rsplit("/", 1)[1])  # the task whose keys were cleared
    st = review.ReviewState(store).read()
    shown = {t["id"]: t["data"].get(review.KEY_SUGGESTED) for t in ls.tasks if t["id"] in (1, 2)}
    assert shown[first] is None and set(st["listed"]) == {str(3 - first)}  # the other one is still listed
    assert str(first) in st["reviewed"]
    del ls.request  # FakeLS's own again
    assert review.clear(ls, store, 1, _anns(ls, 3 - first)) == [3 - first]
    assert review.ReviewState(store).read()["listed"] == {}


def test_a_task_sent_for_re_annotation_is_recorded_before_it_is_sent(tmp_path):
    """Found by review: review.json was saved only after every PATCH, so a process killed after
    Label Studio raised a task's overlap left it unrecorded: never given back, and with one annotator
    unlabeled for good. Recorded first, a task that was not sent is given back as it was."""
    import pytest

    ls = FakeLS(n=20, n_labeled=10)
    store = ProjectStore(tmp_path, 1)
    plan = review.RelabelPlan(new={1: {"probs": {"0": 0.2, "1": 0.8}, "annotations": 1},
                                   2: {"probs": {"0": 0.3, "1": 0.7}, "annotations": 1}},
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
    assert len(synced) == 2  # the file, then its directory (the rename)
    assert json.loads(state.path.read_text())["reviewed"] == {"7": "fingerprint"}


def _flag(t, fp, label="a", suggested="b", score=0.9):
    return {"task": t, "flagged": True, "score": score, "label": label, "suggested": suggested, "fingerprint": fp}


def test_a_task_relabeled_between_the_snapshot_and_the_publish_is_not_listed(tmp_path):
    """Found by review: only a task already listed had its correction's webhook acted on, so a task
    corrected while a cycle ran (between its snapshot and its publish) was listed with the label it
    no longer had, and with RELABEL_SHARE sent to a second annotator. The publish now reads each task
    just before writing it and compares its label's fingerprint with the cycle's."""
    from ncalr_backend.service.labelconfig import parse_label_config
    from tests.service.test_cycle import CFG

    ls = FakeLS(n=12, n_labeled=6)
    store = ProjectStore(tmp_path, 1)
    cfg = parse_label_config(CFG)
    review.publish(ls, store, 1, [_flag(4, '104:"b"')], cfg=cfg)  # listed before: its label is as scored
    assert set(_listed(ls)) == {4}
    t3 = next(t for t in ls.tasks if t["id"] == 3)
    t3["annotations"][0]["result"][0]["value"]["choices"] = ["b"]  # corrected after the snapshot ("a" = 0)
    t4 = next(t for t in ls.tasks if t["id"] == 4)
    t4["annotations"].append({"id": 204, "was_cancelled": False, "updated_at": "2025", "result": [
        {"from_name": "digit", "to_name": "image", "type": "choices", "value": {"choices": ["a"]}}]})
    out = review.publish(ls, store, 1, [_flag(3, '103:"a"'), _flag(4, '104:"b"', label="b", suggested="a",
                                                                     score=0.5)], cfg=cfg)
    assert out["relabeled_since_snapshot"] == [3, 4] and out["listed"] == 0
    assert _listed(ls) == {} and review.ReviewState(store).listed_tasks() == {}
    # unchanged tasks are listed as before
    out = review.publish(ls, store, 1, [_flag(5, '105:"a"')], cfg=cfg)
    assert out["listed"] == 1 and set(_listed(ls)) == {5}


def test_deleting_the_annotation_a_task_was_listed_for_is_no_review_of_the_one_left(tmp_path):
    """Found by review: deleting the winning annotation (or adding one a ground truth still
    outranks) recorded the label that then won as reviewed, so it was never listed again though
    nobody had looked at it. Only an annotation the webhooks named, winning now, is a review."""
    from ncalr_backend.service.labelconfig import parse_label_config
    from tests.service.test_cycle import CFG

    ls = FakeLS(n=12, n_labeled=6)
    store = ProjectStore(tmp_path, 1)
    t3 = next(t for t in ls.tasks if t["id"] == 3)
    older = {"id": 50, "was_cancelled": False, "updated_at": "2023", "result": [
        {"from_name": "digit", "to_name": "image", "type": "choices", "value": {"choices": ["b"]}}]}
    t3["annotations"].append(older)  # 103 ("a", newer) wins; 50 ("b") is older
    review.publish(ls, store, 1, [_flag(3, '103:"a"'), _flag(5, '105:"a"')], cfg=parse_label_config(CFG))
    t3["annotations"] = [older]  # the reviewer deletes 103: ANNOTATIONS_DELETED names it
    assert review.tasks_of_annotations(store, [103]) == [3]
    assert review.clear(ls, store, 1, {3: []}) == [3]
    st = review.ReviewState(store).read()
    assert "3" not in st["listed"] and "3" not in st["reviewed"] and "3" in st["reviewed_at"]
    # re-submitting the winning annotation as it is confirms it
    assert review.clear(ls, store, 1, {5: [105]}) == [5]
    assert review.ReviewState(store).read()["reviewed"]["5"] == '105:"a"'


def test_a_review_survives_a_failed_clear_and_a_restart(tmp_path, monkeypatch):
    """Found by review: the background clearer kept its to-do list in memory and dropped it on one
    failure (Label Studio away) or a restart; the webhook had answered, so the decision was lost and
    the task came back. The webhook's review is now on disk before it answers; the clearer retries,
    and every publish applies what is left and never lists a task still waiting."""
    import time

    ls = FakeLS(n=12, n_labeled=6)
    settings = type("S", (), {"model_dir": tmp_path})()
    store = ProjectStore(tmp_path, 1)
    review.publish(ls, store, 1, [_flag(3, '103:"a"'), _flag(5, '105:"a"')])
    real, fails = ls.get_project, [2]

    def flaky(pid):
        if fails[0] > 0:
            fails[0] -= 1
            raise review.LabelStudioError("GET /api/projects/1/: 503")
        return real(pid)
    ls.get_project = flaky
    monkeypatch.setattr(review.ReviewClearer, "RETRY_S", (0.05,))
    clearer = review.ReviewClearer(settings, lambda: ls)
    assert clearer.request(1, {3: [103]}) == 1
    assert set(review.ReviewTodo(store).read()) == {"3"}  # on disk before the webhook answers
    deadline = time.time() + 10
    while review.ReviewTodo(store).read() and time.time() < deadline:
        time.sleep(0.05)
    assert fails == [0] and review.ReviewTodo(store).read() == {}  # failed twice, then applied
    assert 3 not in _listed(ls) and review.ReviewState(store).read()["reviewed"]["3"] == '103:"a"'

    # a "restart": the review is queued but no clearer runs; the next publish applies it first
    review.ReviewTodo(store).add({5: [105]})
    out = review.publish(ls, store, 1, [_flag(5, '105:"a"')])
    assert out["listed"] == 0 and 5 not in _listed(ls) and review.ReviewTodo(store).read() == {}
    # ... and with Label Studio away for that first step, the waiting task is not listed, and its
    # review is applied later although the publish took it off the tab meanwhile
    review.publish(ls, store, 1, [_flag(6, '106:"b"')])
    review.ReviewTodo(store).add({6: [106]})
    fails[0] = 1
    out = review.publish(ls, store, 1, [_flag(6, '106:"b"')])
    assert out["listed"] == 0 and 6 not in _listed(ls) and set(review.ReviewTodo(store).read()) == {"6"}
    assert review.clear_pending(ls, store, 1) == []  # off the tab already
    assert review.ReviewState(store).read()["reviewed"]["6"] == '106:"b"' and review.ReviewTodo(store).read() == {}


def test_a_damaged_review_file_is_set_aside_and_bad_entries_are_dropped(tmp_path):
    """Found by review: read() checked each key's type but not the values inside, so a string
    reviewed_at, a string score, a non-numeric view or a relabel entry without its count failed
    every cycle's publish (or relabel plan); and a truncated file was overwritten, wiping every
    reviewer's decision. Bad entries are now dropped (logged), a file that is not JSON is kept aside."""
    ls = FakeLS(n=12, n_labeled=6)
    store = ProjectStore(tmp_path, 1)
    store.root.mkdir(parents=True)
    path = store.root / "review.json"
    path.write_text(json.dumps({"view": "tab", "listed": {"3": {"score": "high"}, "x": {"score": 0.5},
                                                          "4": {"score": 0.5, "label": "a", "suggested": "b"}},
                                "reviewed": {"5": "105:0", "6": 7}, "reviewed_at": {"5": "yesterday", "7": 1.0},
                                "relabel": {"8": {"probs": {}}, "9": {"annotations": 1, "probs": {}}}}))
    st = review.ReviewState(store).read()
    assert st["view"] is None and set(st["listed"]) == {"4"} and st["reviewed"] == {"5": "105:0"}
    assert st["reviewed_at"] == {"7": 1.0} and set(st["relabel"]) == {"9"}
    out = review.publish(ls, store, 1, [_flag(3, "103:0")])  # used to raise TypeError / ValueError
    assert out["listed"] == 1
    path.write_text('{"reviewed": {"5": "105:0"}, "listed": {"3": ')  # truncated
    review.publish(ls, store, 1, [_flag(3, "103:0")])
    (aside,) = store.root.glob("review.json.corrupt-*")
    assert aside.read_text().startswith('{"reviewed": {"5": "105:0"}')
    assert isinstance(json.loads(path.read_text()), dict)


def test_multi_label_entries_sort_as_the_engine_ranks():
    """Found by review: the list showed 1 - |S| min p-bar (after averaging over epochs) while the engine
    ranks by the mean of the per-epoch min(1, |S| min p): by Jensen the shown score is lower and
    the order could differ. Now the entry's score is the engine's own."""
    from types import SimpleNamespace

    from ncalr_backend.service.labelconfig import parse_label_config
    from tests.service.test_cycle import MULTI_CFG
    ml = SimpleNamespace(cfg=parse_label_config(MULTI_CFG), lab_ids=[5, 6], lab_labels=[[0, 2], [1, 2]],
                         lab_fingerprints=["7:[0, 2]", "8:[1, 2]"])
    rep = SimpleNamespace(prob_mean=np.array([[0.45, 0.5, 0.05], [0.1, 0.5, 0.4]]), suspicion=np.array([2.0, 1.0]),
                          suggested=np.array([[True, True, False], [False, True, True]]),
                          suspect_label=np.array([2, 0]), flagged=np.array([True, False]),
                          signals={"p_mean": np.array([0.95, 0.3])})
    e = review.label_error_entries(SimpleNamespace(label_report=rep), ml)
    assert [(x["task"], x["score"]) for x in e] == [(5, 0.95), (6, 0.3)]


def test_hostile_numbers_and_probabilities_in_the_review_files_are_dropped(tmp_path):
    """Found by review: a huge integer (1e400 written as digits) made every read raise
    OverflowError (every cycle failed at its snapshot), and a relabel entry whose probability was a
    string made every queued review fail to apply, for good."""
    ls = FakeLS(n=12, n_labeled=6)
    store = ProjectStore(tmp_path, 1)
    store.root.mkdir(parents=True)
    huge = "1" + "0" * 400
    (store.root / "review.json").write_text(
        '{"reviewed_at": {"3": %s, "4": 1.5}, "listed": {"5": {"score": %s}}, '
        '"relabel": {"5": {"annotations": 1, "probs": {"0": "x"}}, "6": {"annotations": 1, "probs": {"0": 0.9}}}}'
        % (huge, huge))
    (store.root / "review_todo.json").write_text('{"5": {"at": %s}, "6": {"at": 1.0, "annotations": [106]}}' % huge)
    st = review.ReviewState(store).read()
    assert st["reviewed_at"] == {"4": 1.5} and st["listed"] == {} and set(st["relabel"]) == {"6"}
    assert set(review.ReviewTodo(store).read()) == {"6"}
    review.publish(ls, store, 1, [_flag(5, '105:"a"'), _flag(6, '106:"b"')])
    assert review.ReviewTodo(store).read() == {}  # task 6's review applied


def test_a_correction_made_while_a_publish_writes_is_queued(tmp_path):
    """Found by review: a task the publish was newly listing was not "listed" for the webhook until
    the publish saved review.json, so a correction made meanwhile was dropped and the task stayed
    listed with its old label. While the writes run, review.json names them (``publishing``)."""
    ls = FakeLS(n=12, n_labeled=6)
    store = ProjectStore(tmp_path, 1)
    seen = []
    real = ls.request

    def request(method, path, json=None, **kw):
        if method == "PATCH" and "/api/tasks/" in path:
            seen.append(review.ReviewState(store).watched_tasks())  # what a webhook would see now
        return real(method, path, json=json, **kw)
    ls.request = request
    review.publish(ls, store, 1, [_flag(3, '103:"a"'), _flag(5, '105:"a"')])
    assert seen and all(w == {"3", "5"} for w in seen)
    assert review.ReviewState(store).read()["publishing"] == []
    assert review.ReviewState(store).watched_tasks() == {"3", "5"}  # listed now


def test_queued_reviews_are_applied_after_a_restart_without_a_webhook(tmp_path):
    """Found by review: the clearer started only on a webhook, so after a restart a queued review
    waited for the project's next webhook or cycle."""
    import time

    ls = FakeLS(n=12, n_labeled=6)
    store = ProjectStore(tmp_path, 1)
    review.publish(ls, store, 1, [_flag(3, '103:"a"')])
    review.ReviewTodo(store).add({3: [103]})
    clearer = review.ReviewClearer(type("S", (), {"model_dir": tmp_path})(), lambda: ls)
    assert clearer.resume() == 1
    deadline = time.time() + 10
    while review.ReviewTodo(store).read() and time.time() < deadline:
        time.sleep(0.05)
    assert review.ReviewState(store).read()["reviewed"] == {"3": '103:"a"'} and 3 not in _listed(ls)


def test_a_failed_read_is_no_damage_and_a_stale_task_whose_patch_failed_stays_listed(tmp_path, monkeypatch):
    """Found by review: an OSError reading review.json (EMFILE, EIO) set the reviewers' decisions
    aside like a damaged file; and a stale task was counted gone before its keys were nulled, so a
    failed PATCH left it on the tab and out of review.json."""
    import builtins

    import pytest

    from ncalr_backend.service.labelconfig import parse_label_config
    from tests.service.test_cycle import CFG

    ls = FakeLS(n=12, n_labeled=6)
    store = ProjectStore(tmp_path, 1)
    review.publish(ls, store, 1, [_flag(3, '103:"a"')])
    real_open = builtins.open

    def emfile(path, *a, **kw):
        if str(path).endswith("review.json") and "r" in (a[0] if a else kw.get("mode", "r")):
            raise OSError(24, "Too many open files")
        return real_open(path, *a, **kw)
    monkeypatch.setattr(builtins, "open", emfile)
    with pytest.raises(OSError):
        with review.ReviewState(store).locked():
            pass
    monkeypatch.setattr(builtins, "open", real_open)
    assert not list(store.root.glob("review.json.corrupt-*")) and set(review.ReviewState(store).listed_tasks()) == {"3"}

    t3 = next(t for t in ls.tasks if t["id"] == 3)
    t3["annotations"][0]["result"][0]["value"]["choices"] = ["b"]  # relabeled: stale

    def fail(method, path, json=None, **kw):
        raise review.LabelStudioError("PATCH: 503", 503)
    ls.request = fail
    with pytest.raises(review.LabelStudioError):
        review.publish(ls, store, 1, [_flag(3, '103:"a"')], cfg=parse_label_config(CFG))
    assert set(review.ReviewState(store).listed_tasks()) == {"3"}  # still shown in Label Studio: still listed


def test_queue_first_scores_are_exact_so_they_stay_distinct_past_a_million_tasks():
    """Found by review (2026-12-02): queue_first rounded to 6 digits, so past 10^6 ranked tasks
    neighbours tied, and at 10^7 every re-annotation and rank 0 scored 0.0: Label Studio, which
    serves by score, could serve a ranked task before a re-annotation. The scores are now the exact
    (rank + q) / (M + q) and i / (M + q) (a pool of ten million is too big for a unit test: the
    exact values are checked where rounding to 6 digits would have changed them)."""
    from ncalr_backend.service.predictions import QueuePredictions

    m, q = 4, 3
    entries = {str(100 + r): {"rank": r, "score": r / m} for r in range(m)}
    preds = QueuePredictions(entries=entries, items=[{"task": 100 + r, "score": r / m} for r in range(m)])
    plan = review.RelabelPlan(new={}, pending=[7, 8, 9], items=[{"task": t, "result": [], "score": float(i)}
                                                               for i, t in enumerate((7, 8, 9))])
    review.queue_first(preds, plan)
    got = {it["task"]: it["score"] for it in preds.items}
    assert got == {7: 0 / 7, 8: 1 / 7, 9: 2 / 7, 100: 3 / 7, 101: 4 / 7, 102: 5 / 7, 103: 6 / 7}
    assert got[8] != round(1 / 7, 6)  # what the rounding gave
    assert all(preds.entries[str(t)]["score"] == got[t] for t in (100, 101, 102, 103))


def test_review_state_names_classes_by_value_so_a_config_change_keeps_its_meaning(tmp_path):
    """Found by review, 2026-12-05: review.json kept class INDICES (reviewed fingerprints, the model's
    view of a re-annotated task), so inserting "ant" before "cat" re-listed reviewed tasks, took a
    changed label for reviewed, and let the wrong one of two annotations win. Now by choice value;
    a file written before is translated once with the latest cycle's labels."""
    from ncalr_backend.service.annotations import split_tasks, task_fingerprint
    from ncalr_backend.service.labelconfig import parse_label_config

    store = ProjectStore(tmp_path, 1)
    work = store.new_workdir(1)
    store.commit(work, 1, {"model_version": "v1", "labels": ["cat", "dog"], "num_classes": 2})
    store.root.joinpath("review.json").write_text(json.dumps({  # as written before 2026-12-05
        "reviewed": {"7": "11:0", "8": "12:[0, 1]"},
        "listed": {"9": {"score": 0.9, "label": "dog", "suggested": "cat", "fingerprint": "13:1"}},
        "relabel": {"10": {"probs": {"0": 0.9, "1": 0.1}, "annotations": 2}}}))
    st = review.ReviewState(store).read()
    assert st["reviewed"] == {"7": '11:"cat"', "8": '12:["cat", "dog"]'}
    assert st["listed"]["9"]["fingerprint"] == '13:"dog"' and st["relabel"]["10"]["probs"] == {"cat": 0.9, "dog": 0.1}
    with review.ReviewState(store).locked():
        pass  # saved by value, and not translated again
    assert json.loads(store.root.joinpath("review.json").read_text())["label_format"] == "values"
    assert review.ReviewState(store).read()["reviewed"]["7"] == '11:"cat"'

    ann = lambda i, ch, upd: {"id": i, "updated_at": upd, "result": [  # noqa: E731
        {"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": [ch]}}]}
    before = parse_label_config('<View><Image name="image" value="$image"/><Choices name="label" toName="image">'
                                '<Choice value="cat"/><Choice value="dog"/></Choices></View>')
    after = parse_label_config('<View><Image name="image" value="$image"/><Choices name="label" toName="image">'
                               '<Choice value="ant"/><Choice value="cat"/><Choice value="dog"/></Choices></View>')
    t7 = {"id": 7, "annotations": [ann(11, "cat", "2024")]}
    assert task_fingerprint(t7, before) == task_fingerprint(t7, after) == st["reviewed"]["7"]  # still reviewed
    t10 = {"id": 10, "annotations": [ann(20, "cat", "2024-01"), ann(21, "dog", "2024-02")]}
    prefer = st["relabel"]["10"]["probs"]
    for cfg in (before, after):  # the model's view (cat) picks annotation 20 under either order
        s = split_tasks([t10], cfg, {"10": prefer})
        assert cfg.labels[s.labels[0]] == "cat" and s.fingerprints == ['20:"cat"']
