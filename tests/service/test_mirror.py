"""The task mirror (mirror.py): a delta read picks up every change, deletions are found, a mirror in
doubt is read again in full, webhook ids are only hints. Against the FakeLS of test_cycle, whose
``updated_at`` moves exactly when Label Studio 1.23.2's does (the integration test checks the real
one)."""

from __future__ import annotations

import numpy as np
import pytest

from ncalr_backend.service.mirror import MAX_HINTS, TaskMirror, hinted_task_ids, trim_task
from tests.service.test_cycle import FakeLS


def _ann(i, label):
    return {"id": 1000 + i, "was_cancelled": False, "updated_at": f"2025-{i}", "completed_by": 1,
            "result": [{"from_name": "digit", "to_name": "image", "type": "choices", "value": {"choices": [label]}}]}


def _labels(mirror):
    return {t["id"]: [a["result"][0]["value"]["choices"][0] for a in t["annotations"]] for t in mirror.tasks()}


def _sync(mirror, ls):
    return mirror.sync(ls, 1, len(ls.tasks), page_size=100)


def test_first_sync_is_full_then_deltas_read_only_what_changed(tmp_path):
    ls = FakeLS(n=30, n_labeled=5)
    m = TaskMirror(tmp_path)
    rep = _sync(m, ls)
    assert (rep.mode, rep.reason, rep.tasks) == ("full", "no mirror yet", 31)
    rep = _sync(m, ls)  # nothing changed: a delta that reads (almost) nothing
    assert rep.mode == "delta" and rep.changed <= 1 and rep.tasks == 31
    assert _labels(m) == {t["id"]: [a["result"][0]["value"]["choices"][0] for a in t["annotations"]] for t in ls.tasks}

    ls.tasks[10]["annotations"] = [_ann(11, "a")]  # a new annotation
    ls.tasks[2]["annotations"][0]["result"][0]["value"]["choices"] = ["b"]  # an updated one (was "a")
    ls.tasks[3]["annotations"] = []  # a deleted one
    rep = _sync(m, ls)
    assert rep.mode == "delta" and 3 <= rep.changed <= 4
    got = _labels(m)
    assert got[11] == ["a"] and got[3] == ["b"] and got[4] == []
    assert got == {t["id"]: [a["result"][0]["value"]["choices"][0] for a in t["annotations"]] for t in ls.tasks}


def test_created_and_deleted_tasks_are_found_with_and_without_webhook_hints(tmp_path):
    ls = FakeLS(n=20, n_labeled=4)
    m = TaskMirror(tmp_path)
    _sync(m, ls)
    ls.tasks.append({"id": 50, "data": {"image": "/data/upload/1/50.png"}, "annotations": []})
    ls.delete_task(7)  # deleted, and a webhook says so
    m.mark([7])
    rep = _sync(m, ls)
    assert rep.mode == "delta" and rep.removed == 1 and rep.tasks == len(ls.tasks)
    ids = {t["id"] for t in m.tasks()}
    assert 50 in ids and 7 not in ids and m.state()["hints"] == 0
    ls.delete_task(8)  # deleted, no webhook: the task count disagrees, the ids are listed
    rep = _sync(m, ls)
    assert 8 not in {t["id"] for t in m.tasks()} and rep.removed == 1 and "ids listed" in rep.reason
    assert rep.tasks == len(ls.tasks)


def test_count_mismatch_that_listing_cannot_explain_reads_everything(tmp_path):
    ls = FakeLS(n=10, n_labeled=2)
    m = TaskMirror(tmp_path)
    _sync(m, ls)
    listed = ls.task_ids
    ls.task_ids = lambda pid, page_size=1000: listed(pid) + [9001, 9002]  # ids it then cannot give
    rep = m.sync(ls, 1, len(ls.tasks) + 2, page_size=100)
    assert rep.mode == "full" and "Label Studio listed" in rep.reason


