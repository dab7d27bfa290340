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
  project allows one running job, a cycle or a placement (as the embedded thread runs them one after
  the other); the counters live in Redis so any number of web processes agree.

Both persist enough to survive a crash: a cycle in progress (``state.json: in_progress``) or
waiting (``pending``) is requested again when the backend starts.

Faults (see docs/security.md): a cycle that fails for a reason that may pass (Label Studio
unreachable or answering 5xx, a full disk) is tried again after ``CYCLE_RETRY_DELAYS`` seconds
(its trigger is kept in ``state.json: pending`` meanwhile, so a restart also retries it); a cycle
that fails for a reason that will not pass by itself (no labels yet, predictions refused) is not.
Stopping the backend (SIGTERM) interrupts a running cycle at the next batch: it is left marked in
progress and re-run on the next start. In RQ mode, recovery never touches a project whose cycle
lock is held, and every web process runs a reaper that re-requests a cycle whose worker died
(its lock expired with ``in_progress`` still set), without a web restart.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections import OrderedDict
from contextlib import contextmanager
from typing import Callable, Iterable, Optional

from ncalr_backend.service.settings import Settings
from ncalr_backend.service.recovery import abandon_in_progress, crash_looping
from ncalr_backend.service.store import MODEL_DIR_ID_FILE, ProjectStore, list_projects, model_dir_id

log = logging.getLogger(__name__)


def _default_cycle(settings: Settings, project_id: int, reason: str, triggered_at: float, should_stop=None,
                   request: Optional[str] = None) -> dict:
    from ncalr_backend.service.cycle import run_project_cycle
    return run_project_cycle(settings, project_id, reason=reason, triggered_at=triggered_at, should_stop=should_stop,
                             request=request)


def retryable(exc: BaseException) -> bool:
    """Whether a cycle failure may pass by itself (see ``CycleError.retryable``)."""
    return bool(getattr(exc, "retryable", False))


def interrupted(exc: BaseException) -> bool:
    return bool(getattr(exc, "interrupted", False))


def _default_place(settings: Settings, project_id: int, tasks) -> dict:
    from ncalr_backend.service.placement import place_new_tasks
    return place_new_tasks(settings, project_id, list(tasks))  # ids (a dict iterates its keys)


# seconds before each new try of a placement that failed in a way that may pass (Label Studio
# unreachable or answering 5xx, images that could not be read); then it is left to the next cycle
PLACE_RETRY_DELAYS = (10.0, 30.0, 120.0)
# jobs holding the recorded new tasks (placing.json) that ended with the process, in a row, before the
# tasks are left to the next cycle (as recovery.MAX_CRASHES for cycles)
MAX_PLACING_STARTS = 3


def _place_once(place_fn: Callable, settings: Settings, project_id: int, tasks) -> tuple:
    """One placement of ``tasks``: (its result, the task ids worth trying again). A failure that may
    pass (``retryable``) gives every id back: a new try reads them again and skips those that got a
    prediction of the live version meanwhile (``placement._has_version``), so it never doubles one.
    Tasks whose image could not be read (a download that failed) are given back too. Any other
    failure is raised (found by review: one 5xx or timeout left the new tasks unplaced until the
    next cycle)."""
    ids = [int(t) for t in tasks]
    try:
        out = place_fn(settings, project_id, tasks)
    except Exception as exc:
        if not retryable(exc):
            raise
        return {"placed": 0, "error": str(exc)}, ids
    failures = (out.get("failures") if isinstance(out, dict) else None) or []
    asked = set(ids)
    failed = [f.get("task") for f in failures if isinstance(f, dict)]
    return out, [t for t in dict.fromkeys(failed) if isinstance(t, int) and t in asked]


def _place_retry_delay(project_id: int, out, again: list, attempt: int) -> Optional[float]:
    """The delay before the next try of ``again`` (None: none left; the next cycle ranks them)."""
    why = out.get("error") if isinstance(out, dict) and out.get("error") else "their image could not be read"
    if attempt >= len(PLACE_RETRY_DELAYS):
        log.error("project %s: %d new task(s) still not placed after %d tries (%s); the next cycle ranks them",
                  project_id, len(again), attempt + 1, why)
        return None
    log.warning("project %s: %d new task(s) not placed (%s); trying again in %.0f s (try %d of %d)", project_id,
                len(again), why, PLACE_RETRY_DELAYS[attempt], attempt + 2, len(PLACE_RETRY_DELAYS) + 1)
    return PLACE_RETRY_DELAYS[attempt]


