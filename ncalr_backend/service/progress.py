"""Live progress of a running cycle: ``MODEL_DIR/projects/<id>/progress.json``, the log, ``/status``.

The cycle's stages call one ``CycleProgress`` (the hooks are one line each):

```
fetch_tasks    k/n tasks fetched (n: the project's task count)      snapshot.py
fetch_images   k/n images read (cache or download)                  snapshot.py
train          epoch k/n, training accuracy, terminal-phase state   cycle.py (the engine's per-epoch callback)
score          NCAL-R scoring and ranking (the engine, after the last epoch)
write_back     k/n predictions imported                             writeback.py (import_predictions' on_chunk)
switch         the project switched to the new version              writeback.py
commit         report.json, the cycle moves into place              cycle.py
```
Writes are atomic (not fsynced: progress is not state) and throttled to at most one every
``min_interval`` seconds, except at stage changes and the end. Each finished stage logs one INFO
line with its counts. The ETA is the current stage's remaining time (from its elapsed time and
k/n, or the previous cycle's duration of that stage while k is 0) plus the previous cycle's
durations of the stages still to come (its ``report.json`` timings); unknown before a first cycle.

A cycle that fails or is interrupted (shutdown) records the stage it stopped in as
``stopped_stage`` (and ``failed_stage``), never as done. A cycle that a crash interrupted leaves
``status: running`` behind; ``read_progress`` reports it as ``interrupted`` (``stopped_stage``: the
stage it was in) when ``state.json`` no longer has that cycle in progress. ``read_progress``
returns the record with every field of its type (``clean``): a damaged file never raises there.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional

from ncalr_backend.atomic import atomic_write_json
from ncalr_backend.service.store import ProjectStore, finite_num, read_json

log = logging.getLogger(__name__)

STAGES = ("fetch_tasks", "fetch_images", "train", "score", "write_back", "switch", "commit")
STAGE_TITLES = {"fetch_tasks": "fetch tasks", "fetch_images": "fetch images", "train": "train",
                "score": "score", "write_back": "write back", "switch": "switch", "commit": "commit"}
UNITS = {"fetch_tasks": "tasks", "fetch_images": "images", "train": "epochs", "write_back": "predictions"}
# report.json "timings" key of each stage (the previous cycle's durations feed the ETA)
TIMING_KEYS = {"fetch_tasks": "fetch_tasks_s", "fetch_images": "fetch_images_s", "train": "train_s",
               "score": "score_s", "write_back": "write_s", "switch": "switch_s"}
FILE = "progress.json"


_num = finite_num  # progress.json may hold anything


def _previous(v) -> dict:
    """The ``previous`` durations, only stages with a finite number of seconds."""
    if not isinstance(v, dict):
        return {}
    return {s: float(v[s]) for s in STAGES if _num(v.get(s)) is not None}


def previous_durations(report: Optional[dict]) -> dict:
    """Stage -> seconds from a completed cycle's report (what the ETA assumes the next cycle takes)."""
    t = (report or {}).get("timings") or {}
    out = {s: float(t[k]) for s, k in TIMING_KEYS.items() if isinstance(t.get(k), (int, float))}
    if "commit" not in out and "train" in out:
        out["commit"] = 0.0
    return out


def estimate_eta(p: dict, now: float) -> dict:
    """``{"stage_eta_s", "eta_s"}`` for a running progress record ``p`` (None where unknown)."""
    stage = p.get("stage")
    if p.get("status") != "running" or not isinstance(stage, str) or stage not in STAGES:
        return {"stage_eta_s": None, "eta_s": None}
    prev = _previous(p.get("previous"))
    k, n = _num(p.get("k")) or 0, _num(p.get("n"))
    elapsed = max(0.0, now - (_num(p.get("stage_started_at")) or now))
    extra = p.get("extra") if isinstance(p.get("extra"), dict) else {}
    pre_tpt = stage == "train" and extra.get("t_i") is None
    if pre_tpt and stage in prev and prev[stage] > elapsed:
        # before the terminal phase n is the epoch cap, which a warm-started cycle rarely nears
        # (3-10x too high, found by review): the previous cycle's training time is the better guess
        here = prev[stage] - elapsed
    elif n and k:
        here = elapsed * max(0, n - k) / k
    elif stage in prev:
        here = max(0.0, prev[stage] - elapsed)
    else:
        here = None
    later = [prev.get(s) for s in STAGES[STAGES.index(stage) + 1:]]
    total = None if here is None or any(v is None for v in later) else here + sum(later)
    return {"stage_eta_s": here, "eta_s": total}