def test_a_task_created_while_the_mirror_syncs_costs_no_full_read(tmp_path):
    """Found by review: the count was read before the sync, so a task created (an import, a storage
    sync) between that read and the delta made the counts differ after listing the ids too, and the
    whole project was read again, every cycle while imports ran (minutes at 50,000 tasks)."""
    ls = FakeLS(n=10, n_labeled=2)
    m = TaskMirror(tmp_path)
    _sync(m, ls)
    count = len(ls.tasks)  # what get_project said
    ls.tasks.append({"id": 60, "data": {"image": "/data/upload/1/60.png"}, "annotations": []})  # created since
    rep = m.sync(ls, 1, count, page_size=100)
    assert rep.mode == "delta" and "ids listed" in rep.reason and 60 in {t["id"] for t in m.tasks()}


def test_a_renamed_data_key_and_the_daily_full_read(tmp_path, monkeypatch):
    """Found by review: Label Studio serves a storage-synced task's data under the labeling config's
    first key, recomputed when the config is saved, without moving the task's updated_at: after
    renaming $image to $img the mirror kept {"image": ...} and every such task dropped out. And the
    labels bulk API and "Propagate Annotations" change annotations without moving updated_at: a
    full read once a day picks those up."""
    from ncalr_backend.service import mirror as mirror_mod

    ls = FakeLS(n=6, n_labeled=2)
    m = TaskMirror(tmp_path)
    assert m.sync(ls, 1, len(ls.tasks), data_key="image").mode == "full"
    assert m.sync(ls, 1, len(ls.tasks), data_key="image").mode == "delta"
    rep = m.sync(ls, 1, len(ls.tasks), data_key="img")
    assert rep.mode == "full" and "data key changed (image -> img)" in rep.reason
    assert m.sync(ls, 1, len(ls.tasks), data_key="img").mode == "delta"
    ls.tasks[0]["annotations"][0]["result"][0]["value"]["choices"] = ["zzz"]  # changed, updated_at not moved
    stamp = ls.tasks[0].get("updated_at")
    ls._touch = lambda: None
    assert m.sync(ls, 1, len(ls.tasks)).mode == "delta" and _labels(m)[1] != ["zzz"] and ls.tasks[0]["updated_at"] == stamp
    monkeypatch.setattr(mirror_mod, "FULL_READ_EVERY_S", 0.0)
    rep = m.sync(ls, 1, len(ls.tasks))
    assert rep.mode == "full" and "daily" in rep.reason and _labels(m)[1] == ["zzz"]


def test_duplicates_of_a_storage_task_are_read_again_when_one_is_removed(tmp_path):
    """Found by review: Label Studio's API serves a cloud-storage task's image as
    /tasks/<id>/resolve/?fileuri=..., with the task's own id in it, so two duplicates of one bucket
    object never looked the same and "Remove Duplicated Tasks" lost the annotations it moved."""
    ls = FakeLS(n=4, n_labeled=0)
    for t in ls.tasks[:2]:
        t["data"] = {"image": f"/tasks/{t['id']}/resolve/?fileuri=czM6Ly9idWNrZXQvYS5wbmc="}
    m = TaskMirror(tmp_path)
    _sync(m, ls)
    ls.tasks[0]["annotations"] = [_ann(1, "a")]  # moved onto the kept task 1, updated_at not moved
    ls._touch = lambda: None
    ls.delete_task(2)
    m.mark([2])
    _sync(m, ls)
    assert _labels(m)[1] == ["a"] and 2 not in _labels(m)


def test_a_mirror_set_aside_after_the_sync_never_reads_as_a_project_without_tasks(tmp_path):
    """Found by review: another instance set the mirror aside after this one's sync; ``tasks()`` then
    opened a new, empty file and returned [] (a snapshot of nothing) instead of MirrorReset."""
    from ncalr_backend.service.mirror import MirrorReset

    ls = FakeLS(n=5, n_labeled=1)
    m = TaskMirror(tmp_path)
    _sync(m, ls)
    other = TaskMirror(tmp_path)
    other.state()  # opened: its identity is known
    other.set_aside(RuntimeError("database disk image is malformed"))
    with pytest.raises(MirrorReset):
        m.tasks()


