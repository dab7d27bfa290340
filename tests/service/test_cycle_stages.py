"""Each stage of a cycle alone: snapshot -> (engine) -> queue predictions -> write-back -> commit."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from ncalr_backend.service.cycle import CycleRun
from ncalr_backend.service.errors import CycleError
from ncalr_backend.service.labelconfig import parse_label_config
from ncalr_backend.service.predictions import queue_predictions
from ncalr_backend.service.snapshot import take_snapshot
from ncalr_backend.service.store import ProjectStore
from ncalr_backend.service.writeback import write_back
from tests.service.test_cycle import CFG, MULTI_CFG, FakeLS, settings  # noqa: F401  (the fixture)


def test_snapshot_splits_labeled_pool_and_failures(settings):
    ls = FakeLS(n=10, n_labeled=4)
    ls.tasks[5]["annotations"] = [{"id": 7, "was_cancelled": True, "result": []}]  # skipped: stays in the pool
    snap = take_snapshot(ls, settings, 1)
    assert snap.lab_ids == [1, 2, 3, 4] and snap.pool_ids == [5, 6, 7, 8, 9, 10]
    assert snap.y_lab.tolist() == [0, 1, 0, 1]  # "a" (class 0) for odd ids, "b" (class 1) for even
    assert snap.x_lab.shape == (4, 1, 8, 8) and snap.x_pool.shape == (6, 1, 8, 8)
    assert [f["task"] for f in snap.image_failures] == [999] and "elsewhere.test" in snap.image_failures[0]["reason"]
    # images decode to what was served: odd ids dark (40), even ids light (220)
    assert snap.x_lab[0].mean() < snap.x_lab[1].mean()
    rep = snap.report()
    assert (rep["num_tasks"], rep["num_labeled"], rep["num_pool"]) == (11, 4, 6)
    assert rep["class_counts"] == {"a": 2, "b": 2}
    assert set(snap.timings) == {"fetch_tasks_s", "fetch_images_s", "fetch_s"}


def _res(ranking, probs, sets=None, multilabel=False):
    probs = np.asarray(probs, dtype=np.float32)
    conf = probs.max(1) if sets is None or sets.shape != probs.shape else (probs * sets).sum(1)
    return SimpleNamespace(ranking=np.asarray(ranking), probs=probs, confidence=conf, pred_sets=sets,
                           multilabel=multilabel)


def test_queue_predictions_score_is_rank_over_m():
    cfg = parse_label_config(CFG)
    res = _res([2, 0, 1], [[0.9, 0.1], [0.3, 0.7], [0.55, 0.45]])
    qp = queue_predictions(res, cfg, [11, 12, 13], "v1")
    assert {t: (e["rank"], e["score"]) for t, e in qp.entries.items()} == {
        "11": (1, 1 / 3), "12": (2, 2 / 3), "13": (0, 0.0)}
    assert [it["task"] for it in qp.items] == [11, 12, 13]
    assert [it["result"][0]["value"]["choices"] for it in qp.items] == [["a"], ["b"], ["a"]]
    assert qp.items[1]["result"][0]["score"] == pytest.approx(0.7) and qp.items[2]["score"] == 0.0
    assert all(it["model_version"] == "v1" for it in qp.items) and qp.predicted_set_sizes is None


def test_queue_predictions_refuse_what_they_cannot_trust():
    cfg = parse_label_config(CFG)
    with pytest.raises(CycleError, match="not a permutation"):
        queue_predictions(_res([0, 0, 1], [[0.9, 0.1]] * 3), cfg, [1, 2, 3], "v")
    ml = parse_label_config(MULTI_CFG)
    with pytest.raises(CycleError, match="did not train in multi-label mode"):
        queue_predictions(_res([0, 1], [[0.5, 0.3, 0.2]] * 2), ml, [1, 2], "v")
    with pytest.raises(CycleError, match="shape"):
        queue_predictions(_res([0, 1], [[0.5, 0.3, 0.2]] * 2, sets=np.ones((2, 2), bool), multilabel=True),
                          ml, [1, 2], "v")
    sets = np.array([[1, 1, 0], [0, 0, 1]], bool)
    qp = queue_predictions(_res([1, 0], [[0.5, 0.4, 0.1], [0.2, 0.2, 0.6]], sets=sets, multilabel=True), ml, [1, 2], "v")
    assert qp.items[0]["result"][0]["value"]["choices"] == ["0", "1"] and qp.predicted_set_sizes == {"1": 1, "2": 1}


def test_write_back_switches_only_after_every_prediction_is_listed(settings):
    items = [{"task": i, "result": [], "score": 0.0, "model_version": "v9"} for i in range(1, 6)]
    ls = FakeLS()
    wb = write_back(ls, settings, 1, "v9", items)
    assert (wb.sent, wb.created, wb.live) == (5, 5, True)
    assert ls.patches == [{"model_version": "v9", "sampling": "Uncertainty sampling"}]
    for bad in (FakeLS(drop=1), FakeLS(silent_drop=1)):
        with pytest.raises(CycleError, match="NOT switched"):
            write_back(bad, settings, 1, "v9", items)
        assert bad.patches == []
    empty = FakeLS()
    assert write_back(empty, settings, 1, "v9", []).live is False and empty.patches == []


class _CascadingLS(FakeLS):
    """Label Studio deletes a task's predictions with the task."""

    def delete_task(self, tid):
        super().delete_task(tid)
        self.stored = [it for it in self.stored if it["task"] != tid]


def test_a_task_deleted_right_after_its_prediction_went_in_is_skipped_not_fatal(settings):
    """Found by review (2026-12-05): a task deleted in the Data Manager after its chunk was imported
    took its prediction with it, the listing check came up one short and raised a non-retryable
    CycleError, throwing the trained cycle away. The written tasks are read again: the deleted one is
    skipped (reported), and only predictions of tasks that still exist are required."""
    items = [{"task": i, "result": [], "score": 0.0, "model_version": "v9"} for i in range(1, 6)]
    def deleting(ls, task):  # each chunk's import, then the task deleted in Label Studio
        real = ls.import_prediction_chunk

        def import_then_delete(pid, chunk):
            n = real(pid, chunk)
            ls.delete_task(task)
            return n
        ls.import_prediction_chunk = import_then_delete
        return ls

    ls = deleting(_CascadingLS(), 2)
    wb = write_back(ls, settings, 1, "v9", items)
    assert wb.live and wb.skipped_deleted == [2] and wb.report()["skipped_deleted_tasks"] == [2]
    assert ls.patches == [{"model_version": "v9", "sampling": "Uncertainty sampling"}]
    # a prediction of a task that still exists is missing as well: not switched, and the message says so
    bad = deleting(_CascadingLS(silent_drop=1), 5)
    with pytest.raises(CycleError, match=r"lists 3 predictions under v9, expected 5 \(1 of their tasks were "
                                         r"deleted since, so 4 still expected\); the project was NOT switched"):
        write_back(bad, settings, 1, "v9", items)
    assert bad.patches == []


def test_cycle_run_bookkeeping_numbers_and_marks_the_cycle(settings):
    run = CycleRun.begin(settings, 3, "test", triggered_at=123.0)
    st = ProjectStore(settings.model_dir, 3)
    assert run.cycle == 1 and run.version.startswith("ncalr-3-c0001-") and run.work.is_dir()
    assert st.state()["in_progress"]["model_version"] == run.version and run.report["triggered_at"] == 123.0
    assert CycleRun.begin(settings, 3, "again", None).cycle == 2  # started cycles are never renumbered
