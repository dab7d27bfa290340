"""The written head of the live order is topped up after a failed cycle (``placement.refill_head``).

A cycle writes only the head of its order (``WRITE_BACK_TOP``). Label Studio 1.23 serves at random
once every task with a prediction of the project's version is labeled, so when cycles fail while
annotators go on, "Label All Tasks" fell back to random order without pre-annotations, silently.
"""

from __future__ import annotations

import logging

import pytest

from ncalr_backend.service import placement
from ncalr_backend.service.cycle import run_project_cycle
from ncalr_backend.service.errors import CycleError
from ncalr_backend.service.labelstudio import LabelStudioError
from ncalr_backend.service.settings import Settings
from ncalr_backend.service.store import ProjectStore, read_json
from tests.service.test_cycle import ENGINE
from tests.service.test_dashboard import AUTH, app_and_dir  # noqa: F401 - a fixture
from tests.service.test_placement_review import PlacingLS

DIVERGES = ENGINE.replace(lr=1e7)  # non-finite loss, and again at a third of it: the cycle fails cleanly


@pytest.fixture
def settings(tmp_path):
    return Settings.from_env({"MODEL_DIR": str(tmp_path), "IMAGE_SIZE": "8", "IMAGE_CHANNELS": "1",
                              "LABEL_STUDIO_URL": "http://ls.test", "LABEL_STUDIO_API_KEY": "k",
                              "WRITE_BACK_TOP": "4"})


def _label(ls, tid, choice="a"):
    t = next(t for t in ls.tasks if t["id"] == tid)
    t["annotations"] = [{"id": 5000 + tid, "was_cancelled": False, "updated_at": "2025", "result": [
        {"from_name": "digit", "to_name": "image", "type": "choices", "value": {"choices": [choice]}}]}]


def _live_cycle(settings, ls):
    rep = run_project_cycle(settings, 1, "t", engine_config=ENGINE, client=ls)
    assert rep["status"] == "completed" and rep["live"]
    latest = ProjectStore(settings.model_dir, 1).latest()
    entries = read_json(latest["path"] / "predictions.json")["tasks"]
    by_rank = [int(t) for t, _ in sorted(entries.items(), key=lambda kv: kv[1]["rank"])]
    return rep["model_version"], entries, by_rank


def _written(ls, version):
    return [it["task"] for it in ls.stored if it["model_version"] == version]


def test_a_failed_cycle_writes_the_next_ranks_once_the_head_is_labeled(settings):
    ls = PlacingLS()  # 24 tasks, 8 labeled: 16 ranked (and one on a foreign host, left out)
    v, entries, by_rank = _live_cycle(settings, ls)
    assert sorted(_written(ls, v)) == sorted(by_rank[:4])
    for tid in by_rank[:4]:  # the annotators label the whole written head ...
        _label(ls, tid)
    with pytest.raises(CycleError, match="diverged twice"):  # ... and the next cycle fails
        run_project_cycle(settings, 1, "t", engine_config=DIVERGES, client=ls)
    assert ls.model_version == v  # the previous version stays live ...
    new = [it for it in ls.stored if it["model_version"] == v and it["task"] in by_rank[4:]]
    assert [it["task"] for it in new] == by_rank[4:8]  # ... and its next 4 ranks are written, in order
    for it in new:  # each with the cycle's own prediction and queue place (what /predict answers)
        e = entries[str(it["task"])]
        assert it["score"] == e["score"] and it["result"][0]["value"]["choices"] == [e["label"]]
    head = ProjectStore(settings.model_dir, 1).state()["head"]
    assert head["version"] == v and head["written"] == 8 and head["unlabeled"] == 4 and head["refilled"] == 4

    # another failure with the head still half unlabeled writes nothing more
    n = len(ls.stored)
    with pytest.raises(CycleError):
        run_project_cycle(settings, 1, "t", engine_config=DIVERGES, client=ls)
    assert len(ls.stored) == n

    # a cycle that goes live writes a whole new head, and the refill record goes
    rep = run_project_cycle(settings, 1, "t", engine_config=ENGINE, client=ls)
    assert rep["live"] and ProjectStore(settings.model_dir, 1).state().get("head") is None


def test_labeled_tasks_are_skipped_and_a_task_already_predicted_counts_as_written(settings):
    ls = PlacingLS()
    v, entries, by_rank = _live_cycle(settings, ls)
    for tid in by_rank[:4]:
        _label(ls, tid)
    _label(ls, by_rank[4])  # labeled from the Data Manager meanwhile: not written
    ls.retrieve_predictions(settings, [by_rank[5]])  # opened: /predict gave it its place already
    assert len([it for it in ls.stored if it["task"] == by_rank[5] and it["model_version"] == v]) == 1
    placement.refill_head(settings, 1, ls)
    assert [t for t in _written(ls, v) if t in by_rank[4:]] == [by_rank[5], by_rank[6], by_rank[7], by_rank[8]]
    assert len([it for it in ls.stored if it["task"] == by_rank[5]]) == 1  # never doubled
    assert ProjectStore(settings.model_dir, 1).state()["head"]["written"] == 9