def test_doubt_and_format_change_force_a_full_read(tmp_path):
    ls = FakeLS(n=10, n_labeled=2)
    m = TaskMirror(tmp_path)
    _sync(m, ls)
    m.doubt("recovered after an interrupted cycle")
    rep = _sync(m, ls)
    assert rep.mode == "full" and "recovered" in rep.reason
    assert _sync(m, ls).mode == "delta"  # the doubt is cleared by the full read
    assert m.state()["full_reads"] == 2


def test_a_flood_of_hints_is_one_full_read_not_thousands_of_lookups(tmp_path):
    ls = FakeLS(n=5, n_labeled=1)
    m = TaskMirror(tmp_path)
    _sync(m, ls)
    m.mark(range(1, MAX_HINTS + 10))
    rep = _sync(m, ls)
    assert rep.mode == "full" and "hinted" in rep.reason and m.state()["hints"] == 0


def test_hints_accept_only_positive_integer_ids():
    assert hinted_task_ids("TASKS_CREATED", {"tasks": [{"id": 3}, {"id": "4"}, {"id": True}, {"id": -1}, 5]}) == [3, 5]
    assert hinted_task_ids("ANNOTATION_CREATED", {"task": {"id": 9}, "annotation": {"task": 9}}) == [9]
    assert hinted_task_ids("ANNOTATION_UPDATED", {"annotation": {"id": 1, "task": 12}}) == [12]
    assert hinted_task_ids("ANNOTATIONS_DELETED", {"annotations": [{"id": 1, "task": 4}, {"id": 2, "task": {"id": 6}},
                                                                   "x", {"id": 3}]}) == [4, 6]
    assert hinted_task_ids("ANNOTATIONS_DELETED", {"annotations": "everything"}) == []
    assert hinted_task_ids("TASKS_DELETED", {"tasks": None}) == []
    assert hinted_task_ids("PROJECT_UPDATED", {"tasks": [{"id": 1}]}) == []


def test_trim_keeps_what_the_snapshot_reads():
    t = {"id": 1, "data": {"image": "u"}, "annotations": [{**_ann(1, "a"), "lead_time": 3.0, "draft_created_at": 1}],
         "predictions": [{"result": []}] * 5, "drafts": [], "updated_at": "x", "comment_authors": []}
    out = trim_task(t)
    assert set(out) == {"id", "data", "annotations", "updated_at"}
    assert set(out["annotations"][0]) == {"id", "result", "was_cancelled", "completed_by", "updated_at"}


@pytest.mark.parametrize("n", [0, 1, 57])
def test_mirror_round_trips_tasks_in_id_order(tmp_path, n):
    ls = FakeLS(n=n, n_labeled=min(n, 3))
    m = TaskMirror(tmp_path)
    _sync(m, ls)
    ids = [t["id"] for t in m.tasks()]
    assert ids == sorted(t["id"] for t in ls.tasks) and len(np.unique(ids)) == len(ids)


def _damage(m, how):
    if how == "not a database":
        for f in m.root.glob("mirror.sqlite*"):
            f.unlink()
        m.path.write_bytes(b"this is no SQLite file " * 200)
    else:  # pages in the middle overwritten: the header is fine, the b-trees are not
        size = m.path.stat().st_size
        with open(m.path, "r+b") as f:
            f.seek(4096)
            f.write(np.random.default_rng(0).integers(0, 256, size - 4096, dtype=np.uint8).tobytes())


