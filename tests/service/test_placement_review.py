"""Placement, write-back and /predict against what Label Studio 1.23.2 does with their answers
(found by review: placeholders under the live version, a switch whose answer was lost, placements
never retried, project settings that silently turn the NCAL-R order off, rounded queue scores)."""

from __future__ import annotations

import json
import logging
import threading
import time
from contextlib import contextmanager

import pytest

from ncalr_backend.service import placement, scheduler, serving
from ncalr_backend.service.cycle import run_project_cycle
from ncalr_backend.service.labelconfig import parse_label_config
from ncalr_backend.service.labelstudio import LabelStudioError
from ncalr_backend.service.predictions import UNTRAINED_VERSION, prediction_item
from ncalr_backend.service.scheduler import EmbeddedScheduler
from ncalr_backend.service.settings import Settings
from ncalr_backend.service.store import ProjectStore
from tests.service.test_cycle import CFG, ENGINE, FakeLS


class PlacingLS(FakeLS):
    """FakeLS whose Data Manager lists each task's stored predictions (``fields=all``, as Label
    Studio does; placement reads them) and whose "Retrieve predictions" does what Label Studio's
    ``MLBackend.predict_tasks`` does (ml/models.py): ask /setup for the version, skip every task
    that already has a prediction of that version, store whatever /predict answers for the rest."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.sampling = "Uncertainty sampling"
        self.asked = []  # the task ids each "Retrieve predictions" sent to /predict

    def get_project(self, pid):
        return {**super().get_project(pid), "sampling": self.sampling}

    def get_tasks(self, pid, ids, resolve_uri=True):
        out = super().get_tasks(pid, ids, resolve_uri)
        for t in out:
            t["predictions"] = [{"model_version": it["model_version"], "score": it["score"], "result": it["result"]}
                                for it in self.stored if it["task"] == t["id"]]
        return out

    def retrieve_predictions(self, settings, ids):
        version = serving.current_version(settings, 1)  # what /setup answers
        has = {it["task"] for it in self.stored if it["model_version"] == version}
        tasks = [{"id": t["id"], "data": dict(t["data"])} for t in self.tasks if t["id"] in ids and t["id"] not in has]
        self.asked.append([t["id"] for t in tasks])
        if not tasks:
            return
        results = serving.predict_tasks(settings, parse_label_config(self.config), tasks, 1)
        for t, r in zip(tasks, results):  # 'model_version': r.get('model_version', <the /setup version>)
            self.stored.append({"task": t["id"], "result": r["result"], "score": r.get("score"),
                                "model_version": r.get("model_version", version)})


@pytest.fixture
def settings(tmp_path):
    return Settings.from_env({"MODEL_DIR": str(tmp_path), "IMAGE_SIZE": "8", "IMAGE_CHANNELS": "1",
                              "LABEL_STUDIO_URL": "http://ls.test", "LABEL_STUDIO_API_KEY": "k"})


def _new_task(ls, tid=500):
    ls.tasks.append({"id": tid, "data": {"image": f"/data/upload/1/{tid}.png"}, "annotations": []})


def _live(ls, tid, version):
    return [it for it in ls.stored if it["task"] == tid and it["model_version"] == version]


# ---------------------------------------------------------------------------- 1: /predict placeholders
def _no_credentials(monkeypatch, ls):
    def boom(settings):
        raise ValueError("LABEL_STUDIO_URL is not set")
    monkeypatch.setattr(serving, "make_client", boom)


def _model_fails(monkeypatch, ls):
    monkeypatch.setattr(serving, "make_client", lambda s: ls)
    monkeypatch.setattr(serving, "classify", lambda *a, **kw: (_ for _ in ()).throw(RuntimeError("CUDA out of memory")))


def _model_does_not_load(monkeypatch, ls):
    monkeypatch.setattr(serving, "make_client", lambda s: ls)
    monkeypatch.setattr(serving.ServedCycle, "model_and_meta",
                        lambda self: (_ for _ in ()).throw(RuntimeError("truncated model.pt")))


def _download_fails(monkeypatch, ls):
    monkeypatch.setattr(serving, "make_client", lambda s: ls)
    monkeypatch.setattr(ls, "download", lambda url: (_ for _ in ()).throw(LabelStudioError("GET: HTTP 503", 503)))


@pytest.mark.parametrize("failure", [_no_credentials, _model_fails, _model_does_not_load, _download_fails])
def test_an_unclassified_task_is_asked_for_again_and_placed(settings, monkeypatch, failure):
    """Found by review: /predict answered a task it could not classify with an empty result under
    the LIVE version; Label Studio stored it and then skipped the task in every later "Retrieve
    predictions" (it has a prediction of the /setup version), and placement skipped it too."""
    ls = PlacingLS()
    live = run_project_cycle(settings, 1, "t", engine_config=ENGINE, client=ls)["model_version"]
    _new_task(ls)
    with monkeypatch.context() as m:
        failure(m, ls)
        serving.ServedCycle._cache.clear()
        ls.retrieve_predictions(settings, [500, 10])
        ls.retrieve_predictions(settings, [500, 10])  # Label Studio asks again for the unclassified task only
    assert ls.asked == [[500], [500]]
    placeholders = [it for it in ls.stored if it["task"] == 500]
    assert placeholders and all(it["result"] == [] and it["model_version"] == UNTRAINED_VERSION
                                for it in placeholders)
    assert not _live(ls, 500, live)
    serving.ServedCycle._cache.clear()
    out = placement.place_new_tasks(settings, 1, [500], client=ls)  # and placement places it
    assert out["placed"] == 1 and len(_live(ls, 500, live)) == 1 and _live(ls, 500, live)[0]["result"]
    ls.retrieve_predictions(settings, [500])
    assert ls.asked[-1] == []  # placed: Label Studio no longer asks
    # the next cycle deletes the placeholders (prune_versions), never the live version's
    run_project_cycle(settings, 1, "t2", engine_config=ENGINE, client=ls)
    assert UNTRAINED_VERSION in ls.deleted and not [it for it in ls.stored if it["model_version"] == UNTRAINED_VERSION]


