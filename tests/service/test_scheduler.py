"""The scheduler: coalescing, the annotation threshold, failures, crash recovery."""

from __future__ import annotations

import threading
import time

from ncalr_backend.service.scheduler import EmbeddedScheduler
from ncalr_backend.service.settings import Settings
from ncalr_backend.service.store import ProjectStore


def _held_cycle(hold=lambda pid: True):
    """(cycle_fn, gate, started, runs): a cycle that records its run and, for the projects ``hold``
    names, signals ``started`` and waits for ``gate``."""
    gate, started, runs = threading.Event(), threading.Event(), []

    def cycle(settings, pid, reason, t, **kw):
        runs.append((pid, reason))
        if hold(pid):
            started.set()
            gate.wait(10)
    return cycle, gate, started, runs


def test_a_hundred_requests_during_a_cycle_give_exactly_one_follow_up(tmp_path):
    cycle, gate, started, runs = _held_cycle()

    s = Settings.from_env({"MODEL_DIR": str(tmp_path), "TRAIN_TRIGGER_MIN": "5"})
    sch = EmbeddedScheduler(s, cycle_fn=cycle)
    sch.request_cycle(1, "START_TRAINING")
    assert started.wait(5)
    outs = [sch.request_cycle(1, "again") for _ in range(50)]
    outs += [sch.count_annotations(1, 1, 10) for _ in range(50)]  # crosses the threshold 10 times
    assert outs[0]["queued"] and all(o["coalesced"] for o in outs[1:50])
    assert sch.status(1)["running"] and sch.status(1)["waiting"]
    sch.request_cycle(2, "other project")  # another project waits independently
    gate.set()
    assert sch.wait_idle(10)
    assert runs == [(1, "START_TRAINING"), (1, "again"), (2, "other project")]
    assert sch.status(1)["cycles_run"] == 2


def test_threshold_counts_annotations_and_resets(tmp_path):
    runs = []
    s = Settings.from_env({"MODEL_DIR": str(tmp_path), "TRAIN_TRIGGER_MIN": "3", "TRAIN_TRIGGER_FRACTION": "0.1"})
    sch = EmbeddedScheduler(s, cycle_fn=lambda *a, **kw: runs.append(a[2]))
    assert sch.count_annotations(7, 1, 50)["threshold"] == 5
    for _ in range(3):
        assert sch.count_annotations(7, 1, 50)["cycle"] is None
    out = sch.count_annotations(7, 1, 50)
    assert out["cycle"]["queued"] and sch.wait_idle(5) and len(runs) == 1
    assert ProjectStore(tmp_path, 7).state()["new_annotations"] == 0
    assert sch.count_annotations(7, 4, None)["cycle"] is None  # threshold remembered: 4 < 5


def test_failed_cycle_does_not_stop_the_worker(tmp_path):
    runs = []

    def cycle(settings, pid, reason, t, **kw):
        runs.append(pid)
        if pid == 1:
            raise RuntimeError("boom")

    sch = EmbeddedScheduler(Settings.from_env({"MODEL_DIR": str(tmp_path)}), cycle_fn=cycle)
    sch.request_cycle(1, "x")
    sch.request_cycle(2, "y")
    assert sch.wait_idle(5) and runs == [1, 2]
    assert sch.status(1)["cycles_failed"] == 1 and sch.status(2)["cycles_run"] == 1


def test_recover_reruns_interrupted_and_waiting_cycles(tmp_path):
    st = ProjectStore(tmp_path, 3)
    st.update_state(in_progress={"cycle": 4}, cycles_started=4)
    work = st.new_workdir(4)
    (work / "model.pt").write_bytes(b"half")
    ProjectStore(tmp_path, 5).update_state(pending={"reason": "x", "triggered_at": 1.0})
    ProjectStore(tmp_path, 6).update_state(in_progress=None)
    runs = []
    sch = EmbeddedScheduler(Settings.from_env({"MODEL_DIR": str(tmp_path)}),
                            cycle_fn=lambda s, pid, reason, t, **kw: runs.append((pid, reason)))
    assert sorted(sch.recover()) == [3, 5]
    assert sch.wait_idle(5)
    assert sorted(runs) == [(3, "recovered"), (5, "recovered")]
    assert not work.exists() and st.state()["in_progress"] is None
    assert st.next_cycle_number() == 5  # never reuses a started cycle's number


