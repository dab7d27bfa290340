"""The RQ reaper against a real redis-server (no Label Studio, no worker): a queued cycle whose job
is lost is requested again; one whose job still waits is left alone (found by review, 2026-11-30:
the queued-cycle key outlived a job lost with its worker and blocked the project for good)."""

from __future__ import annotations

import os
import time

import pytest

from ncalr_backend.service.scheduler import RQScheduler, _keys
from ncalr_backend.service.settings import Settings
from ncalr_backend.service.store import ProjectStore
from tests.redis_server import redis_server


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    with redis_server() as url:
        yield url


def _worker_env(redis_url, tmp_path, monkeypatch):
    """(settings, scheduler) on a flushed test queue, with the environment an RQ job reads its
    settings from (rq_cycle_job calls Settings.from_env())."""
    for k, v in {"MODEL_DIR": str(tmp_path), "REDIS_URL": redis_url, "RQ_QUEUE": "ncalr-reaper-test",
                 "LABEL_STUDIO_URL": "", "LABEL_STUDIO_API_KEY": ""}.items():
        monkeypatch.setenv(k, v)
    s = Settings.from_env({"MODEL_DIR": str(tmp_path), "REDIS_URL": redis_url, "RQ_QUEUE": "ncalr-reaper-test"})
    sch = RQScheduler(s)
    sch.redis.flushdb()
    return s, sch


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
    k = _keys(3, s.rq_queue)
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
    with scheduler.project_lock(r, 8, 5.0, "ncalr"):  # a cycle of project 8 runs (on another worker)
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
    assert not r.exists(_keys(8, "ncalr")["lock"])  # and it let the lock go


def test_a_job_that_keeps_failing_before_it_starts_is_given_up_not_requested_every_tick(redis_url, tmp_path):
    """Found by review: a job that failed before it cleared ``pending`` (a worker's bad settings, a
    full disk) left the queued key naming a failed job; the reaper requested the cycle again on
    every tick, for ever, each failed job kept 7 days. The first lost job is requested again at
    once (a worker killed while its job waited), later ones on CYCLE_RETRY_DELAYS (a cause that
    passes by itself has as long as a failing cycle has), then it is given up."""
    from rq.job import Job

    s = Settings.from_env({"MODEL_DIR": str(tmp_path), "REDIS_URL": redis_url, "RQ_QUEUE": "ncalr-reaper-test",
                           "CYCLE_RETRY_DELAYS": "0,0"})
    sch = RQScheduler(s)
    sch.redis.flushdb()
    job = sch.request_cycle(4, "12 new annotations")["job"]
    seen = []
    while job is not None and len(seen) < 20:
        Job.fetch(job, connection=sch.redis).delete()  # failed at its start, or lost
        for _ in range(2):  # the lost job, then (after its delay) its retry
            seen += [why for _, why in sch.reap_once()]
        job = sch.queue.job_ids[-1] if sch.queue.job_ids else None
    assert seen == ["lost job", "lost job: retry later", "retry", "lost job: retry later", "retry",
                    "lost job: given up"]
    st = ProjectStore(tmp_path, 4).state()
    assert st["pending"] is None and "4 times; not requested again" in st["last_error"]
    assert sch.reap_once() == [] and len(sch.queue) == 0
    # the delays are kept: with 60 s the retry waits
    s = Settings.from_env({"MODEL_DIR": str(tmp_path), "REDIS_URL": redis_url, "RQ_QUEUE": "ncalr-reaper-test",
                           "CYCLE_RETRY_DELAYS": "60"})
    sch = RQScheduler(s)
    job = sch.request_cycle(4, "again")["job"]
    Job.fetch(job, connection=sch.redis).delete()
    assert sch.reap_once() == [(4, "lost job")]
    Job.fetch(sch.queue.job_ids[-1], connection=sch.redis).delete()
    assert sch.reap_once() == [(4, "lost job: retry later")] and sch.reap_once() == []
    assert ProjectStore(tmp_path, 4).state()["pending"]["retry_at"] > time.time() + 50