# ---------------------------------------------------------------------------- 2: a switch whose answer was lost
class LostSwitchLS(FakeLS):
    """The PATCH that switches the project goes through in Label Studio (``applied``) but its answer
    never arrives: the client raises a LabelStudioError without a status, as on a read timeout, or
    (``status``) with the 502 / 504 a reverse proxy in front of Label Studio answers instead."""

    applied = True
    status = None

    def patch_project(self, pid, data):
        if self.applied:
            super().patch_project(pid, data)
        if self.status is None:
            raise LabelStudioError("PATCH /api/projects/1/: Read timed out. (read timeout=30)", None)
        raise LabelStudioError(f"PATCH /api/projects/1/: HTTP {self.status}", self.status)


@pytest.mark.parametrize("status", [None, 502, 503, 504])
def test_a_switch_that_went_through_without_an_answer_is_committed(settings, status):
    """Found by review (the proxy's 502 / 504): only a missing answer was checked against Label
    Studio, so a proxy's gateway error failed a cycle whose switch Label Studio had applied."""
    ls = LostSwitchLS()
    ls.status = status
    rep = run_project_cycle(settings, 1, "t", engine_config=ENGINE, client=ls)
    v = rep["model_version"]
    assert rep["status"] == "completed" and rep["live"]
    assert ls.model_version == v and ProjectStore(settings.model_dir, 1).latest()["model_version"] == v
    assert serving.current_version(settings, 1) == v and v not in ls.deleted  # /setup serves what Label Studio uses


@pytest.mark.parametrize("status", [None, 504])
def test_a_switch_that_did_not_go_through_still_fails_the_cycle(settings, status):
    from ncalr_backend.service.errors import CycleError

    ls = LostSwitchLS()
    ls.applied, ls.status = False, status
    with pytest.raises(CycleError) as err:
        run_project_cycle(settings, 1, "t", engine_config=ENGINE, client=ls)
    assert err.value.retryable and ls.model_version == "" and ProjectStore(settings.model_dir, 1).latest() is None
    assert ls.deleted  # its half-written version is removed


