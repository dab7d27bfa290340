"""Queue places in Label Studio under the live version, without training.

``place_new_tasks``: a task created after the latest cycle gets a prediction under the live
version, with the queue score of ranked tasks of similar confidence (``predictions.PlacementIndex``),
so that "Label All Tasks" serves it among them until the next cycle ranks everything with NCAL-R.

``refill_head``: after a failed cycle (the previous version stays live), when fewer than half of
the head a cycle writes (``WRITE_BACK_TOP``) is still unlabeled, the next ranks of the live
cycle's order are written under the same version, so that "Label All Tasks" keeps serving the
NCAL-R order with pre-annotations instead of falling back to random (Label Studio 1.23 serves at
random once no unlabeled task has a prediction of the project's version:
projects/functions/next_task.py ``_try_uncertainty_sampling``).
"""

from __future__ import annotations

import logging
import math
import time
from typing import Callable, Optional, Sequence

from ncalr_backend.data.images import ImageCache
from ncalr_backend.service.annotations import winning_annotation
from ncalr_backend.service.auth import connection_check
from ncalr_backend.service.errors import CycleError
from ncalr_backend.service.labelconfig import parse_label_config
from ncalr_backend.service.labelstudio import LabelStudioClient, make_client
from ncalr_backend.service.predictions import PlacementIndex, classify, model_input, prediction_item
from ncalr_backend.service.settings import Settings
from ncalr_backend.service.localfiles import direct_reader
from ncalr_backend.service.snapshot import load_images
from ncalr_backend.service.store import ProjectStore, count_of, finite_num, id_from_key, read_json
from ncalr_backend.service.writeback import import_all

log = logging.getLogger(__name__)


BATCH = 500  # tasks read, classified and written per round


def place_new_tasks(settings: Settings, project_id: int, tasks: Sequence, client: Optional[LabelStudioClient] = None
                    ) -> dict:
    """Give tasks created after the latest cycle a queue place from the current model.

    ``tasks``: task ids (or ``{"id"}`` dicts). Their data is read again from Label Studio (never
    taken from a webhook payload), in batches of ``BATCH``: one Data Manager read per 100 tasks
    (which also says whether a task already has a prediction of the current version: Label Studio
    may have asked /predict for it meanwhile, which gives the same place), one decode, one forward
    pass and one bulk import per batch. Each place is a binary search among the ranked tasks
    (``PlacementIndex``), so placing n tasks costs O(n log M), not O(n M). A task that no longer
    exists is skipped.
    """
    from ncalr_backend.engine import load_model

    store = ProjectStore(settings.model_dir, project_id)
    latest = store.served()  # the cycle whose version Label Studio serves
    if not latest:
        return {"placed": 0, "reason": "no cycle went live yet: the next cycle ranks them"}
    client = client or make_client(settings)
    known = (read_json(latest["path"] / "predictions.json", {}) or {}).get("tasks", {})
    ids = [int(t["id"]) if isinstance(t, dict) else int(t) for t in tasks]
    ids = [i for i in dict.fromkeys(ids) if str(i) not in known]
    if not ids:
        return {"placed": 0}
    why = client.not_connected_reason(project_id, *connection_check(settings, project_id))  # a disconnected backend's webhook
    if why is not None:
        log.warning("%s: %d new task(s) not placed", why, len(ids))
        return {"placed": 0, "reason": why}
    project = client.get_project(project_id)
    cfg = parse_label_config(project.get("label_config"))
    if (list(cfg.labels) != list(latest.get("labels", []))
            or cfg.multilabel != bool(latest.get("multilabel", False))):
        return {"placed": 0, "reason": "labeling config changed since the latest cycle"}
    version = latest["model_version"]
    drift = serving_drift(project, version, expect_sampling=settings.set_sampling)
    if drift:  # placed anyway: the order holds again once the project is set back (never re-PATCHed here)
        log.warning("project %s: %s", project_id, drift)
    model, meta = load_model(latest["path"] / "model.pt")
    size, channels = model_input(meta, settings)
    index = PlacementIndex(known)
    cache = ImageCache(settings.model_dir / "cache")
    placed, failures = 0, []
    direct = direct_reader(client, settings.local_files_document_root, project_id)
    for s in range(0, len(ids), BATCH):
        todo = [t for t in client.get_tasks(project_id, ids[s:s + BATCH])
                if winning_annotation(t) is None and not _has_version(t, version)]
        if not todo:
            continue
        x, ok_idx, failed = load_images(client, cache, todo, cfg, size, channels, settings.download_workers,
                                        direct=direct)
        failures += failed
        if not ok_idx:
            continue
        items = [prediction_item(todo[i]["id"], e, index.place(e["confidence"]), cfg, version)
                 for i, e in zip(ok_idx, classify(model, meta, x, cfg))]
        # a task deleted since it was read is skipped (its chunk is sent again without it), as in a cycle
        created, sent, gone = import_all(client, project_id, items, settings.prediction_chunk_size)
        if created != sent:
            raise CycleError(f"Label Studio created {created} of {sent} predictions for new tasks")
        placed += created
    if placed:
        log.info("project %s: placed %d new tasks under %s", project_id, placed, version)
    return {"placed": placed, "failures": failures, "model_version": version}