def test_a_failure_that_may_pass_is_retried_with_backoff_and_its_trigger_kept(tmp_path):
    from ncalr_backend.service.errors import CycleError
    s = Settings.from_env({"MODEL_DIR": str(tmp_path), "CYCLE_RETRY_DELAYS": "0.2,0.4"})
    runs = []

    def cycle(settings, pid, reason, t, **kw):
        runs.append((time.time(), reason))
        if len(runs) < 3:
            raise CycleError("Label Studio not reachable", retryable=True)

    sch = EmbeddedScheduler(s, cycle_fn=cycle)
    sch.request_cycle(5, "ten annotations")
    time.sleep(0.1)
    assert ProjectStore(s.model_dir, 5).state()["pending"]["attempt"] == 1  # kept while waiting to retry
    assert sch.wait_idle(10)
    assert [r for _, r in runs] == ["ten annotations"] * 3
    gaps = [b[0] - a[0] for a, b in zip(runs, runs[1:])]
    assert gaps[0] >= 0.2 and gaps[1] >= 0.4  # backoff
    assert ProjectStore(s.model_dir, 5).state()["pending"] is None
    st = sch.status(5)
    assert st["cycles_run"] == 1 and st["cycles_failed"] == 2


def test_a_full_disk_never_ends_the_retries_or_strands_a_request(tmp_path, monkeypatch):
    """Found by review: on a full disk the retry's first write (state.json) raised outside the cycle
    and the retries ended without a word; a request whose state write failed stayed in memory
    without waking the worker, and every later request was folded into it. The cycle's own
    failure on the full disk is retryable (cycle.py); the scheduler's notes are best effort."""
    import errno

    from ncalr_backend.service.errors import CycleError
    s = Settings.from_env({"MODEL_DIR": str(tmp_path), "CYCLE_RETRY_DELAYS": ",".join(["0.2"] * 10)})
    full = {"on": True}
    real = ProjectStore.update_state

    def update_state(self, **kw):
        if full["on"]:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, **kw)

    monkeypatch.setattr(ProjectStore, "update_state", update_state)
    runs = []

    def cycle(settings, pid, reason, t, **kw):
        runs.append(reason)
        if full["on"]:
            raise CycleError("cannot write the cycle: No space left on device", retryable=True)

    sch = EmbeddedScheduler(s, cycle_fn=cycle)
    assert sch.request_cycle(5, "ten annotations")["queued"]  # its state write failed: it still runs
    deadline = time.time() + 10
    while len(runs) < 2 and time.time() < deadline:
        time.sleep(0.01)
    assert len(runs) >= 2  # tried, then retried, although every state write failed
    full["on"] = False  # space freed
    assert sch.wait_idle(10)
    assert runs[-1] == "ten annotations" and sch.status(5)["cycles_run"] == 1
    assert ProjectStore(s.model_dir, 5).state()["pending"] is None


def test_a_failure_that_will_not_pass_is_not_retried(tmp_path):
    from ncalr_backend.service.errors import CycleError
    s = Settings.from_env({"MODEL_DIR": str(tmp_path), "CYCLE_RETRY_DELAYS": "0.05"})
    runs = []

    def cycle(settings, pid, reason, t, **kw):
        runs.append(reason)
        raise CycleError("no labeled task with a readable image yet", retryable=False)

    sch = EmbeddedScheduler(s, cycle_fn=cycle)
    sch.request_cycle(5, "manual")
    assert sch.wait_idle(5) and runs == ["manual"]
    time.sleep(0.2)
    assert runs == ["manual"]


def test_stop_interrupts_the_running_cycle_and_keeps_it_for_the_next_start(tmp_path):
    from ncalr_backend.service.errors import CycleError
    s = Settings.from_env({"MODEL_DIR": str(tmp_path)})
    started = threading.Event()

    def cycle(settings, pid, reason, t, should_stop=None, **kw):
        started.set()
        while not should_stop():
            time.sleep(0.01)
        raise CycleError("the backend is stopping", interrupted=True)

    sch = EmbeddedScheduler(s, cycle_fn=cycle)
    sch.request_cycle(3, "manual")
    assert started.wait(5)
    assert sch.stop(timeout=5)  # the worker thread ended
    assert ProjectStore(s.model_dir, 3).state()["pending"]["reason"] == "manual"  # re-run on start
    again = []
    sch2 = EmbeddedScheduler(s, cycle_fn=lambda *a, **kw: again.append(a[2]))
    assert sch2.recover() == [3] and sch2.wait_idle(5) and again == ["recovered"]