def test_a_dead_workers_re_run_survives_redis_failing_as_it_is_requested(redis_url, tmp_path, monkeypatch):
    """Found by review: the reaper cleared the dead cycle's marker, then requesting the re-run hit a
    Redis error: no marker, no pending, no queued key, and nothing ever ran the cycle again."""
    import redis as redis_lib

    s = Settings.from_env({"MODEL_DIR": str(tmp_path), "REDIS_URL": redis_url, "RQ_QUEUE": "ncalr-reaper-test"})
    sch = RQScheduler(s)
    sch.redis.flushdb()
    st = ProjectStore(tmp_path, 5)
    st.update_state(in_progress={"cycle": 3, "model_version": "ncalr-5-c0003-x", "triggered_at": 100.0})
    real = sch.request_cycle

    def down(*a, **kw):
        raise redis_lib.ConnectionError("Redis away")
    monkeypatch.setattr(sch, "request_cycle", down)
    with pytest.raises(redis_lib.ConnectionError):
        sch.reap_once()
    s1 = st.state()
    assert s1["in_progress"] is None and s1["pending"]["reason"].startswith("re-run")
    monkeypatch.setattr(sch, "request_cycle", real)
    assert sch.reap_once() == [(5, "lost job")] and len(sch.queue) == 1
    assert st.state()["pending"]["triggered_at"] == 100.0


def test_a_job_requested_a_moment_ago_is_not_taken_for_lost_before_it_is_enqueued(redis_url, tmp_path, monkeypatch):
    """Found by review: request_cycle set the queued key, wrote state.json, then enqueued; a reaper
    tick in between found no such job, called it lost and enqueued a second one (two waiting). The
    job now exists (CREATED) before the key names it; one left CREATED (its process died before
    enqueuing it) is lost once ENQUEUE_GRACE_S has passed."""
    from ncalr_backend.service import scheduler

    s = Settings.from_env({"MODEL_DIR": str(tmp_path), "REDIS_URL": redis_url, "RQ_QUEUE": "ncalr-reaper-test"})
    sch = RQScheduler(s)
    sch.redis.flushdb()
    ticks = []
    real_enqueue = sch.queue.enqueue_job

    def tick_first(job, *a, **kw):  # a reaper tick in the window, then the enqueue
        ticks.append(sch.reap_once())
        return real_enqueue(job, *a, **kw)
    monkeypatch.setattr(sch.queue, "enqueue_job", tick_first)
    assert sch.request_cycle(6, "r")["queued"]
    assert ticks == [[]] and len(sch.queue) == 1
    monkeypatch.setattr(sch.queue, "enqueue_job", lambda job, *a, **kw: job)  # the process dies before enqueuing
    sch.redis.flushdb()
    assert sch.request_cycle(6, "r")["queued"] and len(sch.queue) == 0
    assert sch.reap_once() == []  # within the grace
    monkeypatch.setattr(scheduler, "ENQUEUE_GRACE_S", 0.0)
    monkeypatch.setattr(sch.queue, "enqueue_job", real_enqueue)
    assert sch.reap_once() == [(6, "lost job")] and len(sch.queue) == 1


def test_recovery_never_gives_up_a_cycle_that_began_after_it_read_the_state(tmp_path):
    """Found by review: recovery cleared the marker it had read earlier without comparing, and
    removed every work folder: a cycle that began in between lost its marker and its folder."""
    from ncalr_backend.service.recovery import abandon_in_progress

    st = ProjectStore(tmp_path, 7)
    st.update_state(in_progress={"cycle": 1, "model_version": "v1"})
    seen = st.state()
    (st.root / ".work-0001-old").mkdir()
    # meanwhile the next cycle starts over the dead one's marks
    abandon_in_progress(st, st.state())
    st.update_state(in_progress={"cycle": 2, "model_version": "v2"}, cycles_started=2)
    (st.root / ".work-0002-new").mkdir()
    assert abandon_in_progress(st, seen, rerun={"reason": "late"}) is None  # changed: nothing done
    s = st.state()
    assert s["in_progress"] == {"cycle": 2, "model_version": "v2"} and s.get("pending") is None
    assert (st.root / ".work-0002-new").is_dir() and s["orphan_versions"] == ["v1"] and s["crashed_cycles"] == 1
    assert abandon_in_progress(st, s) == 1 and not (st.root / ".work-0002-new").exists()