def _served(st: ProjectStore, request: Optional[str]) -> None:
    """After the cycle: its request is no longer pending, whatever became of it (the cycle cleared it
    when it began; a project it skipped or a failure before its marker did not). Only a record that
    names ``request``: a retry, an interruption or the next request writes its own. Best effort."""
    if request is None:
        return
    try:
        st.clear_pending(request, exact=True)
    except OSError as exc:
        log.warning("project %s: cannot clear the served cycle request in state.json: %s", st.project_id, exc)


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

    def is_running_elsewhere(self, project_id: int) -> bool:
        """True when another process is running this project's cycle right now (RQ: its lock)."""
        return False

    def is_queued_elsewhere(self, project_id: int) -> bool:
        """True when the project's waiting cycle is a job that will still run (RQ: its queued key
        names a job that is not lost), so recovery has nothing to request."""
        return False

    def recover(self) -> list:
        """Request again every cycle a crash interrupted (or that was waiting); never one that
        another process is running."""
        out = []
        for pid in list_projects(self.settings.model_dir):
            try:  # one project's broken files must not stop the others' recovery
                st = ProjectStore(self.settings.model_dir, pid)
                s = st.state()
                # a waiting cycle whose RQ job is still queued is not recovered (found 2026-12-02: a web
                # start re-requested it as "recovered", logged it as interrupted and lost its reason)
                waiting_only = s.get("pending") and not s.get("in_progress")
                if ((s.get("in_progress") or s.get("pending")) and not self.is_running_elsewhere(pid)
                        and not (waiting_only and self.is_queued_elsewhere(pid))):
                    pending = s.get("pending") or {}
                    ip = s.get("in_progress") or {}
                    rerun = {"reason": "recovered", "triggered_at": ip.get("triggered_at") or pending.get("triggered_at")
                             or time.time(), "attempt": int(pending.get("attempt", 0)), "retry_at": None}
                    removed = abandon_in_progress(st, s, rerun=rerun)  # the re-run is pending from here on
                    if removed is None:  # a cycle began meanwhile: it runs the project
                        continue
                    if crash_looping(st):
                        continue
                    log.warning("project %s: cycle interrupted or waiting at shutdown (%d partial dirs removed); "
                                "running it again", pid, removed)
                    self.request_cycle(pid, "recovered", rerun["triggered_at"], attempt=rerun["attempt"])
                    out.append(pid)
            except Exception as exc:  # noqa: BLE001
                log.error("project %s: cannot recover its interrupted cycle: %s", pid, exc)
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
        self._cancel = threading.Event()  # set by stop(): a running cycle ends at its next batch
        self._cv = threading.Condition()
        self._waiting: "OrderedDict[int, dict]" = OrderedDict()  # project -> {"cycle": {...}, "tasks": set}
        self._running: Optional[int] = None
        self._running_kind: Optional[str] = None
        self._running_tasks: dict = {}  # the running job's new tasks (placing.json holds them and the waiting ones)
        # project -> jobs holding its recorded new tasks that began and did not end (placing.json's
        # "begun"): a process that dies inside them each time gives them up (MAX_PLACING_STARTS)
        self._placing_begun: dict = {}
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

    def request_cycle(self, project_id: int, reason: str, triggered_at: Optional[float] = None,
                      attempt: int = 0, delay: float = 0.0) -> dict:
        pid = int(project_id)
        now = triggered_at or time.time()
        with self._cv:
            job = self._waiting.setdefault(pid, {})
            if "cycle" in job:
                job["cycle"]["coalesced"] += 1
                return {"queued": False, "coalesced": True, "running": self._running == pid}
            # "job": the request's id in state.json, cleared by the cycle that serves it when it starts
            job["cycle"] = {"reason": reason, "triggered_at": now, "coalesced": 0, "attempt": attempt,
                            "not_before": time.time() + delay, "job": f"embedded-{uuid.uuid4().hex}"}
            try:  # what /status and a restart read; the job above is what runs
                ProjectStore(self.settings.model_dir, pid).update_state(
                    pending={"reason": reason, "triggered_at": now, "attempt": attempt, "job": job["cycle"]["job"],
                             "retry_at": job["cycle"]["not_before"] if delay else None}, new_annotations=0)
            except OSError as exc:  # a full or read-only disk: the request still runs (found by review: it
                # stayed in memory unannounced to the worker, and every later request was folded into it)
                log.warning("project %s: cannot note the cycle request in state.json (%s); it runs anyway", pid, exc)
            finally:
                self._ensure_thread()
                self._cv.notify_all()
            return {"queued": True, "coalesced": False, "running": self._running == pid}

    def request_placement(self, project_id: int, tasks: Iterable) -> dict:
        """``tasks``: task ids (or ``{"id"}`` dicts); placement reads them from Label Studio."""
        pid = int(project_id)
        ids = {int(t["id"]) if isinstance(t, dict) else int(t): None for t in tasks}
        with self._cv:
            job = self._waiting.setdefault(pid, {})
            job.setdefault("tasks", {}).update(ids)
            # fresh tasks never wait out another placement's retry delay, and get their own tries
            # (found by review); the tasks waiting for a retry come along, early
            job.pop("place_not_before", None)
            job.pop("place_attempt", None)
            self._save_placing(pid)
            self._ensure_thread()
            self._cv.notify_all()
        return {"queued_tasks": len(ids)}

    def _save_placing(self, pid: int) -> None:
        """Under the lock: ``placing.json`` := the project's new tasks not placed yet, the running
        job's and the waiting one's (found 2026-12-02: they lived in memory only, so a restart left
        them without a queue place until the next cycle). A write that fails is logged, not raised:
        the request itself is queued."""
        ids = set(self._running_tasks.get(pid) or ()) | set(self._waiting.get(pid, {}).get("tasks") or ())
        try:
            ProjectStore(self.settings.model_dir, pid).save_placing(ids, begun=self._placing_begun.get(pid, 0))
        except OSError as exc:
            log.error("project %s: cannot record the %d new task(s) waiting for a queue place: %s", pid, len(ids), exc)

    def recover(self) -> list:
        """The base's recovery of cycles, then the placements a stop or crash left (``placing.json``)."""
        out = super().recover()
        for pid in list_projects(self.settings.model_dir):
            try:
                st = ProjectStore(self.settings.model_dir, pid)
                ids, begun = st.placing_record(st.placing_path)  # one read of the file
                if ids and begun >= MAX_PLACING_STARTS:  # each job holding them ended with the process
                    log.error("project %s: %d new task(s) waiting for a queue place: the backend died in each of the "
                              "last %d jobs that held them (does placing them kill the process: out of memory?); "
                              "left to the next cycle", pid, len(ids), begun)
                    st.save_placing(())
                    continue
            except Exception as exc:  # noqa: BLE001 - one project's files must not stop the others
                log.error("project %s: cannot read the tasks waiting for a queue place: %s", pid, exc)
                continue
            if ids:
                log.warning("project %s: %d new task(s) were waiting for a queue place when the backend stopped; "
                            "placing them now", pid, len(ids))
                with self._cv:
                    self._placing_begun[pid] = begun  # kept with them until a job holding them ends
                self.request_placement(pid, ids)
        return out

    # ------------------------------------------------------------ worker
    def _next_job(self):
        """Under the lock: wait for a job whose time has come (a retry waits for its delay)."""
        while True:
            if self._stop:
                return None
            now = time.time()
            for pid, job in self._waiting.items():
                if self._due(job) <= now:
                    del self._waiting[pid]
                    return pid, job
            waits = [self._due(j) - now for j in self._waiting.values()]
            self._cv.wait(max(0.05, min(waits)) if waits else None)

    @staticmethod
    def _due(job: dict) -> float:
        """When a waiting job may start: a cycle's retry delay; a placement's alone, its retry delay."""
        if "cycle" in job:
            return job["cycle"].get("not_before", 0)
        return job.get("place_not_before", 0)

    def _loop(self):
        while True:
            with self._cv:
                nxt = self._next_job()
                if nxt is None:
                    return
                pid, job = nxt
                self._running = pid
                self._running_kind = "cycle" if "cycle" in job else "placement"
                self._running_tasks[pid] = dict(job.get("tasks") or {})
                if job.get("tasks"):  # on disk before it runs: a death inside counts (MAX_PLACING_STARTS)
                    self._placing_begun[pid] = self._placing_begun.get(pid, 0) + 1
                    self._save_placing(pid)
            place = not job.get("cycle")
            keep = False  # whether the job's tasks stay in placing.json (an interrupted cycle: for the next start)
            try:
                if "cycle" in job:
                    try:
                        keep = not self._run_cycle(pid, job["cycle"])
                    except Exception:  # noqa: BLE001 - cycles log their own failures
                        # the cycle would have ranked the tasks created while it waited; it did not, so
                        # they are placed under the live version now (they were dropped: found by review)
                        place = True
                if place and job.get("tasks"):
                    with self._cv:
                        self._running_kind = "placement"
                    self._place(pid, job)
            except Exception as exc:  # the worker must survive any failure
                log.error("project %s: placement failed: %s", pid, exc)
            finally:
                with self._cv:
                    if not keep:  # placed, given back to wait for a retry, or ranked by the cycle
                        self._running_tasks.pop(pid, None)
                        self._placing_begun.pop(pid, None)  # the process survived the job
                        self._save_placing(pid)
                    elif job.get("tasks"):  # a clean stop interrupted the cycle: not a death
                        self._placing_begun[pid] = max(0, self._placing_begun.get(pid, 1) - 1)
                        self._save_placing(pid)
                    self._running = None
                    self._running_kind = None
                    self._cv.notify_all()

    def _place(self, pid: int, job: dict) -> None:
        """Place the job's tasks; those worth another try wait again, after ``PLACE_RETRY_DELAYS``
        (tasks requested meanwhile join them; a cycle requested meanwhile ranks them all)."""
        attempt = int(job.get("place_attempt", 0))
        out, again = _place_once(self.place_fn, self.settings, pid, job["tasks"])
        if not again:
            return
        delay = _place_retry_delay(pid, out, again, attempt)
        if delay is None:
            return
        with self._cv:
            w = self._waiting.setdefault(pid, {})
            w.setdefault("tasks", {}).update(dict.fromkeys(again))
            w["place_attempt"] = max(attempt + 1, int(w.get("place_attempt", 0)))
            w["place_not_before"] = max(float(w.get("place_not_before", 0)), time.time() + delay)
            self._ensure_thread()
            self._cv.notify_all()

    def _run_cycle(self, pid: int, c: dict) -> bool:
        """Run the cycle: True when it completed, False when a shutdown interrupted it; a failure raises."""
        st = ProjectStore(self.settings.model_dir, pid)
        # the counter restarts when the cycle starts, not when it was queued: annotations made while
        # it waited are in its snapshot, and counting them again started a needless next cycle. The
        # request stays pending until the cycle's marker exists (CycleRun.begin clears it in that write):
        # a death before then leaves it for recovery
        try:
            st.update_state(new_annotations=0)
        except OSError as exc:  # a full disk: the cycle runs, fails on its own writes and is retried
            # (found by review: this write raised outside the cycle, and its retries ended silently)
            log.warning("project %s: cannot note the cycle's start in state.json (%s)", pid, exc)
        log.info("project %s: cycle starts (%s; %d more requests folded in%s)", pid, c["reason"], c["coalesced"],
                 f"; attempt {c['attempt'] + 1}" if c.get("attempt") else "")
        try:
            # new tasks created before this point are fetched and ranked by the cycle itself
            self.cycle_fn(self.settings, pid, c["reason"], c["triggered_at"], should_stop=self._cancel.is_set,
                          request=c.get("job"))
            self._counts["cycles_run"][pid] = self._counts["cycles_run"].get(pid, 0) + 1
            _served(st, c.get("job"))
            return True
        except Exception as exc:
            _served(st, c.get("job"))  # before a retry or an interruption writes its own record
            if interrupted(exc):
                log.warning("project %s: cycle interrupted by shutdown; it runs again on the next start", pid)
                st.update_state(pending={"reason": c["reason"], "triggered_at": c["triggered_at"],
                                         "attempt": c.get("attempt", 0), "retry_at": None})
                return False
            self._counts["cycles_failed"][pid] = self._counts["cycles_failed"].get(pid, 0) + 1
            delays = self.settings.cycle_retry_delays
            attempt = int(c.get("attempt", 0))
            if retryable(exc) and attempt < len(delays):
                log.warning("project %s: cycle failed (%s); trying again in %.0f s (attempt %d of %d)",
                            pid, exc, delays[attempt], attempt + 2, len(delays) + 1)
                self.request_cycle(pid, c["reason"], c["triggered_at"], attempt=attempt + 1, delay=delays[attempt])
            else:
                log.error("project %s: cycle failed%s: %s", pid,
                          " (no more retries)" if retryable(exc) else " (not retried: it will not pass by itself)",
                          exc)
            raise

    def wait_idle(self, timeout: float = 60.0) -> bool:
        deadline = time.time() + timeout
        with self._cv:
            while self._waiting or self._running is not None:
                left = deadline - time.time()
                if left <= 0:
                    return False
                self._cv.wait(left)
        return True

    def stop(self, timeout: float = 0.0) -> bool:
        """Stop taking jobs and interrupt a running cycle at its next batch; with ``timeout``, wait
        that long for the worker thread to end. True when it has ended."""
        self._cancel.set()
        with self._cv:
            self._stop = True
            self._cv.notify_all()
        if timeout and self._thread is not None:
            self._thread.join(timeout)
        return self._thread is None or not self._thread.is_alive()

    def status(self, project_id: int) -> dict:
        pid = int(project_id)
        with self._cv:
            job = self._waiting.get(pid, {})
            retry_at = job.get("cycle", {}).get("not_before") if job.get("cycle", {}).get("attempt") else None
            return {"mode": "embedded", "running": self._running == pid and self._running_kind == "cycle",
                    "placing": self._running == pid and self._running_kind == "placement",
                    "waiting": "cycle" in job, "waiting_tasks": len(job.get("tasks", ())),
                    "retry_at": retry_at, "attempt": job.get("cycle", {}).get("attempt"),
                    "placement_retry_at": job.get("place_not_before") if job.get("place_attempt") else None,
                    "cycles_run": self._counts["cycles_run"].get(pid, 0),
                    "cycles_failed": self._counts["cycles_failed"].get(pid, 0)}