REFILL_BELOW = 0.5  # refill when fewer than this share of the head size is still servable
READ_CHUNK = 100  # ranked tasks read from Label Studio per request while refilling (a Data Manager page)
REFILL_DEADLINE_S = 120.0  # a refill runs right after a failed cycle: no new request after this
REFILL_HTTP_TIMEOUT_S = 15.0  # per request (HTTP_TIMEOUT if lower): Label Studio is often why the cycle failed


class _TimeUp(Exception):
    pass


def _servable(task: dict) -> bool:
    """Whether "Label All Tasks" may still serve the task to an annotator who has not seen it:
    no annotation at all. A skipped one counts as used: Label Studio never serves a task again to
    whoever skipped it (``get_not_solved_tasks_qs`` excludes every annotation of the user,
    cancelled ones too), and the uncertain head is what annotators skip most (found by review)."""
    return not [a for a in (task.get("annotations") or []) if isinstance(a, dict)]


def refill_head(settings: Settings, project_id: int, client: Optional[LabelStudioClient] = None,
                should_stop: Optional[Callable[[], bool]] = None) -> dict:
    """Top the written head of the live cycle's order back up (see the module docstring).

    The written head is the ranks below ``state.json: head.written`` (the cycle's
    ``written_ranks`` until a refill moves it). Its tasks are read again from Label Studio; when
    fewer than ``REFILL_BELOW`` x the head size (``Settings.write_back_count``) are servable (no
    annotation, not even a skip), the next ranks are written, in rank order, with the cycle's own
    predictions (label, confidence, queue score: the same answer /predict gives), skipping tasks
    labeled meanwhile; a task that already has a prediction of the live version (/predict or
    placement gave it) counts as written. It stops once the head size is servable again, at the end
    of the order, when asked to stop, or at ``REFILL_DEADLINE_S`` (checked before every request;
    each request waits at most ``REFILL_HTTP_TIMEOUT_S``). Nothing is written while Label Studio
    serves another version (a user's choice, ``serving_drift``). What it found is recorded in
    ``state.json: head`` (/status, the dashboard) after each written chunk, so a refill that fails
    half-way does not write the same ranks again. Returns ``{"refilled": n, ...}``; raises
    ``LabelStudioError`` / ``CycleError`` when Label Studio fails or refuses (the caller logs it:
    the next cycle writes a whole new head)."""
    client = client or make_client(settings)
    timeout = getattr(client, "timeout", None)
    if isinstance(timeout, (int, float)):
        client.timeout = min(timeout, REFILL_HTTP_TIMEOUT_S)
    try:
        return _refill(settings, project_id, client, should_stop)
    except _TimeUp as exc:
        return {"refilled": 0, "reason": str(exc)}
    finally:
        if isinstance(timeout, (int, float)):
            client.timeout = timeout