def test_a_request_made_as_a_job_starts_stays_pending_for_the_next_job(redis_url, tmp_path, monkeypatch):
    """Found by review: rq_cycle_job took the queued key, then cleared ``pending``; a request made in
    between (the next job's) lost its pending record, so if that job was lost too, the reaper found
    nothing to re-request. Run by a real RQ worker (in this process)."""
    from rq import SimpleWorker

    from ncalr_backend.service import scheduler

    s, sch = _worker_env(redis_url, tmp_path, monkeypatch)
    ran, nxt = [], []

    def cycle(settings, pid, reason, t, should_stop=None, request=None):
        ran.append((pid, request))
        nxt.append(sch.request_cycle(8, "an annotation as the job starts")["job"])  # the next job's request
        return {"status": "completed"}
    monkeypatch.setattr(scheduler, "_default_cycle", cycle)
    first = sch.request_cycle(8, "12 new annotations")["job"]
    SimpleWorker([sch.queue], connection=sch.redis).work(burst=True, max_jobs=1)
    assert ran == [(8, first)] and nxt and nxt[0] != first
    assert ProjectStore(tmp_path, 8).state()["pending"]["job"] == nxt[0]


def test_a_worker_that_dies_before_its_cycle_has_a_marker_leaves_the_request_to_the_reaper(redis_url, tmp_path,
                                                                                          monkeypatch):
    """Found by review, 2026-12-05: the job cleared ``pending`` (and the queued key and the count)
    before the cycle's connection check, which asks Label Studio (up to a minute per try); a work
    horse killed there left nothing for the reaper or recovery, and the annotations that triggered it
    never ran a cycle. A real forking RQ worker whose work horse is SIGKILLed at that point."""
    import os
    import signal

    from rq import Worker
    from rq.job import Job

    from ncalr_backend.service import scheduler

    s, sch = _worker_env(redis_url, tmp_path, monkeypatch)

    def dies(settings, pid, reason, t, should_stop=None, request=None):  # inside the connection check
        os.kill(os.getpid(), signal.SIGKILL)
    monkeypatch.setattr(scheduler, "_default_cycle", dies)
    first = sch.request_cycle(9, "12 new annotations")["job"]
    Worker([sch.queue], connection=sch.redis).work(burst=True, max_jobs=1)
    assert Job.fetch(first, connection=sch.redis).get_status(refresh=True).value == "failed"
    k = _keys(9, s.rq_queue)
    assert not sch.redis.exists(k["queued"]) and not sch.redis.exists(k["count"])
    assert ProjectStore(tmp_path, 9).state()["pending"]["job"] == first  # still requested
    sch.redis.delete(k["lock"])  # the dead horse's lock expires (RQ_LOCK_TTL)
    assert sch.reap_once() == [(9, "lost job")] and len(sch.queue) == 1
    again = ProjectStore(tmp_path, 9).state()["pending"]
    assert again["reason"] == "12 new annotations" and again["job"] == sch.queue.job_ids[0] != first


