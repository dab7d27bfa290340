"""RQ jobs run by real `rq worker` processes against a real redis-server: a worker stopped mid-cycle
(its warm shutdown), the Redis keys of a job's own queue, a placement killed mid-job."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ncalr_backend.service.scheduler import RQScheduler, _keys
from ncalr_backend.service.settings import Settings
from ncalr_backend.service.store import ProjectStore
from tests.redis_server import redis_server

ROOT = Path(__file__).resolve().parents[2]

# an `rq worker` whose cycle is a stand-in: the real CycleRun marker and stop check, FAKE_CYCLE_S
# seconds of 0.1 s "batches" that honour should_stop as training does
WORKER = '''
import os, sys, time
sys.path.insert(0, {root!r})
from ncalr_backend.service import scheduler

def fake_cycle(settings, project_id, reason, triggered_at, should_stop=None, request=None):
    from ncalr_backend.service.cycle import CycleRun
    from ncalr_backend.service.errors import CycleError
    run = CycleRun.begin(settings, project_id, reason, triggered_at, request)
    stop = run.stop_check(should_stop)
    end = time.time() + float(os.environ["FAKE_CYCLE_S"])
    while time.time() < end:
        if stop():
            run.store.mark_in_progress(owner=run.owner, interrupted=True)
            raise CycleError("interrupted", interrupted=True)
        time.sleep(0.1)
    run.store.finish_in_progress(run.owner, last_completed=run.cycle, crashed_cycles=0)
    return {{"cycle": run.cycle}}

scheduler._default_cycle = fake_cycle
from redis import Redis
from rq import Queue, Worker
r = Redis.from_url(os.environ["REDIS_URL"])
Worker([Queue(sys.argv[1], connection=r)], connection=r).work(burst="--burst" in sys.argv)
'''


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    with redis_server() as url:
        yield url


def _env(redis_url, tmp_path, monkeypatch, queue="ncalr-jobs-test", **extra):
    env = {"MODEL_DIR": str(tmp_path / "md"), "REDIS_URL": redis_url, "RQ_QUEUE": queue, "LABEL_STUDIO_URL": "",
           "LABEL_STUDIO_API_KEY": "", "RQ_LOCK_TTL": "4", **extra}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    s = Settings.from_env(env)
    sch = RQScheduler(s)
    sch.redis.flushdb()
    return s, sch


def _start_worker(tmp_path, queue, env, *args):
    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(root=str(ROOT)))
    return subprocess.Popen([sys.executable, str(script), queue, *args], env=env, cwd=tmp_path,
                            stdout=open(tmp_path / "worker.log", "ab"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def _kill_all(proc):
    import psutil
    try:
        procs = psutil.Process(proc.pid).children(recursive=True) + [psutil.Process(proc.pid)]
    except psutil.NoSuchProcess:
        procs = []
    for p in procs:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    proc.wait(10)


def test_a_worker_stopped_mid_cycle_interrupts_it_cleanly_and_it_runs_again(redis_url, tmp_path, monkeypatch):
    """Found by review: on SIGTERM (`docker stop`) RQ waits for the running job and tells its work
    horse nothing; the cycle ran on until the grace period's SIGKILL, its marker was not
    ``interrupted`` and the reaper counted a crash (three stops: "killed: out of memory?"). The job
    now hears of the worker's shutdown request (polled with the lock), the cycle stops at its next
    batch, stays marked interrupted, and the reaper runs it again without counting a crash."""
    s, sch = _env(redis_url, tmp_path, monkeypatch)
    sch.request_cycle(5, "12 new annotations")
    w = _start_worker(tmp_path, s.rq_queue, {**os.environ, "FAKE_CYCLE_S": "60"})
    try:
        deadline = time.time() + 30
        while not ProjectStore(s.model_dir, 5).state().get("in_progress"):
            assert time.time() < deadline and w.poll() is None, (tmp_path / "worker.log").read_text()
            time.sleep(0.1)
        time.sleep(0.5)
        w.send_signal(signal.SIGTERM)  # docker stop: the warm shutdown
        try:
            w.wait(15)  # the grace period (60 s in docker-compose.yml; the cycle would take 60 s here)
            stopped = True
        except subprocess.TimeoutExpired:
            stopped = False
    finally:
        _kill_all(w)  # then SIGKILL, as docker does
    st = ProjectStore(s.model_dir, 5).state()
    assert stopped, "the worker waited for the cycle: it never heard of the stop"
    assert st["in_progress"]["interrupted"] is True and not st.get("crashed_cycles")
    assert not sch.redis.exists(_keys(5, s.rq_queue)["lock"])  # the job let its lock go
    assert sch.reap_once() == [(5, "interrupted cycle")]
    st = ProjectStore(s.model_dir, 5).state()
    assert st["in_progress"] is None and not st.get("crashed_cycles") and st["pending"]["reason"].startswith("re-run")
    w = _start_worker(tmp_path, s.rq_queue, {**os.environ, "FAKE_CYCLE_S": "0.3"}, "--burst")
    try:
        w.wait(60)
    finally:
        _kill_all(w)
    st = ProjectStore(s.model_dir, 5).state()
    assert st["last_completed"] == 2 and st["in_progress"] is None and not st.get("crashed_cycles"), st
    assert not st.get("pending") and not st.get("last_error")


def test_a_job_uses_the_keys_of_the_queue_it_came_from_not_the_workers_rq_queue(redis_url, tmp_path, monkeypatch):
    """Found by review: rq_cycle_job and rq_place_job built their keys from the worker's own
    ``RQ_QUEUE``; a worker started as ``rq worker teamA`` without ``RQ_QUEUE=teamA`` took the default
    keys: its cycle ran under no lock the web could see, lost its request's reason, and a request
    made during it was folded into the one it had already taken (never run)."""
    from rq import SimpleWorker

    from ncalr_backend.service import scheduler

    s, sch = _env(redis_url, tmp_path, monkeypatch, queue="teamA")
    monkeypatch.delenv("RQ_QUEUE")  # the worker's environment lacks it
    seen = []

    def cycle(settings, pid, reason, t, should_stop=None, request=None):
        seen.append({"reason": reason, "locked": sch.is_running_elsewhere(pid),
                     "during": sch.request_cycle(pid, "12 more annotations")})
        return {}
    monkeypatch.setattr(scheduler, "_default_cycle", cycle)
    placed = []
    monkeypatch.setattr(scheduler, "_default_place",
                        lambda settings, pid, tasks: placed.append(sch.is_running_elsewhere(pid)) or {"placed": 1})
    sch.request_cycle(5, "12 new annotations")
    sch.request_placement(5, [7])
    SimpleWorker([sch.queue], connection=sch.redis).work(burst=True, max_jobs=2)
    assert seen[0]["reason"] == "12 new annotations" and seen[0]["locked"]
    assert seen[0]["during"]["queued"], seen  # not folded into the running cycle
    assert placed == [True]  # the placement held the project's lock too
    assert sch.queue.count == 1 and sch.redis.exists(_keys(5, "teamA")["queued"])  # the follow-up waits
    assert not sch.redis.keys("ncalr:5:*")  # nothing under the default queue's keys


def test_a_placement_killed_mid_job_is_placed_again_a_bounded_number_of_times(redis_url, tmp_path, monkeypatch):
    """Found by review: a placement job killed mid-job (OOM, docker stop's SIGKILL) lost its tasks
    until the next cycle in RQ mode (embedded mode keeps placing.json). The job records them while it
    places them; the reaper re-enqueues a dead job's, up to MAX_PLACING_STARTS jobs that died."""
    from rq import SimpleWorker, Worker

    from ncalr_backend.service import scheduler

    s, sch = _env(redis_url, tmp_path, monkeypatch)
    k = _keys(5, s.rq_queue)
    ProjectStore(s.model_dir, 5).update_state(num_tasks=100)  # the project exists

    def dies(settings, pid, tasks):
        os.kill(os.getpid(), signal.SIGKILL)
    monkeypatch.setattr(scheduler, "_default_place", dies)
    sch.request_placement(5, [101, 102, 103])
    for n in range(1, scheduler.MAX_PLACING_STARTS + 1):
        Worker([sch.queue], connection=sch.redis).work(burst=True, max_jobs=1)  # its work horse is killed
        assert scheduler._placing_record(sch.redis.get(k["placing"])) == {"tasks": [101, 102, 103], "begun": n}
        sch.redis.delete(k["lock"])  # the dead horse's lock expires (RQ_LOCK_TTL)
        if n < scheduler.MAX_PLACING_STARTS:
            assert sch.reap_once() == [(5, "placement retry")]
            assert [j.args for j in sch.queue.get_jobs()] == [(5, [101, 102, 103], 0, n)]
    assert sch.reap_once() == [] and sch.queue.count == 0 and not sch.redis.exists(k["placing"])  # given up
    placed = []
    monkeypatch.setattr(scheduler, "_default_place", lambda settings, pid, tasks: placed.append(tasks) or {})
    sch.request_placement(5, [104])
    SimpleWorker([sch.queue], connection=sch.redis).work(burst=True, max_jobs=1)
    assert placed == [[104]] and not sch.redis.exists(k["placing"]) and sch.reap_once() == []


def test_a_cycle_jobs_result_in_redis_is_its_status_not_its_report():
    """Found by review: the job's result (kept 7 days in Redis) was the whole cycle report, with a
    line per failed image holding its URL whole (a presigned signature /status redacts) and growing
    with the project. It is now the cycle's status and version only; the report stays on disk."""
    from ncalr_backend.service.scheduler import JOB_RESULT_KEYS, job_result

    url = "https://bucket.s3.example/img.png?X-Amz-Signature=secret"
    report = {"project": 3, "cycle": 7, "model_version": "ncalr-3-c0007-x", "status": "completed", "reason": "12 new",
              "triggered_at": 1.0, "started_at": 2.0, "image_failures": [{"task": i, "reason": url} for i in range(500)],
              "engine": {"timings": {"train_s": 3.0}}, "label_errors": {"flagged": 4}}
    out = job_result(report)
    assert out == {k: report[k] for k in JOB_RESULT_KEYS if k in report}
    assert "secret" not in json.dumps(out) and len(json.dumps(out)) < 300
    assert job_result(None) == {} and job_result({"status": "completed", "cycle": [1]}) == {"status": "completed"}


def test_a_worker_with_another_model_dir_refuses_the_cycle_and_the_web_says_why(redis_url, tmp_path, monkeypatch):
    """Found by review: a worker whose MODEL_DIR is not the web's (a volume mounted in one service
    only) ran every requested cycle (writing predictions into Label Studio) while the web's pending
    request stayed; the reaper took the job as lost and requested it again, up to 9 full cycles per
    trigger, then blamed a lost job. The request names the web's MODEL_DIR (its id file); such a
    worker runs nothing and the web's state says what to fix, at once."""
    from rq import SimpleWorker

    from ncalr_backend.service import scheduler
    from ncalr_backend.service.store import model_dir_id

    s, sch = _env(redis_url, tmp_path, monkeypatch)
    ran = []
    monkeypatch.setattr(scheduler, "_default_cycle", lambda *a, **kw: ran.append(a) or {"status": "completed"})
    web_id = model_dir_id(s.model_dir)
    assert web_id == model_dir_id(s.model_dir) and len(web_id) == 32  # made once, then read
    sch.request_cycle(5, "12 new annotations")
    monkeypatch.setenv("MODEL_DIR", str(tmp_path / "the-workers-own"))  # the worker's environment
    SimpleWorker([sch.queue], connection=sch.redis).work(burst=True, max_jobs=1)
    assert ran == []
    assert sch.reap_once() == [(5, "refused by its worker")]
    st = ProjectStore(s.model_dir, 5).state()
    assert not st.get("pending") and "MODEL_DIR" in st["last_error"] and "the-workers-own" in st["last_error"]
    assert sch.reap_once() == [] and sch.queue.count == 0  # not requested again
    # the same folder: the cycle runs
    monkeypatch.setenv("MODEL_DIR", str(s.model_dir))
    sch.request_cycle(5, "12 new annotations")
    SimpleWorker([sch.queue], connection=sch.redis).work(burst=True, max_jobs=1)
    assert len(ran) == 1