def test_one_projects_broken_files_do_not_stop_the_others_recovery(tmp_path, monkeypatch):
    """Found by review: an unreadable mirror.sqlite in project 2 made recover() raise, and project 4's
    interrupted cycle was never run again. A damaged mirror is now set aside and built again
    (mirror.py), so both recover; any other error in one project's files still stops only that
    project."""
    from ncalr_backend.service import scheduler
    from ncalr_backend.service.mirror import TaskMirror

    broken = ProjectStore(tmp_path, 2)
    broken.update_state(in_progress={"cycle": 1})
    TaskMirror(broken.root).path.write_bytes(b"this is not a database" * 100)
    ProjectStore(tmp_path, 4).update_state(in_progress={"cycle": 2})
    runs = []
    sch = EmbeddedScheduler(Settings.from_env({"MODEL_DIR": str(tmp_path)}),
                            cycle_fn=lambda s, pid, reason, t, **kw: runs.append((pid, reason)))
    assert sch.recover() == [2, 4]
    assert sch.wait_idle(5) and sorted(runs) == [(2, "recovered"), (4, "recovered")]
    assert (broken.root / "mirror.sqlite.corrupt").exists()

    real = scheduler.abandon_in_progress

    def unreadable(st, s, **kw):
        if st.project_id == 2:
            raise OSError("Input/output error")
        return real(st, s, **kw)

    monkeypatch.setattr(scheduler, "abandon_in_progress", unreadable)
    broken.update_state(in_progress={"cycle": 3})
    ProjectStore(tmp_path, 4).update_state(in_progress={"cycle": 4})
    runs.clear()
    assert sch.recover() == [4]
    assert sch.wait_idle(5) and runs == [(4, "recovered")]


def test_a_cycle_that_kills_its_process_every_time_is_not_re_run_for_ever(tmp_path):
    """Found by review: a cycle that dies with its process (out of memory) was re-run at every start
    with attempt 0. After MAX_CRASHES deaths in a row recovery stops and says why; a cycle stopped by
    a shutdown (interrupted at a batch) is not a crash; a finished cycle resets the count."""
    from ncalr_backend.service.recovery import MAX_CRASHES

    st = ProjectStore(tmp_path, 7)
    runs = []
    sch = EmbeddedScheduler(Settings.from_env({"MODEL_DIR": str(tmp_path)}),
                            cycle_fn=lambda s, pid, reason, t, **kw: runs.append(pid))
    for i in range(MAX_CRASHES - 1):  # died twice: still re-run
        st.update_state(in_progress={"cycle": i + 1})
        assert sch.recover() == [7] and sch.wait_idle(5)
    st.update_state(in_progress={"cycle": 9, "interrupted": True})  # a shutdown: not counted
    assert sch.recover() == [7] and sch.wait_idle(5)
    assert st.state()["crashed_cycles"] == MAX_CRASHES - 1
    st.update_state(in_progress={"cycle": 10})  # the third death in a row
    assert sch.recover() == [] and sch.wait_idle(5)
    s = st.state()
    assert s["crashed_cycles"] == MAX_CRASHES and s["in_progress"] is None and "not re-run" in s["last_error"]
    assert runs == [7] * MAX_CRASHES
    assert sch.recover() == []  # nothing left to recover until a trigger runs it


def test_state_updates_from_several_processes_are_never_lost(tmp_path):
    """Raised in review: state.json's read-modify-write was guarded per process only, while the web
    process and RQ workers write it too. Four processes, each counting 100 annotations and setting
    its own key, lose nothing."""
    import subprocess
    import sys

    from ncalr_backend.service.demo import ROOT

    code = ("import sys; from pathlib import Path; from ncalr_backend.service.store import ProjectStore\n"
            "st = ProjectStore(Path(sys.argv[1]), 1); w = sys.argv[2]\n"
            "for i in range(100):\n"
            "    st.add_annotations(1); st.update_state(**{'w' + w: i})\n")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path), str(w)], cwd=ROOT) for w in range(4)]
    assert [p.wait(120) for p in procs] == [0] * 4
    s = ProjectStore(tmp_path, 1).state()
    assert s["new_annotations"] == 400
    assert [s.get(f"w{w}") for w in range(4)] == [99] * 4