def test_status_and_the_log_say_when_no_worker_would_run_the_queued_jobs(redis_url, tmp_path, caplog, monkeypatch):
    """Found reading the RQ mode as an operator (2026-12-02): with REDIS_URL set and no `rq worker`
    started (or all of them stopped, or `rq suspend`), cycles were queued for ever and nothing but
    a "waiting" line said so. Real redis-server, a real rq Worker registered in it."""
    import logging

    from rq import Worker
    from rq.suspension import resume, suspend

    from ncalr_backend.service import scheduler

    monkeypatch.setattr(scheduler, "WORKERS_TTL_S", 0.0)  # every call counts again (one page: once a second)
    s = Settings.from_env({"MODEL_DIR": str(tmp_path), "REDIS_URL": redis_url + "?socket_timeout=2",
                           "RQ_QUEUE": "ncalr-workers-test"})
    sch = RQScheduler(s)
    sch.redis.flushdb()
    st = sch.status(5)
    assert st["workers"] == 0 and st["suspended"] is False
    assert "no RQ worker listens on queue 'ncalr-workers-test'" in st["unserved"]
    with caplog.at_level(logging.WARNING, logger="ncalr_backend.service.scheduler"):
        assert sch.request_cycle(5, "12 new annotations")["queued"]
        sch.request_placement(5, [7, 8])
    said = [r.getMessage() for r in caplog.records]
    assert any("a cycle (12 new annotations) queued, but no RQ worker listens" in m for m in said), said
    assert any("2 new task(s) to place queued, but no RQ worker" in m for m in said), said

    # a worker on another queue does not count; one on this queue does (the workers on a connection
    # of their own: rq's Worker() sets its connection's socket timeout)
    import redis

    wconn = redis.Redis.from_url(redis_url)
    other = Worker(["some-other-queue"], connection=wconn)
    other.register_birth()
    assert sch.workers() == {"workers": 0, "suspended": False}
    w = Worker([sch.queue.name], connection=wconn)
    w.register_birth()
    st = sch.status(5)
    assert st["workers"] == 1 and st["unserved"] is None
    # counting never touches the connection's settings (rq's Worker() sets the pool's socket
    # timeout to 415 s: found by review, Worker.all was used first)
    assert sch.redis.connection_pool.connection_kwargs["socket_timeout"] == 2.0
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ncalr_backend.service.scheduler"):
        sch.request_placement(5, [9])
    assert not [r for r in caplog.records if "queued, but" in r.getMessage()]

    # `rq suspend`: the workers are there but take nothing
    suspend(sch.redis)
    st = sch.status(5)
    assert st["suspended"] is True and "rq resume" in st["unserved"]
    resume(sch.redis)
    assert sch.status(5)["unserved"] is None

    # a worker killed outright: registered still, but its heartbeat key expired -> not counted
    sch.redis.delete(w.key)
    assert sch.workers()["workers"] == 0 and "no RQ worker" in sch.status(5)["unserved"]
    w2 = Worker([sch.queue.name], connection=wconn)
    w2.register_birth()
    assert sch.workers()["workers"] == 1
    w2.register_death()  # a worker stopped cleanly unregisters at once
    assert sch.workers()["workers"] == 0
    other.register_death()