class CycleProgress:
    """The progress record of one cycle (thread-safe: image downloads report from a thread pool)."""

    def __init__(self, model_dir: Path, project_id: int, cycle: int, version: str = "",
                 started_at: Optional[float] = None, triggered_at: Optional[float] = None,
                 previous: Optional[dict] = None, min_interval: float = 0.25, clock: Callable[[], float] = time.time):
        self.path = Path(model_dir) / "projects" / str(int(project_id)) / FILE
        self.clock = clock
        self.min_interval = float(min_interval)
        self._lock = threading.Lock()
        self._last_write = 0.0
        now = clock()
        self.p = {"project": int(project_id), "cycle": int(cycle), "model_version": version, "status": "running",
                  "stage": None, "k": 0, "n": None, "unit": None, "extra": {},
                  "triggered_at": triggered_at or now, "started_at": started_at or now,
                  "stage_started_at": now, "updated_at": now, "done": [], "previous": dict(previous or {}),
                  "error": None}
        self.writes = 0

    @classmethod
    def begin(cls, settings, run) -> "CycleProgress":
        """For a ``cycle.CycleRun``; the previous completed cycle's timings feed the ETA."""
        latest = run.store.latest()
        prev = previous_durations(read_json(latest["path"] / "report.json", {}) if latest else None)
        prog = cls(settings.model_dir, run.project_id, run.cycle, run.version, run.started_at, run.triggered_at, prev)
        prog._write(force=True)
        return prog

    # ------------------------------------------------------------------ writing
    def _write(self, force: bool = False) -> None:
        now = self.clock()
        if not force and now - self._last_write < self.min_interval:
            return
        self._last_write = now
        self.p["updated_at"] = now
        try:
            atomic_write_json(self.path, self.p, durable=False)
            self.writes += 1
        except OSError as exc:  # progress must never stop a cycle
            log.warning("cannot write %s: %s", self.path, exc)

    def _end_stage(self, now: float) -> None:
        p = self.p
        if p["stage"] is None:
            return
        secs = now - p["stage_started_at"]
        p["done"].append({"stage": p["stage"], "seconds": secs, "k": p["k"], "n": p["n"], "unit": p["unit"],
                          "extra": dict(p["extra"])})
        log.info("project %s cycle %s: %s done in %.2fs%s", p["project"], p["cycle"], STAGE_TITLES[p["stage"]],
                 secs, counts_text(p["k"], p["n"], p["unit"], p["extra"]))

    # ------------------------------------------------------------------ the hooks
    def stage(self, name: str, n: Optional[int] = None, **extra) -> "CycleProgress":
        """End the current stage (one log line) and start ``name`` with ``n`` steps to go."""
        if name not in STAGES:
            raise ValueError(f"unknown stage {name!r}")
        with self._lock:
            now = self.clock()
            self._end_stage(now)
            self.p.update(stage=name, k=0, n=int(n) if n is not None else None, unit=UNITS.get(name),
                          extra=dict(extra), stage_started_at=now)
            self._write(force=True)
        return self

    def update(self, k: int, n: Optional[int] = None, **extra) -> None:
        """Step ``k`` of the current stage (throttled; the last step is always written)."""
        with self._lock:
            self._set(int(k), n, extra)

    def advance(self, by: int = 1) -> None:
        with self._lock:
            self._set(self.p["k"] + by, None, {})

    def _set(self, k: int, n: Optional[int], extra: dict) -> None:
        self.p["k"] = k
        if n is not None:
            self.p["n"] = int(n)
        self.p["extra"].update(extra)
        self._write(force=self.p["n"] is not None and self.p["k"] >= self.p["n"])

    def on_chunk(self, start: int, size: int, created: int) -> None:
        """``LabelStudioClient.import_predictions``' callback."""
        self.update(start + size, created=self.p["extra"].get("created", 0) + int(created))

    def training(self, chain: Optional[Callable] = None, engine_config=None) -> Callable[[dict], None]:
        """Start the train stage; returns the engine's per-epoch callback (which also calls ``chain``).
        After the last epoch (terminal-phase window done, or the epoch cap) the stage is "score"."""
        if engine_config is None:
            from ncalr_backend.engine.config import EngineConfig
            engine_config = EngineConfig.from_env(prefix="NCALR_")
        cap, window = int(engine_config.max_epochs), int(engine_config.tpt_window)
        threshold = float(engine_config.train_acc_threshold)
        self.stage("train", n=cap, threshold=threshold, window=window, tpt=False, t_i=None)
        accs = []

        def on_epoch(row: dict) -> None:
            epoch = int(row.get("epoch", 0))
            tpt = bool(row.get("tpt"))
            t_i = self.p["extra"].get("t_i")
            if tpt and t_i is None:
                t_i = epoch
            accs.append(row.get("train_acc"))
            last = min(cap, t_i + window) if t_i is not None else cap
            self.update(epoch, n=last, train_acc=row.get("train_acc"), tpt=tpt, t_i=t_i, tpt_by=row.get("tpt_by"),
                        nc1=row.get("nc1"), train_accs=list(accs))
            if epoch >= last:
                self.stage("score")
            if chain is not None:
                chain(row)

        return on_epoch

    def finish(self, status: str, error: Optional[str] = None) -> None:
        """End the cycle. Completed: the last stage is done. Failed or interrupted: the stage it
        stopped in is NOT done (found by review: it showed as ✓); it is ``stopped_stage`` (and
        ``failed_stage`` when failed), its counts so far in ``stopped``."""
        with self._lock:
            now = self.clock()
            p = self.p
            stopped = p["stage"]
            if status == "completed":
                self._end_stage(now)
                p["stopped"] = None
            elif stopped is not None:
                secs = now - p["stage_started_at"]
                p["stopped"] = {"stage": stopped, "seconds": secs, "k": p["k"], "n": p["n"], "unit": p["unit"]}
                log.info("project %s cycle %s: %s %s after %.2fs%s", p["project"], p["cycle"], STAGE_TITLES[stopped],
                         status, secs, counts_text(p["k"], p["n"], p["unit"]))
            p.update(status=status, error=error, finished_at=now, k=0, n=None, extra={},
                     stopped_stage=stopped if status != "completed" else None,
                     failed_stage=stopped if status == "failed" else None)
            p["stage"] = None
            self._write(force=True)

    def finished(self, report: dict) -> dict:
        """``finish("completed")`` and return ``report`` (for ``return prog.finished(commit(...))``)."""
        self.finish("completed")
        return report


