"""Coalescing webhook events into cycles: per project, at most one cycle runs and at most one waits.

Webhooks only *request* work; they never train. A request for a project that already has a cycle
waiting is folded into it (a hundred events during a running cycle give exactly one follow-up
cycle). The follow-up cycle fetches every task and annotation from Label Studio when it starts, so
it sees every annotation that arrived before it started; anything later requests the next one.

Two ways to run the cycles:

* :class:`EmbeddedScheduler` (default): one worker thread inside the backend process. This is why
  gunicorn must run ONE worker process (``--workers 1 --threads 8``): two processes would each have
  their own scheduler and could run the same project's cycle twice at once.
* :class:`RQScheduler` (``REDIS_URL`` set): cycles are RQ jobs run by ``rq worker`` processes (on
  GPU machines). A ``queued`` key per project (SET NX) allows one waiting job, a Redis lock per
  project allows one running job; the counters live in Redis so any number of web processes agree.

Both persist enough to survive a crash: a cycle in progress (``state.json: in_progress``) or
waiting (``pending``) is requested again when the backend starts.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import OrderedDict
from typing import Callable, Iterable, Optional

from ncalr_backend.service.settings import Settings
from ncalr_backend.service.store import ProjectStore, list_projects

log = logging.getLogger(__name__)


def _default_cycle(settings: Settings, project_id: int, reason: str, triggered_at: float) -> dict:
    from ncalr_backend.service.cycle import run_project_cycle
    return run_project_cycle(settings, project_id, reason=reason, triggered_at=triggered_at)


def _default_place(settings: Settings, project_id: int, tasks) -> dict:
    from ncalr_backend.service.placement import place_new_tasks
    return place_new_tasks(settings, project_id, list(tasks.values()) if isinstance(tasks, dict) else list(tasks))


class BaseScheduler:
    settings: Settings

    def count_annotations(self, project_id: int, n: int, num_tasks: Optional[int]) -> dict:
        raise NotImplementedError

    def request_cycle(self, project_id: int, reason: str, triggered_at: Optional[float] = None) -> dict:
        raise NotImplementedError

    def request_placement(self, project_id: int, tasks: Iterable) -> dict:
        raise NotImplementedError

    def status(self, project_id: int) -> dict:
        raise NotImplementedError

    def recover(self) -> list:
        """Request again every cycle a crash interrupted (or that was waiting)."""
        out = []
        for pid in list_projects(self.settings.model_dir):
            st = ProjectStore(self.settings.model_dir, pid)
            s = st.state()
            if s.get("in_progress") or s.get("pending"):
                removed = st.clean_workdirs()
                orphans = set(s.get("orphan_versions") or [])
                if (s.get("in_progress") or {}).get("model_version"):
                    orphans.add(s["in_progress"]["model_version"])
                st.update_state(in_progress=None, orphan_versions=sorted(orphans))
                log.warning("project %s: cycle interrupted or waiting at shutdown (%d partial dirs removed); "
                            "running it again", pid, removed)
                self.request_cycle(pid, "recovered")
                out.append(pid)
        return out

    def _threshold(self, project_id: int, num_tasks: Optional[int]) -> int:
        st = ProjectStore(self.settings.model_dir, project_id)
        known = st.state().get("num_tasks")
        if num_tasks is not None:
            if known != int(num_tasks):
                st.update_state(num_tasks=int(num_tasks))
        else:
            num_tasks = int(known or 0)
        return self.settings.trigger_threshold(num_tasks)


class EmbeddedScheduler(BaseScheduler):
    """One worker thread in this process; per project one running + at most one waiting cycle."""

    def __init__(self, settings: Settings, cycle_fn: Callable = None, place_fn: Callable = None):
        self.settings = settings
        self.cycle_fn = cycle_fn or _default_cycle
        self.place_fn = place_fn or _default_place
        self._cv = threading.Condition()
        self._waiting: "OrderedDict[int, dict]" = OrderedDict()  # project -> {"cycle": {...}, "tasks": set}
        self._running: Optional[int] = None
        self._running_kind: Optional[str] = None
        self._counts = {"cycles_run": {}, "cycles_failed": {}}
        self._thread: Optional[threading.Thread] = None
        self._stop = False

    # ------------------------------------------------------------ requests
    def _ensure_thread(self):
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._loop, name="ncalr-cycles", daemon=True)
            self._thread.start()

    def count_annotations(self, project_id: int, n: int, num_tasks: Optional[int]) -> dict:
        pid = int(project_id)
        thr = self._threshold(pid, num_tasks)
        st = ProjectStore(self.settings.model_dir, pid)
        with self._cv:
            count = st.add_annotations(n)
            if count < thr:
                return {"counted": n, "new_annotations": count, "threshold": thr, "cycle": None}
            st.update_state(new_annotations=0)
        return {"counted": n, "new_annotations": count, "threshold": thr,
                "cycle": self.request_cycle(pid, f"{count} new annotations (threshold {thr})")}

    def request_cycle(self, project_id: int, reason: str, triggered_at: Optional[float] = None) -> dict:
        pid = int(project_id)
        now = triggered_at or time.time()
        with self._cv:
            job = self._waiting.setdefault(pid, {})
            if "cycle" in job:
                job["cycle"]["coalesced"] += 1
                return {"queued": False, "coalesced": True, "running": self._running == pid}
            job["cycle"] = {"reason": reason, "triggered_at": now, "coalesced": 0}
            ProjectStore(self.settings.model_dir, pid).update_state(
                pending={"reason": reason, "triggered_at": now}, new_annotations=0)
            self._ensure_thread()
            self._cv.notify_all()
            return {"queued": True, "coalesced": False, "running": self._running == pid}

    def request_placement(self, project_id: int, tasks: Iterable) -> dict:
        """``tasks``: ``{"id", "data"}`` dicts (the TASKS_CREATED payload) or bare ids."""
        pid = int(project_id)
        ids = {int(t["id"]) if isinstance(t, dict) else int(t): t for t in tasks}
        with self._cv:
            job = self._waiting.setdefault(pid, {})
            job.setdefault("tasks", {}).update(ids)
            self._ensure_thread()
            self._cv.notify_all()
        return {"queued_tasks": len(ids)}

    # ------------------------------------------------------------ worker
    def _loop(self):
        while True:
            with self._cv:
                while not self._waiting and not self._stop:
                    self._cv.wait()
                if self._stop:
                    return
                pid, job = self._waiting.popitem(last=False)
                self._running = pid
                self._running_kind = "cycle" if "cycle" in job else "placement"
            try:
                if "cycle" in job:
                    c = job["cycle"]
                    ProjectStore(self.settings.model_dir, pid).update_state(pending=None)
                    log.info("project %s: cycle starts (%s; %d more requests folded in)", pid, c["reason"],
                             c["coalesced"])
                    # new tasks created before this point are fetched and ranked by the cycle itself
                    self.cycle_fn(self.settings, pid, c["reason"], c["triggered_at"])
                    self._counts["cycles_run"][pid] = self._counts["cycles_run"].get(pid, 0) + 1
                elif job.get("tasks"):
                    self.place_fn(self.settings, pid, job["tasks"])
            except Exception as exc:  # the worker must survive any cycle failure
                if "cycle" in job:
                    self._counts["cycles_failed"][pid] = self._counts["cycles_failed"].get(pid, 0) + 1
                log.error("project %s: %s failed: %s", pid, self._running_kind, exc)
            finally:
                with self._cv:
                    self._running = None
                    self._running_kind = None
                    self._cv.notify_all()

    def wait_idle(self, timeout: float = 60.0) -> bool:
        deadline = time.time() + timeout
        with self._cv:
            while self._waiting or self._running is not None:
                left = deadline - time.time()
                if left <= 0:
                    return False
                self._cv.wait(left)
        return True

    def stop(self):
        with self._cv:
            self._stop = True
            self._cv.notify_all()

    def status(self, project_id: int) -> dict:
        pid = int(project_id)
        with self._cv:
            job = self._waiting.get(pid, {})
            return {"mode": "embedded", "running": self._running == pid and self._running_kind == "cycle",
                    "placing": self._running == pid and self._running_kind == "placement",
                    "waiting": "cycle" in job, "waiting_tasks": len(job.get("tasks", ())),
                    "cycles_run": self._counts["cycles_run"].get(pid, 0),
                    "cycles_failed": self._counts["cycles_failed"].get(pid, 0)}


# ---------------------------------------------------------------------------- RQ
LOCK_TTL = 120  # seconds


def _keys(pid: int) -> dict:
    return {"queued": f"ncalr:{pid}:queued", "lock": f"ncalr:{pid}:running", "count": f"ncalr:{pid}:count"}


def rq_cycle_job(project_id: int):
    """RQ job: run one cycle for the project (one at a time per project, via a Redis lock)."""
    from redis import Redis
    settings = Settings.from_env()
    r = Redis.from_url(settings.redis_url)
    k = _keys(int(project_id))
    # A short lock kept alive while the cycle runs: a worker killed mid-cycle frees the project
    # within LOCK_TTL seconds instead of blocking it.
    lock = r.lock(k["lock"], timeout=LOCK_TTL, blocking_timeout=None)
    lock.acquire()
    done = threading.Event()

    def keep_alive():
        while not done.wait(LOCK_TTL / 4):
            try:
                lock.reacquire()
            except Exception as exc:  # pragma: no cover - Redis gone: the cycle goes on
                log.warning("could not extend the cycle lock of project %s: %s", project_id, exc)

    threading.Thread(target=keep_alive, daemon=True).start()
    try:
        raw = r.getdel(k["queued"])  # from here on, new requests enqueue the (one) next job
        info = json.loads(raw) if raw else {"reason": "queued", "triggered_at": time.time()}
        ProjectStore(settings.model_dir, project_id).update_state(pending=None)
        return _default_cycle(settings, int(project_id), info["reason"], info["triggered_at"])
    finally:
        done.set()
        try:
            lock.release()
        except Exception:  # pragma: no cover - expired meanwhile
            pass


def rq_place_job(project_id: int, tasks):
    settings = Settings.from_env()
    return _default_place(settings, int(project_id), tasks)


class RQScheduler(BaseScheduler):
    def __init__(self, settings: Settings, connection=None):
        from redis import Redis
        from rq import Queue
        self.settings = settings
        self.redis = connection or Redis.from_url(settings.redis_url)
        self.queue = Queue(settings.rq_queue, connection=self.redis)

    def count_annotations(self, project_id: int, n: int, num_tasks: Optional[int]) -> dict:
        pid = int(project_id)
        thr = self._threshold(pid, num_tasks)
        k = _keys(pid)
        count = int(self.redis.incrby(k["count"], int(n)))
        if count < thr or not self.redis.delete(k["count"]):  # only one caller wins the DEL
            return {"counted": n, "new_annotations": count, "threshold": thr, "cycle": None}
        return {"counted": n, "new_annotations": count, "threshold": thr,
                "cycle": self.request_cycle(pid, f"{count} new annotations (threshold {thr})")}

    def request_cycle(self, project_id: int, reason: str, triggered_at: Optional[float] = None) -> dict:
        pid = int(project_id)
        now = triggered_at or time.time()
        k = _keys(pid)
        if not self.redis.set(k["queued"], json.dumps({"reason": reason, "triggered_at": now}), nx=True):
            return {"queued": False, "coalesced": True}
        self.redis.delete(k["count"])
        ProjectStore(self.settings.model_dir, pid).update_state(pending={"reason": reason, "triggered_at": now})
        job = self.queue.enqueue(rq_cycle_job, pid, job_timeout=24 * 3600, result_ttl=7 * 24 * 3600,
                                 failure_ttl=7 * 24 * 3600, description=f"ncalr cycle project {pid}")
        return {"queued": True, "coalesced": False, "job": job.id}

    def request_placement(self, project_id: int, tasks: Iterable) -> dict:
        tasks = [{"id": int(t["id"]), "data": t.get("data")} if isinstance(t, dict) else int(t) for t in tasks]
        job = self.queue.enqueue(rq_place_job, int(project_id), tasks, job_timeout=3600)
        return {"queued_tasks": len(tasks), "job": job.id}

    def status(self, project_id: int) -> dict:
        k = _keys(int(project_id))
        return {"mode": "rq", "running": bool(self.redis.exists(k["lock"])),
                "waiting": bool(self.redis.exists(k["queued"])),
                "new_annotations": int(self.redis.get(k["count"]) or 0)}


def make_scheduler(settings: Settings) -> BaseScheduler:
    return RQScheduler(settings) if settings.redis_url else EmbeddedScheduler(settings)