def test_the_dashboard_and_status_say_no_worker_runs_the_waiting_cycle(redis_url, tmp_path, monkeypatch, request):
    """The page over Flask in RQ mode (real redis-server): with a cycle queued and no worker, a
    banner above the projects and the project's own "waiting" line say why nothing starts; once a
    worker is registered both go."""
    import base64
    import importlib

    import label_studio_ml.api
    from rq import Worker

    importlib.reload(label_studio_ml.api)  # a fresh module-global Flask app
    from model import NCALRBackend
    from ncalr_backend.service import scheduler

    monkeypatch.setattr(scheduler, "WORKERS_TTL_S", 0.0)
    from ncalr_backend.service.app import create_app

    s = Settings.from_env({"MODEL_DIR": str(tmp_path), "LABEL_STUDIO_URL": "http://ls.test", "LABEL_STUDIO_API_KEY": "k",
                           "BASIC_AUTH_USER": "u", "BASIC_AUTH_PASS": "p", "REDIS_URL": redis_url,
                           "RQ_QUEUE": "ncalr-page-test"})
    app = create_app(NCALRBackend, s, autostart=False)
    request.addfinalizer(lambda: app.extensions["ncalr"].shutdown(timeout=0))  # the reaper the page's scheduler() starts
    auth = {"Authorization": "Basic " + base64.b64encode(b"u:p").decode()}
    c = app.test_client()
    sch = RQScheduler(s)
    sch.redis.flushdb()
    ProjectStore(tmp_path, 5).update_state(cycles_started=0)
    assert sch.request_cycle(5, "Start training")["queued"]
    page = c.get("/", headers=auth).get_data(as_text=True)
    assert "Cycles do not run:</b> no RQ worker listens on queue &#x27;ncalr-page-test&#x27;" in page, page[-3000:]
    assert "It cannot start: no RQ worker" in page
    frag = c.get("/dashboard/progress?project=5", headers=auth).get_data(as_text=True)
    # the web start's recovery left the queued job alone (it used to re-request it as "recovered")
    assert "A cycle is waiting: Start training." in frag and "It cannot start: no RQ worker" in frag
    assert ProjectStore(tmp_path, 5).state()["pending"]["job"] == sch.queue.job_ids[0]
    st = c.get("/status?project=5", headers=auth).get_json()["scheduler"]
    assert st["waiting"] is True and st["workers"] == 0 and "rq worker --url REDIS_URL ncalr-page-test" in st["unserved"]
    w = Worker([sch.queue], connection=sch.redis)
    w.register_birth()
    page = c.get("/", headers=auth).get_data(as_text=True)
    assert "Cycles do not run" not in page and "It cannot start" not in page and "A cycle is waiting" in page
    assert c.get("/status?project=5", headers=auth).get_json()["scheduler"]["workers"] == 1
    w.register_death()


def test_recovery_leaves_a_queued_job_alone_and_requests_a_lost_one_again(redis_url, tmp_path):
    from rq.job import Job

    s = Settings.from_env({"MODEL_DIR": str(tmp_path), "REDIS_URL": redis_url, "RQ_QUEUE": "ncalr-recover-test"})
    sch = RQScheduler(s)
    sch.redis.flushdb()
    job = sch.request_cycle(6, "15 new annotations")["job"]
    assert RQScheduler(s).recover() == []  # a second web process starts: the job still waits
    assert ProjectStore(tmp_path, 6).state()["pending"]["reason"] == "15 new annotations" and len(sch.queue) == 1
    Job.fetch(job, connection=sch.redis).delete()  # lost while no web process ran
    assert RQScheduler(s).recover() == [6]
    assert len(sch.queue) == 1 and sch.queue.job_ids[0] != job