# ---------------------------------------------------------------------------- 3: placements tried again
@pytest.fixture
def fast_retries(monkeypatch):
    monkeypatch.setattr(scheduler, "PLACE_RETRY_DELAYS", (0.05, 0.05), raising=False)


def test_a_placement_that_failed_in_a_way_that_passes_is_tried_again(tmp_path, fast_retries):
    calls = []

    def place(settings, pid, tasks):
        calls.append((pid, sorted(tasks), time.time()))
        if len(calls) == 1:
            raise LabelStudioError("POST /api/projects/3/import/predictions: HTTP 502", 502)
        return {"placed": len(tasks), "failures": []}

    sch = EmbeddedScheduler(Settings.from_env({"MODEL_DIR": str(tmp_path)}), cycle_fn=lambda *a, **kw: None,
                            place_fn=place)
    sch.request_placement(3, [501, 502])
    assert sch.wait_idle(5)
    assert [c[:2] for c in calls] == [(3, [501, 502]), (3, [501, 502])] and calls[1][2] - calls[0][2] >= 0.04


def test_fresh_tasks_never_wait_behind_another_placements_retry(tmp_path, monkeypatch):
    """Found by review: new tasks joined the waiting retry job and waited out its delay (up to
    120 s) with its remaining tries. A fresh request makes the job due at once with its own tries."""
    monkeypatch.setattr(scheduler, "PLACE_RETRY_DELAYS", (30.0,))
    calls = []

    def place(settings, pid, tasks):
        calls.append((sorted(tasks), time.time()))
        if len(calls) == 1:
            raise LabelStudioError("GET /api/tasks/: connection refused", None)
        return {"placed": len(tasks), "failures": []}

    sch = EmbeddedScheduler(Settings.from_env({"MODEL_DIR": str(tmp_path)}), place_fn=place)
    sch.request_placement(3, [1])
    deadline = time.time() + 5
    while not sch.status(3).get("placement_retry_at") and time.time() < deadline:
        time.sleep(0.02)  # the first try failed and its retry waits
    t = time.time()
    sch.request_placement(3, [2])  # the retry of task 1 is due in 30 s
    assert sch.wait_idle(5)
    assert [c[0] for c in calls] == [[1], [1, 2]] and calls[1][1] - t < 3


def test_placement_tries_are_bounded_and_a_failure_that_will_not_pass_is_not_retried(tmp_path, fast_retries):
    calls = []

    def down(settings, pid, tasks):
        calls.append(sorted(tasks))
        raise LabelStudioError("GET /api/tasks/: connection refused", None)

    sch = EmbeddedScheduler(Settings.from_env({"MODEL_DIR": str(tmp_path)}), place_fn=down)
    sch.request_placement(3, [501])
    assert sch.wait_idle(5) and calls == [[501]] * 3  # the first try and len(PLACE_RETRY_DELAYS) more
    calls.clear()

    def refused(settings, pid, tasks):
        calls.append(sorted(tasks))
        raise LabelStudioError("POST /api/projects/3/import/predictions: HTTP 403", 403)

    sch.place_fn = refused
    sch.request_placement(3, [501])
    assert sch.wait_idle(5) and calls == [[501]]


def test_only_the_tasks_whose_image_could_not_be_read_are_placed_again(tmp_path, fast_retries):
    calls = []

    def place(settings, pid, tasks):
        calls.append(sorted(tasks))
        bad = [501] if len(calls) == 1 else []
        return {"placed": len(tasks) - len(bad), "failures": [{"task": t, "reason": "HTTP 503"} for t in bad]}

    sch = EmbeddedScheduler(Settings.from_env({"MODEL_DIR": str(tmp_path)}), place_fn=place)
    sch.request_placement(3, [501, 502])
    assert sch.wait_idle(5) and calls == [[501, 502], [501]]


