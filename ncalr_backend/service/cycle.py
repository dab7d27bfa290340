"""One active-learning cycle for one Label Studio project, as five stages.

```
snapshot   (snapshot.py)     label config, tasks + annotations, images      -> Snapshot
train      (train_and_score) the engine: train into the terminal phase, score, rank -> CycleResult
predict    (predictions.py)  one prediction per ranked pool task, queue score = rank / M
write back (writeback.py)    the head of the order (WRITE_BACK_TOP) imported under a new
                             model_version, verified, then the switch
commit     (commit)          the cycle's directory moves into place, latest.json is switched
```
A failure before the switch raises ``CycleError``; predictions already sent are deleted again, the
work directory moves to ``failed/`` with its report, and the previous version stays live (its written
head is topped up when it is running out: ``placement.refill_head``). Once the
project has switched to the new version, nothing rolls it back: a later failure (say the local
report cannot be written) is reported, and the version stays live. ``CycleError.retryable`` says
whether the scheduler should try again later; ``should_stop`` (the backend is stopping) ends the
cycle between stages and between training batches, leaving it marked in progress for the next
start. After a commit, older prediction versions in Label Studio and old cycle directories are
pruned (``KEEP_CYCLES``, ``KEEP_FAILED``, ``CACHE_MAX_MB``). A cycle with nothing to rank (every
task labeled, or every unlabeled image failed) writes and switches nothing: it is committed as the
latest (its model seeds the next cycle, its label check is published), and Label Studio keeps
serving the version before, which stays the one the backend names and serves (``ProjectStore.served``).
Annotation rules: ``annotations.py``; what is stored where: ``store.py``.
"""

from __future__ import annotations

import logging
import shutil
import sqlite3
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Optional

from ncalr_backend.atomic import atomic_write_json
from ncalr_backend.service import review
from ncalr_backend.service.auth import connection_check
from ncalr_backend.service.errors import CycleError
from ncalr_backend.service.labelstudio import LabelStudioClient, LabelStudioError, make_client
from ncalr_backend.service.insight import drop_unsent_relabels, record_cycle_extras
from ncalr_backend.service.predictions import PROBS_KEY, QueuePredictions, queue_predictions  # noqa: F401
from ncalr_backend.service.progress import CycleProgress
from ncalr_backend.service.settings import Settings
from ncalr_backend.service.snapshot import Snapshot, take_snapshot
from ncalr_backend.service.store import SWITCH_FILE, ProjectStore
from ncalr_backend.service.recovery import abandon_in_progress
from ncalr_backend.service.writeback import (WriteBack, delete_version, drop_orphans, live_in_label_studio,
                                             prune_versions, write_back)

log = logging.getLogger(__name__)
DIVERGED_LR_FACTOR = 0.3

__all__ = ["CycleError", "run_project_cycle", "model_version_name", "utcstamp"]