@pytest.mark.parametrize("how", ["not a database", "malformed"])
def test_a_damaged_mirror_is_set_aside_and_read_again_in_full(tmp_path, how):
    """A damaged mirror.sqlite (a full disk mid-write, a bad restore of MODEL_DIR) used to fail every
    cycle of its project and make every webhook that names a task a 500, its annotations uncounted."""
    ls = FakeLS(n=300, n_labeled=40)
    m = TaskMirror(tmp_path)
    _sync(m, ls)
    m.store_pixels((1, 2, 2), [(1, "u", np.zeros((1, 2, 2), np.uint8))])
    _damage(m, how)
    assert TaskMirror(tmp_path).mark([3, 4]) == 2  # a webhook's hint: no error, kept in a new mirror
    assert (tmp_path / "mirror.sqlite.corrupt").exists()  # the damaged file, for a post-mortem
    rep = _sync(TaskMirror(tmp_path), ls)
    assert rep.mode == "full" and rep.tasks == len(ls.tasks)
    assert _labels(TaskMirror(tmp_path)) == {
        t["id"]: [a["result"][0]["value"]["choices"][0] for a in t["annotations"]] for t in ls.tasks}
    assert _sync(TaskMirror(tmp_path), ls).mode == "delta"


def test_a_mirror_damaged_before_the_sync_heals_within_it_and_after_it_reads_raise(tmp_path):
    from ncalr_backend.service.mirror import MirrorReset

    ls = FakeLS(n=300, n_labeled=40)
    m = TaskMirror(tmp_path)
    _sync(m, ls)
    _damage(m, "not a database")
    rep = _sync(m, ls)  # the sync itself meets the damage: set aside, a full read into a new one
    assert rep.mode == "full" and len(m.tasks()) == len(ls.tasks)
    _damage(m, "not a database")
    with pytest.raises(MirrorReset, match="sync again"):  # never an empty project passed off as real
        m.tasks()
    assert _sync(m, ls).mode == "full" and len(m.tasks()) == len(ls.tasks)
    assert list(m.iter_pixels((1, 2, 2))) == []


def test_only_damage_is_set_aside_and_never_a_mirror_another_process_already_replaced(tmp_path):
    import sqlite3

    from ncalr_backend.service.mirror import is_corrupt

    locked = sqlite3.OperationalError("database is locked")
    locked.sqlite_errorname = "SQLITE_BUSY"
    assert not is_corrupt(locked) and not is_corrupt(ValueError("x"))
    ls = FakeLS(n=10, n_labeled=2)
    slow, quick = TaskMirror(tmp_path), TaskMirror(tmp_path)
    _sync(slow, ls)
    _damage(slow, "not a database")
    try:
        with slow._db():
            pass
    except sqlite3.DatabaseError as exc:
        found = exc
    quick.mark([1])  # another finder sets the damaged file aside and starts a new mirror
    slow.set_aside(found)  # late: the file it found damaged is gone; the new one must stay
    assert TaskMirror(tmp_path).state()["hints"] == 1
    assert len(list(tmp_path.glob("mirror.sqlite.corrupt"))) == 1


@pytest.mark.parametrize("first", [True, False])
def test_a_stop_during_the_task_reads_leaves_the_mirror_as_it_was(tmp_path, first):
    """Found by review: the task pages never asked whether to stop, so a deploy during a full read
    (about 24 s at 50,000 tasks) outlasted gunicorn's grace and counted as a crash. Now the read
    stops at the next task (``Interrupted``) and nothing of it is written."""
    from ncalr_backend.engine import Interrupted
    ls = FakeLS(n=30, n_labeled=5)
    m = TaskMirror(tmp_path)
    if not first:
        _sync(m, ls)
        ls.tasks[10]["annotations"] = [_ann(11, "a")]
    def kept():
        st = m.state()
        return (st.get("tasks") or 0, st.get("watermark"), st.get("full_reads") or 0, _labels(m) if st.get("tasks") else {})
    before = kept()
    asked = []

    def stop():
        asked.append(1)
        return len(asked) > k  # k tasks read, then the backend is stopping
    k = 3 if first else 0  # a delta reads one changed task (and the overlap's)
    with pytest.raises(Interrupted, match=f"while reading tasks \\({k} read\\)"):
        m.sync(ls, 1, len(ls.tasks), page_size=2, should_stop=stop)
    assert kept() == before  # no watermark moved, no task written
    rep = _sync(m, ls)  # the next cycle reads what the stopped one did not
    assert rep.mode == ("full" if first else "delta")
    assert _labels(m)[11] == (["a"] if not first else [])