def test_a_placement_retry_never_doubles_a_prediction(settings, monkeypatch, fast_retries):
    """A failure after part of the tasks were written: the new try reads them again and skips those
    that have a prediction of the live version (``_has_version``)."""
    ls = PlacingLS()
    live = run_project_cycle(settings, 1, "t", engine_config=ENGINE, client=ls)["model_version"]
    for tid in (500, 501):
        _new_task(ls, tid)
    monkeypatch.setattr(placement, "BATCH", 1)  # one import per task: the second one fails once
    real, imports = ls.import_prediction_chunk, []

    def flaky(pid, items):
        imports.append([it["task"] for it in items])
        if len(imports) == 2:
            raise LabelStudioError("POST /api/projects/1/import/predictions: HTTP 504", 504)
        return real(pid, items)
    monkeypatch.setattr(ls, "import_prediction_chunk", flaky)
    sch = EmbeddedScheduler(settings, place_fn=lambda s, pid, tasks: placement.place_new_tasks(s, pid, list(tasks),
                                                                                              client=ls))
    sch.request_placement(1, [500, 501])
    assert sch.wait_idle(30)
    assert imports == [[500], [501], [501]]
    assert len(_live(ls, 500, live)) == 1 and len(_live(ls, 501, live)) == 1


def test_an_rq_placement_retry_waits_in_redis_not_in_the_worker(tmp_path, monkeypatch):
    """Found by review (twice): the retry slept in the job, keeping the worker (the documented
    single one) from a queued cycle for minutes. A job that has tasks worth another try records them
    in Redis with their due time and returns; the web process's reaper enqueues the next try when
    it is due, with the try counted; the last try gives up."""
    from rq import Queue

    from tests.redis_server import redis_server

    with redis_server() as url:
        for k, v in {"MODEL_DIR": str(tmp_path), "REDIS_URL": url, "LABEL_STUDIO_URL": "http://ls.test",
                     "LABEL_STUDIO_API_KEY": "k", "RQ_QUEUE": "ncalr-place-retry-test"}.items():
            monkeypatch.setenv(k, v)
        monkeypatch.setattr(scheduler, "PLACE_RETRY_DELAYS", (30.0, 0.0), raising=False)
        calls = []

        def place(settings, pid, tasks):
            calls.append(sorted(tasks))
            if len(calls) == 1:
                raise LabelStudioError("GET /api/tasks/: Read timed out.", None)
            return {"placed": len(tasks), "failures": [{"task": 6, "reason": "HTTP 502"}]}
        monkeypatch.setattr(scheduler, "_default_place", place)
        t0 = time.time()
        out = scheduler.rq_place_job(8, [5, 6])
        assert time.time() - t0 < 5 and out["placed"] == 0  # no sleep in the worker
        sch = scheduler.RQScheduler(Settings.from_env())
        ProjectStore(tmp_path, 8).update_state()  # a project the reaper lists
        key = scheduler._keys(8, "ncalr-place-retry-test")["place_retry"]
        rec = json.loads(sch.redis.get(key))
        assert rec["tasks"] == [5, 6] and rec["attempt"] == 1 and rec["due"] > time.time() + 20
        assert sch.reap_once() == [] and Queue("ncalr-place-retry-test", connection=sch.redis).count == 0  # not due
        sch.redis.set(key, json.dumps({**rec, "due": time.time() - 1}))
        assert sch.reap_once() == [(8, "placement retry")] and sch.redis.get(key) is None
        (job,) = Queue("ncalr-place-retry-test", connection=sch.redis).jobs
        assert job.args == (8, [5, 6], 1)
        scheduler.rq_place_job(*job.args)  # the second try: task 6 still fails, one try left
        rec = json.loads(sch.redis.get(key))
        assert calls[-1] == [5, 6] and rec["tasks"] == [6] and rec["attempt"] == 2
        assert sch.reap_once() == [(8, "placement retry")]  # due at once (delay 0)
        job = Queue("ncalr-place-retry-test", connection=sch.redis).jobs[-1]
        assert job.args == (8, [6], 2)
        scheduler.rq_place_job(*job.args)  # the last try: given up, nothing recorded
        assert calls[-1] == [6] and sch.redis.get(key) is None


