"""The RQ reaper against a real redis-server (no Label Studio, no worker): a queued cycle whose job
is lost is requested again; one whose job still waits is left alone (found by review, 2026-11-30:
the queued-cycle key outlived a job lost with its worker and blocked the project for good)."""

from __future__ import annotations

import shutil
import subprocess
import time

import pytest

from ncalr_backend.service.demo import free_port
from ncalr_backend.service.scheduler import RQScheduler, _keys
from ncalr_backend.service.settings import Settings
from ncalr_backend.service.store import ProjectStore


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    exe = shutil.which("redis-server")
    assert exe, "redis-server is not installed (scripts/test.sh installs it with apt-get)"
    port = free_port()
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
    import redis

    url = f"redis://127.0.0.1:{port}/0"
    deadline = time.time() + 20
    while True:
        try:
            redis.Redis.from_url(url).ping()
            break
        except redis.ConnectionError:
            if time.time() > deadline:
                proc.kill()
                raise
            time.sleep(0.1)
    yield url
    proc.terminate()
    proc.wait(10)


def test_a_lost_queued_job_is_requested_again_and_a_waiting_one_is_not(redis_url, tmp_path):
    from rq.job import Job

    s = Settings.from_env({"MODEL_DIR": str(tmp_path), "REDIS_URL": redis_url, "RQ_QUEUE": "ncalr-reaper-test"})
    sch = RQScheduler(s)
    sch.redis.flushdb()
    first = sch.request_cycle(3, "12 new annotations")
    assert first["queued"] and sch.request_cycle(3, "again")["coalesced"]
    assert sch.reap_once() == [] and len(sch.queue) == 1  # the job waits: nothing to do
    Job.fetch(first["job"], connection=sch.redis).delete()  # lost (its worker died holding it)
    assert sch.reap_once() == [(3, "lost job")]
    k = _keys(3)
    assert sch.redis.exists(k["queued"]) and len(sch.queue) == 1
    again = sch.queue.job_ids[0]
    assert again != first["job"] and ProjectStore(tmp_path, 3).state()["pending"]["reason"] == "12 new annotations"
    assert sch.reap_once() == [] and sch.queue.job_ids == [again]  # once, not every 5 s
    # a worker died mid-cycle and its follow-up job was lost with a second worker: re-run
    ProjectStore(tmp_path, 3).update_state(in_progress={"cycle": 1, "model_version": "ncalr-3-c0001-x"})
    Job.fetch(again, connection=sch.redis).cancel()
    assert sch.reap_once() == [(3, "dead worker")] and len(sch.queue) == 1
    st = ProjectStore(tmp_path, 3).state()
    assert st["in_progress"] is None and st["orphan_versions"] == ["ncalr-3-c0001-x"]


def test_a_cycle_that_loses_its_lock_to_another_worker_is_told_to_stop(redis_url):
    import threading

    import redis

    from ncalr_backend.service.scheduler import keep_lock

    r = redis.Redis.from_url(redis_url)
    key = "ncalr:41:running"
    r.delete(key)
    # expired while Redis was away, nobody else took it: taken back, the cycle goes on
    lock = r.lock(key, timeout=5, thread_local=False)
    assert lock.acquire(blocking=False)
    r.delete(key)
    done, lost = threading.Event(), threading.Event()
    t = threading.Thread(target=keep_lock, args=(lock, 0.05, done, lost, 41), daemon=True)
    t.start()
    time.sleep(0.3)
    assert not lost.is_set() and r.get(key) == lock.local.token
    # expired, and another worker's cycle holds it now: this one is told to stop
    r.set(key, b"another-workers-token", px=5000)  # in one step: it expired and was taken
    t.join(5)
    assert lost.is_set() and not t.is_alive() and r.get(key) == b"another-workers-token"
    done.set()


def test_a_placement_waits_for_the_running_cycle_of_its_project(redis_url, tmp_path, monkeypatch):
    """Found by review, 2026-11-30: under RQ a placement ran beside its project's cycle, so tasks
    created mid-cycle got a prediction of the version being replaced and none of the new one."""
    import threading

    import redis

    from ncalr_backend.service import scheduler

    for k, v in {"MODEL_DIR": str(tmp_path), "REDIS_URL": redis_url, "LABEL_STUDIO_URL": "http://ls.test",
                 "LABEL_STUDIO_API_KEY": "k", "RQ_LOCK_TTL": "5"}.items():
        monkeypatch.setenv(k, v)
    placed = []
    monkeypatch.setattr(scheduler, "_default_place", lambda s, pid, tasks: placed.append((time.time(), tasks)))
    r = redis.Redis.from_url(redis_url)
    with scheduler.project_lock(r, 8, 5.0):  # a cycle of project 8 runs (on another worker)
        other = threading.Thread(target=scheduler.rq_place_job, args=(9, [1]))  # another project: at once
        other.start()
        other.join(5)
        assert placed and placed[0][1] == [1]
        job = threading.Thread(target=scheduler.rq_place_job, args=(8, [5, 6]))
        job.start()
        time.sleep(1.5)
        assert len(placed) == 1  # still waiting for the cycle
        released = time.time()
    job.join(10)
    assert len(placed) == 2 and placed[1][1] == [5, 6] and placed[1][0] >= released
    assert not r.exists(_keys(8)["lock"])  # and it let the lock go