def _refill(settings: Settings, project_id: int, client, should_stop) -> dict:
    deadline = time.monotonic() + REFILL_DEADLINE_S

    def go_on(what: str) -> None:  # before every request
        if should_stop is not None and should_stop():
            raise _TimeUp(f"asked to stop {what}")
        if time.monotonic() > deadline:
            raise _TimeUp(f"no time left {what} ({REFILL_DEADLINE_S:.0f} s)")

    store = ProjectStore(settings.model_dir, project_id)
    latest = store.served()  # the cycle whose version Label Studio serves
    if not latest:
        return {"refilled": 0, "reason": "no live cycle yet"}
    version = latest["model_version"]
    preds = read_json(latest["path"] / "predictions.json", {})
    entries = preds.get("tasks") if isinstance(preds, dict) else None
    if not isinstance(entries, dict) or preds.get("model_version", version) != version:
        return {"refilled": 0, "reason": f"the predictions of {version} cannot be read"}
    ranked = {}
    for t, e in entries.items():
        tid = id_from_key(t)  # as the cycle wrote it
        if (tid is not None and isinstance(e, dict) and isinstance(e.get("rank"), int)
                and not isinstance(e.get("rank"), bool) and finite_num(e.get("score")) is not None
                and finite_num(e.get("confidence")) is not None):
            ranked[tid] = int(e["rank"])
    order = [t for t, _ in sorted(ranked.items(), key=lambda kv: (kv[1], kv[0]))]  # one place per task

    head = store.state().get("head") or {}  # a dict or absent (STATE_TYPES)
    head = head if head.get("version") == version else {}
    # the refill's record, else what the cycle wrote, else (unknown) everything: nothing is written twice
    written = min(next(w for w in (count_of(head.get("written")), count_of(preds.get("written_ranks")), len(order))
                       if w is not None), len(order))
    if written >= len(order):
        return {"refilled": 0, "reason": "every ranked task is written", "model_version": version}
    go_on("before checking the connection")
    why = client.not_connected_reason(project_id, *connection_check(settings, project_id))
    if why is not None:
        return {"refilled": 0, "reason": why}
    go_on("before reading the project")
    project = client.get_project(project_id)
    cfg = parse_label_config(project.get("label_config"))
    if (list(cfg.labels) != list(latest.get("labels", []))
            or cfg.multilabel != bool(latest.get("multilabel", False))):
        return {"refilled": 0, "reason": "labeling config changed since the latest cycle"}
    if "model_version" in project and (project.get("model_version") or "") != version:
        return {"refilled": 0, "reason": serving_drift(project, version, expect_sampling=False)
                or f"Label Studio does not serve {version}"}
    num_tasks = project.get("task_number")
    num_tasks = num_tasks if isinstance(num_tasks, int) and not isinstance(num_tasks, bool) else len(order)
    size = settings.write_back_count(len(order), num_tasks)
    servable = 0
    for lo in range(0, written, READ_CHUNK):
        go_on("while counting the written head")
        servable += sum(1 for t in client.get_tasks(project_id, order[lo:min(lo + READ_CHUNK, written)],
                                                         resolve_uri=False) if _servable(t))
    refilled = count_of(head.get("refilled")) or 0
    record = {"version": version, "written": written, "unlabeled": servable, "size": size, "refilled": refilled,
              "checked_at": time.time()}
    if servable >= math.ceil(REFILL_BELOW * size):
        store.update_state(head=record)
        return {"refilled": 0, "unlabeled": servable, "size": size, "model_version": version}
    added, pos = 0, written
    while servable + added < size and pos < len(order):
        try:
            go_on("while writing the next ranks")
        except _TimeUp as exc:
            log.warning("project %s: the written head's refill stopped: %s", project_id, exc)
            break  # what is written stays; the next refill or cycle goes on from here
        ids = order[pos:pos + READ_CHUNK]
        by_id = {t.get("id"): t for t in client.get_tasks(project_id, ids, resolve_uri=False)}
        items, counted = [], 0
        for tid in ids:
            pos += 1
            t = by_id.get(tid)
            if t is None or winning_annotation(t) is not None:
                continue  # deleted or labeled meanwhile
            fresh = _servable(t)  # a task someone skipped is written, but not counted as servable
            if _has_version(t, version):
                counted += fresh  # already served under this version (/predict or placement)
            else:
                e = entries[str(tid)]
                items.append((prediction_item(tid, e, float(e["score"]), cfg, version), fresh))
            if servable + added + counted + sum(f for _, f in items) >= size:
                break
        go_on("before writing the next ranks")
        created, sent, gone = (import_all(client, project_id, [it for it, _ in items], settings.prediction_chunk_size)
                               if items else (0, 0, []))
        if created != sent:
            raise CycleError(f"Label Studio created {created} of {sent} predictions refilling the head of {version}")
        added += counted + sum(f for it, f in items if it["task"] not in set(gone))
        refilled += created
        record.update(written=pos, refilled=refilled, unlabeled=servable + added, checked_at=time.time())
        store.update_state(head=record)
    log.info("project %s: the written head of %s had %d servable task(s) of %d; %d more ranks written (up to "
             "rank %d of %d)", project_id, version, servable, size, added, pos, len(order))
    if servable + added == 0 and pos >= len(order):
        log.error("project %s: the live order of %s is used up: every task it ranked and wrote is labeled or "
                  "skipped, so \"Label All Tasks\" serves at random without pre-annotations until a cycle goes "
                  "live (see the cycle's error in /status)", project_id, version)
    return {"refilled": added, "unlabeled": servable + added, "size": size, "written": pos,
            "model_version": version}