def test_annotations_made_while_a_cycle_waits_are_not_counted_again_once_it_starts(tmp_path):
    """Found by review: the counter restarted when a cycle was queued, so the annotations made while
    it waited (which its snapshot trains on) also counted toward the next one, and a single new
    annotation then started another full cycle."""
    cycle, gate, started, runs = _held_cycle(lambda pid: pid == 1)
    s = Settings.from_env({"MODEL_DIR": str(tmp_path), "TRAIN_TRIGGER_MIN": "10"})
    sch = EmbeddedScheduler(s, cycle_fn=cycle)
    sch.request_cycle(1, "a running cycle keeps the worker busy")
    assert started.wait(5)
    assert sch.count_annotations(2, 10, 50)["cycle"]["queued"]  # project 2's cycle now waits
    for _ in range(9):
        sch.count_annotations(2, 1, 50)  # made while it waits: its snapshot will hold them
    assert ProjectStore(tmp_path, 2).state()["new_annotations"] == 9
    gate.set()
    assert sch.wait_idle(10) and [p for p, _ in runs] == [1, 2]
    assert ProjectStore(tmp_path, 2).state()["new_annotations"] == 0
    assert sch.count_annotations(2, 1, 50)["cycle"] is None and sch.wait_idle(5) and len(runs) == 2


def test_tasks_created_while_a_cycle_waited_are_placed_when_that_cycle_fails(tmp_path):
    """Found by review: new tasks folded into a waiting cycle were left to it; when it failed they
    got no prediction under the live version until some later cycle succeeded."""
    placed = []

    def cycle(settings, pid, reason, t, **kw):
        raise RuntimeError("no labels yet")

    sch = EmbeddedScheduler(Settings.from_env({"MODEL_DIR": str(tmp_path)}), cycle_fn=cycle,
                            place_fn=lambda s, pid, tasks: placed.append((pid, sorted(tasks))))
    with sch._cv:  # both arrive before the worker picks the project up
        sch._waiting[4] = {"cycle": {"reason": "x", "triggered_at": time.time(), "coalesced": 0, "attempt": 0,
                                     "not_before": 0.0}, "tasks": {501: None, 502: None}}
    sch._ensure_thread()
    with sch._cv:
        sch._cv.notify_all()
    assert sch.wait_idle(5) and placed == [(4, [501, 502])]


def test_new_tasks_waiting_for_a_place_survive_a_restart(tmp_path):
    """Found 2026-12-02: the embedded scheduler kept the tasks waiting for a queue place (and their
    retries) in memory only, so a restart left them unplaced until the next cycle."""
    from ncalr_backend.service.errors import CycleError

    s = Settings.from_env({"MODEL_DIR": str(tmp_path)})
    st = ProjectStore(tmp_path, 3)
    tries = []

    def away(settings, pid, tasks):  # Label Studio unreachable: worth another try, in 10 s
        tries.append(sorted(tasks))
        raise CycleError("Label Studio unreachable", retryable=True)

    first = EmbeddedScheduler(s, place_fn=away)
    first.request_placement(3, [11, {"id": 12}])
    assert st.placing() == [11, 12]  # on disk from the request on
    deadline = time.time() + 5
    while not (tries and first.status(3)["placement_retry_at"]) and time.time() < deadline:
        time.sleep(0.02)
    assert tries == [[11, 12]] and st.placing() == [11, 12]  # the retry waits: still on disk
    first.stop(timeout=5)  # the backend stops before the retry is due

    placed = []
    second = EmbeddedScheduler(s, place_fn=lambda settings, pid, tasks: placed.append((pid, sorted(tasks))) or {})
    assert second.recover() == []  # no cycle to re-run; the placement is requested again
    assert second.wait_idle(5) and placed == [(3, [11, 12])]
    assert st.placing() == [] and not st.placing_path.exists()  # placed: the record goes
    # a damaged record: the ids that are ids are placed
    st.placing_path.write_text('{"tasks": [13, "14", true, -1, 13, 15]}')
    third = EmbeddedScheduler(s, place_fn=lambda settings, pid, tasks: placed.append((pid, sorted(tasks))) or {})
    third.recover()
    assert third.wait_idle(5) and placed[-1] == (3, [13, 15])