# ---------------------------------------------------------------------------- RQ
WORKERS_TTL_S = 1.0  # how long one count of the live RQ workers is used (a page asks once per project)
ENQUEUE_GRACE_S = 30.0  # a queued-cycle key whose job is still CREATED (not enqueued yet) is not "lost" before this
SHUTDOWN_POLL_S = 2.0  # how often a running job asks whether its RQ worker was asked to shut down


def _keys(pid: int, queue: str) -> dict:
    """This backend's Redis keys for a project, apart per ``RQ_QUEUE`` (found by review: two backends
    on one Redis database with their own queues shared them, and one's cycle request or count
    silently swallowed the other's). The default queue keeps the keys it always had."""
    base = f"ncalr:{int(pid)}" if queue == "ncalr" else f"ncalr:{queue}:{int(pid)}"
    return {"queued": f"{base}:queued", "lock": f"{base}:running", "count": f"{base}:count",
            "place_retry": f"{base}:place_retry", "placing": f"{base}:placing", "worker_error": f"{base}:worker_error"}


def keep_lock(lock, every: float, done: threading.Event, lost: threading.Event, project_id: int,
              stop_requested: Optional[Callable[[], bool]] = None, poll: float = None) -> None:
    """Extend a running cycle's lock every ``every`` seconds until ``done``. If it expired meanwhile
    (Redis away for longer than its TTL) it is taken again when free; when another worker holds it,
    ``lost`` is set (the cycle stops at its next batch or stage) and the loop ends.

    ``stop_requested`` (asked every ``poll`` seconds, ``SHUTDOWN_POLL_S`` by default): the worker
    running the job was asked to stop (``rq_stop_requested``); ``lost`` is set too, so the cycle
    stops cleanly, but the lock is kept until ``done`` (the job still runs until it has stopped)."""
    from redis.exceptions import LockNotOwnedError

    poll = SHUTDOWN_POLL_S if poll is None else poll
    tick = min(every, poll) if stop_requested is not None else every
    due = time.monotonic() + every
    while not done.wait(tick):
        if stop_requested is not None and not lost.is_set():
            try:
                if stop_requested():
                    log.warning("project %s: the RQ worker was asked to shut down; stopping this job at its "
                                "next batch or stage (it runs again)", project_id)
                    lost.set()
            except Exception as exc:  # noqa: BLE001 - Redis away for a moment: next tick
                log.warning("could not read the shutdown request of the worker of project %s: %s", project_id, exc)
        if time.monotonic() < due:
            continue
        due = time.monotonic() + every
        try:
            lock.reacquire()
        except LockNotOwnedError:
            try:
                mine = lock.acquire(blocking=False)
            except Exception as exc:  # noqa: BLE001 - Redis away again: next tick
                log.warning("could not take back the cycle lock of project %s: %s", project_id, exc)
                continue
            if not mine:
                log.error("project %s: the cycle lock was lost to another worker; stopping this cycle", project_id)
                lost.set()
                return
            log.warning("project %s: the cycle lock had expired; taken back", project_id)
        except Exception as exc:  # noqa: BLE001 - Redis away for a moment: try again at the next tick
            log.warning("could not extend the cycle lock of project %s: %s", project_id, exc)