def test_nothing_is_written_for_a_changed_config_or_at_the_end_of_the_order(settings):
    ls = PlacingLS()
    v, _, by_rank = _live_cycle(settings, ls)
    for tid in by_rank[:4]:
        _label(ls, tid)
    cfg = ls.config
    ls.config = cfg.replace('value="b"', 'value="c"')
    assert "c" in ls.config
    out = placement.refill_head(settings, 1, ls)
    assert out["refilled"] == 0 and "config changed" in out["reason"] and len(_written(ls, v)) == 4
    ls.config = cfg
    ProjectStore(settings.model_dir, 1).update_state(head={"version": v, "written": 16})
    out = placement.refill_head(settings, 1, ls)
    assert out["refilled"] == 0 and "every ranked task" in out["reason"]


def test_a_damaged_head_record_falls_back_to_what_the_cycle_wrote(settings):
    ls = PlacingLS()
    v, _, by_rank = _live_cycle(settings, ls)
    for tid in by_rank[:4]:
        _label(ls, tid)
    ProjectStore(settings.model_dir, 1).update_state(head={"version": v, "written": "x", "refilled": -3})
    assert placement.refill_head(settings, 1, ls)["refilled"] == 4
    assert [t for t in _written(ls, v) if t in by_rank[4:]] == by_rank[4:8]
    assert ProjectStore(settings.model_dir, 1).state()["head"]["refilled"] == 4


class AwayLS(PlacingLS):
    """Label Studio goes away after the first cycle: every read fails."""
    away = False

    def get_project(self, pid):
        if self.away:
            raise LabelStudioError("GET /api/projects/1/: connection refused", None)
        return super().get_project(pid)


def test_a_refill_that_fails_never_hides_the_cycles_own_error(settings, caplog):
    ls = AwayLS()
    v, _, by_rank = _live_cycle(settings, ls)
    for tid in by_rank[:4]:
        _label(ls, tid)
    ls.away = True  # the cycle fails for it, and so does the refill after it
    with caplog.at_level(logging.WARNING), pytest.raises(CycleError, match="connection refused") as err:
        run_project_cycle(settings, 1, "t", engine_config=ENGINE, client=ls)
    assert err.value.retryable  # the cycle's own error, so the scheduler tries it again
    assert "written head was not checked" in caplog.text and len(_written(ls, v)) == 4


def test_the_dashboard_says_when_the_head_was_topped_up_and_when_the_order_is_used_up(settings, caplog):
    from ncalr_backend.service.dashboard import head_note

    ls = PlacingLS()
    v, _, by_rank = _live_cycle(settings, ls)
    store = ProjectStore(settings.model_dir, 1)
    assert head_note(store.state(), v) == ""  # nothing refilled: nothing to say
    for tid in by_rank[:4]:
        _label(ls, tid)
    placement.refill_head(settings, 1, ls)
    note = head_note(store.state(), v)
    assert "topped up: 4 more ranked tasks" in note and "ranks below 8" in note and "4 of the 4" in note
    assert head_note(store.state(), "ncalr-1-other") == ""  # another version is live now
    for tid in by_rank[4:]:  # every ranked task labeled: nothing left to serve in order
        _label(ls, tid)
    with caplog.at_level(logging.ERROR):
        placement.refill_head(settings, 1, ls)
    assert "is used up" in caplog.text
    assert "used up" in head_note(store.state(), v) and 'class="error head"' in head_note(store.state(), v)
    store.update_state(head={"version": v, "unlabeled": "<b>", "refilled": True})  # damaged: no markup, no crash
    assert head_note(store.state(), v) == ""


def _skip(ls, tid):
    t = next(t for t in ls.tasks if t["id"] == tid)
    t["annotations"] = [{"id": 7000 + tid, "was_cancelled": True, "updated_at": "2025", "result": []}]


def test_a_skipped_task_counts_as_used_and_a_check_keeps_the_refilled_total(settings):
    """Found by review: a head labeled half and skipped half was taken as half servable (Label Studio
    never serves a task again to whoever skipped it), and a check that wrote nothing erased the total."""
    ls = PlacingLS()
    v, _, by_rank = _live_cycle(settings, ls)
    _label(ls, by_rank[0])
    _label(ls, by_rank[1])
    _skip(ls, by_rank[2])
    _skip(ls, by_rank[3])
    _skip(ls, by_rank[5])  # in the next ranks: written (someone else may label it), not counted
    out = placement.refill_head(settings, 1, ls)
    assert out["refilled"] == 4 and [t for t in _written(ls, v) if t in by_rank[4:]] == by_rank[4:9]
    store = ProjectStore(settings.model_dir, 1)
    assert store.state()["head"]["refilled"] == 5 and store.state()["head"]["written"] == 9
    out = placement.refill_head(settings, 1, ls)  # 4 servable of 4: nothing to write, the total stays
    assert out["refilled"] == 0 and store.state()["head"]["refilled"] == 5