def test_tasks_a_completed_cycle_ranked_leave_the_record_and_an_interrupted_one_keeps_them(tmp_path):
    from ncalr_backend.service.errors import CycleError

    s = Settings.from_env({"MODEL_DIR": str(tmp_path)})
    st = ProjectStore(tmp_path, 4)
    placed, outcome = [], {"interrupt": True}

    def cycle(settings, pid, reason, t, **kw):
        if outcome["interrupt"]:
            raise CycleError("stopped", interrupted=True)

    sch = EmbeddedScheduler(s, cycle_fn=cycle, place_fn=lambda settings, pid, tasks: placed.append(sorted(tasks)))
    with sch._cv:  # a cycle and new tasks wait together
        sch._waiting[4] = {"cycle": {"reason": "x", "triggered_at": time.time(), "coalesced": 0, "attempt": 0,
                                     "not_before": 0.0}, "tasks": {21: None, 22: None}}
        sch._save_placing(4)
    sch._ensure_thread()
    with sch._cv:
        sch._cv.notify_all()
    assert sch.wait_idle(5) and placed == []
    assert st.placing() == [21, 22]  # interrupted: the next start's cycle ranks them, or a placement does
    outcome["interrupt"] = False
    sch.request_cycle(4, "again")
    assert sch.wait_idle(5) and placed == [] and st.placing() == []  # ranked by the cycle


def test_new_tasks_whose_placement_ends_the_process_are_not_placed_again_at_every_start(tmp_path, caplog):
    """Found by review: a placement that kills the process (out of memory on a huge image) would
    have been requested again at every start, for ever (cycles have recovery.MAX_CRASHES). What
    counts is a job holding the tasks that began and never ended, not a start (a start whose
    worker was busy elsewhere costs nothing), and a clean stop is not a death."""
    import logging

    from ncalr_backend.service.errors import CycleError
    from ncalr_backend.service.scheduler import MAX_PLACING_STARTS

    s = Settings.from_env({"MODEL_DIR": str(tmp_path)})
    st = ProjectStore(tmp_path, 5)
    st.save_placing([31, 32])
    never, asked = threading.Event(), []

    def dies(settings, pid, tasks):  # the process "dies" inside: this start never ends the job
        asked.append(sorted(tasks))
        never.wait(10)

    dying = []  # each "dead" process's scheduler: its job ends when the test lets it (never.set())
    try:
        for n in range(1, MAX_PLACING_STARTS + 1):
            dying.append(EmbeddedScheduler(s, place_fn=dies))
            dying[-1].recover()
            deadline = time.time() + 5
            while len(asked) < n and time.time() < deadline:
                time.sleep(0.02)
            assert asked == [[31, 32]] * n and st.placing() == [31, 32] and st.placing_begun() == n
        with caplog.at_level(logging.ERROR, logger="ncalr_backend.service.scheduler"):
            dying.append(EmbeddedScheduler(s, place_fn=dies))
            dying[-1].recover()
        time.sleep(0.2)
        assert len(asked) == MAX_PLACING_STARTS and st.placing() == [] and not st.placing_path.exists()
        assert any("the last 3 jobs that held them" in r.getMessage() for r in caplog.records)
    finally:
        never.set()
        # let the "dead" jobs end before the next parts write placing.json: in one test process
        # their ends rewrite the same file (CI, 2026-12-03: a late end wiped [51] below). A real
        # dead process writes nothing, and MODEL_DIR/.backend.lock keeps a second live one out.
        assert all(d.wait_idle(5) for d in dying)

    # a job that ends resets the count
    st.save_placing([41], begun=2)
    ok = EmbeddedScheduler(s, place_fn=lambda settings, pid, tasks: {})
    ok.recover()
    assert ok.wait_idle(5) and st.placing() == [] and st.placing_begun() == 0

    # a start whose worker never reached the tasks does not count
    st.save_placing([51], begun=1)
    gate = threading.Event()
    busy = EmbeddedScheduler(s, cycle_fn=lambda *a, **k: gate.wait(10), place_fn=lambda settings, pid, tasks: {})
    busy.request_cycle(9, "another project's long cycle")
    deadline = time.time() + 5
    while not busy.status(9)["running"] and time.time() < deadline:
        time.sleep(0.02)
    busy.recover()
    assert st.placing() == [51] and st.placing_begun() == 1  # still waiting behind the cycle: not begun
    gate.set()
    assert busy.wait_idle(5) and st.placing() == []

    # a clean stop that interrupts a cycle holding the tasks is not a death
    def interrupted(*a, **k):
        raise CycleError("stopped", interrupted=True)

    clean = EmbeddedScheduler(s, cycle_fn=interrupted, place_fn=lambda settings, pid, tasks: {})
    with clean._cv:
        clean._waiting[5] = {"cycle": {"reason": "x", "triggered_at": time.time(), "coalesced": 0, "attempt": 0,
                                       "not_before": 0.0}, "tasks": {61: None}}
        clean._save_placing(5)
    clean._ensure_thread()
    with clean._cv:
        clean._cv.notify_all()
    assert clean.wait_idle(5) and st.placing() == [61] and st.placing_begun() == 0