def rq_stop_requested(r, job) -> Optional[Callable[[], bool]]:
    """For a job run by an RQ worker: whether that worker was asked to shut down. On SIGTERM (a
    warm shutdown: ``docker stop``, ``rq``'s own stop) RQ waits for the running job and tells the
    work horse nothing; it only sets ``shutdown_requested_date`` on the worker's hash
    (``rq:worker:<name>``, ``BaseWorker.set_shutdown_requested_date``). Found by review: a cycle
    never heard of the stop, was SIGKILLed after the grace period and counted as a crash. None
    outside a worker."""
    name = getattr(job, "worker_name", None) if job is not None else None
    if not name:
        return None
    from rq.worker import Worker
    key = Worker.redis_worker_namespace_prefix + name
    return lambda: bool(r.hexists(key, "shutdown_requested_date"))


JOB_RESULT_KEYS = ("project", "cycle", "model_version", "status", "live", "reason", "triggered_at", "started_at",
                   "finished_at")


def job_result(report) -> dict:
    """What a cycle job leaves in Redis as its result (kept 7 days, ``result_ttl``): the cycle's
    status and version, not its report. The report is on disk (``report.json``); in Redis it held a
    line per failed image or unusable annotation, with its URL whole (a presigned URL's signature
    that ``/status`` redacts), readable by anyone with Redis or rq-dashboard access, and growing
    with the project (found by review, 2026-12-05)."""
    rep = report if isinstance(report, dict) else {}
    return {k: rep[k] for k in JOB_RESULT_KEYS if k in rep and isinstance(rep[k], (str, int, float, bool, type(None)))}


def _job_queue(settings: Settings, job) -> str:
    """The queue a job came from (``job.origin``): its Redis keys are that queue's, whatever this
    worker's ``RQ_QUEUE`` says (found by review: ``rq worker <queue>`` started without ``RQ_QUEUE``
    used the default keys, so requests made during its cycle were folded into it and lost, and the
    web's reaper saw no lock). ``RQ_QUEUE`` outside a worker."""
    origin = getattr(job, "origin", None) if job is not None else None
    return origin if isinstance(origin, str) and origin else settings.rq_queue


@contextmanager
def project_lock(r, project_id: int, ttl: float, queue: str, stop_requested: Optional[Callable[[], bool]] = None):
    """Hold the project's Redis lock (one cycle or placement at a time per project, as the embedded
    scheduler's single thread does), kept alive every ttl / 4 (``keep_lock``); yields the ``lost``
    event that tells the holder to stop (the lock went to another worker, or ``stop_requested``:
    the worker is shutting down)."""
    # thread_local=False: the keep-alive thread must be able to extend the lock this thread took
    lock = r.lock(_keys(int(project_id), queue)["lock"], timeout=ttl, blocking_timeout=None, thread_local=False)
    lock.acquire()
    done, lost = threading.Event(), threading.Event()
    threading.Thread(target=keep_lock, args=(lock, ttl / 4, done, lost, project_id, stop_requested),
                     daemon=True).start()
    try:
        yield lost
    finally:
        done.set()
        try:
            lock.release()
        except Exception:  # pragma: no cover - expired meanwhile
            pass