# ---------------------------------------------------------------------------- 4: project settings drift
def test_serving_drift_names_what_to_change_in_label_studio():
    v = "ncalr-1-c0003-20260101T000000Z"
    ok = {"model_version": v, "sampling": "Uncertainty sampling", "show_collab_predictions": True}
    assert placement.serving_drift(ok, v) is None
    assert placement.serving_drift({"id": 1}, v) is None  # the project does not say: nothing to report
    off = placement.serving_drift({**ok, "model_version": "", "show_collab_predictions": False}, v)
    assert "Use predictions to prelabel tasks" in off and "is off" in off and v in off
    other = placement.serving_drift({**ok, "model_version": "ncalr-1-c0002-20251231T000000Z"}, v)
    assert "ncalr-1-c0002" in other and f"select {v}" in other
    seq = placement.serving_drift({**ok, "sampling": "Sequential sampling"}, v)
    assert "Sequential sampling" in seq and "Uncertainty sampling" in seq
    assert placement.serving_drift({**ok, "sampling": "Uniform sampling"}, v, expect_sampling=False) is None
    both = placement.serving_drift({**ok, "model_version": "", "sampling": "Uniform sampling"}, v)
    assert "Settings > Annotation" in both and "Uniform sampling" in both


def test_placement_warns_about_a_project_that_no_longer_serves_the_order_and_changes_nothing(settings, caplog):
    ls = PlacingLS()
    live = run_project_cycle(settings, 1, "t", engine_config=ENGINE, client=ls)["model_version"]
    ls.model_version, ls.sampling = "", "Sequential sampling"  # the user turned prelabeling off, chose Sequential
    patches = list(ls.patches)
    _new_task(ls)
    with caplog.at_level(logging.WARNING, logger="ncalr_backend.service.placement"):
        out = placement.place_new_tasks(settings, 1, [500], client=ls)
    assert out["placed"] == 1 and len(_live(ls, 500, live)) == 1
    warned = " ".join(r.getMessage() for r in caplog.records)
    assert "does not serve the NCAL-R order" in warned and "Sequential sampling" in warned
    assert ls.patches == patches and (ls.model_version, ls.sampling) == ("", "Sequential sampling")


# ---------------------------------------------------------------------------- 5: a cycle with nothing to rank
def _label_everything(ls):
    for t in ls.tasks:
        if t["id"] != 999 and not t["annotations"]:  # 999's image is refused: never labeled, never ranked
            t["annotations"] = [{"id": 500 + t["id"], "was_cancelled": False, "updated_at": "2025", "result": [
                {"from_name": "digit", "to_name": "image", "type": "choices",
                 "value": {"choices": ["a" if t["id"] % 2 else "b"]}}]}]