def test_a_backend_that_dies_before_its_cycle_has_a_marker_runs_the_request_on_the_next_start(tmp_path):
    """Found by review, 2026-12-05: the worker cleared ``pending`` when it took the request, before the
    cycle's connection check (Label Studio, up to a minute per try) wrote its marker; a death in
    between (a kill, or a stop whose 20 s ran out) left neither, and nothing ran the annotations'
    cycle. Now the request stays pending until CycleRun.begin clears it in the marker's own write."""
    import shutil

    from ncalr_backend.service.cycle import CycleRun

    s = Settings.from_env({"MODEL_DIR": str(tmp_path / "m")})
    st = ProjectStore(s.model_dir, 4)
    seen = {}

    def cycle(settings, pid, reason, t, should_stop=None, request=None):
        seen["pending"] = st.state()["pending"]  # the connection check: the process dies here
        shutil.copytree(tmp_path / "m", tmp_path / "died")
        run = CycleRun.begin(settings, pid, reason, t, request)
        seen["after_begin"] = st.state()
        st.finish_in_progress(run.owner)
    sch = EmbeddedScheduler(s, cycle_fn=cycle)
    sch.request_cycle(4, "12 new annotations")
    assert sch.wait_idle(5)
    assert seen["pending"]["reason"] == "12 new annotations" and seen["pending"]["job"]
    assert seen["after_begin"]["pending"] is None and seen["after_begin"]["in_progress"]["cycle"] == 1
    assert st.state()["pending"] is None
    runs = []
    again = EmbeddedScheduler(Settings.from_env({"MODEL_DIR": str(tmp_path / "died")}),
                              cycle_fn=lambda settings, pid, reason, t, **kw: runs.append((pid, reason)))
    assert again.recover() == [4] and again.wait_idle(5) and runs == [(4, "recovered")]


def test_a_request_made_while_a_cycle_starts_stays_pending(tmp_path):
    """The marker's write clears only the request the cycle serves: one made meanwhile is the next's."""
    from ncalr_backend.service.cycle import CycleRun

    s = Settings.from_env({"MODEL_DIR": str(tmp_path)})
    st = ProjectStore(s.model_dir, 4)
    gate, started, seen = threading.Event(), threading.Event(), {}

    def cycle(settings, pid, reason, t, should_stop=None, request=None):
        if reason == "first":
            started.set()
            gate.wait(10)
        run = CycleRun.begin(settings, pid, reason, t, request)
        seen[reason] = st.state()["pending"]
        st.finish_in_progress(run.owner)
    sch = EmbeddedScheduler(s, cycle_fn=cycle)
    sch.request_cycle(4, "first")
    assert started.wait(5)
    sch.request_cycle(4, "second")
    gate.set()
    assert sch.wait_idle(5)
    assert seen["first"]["reason"] == "second" and seen["second"] is None and st.state()["pending"] is None


def test_a_cycle_that_cannot_make_its_work_folder_leaves_no_marker(tmp_path, monkeypatch):
    """Found by review, 2026-12-05: the marker was written, then the work folder failed (a full disk);
    the marker stayed, so the RQ reaper took the retryable failure for a dead worker, re-ran it at
    once and after three rounds called it a crash loop ("killed: out of memory?")."""
    import errno

    import pytest

    from ncalr_backend.service.cycle import CycleRun

    s = Settings.from_env({"MODEL_DIR": str(tmp_path)})
    st = ProjectStore(s.model_dir, 4)
    st.update_state(pending={"reason": "x", "job": "j1"})

    def full(self, cycle):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(ProjectStore, "new_workdir", full)
    with pytest.raises(OSError):
        CycleRun.begin(s, 4, "x", None, "j1")
    state = st.state()
    assert state["in_progress"] is None and not state.get("crashed_cycles") and state["cycles_started"] == 1