def utcstamp(t: Optional[float] = None) -> str:
    return datetime.fromtimestamp(t if t is not None else time.time(), timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def model_version_name(project_id: int, cycle: int, t: Optional[float] = None) -> str:
    return f"ncalr-{int(project_id)}-c{cycle:04d}-{utcstamp(t)}"


@dataclass
class CycleRun:
    """The bookkeeping of one cycle: its number, version, work directory and report."""
    project_id: int
    store: ProjectStore
    cycle: int
    version: str
    work: Path
    report: dict
    started_at: float
    triggered_at: float
    pointer: Optional[dict] = None  # latest.json's entry for this version, once the snapshot says its labels

    @classmethod
    def begin(cls, settings: Settings, project_id: int, reason: str, triggered_at: Optional[float],
              request: Optional[str] = None) -> "CycleRun":
        """The cycle's number, version, marker and work directory. ``request``: the scheduler's id of
        the request it serves, cleared from ``pending`` in the marker's own write (``start_in_progress``)."""
        t0 = time.time()
        triggered_at = triggered_at or t0
        store = ProjectStore(settings.model_dir, project_id)
        stale = store.state()
        if stale.get("in_progress"):  # a dead cycle's marks (only one cycle of a project runs at a time):
            abandon_in_progress(store, stale)  # its dirs and its version go
        cycle = store.next_cycle_number()
        version = model_version_name(project_id, cycle, t0)
        marker = {"cycle": cycle, "reason": reason, "started_at": t0, "model_version": version,
                  "triggered_at": triggered_at}
        store.start_in_progress(marker, request, cycles_started=cycle)
        report = {"project": int(project_id), "cycle": cycle, "model_version": version, "reason": reason,
                  "triggered_at": triggered_at, "started_at": t0, "status": "running", "timings": {}}
        try:
            work = store.new_workdir(cycle)
        except BaseException:
            # nothing ran: the marker goes again, or the RQ reaper would take this failure for a dead
            # worker and count it towards a crash loop (found by review, 2026-12-05: a full disk here
            # ended as "killed: out of memory?" after three retries)
            try:
                store.finish_in_progress((cycle, version))
            except Exception:  # noqa: BLE001 - the marker stays; the next cycle gives it up
                log.exception("project %s cycle %s: its marker was not cleared after it could not start",
                              project_id, cycle)
            raise
        return cls(int(project_id), store, cycle, version, work, report, t0, triggered_at)

    @property
    def timings(self) -> dict:
        return self.report["timings"]

    @property
    def owner(self) -> tuple:
        """What ``state.json``'s ``in_progress`` marker holds while this cycle owns the project."""
        return (self.cycle, self.version)

    def holds(self) -> bool:
        """Whether this cycle still owns the project: no later cycle has started over its marks.
        "Not held" is read twice: one odd read (a rename on a network filesystem) must not stop it."""
        return self.store.holds_marker(self.owner) or self.store.holds_marker(self.owner)

    def superseded(self, live: bool = False) -> CycleError:
        now = (self.store.state().get("in_progress") or {}).get("cycle")
        by = f"cycle {now}" if now is not None else "the backend's recovery"
        return CycleError(f"cycle {self.cycle} stopped: {by} took the project over (under RQ this worker lost the "
                          "project's lock, e.g. Redis was out of reach for longer than RQ_LOCK_TTL); this cycle's "
                          "work is discarded and the project's state is left to its successor",
                          superseded=True, live=live)

    def stop_check(self, should_stop: Optional[Callable[[], bool]], every: float = 0.5) -> Callable[[], bool]:
        """``should_stop`` (the backend is stopping, the RQ lock went to another worker), or this
        cycle no longer owns the project: a worker whose lock expired without it knowing (Redis out
        of its reach) stops at the next batch instead of writing over its successor. The ownership
        is read at most every ``every`` seconds (a small file, but training asks before each batch)."""
        last = {"at": -float("inf"), "held": True}

        def check() -> bool:
            if should_stop is not None and should_stop():
                return True
            now = time.monotonic()
            if now - last["at"] >= every:
                last["at"], last["held"] = now, self.holds()
            return not last["held"]
        return check


# ---------------------------------------------------------------------------- stage 2: the engine
def warm_start_state(store: ProjectStore, cfg, ecfg) -> Optional[dict]:
    """The latest model's weights when it can seed this cycle: the same labels in the same order
    (a head trained on reordered or renamed choices would be permuted), the same head size and the
    same kind of task; otherwise None (train from scratch, said in the log)."""
    from ncalr_backend.engine import load_model
    latest = store.latest()
    if not (getattr(ecfg, "warms", False) and latest and (latest["path"] / "model.pt").exists()):
        return None
    if list(latest.get("labels") or []) != list(cfg.labels):
        log.warning("project %s: the labeling config's choices changed (%s -> %s): training from scratch",
                    store.project_id, latest.get("labels"), list(cfg.labels))
        return None
    try:
        prev, meta = load_model(latest["path"] / "model.pt")
        if (int(meta.get("num_classes", -1)) == cfg.num_classes
                and bool(meta.get("multilabel", False)) == cfg.multilabel):
            return prev.state_dict()
    except Exception as exc:  # a stale checkpoint must not stop the cycle
        log.warning("warm start skipped: %s", exc)
    return None


def train_and_score(snap: Snapshot, run: CycleRun, engine_config=None, progress: Optional[Callable] = None,
                    should_stop: Optional[Callable[[], bool]] = None, batch: int = 0):
    """Run the engine on the snapshot (writes model.pt, scores.npz, metrics.json into the work dir).
    ``batch``: the labels expected before the next cycle (the cycle trigger), what batch diversity
    (``NCALR_DIVERSITY=clusters``) diversifies for unless ``NCALR_DIVERSITY_BATCH`` says otherwise."""
    import ncalr_backend.engine as engine  # the engine is heavy: import on use
    if len(snap.lab_ids) == 0:
        raise CycleError("no labeled task with a readable image yet: nothing to train on")
    ecfg = engine_config or engine.EngineConfig.from_env(prefix="NCALR_")
    ecfg = ecfg.for_batch(batch)
    init_state = warm_start_state(run.store, snap.cfg, ecfg)
    warm = init_state is not None
    run.report["warm_start"] = warm
    start = ecfg.at_start(warm)  # NCALR_LR (NCALR_COLD_LR for a cold start) = 0 chooses it by NCALR_WIDTH
    run.report["lr"] = start.base_lr  # the rate the cycle starts at (a diverged retry's: report["diverged"])
    log.info("project %s cycle %s: training ResNet-18 width %d at learning rate %g%s", run.project_id, run.cycle,
             ecfg.width, start.base_lr, " (chosen by width)" if start.lr == 0 else "")
    t = time.time()
    try:
        res = engine.run_cycle(snap.x_lab, snap.y_lab, snap.x_pool, num_classes=snap.cfg.num_classes, config=ecfg,
                               out_dir=run.work, init_state=init_state, progress=progress, should_stop=should_stop,
                               x_skipped=snap.x_skipped)
    except engine.Diverged as exc:
        # never ship a broken model: once more, at a third of the learning rate, with another seed
        # ... and from scratch: if the previous model's weights are what diverges, warm-starting from
        # them again would fail every later cycle the same way (found by review)
        cold = ecfg.at_start(False)  # the retry starts from scratch
        # another seed, inside the range EngineConfig takes (the largest seed wraps to 0)
        retry = cold.replace(lr=cold.base_lr * DIVERGED_LR_FACTOR, seed=(ecfg.seed + 1) % 2 ** 63)
        log.warning("project %s cycle %s: %s; training again from scratch at learning rate %g", run.project_id,
                    run.cycle, exc, retry.lr)
        run.report["diverged"] = {"first": str(exc), "retried_with_lr": retry.lr, "retried_from_scratch": True}
        try:
            res = engine.run_cycle(snap.x_lab, snap.y_lab, snap.x_pool, num_classes=snap.cfg.num_classes,
                                   config=retry, out_dir=run.work, init_state=None, progress=progress,
                                   should_stop=should_stop, x_skipped=snap.x_skipped)
        except engine.Diverged as exc2:
            raise CycleError(f"training diverged twice ({exc}; then at learning rate {retry.lr:g}: {exc2}); "
                             "nothing was written and the previous version stays live") from exc2
    wall = time.time() - t
    fallback = (res.tpt.get("cuda_graph") or {}).get("fallback")
    if fallback:  # the cycle trained on eagerly; the report's engine.tpt.cuda_graph has it too
        log.warning("project %s cycle %s: the CUDA graph capture failed, trained with the eager step (%s); "
                    "NCALR_CUDA_GRAPH=false skips the capture", run.project_id, run.cycle, fallback)
    run.report["warm_start"] = bool(res.meta.get("warm_started", False))  # what the engine did, not what was offered
    run.report["torch_threads"] = res.timings.get("threads")  # CPU threads used: part of what reproduces the cycle
    train_s = float(res.timings.get("train_s", wall))
    run.timings.update(train_s=train_s, score_s=float(res.timings.get("score_s", max(0.0, wall - train_s))),
                       engine_s=wall)
    return res


# ---------------------------------------------------------------------------- stage 5: commit
def save_predictions(run: CycleRun, snap: Snapshot, preds: QueuePredictions, written: int) -> None:
    """What /predict and placement read later: the cycle's predictions of EVERY ranked task (those
    of rank >= ``written`` are not in Label Studio) and its task split."""
    cfg = snap.cfg
    atomic_write_json(run.work / "predictions.json", {"model_version": run.version, "labels": list(cfg.labels),
                                                      "multilabel": cfg.multilabel, "written_ranks": written,
                                                      "tasks": preds.entries})
    atomic_write_json(run.work / "tasks.json", {"labeled": snap.lab_ids, "pool": snap.pool_ids,
                                                "multilabel": cfg.multilabel, "labels": snap.lab_labels})


def commit(run: CycleRun, snap: Snapshot, res, wb: WriteBack, settings: Settings) -> dict:
    if run.store.mark_in_progress(owner=run.owner, stage="commit") is None:
        # taken over after the switch (its successor removed this work folder when it began): its
        # folder must not come back holding a report alone and become the latest; the successor commits
        raise run.superseded(live=wb.live)
    if not run.work.is_dir():  # never re-created by the report's write below: a folder without a model
        raise CycleError(f"the cycle's work folder {run.work.name} is gone (removed by hand?); nothing to commit",
                         live=wb.live)
    done = time.time()
    run.timings.update(trigger_to_live_s=done - run.triggered_at, cycle_s=done - run.started_at)
    run.report.update(status="completed", finished_at=done, live=wb.live,
                      engine=res.summary() if hasattr(res, "summary") else {}, settings=settings.public())
    try:
        atomic_write_json(run.work / "report.json", run.report)
    except OSError as exc:
        if not wb.live:
            raise
        # live in Label Studio: /predict and placement must serve this version, report or not
        log.error("project %s cycle %s: report.json not written (%s); the live version is committed without it",
                  run.project_id, run.cycle, exc)
    # a cycle with nothing to rank (every task labeled, or every unlabeled image failed) wrote nothing
    # and switched nothing: it is the latest (its model seeds the next cycle, its label check is
    # published), and Label Studio keeps serving the version before (store.served), which /setup,
    # /predict and placement go on naming (found by review, 2026-12-05: they named this one)
    run.store.commit(run.work, run.cycle, {**run.pointer, "finished_at": done, "live": wb.live})
    changes = dict(last_completed=run.cycle, crashed_cycles=0)
    if wb.live:
        changes.update(last_model_version=run.version, serving_drift=None,  # the switch set both again
                       head=None)  # the previous version's written head (refill_head)
    else:
        served = run.store.served()
        log.warning("project %s cycle %s had nothing to rank (%d ranked): nothing was written and Label Studio "
                    "keeps serving %s", run.project_id, run.cycle, len(snap.pool_ids),
                    served["model_version"] if served else "no version of this backend")
    if not run.store.finish_in_progress(run.owner, **changes):
        log.warning("project %s cycle %s completed after another cycle took the project over; that one's "
                    "marker is left as it is", run.project_id, run.cycle)
    log.info("project %s cycle %s (%s) completed: %d labeled, %d ranked, %.1fs trigger-to-live",
             run.project_id, run.cycle, run.version, len(snap.lab_ids), len(snap.pool_ids),
             run.timings["trigger_to_live_s"])
    return run.report


def tidy(client: LabelStudioClient, settings: Settings, run: CycleRun, previous: Optional[str],
         label_errors: Optional[list] = None, relabel=None, marked=None, cfg=None) -> None:
    """After a commit: the suspected label errors into Label Studio's review tab (review.py);
    older prediction versions out of Label Studio, old cycle directories and least recently used
    cached images off the disk. Failures are logged, never fatal."""
    if label_errors is not None:
        try:
            out = review.publish(client, run.store, run.project_id, label_errors, since=run.started_at,
                                 marked=marked, cfg=cfg)
            run.store.update_state(review={**out, "cycle": run.cycle})
            if relabel is not None:  # relabeled since the snapshot: no second annotator for a label it no longer has
                for t in out.get("relabeled_since_snapshot") or []:
                    relabel.new.pop(int(t), None)
        except Exception as exc:
            log.warning("project %s: could not publish the suspected label errors of cycle %s: %s",
                        run.project_id, run.cycle, exc)
    if relabel is not None:
        sent = list(relabel.pending)
        if relabel.new or relabel.expired or relabel.answered:
            try:
                out = review.request_relabel(client, run.store, run.project_id, relabel)
                sent += out["sent"]
            except Exception as exc:
                log.warning("project %s: could not send tasks for re-annotation: %s", run.project_id, exc)
        latest = run.store.latest()
        if latest and latest.get("model_version") == run.version:  # the dashboard lists what is served
            drop_unsent_relabels(latest["path"], sent)
    try:
        if run.report.get("live"):  # a cycle that switched nothing leaves Label Studio's versions as they are
            prune_versions(client, run.project_id, keep=[v for v in (run.version, previous) if v])
        run.store.prune(settings.keep_cycles, settings.keep_failed)
        from ncalr_backend.data.images import ImageCache
        ImageCache(settings.model_dir / "cache").prune(settings.cache_max_mb * 1024 * 1024)
    except Exception as exc:  # tidying must never fail a committed cycle
        log.warning("project %s: tidying after cycle %s failed: %s", run.project_id, run.cycle, exc)


def _classify(exc: Exception, live: bool) -> CycleError:
    """The CycleError for ``exc``: its message, and whether it may pass by itself."""
    from ncalr_backend.engine import Interrupted
    if isinstance(exc, CycleError):
        exc.live = exc.live or live
        return exc
    known = isinstance(exc, (LabelStudioError, ValueError))
    msg = str(exc) if known else f"{exc.__class__.__name__}: {exc}"
    if live:
        msg = f"the new version is live in Label Studio, but finishing the cycle failed: {msg}"
    return CycleError(msg, retryable=(isinstance(exc, LabelStudioError) and exc.retryable)
                      or (isinstance(exc, (OSError, sqlite3.OperationalError)) and not live),  # full disk, locked mirror
                      interrupted=isinstance(exc, Interrupted), live=live)


def fail(run: CycleRun, exc: Exception, client: LabelStudioClient, wrote: bool, live: bool,
         keep_failed: Optional[int] = None) -> CycleError:
    """Leave no half-written version behind (never the live one); keep the report under failed/.
    An interrupted cycle (shutdown) stays marked in progress, so the next start runs it again."""
    err = _classify(exc, live)
    if not err.superseded and not run.holds():  # taken over: whatever stopped it, its state is not its own
        err = run.superseded(live)
    if wrote and not live and delete_version(client, run.store, run.project_id, run.version):
        # Label Studio serves this version (its switch went through, its answer and the check after it
        # were lost): it is committed as the latest, not filed under failed/ while Label Studio serves
        # it (found by review, 2026-12-05); nothing is left to retry
        live = err.live = True
        err.retryable = False
    if err.superseded:  # nothing of the project's state is this cycle's any more, not even its folder
        shutil.rmtree(run.work, ignore_errors=True)
        log.warning("project %s: %s%s", run.project_id, err,
                    f" (its version {run.version} went live in Label Studio; the successor's replaces it)"
                    if live else "")
        return err
    if err.interrupted and not live:
        shutil.rmtree(run.work, ignore_errors=True)
        # still in progress (the next start runs it again), but stopped by a shutdown, not a crash
        if run.store.mark_in_progress(owner=run.owner, interrupted=True) is None:
            err = run.superseded()  # taken over in between: the successor's marker is not touched
        log.warning("project %s cycle %s interrupted: %s", run.project_id, run.cycle, err)
        return err
    run.report.update(status="failed", error=str(err), retryable=err.retryable, live=live, finished_at=time.time())
    committed = False
    try:  # local writes; on a full disk they fail too, and the classified error must still go out
        if live and run.pointer is not None:
            # Label Studio serves this version now: it becomes the latest (what /predict and placement
            # tag their predictions with), never a failed/ folder that the next start would not serve
            run.store.commit(run.work, run.cycle, {**run.pointer, "finished_at": time.time(), "live": True,
                                                   "finish_error": str(err)})
            committed = True
            try:
                atomic_write_json(run.store.root / "cycles" / f"{run.cycle:04d}" / "report.json", run.report)
            except OSError:
                pass  # the error is in state.json and the log
        else:
            atomic_write_json(run.work / "report.json", run.report)
            run.store.fail(run.work, run.cycle, utcstamp())
            if keep_failed is not None:  # cycles that keep failing must not fill the disk (KEEP_FAILED)
                run.store.prune_failed(keep_failed)
    except Exception:  # noqa: BLE001
        log.exception("project %s cycle %s: keeping the failed cycle's files failed too", run.project_id, run.cycle)
    if live and not committed:
        # Label Studio serves this version and latest.json does not name it (a full disk): a retry's
        # first step commits the folder (adopt_live; found by review, 2026-12-05: nothing did)
        err.retryable = True
    changes = dict(last_failed=run.cycle, last_error=str(err), crashed_cycles=0)
    if live:
        changes["last_model_version"] = run.version
        changes["head"] = None  # the previous version's written head (refill_head): Label Studio serves this one
    if committed:
        changes["last_completed"] = run.cycle
    try:
        run.store.finish_in_progress(run.owner, **changes)
    except Exception:  # noqa: BLE001 - the next start takes the cycle still marked in progress as crashed
        log.exception("project %s cycle %s: state.json not updated after the failure", run.project_id, run.cycle)
    log.error("project %s cycle %s failed: %s", run.project_id, run.cycle, err,
              exc_info=not isinstance(exc, (CycleError, LabelStudioError)))
    return err


def adopt_live(client: LabelStudioClient, store: ProjectStore, project_id: int, current: int) -> Optional[str]:
    """A cycle that asked Label Studio to switch and ended before it committed (a process killed
    between the switch and the commit, a switch whose answer and check were lost, a full disk on
    ``latest.json``) left its folder with ``SWITCH_FILE``. If Label Studio serves that version, the
    folder is committed as the latest (what /predict, placement and the head refill serve), so the
    backend and Label Studio agree again; work folders of versions it does not serve are removed
    (their predictions are orphans, ``drop_orphans``). Asks Label Studio only when such a newer
    folder exists; when it cannot say, everything stays for the next cycle. Returns the version
    adopted, or None. ``current``: the running cycle's number (its own folder is not looked at)."""
    latest = store.latest() or {}
    newest = latest.get("cycle") if isinstance(latest.get("cycle"), int) else 0
    switched = [c for c in store.switched_dirs() if c[1] != current]
    for folder, cycle, _ in switched:  # older than the latest: never adopted (found by review, 2026-12-05: such
        if cycle <= newest and folder.name.startswith(".work-"):  # folders piled up when a check failed)
            shutil.rmtree(folder, ignore_errors=True)
    found = sorted((c for c in switched if c[1] > newest), key=lambda c: c[1], reverse=True)
    if not found:
        return None
    in_use = live_in_label_studio(client, project_id)
    if in_use is None:
        return None
    adopted = None
    for folder, cycle, pointer in found:
        if adopted is None and pointer["model_version"] == in_use:
            store.commit(folder, cycle, {**pointer, "finished_at": time.time(), "live": True,
                                         "adopted": "Label Studio served it; its cycle ended before its commit"})
            store.update_state(last_completed=cycle, last_model_version=in_use, head=None)
            adopted = in_use
            log.warning("project %s: Label Studio serves %s, whose cycle %s ended after its switch and before its "
                        "commit: committed as the latest now", project_id, in_use, cycle)
        elif folder.name.startswith(".work-"):
            shutil.rmtree(folder, ignore_errors=True)
    return adopted


def refill_after_failure(settings: Settings, project_id: int, client: LabelStudioClient,
                         should_stop: Optional[Callable[[], bool]] = None) -> None:
    """The cycle failed and the previous version stays live: keep its written head from running
    out (``placement.refill_head``). Never raises: the cycle's own error is what goes out."""
    from ncalr_backend.service.placement import refill_head
    try:
        out = refill_head(settings, project_id, client, should_stop=should_stop)
    except Exception as exc:  # noqa: BLE001 - Label Studio away too (often why the cycle failed)
        log.warning("project %s: the live version's written head was not checked after the failed cycle: %s: %s",
                    project_id, exc.__class__.__name__, exc)
        return
    if out.get("reason"):
        log.info("project %s: written head not refilled: %s", project_id, out["reason"])


# ---------------------------------------------------------------------------- the cycle
def run_project_cycle(settings: Settings, project_id: int, reason: str = "manual",
                      triggered_at: Optional[float] = None, engine_config=None,
                      client: Optional[LabelStudioClient] = None, progress: Optional[Callable] = None,
                      should_stop: Optional[Callable[[], bool]] = None, request: Optional[str] = None) -> dict:
    """Run one cycle for ``project_id``; returns its report. Raises CycleError on failure.
    ``request``: the scheduler's id of the pending request this cycle serves (``CycleRun.begin``). A
    project this backend is no longer connected to gets no cycle (``{"status": "skipped"}``, and
    ``skipped`` in state.json, so /status): its webhook outlives the backend it was made for."""
    client = client or make_client(settings)
    store = ProjectStore(settings.model_dir, project_id)
    why = client.not_connected_reason(project_id, *connection_check(settings, project_id))
    if why is not None:
        why += (", so no cycle ran. Label Studio keeps a backend's webhook after the backend is disconnected: "
                "connect this backend again, or delete its webhook (project Settings > Webhooks) to stop these requests")
        log.warning("%s (%s)", why, reason)
        store.update_state(skipped={"at": time.time(), "reason": why})
        return {"status": "skipped", "reason": why}
    if store.state().get("skipped"):
        store.update_state(skipped=None)
    try:
        run = CycleRun.begin(settings, project_id, reason, triggered_at, request)
    except (OSError, sqlite3.OperationalError) as exc:  # e.g. a full disk: nothing started, it may pass
        raise CycleError(f"the cycle could not start: {exc.__class__.__name__}: {exc}", retryable=True) from exc
    prog = CycleProgress.begin(settings, run)  # progress.json, one log line per stage, /status
    try:
        adopt_live(client, run.store, project_id, run.cycle)
    except Exception as exc:  # noqa: BLE001 - the cycle's own work goes on; the folders stay for the next
        log.warning("project %s: cannot check for a version Label Studio serves that is not the latest: %s: %s",
                    project_id, exc.__class__.__name__, exc)
    previous = (run.store.served() or {}).get("model_version")  # the version Label Studio serves now
    wrote = live = False

    def stage(name: str):
        """Between stages: stop if asked to, and say in state.json (so /status) where the cycle is."""
        if should_stop is not None and should_stop():
            from ncalr_backend.engine import Interrupted
            raise Interrupted("the backend is stopping")
        if run.store.mark_in_progress(owner=run.owner, stage=name) is None:
            raise run.superseded()

    stop = run.stop_check(should_stop)  # training: also stops a cycle another one took over

    try:
        drop_orphans(client, run.store, project_id)
        stage("snapshot")
        snap = take_snapshot(client, settings, project_id, prog, should_stop=stop)
        run.timings.update(snap.timings)
        run.report.update(snap.report())
        for item in snap.unusable + snap.image_failures:
            log.warning("project %s cycle %s: task %s left out: %s", project_id, run.cycle, item["task"],
                        item["reason"])
        stage("train")
        res = train_and_score(snap, run, engine_config, prog.training(progress, engine_config), stop,
                              batch=settings.trigger_threshold(snap.num_tasks))
        stage("write-back")
        preds = queue_predictions(res, snap.cfg, snap.pool_ids, run.version)
        if preds.predicted_set_sizes is not None:
            run.report["predicted_set_sizes"] = preds.predicted_set_sizes
        label_errors = review.label_error_entries(res, snap)
        flags = [e for e in label_errors if e["flagged"]]
        atomic_write_json(run.work / "label_errors.json", {"flags": flags, "entries": label_errors})
        run.report["label_errors"] = review.summary(label_errors)
        relabel = review.relabel_plan(settings, snap, res, label_errors, run.store, run.version, run.cycle)
        if relabel is not None:
            review.queue_first(preds, relabel)
            run.report["relabel"] = {"new": sorted(relabel.new), "waiting": relabel.pending,
                                     "given_back": relabel.expired, "answered": relabel.answered}
        head = settings.write_back_count(len(snap.pool_ids), snap.num_tasks)
        items = preds.head(head)  # the head of the order; /predict serves the rest (WRITE_BACK_TOP)
        run.report["written_ranks"] = {"ranked": len(snap.pool_ids), "written": head}
        run.pointer = {"model_version": run.version, "num_classes": snap.cfg.num_classes, "labels": list(snap.cfg.labels),
                       "multilabel": snap.cfg.multilabel, "data_key": snap.cfg.data_key}
        save_predictions(run, snap, preds, head)
        by_task = {e["task"]: e for e in label_errors}
        first = [by_task[it["task"]] for it in (relabel.items if relabel is not None else []) if it["task"] in by_task]
        record_cycle_extras(run, snap, res, preds, first)  # dashboard.json; report: previous cycle's accuracy
        wrote = bool(items)
        # asked before each chunk and right before the switch: read every time (a chunk is an HTTP request)
        wb = write_back(client, settings, project_id, run.version, items, prog, run.stop_check(should_stop, every=0),
                        before_switch=lambda: atomic_write_json(run.work / SWITCH_FILE, run.pointer))
        live = wb.live
        run.timings.update(write_s=wb.write_s, switch_s=wb.switch_s)
        run.report.update(wb.report())
        if not run.holds():  # before progress.json says "commit": it is the successor's now
            raise run.superseded(live=live)
        prog.stage("commit")
        report = prog.finished(commit(run, snap, res, wb, settings))
    except Exception as exc:
        err = fail(run, exc, client, wrote, live, keep_failed=settings.keep_failed)
        if not err.superseded:  # progress.json is the project's: a successor's progress is not overwritten
            prog.finish("interrupted" if err.interrupted else "failed", str(err))
        if not (err.superseded or err.interrupted or live):
            refill_after_failure(settings, project_id, client, should_stop)
        if err is exc:
            raise
        raise err from exc
    tidy(client, settings, run, previous, label_errors, relabel, marked=snap.marked, cfg=snap.cfg)
    return report