def test_a_cycle_with_nothing_to_rank_leaves_the_served_version_what_the_backend_names(settings, monkeypatch):
    """Found by review (2026-12-05): a cycle with nothing to rank (every task labeled, or every
    unlabeled image failed) wrote nothing and switched nothing, yet became latest.json: /setup
    reported its version, /predict tagged with it, and TASKS_CREATED placement refused ("not live"),
    while Label Studio served the version before. That cycle stays the latest (its model seeds the
    next cycle, its label check is published), and the version Label Studio serves stays the one the
    backend names, tags and places under (ProjectStore.served), until a cycle goes live again."""
    from ncalr_backend.service.app import create_app
    from model import NCALRBackend

    ls = PlacingLS(n=16, n_labeled=8)
    v1 = run_project_cycle(settings, 1, "first", engine_config=ENGINE, client=ls)["model_version"]
    ProjectStore(settings.model_dir, 1).update_state(serving_drift="a user's change")  # PROJECT_UPDATED saw one
    _label_everything(ls)
    rep = run_project_cycle(settings, 1, "all labeled", engine_config=ENGINE, client=ls)
    v2 = rep["model_version"]
    st = ProjectStore(settings.model_dir, 1)
    assert rep["status"] == "completed" and rep["predictions_sent"] == 0 and rep["live"] is False
    assert ls.model_version == v1 and not [it for it in ls.stored if it["model_version"] == v2]
    assert st.latest()["model_version"] == v2 and st.latest()["live"] is False  # kept: its model, its label check
    assert serving.current_version(settings, 1) == v1  # what /setup reports
    assert st.served()["model_version"] == v1 and (st.served()["path"] / "model.pt").is_file()
    assert st.state()["serving_drift"] == "a user's change"  # nothing was switched: the drift still holds
    assert ls.deleted == []  # Label Studio's versions were left as they were
    # /setup and /status through the app; /versions lists only versions Label Studio received
    import importlib

    import label_studio_ml.api

    importlib.reload(label_studio_ml.api)  # a fresh module-global Flask app for this app
    monkeypatch.setattr(serving, "make_client", lambda s: ls)
    app = create_app(NCALRBackend, settings, autostart=False)
    app.extensions["ncalr"].auth.resync_soon = lambda *a: None  # /setup: no webhook repair against ls.test
    client = app.test_client()
    assert client.post("/setup", json={"project": 1, "schema": CFG}).get_json()["model_version"] == v1
    monkeypatch.setattr(EmbeddedScheduler, "status", lambda self, pid: {})
    status = client.get("/status?project=1").get_json()
    assert status["model_version"] == v1 and status["latest_report"]["model_version"] == v2
    assert status["latest_report"]["live"] is False
    assert client.get("/versions?project=1").get_json()["versions"] == [v1]
    page = client.get("/").get_data(as_text=True)
    assert f"live version <code>{v1}</code> (the latest cycle, <code>{v2}</code>, had nothing to rank)" in page
    # a task imported now: placed, and answered by /predict, under the version Label Studio serves
    serving.ServedCycle._cache.clear()
    _new_task(ls)
    out = placement.place_new_tasks(settings, 1, [500], client=ls)
    assert out["placed"] == 1 and len(_live(ls, 500, v1)) == 1
    _new_task(ls, 501)
    ls.retrieve_predictions(settings, [501])
    assert ls.asked[-1] == [501] and len(_live(ls, 501, v1)) == 1 and _live(ls, 501, v1)[0]["result"]
    # the next cycle with something to rank goes live; the version before it stays in Label Studio
    _new_task(ls, 502)
    v3 = run_project_cycle(settings, 1, "more tasks", engine_config=ENGINE, client=ls)["model_version"]
    assert ls.model_version == v3 and st.served()["model_version"] == v3 == st.latest()["model_version"]
    assert v1 not in ls.deleted and serving.current_version(settings, 1) == v3


def test_the_served_cycle_survives_pruning_and_a_pointer_written_before_it_was_recorded(settings):
    """The served cycle's folder is never pruned while a newer cycle that never went live is the
    latest; a latest.json written before ``served`` existed (a cycle with nothing to rank, committed
    by an older backend) finds the cycle Label Studio serves by its ``switch.json``."""
    import json as _json

    st = ProjectStore(settings.model_dir, 1)

    def cycle(n, live):
        work = st.new_workdir(n)
        pointer = {"model_version": f"v{n}", "labels": ["a", "b"], "multilabel": False}
        if live:
            (work / "switch.json").write_text(_json.dumps(pointer))
        st.commit(work, n, {**pointer, "live": live})
    cycle(1, True)
    assert st.served()["model_version"] == "v1" and "served" not in _json.loads((st.root / "latest.json").read_text())
    for n in (2, 3, 4):
        cycle(n, False)
        assert st.latest()["model_version"] == f"v{n}" and st.served()["model_version"] == "v1"
    st.prune(keep_cycles=2, keep_failed=1)
    assert sorted(d.name for d in (st.root / "cycles").iterdir()) == ["0001", "0003", "0004"]
    assert st.served()["path"] == st.root / "cycles" / "0001"
    legacy = _json.loads((st.root / "latest.json").read_text())
    del legacy["served"]
    (st.root / "latest.json").write_text(_json.dumps(legacy))
    assert st.served()["model_version"] == "v1" and st.served()["path"] == st.root / "cycles" / "0001"
    cycle(5, True)
    assert st.served()["model_version"] == "v5" == st.latest()["model_version"]


# ---------------------------------------------------------------------------- 6: queue scores not rounded
def test_queue_scores_of_neighbouring_ranks_never_tie_past_a_million_tasks():
    cfg = parse_label_config(CFG)
    m = 3_000_000
    e = {"label": "a", "confidence": 0.5}
    scores = [prediction_item(1, e, r / m, cfg, "v")["score"] for r in range(1_000_000, 1_000_004)]
    assert len(set(scores)) == 4 and scores == sorted(scores)