class _NoProgress:
    """What the stages get when nobody watches (unit tests, benchmarks)."""

    def stage(self, name, n=None, **extra):
        return self

    def update(self, k, n=None, **extra):
        pass

    def advance(self, by=1):
        pass

    def on_chunk(self, start, size, created):
        pass


NO_PROGRESS = _NoProgress()


def track(items: Iterable, progress=None, stage: Optional[str] = None, n: Optional[int] = None) -> Iterator:
    """Yield ``items``, counting each one as a step of ``progress`` (starting ``stage`` first)."""
    progress = progress or NO_PROGRESS
    if stage is not None:
        progress.stage(stage, n=n)
    for item in items:
        progress.advance()
        yield item


def counts_text(k, n, unit, extra: Optional[dict] = None) -> str:
    if n is None and not k:
        return ""
    s = f": {k}/{n}" if n is not None else f": {k}"
    s += f" {unit}" if unit else ""
    extra = extra or {}
    if "created" in extra:
        s += f", {extra['created']} created"
    if "t_i" in extra:
        s += (", terminal phase not reached" if extra.get("t_i") is None
              else f", not reached: annealing before the cap from epoch {extra['t_i']}" if extra.get("tpt_by") == "cap"
              else f", terminal phase from epoch {extra['t_i']}")
        if extra.get("train_acc") is not None:
            s += f", train acc {extra['train_acc']:.3f}"
    return s


def read_progress(model_dir: Path, project_id: int, now: Optional[float] = None) -> Optional[dict]:
    """The project's progress record with a fresh ETA, or None before its first cycle. A ``running``
    record whose cycle ``state.json`` no longer has in progress is reported as ``interrupted``."""
    st = ProjectStore(model_dir, project_id)
    p = read_json(st.root / FILE)
    if not isinstance(p, dict):
        return None
    now = time.time() if now is None else now
    p = clean(p)
    if p.get("status") == "running":
        ip = st.state().get("in_progress") or {}
        if ip.get("cycle") != p.get("cycle"):
            p["status"] = "interrupted"
            p["stopped_stage"] = p.get("stage")  # where the process died
    p.update(estimate_eta(p, now))
    if p.get("status") == "running":
        p["elapsed_s"] = now - (_num(p.get("started_at")) or now)
        p["stage_elapsed_s"] = now - (_num(p.get("stage_started_at")) or now)
    return p


NUMBERS = ("k", "n", "cycle", "triggered_at", "started_at", "stage_started_at", "updated_at", "finished_at")


def clean(p: dict) -> dict:
    """A copy of a progress record with every field the readers compute with of its type (found by
    review: one ``"stage_started_at": "x"`` blanked the project's dashboard section): a number that
    is not a finite number is None, a stage that is not one of STAGES is None, ``previous`` holds
    only stages with seconds, ``extra`` is an object, ``done`` a list of objects."""
    p = dict(p)
    for key in NUMBERS:
        if key in p and _num(p[key]) is None:
            p[key] = None
    for key in ("stage", "failed_stage", "stopped_stage"):
        if key in p and not (isinstance(p[key], str) and p[key] in STAGES):
            p[key] = None
    for key in ("status", "unit", "model_version"):
        if key in p and not isinstance(p[key], str):
            p[key] = None
    if p.get("error") is not None and not isinstance(p["error"], str):
        p["error"] = str(p["error"])
    p["previous"] = _previous(p.get("previous"))
    if not isinstance(p.get("extra"), dict):
        p["extra"] = {}
    p["done"] = [d for d in p["done"] if isinstance(d, dict)] if isinstance(p.get("done"), list) else []
    if "stopped" in p and not isinstance(p["stopped"], dict):
        p["stopped"] = None
    return p