def rq_cycle_job(project_id: int):
    """RQ job: run one cycle for the project (one at a time per project, via a Redis lock).

    The lock is short (``RQ_LOCK_TTL``) and kept alive while the cycle runs, so a worker killed
    mid-cycle frees the project within that time; the web processes' reaper then re-requests the
    cycle. A failure that may pass is not retried here: the job records when to try again
    (``pending.retry_at``) and the reaper requests it then (no RQ scheduler needed)."""
    from redis import Redis
    from rq import get_current_job
    settings = Settings.from_env()
    r = Redis.from_url(settings.redis_url)
    me = get_current_job()
    queue = _job_queue(settings, me)
    k = _keys(int(project_id), queue)
    st = ProjectStore(settings.model_dir, project_id)
    # ``lost`` also when the worker is shutting down: the cycle stops at its next batch, stays marked
    # in progress as interrupted (not a crash) and the reaper runs it again
    with project_lock(r, project_id, settings.rq_lock_ttl, queue, rq_stop_requested(r, me)) as lost:
        raw = r.getdel(k["queued"])  # from here on, new requests enqueue the (one) next job
        r.delete(k["count"])  # annotations made while this job waited are in its snapshot: not counted again
        info = json.loads(raw) if raw else {"reason": "queued", "triggered_at": time.time()}
        if info.get("model_dir") and info["model_dir"] != model_dir_id(settings.model_dir):
            msg = (f"this RQ worker's MODEL_DIR ({settings.model_dir}) is not the web process's (another "
                   f"{MODEL_DIR_ID_FILE}): mount the same folder at MODEL_DIR in the web processes and every "
                   "worker; the cycle did not run")
            log.error("project %s: %s", project_id, msg)
            r.set(k["worker_error"], msg, ex=24 * 3600)  # the web's reaper reports it (its state.json is not ours)
            return {"status": "refused", "error": msg}
        attempt = int(info.get("attempt", 0))
        token = me.id if me is not None else None
        if token is None:  # called outside RQ: nothing names the request
            st.clear_pending(None)
        try:
            # the request stays pending until the cycle's marker exists (CycleRun.begin clears it in that
            # write): a worker that dies before then leaves it for the reaper; one made since the GETDEL
            # (the next job's) names its own job and stays
            out = _default_cycle(settings, int(project_id), info["reason"], info["triggered_at"],
                                 should_stop=lost.is_set, request=token)
            _served(st, token)
            return job_result(out)
        except Exception as exc:
            _served(st, token)  # before a retry writes its own record
            if getattr(exc, "superseded", False):  # its successor runs the project now: nothing to retry
                return {"status": "superseded", "error": str(exc)}
            if interrupted(exc):  # its worker is stopping: marked interrupted, the reaper runs it again
                log.warning("project %s: cycle interrupted (its RQ worker is shutting down); the reaper runs it "
                            "again", project_id)
                return {"status": "interrupted", "error": str(exc)}
            delays = settings.cycle_retry_delays
            if retryable(exc) and attempt < len(delays):
                retry_at = time.time() + delays[attempt]
                st.update_state(pending={"reason": info["reason"], "triggered_at": info["triggered_at"],
                                         "attempt": attempt + 1, "retry_at": retry_at})
                log.warning("project %s: cycle failed (%s); the reaper retries it in %.0f s", project_id, exc,
                            delays[attempt])
                return {"status": "failed", "error": str(exc), "retry_at": retry_at}
            raise


def rq_place_job(project_id: int, tasks, attempt: int = 0, begun: int = 0):
    """RQ job: place new tasks under the live version. It holds the project's lock, so it never
    runs beside that project's cycle: placed meanwhile, the tasks would get a prediction of the
    version the cycle is replacing, and none of the one that goes live.

    Tasks worth another try (``_place_once``) are recorded in Redis (``place_retry``: the ids, the
    try and when it is due, merged with any retry already waiting) for the web process's reaper to
    enqueue after ``PLACE_RETRY_DELAYS``: the worker never sleeps through a delay (found by review:
    waiting in the job kept a worker, the documented single one, from a queued cycle for minutes,
    and a warm shutdown waited it out)."""
    from redis import Redis
    from rq import get_current_job
    settings = Settings.from_env()
    r = Redis.from_url(settings.redis_url)
    pid = int(project_id)
    queue = _job_queue(settings, get_current_job())
    with project_lock(r, pid, settings.rq_lock_ttl, queue):
        # the tasks are recorded (``placing``) while they are placed, and the record removed after: a job
        # killed in between leaves them to the reaper, which re-enqueues them (found by review: they
        # were lost until the next cycle). ``begun``: jobs holding them that began and died before this
        # one; a record left by a dead job not reaped yet is taken over here (we hold the lock)
        pk = _keys(pid, queue)["placing"]
        left = _placing_record(r.get(pk))
        ids = [int(t) for t in tasks]
        if left["tasks"] and left["begun"] >= MAX_PLACING_STARTS:
            log.error("project %s: %d new task(s) being placed: the worker died in each of the last %d jobs "
                      "that held them; left to the next cycle", pid, len(left["tasks"]), left["begun"])
        elif left["tasks"]:
            ids = sorted(set(ids) | set(left["tasks"]))
        mine = json.dumps({"tasks": ids, "begun": max(int(begun), left["begun"] if left["tasks"] else 0) + 1})
        r.set(pk, mine)
        try:
            out, again = _place_once(_default_place, settings, pid, ids)
        finally:
            r.eval("if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) "
                   "else return 0 end", 1, pk, mine)
        if again:
            delay = _place_retry_delay(pid, out, again, int(attempt))
            if delay is not None:
                key = _keys(pid, queue)["place_retry"]
                have = _retry_record(r.get(key))
                r.set(key, json.dumps({"tasks": sorted(set(have.get("tasks", [])) | set(again)),
                                       "attempt": max(int(attempt) + 1, int(have.get("attempt", 0))),
                                       "due": max(time.time() + delay, float(have.get("due", 0)))}))
    return out


def _placing_record(raw) -> dict:
    """A ``placing`` value from Redis (the tasks a placement job holds, and how many jobs holding
    them began), checked: ``{"tasks": [...], "begun": n}`` (anything else reads as none)."""
    d = _retry_record(raw)
    try:
        begun = json.loads(raw).get("begun") if d else None
    except (ValueError, AttributeError):
        begun = None
    ok = isinstance(begun, int) and not isinstance(begun, bool)
    return {"tasks": d.get("tasks", []), "begun": begun if ok else 0}