def test_tasks_an_embedded_run_left_waiting_are_placed_once_after_the_switch_to_rq(redis_url, tmp_path):
    """A deployment switched from the embedded scheduler to RQ: the new tasks the embedded run
    recorded as waiting for a queue place (placing.json) get one placement job, however many web
    processes start on the MODEL_DIR; tasks whose jobs killed the process three times are left to
    the next cycle, as the embedded scheduler leaves them."""
    import threading

    from rq.job import Job

    s = Settings.from_env({"MODEL_DIR": str(tmp_path), "REDIS_URL": redis_url, "RQ_QUEUE": "ncalr-placing-test"})
    sch = RQScheduler(s)
    sch.redis.flushdb()
    ProjectStore(tmp_path, 5).save_placing([13, 11, 12], begun=1)
    ProjectStore(tmp_path, 6).save_placing([21], begun=3)
    webs = [RQScheduler(s) for _ in range(4)]
    threads = [threading.Thread(target=w.recover) for w in webs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    jobs = [Job.fetch(j, connection=sch.redis) for j in sch.queue.job_ids]
    assert [(j.func_name.rsplit(".", 1)[-1], j.args) for j in jobs] == [("rq_place_job", (5, [11, 12, 13]))]
    for pid in (5, 6):
        st = ProjectStore(tmp_path, pid)
        assert st.placing() == [] and not list(st.placing_path.parent.glob("placing.json*"))
    sch.recover()  # a later start finds nothing left
    assert len(sch.queue) == 1


def test_only_one_of_many_claimers_gets_the_waiting_tasks(tmp_path):
    import threading

    st = ProjectStore(tmp_path, 7)
    st.save_placing([3, 1, 2], begun=2)
    got, start = [], threading.Barrier(8)

    def claim():
        start.wait()
        got.append(ProjectStore(tmp_path, 7).claim_placing())
    threads = [threading.Thread(target=claim) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    claims = [c for c in got if c is not None]
    assert len(claims) == 1 and st.placing_record(claims[0]) == ([1, 2, 3], 2)
    assert st.placing() == [] and st.claim_placing() is None  # a fresh claim is not anybody's to take
    assert st.claim_placing(stale_s=-1) is not None  # ... until it is stale: its process died


def test_redis_away_during_the_hand_over_keeps_the_tasks_and_the_other_projects_go_on(redis_url, tmp_path, monkeypatch):
    """Found by review: the claimed file was removed before the placement was queued, so Redis
    failing there lost the tasks, and the exception stopped the other projects' hand-over."""
    from rq.job import Job

    s = Settings.from_env({"MODEL_DIR": str(tmp_path), "REDIS_URL": redis_url, "RQ_QUEUE": "ncalr-placing-test2"})
    sch = RQScheduler(s)
    sch.redis.flushdb()
    ProjectStore(tmp_path, 5).save_placing([11, 12])
    ProjectStore(tmp_path, 6).save_placing([21])
    real = RQScheduler.request_placement

    def flaky(self, project_id, tasks):
        if project_id == 5:
            raise ConnectionError("Redis is restarting")
        return real(self, project_id, tasks)
    monkeypatch.setattr(RQScheduler, "request_placement", flaky)
    sch.recover()
    assert ProjectStore(tmp_path, 5).placing() == [11, 12]  # back in placing.json for the next start
    assert [Job.fetch(j, connection=sch.redis).args for j in sch.queue.job_ids] == [(6, [21])]
    monkeypatch.setattr(RQScheduler, "request_placement", real)
    sch.recover()
    assert sorted(Job.fetch(j, connection=sch.redis).args for j in sch.queue.job_ids) == [(5, [11, 12]), (6, [21])]
    assert not list((tmp_path / "projects").glob("*/placing.json*"))


def test_a_claim_left_by_a_process_that_died_is_placed_and_a_live_embedded_backend_is_left_alone(redis_url, tmp_path):
    import os

    from rq.job import Job

    from ncalr_backend.service.app import lock_model_dir

    s = Settings.from_env({"MODEL_DIR": str(tmp_path), "REDIS_URL": redis_url, "RQ_QUEUE": "ncalr-placing-test3"})
    sch = RQScheduler(s)
    sch.redis.flushdb()
    st = ProjectStore(tmp_path, 8)
    st.save_placing([4, 5])
    dead = st.claim_placing()  # claimed by a process that died before queueing them ...
    os.rename(dead, dead.with_name("placing.json.taken-1000.000-" + "0" * 32))  # ... long ago
    st.save_placing([6])
    held = lock_model_dir(tmp_path)  # an embedded backend runs on this MODEL_DIR: its list is its own
    try:
        sch.recover()
        assert len(sch.queue) == 0 and st.placing() == [6]
    finally:
        held.close()
    sch.recover()
    assert sorted(Job.fetch(j, connection=sch.redis).args for j in sch.queue.job_ids) == [(8, [4, 5]), (8, [6])]
    assert not list(st.root.glob("placing.json*"))


def test_two_backends_on_one_redis_database_keep_their_projects_apart(redis_url, tmp_path):
    """Found by review: two deployments on one Redis database, each with its own RQ_QUEUE and
    MODEL_DIR, shared this backend's keys (``ncalr:<project>:...``): A's cycle request for its
    project 1 deleted B's annotation count of B's project 1, and B's Start training was folded into
    a request that queued nothing in B's queue."""
    a = RQScheduler(Settings.from_env({"MODEL_DIR": str(tmp_path / "a"), "REDIS_URL": redis_url, "RQ_QUEUE": "team-a"}))
    b = RQScheduler(Settings.from_env({"MODEL_DIR": str(tmp_path / "b"), "REDIS_URL": redis_url, "RQ_QUEUE": "team-b"}))
    a.redis.flushdb()
    assert b.count_annotations(1, 8, 1000)["new_annotations"] == 8
    assert a.request_cycle(1, "START_TRAINING")["queued"]
    assert b.count_annotations(1, 5, 1000)["new_annotations"] == 13  # A's request left B's count alone
    out = b.request_cycle(1, "START_TRAINING")
    assert out["queued"] and len(b.queue) == 1 and len(a.queue) == 1
    assert b.status(1)["waiting"] and a.status(1)["new_annotations"] == 0
    assert _keys(1, "ncalr") == {"queued": "ncalr:1:queued", "lock": "ncalr:1:running", "count": "ncalr:1:count",
                                 "place_retry": "ncalr:1:place_retry",
                                 "placing": "ncalr:1:placing", "worker_error": "ncalr:1:worker_error"}  # the default queue's keys as before


def test_a_request_whose_state_write_fails_is_still_queued(redis_url, tmp_path, monkeypatch):
    """Found by review, 2026-12-05: under RQ a full disk on the request's ``pending`` write raised
    after the queued key was set: the job stayed CREATED, every request for 30 s (Start training
    too) was folded into it, and then the reaper dropped it with nothing pending. The embedded
    scheduler already ran such a request anyway; now RQ does too."""
    import errno

    from rq.job import Job

    s = Settings.from_env({"MODEL_DIR": str(tmp_path), "REDIS_URL": redis_url, "RQ_QUEUE": "ncalr-reaper-test"})
    sch = RQScheduler(s)
    sch.redis.flushdb()

    def full(self, **kw):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(ProjectStore, "update_state", full)
    out = sch.request_cycle(6, "12 new annotations")
    assert out["queued"] and sch.queue.job_ids == [out["job"]]
    assert Job.fetch(out["job"], connection=sch.redis).get_status(refresh=True).value == "queued"
    assert sch.request_cycle(6, "Start training")["coalesced"] and len(sch.queue) == 1


def test_the_compose_redis_keeps_the_counts_and_waiting_placements_through_a_kill(tmp_path):
    """Found by review, 2026-12-05: the annotation count and the queued placements live in Redis
    only, and the compose file's Redis kept periodic snapshots: killed, it came back without them
    (9 annotations counted, then the 10th started no cycle; the new tasks stayed unplaced). The
    compose file now runs it with an append-only file; checked here with its own options on a real
    redis-server, killed with SIGKILL and started again on the same directory."""
    import signal
    import subprocess

    import json
    import re

    import redis

    from ncalr_backend.service.demo import free_port
    from tests.redis_server import redis_server

    root = __import__("pathlib").Path(__file__).resolve().parents[2]
    compose = (root / "docker-compose.yml").read_text()  # its redis service's command (JSON-style list)
    cmd = json.loads(re.search(r"\n  redis:\n(?:    .*\n)*?    command: (\[.*\])\n", compose).group(1))
    assert cmd[0] == "redis-server"
    port, data = free_port(), tmp_path / "data"
    data.mkdir()
    s = Settings.from_env({"MODEL_DIR": str(tmp_path), "REDIS_URL": f"redis://127.0.0.1:{port}/0",
                           "RQ_QUEUE": "ncalr-compose-test"})
    with redis_server(args=cmd[1:], cwd=data, port=port) as url:
        sch = RQScheduler(s)
        for _ in range(9):
            assert sch.count_annotations(4, 1, 100)["cycle"] is None
        sch.request_placement(4, [31, 32])
        pid = int(subprocess.check_output(["pgrep", "-f", f"redis-server.*:{port}"]).split()[0])
        os.kill(pid, signal.SIGKILL)
        time.sleep(0.5)
    with redis_server(args=cmd[1:], cwd=data, port=port) as url:
        r = redis.Redis.from_url(url)
        assert int(r.get(_keys(4, s.rq_queue)["count"])) == 9
        assert len(RQScheduler(s).queue) == 1  # the placement job is still queued
        assert RQScheduler(s).count_annotations(4, 1, 100)["cycle"]["queued"]  # the 10th starts the cycle


def test_a_retry_record_folded_into_the_next_job_is_served_by_it(redis_url, tmp_path, monkeypatch):
    """Found by review, 2026-12-05: cycle A failed in a way that may pass while B was queued; A's
    retry record (it names no job) stayed through B, and the reaper ran another cycle after B. The
    next cycle that begins serves it."""
    from rq import SimpleWorker

    from ncalr_backend.service import scheduler
    from ncalr_backend.service.cycle import CycleRun

    s, sch = _worker_env(redis_url, tmp_path, monkeypatch)
    st = ProjectStore(tmp_path, 11)

    def cycle(settings, pid, reason, t, should_stop=None, request=None):
        run = CycleRun.begin(settings, pid, reason, t, request)
        st.finish_in_progress(run.owner, last_completed=run.cycle)
        return {"status": "completed"}
    monkeypatch.setattr(scheduler, "_default_cycle", cycle)
    b = sch.request_cycle(11, "12 new annotations")["job"]  # B waits while A runs ...
    st.update_state(pending={"reason": "A", "triggered_at": 1.0, "attempt": 1, "retry_at": time.time() - 1})  # ... A's retry
    SimpleWorker([sch.queue], connection=sch.redis).work(burst=True, max_jobs=1)
    assert st.state()["pending"] is None and st.state()["last_completed"] == 1
    assert sch.reap_once() == [] and len(sch.queue) == 0
    assert b


def test_the_documented_switch_of_an_existing_redis_to_the_append_only_file_keeps_its_data(tmp_path):
    """Redis 7 started with an append-only file over a volume that holds only a snapshot starts EMPTY
    (redis/redis#12484; found by review, 2026-12-05, for deployments that pull the compose change).
    The migration docker-compose.yml documents: `redis-cli config set appendonly yes` on the running
    Redis, then the restart with the compose file's command. Checked on a real redis-server."""
    import json
    import re

    import redis

    from ncalr_backend.service.demo import free_port
    from tests.redis_server import redis_server

    root = __import__("pathlib").Path(__file__).resolve().parents[2]
    compose = (root / "docker-compose.yml").read_text()
    cmd = json.loads(re.search(r"\n  redis:\n(?:    .*\n)*?    command: (\[.*\])\n", compose).group(1))
    assert "config set appendonly yes" in compose  # the migration is documented where the command is
    port, data = free_port(), tmp_path / "data"
    data.mkdir()
    with redis_server(args=[], cwd=data, port=port) as url:  # the image's default: snapshots only
        r = redis.Redis.from_url(url)
        r.set("ncalr:4:count", 9)
        r.save()
        r.config_set("appendonly", "yes")  # the documented step
        deadline = time.time() + 20
        while time.time() < deadline:
            info = r.info("persistence")
            if not info["aof_rewrite_in_progress"] and not info["aof_rewrite_scheduled"] and info["aof_enabled"]:
                break
            time.sleep(0.1)
    with redis_server(args=cmd[1:], cwd=data, port=port) as url:
        assert int(redis.Redis.from_url(url).get("ncalr:4:count")) == 9
    # and without the step, the data would be gone: what the documentation warns of
    other = tmp_path / "other"
    other.mkdir()
    with redis_server(args=[], cwd=other, port=port) as url:
        redis.Redis.from_url(url).set("ncalr:4:count", 9)
        redis.Redis.from_url(url).save()
    with redis_server(args=cmd[1:], cwd=other, port=port) as url:
        assert redis.Redis.from_url(url).get("ncalr:4:count") is None