def test_nothing_is_written_while_label_studio_serves_another_version(settings):
    ls = PlacingLS()
    v, _, by_rank = _live_cycle(settings, ls)
    for tid in by_rank[:4]:
        _label(ls, tid)
    ls.model_version = ""  # "Use predictions to prelabel tasks" turned off
    out = placement.refill_head(settings, 1, ls)
    assert out["refilled"] == 0 and "prelabel" in out["reason"] and len(_written(ls, v)) == 4


def test_damaged_task_keys_are_left_out_and_no_task_is_placed_twice(settings):
    import json

    ls = PlacingLS()
    v, entries, by_rank = _live_cycle(settings, ls)
    for tid in by_rank[:4]:
        _label(ls, tid)
    latest = ProjectStore(settings.model_dir, 1).latest()
    path = latest["path"] / "predictions.json"
    doc = read_json(path)
    first = str(by_rank[4])
    doc["tasks"]["0" + first] = dict(entries[first])  # the same task again under a non-canonical key
    doc["tasks"]["²"] = dict(entries[first])  # isdigit() but no int()
    path.write_text(json.dumps(doc))
    out = placement.refill_head(settings, 1, ls)
    assert out["refilled"] == 4 and [t for t in _written(ls, v) if t in by_rank[4:]] == by_rank[4:8]


class HangingLS(PlacingLS):
    """Label Studio stops answering after the first cycle; each read waits ``timeout`` seconds."""
    hang = False
    timeout = 60.0
    waited: list = []

    def list_ml_backends(self, pid):
        if self.hang:
            self.waited.append(self.timeout)
            raise LabelStudioError("GET /api/ml/: Read timed out.", None)
        return super().list_ml_backends(pid)


def test_a_refill_waits_less_per_request_and_asks_whether_to_stop(settings):
    ls = HangingLS()
    v, _, by_rank = _live_cycle(settings, ls)
    for tid in by_rank[:4]:
        _label(ls, tid)
    ls.hang = True
    with pytest.raises(LabelStudioError):
        placement.refill_head(settings, 1, ls)
    assert ls.waited == [placement.REFILL_HTTP_TIMEOUT_S] and ls.timeout == 60.0  # and restored after
    ls.hang = False
    out = placement.refill_head(settings, 1, ls, should_stop=lambda: True)
    assert out["refilled"] == 0 and "asked to stop" in out["reason"] and len(_written(ls, v)) == 4


def test_a_version_that_went_live_in_a_failed_cycle_clears_the_old_head(settings, monkeypatch):
    """Found by review: a cycle that switched Label Studio and then failed (a full disk at its
    commit) left the previous version's refill record in state.json, shown by /status."""
    from ncalr_backend.service import cycle as cyc

    ls = PlacingLS()
    v, _, by_rank = _live_cycle(settings, ls)
    for tid in by_rank[:4]:
        _label(ls, tid)
    placement.refill_head(settings, 1, ls)
    store = ProjectStore(settings.model_dir, 1)
    assert store.state()["head"]["version"] == v

    def full_disk(*a, **k):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(cyc, "commit", full_disk)
    with pytest.raises(CycleError) as err:
        run_project_cycle(settings, 1, "t", engine_config=ENGINE, client=ls)
    assert err.value.live and ls.model_version != v and store.latest()["model_version"] == ls.model_version
    assert store.state().get("head") is None


def test_status_shows_the_head_of_the_live_version_only(app_and_dir):
    from ncalr_backend.atomic import atomic_write_json

    app, md = app_and_dir
    st = ProjectStore(md, 4)
    (st.root / "cycles" / "0001").mkdir(parents=True)
    atomic_write_json(st.root / "cycles" / "0001" / "report.json", {"cycle": 1, "status": "completed"})
    atomic_write_json(st.root / "latest.json", {"cycle": 1, "dir": "cycles/0001", "model_version": "v1"})
    c = app.test_client()
    st.update_state(head={"version": "v0", "written": 8, "refilled": 4})
    assert c.get("/status?project=4", headers=AUTH).get_json()["head"] is None  # an older version's
    st.update_state(head={"version": "v1", "written": 8, "refilled": 4})
    assert c.get("/status?project=4", headers=AUTH).get_json()["head"]["written"] == 8