def _retry_record(raw) -> dict:
    """A ``place_retry`` value from Redis, checked (anything else reads as none)."""
    try:
        d = json.loads(raw) if raw else {}
    except ValueError:
        return {}
    if not isinstance(d, dict) or not isinstance(d.get("tasks"), list):
        return {}
    tasks = [t for t in d["tasks"] if isinstance(t, int) and not isinstance(t, bool)]
    attempt, due = d.get("attempt"), d.get("due")
    return {"tasks": tasks, "attempt": attempt if isinstance(attempt, int) else 0,
            "due": float(due) if isinstance(due, (int, float)) and not isinstance(due, bool) else 0.0}


class RQScheduler(BaseScheduler):
    def __init__(self, settings: Settings, connection=None):
        from redis import Redis
        from rq import Queue
        self.settings = settings
        self.redis = connection or Redis.from_url(settings.redis_url)
        self.queue = Queue(settings.rq_queue, connection=self.redis)
        self._workers_seen: Optional[tuple] = None  # (monotonic time, workers()): one count per page
        self._reaper: Optional[threading.Thread] = None
        self._stop = threading.Event()

    def is_running_elsewhere(self, project_id: int) -> bool:
        return bool(self.redis.exists(_keys(int(project_id), self.settings.rq_queue)["lock"]))

    def is_queued_elsewhere(self, project_id: int) -> bool:
        key = _keys(int(project_id), self.settings.rq_queue)["queued"]
        return bool(self.redis.exists(key)) and not self._queued_job_lost(key)

    def count_annotations(self, project_id: int, n: int, num_tasks: Optional[int]) -> dict:
        pid = int(project_id)
        thr = self._threshold(pid, num_tasks)
        k = _keys(pid, self.settings.rq_queue)
        count = int(self.redis.incrby(k["count"], int(n)))
        if count < thr or not self.redis.delete(k["count"]):  # only one caller wins the DEL
            return {"counted": n, "new_annotations": count, "threshold": thr, "cycle": None}
        return {"counted": n, "new_annotations": count, "threshold": thr,
                "cycle": self.request_cycle(pid, f"{count} new annotations (threshold {thr})")}

    def request_cycle(self, project_id: int, reason: str, triggered_at: Optional[float] = None,
                      attempt: int = 0, delay: float = 0.0, lost: int = 0) -> dict:
        """``lost``: how many jobs of this request were lost before they started (the reaper's count,
        apart from ``attempt``, the cycle's own retries)."""
        pid = int(project_id)
        now = triggered_at or time.time()
        k = _keys(pid, self.settings.rq_queue)
        from rq.job import JobStatus
        job_id = f"ncalr-cycle-{pid}-{uuid.uuid4().hex}"  # in the key, so the reaper can tell a lost job
        # the job exists (CREATED) before the key names it, so a reaper tick in between never finds the
        # key's job missing and requests a second one; it is enqueued once the key is ours
        job = self.queue.create_job(rq_cycle_job, args=(pid,), job_id=job_id, timeout=24 * 3600,
                                    result_ttl=7 * 24 * 3600, failure_ttl=7 * 24 * 3600,
                                    description=f"ncalr cycle project {pid}", status=JobStatus.CREATED)
        job.save()
        if not self.redis.set(k["queued"], json.dumps({"reason": reason, "triggered_at": now, "attempt": attempt,
                                                       "job": job_id, "at": time.time(),
                                                       "model_dir": model_dir_id(self.settings.model_dir)}), nx=True):
            job.delete()
            return {"queued": False, "coalesced": True}
        self.redis.delete(k["count"])
        try:  # what /status and the reaper read; the job below is what runs
            ProjectStore(self.settings.model_dir, pid).update_state(
                pending={"reason": reason, "triggered_at": now, "attempt": attempt, "retry_at": None, "job": job_id,
                         **({"lost": int(lost)} if lost else {})})
        except OSError as exc:  # a full or read-only disk: the job still runs (found by review, 2026-12-05: it
            # stayed CREATED, every request for 30 s was folded into it, then the reaper dropped it)
            log.warning("project %s: cannot note the cycle request in state.json (%s); it runs anyway", pid, exc)
        self.queue.enqueue_job(job)
        self._warn_if_unserved(pid, f"a cycle ({reason})")
        return {"queued": True, "coalesced": False, "job": job.id}

    def _queued_job_lost(self, key: str) -> bool:
        """The project's queued-cycle key names a job that will never run (deleted, or failed or
        stopped with its worker, e.g. a worker killed while it waited for the project's lock): the
        key is removed (only if unchanged) and True returned. A key without a job id (written before
        job ids were kept), a job still queued or running, or one still CREATED within
        ``ENQUEUE_GRACE_S`` of setting the key (request_cycle enqueues it right after): False."""
        from rq.exceptions import NoSuchJobError
        from rq.job import Job, JobStatus

        raw = self.redis.get(key)
        if raw is None:
            return False
        try:
            info = json.loads(raw)
            job_id, at = info.get("job"), float(info.get("at") or 0)
        except (ValueError, AttributeError, TypeError):
            job_id, at = None, 0.0
        if not job_id:
            return False
        try:
            status = Job.fetch(job_id, connection=self.redis).get_status(refresh=True)
        except NoSuchJobError:
            status = None
        if status == JobStatus.CREATED and time.time() - at < ENQUEUE_GRACE_S:
            return False  # request_cycle enqueues it right after setting the key (a process that died
            # in between leaves it CREATED: lost once the grace has passed)
        if status in (JobStatus.QUEUED, JobStatus.STARTED, JobStatus.DEFERRED, JobStatus.SCHEDULED):
            return False
        gone = self.redis.eval("if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) "
                               "else return 0 end", 1, key, raw)
        if gone:
            log.warning("the queued cycle job %s was lost (%s); its queue entry is cleared, so the cycle can be "
                        "requested again (the reaper does unless the project is crash-looping)", job_id,
                        status.value if status is not None else "gone from Redis")
        return bool(gone)

    def request_placement(self, project_id: int, tasks: Iterable) -> dict:
        tasks = [int(t["id"]) if isinstance(t, dict) else int(t) for t in tasks]
        # its time runs while it waits for the project's lock, which a long cycle holds: as long as a cycle may run
        job = self.queue.enqueue(rq_place_job, int(project_id), tasks, job_timeout=24 * 3600)
        self._warn_if_unserved(int(project_id), f"{len(tasks)} new task(s) to place")
        return {"queued_tasks": len(tasks), "job": job.id}

    def recover(self) -> list:
        """The base's recovery of cycles, then the new tasks an embedded run of this MODEL_DIR left
        waiting for a queue place (``placing.json``; RQ keeps its own placements in Redis): their
        placement is queued once (noticed 2026-12-02: after switching a deployment to RQ they waited
        for the next cycle). Only while no other process holds ``MODEL_DIR/.backend.lock`` (an
        embedded backend still running there keeps its own list in memory; another web process
        holding it is handing the tasks over); each file is claimed by an atomic rename and
        removed only once its placement is queued (at least once: a repeated placement skips the
        tasks that already have a prediction of the version)."""
        out = super().recover()
        self._hand_over_placing()
        return out

    def _hand_over_placing(self) -> None:
        import fcntl

        try:
            lock = open(self.settings.model_dir / ".backend.lock", "a+")
        except OSError as exc:
            log.error("cannot open %s/.backend.lock to hand over waiting placements: %s", self.settings.model_dir, exc)
            return
        try:
            try:
                fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log.info("MODEL_DIR/.backend.lock is held (an embedded backend, or another web process handing "
                         "the waiting placements over): this process leaves placing.json alone")
                return
            for pid in list_projects(self.settings.model_dir):
                self._hand_over_project(pid, ProjectStore(self.settings.model_dir, pid))
        finally:
            lock.close()  # releases the flock

    def _hand_over_project(self, pid: int, st: ProjectStore) -> None:
        """One project's ``placing.json``, then any claim a dead process left (at most 100 files)."""
        from ncalr_backend.service.store import PLACING_CLAIM_STALE_S

        for _ in range(100):
            try:
                claim = st.claim_placing(PLACING_CLAIM_STALE_S)
                if claim is None:
                    return
                ids, begun = st.placing_record(claim)
            except Exception as exc:  # noqa: BLE001 - one project's files must not stop the others
                log.error("project %s: cannot read the tasks waiting for a queue place: %s", pid, exc)
                return
            if ids and begun >= MAX_PLACING_STARTS:
                log.error("project %s: %d new task(s) waiting for a queue place: the backend died in each "
                          "of the last %d jobs that held them; left to the next cycle", pid, len(ids), begun)
            elif ids:
                try:
                    self.request_placement(pid, ids)
                except Exception as exc:  # noqa: BLE001 - Redis away: keep them for the next start
                    back = st.return_claim(claim)
                    log.error("project %s: cannot queue the placement of %d new task(s) an embedded run "
                              "left waiting (%s); %s", pid, len(ids), exc,
                              "kept in placing.json for the next start" if back else
                              f"kept in {claim.name} for a start after {PLACING_CLAIM_STALE_S:.0f} s")
                    return
                log.warning("project %s: %d new task(s) recorded by an embedded run were waiting for a "
                            "queue place; their placement is queued", pid, len(ids))
            st.drop_claim(claim)

    # ------------------------------------------------------------------ workers
    def workers(self) -> dict:
        """Who will run the queued jobs: ``{"workers": n, "suspended": bool}``. ``n`` counts the
        ``rq worker`` processes registered for this queue whose heartbeat key is alive: one that
        stopped cleanly unregisters at once; one killed outright stays counted until its key
        expires (idle: RQ's worker_ttl + 60 s, 8 min by default; busy: about 90 s). ``suspended``:
        ``rq suspend`` was run (workers take no job until ``rq resume``). One count serves the
        calls of ``WORKERS_TTL_S`` (a page asks once per project)."""
        from rq import Worker
        from rq.suspension import is_suspended
        now = time.monotonic()
        if self._workers_seen and now - self._workers_seen[0] < WORKERS_TTL_S:
            return dict(self._workers_seen[1])
        # the registrations' keys, each checked for its heartbeat key in one round trip; never
        # Worker.all(): it builds Worker objects, and each one's constructor rewrites the shared
        # connection pool's socket timeout (to 415 s: found by review), and parses other
        # processes' data on this request's path
        keys = Worker.all_keys(queue=self.queue)
        with self.redis.pipeline(transaction=False) as p:
            for k in keys:
                p.exists(k)
            alive = sum(1 for x in p.execute() if x) if keys else 0
        out = {"workers": alive, "suspended": bool(is_suspended(self.redis))}
        self._workers_seen = (now, out)
        return dict(out)

    def unserved_reason(self, w: Optional[dict] = None) -> Optional[str]:
        """Why queued cycles and placements do not run now (no worker, or workers suspended), else None."""
        w = self.workers() if w is None else w
        if w.get("suspended"):
            return ("the RQ workers are suspended (rq suspend): queued cycles and placements wait until "
                    "`rq resume --url REDIS_URL`")
        if not w.get("workers"):
            return (f"no RQ worker listens on queue '{self.settings.rq_queue}': queued cycles and placements wait "
                    f"in Redis until one starts (`rq worker --url REDIS_URL {self.settings.rq_queue}`, with this "
                    "backend's MODEL_DIR and settings)")
        return None

    def _warn_if_unserved(self, pid: int, what: str) -> None:
        """A request queued where nothing will run it is said in the log (found while reading the
        RQ mode as an operator: without a worker, cycles waited for ever and only the dashboard's
        "waiting" line hinted at it). Never fails the request: Redis took the job."""
        try:
            why = self.unserved_reason()
        except Exception as exc:  # noqa: BLE001 - the job is queued; this is advice only
            log.debug("project %s: cannot count the RQ workers: %s", pid, exc)
            return
        if why:
            log.warning("project %s: %s queued, but %s", pid, what, why)

    # ------------------------------------------------------------------ reaper
    def reap_once(self) -> list:
        """Re-request cycles whose worker died (``in_progress`` set, no lock before and after
        reading it: a live worker holds the lock from before it sets ``in_progress`` until after
        it clears it) and retries that are due. Returns what it did, as (project, why) pairs."""
        from redis.exceptions import RedisError

        did = []
        for pid in list_projects(self.settings.model_dir):
            try:  # one project's broken files must not stop the others' recovery
                if self._reap_placement(pid):
                    did.append((pid, "placement retry"))
                why = self._reap_project(pid)
            except RedisError:
                raise  # Redis away: the loop tries again later
            except Exception as exc:  # noqa: BLE001
                log.error("project %s: cannot check for a dead worker or a due retry: %s", pid, exc)
                continue
            if why:
                did.append((pid, why))
        return did

    def _reap_placement(self, pid: int) -> bool:
        """Enqueue a placement retry (``rq_place_job``'s ``place_retry``) whose time has come. The
        record is removed only if unchanged since it was read (a job may have merged more tasks
        into it meanwhile: those wait for the next tick)."""
        if self._reap_placing(pid):
            return True
        key = _keys(pid, self.settings.rq_queue)["place_retry"]
        raw = self.redis.get(key)
        d = _retry_record(raw)
        if raw is None or (d.get("tasks") and d["due"] > time.time()):
            return False
        if d.get("tasks"):
            self.queue.enqueue(rq_place_job, pid, d["tasks"], d["attempt"], job_timeout=24 * 3600)
        self.redis.eval("if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) "
                        "else return 0 end", 1, key, raw)
        return bool(d.get("tasks"))

    def _reap_placing(self, pid: int) -> bool:
        """Re-enqueue the tasks of a placement job that died holding them (``placing`` recorded, no
        lock before and after reading it: a live job holds the lock from before it records them until
        after it removes the record), with its count of starts; after ``MAX_PLACING_STARTS`` jobs that
        died holding them they are left to the next cycle."""
        k = _keys(pid, self.settings.rq_queue)
        if self.redis.exists(k["lock"]):
            return False
        raw = self.redis.get(k["placing"])
        if raw is None or self.redis.exists(k["lock"]):
            return False
        d = _placing_record(raw)
        again = bool(d["tasks"]) and d["begun"] < MAX_PLACING_STARTS
        if again:
            log.warning("project %s: the worker placing %d new task(s) died; placing them again", pid, len(d["tasks"]))
            self.queue.enqueue(rq_place_job, pid, d["tasks"], 0, d["begun"], job_timeout=24 * 3600)
        elif d["tasks"]:
            log.error("project %s: %d new task(s) not placed: the worker died in each of the last %d jobs that "
                      "held them; left to the next cycle", pid, len(d["tasks"]), d["begun"])
        self.redis.eval("if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) "
                        "else return 0 end", 1, k["placing"], raw)
        return again

    def _reap_project(self, pid: int) -> Optional[str]:
        k = _keys(pid, self.settings.rq_queue)
        if self.redis.exists(k["lock"]):
            return None
        if self.redis.exists(k["queued"]) and not self._queued_job_lost(k["queued"]):
            return None
        st = ProjectStore(self.settings.model_dir, pid)
        s = st.state()
        if self.redis.exists(k["lock"]):
            return None
        ip, pending = s.get("in_progress"), s.get("pending") or {}
        if ip:
            reason = (f"re-run: cycle {ip.get('cycle')} was interrupted (its worker was stopped)"
                      if ip.get("interrupted") else f"re-run: the worker of cycle {ip.get('cycle')} died")
            rerun = {"reason": reason, "triggered_at": ip.get("triggered_at") or time.time(),
                     "attempt": int(pending.get("attempt", 0)), "retry_at": None}
            # the re-run is pending in the same write that gives the dead cycle up: if requesting it
            # fails below (Redis away), the next tick finds it as a lost job, not nothing at all
            removed = abandon_in_progress(st, s, rerun=rerun)
            if removed is None:
                return None  # a cycle began meanwhile: it runs the project
            if crash_looping(st):
                return "crash loop: not re-run"
            log.warning("project %s: the worker running cycle %s %s (%d partial dirs removed); running it again",
                        pid, ip.get("cycle"), "was stopped" if ip.get("interrupted") else "died", removed)
            self.request_cycle(pid, reason, rerun["triggered_at"], attempt=rerun["attempt"])
            return "interrupted cycle" if ip.get("interrupted") else "dead worker"
        if pending and not pending.get("retry_at") and not self.redis.exists(k["queued"]):
            # requested, but its job is gone (above) before it started: request it again, counted as an
            # attempt (a job that fails before it starts the cycle, a worker's bad settings say, would
            # otherwise be requested again every tick for ever)
            lost = int(pending.get("lost", 0))
            delays = self.settings.cycle_retry_delays
            refused = self.redis.getdel(k["worker_error"])
            if refused:  # a worker said why it ran nothing (another MODEL_DIR): no retry can pass that
                msg = refused.decode("utf-8", "replace") if isinstance(refused, bytes) else str(refused)
                log.error("project %s: %s", pid, msg)
                st.update_state(pending=None, last_error=msg)
                return "refused by its worker"
            if lost > len(delays):
                msg = (f"the cycle's job was lost or failed before it started {lost + 1} times; not requested "
                       "again (see the RQ workers' log); the next trigger or Start training requests it")
                log.error("project %s: %s", pid, msg)
                st.update_state(pending=None, last_error=msg)
                return "lost job: given up"
            if lost == 0:  # the first time (a worker killed while its job waited): at once
                self.request_cycle(pid, pending.get("reason") or "requested", pending.get("triggered_at"),
                                   attempt=int(pending.get("attempt", 0)), lost=1)
                return "lost job"
            # again: on the retry delays (the retry branch below requests it), so a cause that passes by
            # itself (a mount coming up late) has as long as a failing cycle has, not 5 s ticks
            st.update_state(pending={**pending, "retry_at": time.time() + delays[lost - 1]})
            return "lost job: retry later"
        if pending.get("retry_at") and pending["retry_at"] <= time.time():
            lost = int(pending.get("lost", 0))
            self.request_cycle(pid, pending.get("reason") or "retry", pending.get("triggered_at"),
                               attempt=int(pending.get("attempt", 0)), lost=lost + 1 if lost else 0)
            return "retry"
        return None

    def start_reaper(self, every: float = 5.0) -> None:
        def loop():
            while not self._stop.wait(every):
                try:
                    self.reap_once()
                except Exception as exc:  # Redis or the disk away for a moment: try again later
                    log.warning("reaper: %s", exc)

        if self._reaper is None:
            self._reaper = threading.Thread(target=loop, name="ncalr-reaper", daemon=True)
            self._reaper.start()

    def stop(self, timeout: float = 0.0) -> bool:
        self._stop.set()
        return True

    def status(self, project_id: int) -> dict:
        k = _keys(int(project_id), self.settings.rq_queue)
        w = self.workers()
        return {"mode": "rq", "running": bool(self.redis.exists(k["lock"])),
                "waiting": bool(self.redis.exists(k["queued"])),
                "new_annotations": int(self.redis.get(k["count"]) or 0),
                **w, "unserved": self.unserved_reason(w)}


def make_scheduler(settings: Settings) -> BaseScheduler:
    return RQScheduler(settings) if settings.redis_url else EmbeddedScheduler(settings)