UNCERTAINTY_SAMPLING = "Uncertainty sampling"  # Label Studio's Project.UNCERTAINTY


def serving_drift(project: dict, live_version: str, expect_sampling: bool = True) -> Optional[str]:
    """Why "Label All Tasks" does NOT follow the NCAL-R order of ``live_version`` in this Label
    Studio project (``GET /api/projects/{id}/``), and what to change in its UI; None when nothing
    is off (or the project does not say).

    Label Studio serves the NCAL-R order only while the project's ``model_version`` is the live
    version and its ``sampling`` is "Uncertainty sampling" (projects/functions/next_task.py); with
    another version selected, "Use predictions to prelabel tasks" turned off (which empties
    ``model_version``: projects/serializers.py) or another sampling it silently serves another
    order. ``expect_sampling``: whether the backend sets the sampling (``SET_SAMPLING``). Nothing
    here changes the project: a user's choice is reported, never undone behind their back (the
    next cycle's switch sets both again)."""
    if not isinstance(project, dict) or not live_version:
        return None
    project = {k: (v[:100] if isinstance(v, str) else v) for k, v in project.items()
               if k in ("model_version", "sampling", "show_collab_predictions")}  # from outside: short
    problems = []
    if "model_version" in project:
        mv = project.get("model_version") or ""
        if not mv:
            why = ('"Use predictions to prelabel tasks" is off' if project.get("show_collab_predictions") is False
                   else "no prediction version is selected")
            problems.append(f"{why} (its model version is empty): in the project's Settings > Annotation, turn "
                            f'"Use predictions to prelabel tasks" on and select the version {live_version}')
        elif mv != live_version:
            problems.append(f"it uses the predictions of {mv!r}, not the live NCAL-R version {live_version}: "
                            f"select {live_version} in the project's Settings > Annotation "
                            f'("Use predictions to prelabel tasks")')
    if expect_sampling and "sampling" in project and project.get("sampling") != UNCERTAINTY_SAMPLING:
        problems.append(f"its task sampling is {project.get('sampling')!r}, not {UNCERTAINTY_SAMPLING!r}: set it back "
                        f"(Settings > General > Task Sampling where offered, or PATCH /api/projects/<id>/ "
                        f'{{"sampling": "{UNCERTAINTY_SAMPLING}"}})')
    if not problems:
        return None
    return ('"Label All Tasks" does not serve the NCAL-R order: ' + "; ".join(problems)
            + " (the next cycle switches the project back)")


def _has_version(task: dict, version: str) -> bool:
    """Whether the task (as the Data Manager lists it, ``fields=all``) has a prediction of ``version``."""
    preds = task.get("predictions") or []
    return any(isinstance(p, dict) and p.get("model_version") == version for p in preds)
